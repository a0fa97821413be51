/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_eth/include/esp_eth_phy.h. */
#pragma once

#include <stdbool.h>

#include "esp_eth_com.h"
#include "sdkconfig.h"

#ifdef __cplusplus
extern "C" {
#endif

#define ESP_ETH_PHY_ADDR_AUTO (-1)

typedef struct esp_eth_phy_s esp_eth_phy_t;

typedef struct {
    int32_t phy_addr;
    uint32_t reset_timeout_ms;
    uint32_t autonego_timeout_ms;
    int reset_gpio_num;
} eth_phy_config_t;

#define ETH_PHY_DEFAULT_CONFIG()                                                                              \
    {                                                                                                         \
        .phy_addr = ESP_ETH_PHY_ADDR_AUTO, .reset_timeout_ms = 100, .autonego_timeout_ms = 4000,              \
        .reset_gpio_num = 5,                                                                                  \
    }

esp_eth_phy_t *esp_eth_phy_new_ip101(const eth_phy_config_t *config);
esp_eth_phy_t *esp_eth_phy_new_rtl8201(const eth_phy_config_t *config);
esp_eth_phy_t *esp_eth_phy_new_lan87xx(const eth_phy_config_t *config);
esp_eth_phy_t *esp_eth_phy_new_dp83848(const eth_phy_config_t *config);

#ifdef __cplusplus
}
#endif
