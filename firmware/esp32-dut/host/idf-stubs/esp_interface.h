/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_hw_support/include/esp_interface.h. */
#pragma once

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ESP_IF_WIFI_STA = 0,
    ESP_IF_WIFI_AP,
    ESP_IF_WIFI_NAN,
    ESP_IF_ETH,
    ESP_IF_MAX
} esp_interface_t;

#ifdef __cplusplus
}
#endif
