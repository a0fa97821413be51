/* esp_mqtt_event_t -> EVT lines: every field, error_handle, MQTT 5 properties, DATA split into pieces. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dut_internal.h"
#include "fake.h"

static esp_mqtt_error_codes_t s_err;

static esp_mqtt_event_t event(esp_mqtt_event_id_t id)
{
    esp_mqtt_event_t ev;
    memset(&ev, 0, sizeof ev);
    memset(&s_err, 0, sizeof s_err);
    ev.event_id = id;
    ev.error_handle = &s_err;
    ev.protocol_ver = MQTT_PROTOCOL_V_3_1_1;
    return ev;
}

static char *json_of(const esp_mqtt_event_t *ev)
{
    cJSON *o = dut_event_json(ev, 42);
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    return s;
}

static void connected_fields(void **state)
{
    (void)state;
    esp_mqtt_event_t ev = event(MQTT_EVENT_CONNECTED);
    ev.session_present = 1;
    char *s = json_of(&ev);
    assert_string_equal(s, "{\"t_ms\":42,\"event\":\"MQTT_EVENT_CONNECTED\",\"event_id\":1,\"msg_id\":0,"
                           "\"session_present\":true,\"topic\":null,\"topic_len\":0,\"total_data_len\":0,\"qos\":0,"
                           "\"retain\":false,\"dup\":false,\"protocol_ver\":\"3.1.1\",\"error_handle\":null,"
                           "\"reason_code\":0,\"data_b64\":null,\"data_len\":0,\"current_data_offset\":0}");
    cJSON_free(s);
}

static void error_and_subscribe_failed(void **state)
{
    (void)state;
    esp_mqtt_event_t ev = event(MQTT_EVENT_ERROR);
    s_err.error_type = MQTT_ERROR_TYPE_TCP_TRANSPORT;
    s_err.esp_tls_last_esp_err = ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST;
    s_err.esp_transport_sock_errno = 111;
    char *s = json_of(&ev);
    assert_non_null(strstr(s, "\"error_handle\":{\"error_type\":\"MQTT_ERROR_TYPE_TCP_TRANSPORT\""));
    assert_non_null(strstr(s, "\"name\":\"ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST\""));
    assert_non_null(strstr(s, "\"name\":\"ECONNREFUSED\""));
    cJSON_free(s);

    char codes[2] = {1, (char)0x80};
    ev = event(MQTT_EVENT_SUBSCRIBED);
    s_err.error_type = MQTT_ERROR_TYPE_SUBSCRIBE_FAILED;
    ev.msg_id = 9;
    ev.data = codes;
    ev.data_len = 2;
    ev.total_data_len = 2;
    s = json_of(&ev);
    assert_non_null(strstr(s, "\"error_type\":\"MQTT_ERROR_TYPE_SUBSCRIBE_FAILED\""));
    assert_non_null(strstr(s, "\"data_b64\":\"AYA=\",\"data_len\":2"));
    cJSON_free(s);

    ev = event(MQTT_EVENT_PUBLISHED); /* a stale error_handle is not shown on other events */
    s_err.error_type = MQTT_ERROR_TYPE_TCP_TRANSPORT;
    s = json_of(&ev);
    assert_non_null(strstr(s, "\"error_handle\":null"));
    cJSON_free(s);
}

static void topics_that_are_not_utf8(void **state)
{
    (void)state;
    esp_mqtt_event_t ev = event(MQTT_EVENT_DATA);
    char topic[] = "a/\xff";
    ev.topic = topic;
    ev.topic_len = 3;
    char *s = json_of(&ev);
    assert_non_null(strstr(s, "\"topic_b64\":\"YS//\",\"topic_len\":3"));
    assert_null(strstr(s, "\"topic\":"));
    cJSON_free(s);
}

static void mqtt5_properties(void **state)
{
    (void)state;
    esp_mqtt_event_t ev = event(MQTT_EVENT_DATA);
    esp_mqtt5_event_property_t p;
    memset(&p, 0, sizeof p);
    char rt[] = "reply/1", cd[] = "\x01\x02", ct[] = "text/plain";
    p.payload_format_indicator = true;
    p.response_topic = rt;
    p.response_topic_len = 7;
    p.correlation_data = cd;
    p.correlation_data_len = 2;
    p.content_type = ct;
    p.content_type_len = 10;
    p.subscribe_id = 7;
    esp_mqtt5_user_property_item_t items[2] = {{"k1", "v1"}, {"k2", "v2"}};
    esp_mqtt5_client_set_user_property(&p.user_property, items, 2);
    ev.property = &p;
    ev.protocol_ver = MQTT_PROTOCOL_V_5;
    char *s = json_of(&ev);
    assert_non_null(strstr(s, "\"property\":{\"payload_format_indicator\":true,\"response_topic\":\"reply/1\","
                              "\"correlation_data_b64\":\"AQI=\",\"content_type\":\"text/plain\",\"subscribe_id\":7,"
                              "\"user_property\":[[\"k1\",\"v1\"],[\"k2\",\"v2\"]]}"));
    cJSON_free(s);
    esp_mqtt5_client_delete_user_property(p.user_property);
}

typedef struct {
    char *pieces[256];
    int n;
} pieces_t;

static void collect(void *arg, const char *json)
{
    pieces_t *p = arg;
    p->pieces[p->n++] = strdup(json);
}

