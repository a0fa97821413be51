/* Requests through the line reader and dispatcher: exactly one answer each, bad input, blobs, the client verbs. */
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

static int setup(void **state)
{
    (void)state;
    fake_platform_reset();
    fake_mqtt_reset();
    assert_true(dut_core_init(fake_platform(), 1024));
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    dut_core_deinit();
    assert_int_equal(fake_mqtt_clients(), 0);
    return 0;
}

static void send(const char *line)
{
    dut_core_feed((const uint8_t *)line, strlen(line));
    dut_core_feed((const uint8_t *)"\n", 1);
}

/* The answer to `id`; fails unless there is exactly one. */
static cJSON *answer(long id, char kind[16])
{
    cJSON *found = NULL;
    int n = 0;
    for (int i = 0; i < fake_nlines(); i++) {
        long lid;
        char k[16];
        cJSON *o = fake_parse(i, &lid, k);
        if (o && lid == id && (strcmp(k, "OK") == 0 || strcmp(k, "ERR") == 0)) {
            n++;
            cJSON_Delete(found);
            found = o;
            strcpy(kind, k);
        } else {
            cJSON_Delete(o);
        }
    }
    if (n != 1) {
        fail_msg("request %ld got %d answers", id, n);
    }
    return found;
}

static void expect_ok(long id)
{
    char kind[16];
    cJSON *o = answer(id, kind);
    if (strcmp(kind, "OK") != 0) {
        char *s = cJSON_PrintUnformatted(o);
        fail_msg("request %ld: %s %s", id, kind, s);
    }
    cJSON_Delete(o);
}

static void expect_err(long id, const char *name)
{
    char kind[16];
    cJSON *o = answer(id, kind);
    assert_string_equal(kind, "ERR");
    assert_string_equal(cJSON_GetObjectItem(o, "name")->valuestring, name);
    assert_true(cJSON_IsString(cJSON_GetObjectItem(o, "msg")));
    cJSON_Delete(o);
}

static double ok_number(long id, const char *field)
{
    char kind[16];
    cJSON *o = answer(id, kind);
    assert_string_equal(kind, "OK");
    cJSON *v = cJSON_GetObjectItem(o, field);
    assert_non_null(v);
    double d = v->valuedouble;
    cJSON_Delete(o);
    return d;
}

static void hello_has_every_banner_field(void **state)
{
    (void)state;
    dut_core_banner();
    send("@@1 1 HELLO {\"proto\":1,\"host\":\"test\"}");
    long id;
    cJSON *boot = fake_last("BOOT", &id);
    char kind[16];
    cJSON *hello = answer(1, kind);
    assert_string_equal(kind, "OK");
    const char *fields[] = {"proto", "proto_minor", "fw", "idf", "esp_mqtt", "chip", "mac", "reset_reason",
                            "max_line", "platform", "caps", "libmosquitto"};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++) {
        assert_non_null(cJSON_GetObjectItem(boot, fields[i]));
        assert_non_null(cJSON_GetObjectItem(hello, fields[i]));
    }
    assert_int_equal(cJSON_GetObjectItem(hello, "proto")->valueint, 1); /* extra fields cannot override */
    assert_string_equal(cJSON_GetObjectItem(hello, "mac")->valuestring, "24:0a:c4:12:34:56");
    assert_int_equal(cJSON_GetObjectItem(hello, "max_line")->valueint, 1024);
    assert_int_equal(cJSON_GetArraySize(cJSON_GetObjectItem(hello, "caps")), 7);
    cJSON_Delete(boot);
    cJSON_Delete(hello);
}

