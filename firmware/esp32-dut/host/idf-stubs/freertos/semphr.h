/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/freertos/FreeRTOS-Kernel/include/freertos/semphr.h. */
#pragma once

#include "freertos/queue.h"

typedef QueueHandle_t SemaphoreHandle_t;

#define semGIVE_BLOCK_TIME ((TickType_t)0U)

/* macros over the queue API, as in FreeRTOS */
#define xSemaphoreCreateMutex() xQueueCreateMutex(queueQUEUE_TYPE_MUTEX)
#define xSemaphoreTake(xSemaphore, xBlockTime) xQueueSemaphoreTake((xSemaphore), (xBlockTime))
#define xSemaphoreGive(xSemaphore) xQueueGenericSend((QueueHandle_t)(xSemaphore), NULL, semGIVE_BLOCK_TIME, queueSEND_TO_BACK)
