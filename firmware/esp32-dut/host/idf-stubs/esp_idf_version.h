/* Declaration-only stand-in for ESP-IDF 5.x components/esp_common/include/esp_idf_version.h; version from -D. */
#pragma once

/* The compile check picks the release it pretends to be: -DDUT_STUB_IDF_MINOR=1 -DDUT_STUB_IDF_PATCH=4 etc. */
#ifndef DUT_STUB_IDF_MINOR
#define DUT_STUB_IDF_MINOR 3
#endif
#ifndef DUT_STUB_IDF_PATCH
#define DUT_STUB_IDF_PATCH 1
#endif

#ifdef __cplusplus
extern "C" {
#endif

#define ESP_IDF_VERSION_MAJOR 5
#define ESP_IDF_VERSION_MINOR DUT_STUB_IDF_MINOR
#define ESP_IDF_VERSION_PATCH DUT_STUB_IDF_PATCH

#define ESP_IDF_VERSION_VAL(major, minor, patch) (((major) << 16) | ((minor) << 8) | (patch))
#define ESP_IDF_VERSION ESP_IDF_VERSION_VAL(ESP_IDF_VERSION_MAJOR, ESP_IDF_VERSION_MINOR, ESP_IDF_VERSION_PATCH)

const char *esp_get_idf_version(void);

#ifdef __cplusplus
}
#endif
