/* Host stand-in for the esp_transport types mqtt_client.h names. There is no transport layer on the host:
 * libmosquitto does the networking. */
#pragma once

#include <stdbool.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct esp_transport_item_t *esp_transport_handle_t;

typedef struct esp_transport_keepalive {
    bool keep_alive_enable;
    int keep_alive_idle;
    int keep_alive_interval;
    int keep_alive_count;
} esp_transport_keep_alive_t;

#ifdef __cplusplus
}
#endif
