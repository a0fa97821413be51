/* dut_platform_t on ESP-IDF: console writes under a mutex, esp_timer, the RTC clock, esp_restart, esp_reset_reason,
 * esp_read_mac, getaddrinfo and lwIP sockets for DNS and TCP_PROBE. */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include "esp_idf_version.h"
#include "esp_log.h"
#include "esp_mac.h"
#include "esp_system.h"
#include "esp_timer.h"
#include "freertos/FreeRTOS.h"
#include "freertos/semphr.h"
#include "freertos/task.h"
#include "lwip/netdb.h"
#include "lwip/sockets.h"
#include "sdkconfig.h"

#if CONFIG_ESP_CONSOLE_USB_SERIAL_JTAG
#include "driver/usb_serial_jtag.h"
#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 3, 0)
#include "driver/usb_serial_jtag_vfs.h"
#else
#include "esp_vfs_dev.h" /* esp_vfs_usb_serial_jtag_use_driver() is declared here before 5.3, not in esp_vfs_usb_serial_jtag.h */
#endif
#else
#include "driver/uart.h"
#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 3, 0)
#include "driver/uart_vfs.h"
#else
#include "esp_vfs_dev.h"
#endif
#endif

#if CONFIG_MBEDTLS_CERTIFICATE_BUNDLE
#include "esp_crt_bundle.h"
#endif

#include "platform_esp32.h"

static const char *TAG = "dut";
static SemaphoreHandle_t s_write_lock;
static const char *s_time_source = "none";
static char s_caps[96];

/* ------------------------------------------------------------------------------------------- console */

#if CONFIG_ESP_CONSOLE_USB_SERIAL_JTAG

esp_err_t dut_console_init(void)
{
    usb_serial_jtag_driver_config_t cfg = USB_SERIAL_JTAG_DRIVER_CONFIG_DEFAULT();
    cfg.rx_buffer_size = CONFIG_DUT_MAX_LINE * 2;
    cfg.tx_buffer_size = CONFIG_DUT_MAX_LINE;
    esp_err_t err = usb_serial_jtag_driver_install(&cfg);
    if (err != ESP_OK) {
        return err;
    }
    /* stdout (ESP_LOG and our lines) through the driver, so both share its buffer and its lock */
#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 3, 0)
    usb_serial_jtag_vfs_use_driver();
#else
    esp_vfs_usb_serial_jtag_use_driver();
#endif
    return ESP_OK;
}

int dut_console_read(uint8_t *buf, size_t len, int timeout_ms)
{
    return usb_serial_jtag_read_bytes(buf, len, pdMS_TO_TICKS(timeout_ms));
}

#else

#define CONSOLE_UART CONFIG_ESP_CONSOLE_UART_NUM

esp_err_t dut_console_init(void)
{
    fflush(stdout);
    fsync(fileno(stdout));
    /* an RX buffer of two lines: a request can arrive while the previous one is still being served */
    esp_err_t err = uart_driver_install(CONSOLE_UART, CONFIG_DUT_MAX_LINE * 2 + 256, CONFIG_DUT_MAX_LINE, 0, NULL, 0);
    if (err != ESP_OK) {
        return err;
    }
    if (CONFIG_DUT_CONSOLE_BAUD != CONFIG_ESP_CONSOLE_UART_BAUDRATE) {
        uart_set_baudrate(CONSOLE_UART, CONFIG_DUT_CONSOLE_BAUD);
    }
#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 3, 0)
    uart_vfs_dev_use_driver(CONSOLE_UART);
#else
    esp_vfs_dev_uart_use_driver(CONSOLE_UART);
#endif
    return ESP_OK;
}

int dut_console_read(uint8_t *buf, size_t len, int timeout_ms)
{
    return uart_read_bytes(CONSOLE_UART, buf, len, pdMS_TO_TICKS(timeout_ms));
}

#endif

/* ---------------------------------------------------------------------------------------- platform */

static void p_write(void *ctx, const char *data, size_t len)
{
    (void)ctx;
    /* Through stdout's fd, like ESP_LOG: the VFS writes one write() call under its own lock, so a log line of
     * another task cannot land inside ours. Pending log text goes first. */
    flockfile(stdout);
    fflush(stdout);
    while (len > 0) {
        ssize_t n = write(fileno(stdout), data, len);
        if (n <= 0) {
            break;
        }
        data += n;
        len -= (size_t)n;
    }
    funlockfile(stdout);
}

static void p_lock(void *ctx)
{
    (void)ctx;
    xSemaphoreTake(s_write_lock, portMAX_DELAY);
}

