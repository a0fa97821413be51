/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_eth/include/esp_eth_com.h (used types). */
#pragma once

#include <stdint.h>

#include "esp_err.h"
#include "esp_event_base.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum {
    EMAC_DATA_INTERFACE_RMII,
    EMAC_DATA_INTERFACE_MII,
} eth_data_interface_t;

typedef enum {
    ETH_DMA_BURST_LEN_32,
    ETH_DMA_BURST_LEN_16,
    ETH_DMA_BURST_LEN_8,
    ETH_DMA_BURST_LEN_4,
    ETH_DMA_BURST_LEN_2,
    ETH_DMA_BURST_LEN_1,
} eth_mac_dma_burst_len_t;

ESP_EVENT_DECLARE_BASE(ETH_EVENT);

#ifdef __cplusplus
}
#endif