static void bad_input(void **state)
{
    (void)state;
    send("@@1 1 PING {\"a\":");
    expect_err(1, "BAD_JSON");
    send("@@1 2 PING [1,2]");
    expect_err(2, "BAD_JSON");
    send("@@1 3 FROBNICATE {}");
    expect_err(3, "UNKNOWN_VERB");
    send("@@2 4 PING {}");
    char kind[16];
    cJSON *o = answer(4, kind);
    assert_string_equal(cJSON_GetObjectItem(o, "name")->valuestring, "PROTO_VERSION");
    assert_int_equal(cJSON_GetObjectItem(o, "proto")->valueint, 1);
    cJSON_Delete(o);
    send("@@1 5 ping {}");
    expect_err(5, "BAD_FRAME");
    send("@@1 6 HELLO {\"proto\":2}");
    expect_err(6, "PROTO_VERSION");
    char *big = malloc(3000);
    memset(big, 'x', 3000);
    memcpy(big, "@@1 7 PUBLISH {\"topic\":\"", 24);
    big[2999] = '\0';
    send(big);
    free(big);
    expect_err(7, "LINE_TOO_LONG");
    int before = fake_count("OK") + fake_count("ERR");
    send("I (12) some log line without a marker");
    send("");
    assert_int_equal(fake_count("OK") + fake_count("ERR"), before);
    send("@@1 - PING {}"); /* no id: answered with '-' */
    long id = 0;
    cJSON *e = fake_last("ERR", &id);
    assert_int_equal(id, -1);
    cJSON_Delete(e);
    send("junk before the marker @@1 8 PING {}");
    expect_ok(8);
    send("@@1 9 PUBLISH {\"topic\":\"t\",\"qos\":3}");
    expect_err(9, "NO_CLIENT"); /* the client check comes first */
    /* a config with wrong types is refused, naming the field, and no client is made */
    send("@@1 11 INIT {\"config\":{\"broker\":{\"address\":{\"uri\":42}},\"session\":{\"keepalive\":\"soon\"}}}");
    expect_err(11, "BAD_ARGS");
    send("@@1 12 STATE {}");
    expect_err(12, "NO_CLIENT");
    /* bad base64 in a chunk */
    send("@@1 13 BLOB_BEGIN {\"name\":\"x\",\"size\":3}");
    expect_ok(13);
    send("@@1 14 BLOB_CHUNK {\"name\":\"x\",\"offset\":0,\"b64\":\"!!!*\"}");
    expect_err(14, "BAD_ARGS");
}

/* the last answer of `kind`, checked to be for `id` (here one id is answered twice on purpose) */
static cJSON *last_answer(const char *kind, long id)
{
    long got = 0;
    cJSON *o = fake_last(kind, &got);
    assert_non_null(o);
    assert_int_equal(got, id);
    return o;
}

static void duplicate_id_is_not_executed(void **state)
{
    (void)state;
    send("@@1 10 PING {}");
    cJSON_Delete(last_answer("OK", 10));
    int oks = fake_count("OK"), errs = fake_count("ERR");
    send("@@1 10 PING {}"); /* the previous request's id again: a line sent twice */
    cJSON *e = last_answer("ERR", 10);
    assert_string_equal(cJSON_GetObjectItem(e, "name")->valuestring, "DUPLICATE_ID");
    cJSON_Delete(e);
    assert_int_equal(fake_count("OK"), oks);
    assert_int_equal(fake_count("ERR"), errs + 1);
    send("@@1 11 PING {}");
    cJSON_Delete(last_answer("OK", 11));
    send("@@1 10 PING {}"); /* not the previous one: fine */
    cJSON_Delete(last_answer("OK", 10));
    send("@@1 10 HELLO {\"proto\":1}"); /* a new host session may start at any id */
    cJSON_Delete(last_answer("OK", 10));
    send("@@1 10 PING {}");
    assert_int_equal(fake_count("OK"), oks + 4);
}

