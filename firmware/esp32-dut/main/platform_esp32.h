/* The ESP32 side of the firmware: console I/O, network, and the dut_platform_t over ESP-IDF. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "dut_core.h"
#include "esp_err.h"

/* Install the console driver (UART or USB-Serial-JTAG, as CONFIG_ESP_CONSOLE_* says). */
esp_err_t dut_console_init(void);
/* Read what arrived on the console, waiting up to timeout_ms; returns bytes read (0 on timeout). */
int dut_console_read(uint8_t *buf, size_t len, int timeout_ms);

const dut_platform_t *dut_platform_esp32(void);
/* SNTP synchronised the clock (called from the SNTP callback). */
void dut_platform_time_synced(void);

/* Bring up Wi-Fi or Ethernet per Kconfig; returns once started (the IP comes later, asynchronously). */
esp_err_t dut_net_start(void);
/* Wait up to timeout_ms for an IP address; true if there is one. */
bool dut_net_wait(int timeout_ms);
/* Current IPv4 address (dotted) and interface name ("wifi", "eth"), "" / NULL if none. */
void dut_net_info(char *ip, size_t ip_len, const char **netif);
