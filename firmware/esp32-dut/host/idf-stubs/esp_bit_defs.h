/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_common/include/esp_bit_defs.h (the BITn used). */
#pragma once

#define BIT0 0x00000001
#define BIT1 0x00000002
#define BIT2 0x00000004
#define BIT3 0x00000008
