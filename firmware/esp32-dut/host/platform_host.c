/* The host implementation of dut_platform_t, and the hooks the esp-mqtt shim needs (shim_host.h). */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <malloc.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <openssl/opensslv.h>

#include "host.h"
#include "shim_host.h"

host_state_t g_host;

static pthread_mutex_t s_write_lock = PTHREAD_MUTEX_INITIALIZER;
static int64_t s_boot_ms = -1;

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t shim_host_now_ms(void)
{
    if (s_boot_ms < 0) {
        s_boot_ms = mono_ms();
    }
    return mono_ms() - s_boot_ms;
}

int64_t shim_host_wall_time(void)
{
    return (int64_t)time(NULL) + g_host.time_offset;
}

void shim_host_mac(uint8_t mac[6])
{
    memcpy(mac, g_host.mac, 6);
}

/* Everything to the pty goes through here, under one lock: a line is never split by another line. */
static void write_all(const char *data, size_t len)
{
    int64_t give_up = mono_ms() + 2000; /* like a UART nobody reads: after a while, output is lost */
    while (len > 0) {
        ssize_t n = write(g_host.out_fd, data, len);
        if (n > 0) {
            data += n;
            len -= (size_t)n;
            continue;
        }
        if (n < 0 && errno == EINTR) {
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            int64_t left = give_up - mono_ms();
            if (left <= 0) {
                return;
            }
            struct pollfd p = {.fd = g_host.out_fd, .events = POLLOUT};
            poll(&p, 1, (int)left);
            continue;
        }
        return;
    }
}

/* ---------------------------------------------------------------------------------------------- logging */

#define MAX_TAGS 16
static struct {
    char tag[32];
    int level;
} s_levels[MAX_TAGS];
static int s_nlevels;
static int s_default_level = 3; /* INFO, as ESP-IDF's default */

static int level_of(char l)
{
    switch (l) {
    case 'E':
        return 1;
    case 'W':
        return 2;
    case 'I':
        return 3;
    case 'D':
        return 4;
    default:
        return 5;
    }
}

static int tag_level(const char *tag)
{
    for (int i = 0; i < s_nlevels; i++) {
        if (strcmp(s_levels[i].tag, tag) == 0) {
            return s_levels[i].level;
        }
    }
    return s_default_level;
}

static void log_line(char level, const char *tag, const char *text)
{
    if (level_of(level) > tag_level(tag)) {
        return;
    }
    char line[600];
    int n = snprintf(line, sizeof line, "%c (%lld) %s: %s", level, (long long)shim_host_now_ms(), tag, text);
    if (n < 0) {
        return;
    }
    if ((size_t)n >= sizeof line - 1) {
        n = (int)sizeof line - 2;
    }
    /* a log line must not look like a protocol line, nor contain a newline */
    for (int i = 0; i < n; i++) {
        if (line[i] == '\n' || line[i] == '\r') {
            line[i] = ' ';
        }
    }
    char *at = line;
    while ((at = strstr(at, "@@")) != NULL) {
        at[1] = '_';
    }
    line[n++] = '\n';
    pthread_mutex_lock(&s_write_lock);
    write_all(line, (size_t)n);
    pthread_mutex_unlock(&s_write_lock);
}

void shim_host_log(char level, const char *tag, const char *fmt, ...)
{
    char text[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    log_line(level, tag, text);
}

/* --------------------------------------------------------------------------------------- name table */

static bool is_ip(const char *s)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, s, buf) == 1 || inet_pton(AF_INET6, s, buf) == 1;
}

bool host_add_resolve(const char *spec, const char **why)
{
    const char *eq = strchr(spec, '=');
    if (!eq || eq == spec || !eq[1]) {
        *why = "expected NAME=IP";
        return false;
    }
    if (!is_ip(eq + 1)) {
        *why = "the address must be an IPv4 or IPv6 literal";
        return false;
    }
    if ((size_t)(eq - spec) >= sizeof g_host.names[0] || strlen(eq + 1) >= sizeof g_host.addrs[0]) {
        *why = "name or address too long";
        return false;
    }
    if (g_host.nresolve >= HOST_MAX_RESOLVE) {
        *why = "too many --resolve entries";
        return false;
    }
    memcpy(g_host.names[g_host.nresolve], spec, (size_t)(eq - spec));
    g_host.names[g_host.nresolve][eq - spec] = '\0';
    snprintf(g_host.addrs[g_host.nresolve], sizeof g_host.addrs[0], "%s", eq + 1);
    g_host.nresolve++;
    return true;
}

