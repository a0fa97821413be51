/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/mbedtls/esp_crt_bundle/include/esp_crt_bundle.h. */
#pragma once

#include "esp_err.h"

#ifdef __cplusplus
extern "C" {
#endif

/* conf is an mbedtls_ssl_config * (IDF's header includes mbedtls/ssl.h for it; nothing here needs the type) */
esp_err_t esp_crt_bundle_attach(void *conf);

#ifdef __cplusplus
}
#endif