static void every_verb_answers_once(void **state)
{
    (void)state;
    static const char *const REQ[] = {
        "HELLO {}", "PING {}", "SYSINFO {}", "SET_TIME {\"epoch\":1764979200}",
        "LOGLEVEL {\"tag\":\"mqtt_client\",\"level\":\"DEBUG\"}", "BLOB_BEGIN {\"name\":\"b\",\"size\":1}",
        "BLOB_CHUNK {\"name\":\"b\",\"offset\":0,\"b64\":\"YQ==\"}", "BLOB_END {\"name\":\"b\",\"crc32\":\"0xe8b7be43\"}",
        "BLOB_FREE {\"name\":\"b\"}", "STATE {}", "OUTBOX {}", "START {}", "STOP {}", "DISCONNECT {}", "RECONNECT {}",
        "CONFIG {\"config\":{}}", "SET_URI {\"uri\":\"mqtt://127.0.0.1\"}", "PUBLISH {\"topic\":\"t\"}",
        "ENQUEUE {\"topic\":\"t\"}", "SUBSCRIBE {\"topic\":\"t\"}", "UNSUBSCRIBE {\"topic\":\"t\"}",
        "INIT {\"config\":{\"broker\":{\"address\":{\"uri\":\"mqtt://127.0.0.1:1883\"}}}}", "INIT {}",
        "CONFIG {\"config\":{\"session\":{\"keepalive\":30}}}", "SET_URI {\"uri\":\"mqtt://127.0.0.1:1884\"}",
        "START {}", "STATE {}", "SUBSCRIBE {\"topics\":[{\"filter\":\"a/#\",\"qos\":1}]}",
        "PUBLISH {\"topic\":\"t\",\"qos\":1}", "ENQUEUE {\"topic\":\"t\",\"qos\":0,\"store\":true}",
        "UNSUBSCRIBE {\"topic\":\"a/#\"}", "OUTBOX {}", "DISCONNECT {}", "RECONNECT {}", "STOP {}", "DESTROY {}",
        "DESTROY {}", "DNS {\"host\":\"localhost\"}", "DNS {\"host\":\"nowhere.invalid\"}",
        "TCP_PROBE {\"host\":\"127.0.0.1\",\"port\":1883}", "TCP_PROBE {\"host\":\"127.0.0.1\",\"port\":1}",
        "RESET {}",
    };
    int n = (int)(sizeof REQ / sizeof REQ[0]);
    char line[256];
    for (int i = 0; i < n; i++) {
        snprintf(line, sizeof line, "@@1 %d %s", 100 + i, REQ[i]);
        send(line);
    }
    for (int i = 0; i < n; i++) {
        char kind[16];
        cJSON_Delete(answer(100 + i, kind)); /* exactly one each */
    }
    assert_int_equal(fake_reboots, 1);
}