bool shim_host_resolve(const char *name, char *ip, size_t ip_len)
{
    /* never the system resolver: a test must not depend on (or leak to) real DNS */
    if (is_ip(name)) {
        snprintf(ip, ip_len, "%s", name);
        return true;
    }
    for (int i = 0; i < g_host.nresolve; i++) {
        if (strcasecmp(g_host.names[i], name) == 0) {
            snprintf(ip, ip_len, "%s", g_host.addrs[i]);
            return true;
        }
    }
    if (strcasecmp(name, "localhost") == 0) {
        snprintf(ip, ip_len, "127.0.0.1");
        return true;
    }
    return false;
}

/* ------------------------------------------------------------------------------------- dut_platform_t */

static void p_write(void *ctx, const char *data, size_t len)
{
    (void)ctx;
    write_all(data, len);
}

static void p_lock(void *ctx)
{
    (void)ctx;
    pthread_mutex_lock(&s_write_lock);
}

static void p_unlock(void *ctx)
{
    (void)ctx;
    pthread_mutex_unlock(&s_write_lock);
}

static int64_t p_now_ms(void *ctx)
{
    (void)ctx;
    return shim_host_now_ms();
}

static bool p_time_get(void *ctx, int64_t *epoch, const char **source)
{
    (void)ctx;
    *epoch = shim_host_wall_time();
    /* the host's clock is the system's (NTP-synchronised on any sane machine): "sntp" unless SET_TIME moved it */
    *source = g_host.time_set ? "set" : "sntp";
    return true;
}

static bool p_time_set(void *ctx, int64_t epoch)
{
    (void)ctx;
    g_host.time_offset = epoch - (int64_t)time(NULL);
    g_host.time_set = true;
    return true;
}

static void p_reboot(void *ctx)
{
    (void)ctx;
    host_reexec("ESP_RST_SW");
}

static void p_crash(void *ctx, const char *reason)
{
    (void)ctx;
    shim_host_log('E', "host", "CRASH requested: rebooting as %s", reason);
    host_reexec(reason);
}

static const char *p_reset_reason(void *ctx)
{
    (void)ctx;
    return g_host.reset_reason;
}

/* esp-mqtt behaviours this build does not have, because libmosquitto does the MQTT work (protocol §3,
 * `differs`): the device suites skip the tests that rely on them and say why */
#define HOST_DIFFERS                                                                                         \
    "{\"retransmit\":\"libmosquitto resends an unacknowledged QoS 1/2 message only on reconnect, not on "       \
    "esp-mqtt's 1 s retransmit timer\","                                                                    \
    "\"outbox\":\"libmosquitto keeps in-flight messages across a clean-session reconnect and resends them; "    \
    "esp-mqtt's outbox semantics differ\","                                                                 \
    "\"keepalive\":\"libmosquitto takes a keepalive of 0 or at least 5 s, so PINGREQ cadence and half-open "     \
    "detection at shorter keepalives are libmosquitto's, not esp-mqtt's\"}"

static char s_extra[1024];

static void p_identity(void *ctx, dut_identity_t *id)
{
    (void)ctx;
    int major = 0, minor = 0, rev = 0;
    mosquitto_lib_version(&major, &minor, &rev);
    snprintf(s_extra, sizeof s_extra, "{\"libmosquitto\":\"%d.%d.%d\",\"openssl\":\"%s\",\"build\":\"%s\",\"differs\":" HOST_DIFFERS "}", major,
             minor, rev, OPENSSL_VERSION_TEXT,
#ifdef DUT_SANITIZE
             "asan+ubsan"
#else
             "release"
#endif
            );
    id->platform = "host";
    id->chip = "host";
    id->idf = "none (host build)";
    id->esp_mqtt = "libmosquitto shim, esp-mqtt 1.1 API";
    memcpy(id->mac, g_host.mac, 6);
    /* what the shim really does: no WebSocket transports */
    id->caps = "mqtt5,tls,blob,dns,tcp_probe,set_time,reset,loglevel,crash";
    id->extra_json = s_extra;
}

static void p_heap(void *ctx, uint32_t *free_b, uint32_t *min_b)
{
    (void)ctx;
    struct mallinfo2 mi = mallinfo2();
    *free_b = (uint32_t)(mi.fordblks > 0xFFFFFFFFu ? 0xFFFFFFFFu : mi.fordblks);
    *min_b = *free_b;
}

