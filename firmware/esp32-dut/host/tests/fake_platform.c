/* A dut_platform_t that keeps what the core writes, for tests and fuzzing. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dut_internal.h"
#include "fake.h"

#define MAX_LINES 4096

static char *s_lines[MAX_LINES];
static int s_n;
static int64_t s_now;
static int64_t s_epoch = 1764979200;
static bool s_time_set;
int fake_reboots;
char fake_crash_reason[32];
bool fake_silent;

void fake_platform_reset(void)
{
    for (int i = 0; i < s_n; i++) {
        free(s_lines[i]);
    }
    s_n = 0;
    fake_reboots = 0;
    fake_crash_reason[0] = '\0';
    s_time_set = false;
}

int fake_nlines(void)
{
    return s_n;
}

const char *fake_line(int i)
{
    return i >= 0 && i < s_n ? s_lines[i] : NULL;
}

cJSON *fake_parse(int i, long *id, char kind[16])
{
    const char *l = fake_line(i);
    dut_frame_t f;
    if (!l || dut_frame_parse(l, strlen(l) - 1, &f) != DUT_FRAME_OK) {
        return NULL;
    }
    *id = f.id;
    snprintf(kind, 16, "%.15s", f.kind);
    char *json = strndup(f.json, f.json_len);
    cJSON *o = cJSON_Parse(json);
    free(json);
    return o;
}

cJSON *fake_last(const char *kind, long *id)
{
    for (int i = s_n - 1; i >= 0; i--) {
        char k[16];
        long lid;
        cJSON *o = fake_parse(i, &lid, k);
        if (o && strcmp(k, kind) == 0) {
            if (id) {
                *id = lid;
            }
            return o;
        }
        cJSON_Delete(o);
    }
    return NULL;
}

int fake_count(const char *kind)
{
    int n = 0;
    for (int i = 0; i < s_n; i++) {
        char k[16];
        long lid;
        cJSON *o = fake_parse(i, &lid, k);
        n += o && strcmp(k, kind) == 0;
        cJSON_Delete(o);
    }
    return n;
}

static void p_write(void *ctx, const char *data, size_t len)
{
    (void)ctx;
    if (fake_silent || s_n >= MAX_LINES) {
        return;
    }
    s_lines[s_n] = strndup(data, len);
    s_n++;
}

static void p_nop(void *ctx)
{
    (void)ctx;
}

static int64_t p_now(void *ctx)
{
    (void)ctx;
    return s_now += 3;
}

static bool p_time_get(void *ctx, int64_t *epoch, const char **source)
{
    (void)ctx;
    *epoch = s_epoch;
    *source = s_time_set ? "set" : "none";
    return s_time_set;
}

static bool p_time_set(void *ctx, int64_t epoch)
{
    (void)ctx;
    s_epoch = epoch;
    s_time_set = true;
    return true;
}

static void p_reboot(void *ctx)
{
    (void)ctx;
    fake_reboots++;
}

static void p_crash(void *ctx, const char *reason)
{
    (void)ctx;
    snprintf(fake_crash_reason, sizeof fake_crash_reason, "%s", reason);
}

static const char *p_reset_reason(void *ctx)
{
    (void)ctx;
    return "ESP_RST_POWERON";
}

static void p_identity(void *ctx, dut_identity_t *id)
{
    (void)ctx;
    static const uint8_t mac[6] = {0x24, 0x0a, 0xc4, 0x12, 0x34, 0x56};
    id->platform = "host";
    id->chip = "host";
    id->idf = "test";
    id->esp_mqtt = "fake";
    memcpy(id->mac, mac, 6);
    id->caps = "mqtt5,tls,blob,dns,tcp_probe,set_time,reset";
    id->extra_json = "{\"libmosquitto\":\"0.0.0\",\"proto\":99}";
}

static void p_heap(void *ctx, uint32_t *f, uint32_t *m)
{
    (void)ctx;
    *f = 200000;
    *m = 150000;
}

static void p_netinfo(void *ctx, char *ip, size_t n, const char **netif)
{
    (void)ctx;
    snprintf(ip, n, "127.0.0.1");
    *netif = "loopback";
}

static int p_dns(void *ctx, const char *host, int timeout, char addrs[][DUT_ADDR_LEN], int max, const char **err)
{
    (void)ctx;
    (void)timeout;
    if (strcmp(host, "localhost") == 0 && max > 0) {
        snprintf(addrs[0], DUT_ADDR_LEN, "127.0.0.1");
        return 1;
    }
    *err = "EAI_FAIL";
    return 0;
}

static bool p_probe(void *ctx, const char *host, int port, int timeout, int *err, bool *timed_out)
{
    (void)ctx;
    (void)host;
    (void)timeout;
    *timed_out = false;
    if (port == 1883) {
        return true;
    }
    *err = ECONNREFUSED;
    return false;
}

static bool p_loglevel(void *ctx, const char *tag, const char *level)
{
    (void)ctx;
    (void)level;
    return strlen(tag) < 32;
}

static void p_log(void *ctx, char level, const char *text)
{
    char buf[300];
    (void)ctx;
    int n = snprintf(buf, sizeof buf, "%c (0) dut: %s\n", level, text);
    p_write(NULL, buf, n > 0 && (size_t)n < sizeof buf ? (size_t)n : sizeof buf - 1);
}

static const dut_platform_t s_platform = {
    .write = p_write, .lock = p_nop, .unlock = p_nop, .now_ms = p_now, .time_get = p_time_get,
    .time_set = p_time_set, .reboot = p_reboot, .crash = p_crash, .reset_reason = p_reset_reason,
    .identity = p_identity, .heap = p_heap, .netinfo = p_netinfo, .dns = p_dns, .tcp_probe = p_probe,
    .loglevel = p_loglevel, .log = p_log,
};

const dut_platform_t *fake_platform(void)
{
    return &s_platform;
}