static void data_split(void **state)
{
    (void)state;
    const size_t max_line = 1024, total = 10000;
    char *payload = malloc(total);
    for (size_t i = 0; i < total; i++) {
        payload[i] = (char)(i * 7);
    }
    /* esp-mqtt already delivers it in two events (buffer 6000); each becomes several pieces */
    pieces_t p = {0};
    uint32_t crc = 0;
    char topic[] = "big/one";
    size_t split = 6000;
    for (int part = 0; part < 2; part++) {
        esp_mqtt_event_t ev = event(MQTT_EVENT_DATA);
        ev.msg_id = 5;
        ev.qos = 1;
        ev.total_data_len = (int)total;
        ev.current_data_offset = part ? (int)split : 0;
        ev.data = payload + (part ? split : 0);
        ev.data_len = (int)(part ? total - split : split);
        if (!part) {
            ev.topic = topic;
            ev.topic_len = 7;
        }
        dut_event_pieces(&ev, 1, max_line, &crc, collect, &p);
    }
    assert_true(p.n > 10);
    char *back = malloc(total);
    size_t got = 0;
    for (int i = 0; i < p.n; i++) {
        assert_true(strlen(p.pieces[i]) + DUT_EVT_OVERHEAD <= max_line);
        cJSON *o = cJSON_Parse(p.pieces[i]);
        assert_non_null(o);
        assert_int_equal(cJSON_GetObjectItem(o, "current_data_offset")->valuedouble, (double)got);
        assert_int_equal(cJSON_GetObjectItem(o, "total_data_len")->valuedouble, (double)total);
        const char *b64 = cJSON_GetObjectItem(o, "data_b64")->valuestring;
        size_t n = 0;
        assert_true(dut_b64_decode(b64, strlen(b64), (uint8_t *)back + got, &n));
        assert_int_equal(cJSON_GetObjectItem(o, "data_len")->valuedouble, (double)n);
        got += n;
        cJSON *t = cJSON_GetObjectItem(o, "topic");
        if (i == 0) {
            assert_string_equal(t->valuestring, "big/one");
        } else {
            assert_true(cJSON_IsNull(t));
        }
        cJSON *c = cJSON_GetObjectItem(o, "crc32");
        if (i == p.n - 1) {
            char want[16];
            snprintf(want, sizeof want, "0x%08x", dut_crc32(0, payload, total));
            assert_string_equal(c->valuestring, want);
        } else {
            assert_null(c);
        }
        cJSON_Delete(o);
        free(p.pieces[i]);
    }
    assert_int_equal(got, total);
    assert_memory_equal(back, payload, total);
    free(back);
    free(payload);
}

static void empty_message_has_crc(void **state)
{
    (void)state;
    pieces_t p = {0};
    uint32_t crc = 123;
    char topic[] = "t";
    esp_mqtt_event_t ev = event(MQTT_EVENT_DATA);
    ev.topic = topic;
    ev.topic_len = 1;
    dut_event_pieces(&ev, 1, 1024, &crc, collect, &p);
    assert_int_equal(p.n, 1);
    assert_non_null(strstr(p.pieces[0], "\"data_b64\":\"\",\"data_len\":0,\"current_data_offset\":0,"
                                        "\"crc32\":\"0x00000000\""));
    free(p.pieces[0]);
}

static void long_topic_is_cut_not_overflowing(void **state)
{
    (void)state;
    char *topic = malloc(3000);
    memset(topic, 'a', 3000);
    pieces_t p = {0};
    uint32_t crc = 0;
    esp_mqtt_event_t ev = event(MQTT_EVENT_DATA);
    ev.topic = topic;
    ev.topic_len = 3000;
    ev.data = topic;
    ev.data_len = 10;
    ev.total_data_len = 10;
    dut_event_pieces(&ev, 1, 1024, &crc, collect, &p);
    assert_int_equal(p.n, 1);
    assert_true(strlen(p.pieces[0]) + DUT_EVT_OVERHEAD <= 1024);
    assert_non_null(strstr(p.pieces[0], "\"topic_cut\":true"));
    free(p.pieces[0]);
    free(topic);
}

static void seq_numbers_through_the_core(void **state)
{
    (void)state;
    fake_platform_reset();
    assert_true(dut_core_init(fake_platform(), 1024));
    esp_mqtt_event_t ev = event(MQTT_EVENT_BEFORE_CONNECT);
    dut_core_event_handler(NULL, "MQTT_EVENTS", ev.event_id, &ev);
    char *big = calloc(1, 5000);
    ev = event(MQTT_EVENT_DATA);
    ev.data = big;
    ev.data_len = 5000;
    ev.total_data_len = 5000;
    dut_core_event_handler(NULL, "MQTT_EVENTS", ev.event_id, &ev);
    free(big);
    int seq = 0;
    for (int i = 0; i < fake_nlines(); i++) {
        long id;
        char kind[16];
        cJSON *o = fake_parse(i, &id, kind);
        assert_string_equal(kind, "EVT");
        assert_int_equal(id, -1);
        assert_true(strlen(fake_line(i)) <= 1025);
        assert_int_equal(cJSON_GetObjectItem(o, "seq")->valuedouble, ++seq);
        cJSON_Delete(o);
    }
    assert_true(seq > 3);
    dut_core_deinit();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(connected_fields), cmocka_unit_test(error_and_subscribe_failed),
        cmocka_unit_test(topics_that_are_not_utf8), cmocka_unit_test(mqtt5_properties), cmocka_unit_test(data_split),
        cmocka_unit_test(empty_message_has_crc), cmocka_unit_test(long_topic_is_cut_not_overflowing),
        cmocka_unit_test(seq_numbers_through_the_core),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
