/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_timer/include/esp_timer.h (esp_timer_get_time). */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "esp_err.h"

#ifdef __cplusplus
extern "C" {
#endif

int64_t esp_timer_get_time(void);

#ifdef __cplusplus
}
#endif
