/* mqtt-harness device firmware: network up, then the protocol banner, then a console task feeding the core.
 * Everything about the protocol lives in components/dut_core; this file only wires ESP-IDF to it. */
#include <string.h>
#include <sys/time.h>

#include "esp_event.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "freertos/FreeRTOS.h"
#include "freertos/task.h"
#include "nvs_flash.h"
#include "sdkconfig.h"

#if CONFIG_DUT_SNTP
#include "esp_netif_sntp.h"
#endif

#include "dut_core.h"
#include "platform_esp32.h"

static const char *TAG = "dut";

static void console_task(void *arg)
{
    (void)arg;
    static uint8_t buf[512];
    for (;;) {
        int n = dut_console_read(buf, sizeof buf, 20);
        if (n > 0) {
            dut_core_feed(buf, (size_t)n); /* requests are served here, one at a time, in order */
        }
    }
}

#if CONFIG_DUT_SNTP
static void on_sntp(struct timeval *tv)
{
    (void)tv;
    dut_platform_time_synced();
    ESP_LOGI(TAG, "clock set by SNTP");
}
#endif

void app_main(void)
{
    esp_err_t err = nvs_flash_init();
    if (err == ESP_ERR_NVS_NO_FREE_PAGES || err == ESP_ERR_NVS_NEW_VERSION_FOUND) {
        ESP_ERROR_CHECK(nvs_flash_erase());
        err = nvs_flash_init();
    }
    ESP_ERROR_CHECK(err);
    ESP_ERROR_CHECK(esp_netif_init());
    ESP_ERROR_CHECK(esp_event_loop_create_default());
    ESP_ERROR_CHECK(dut_console_init());

    const dut_platform_t *platform = dut_platform_esp32();
    if (!dut_core_init(platform, CONFIG_DUT_MAX_LINE)) {
        ESP_LOGE(TAG, "out of memory for the protocol core");
        return;
    }
    ESP_ERROR_CHECK(dut_net_start());
#if CONFIG_DUT_SNTP
    esp_sntp_config_t sntp = ESP_NETIF_SNTP_DEFAULT_CONFIG(CONFIG_DUT_SNTP_SERVER);
    sntp.sync_cb = on_sntp;
    esp_netif_sntp_init(&sntp);
#endif
    if (!dut_net_wait(CONFIG_DUT_NET_WAIT_MS)) {
        ESP_LOGW(TAG, "no IP address after %d ms; serving the console anyway", CONFIG_DUT_NET_WAIT_MS);
    }
    dut_core_banner(); /* after the start-up log, as docs/dut-protocol.md §3 asks */
    xTaskCreate(console_task, "dut_console", CONFIG_DUT_CONSOLE_TASK_STACK, NULL, 5, NULL);
}
