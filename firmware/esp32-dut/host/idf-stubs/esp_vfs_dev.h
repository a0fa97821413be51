/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/vfs/include/esp_vfs_dev.h (deprecated from 5.3). */
#pragma once

#include "esp_idf_version.h"

#ifdef __cplusplus
extern "C" {
#endif

#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 3, 0)
#define DUT_STUB_DEPRECATED(msg) __attribute__((deprecated(msg)))
#else
#define DUT_STUB_DEPRECATED(msg)
#endif

void esp_vfs_dev_uart_register(void) DUT_STUB_DEPRECATED("Please use uart_vfs_dev_register() instead");
void esp_vfs_dev_uart_use_nonblocking(int uart_num) DUT_STUB_DEPRECATED("Please use uart_vfs_dev_use_nonblocking() instead");
void esp_vfs_dev_uart_use_driver(int uart_num) DUT_STUB_DEPRECATED("Please use uart_vfs_dev_use_driver() instead");
/* declared here (not in esp_vfs_usb_serial_jtag.h) in 5.1 and 5.2 as well */
void esp_vfs_usb_serial_jtag_use_driver(void) DUT_STUB_DEPRECATED("Please use usb_serial_jtag_vfs_use_driver() instead");
void esp_vfs_usb_serial_jtag_use_nonblocking(void) DUT_STUB_DEPRECATED("Please use usb_serial_jtag_vfs_use_nonblocking() instead");

#ifdef __cplusplus
}
#endif