static void p_netinfo(void *ctx, char *ip, size_t ip_len, const char **netif)
{
    (void)ctx;
    snprintf(ip, ip_len, "127.0.0.1");
    *netif = "loopback";
}

static int p_dns(void *ctx, const char *host, int timeout_ms, char addrs[][DUT_ADDR_LEN], int max, const char **error)
{
    (void)ctx;
    (void)timeout_ms;
    char ip[64];
    if (max < 1 || !shim_host_resolve(host, ip, sizeof ip)) {
        *error = "EAI_FAIL"; /* what lwIP's getaddrinfo gives for a name it cannot resolve */
        return 0;
    }
    snprintf(addrs[0], DUT_ADDR_LEN, "%.47s", ip);
    return 1;
}

static bool p_tcp_probe(void *ctx, const char *host, int port, int timeout_ms, int *err_no, bool *timed_out)
{
    (void)ctx;
    char ip[64];
    *timed_out = false;
    if (!shim_host_resolve(host, ip, sizeof ip)) {
        *err_no = EHOSTUNREACH;
        return false;
    }
    struct sockaddr_storage ss;
    socklen_t sl;
    memset(&ss, 0, sizeof ss);
    struct sockaddr_in *v4 = (struct sockaddr_in *)&ss;
    struct sockaddr_in6 *v6 = (struct sockaddr_in6 *)&ss;
    if (inet_pton(AF_INET, ip, &v4->sin_addr) == 1) {
        v4->sin_family = AF_INET;
        v4->sin_port = htons((uint16_t)port);
        sl = sizeof *v4;
    } else if (inet_pton(AF_INET6, ip, &v6->sin6_addr) == 1) {
        v6->sin6_family = AF_INET6;
        v6->sin6_port = htons((uint16_t)port);
        sl = sizeof *v6;
    } else {
        *err_no = EINVAL;
        return false;
    }
    int fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        *err_no = errno;
        return false;
    }
    bool ok = false;
    if (connect(fd, (struct sockaddr *)&ss, sl) == 0) {
        ok = true;
    } else if (errno != EINPROGRESS) {
        *err_no = errno;
    } else {
        struct pollfd p = {.fd = fd, .events = POLLOUT};
        int r = poll(&p, 1, timeout_ms);
        if (r == 0) {
            *timed_out = true;
            *err_no = ETIMEDOUT;
        } else {
            int so = 0;
            socklen_t l = sizeof so;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &so, &l);
            ok = so == 0;
            *err_no = so;
        }
    }
    close(fd);
    return ok;
}

static bool p_loglevel(void *ctx, const char *tag, const char *level)
{
    (void)ctx;
    static const char *const NAMES[] = {"NONE", "ERROR", "WARN", "INFO", "DEBUG", "VERBOSE"};
    int lv = -1;
    for (int i = 0; i < 6; i++) {
        if (strcmp(level, NAMES[i]) == 0) {
            lv = i;
        }
    }
    if (lv < 0) {
        return false;
    }
    if (strcmp(tag, "*") == 0) {
        s_default_level = lv;
        return true;
    }
    for (int i = 0; i < s_nlevels; i++) {
        if (strcmp(s_levels[i].tag, tag) == 0) {
            s_levels[i].level = lv;
            return true;
        }
    }
    if (s_nlevels >= MAX_TAGS || strlen(tag) >= sizeof s_levels[0].tag) {
        return false;
    }
    snprintf(s_levels[s_nlevels].tag, sizeof s_levels[0].tag, "%s", tag);
    s_levels[s_nlevels].level = lv;
    s_nlevels++;
    return true;
}

static void p_log(void *ctx, char level, const char *text)
{
    (void)ctx;
    log_line(level, "dut", text);
}

static const dut_platform_t s_platform = {
    .ctx = NULL,
    .write = p_write,
    .lock = p_lock,
    .unlock = p_unlock,
    .now_ms = p_now_ms,
    .time_get = p_time_get,
    .time_set = p_time_set,
    .reboot = p_reboot,
    .crash = p_crash,
    .reset_reason = p_reset_reason,
    .identity = p_identity,
    .heap = p_heap,
    .netinfo = p_netinfo,
    .dns = p_dns,
    .tcp_probe = p_tcp_probe,
    .loglevel = p_loglevel,
    .log = p_log,
};

const dut_platform_t *host_platform(void)
{
    return &s_platform;
}
