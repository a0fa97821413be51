/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_netif/include/esp_netif_defaults.h (Ethernet). */
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

#define ESP_NETIF_DEFAULT_ETH()                                                                                \
    {                                                                                                          \
        .base = ESP_NETIF_BASE_DEFAULT_ETH, .driver = NULL, .stack = ESP_NETIF_NETSTACK_DEFAULT_ETH,           \
    }

#define ESP_NETIF_BASE_DEFAULT_ETH &_g_esp_netif_inherent_eth_config
#define ESP_NETIF_NETSTACK_DEFAULT_ETH _g_esp_netif_netstack_default_eth

extern const esp_netif_netstack_config_t *_g_esp_netif_netstack_default_eth;
extern const esp_netif_inherent_config_t _g_esp_netif_inherent_eth_config;

#ifdef __cplusplus
}
#endif
