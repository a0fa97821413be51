/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/freertos/FreeRTOS-Kernel/include/freertos/queue.h. */
#pragma once

#include "freertos/FreeRTOS.h"
#include "freertos/task.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct QueueDefinition *QueueHandle_t;

#define queueSEND_TO_BACK ((BaseType_t)0)
#define queueQUEUE_TYPE_MUTEX ((uint8_t)1U)

BaseType_t xQueueGenericSend(QueueHandle_t xQueue, const void *const pvItemToQueue, TickType_t xTicksToWait,
                             const BaseType_t xCopyPosition);
QueueHandle_t xQueueCreateMutex(const uint8_t ucQueueType);
BaseType_t xQueueSemaphoreTake(QueueHandle_t xQueue, TickType_t xTicksToWait);

#ifdef __cplusplus
}
#endif
