/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/log/include/esp_log.h (levels, level_set, ESP_LOGx). */
#pragma once

#include <inttypes.h>
#include <stdarg.h>
#include <stdint.h>

#include "sdkconfig.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    ESP_LOG_NONE,
    ESP_LOG_ERROR,
    ESP_LOG_WARN,
    ESP_LOG_INFO,
    ESP_LOG_DEBUG,
    ESP_LOG_VERBOSE
} esp_log_level_t;

void esp_log_level_set(const char *tag, esp_log_level_t level);
uint32_t esp_log_timestamp(void);
void esp_log_write(esp_log_level_t level, const char *tag, const char *format, ...)
    __attribute__((format(printf, 3, 4)));

#ifndef LOG_LOCAL_LEVEL
#define LOG_LOCAL_LEVEL CONFIG_LOG_MAXIMUM_LEVEL
#endif

/* As in IDF, the format is pasted into a "L (time) tag: " prefix: it must be a string literal, and the arguments
 * are checked against it by the printf attribute. */
#define DUT_STUB_LOG(level, letter, tag, format, ...)                                                          \
    do {                                                                                                      \
        if (LOG_LOCAL_LEVEL >= (level)) {                                                                     \
            esp_log_write((level), (tag), letter " (%" PRIu32 ") %s: " format "\n", esp_log_timestamp(), (tag), \
                          ##__VA_ARGS__);                                                                     \
        }                                                                                                     \
    } while (0)

#define ESP_LOGE(tag, format, ...) DUT_STUB_LOG(ESP_LOG_ERROR, "E", tag, format, ##__VA_ARGS__)
#define ESP_LOGW(tag, format, ...) DUT_STUB_LOG(ESP_LOG_WARN, "W", tag, format, ##__VA_ARGS__)
#define ESP_LOGI(tag, format, ...) DUT_STUB_LOG(ESP_LOG_INFO, "I", tag, format, ##__VA_ARGS__)
#define ESP_LOGD(tag, format, ...) DUT_STUB_LOG(ESP_LOG_DEBUG, "D", tag, format, ##__VA_ARGS__)
#define ESP_LOGV(tag, format, ...) DUT_STUB_LOG(ESP_LOG_VERBOSE, "V", tag, format, ##__VA_ARGS__)

#ifdef __cplusplus
}
#endif