static void p_unlock(void *ctx)
{
    (void)ctx;
    xSemaphoreGive(s_write_lock);
}

static int64_t p_now_ms(void *ctx)
{
    (void)ctx;
    return esp_timer_get_time() / 1000;
}

void dut_platform_time_synced(void)
{
    s_time_source = "sntp";
}

static bool p_time_get(void *ctx, int64_t *epoch, const char **source)
{
    (void)ctx;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    *epoch = tv.tv_sec;
    *source = s_time_source;
    /* never set: the clock counts from 1970 at boot and is not a time */
    return s_time_source[0] != 'n' || tv.tv_sec > 1577836800;
}

static bool p_time_set(void *ctx, int64_t epoch)
{
    (void)ctx;
    struct timeval tv = {.tv_sec = (time_t)epoch, .tv_usec = 0};
    if (settimeofday(&tv, NULL) != 0) {
        return false;
    }
    s_time_source = "set";
    return true;
}

static void p_reboot(void *ctx)
{
    (void)ctx;
    /* the OK must leave the UART before the restart cuts it off */
    fflush(stdout);
    fsync(fileno(stdout));
#if !CONFIG_ESP_CONSOLE_USB_SERIAL_JTAG
    uart_wait_tx_done(CONSOLE_UART, pdMS_TO_TICKS(500));
#else
    vTaskDelay(pdMS_TO_TICKS(100));
#endif
    esp_restart();
}

static const char *p_reset_reason(void *ctx)
{
    (void)ctx;
    switch (esp_reset_reason()) {
    case ESP_RST_POWERON:
        return "ESP_RST_POWERON";
    case ESP_RST_EXT:
        return "ESP_RST_EXT";
    case ESP_RST_SW:
        return "ESP_RST_SW";
    case ESP_RST_PANIC:
        return "ESP_RST_PANIC";
    case ESP_RST_INT_WDT:
        return "ESP_RST_INT_WDT";
    case ESP_RST_TASK_WDT:
        return "ESP_RST_TASK_WDT";
    case ESP_RST_WDT:
        return "ESP_RST_WDT";
    case ESP_RST_DEEPSLEEP:
        return "ESP_RST_DEEPSLEEP";
    case ESP_RST_BROWNOUT:
        return "ESP_RST_BROWNOUT";
    case ESP_RST_SDIO:
        return "ESP_RST_SDIO";
    default:
        return "ESP_RST_UNKNOWN"; /* also the newer USB/JTAG/efuse/glitch reasons: not in protocol v1 */
    }
}

static void p_identity(void *ctx, dut_identity_t *id)
{
    (void)ctx;
    id->platform = "esp32";
    id->chip = CONFIG_IDF_TARGET;
    id->idf = esp_get_idf_version();
    /* ESP-IDF 5.x bundles esp-mqtt without a version macro: it is the one of that IDF release */
    id->esp_mqtt = "bundled with ESP-IDF";
    esp_read_mac(id->mac, ESP_MAC_WIFI_STA); /* what esp-mqtt's default client id is made from */
    if (!s_caps[0]) {
        snprintf(s_caps, sizeof s_caps, "%stls,blob,dns,tcp_probe,set_time,reset,loglevel%s%s",
#if CONFIG_MQTT_PROTOCOL_5
                 "mqtt5,",
#else
                 "",
#endif
#if CONFIG_MQTT_TRANSPORT_WEBSOCKET
                 ",ws",
#else
                 "",
#endif
#if CONFIG_MQTT_TRANSPORT_WEBSOCKET_SECURE
                 ",wss"
#else
                 ""
#endif
                );
    }
    id->caps = s_caps;
    id->extra_json = NULL;
}

static void p_heap(void *ctx, uint32_t *free_b, uint32_t *min_b)
{
    (void)ctx;
    *free_b = esp_get_free_heap_size();
    *min_b = esp_get_minimum_free_heap_size();
}

static void p_netinfo(void *ctx, char *ip, size_t ip_len, const char **netif)
{
    (void)ctx;
    dut_net_info(ip, ip_len, netif);
}

static const char *eai_name(int rc)
{
    switch (rc) {
#ifdef EAI_NONAME
    case EAI_NONAME:
        return "EAI_NONAME";
#endif
#ifdef EAI_SERVICE
    case EAI_SERVICE:
        return "EAI_SERVICE";
#endif
#ifdef EAI_FAIL
    case EAI_FAIL:
        return "EAI_FAIL";
#endif
#ifdef EAI_MEMORY
    case EAI_MEMORY:
        return "EAI_MEMORY";
#endif
#ifdef EAI_FAMILY
    case EAI_FAMILY:
        return "EAI_FAMILY";
#endif
    default:
        return "EAI_FAIL";
    }
}

