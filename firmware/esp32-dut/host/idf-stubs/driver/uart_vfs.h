/* Declaration-only stand-in for ESP-IDF 5.3.1 components/esp_driver_uart/include/driver/uart_vfs.h (new in 5.3). */
#pragma once

#include "esp_idf_version.h"

#if ESP_IDF_VERSION < ESP_IDF_VERSION_VAL(5, 3, 0)
#error "driver/uart_vfs.h does not exist before ESP-IDF 5.3 (use esp_vfs_dev.h)"
#endif

#ifdef __cplusplus
extern "C" {
#endif

void uart_vfs_dev_register(void);
void uart_vfs_dev_use_nonblocking(int uart_num);
void uart_vfs_dev_use_driver(int uart_num);

#ifdef __cplusplus
}
#endif
