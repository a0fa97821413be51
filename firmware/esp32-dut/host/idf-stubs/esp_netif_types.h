/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_netif/include/esp_netif_types.h (used parts). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "esp_err.h"
#include "esp_event_base.h"
#include "esp_netif_ip_addr.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct esp_netif_obj esp_netif_t;

typedef enum {
    IP_EVENT_STA_GOT_IP,
    IP_EVENT_STA_LOST_IP,
    IP_EVENT_AP_STAIPASSIGNED,
    IP_EVENT_GOT_IP6,
    IP_EVENT_ETH_GOT_IP,
    IP_EVENT_ETH_LOST_IP,
    IP_EVENT_PPP_GOT_IP,
    IP_EVENT_PPP_LOST_IP,
} ip_event_t;

ESP_EVENT_DECLARE_BASE(IP_EVENT);

typedef struct {
    esp_ip4_addr_t ip;
    esp_ip4_addr_t netmask;
    esp_ip4_addr_t gw;
} esp_netif_ip_info_t;

typedef struct {
    esp_netif_t *esp_netif;
    esp_netif_ip_info_t ip_info;
    bool ip_changed;
} ip_event_got_ip_t;

/* opaque here: only pointers to them are used */
typedef struct esp_netif_inherent_config esp_netif_inherent_config_t;
typedef struct esp_netif_driver_ifconfig esp_netif_driver_ifconfig_t;
typedef struct esp_netif_netstack_config esp_netif_netstack_config_t;

typedef void *esp_netif_iodriver_handle;

struct esp_netif_config {
    const esp_netif_inherent_config_t *base;
    const esp_netif_driver_ifconfig_t *driver;
    const esp_netif_netstack_config_t *stack;
};
typedef struct esp_netif_config esp_netif_config_t;

#ifdef __cplusplus
}
#endif
