/* Compile-check variant choices for idf-stubs/sdkconfig.h (menuconfig choices of firmware/esp32-dut). */
/* esp32s3, USB-Serial-JTAG console, no network; checked as IDF 5.3.1 */
#define CONFIG_IDF_TARGET "esp32s3"
#define CONFIG_IDF_TARGET_ESP32S3 1
#define CONFIG_ESP_CONSOLE_USB_SERIAL_JTAG 1
#define CONFIG_ESP_CONSOLE_UART_NUM -1
/* CONFIG_ESP_CONSOLE_UART is not set: no CONFIG_ESP_CONSOLE_UART_BAUDRATE either */
#define CONFIG_DUT_NET_NONE 1
