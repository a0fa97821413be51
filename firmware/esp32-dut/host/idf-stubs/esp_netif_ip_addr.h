/* Declaration-only stand-in for ESP-IDF 5.1.4/5.3.1 components/esp_netif/include/esp_netif_ip_addr.h. */
#pragma once

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define IPSTR "%d.%d.%d.%d"
#define esp_ip4_addr_get_byte(ipaddr, idx) (((const uint8_t *)(&(ipaddr)->addr))[idx])
#define esp_ip4_addr1_16(ipaddr) ((uint16_t)esp_ip4_addr_get_byte(ipaddr, 0))
#define esp_ip4_addr2_16(ipaddr) ((uint16_t)esp_ip4_addr_get_byte(ipaddr, 1))
#define esp_ip4_addr3_16(ipaddr) ((uint16_t)esp_ip4_addr_get_byte(ipaddr, 2))
#define esp_ip4_addr4_16(ipaddr) ((uint16_t)esp_ip4_addr_get_byte(ipaddr, 3))
#define IP2STR(ipaddr) esp_ip4_addr1_16(ipaddr), esp_ip4_addr2_16(ipaddr), esp_ip4_addr3_16(ipaddr), esp_ip4_addr4_16(ipaddr)

struct esp_ip6_addr {
    uint32_t addr[4];
    uint8_t zone;
};

struct esp_ip4_addr {
    uint32_t addr;
};

typedef struct esp_ip4_addr esp_ip4_addr_t;
typedef struct esp_ip6_addr esp_ip6_addr_t;

#ifdef __cplusplus
}
#endif
