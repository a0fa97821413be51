/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/vfs/include/esp_vfs_usb_serial_jtag.h. */
#pragma once

#include "esp_err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Only registration here; esp_vfs_usb_serial_jtag_use_driver() is in esp_vfs_dev.h. */
esp_err_t esp_vfs_dev_usb_serial_jtag_register(void);

#ifdef __cplusplus
}
#endif
