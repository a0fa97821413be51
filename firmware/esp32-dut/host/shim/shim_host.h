/* What the esp-mqtt shim needs from the host platform (host/platform_host.c). */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Name -> IPv4/IPv6 literal from the static table (`localhost`, IP literals, --resolve NAME=IP). Never DNS. */
bool shim_host_resolve(const char *name, char *ip, size_t ip_len);
/* The device's wall clock in epoch seconds (SET_TIME moves it): certificate dates are checked against it. */
int64_t shim_host_wall_time(void);
/* Milliseconds since boot. */
int64_t shim_host_now_ms(void);
void shim_host_mac(uint8_t mac[6]);
/* One device log line from tag `tag` at level 'E','W','I','D','V' (filtered by LOGLEVEL). */
void shim_host_log(char level, const char *tag, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
