/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_netif/include/esp_netif.h (used functions). */
#pragma once

#include <stdint.h>

#include "sdkconfig.h"
#include "esp_netif_ip_addr.h"
#include "esp_netif_types.h"
#include "esp_netif_defaults.h"

#ifdef __cplusplus
extern "C" {
#endif

esp_err_t esp_netif_init(void);
esp_netif_t *esp_netif_new(const esp_netif_config_t *esp_netif_config);
esp_err_t esp_netif_attach(esp_netif_t *esp_netif, esp_netif_iodriver_handle driver_handle);
esp_err_t esp_netif_get_ip_info(esp_netif_t *esp_netif, esp_netif_ip_info_t *ip_info);
char *esp_ip4addr_ntoa(const esp_ip4_addr_t *addr, char *buf, int buflen);

#ifdef __cplusplus
}
#endif
