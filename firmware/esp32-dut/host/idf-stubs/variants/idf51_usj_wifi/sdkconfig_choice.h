/* Compile-check variant choices for idf-stubs/sdkconfig.h (menuconfig choices of firmware/esp32-dut). */
/* esp32c3, USB-Serial-JTAG console, Wi-Fi station; checked as IDF 5.1.4 */
#define CONFIG_IDF_TARGET "esp32c3"
#define CONFIG_IDF_TARGET_ESP32C3 1
#define CONFIG_ESP_CONSOLE_USB_SERIAL_JTAG 1
#define CONFIG_ESP_CONSOLE_UART_NUM -1
/* CONFIG_ESP_CONSOLE_UART is not set: no CONFIG_ESP_CONSOLE_UART_BAUDRATE either */
#define CONFIG_DUT_NET_WIFI 1
#define CONFIG_DUT_WIFI_SSID "mqtt-harness"
#define CONFIG_DUT_WIFI_PASSWORD ""
/* CONFIG_DUT_WIFI_POWER_SAVE is not set */
#define CONFIG_ESP_WIFI_ENABLED 1
