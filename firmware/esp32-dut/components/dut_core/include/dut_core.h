/*
 * dut_core: the portable half of the mqtt-harness device firmware (docs/dut-protocol.md, version 1).
 *
 * The core reads request lines, drives esp-mqtt through its public API (mqtt_client.h) and writes answers and
 * events. It reaches the rest of the world only through dut_platform_t, so the same C runs on an ESP32
 * (main/platform_esp32.c) and natively on Linux (host/platform_host.c, over an esp-mqtt shim on libmosquitto).
 */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define DUT_PROTO_MAJOR 1
#define DUT_PROTO_MINOR 0
#define DUT_FW_NAME "mqtt-harness-dut"
#define DUT_FW_VERSION "0.1.0"
#define DUT_MIN_MAX_LINE 1024
#define DUT_DEFAULT_MAX_LINE 4096
#define DUT_DNS_MAX_ADDRS 8
#define DUT_ADDR_LEN 48

typedef struct {
    const char *platform;   /* "esp32", "host" */
    const char *chip;       /* "esp32", "esp32s3", ..., "host" */
    const char *idf;        /* esp_get_idf_version() (the shim's stand-in on the host) */
    const char *esp_mqtt;   /* esp-mqtt version */
    uint8_t mac[6];         /* base MAC; esp-mqtt's default client id derives from it */
    const char *caps;       /* comma separated capability flags, e.g. "mqtt5,tls,blob" */
    const char *extra_json; /* optional JSON object text whose fields are added to the banner, or NULL */
} dut_identity_t;

typedef struct dut_platform {
    void *ctx;
    /* Write one complete protocol line (ends with '\n') with a single write; the core calls it under lock(). */
    void (*write)(void *ctx, const char *data, size_t len);
    void (*lock)(void *ctx);
    void (*unlock)(void *ctx);
    int64_t (*now_ms)(void *ctx); /* milliseconds since boot */
    /* Wall clock: false if unknown. *source is "sntp", "set" or "none". */
    bool (*time_get)(void *ctx, int64_t *epoch_s, const char **source);
    bool (*time_set)(void *ctx, int64_t epoch_s);
    void (*reboot)(void *ctx);             /* does not return on success */
    void (*crash)(void *ctx, const char *reset_reason); /* stand-ins only (CRASH); NULL: verb unknown */
    const char *(*reset_reason)(void *ctx); /* "ESP_RST_POWERON", ... */
    void (*identity)(void *ctx, dut_identity_t *out);
    void (*heap)(void *ctx, uint32_t *free_bytes, uint32_t *min_free_bytes);
    /* ip: dotted address of the interface the broker is reached through; netif "wifi", "eth", "loopback". */
    void (*netinfo)(void *ctx, char *ip, size_t ip_len, const char **netif);
    /* Returns the number of addresses (0 if none); on failure 0 and *error = "EAI_FAIL"-style name. */
    int (*dns)(void *ctx, const char *host, int timeout_ms, char addrs[][DUT_ADDR_LEN], int max, const char **error);
    /* Returns true if a TCP connection was made (and closed again); else *err_no and *timed_out say why. */
    bool (*tcp_probe)(void *ctx, const char *host, int port, int timeout_ms, int *err_no, bool *timed_out);
    /* level "NONE".."VERBOSE"; false if not possible. NULL: LOGLEVEL is unknown. */
    bool (*loglevel)(void *ctx, const char *tag, const char *level);
    /* One line of device log (not a protocol line). level: 'E', 'W', 'I', 'D'. */
    void (*log)(void *ctx, char level, const char *text);
} dut_platform_t;

/* esp_crt_bundle_attach, when the platform has the certificate bundle (config "crt_bundle_attach": true).
 * The type is esp-mqtt's: esp_err_t (*)(void *conf), with esp_err_t an int. */
extern int (*dut_crt_bundle_attach_fn)(void *conf);

/* Set up the core; max_line is clamped to at least DUT_MIN_MAX_LINE. Returns false if out of memory. */
bool dut_core_init(const dut_platform_t *platform, size_t max_line);
/* Print the BOOT banner (call once per boot, after the platform's own start-up log). */
void dut_core_banner(void);
/* Bytes read from the console: complete lines are dispatched from the calling task. */
void dut_core_feed(const uint8_t *data, size_t len);
/* One line without its newline (a trailing '\r' is ignored). */
void dut_core_line(const char *line, size_t len);
/* Destroy the client, free blobs and buffers (the host calls it before exit and before re-exec). */
void dut_core_deinit(void);

#ifdef __cplusplus
}
#endif
