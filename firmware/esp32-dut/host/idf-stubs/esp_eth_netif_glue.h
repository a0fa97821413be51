/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_eth/include/esp_eth_netif_glue.h. */
#pragma once

#include "esp_eth_driver.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct esp_eth_netif_glue_t *esp_eth_netif_glue_handle_t;

esp_eth_netif_glue_handle_t esp_eth_new_netif_glue(esp_eth_handle_t eth_hdl);

#ifdef __cplusplus
}
#endif