static void client_verbs(void **state)
{
    (void)state;
    send("@@1 1 STATE {}");
    expect_err(1, "NO_CLIENT");
    send("@@1 2 DESTROY {}");
    expect_ok(2);
    send("@@1 3 INIT {\"config\":{\"broker\":{\"address\":{\"uri\":\"mqtt://h\"}},\"extra\":1}}");
    char kind[16];
    cJSON *o = answer(3, kind);
    assert_string_equal(cJSON_GetObjectItem(o, "client_id")->valuestring, "ESP32_123456");
    assert_string_equal(cJSON_GetArrayItem(cJSON_GetObjectItem(o, "ignored"), 0)->valuestring, "extra");
    cJSON_Delete(o);
    assert_string_equal(fake_mqtt_last_config()->broker.address.uri, "mqtt://h");
    send("@@1 4 INIT {}");
    expect_err(4, "CLIENT_EXISTS");
    send("@@1 5 PUBLISH {\"topic\":\"t\",\"qos\":0}");
    assert_true(ok_number(5, "msg_id") == -1); /* not connected: QoS 0 is lost, -1 verbatim */
    send("@@1 6 START {}");
    expect_ok(6);
    send("@@1 7 START {}");
    expect_err(7, "ESP_ERR");
    send("@@1 8 STATE {}");
    o = answer(8, kind);
    assert_string_equal(cJSON_GetObjectItem(o, "state")->valuestring, "MQTT_STATE_CONNECTED");
    cJSON_Delete(o);
    send("@@1 9 PUBLISH {\"topic\":\"t\",\"qos\":1,\"payload_b64\":\"aGk=\",\"blob\":\"x\"}");
    expect_err(9, "BAD_ARGS");
    send("@@1 10 PUBLISH {\"topic\":\"t\",\"payload_b64\":\"a\"}");
    expect_err(10, "BAD_ARGS");
    send("@@1 11 PUBLISH {\"topic\":\"t\",\"blob\":\"missing\"}");
    expect_err(11, "NO_BLOB");
    send("@@1 12 PUBLISH {\"topic\":\"t\",\"qos\":7}");
    expect_err(12, "BAD_ARGS");
    send("@@1 13 SUBSCRIBE {\"topics\":[]}");
    expect_err(13, "BAD_ARGS");
    send("@@1 14 SUBSCRIBE {\"topics\":[{\"filter\":\"#bad\",\"qos\":1}]}");
    expect_ok(14);
    long id;
    cJSON *evt = fake_last("EVT", &id);
    assert_string_equal(cJSON_GetObjectItem(evt, "event")->valuestring, "MQTT_EVENT_SUBSCRIBED");
    assert_string_equal(cJSON_GetObjectItem(cJSON_GetObjectItem(evt, "error_handle"), "error_type")->valuestring,
                        "MQTT_ERROR_TYPE_SUBSCRIBE_FAILED");
    cJSON_Delete(evt);
    send("@@1 15 CONFIG {\"config\":{\"session\":{\"keepalive\":-1}}}");
    expect_err(15, "BAD_ARGS");
    send("@@1 16 SET_URI {\"uri\":\"nope\"}");
    expect_err(16, "ESP_ERR");
    send("@@1 17 DESTROY {}");
    expect_ok(17);
    assert_int_equal(fake_mqtt_clients(), 0);
}

static void echo_round_trip(void **state)
{
    (void)state;
    send("@@1 1 INIT {}");
    send("@@1 2 START {}");
    send("@@1 3 PUBLISH {\"topic\":\"echo/p\",\"pattern\":\"0123456789\",\"reps\":500,\"qos\":1}");
    assert_true(ok_number(3, "msg_id") > 0);
    /* reassemble the DATA pieces */
    char *buf = calloc(1, 6000);
    size_t got = 0;
    uint32_t crc_want = 0;
    const char *crc = NULL;
    for (int i = 0; i < fake_nlines(); i++) {
        long id;
        char k[16];
        cJSON *o = fake_parse(i, &id, k);
        if (o && strcmp(k, "EVT") == 0 && strcmp(cJSON_GetObjectItem(o, "event")->valuestring, "MQTT_EVENT_DATA") == 0) {
            const char *b = cJSON_GetObjectItem(o, "data_b64")->valuestring;
            size_t n = 0;
            assert_true(dut_b64_decode(b, strlen(b), (uint8_t *)buf + got, &n));
            got += n;
            cJSON *c = cJSON_GetObjectItem(o, "crc32");
            if (c) {
                crc = strdup(c->valuestring);
            }
        }
        cJSON_Delete(o);
    }
    assert_int_equal(got, 5000);
    for (size_t i = 0; i < 5000; i++) {
        assert_int_equal(buf[i], '0' + (int)(i % 10));
    }
    crc_want = dut_crc32(0, buf, got);
    char want[16];
    snprintf(want, sizeof want, "0x%08x", crc_want);
    assert_non_null(crc);
    assert_string_equal(crc, want);
    free((void *)crc);
    free(buf);
    send("@@1 4 PUBLISH {\"topic\":\"echo/empty\",\"qos\":0}"); /* empty payload: data NULL, len 0 */
    long id;
    cJSON *evt = fake_last("EVT", &id);
    assert_int_equal(cJSON_GetObjectItem(evt, "data_len")->valueint, 0);
    assert_string_equal(cJSON_GetObjectItem(evt, "crc32")->valuestring, "0x00000000");
    cJSON_Delete(evt);
}

