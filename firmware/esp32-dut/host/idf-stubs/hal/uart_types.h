/* Declaration-only stand-in for ESP-IDF components/hal/include/hal/uart_types.h: uart_port_t (int in 5.1, enum in 5.3). */
#pragma once

#include "esp_idf_version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 3, 0)
typedef enum {
    UART_NUM_0,
    UART_NUM_1,
    UART_NUM_2,
    UART_NUM_MAX,
} uart_port_t;
#else
typedef int uart_port_t;
#endif

#ifdef __cplusplus
}
#endif
