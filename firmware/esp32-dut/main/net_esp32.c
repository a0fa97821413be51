/* Network bring-up per Kconfig: Wi-Fi station (reconnects forever) or Ethernet on the internal EMAC. */
#include <string.h>

#include "esp_bit_defs.h" /* BIT0; otherwise only reachable through FreeRTOS port headers */
#include "esp_event.h"
#include "esp_idf_version.h"
#include "esp_log.h"
#include "esp_netif.h"
#include "freertos/FreeRTOS.h"
#include "freertos/event_groups.h"
#include "sdkconfig.h"

#if CONFIG_DUT_NET_WIFI
#include "esp_wifi.h"
#endif
#if CONFIG_DUT_NET_ETH
#include "esp_eth.h"
#endif

#include "platform_esp32.h"

static const char *TAG = "dut_net";
static EventGroupHandle_t s_bits;
static esp_netif_t *s_netif;
static const char *s_netif_name;
#define GOT_IP BIT0

#if CONFIG_DUT_NET_WIFI || CONFIG_DUT_NET_ETH
static void on_ip(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    (void)arg;
    (void)base;
    (void)id;
    const ip_event_got_ip_t *ev = data;
    ESP_LOGI(TAG, "%s up: " IPSTR, s_netif_name, IP2STR(&ev->ip_info.ip));
    xEventGroupSetBits(s_bits, GOT_IP);
}
#endif

#if CONFIG_DUT_NET_WIFI
static void on_wifi(void *arg, esp_event_base_t base, int32_t id, void *data)
{
    (void)arg;
    (void)base;
    if (id == WIFI_EVENT_STA_START) {
        esp_wifi_connect();
    } else if (id == WIFI_EVENT_STA_DISCONNECTED) {
        const wifi_event_sta_disconnected_t *ev = data;
        xEventGroupClearBits(s_bits, GOT_IP);
        /* keep trying: a test run outlives an access point's hiccup */
        ESP_LOGW(TAG, "Wi-Fi disconnected (reason %d), reconnecting", ev->reason);
        esp_wifi_connect();
    }
}

static esp_err_t start_wifi(void)
{
    s_netif = esp_netif_create_default_wifi_sta();
    s_netif_name = "wifi";
    wifi_init_config_t init = WIFI_INIT_CONFIG_DEFAULT();
    ESP_ERROR_CHECK(esp_wifi_init(&init));
    ESP_ERROR_CHECK(esp_event_handler_register(WIFI_EVENT, ESP_EVENT_ANY_ID, on_wifi, NULL));
    ESP_ERROR_CHECK(esp_event_handler_register(IP_EVENT, IP_EVENT_STA_GOT_IP, on_ip, NULL));
    wifi_config_t cfg;
    memset(&cfg, 0, sizeof cfg);
    strncpy((char *)cfg.sta.ssid, CONFIG_DUT_WIFI_SSID, sizeof cfg.sta.ssid);
    strncpy((char *)cfg.sta.password, CONFIG_DUT_WIFI_PASSWORD, sizeof cfg.sta.password);
    cfg.sta.threshold.authmode = strlen(CONFIG_DUT_WIFI_PASSWORD) ? WIFI_AUTH_WPA2_PSK : WIFI_AUTH_OPEN;
    ESP_ERROR_CHECK(esp_wifi_set_mode(WIFI_MODE_STA));
    ESP_ERROR_CHECK(esp_wifi_set_config(WIFI_IF_STA, &cfg));
    ESP_ERROR_CHECK(esp_wifi_start());
#if !CONFIG_DUT_WIFI_POWER_SAVE
    esp_wifi_set_ps(WIFI_PS_NONE);
#endif
    ESP_LOGI(TAG, "Wi-Fi: joining \"%s\"", CONFIG_DUT_WIFI_SSID);
    return ESP_OK;
}
#endif

