/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_eth/include/esp_eth.h (umbrella header). */
#pragma once

#include "esp_eth_driver.h"
#include "esp_eth_netif_glue.h"
