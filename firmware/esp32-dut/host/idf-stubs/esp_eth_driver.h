/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_eth/include/esp_eth_driver.h. */
#pragma once

#include "esp_eth_com.h"
#include "esp_eth_mac.h"
#include "esp_eth_mac_esp.h"
#include "esp_eth_phy.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef void *esp_eth_handle_t;

typedef struct {
    esp_eth_mac_t *mac;
    esp_eth_phy_t *phy;
    uint32_t check_link_period_ms;
    esp_err_t (*stack_input)(esp_eth_handle_t eth_handle, uint8_t *buffer, uint32_t length, void *priv);
    esp_err_t (*on_lowlevel_init_done)(esp_eth_handle_t eth_handle);
    esp_err_t (*on_lowlevel_deinit_done)(esp_eth_handle_t eth_handle);
    esp_err_t (*read_phy_reg)(esp_eth_handle_t eth_handle, uint32_t phy_addr, uint32_t phy_reg, uint32_t *reg_value);
    esp_err_t (*write_phy_reg)(esp_eth_handle_t eth_handle, uint32_t phy_addr, uint32_t phy_reg, uint32_t reg_value);
} esp_eth_config_t;

#define ETH_DEFAULT_CONFIG(emac, ephy)                                                                        \
    {                                                                                                         \
        .mac = emac, .phy = ephy, .check_link_period_ms = 2000, .stack_input = NULL,                          \
        .on_lowlevel_init_done = NULL, .on_lowlevel_deinit_done = NULL, .read_phy_reg = NULL,                 \
        .write_phy_reg = NULL,                                                                                \
    }

esp_err_t esp_eth_driver_install(const esp_eth_config_t *config, esp_eth_handle_t *out_hdl);
esp_err_t esp_eth_start(esp_eth_handle_t hdl);
esp_err_t esp_eth_stop(esp_eth_handle_t hdl);

#ifdef __cplusplus
}
#endif
