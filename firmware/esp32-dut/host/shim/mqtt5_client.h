/* Host shim of esp-mqtt's mqtt5_client.h: the MQTT 5 reason codes, event properties and user-property calls. */
#pragma once

#include <stdbool.h>
#include <stdint.h>

#include "esp_err.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum mqtt5_reason_code_t {
    MQTT5_SUCCESS = 0x00,
    MQTT5_DISCONNECT_WITH_WILL = 0x04,
    MQTT5_UNSPECIFIED_ERROR = 0x80,
    MQTT5_MALFORMED_PACKET = 0x81,
    MQTT5_PROTOCOL_ERROR = 0x82,
    MQTT5_UNSUPPORTED_PROTOCOL_VER = 0x84,
    MQTT5_INVALID_CLIENT_ID = 0x85,
    MQTT5_BAD_USERNAME_OR_PWD = 0x86,
    MQTT5_NOT_AUTHORIZED = 0x87,
    MQTT5_SERVER_UNAVAILABLE = 0x88,
    MQTT5_KEEP_ALIVE_TIMEOUT = 0x8D,
    MQTT5_SESSION_TAKEN_OVER = 0x8E,
} esp_mqtt5_reason_code_t;

typedef struct mqtt5_user_property_list_t *mqtt5_user_property_handle_t;

typedef struct {
    bool payload_format_indicator;
    char *response_topic;
    int response_topic_len;
    char *correlation_data;
    uint16_t correlation_data_len;
    char *content_type;
    int content_type_len;
    uint16_t subscribe_id;
    mqtt5_user_property_handle_t user_property;
} esp_mqtt5_event_property_t;

typedef struct {
    const char *key;
    const char *value;
} esp_mqtt5_user_property_item_t;

esp_err_t esp_mqtt5_client_set_user_property(mqtt5_user_property_handle_t *user_property,
                                             esp_mqtt5_user_property_item_t item[], uint8_t item_num);
/* Copies up to *item_num items; the caller frees each key and value. */
esp_err_t esp_mqtt5_client_get_user_property(mqtt5_user_property_handle_t user_property,
                                             esp_mqtt5_user_property_item_t *item, uint8_t *item_num);
uint8_t esp_mqtt5_client_get_user_property_count(mqtt5_user_property_handle_t user_property);
void esp_mqtt5_client_delete_user_property(mqtt5_user_property_handle_t user_property);

#ifdef __cplusplus
}
#endif
