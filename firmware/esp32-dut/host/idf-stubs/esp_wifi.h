/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_wifi/include/esp_wifi.h (station API used). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "esp_err.h"
#include "esp_event.h"
#include "esp_wifi_types.h"
#include "esp_wifi_default.h"

#ifdef __cplusplus
extern "C" {
#endif

/* the real struct has ~25 buffer/feature fields filled from CONFIG_ESP_WIFI_*; only a few are mirrored */
typedef struct wifi_osi_funcs_t wifi_osi_funcs_t;
typedef struct {
    wifi_osi_funcs_t *osi_funcs;
    int static_rx_buf_num;
    int dynamic_rx_buf_num;
    int tx_buf_type;
    int nvs_enable;
    int magic;
} wifi_init_config_t;

extern wifi_osi_funcs_t g_wifi_osi_funcs;
#define WIFI_INIT_CONFIG_MAGIC 0x1F2F3F4F

#define WIFI_INIT_CONFIG_DEFAULT()                                                                            \
    {                                                                                                         \
        .osi_funcs = &g_wifi_osi_funcs, .static_rx_buf_num = CONFIG_ESP_WIFI_STATIC_RX_BUFFER_NUM,            \
        .dynamic_rx_buf_num = CONFIG_ESP_WIFI_DYNAMIC_RX_BUFFER_NUM, .tx_buf_type = CONFIG_ESP_WIFI_TX_BUFFER_TYPE, \
        .nvs_enable = 1, .magic = WIFI_INIT_CONFIG_MAGIC,                                                     \
    }

esp_err_t esp_wifi_init(const wifi_init_config_t *config);
esp_err_t esp_wifi_set_mode(wifi_mode_t mode);
esp_err_t esp_wifi_start(void);
esp_err_t esp_wifi_connect(void);
esp_err_t esp_wifi_set_ps(wifi_ps_type_t type);
esp_err_t esp_wifi_set_config(wifi_interface_t interface, wifi_config_t *conf);

#ifdef __cplusplus
}
#endif
