/* Compile-check variant choices for idf-stubs/sdkconfig.h (menuconfig choices of firmware/esp32-dut). */
/* esp32, UART0 console, Wi-Fi station, SNTP; checked as IDF 5.1.4 */
#define CONFIG_IDF_TARGET "esp32"
#define CONFIG_IDF_TARGET_ESP32 1
#define CONFIG_SOC_EMAC_SUPPORTED 1
#define CONFIG_ESP_CONSOLE_UART_DEFAULT 1
#define CONFIG_ESP_CONSOLE_UART 1
#define CONFIG_ESP_CONSOLE_UART_NUM 0
#define CONFIG_ESP_CONSOLE_UART_BAUDRATE 115200
#define CONFIG_DUT_NET_WIFI 1
#define CONFIG_DUT_WIFI_SSID "mqtt-harness"
#define CONFIG_DUT_WIFI_PASSWORD ""
/* CONFIG_DUT_WIFI_POWER_SAVE is not set */
#define CONFIG_ESP_WIFI_ENABLED 1
#define CONFIG_DUT_SNTP 1
#define CONFIG_DUT_SNTP_SERVER "pool.ntp.org"