#if CONFIG_DUT_NET_ETH
static esp_err_t start_eth(void)
{
    eth_mac_config_t mac_config = ETH_MAC_DEFAULT_CONFIG();
    eth_phy_config_t phy_config = ETH_PHY_DEFAULT_CONFIG();
    phy_config.phy_addr = CONFIG_DUT_ETH_PHY_ADDR;
    phy_config.reset_gpio_num = CONFIG_DUT_ETH_PHY_RST_GPIO;
    eth_esp32_emac_config_t emac_config = ETH_ESP32_EMAC_DEFAULT_CONFIG();
#if ESP_IDF_VERSION >= ESP_IDF_VERSION_VAL(5, 3, 0)
    /* 5.3 moved the ESP32 EMAC config to esp_eth_mac_esp.h with the SMI pins in smi_gpio (5.2 still has the flat
     * smi_mdc_gpio_num/smi_mdio_gpio_num, deprecated from 5.3) */
    emac_config.smi_gpio.mdc_num = CONFIG_DUT_ETH_MDC_GPIO;
    emac_config.smi_gpio.mdio_num = CONFIG_DUT_ETH_MDIO_GPIO;
#else
    emac_config.smi_mdc_gpio_num = CONFIG_DUT_ETH_MDC_GPIO;
    emac_config.smi_mdio_gpio_num = CONFIG_DUT_ETH_MDIO_GPIO;
#endif
    esp_eth_mac_t *mac = esp_eth_mac_new_esp32(&emac_config, &mac_config);
#if CONFIG_DUT_ETH_PHY_IP101
    esp_eth_phy_t *phy = esp_eth_phy_new_ip101(&phy_config);
#elif CONFIG_DUT_ETH_PHY_LAN87XX
    esp_eth_phy_t *phy = esp_eth_phy_new_lan87xx(&phy_config);
#elif CONFIG_DUT_ETH_PHY_RTL8201
    esp_eth_phy_t *phy = esp_eth_phy_new_rtl8201(&phy_config);
#else
    esp_eth_phy_t *phy = esp_eth_phy_new_dp83848(&phy_config);
#endif
    esp_eth_config_t config = ETH_DEFAULT_CONFIG(mac, phy);
    esp_eth_handle_t eth = NULL;
    ESP_ERROR_CHECK(esp_eth_driver_install(&config, &eth));
    esp_netif_config_t netif_cfg = ESP_NETIF_DEFAULT_ETH();
    s_netif = esp_netif_new(&netif_cfg);
    s_netif_name = "eth";
    ESP_ERROR_CHECK(esp_netif_attach(s_netif, esp_eth_new_netif_glue(eth)));
    ESP_ERROR_CHECK(esp_event_handler_register(IP_EVENT, IP_EVENT_ETH_GOT_IP, on_ip, NULL));
    ESP_ERROR_CHECK(esp_eth_start(eth));
    ESP_LOGI(TAG, "Ethernet started");
    return ESP_OK;
}
#endif

esp_err_t dut_net_start(void)
{
    s_bits = xEventGroupCreate();
#if CONFIG_DUT_NET_WIFI
    return start_wifi();
#elif CONFIG_DUT_NET_ETH
    return start_eth();
#else
    ESP_LOGW(TAG, "no network configured (CONFIG_DUT_NET_NONE)");
    return ESP_OK;
#endif
}

bool dut_net_wait(int timeout_ms)
{
    if (!s_bits || !s_netif) {
        return false;
    }
    return (xEventGroupWaitBits(s_bits, GOT_IP, pdFALSE, pdTRUE, pdMS_TO_TICKS(timeout_ms)) & GOT_IP) != 0;
}

void dut_net_info(char *ip, size_t ip_len, const char **netif)
{
    ip[0] = '\0';
    *netif = s_netif_name;
    esp_netif_ip_info_t info;
    if (s_netif && esp_netif_get_ip_info(s_netif, &info) == ESP_OK && info.ip.addr != 0) {
        esp_ip4addr_ntoa(&info.ip, ip, (int)ip_len);
    }
}