static int p_dns(void *ctx, const char *host, int timeout_ms, char addrs[][DUT_ADDR_LEN], int max, const char **error)
{
    (void)ctx;
    (void)timeout_ms; /* lwIP's resolver has its own timeout (DNS_MAX_RETRIES x DNS_TMR_INTERVAL) */
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    int rc = getaddrinfo(host, NULL, &hints, &res);
    if (rc != 0 || !res) {
        *error = eai_name(rc);
        return 0;
    }
    int n = 0;
    for (struct addrinfo *a = res; a && n < max; a = a->ai_next) {
        if (a->ai_family == AF_INET) {
            inet_ntop(AF_INET, &((struct sockaddr_in *)a->ai_addr)->sin_addr, addrs[n], DUT_ADDR_LEN);
            n++;
#if CONFIG_LWIP_IPV6
        } else if (a->ai_family == AF_INET6) {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)a->ai_addr)->sin6_addr, addrs[n], DUT_ADDR_LEN);
            n++;
#endif
        }
    }
    freeaddrinfo(res);
    if (n == 0) {
        *error = "EAI_FAMILY";
    }
    return n;
}

static bool p_tcp_probe(void *ctx, const char *host, int port, int timeout_ms, int *err_no, bool *timed_out)
{
    (void)ctx;
    *timed_out = false;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    struct addrinfo *res = NULL;
    char service[8];
    snprintf(service, sizeof service, "%d", port);
    if (getaddrinfo(host, service, &hints, &res) != 0 || !res) {
        *err_no = EHOSTUNREACH;
        return false;
    }
    int fd = socket(res->ai_family, SOCK_STREAM, 0);
    if (fd < 0) {
        *err_no = errno;
        freeaddrinfo(res);
        return false;
    }
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL, 0) | O_NONBLOCK);
    bool ok = false;
    int rc = connect(fd, res->ai_addr, res->ai_addrlen);
    freeaddrinfo(res);
    if (rc == 0) {
        ok = true;
    } else if (errno != EINPROGRESS) {
        *err_no = errno;
    } else {
        fd_set w;
        FD_ZERO(&w);
        FD_SET(fd, &w);
        struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
        rc = select(fd + 1, NULL, &w, NULL, &tv);
        if (rc == 0) {
            *timed_out = true;
            *err_no = ETIMEDOUT;
        } else if (rc < 0) {
            *err_no = errno;
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
    static const struct {
        const char *name;
        esp_log_level_t level;
    } L[] = {{"NONE", ESP_LOG_NONE}, {"ERROR", ESP_LOG_ERROR}, {"WARN", ESP_LOG_WARN}, {"INFO", ESP_LOG_INFO},
        {"DEBUG", ESP_LOG_DEBUG}, {"VERBOSE", ESP_LOG_VERBOSE}};
    for (size_t i = 0; i < sizeof L / sizeof L[0]; i++) {
        if (strcmp(level, L[i].name) == 0) {
            esp_log_level_set(tag, L[i].level); /* above CONFIG_LOG_MAXIMUM_LEVEL nothing more is printed */
            return true;
        }
    }
    return false;
}

static void p_log(void *ctx, char level, const char *text)
{
    (void)ctx;
    switch (level) {
    case 'E':
        ESP_LOGE(TAG, "%s", text);
        break;
    case 'W':
        ESP_LOGW(TAG, "%s", text);
        break;
    case 'D':
        ESP_LOGD(TAG, "%s", text);
        break;
    default:
        ESP_LOGI(TAG, "%s", text);
        break;
    }
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
    .crash = NULL, /* CRASH is for stand-ins only */
    .reset_reason = p_reset_reason,
    .identity = p_identity,
    .heap = p_heap,
    .netinfo = p_netinfo,
    .dns = p_dns,
    .tcp_probe = p_tcp_probe,
    .loglevel = p_loglevel,
    .log = p_log,
};

const dut_platform_t *dut_platform_esp32(void)
{
    if (!s_write_lock) {
        s_write_lock = xSemaphoreCreateMutex();
    }
#if CONFIG_MBEDTLS_CERTIFICATE_BUNDLE
    dut_crt_bundle_attach_fn = esp_crt_bundle_attach;
#endif
    return &s_platform;
}
