/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/nvs_flash/include/nvs_flash.h. */
#pragma once

#include "nvs.h"

#ifdef __cplusplus
extern "C" {
#endif

esp_err_t nvs_flash_init(void);
esp_err_t nvs_flash_erase(void);

#ifdef __cplusplus
}
#endif
