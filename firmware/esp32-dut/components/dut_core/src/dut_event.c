/* esp_mqtt_event_t -> EVT JSON (docs/dut-protocol.md §7), DATA split into pieces that fit max_line. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dut_internal.h"

#ifdef CONFIG_MQTT_PROTOCOL_5
#include "mqtt5_client.h"
#endif

/* A string field from pointer + length: "name" if valid UTF-8, else "name_b64". */
static void add_bytes_field(cJSON *o, const char *name, const char *p, size_t n)
{
    char key[48];
    if (!p) {
        cJSON_AddNullToObject(o, name);
        return;
    }
    if (dut_utf8_valid((const uint8_t *)p, n)) {
        char *s = malloc(n + 1);
        if (!s) {
            cJSON_AddNullToObject(o, name);
            return;
        }
        memcpy(s, p, n);
        s[n] = '\0';
        cJSON_AddStringToObject(o, name, s);
        free(s);
        return;
    }
    char *b = malloc(dut_b64_encoded_len(n) + 1);
    snprintf(key, sizeof key, "%s_b64", name);
    if (!b) {
        cJSON_AddNullToObject(o, key);
        return;
    }
    dut_b64_encode((const uint8_t *)p, n, b);
    cJSON_AddStringToObject(o, key, b);
    free(b);
}

static void add_b64(cJSON *o, const char *name, const char *p, size_t n)
{
    if (!p) {
        cJSON_AddNullToObject(o, name);
        return;
    }
    char *b = malloc(dut_b64_encoded_len(n) + 1);
    if (!b) {
        cJSON_AddNullToObject(o, name);
        return;
    }
    dut_b64_encode((const uint8_t *)p, n, b);
    cJSON_AddStringToObject(o, name, b);
    free(b);
}

#ifdef CONFIG_MQTT_PROTOCOL_5
static cJSON *property_json(const esp_mqtt_event_t *ev, bool always)
{
    const esp_mqtt5_event_property_t *p = ev->property;
    if (!p) {
        return NULL;
    }
    cJSON *o = cJSON_CreateObject();
    if (p->payload_format_indicator) {
        cJSON_AddBoolToObject(o, "payload_format_indicator", true);
    }
    if (p->response_topic && p->response_topic_len > 0) {
        add_bytes_field(o, "response_topic", p->response_topic, (size_t)p->response_topic_len);
    }
    if (p->correlation_data && p->correlation_data_len > 0) {
        add_b64(o, "correlation_data_b64", p->correlation_data, p->correlation_data_len);
    }
    if (p->content_type && p->content_type_len > 0) {
        add_bytes_field(o, "content_type", p->content_type, (size_t)p->content_type_len);
    }
    if (p->subscribe_id) {
        cJSON_AddNumberToObject(o, "subscribe_id", p->subscribe_id);
    }
    uint8_t count = esp_mqtt5_client_get_user_property_count(p->user_property);
    if (count) {
        esp_mqtt5_user_property_item_t *items = calloc(count, sizeof *items);
        if (items && esp_mqtt5_client_get_user_property(p->user_property, items, &count) == ESP_OK) {
            cJSON *list = cJSON_AddArrayToObject(o, "user_property");
            for (uint8_t i = 0; i < count; i++) {
                cJSON *pair = cJSON_CreateArray();
                const char *k = items[i].key ? items[i].key : "";
                const char *v = items[i].value ? items[i].value : "";
                cJSON_AddItemToArray(pair, cJSON_CreateString(dut_utf8_valid((const uint8_t *)k, strlen(k)) ? k : "?"));
                cJSON_AddItemToArray(pair, cJSON_CreateString(dut_utf8_valid((const uint8_t *)v, strlen(v)) ? v : "?"));
                cJSON_AddItemToArray(list, pair);
                free((char *)items[i].key);
                free((char *)items[i].value);
            }
        }
        free(items);
    }
    if (!always && !o->child) {
        cJSON_Delete(o);
        return NULL;
    }
    return o;
}
#endif

/* Everything but the data fields. first_piece: topic as the event has it; later pieces carry none. */
static cJSON *common_json(const esp_mqtt_event_t *ev, int64_t t_ms, bool first_piece)
{
    cJSON *o = cJSON_CreateObject();
    if (!o) {
        return NULL;
    }
    cJSON_AddNumberToObject(o, "t_ms", (double)t_ms);
    cJSON_AddStringToObject(o, "event", dut_event_name(ev->event_id));
    cJSON_AddNumberToObject(o, "event_id", ev->event_id);
    cJSON_AddNumberToObject(o, "msg_id", ev->msg_id);
    cJSON_AddBoolToObject(o, "session_present", ev->session_present != 0);
    if (first_piece && ev->topic) {
        add_bytes_field(o, "topic", ev->topic, ev->topic_len > 0 ? (size_t)ev->topic_len : 0);
        cJSON_AddNumberToObject(o, "topic_len", ev->topic_len);
    } else {
        cJSON_AddNullToObject(o, "topic");
        cJSON_AddNumberToObject(o, "topic_len", 0);
    }
    cJSON_AddNumberToObject(o, "total_data_len", ev->total_data_len);
    cJSON_AddNumberToObject(o, "qos", ev->qos);
    cJSON_AddBoolToObject(o, "retain", ev->retain);
    cJSON_AddBoolToObject(o, "dup", ev->dup);
    const char *ver = dut_protocol_ver_name(ev->protocol_ver);
    if (ver) {
        cJSON_AddStringToObject(o, "protocol_ver", ver);
    } else {
        cJSON_AddNullToObject(o, "protocol_ver");
    }
    bool with_handle = ev->error_handle &&
                       (ev->event_id == MQTT_EVENT_ERROR ||
                        (ev->event_id == MQTT_EVENT_SUBSCRIBED && ev->error_handle->error_type != MQTT_ERROR_TYPE_NONE));
    if (with_handle) {
        cJSON_AddItemToObject(o, "error_handle", dut_error_handle_json(ev->error_handle, ev->protocol_ver));
    } else {
        cJSON_AddNullToObject(o, "error_handle");
    }
#ifdef DUT_EVENT_HAS_REASON_CODE
    cJSON_AddNumberToObject(o, "reason_code", ev->reason_code);
#endif
#ifdef CONFIG_MQTT_PROTOCOL_5
    /* properties belong to a message: on its first piece only, not on continuation pieces or events */
    bool continuation = ev->event_id == MQTT_EVENT_DATA && (!first_piece || ev->current_data_offset > 0);
    if (ev->protocol_ver == MQTT_PROTOCOL_V_5 && !continuation) {
        cJSON *prop = property_json(ev, ev->event_id == MQTT_EVENT_DATA);
        if (prop) {
            cJSON_AddItemToObject(o, "property", prop);
        }
    }
#endif
    return o;
}

