/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 freertos/FreeRTOS.h + portmacro.h/projdefs.h (Xtensa/RISC-V). */
#pragma once

#include <stddef.h>
#include <stdint.h>

#include "sdkconfig.h"

/* IDF's port headers (portmacro.h) also pull in esp_system.h, esp_timer.h and more (marked refactor-todo upstream);
 * not mirrored here, so main/ has to include what it uses. */

#ifdef __cplusplus
extern "C" {
#endif

/* portmacro.h: portBASE_TYPE is int, 32-bit ticks (configUSE_16_BIT_TICKS off) */
typedef uint8_t StackType_t;
typedef int BaseType_t;
typedef unsigned int UBaseType_t;
typedef uint32_t TickType_t;
#define portMAX_DELAY (TickType_t)0xffffffffUL

/* FreeRTOSConfig.h */
#define configTICK_RATE_HZ CONFIG_FREERTOS_HZ
#define configSTACK_DEPTH_TYPE uint32_t

/* projdefs.h */
typedef void (*TaskFunction_t)(void *);
#define pdMS_TO_TICKS(xTimeInMs)                                                                              \
    ((TickType_t)(((TickType_t)(xTimeInMs) * (TickType_t)configTICK_RATE_HZ) / (TickType_t)1000U))
#define pdFALSE ((BaseType_t)0)
#define pdTRUE ((BaseType_t)1)
#define pdPASS (pdTRUE)
#define pdFAIL (pdFALSE)

#ifdef __cplusplus
}
#endif
