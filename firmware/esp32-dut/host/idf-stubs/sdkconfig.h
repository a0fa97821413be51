/* Stand-in for ESP-IDF 5.x build/config/sdkconfig.h as Kconfig.projbuild + sdkconfig.defaults generate it. */
/*
 * Values common to every compile-check variant: the firmware's Kconfig defaults ("mqtt-harness DUT"), its
 * sdkconfig.defaults, and the ESP-IDF defaults the code reads. What a variant chooses (target, console, network)
 * is in variants/<name>/sdkconfig_choice.h, found first on the include path.
 */
#pragma once

#include "sdkconfig_choice.h"

/* sdkconfig.defaults */
#define CONFIG_MQTT_PROTOCOL_5 1
#define CONFIG_PARTITION_TABLE_SINGLE_APP_LARGE 1
#define CONFIG_ESPTOOLPY_FLASHSIZE_4MB 1
#define CONFIG_ESPTOOLPY_FLASHSIZE "4MB"
/* CONFIG_LOG_COLORS is not set */
#define CONFIG_ESP_MAIN_TASK_STACK_SIZE 6144

/* ESP-IDF defaults */
#define CONFIG_FREERTOS_HZ 100
#define CONFIG_LOG_DEFAULT_LEVEL_INFO 1
#define CONFIG_LOG_DEFAULT_LEVEL 3
#define CONFIG_LOG_MAXIMUM_LEVEL 3
#define CONFIG_MQTT_TRANSPORT_SSL 1
#define CONFIG_MQTT_TRANSPORT_WEBSOCKET 1
#define CONFIG_MQTT_TRANSPORT_WEBSOCKET_SECURE 1
#define CONFIG_MBEDTLS_CERTIFICATE_BUNDLE 1
#define CONFIG_MBEDTLS_CERTIFICATE_BUNDLE_DEFAULT_FULL 1
/* CONFIG_MBEDTLS_HAVE_TIME_DATE is not set */
/* CONFIG_MBEDTLS_SSL_PROTO_TLS1_3 is not set */
#define CONFIG_LWIP_IPV6 1
#define CONFIG_LWIP_SNTP_MAX_SERVERS 1
#define CONFIG_ESP_WIFI_STATIC_RX_BUFFER_NUM 10
#define CONFIG_ESP_WIFI_DYNAMIC_RX_BUFFER_NUM 32
#define CONFIG_ESP_WIFI_TX_BUFFER_TYPE 1

/* main/Kconfig.projbuild defaults (the network and SNTP choices are the variant's) */
#define CONFIG_DUT_NET_WAIT_MS 8000
#define CONFIG_DUT_CONSOLE_BAUD 115200
#define CONFIG_DUT_MAX_LINE 4096
#define CONFIG_DUT_MAX_BLOB_SIZE 65536
#define CONFIG_DUT_MAX_PAYLOAD 65536
#define CONFIG_DUT_CONSOLE_TASK_STACK 8192
/* CONFIG_DUT_MQTT_HAS_GET_STATE is not set */
/* CONFIG_DUT_MQTT_EVENT_REASON_CODE is not set */