cJSON *dut_event_json(const esp_mqtt_event_t *ev, int64_t t_ms)
{
    cJSON *o = common_json(ev, t_ms, true);
    if (!o) {
        return NULL;
    }
    size_t n = ev->data && ev->data_len > 0 ? (size_t)ev->data_len : 0;
    add_b64(o, "data_b64", ev->data, n);
    cJSON_AddNumberToObject(o, "data_len", ev->data ? ev->data_len : 0);
    cJSON_AddNumberToObject(o, "current_data_offset", ev->current_data_offset);
    return o;
}

static size_t serialized_len(cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    size_t n = s ? strlen(s) : 0;
    cJSON_free(s);
    return n;
}

/* Raw data bytes that fit in one piece next to the fields of `base`. */
static size_t piece_capacity(cJSON *base, size_t max_line)
{
    cJSON *probe = cJSON_Duplicate(base, true);
    if (!probe) {
        return 0;
    }
    cJSON_AddStringToObject(probe, "data_b64", "");
    cJSON_AddNumberToObject(probe, "data_len", 2147483647.0);
    cJSON_AddNumberToObject(probe, "current_data_offset", 2147483647.0);
    cJSON_AddStringToObject(probe, "crc32", "0xffffffff");
    size_t fixed = serialized_len(probe) + DUT_EVT_OVERHEAD;
    cJSON_Delete(probe);
    if (fixed + 4 >= max_line) {
        return 0;
    }
    return (max_line - fixed) / 4 * 3;
}

int dut_event_pieces(const esp_mqtt_event_t *ev, int64_t t_ms, size_t max_line, uint32_t *crc, dut_piece_cb emit,
                     void *arg)
{
    if (ev->current_data_offset == 0) {
        *crc = 0;
    }
    const char *data = ev->data;
    size_t total = data && ev->data_len > 0 ? (size_t)ev->data_len : 0;
    cJSON *first = common_json(ev, t_ms, true);
    cJSON *later = common_json(ev, t_ms, false);
    if (!first || !later) {
        cJSON_Delete(first);
        cJSON_Delete(later);
        return 0;
    }
    size_t cap = piece_capacity(first, max_line);
    if (cap < 48 && ev->topic) {
        /* a topic too long for any line: cut it rather than break the line limit; topic_len keeps its size */
        cJSON_ReplaceItemInObjectCaseSensitive(first, "topic", cJSON_CreateNull());
        cJSON_DeleteItemFromObjectCaseSensitive(first, "topic_b64");
        cJSON_AddBoolToObject(first, "topic_cut", true);
        cap = piece_capacity(first, max_line);
    }
    size_t later_cap = piece_capacity(later, max_line);
    if (cap == 0) {
        cap = 3;
    }
    if (later_cap == 0) {
        later_cap = 3;
    }
    int pieces = 0;
    size_t off = 0;
    char hex[16];
    do {
        cJSON *o = cJSON_Duplicate(pieces == 0 ? first : later, true);
        size_t room = pieces == 0 ? cap : later_cap;
        size_t n = total - off < room ? total - off : room;
        if (!o) {
            break;
        }
        add_b64(o, "data_b64", data ? data + off : "", n);
        cJSON_AddNumberToObject(o, "data_len", (double)n);
        cJSON_AddNumberToObject(o, "current_data_offset", (double)((size_t)ev->current_data_offset + off));
        if (n) {
            *crc = dut_crc32(*crc, data + off, n);
        }
        if ((size_t)ev->current_data_offset + off + n >= (size_t)ev->total_data_len) {
            snprintf(hex, sizeof hex, "0x%08lx", (unsigned long)*crc);
            cJSON_AddStringToObject(o, "crc32", hex);
        }
        char *text = cJSON_PrintUnformatted(o);
        cJSON_Delete(o);
        if (text) {
            emit(arg, text);
            cJSON_free(text);
        }
        pieces++;
        off += n;
    } while (off < total);
    cJSON_Delete(first);
    cJSON_Delete(later);
    return pieces;
}
