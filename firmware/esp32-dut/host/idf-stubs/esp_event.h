/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_event/include/esp_event.h (default loop API). */
#pragma once

#include <stdint.h>

#include "esp_err.h"
#include "freertos/FreeRTOS.h"
#include "freertos/queue.h"
#include "freertos/semphr.h"
#include "freertos/task.h"

#include "esp_event_base.h"

#ifdef __cplusplus
extern "C" {
#endif

esp_err_t esp_event_loop_create_default(void);
esp_err_t esp_event_handler_register(esp_event_base_t event_base, int32_t event_id, esp_event_handler_t event_handler,
                                     void *event_handler_arg);
esp_err_t esp_event_handler_unregister(esp_event_base_t event_base, int32_t event_id,
                                       esp_event_handler_t event_handler);

#ifdef __cplusplus
}
#endif
