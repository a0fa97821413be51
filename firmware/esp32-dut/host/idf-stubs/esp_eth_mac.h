/* Declaration-only stand-in for ESP-IDF components/esp_eth/include/esp_eth_mac.h (5.1.4: ESP32 EMAC here too). */
#pragma once

#include <stdbool.h>

#include "esp_eth_com.h"
#include "esp_idf_version.h"
#include "sdkconfig.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct esp_eth_mac_s esp_eth_mac_t;

typedef struct {
    uint32_t sw_reset_timeout_ms;
    uint32_t rx_task_stack_size;
    uint32_t rx_task_prio;
    uint32_t flags;
} eth_mac_config_t;

#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 3, 0)
#define DUT_STUB_ETH_RX_STACK 4096
#else
#define DUT_STUB_ETH_RX_STACK 2048
#endif
#define ETH_MAC_DEFAULT_CONFIG()                                                                              \
    {                                                                                                         \
        .sw_reset_timeout_ms = 100, .rx_task_stack_size = DUT_STUB_ETH_RX_STACK, .rx_task_prio = 15, .flags = 0, \
    }

/* RMII clock types: here up to 5.2.x, in esp_eth_mac_esp.h from 5.3 (which deprecates EMAC_CLK_DEFAULT) */
#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 3, 0)
#define DUT_STUB_CLK_DEFAULT_ATTR __attribute__((deprecated))
#else
#define DUT_STUB_CLK_DEFAULT_ATTR
#endif
typedef enum {
    EMAC_CLK_DEFAULT DUT_STUB_CLK_DEFAULT_ATTR,
    EMAC_CLK_EXT_IN,
    EMAC_CLK_OUT
} emac_rmii_clock_mode_t;

typedef enum {
    EMAC_CLK_IN_GPIO = 0,
    EMAC_APPL_CLK_OUT_GPIO = 0,
    EMAC_CLK_OUT_GPIO = 16,
    EMAC_CLK_OUT_180_GPIO = 17
} emac_rmii_clock_gpio_t;

typedef union {
    struct {
        emac_rmii_clock_mode_t clock_mode;
        emac_rmii_clock_gpio_t clock_gpio;
    } rmii;
} eth_mac_clock_config_t;

#if ESP_IDF_VERSION < ESP_IDF_VERSION_VAL(5, 3, 0) && CONFIG_ETH_USE_ESP32_EMAC
/* up to 5.2.x the ESP32 EMAC config lives here, with flat SMI GPIO fields */
typedef struct {
    int smi_mdc_gpio_num;
    int smi_mdio_gpio_num;
    eth_data_interface_t interface;
    eth_mac_clock_config_t clock_config;
    eth_mac_dma_burst_len_t dma_burst_len;
} eth_esp32_emac_config_t;

#define ETH_ESP32_EMAC_DEFAULT_CONFIG()                                                                       \
    {                                                                                                         \
        .smi_mdc_gpio_num = 23, .smi_mdio_gpio_num = 18, .interface = EMAC_DATA_INTERFACE_RMII,               \
        .clock_config = {.rmii = {.clock_mode = EMAC_CLK_DEFAULT, .clock_gpio = EMAC_CLK_IN_GPIO}},           \
        .dma_burst_len = ETH_DMA_BURST_LEN_32                                                                 \
    }

esp_eth_mac_t *esp_eth_mac_new_esp32(const eth_esp32_emac_config_t *esp32_config, const eth_mac_config_t *config);
#endif

#ifdef __cplusplus
}
#endif
