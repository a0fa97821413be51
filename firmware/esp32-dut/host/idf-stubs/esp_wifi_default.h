/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_wifi/include/esp_wifi_default.h. */
#pragma once

#include "esp_netif.h"
#include "esp_wifi_types.h"

#ifdef __cplusplus
extern "C" {
#endif

esp_netif_t *esp_netif_create_default_wifi_sta(void);

#ifdef __cplusplus
}
#endif
