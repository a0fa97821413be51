/* Declaration-only stand-in for ESP-IDF 5.3.1 components/esp_driver_usb_serial_jtag/include/driver/usb_serial_jtag_vfs.h. */
#pragma once

#include "esp_err.h"
#include "esp_idf_version.h"

#if ESP_IDF_VERSION < ESP_IDF_VERSION_VAL(5, 3, 0)
#error "driver/usb_serial_jtag_vfs.h does not exist before ESP-IDF 5.3 (use esp_vfs_dev.h)"
#endif

#ifdef __cplusplus
extern "C" {
#endif

esp_err_t usb_serial_jtag_vfs_register(void);
void usb_serial_jtag_vfs_use_driver(void);
void usb_serial_jtag_vfs_use_nonblocking(void);

#ifdef __cplusplus
}
#endif