static void blob_assembly(void **state)
{
    (void)state;
    send("@@1 1 BLOB_BEGIN {\"name\":\"p\",\"size\":11}");
    expect_ok(1);
    send("@@1 2 BLOB_CHUNK {\"name\":\"p\",\"offset\":0,\"b64\":\"aGVsbG8g\"}");
    assert_int_equal(ok_number(2, "received"), 6);
    send("@@1 3 BLOB_CHUNK {\"name\":\"p\",\"offset\":0,\"b64\":\"aGVsbG8g\"}");
    expect_err(3, "BAD_ARGS"); /* out of order */
    send("@@1 4 BLOB_END {\"name\":\"p\",\"crc32\":\"0x0d4a1185\"}");
    expect_err(4, "CRC_MISMATCH"); /* size differs: 6 of 11 */
    send("@@1 5 BLOB_CHUNK {\"name\":\"p\",\"offset\":6,\"b64\":\"d29ybGQ=\"}");
    assert_int_equal(ok_number(5, "received"), 11);
    send("@@1 6 BLOB_CHUNK {\"name\":\"p\",\"offset\":11,\"b64\":\"eA==\"}");
    expect_err(6, "BAD_ARGS"); /* past the size */
    send("@@1 7 BLOB_END {\"name\":\"p\",\"crc32\":\"0xdeadbeef\"}");
    expect_err(7, "CRC_MISMATCH");
    send("@@1 8 BLOB_END {\"name\":\"p\",\"crc32\":\"0x0d4a1185\"}"); /* crc32("hello world") */
    assert_int_equal(ok_number(8, "size"), 11);
    send("@@1 9 BLOB_CHUNK {\"name\":\"q\",\"offset\":0,\"b64\":\"eA==\"}");
    expect_err(9, "NO_BLOB");
    send("@@1 10 BLOB_BEGIN {\"name\":\"huge\",\"size\":999999999}");
    expect_err(10, "NO_MEMORY");
    send("@@1 11 INIT {}");
    send("@@1 12 START {}");
    send("@@1 13 PUBLISH {\"topic\":\"echo/blob\",\"blob\":\"p\",\"qos\":0}");
    expect_ok(13);
    long id;
    cJSON *evt = fake_last("EVT", &id);
    assert_string_equal(cJSON_GetObjectItem(evt, "data_b64")->valuestring, "aGVsbG8gd29ybGQ=");
    cJSON_Delete(evt);
    send("@@1 14 BLOB_FREE {\"name\":\"p\"}");
    expect_ok(14);
    send("@@1 15 BLOB_FREE {\"name\":\"p\"}");
    expect_ok(15); /* idempotent */
    send("@@1 16 BLOB_BEGIN {\"name\":\"\",\"size\":1}");
    expect_err(16, "BAD_ARGS");
}

static void reset_answers_before_rebooting(void **state)
{
    (void)state;
    send("@@1 1 RESET {}");
    expect_ok(1);
    assert_int_equal(fake_reboots, 1);
    int before = fake_count("OK") + fake_count("ERR");
    send("@@1 2 CRASH {\"reason\":\"ESP_RST_TASK_WDT\"}");
    assert_string_equal(fake_crash_reason, "ESP_RST_TASK_WDT");
    assert_int_equal(fake_count("OK") + fake_count("ERR"), before); /* CRASH: no answer */
    send("@@1 3 CRASH {\"reason\":\"ESP_RST_POWERON\"}");
    expect_err(3, "BAD_ARGS");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(hello_has_every_banner_field, setup, teardown),
        cmocka_unit_test_setup_teardown(bad_input, setup, teardown),
        cmocka_unit_test_setup_teardown(duplicate_id_is_not_executed, setup, teardown),
        cmocka_unit_test_setup_teardown(every_verb_answers_once, setup, teardown),
        cmocka_unit_test_setup_teardown(client_verbs, setup, teardown),
        cmocka_unit_test_setup_teardown(echo_round_trip, setup, teardown),
        cmocka_unit_test_setup_teardown(blob_assembly, setup, teardown),
        cmocka_unit_test_setup_teardown(reset_answers_before_rebooting, setup, teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
