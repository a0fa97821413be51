/* Declaration-only stand-in for ESP-IDF 5.3.1 components/esp_eth/include/esp_eth_mac_esp.h (ESP32 EMAC, new in 5.3). */
#pragma once

#include "esp_eth_com.h"
#include "esp_eth_mac.h"
#include "sdkconfig.h"

#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 3, 0) && CONFIG_ETH_USE_ESP32_EMAC

#ifdef __cplusplus
extern "C" {
#endif

typedef struct {
    int mdc_num;
    int mdio_num;
} emac_esp_smi_gpio_config_t;

typedef struct {
    union {
        emac_esp_smi_gpio_config_t smi_gpio;
        struct {
            int smi_mdc_gpio_num __attribute__((deprecated("Please use smi_gpio instead")));
            int smi_mdio_gpio_num __attribute__((deprecated("Please use smi_gpio instead")));
        };
    };
    eth_data_interface_t interface;
    eth_mac_clock_config_t clock_config;
    eth_mac_dma_burst_len_t dma_burst_len;
    int intr_priority;
} eth_esp32_emac_config_t;

#define ETH_ESP32_EMAC_DEFAULT_CONFIG()                                                                       \
    {                                                                                                         \
        .smi_gpio = {.mdc_num = 23, .mdio_num = 18}, .interface = EMAC_DATA_INTERFACE_RMII,                   \
        .clock_config = {.rmii = {.clock_mode = EMAC_CLK_EXT_IN, .clock_gpio = EMAC_CLK_IN_GPIO}},            \
        .dma_burst_len = ETH_DMA_BURST_LEN_32, .intr_priority = 0,                                            \
    }

esp_eth_mac_t *esp_eth_mac_new_esp32(const eth_esp32_emac_config_t *esp32_config, const eth_mac_config_t *config);

#ifdef __cplusplus
}
#endif

#endif
