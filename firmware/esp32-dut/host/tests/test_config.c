/* The config JSON -> esp_mqtt_client_config_t mapping. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dut_internal.h"

typedef struct {
    esp_mqtt_client_config_t cfg;
    dut_arena_t arena;
    cJSON *ignored;
    char why[200];
    bool ok;
} mapped_t;

static mapped_t *map(const char *json)
{
    mapped_t *m = calloc(1, sizeof *m);
    cJSON *j = cJSON_Parse(json);
    assert_non_null(j);
    m->ignored = cJSON_CreateArray();
    m->ok = dut_config_from_json(j, &m->cfg, &m->arena, m->ignored, m->why, sizeof m->why);
    cJSON_Delete(j); /* the config must not point into the JSON */
    return m;
}

static void unmap(mapped_t *m)
{
    dut_arena_free(&m->arena);
    cJSON_Delete(m->ignored);
    free(m);
}

static void full_config(void **state)
{
    (void)state;
    mapped_t *m = map("{\"broker\":{\"address\":{\"uri\":\"mqtts://192.168.1.5:8883\",\"port\":8883,"
                      "\"transport\":\"ssl\",\"path\":\"/mqtt\",\"hostname\":\"h\"},"
                      "\"verification\":{\"skip_cert_common_name_check\":true,\"common_name\":\"broker.lan\","
                      "\"use_global_ca_store\":false,\"certificate\":\"-----BEGIN CERTIFICATE-----\\nx\\n\","
                      "\"alpn_protos\":[\"mqtt\",\"x\"]}},"
                      "\"credentials\":{\"client_id\":\"dut-1\",\"set_null_client_id\":false,\"username\":\"u\","
                      "\"authentication\":{\"password\":\"p\",\"key_password\":\"kp\",\"use_secure_element\":false}},"
                      "\"session\":{\"keepalive\":120,\"disable_keepalive\":false,\"disable_clean_session\":true,"
                      "\"protocol_ver\":\"5\",\"message_retransmit_timeout\":1000,"
                      "\"last_will\":{\"topic\":\"dut/status\",\"msg_b64\":\"b2ZmAGxpbmU=\",\"qos\":1,\"retain\":true}},"
                      "\"network\":{\"reconnect_timeout_ms\":300,\"timeout_ms\":3000,\"disable_auto_reconnect\":true,"
                      "\"refresh_connection_after_ms\":5,\"tcp_keep_alive_cfg\":{\"keep_alive_enable\":true,"
                      "\"keep_alive_idle\":5,\"keep_alive_interval\":2,\"keep_alive_count\":3}},"
                      "\"task\":{\"priority\":5,\"stack_size\":6144},"
                      "\"buffer\":{\"size\":2048,\"out_size\":512},\"outbox\":{\"limit\":4096}}");
    assert_true(m->ok);
    esp_mqtt_client_config_t *c = &m->cfg;
    assert_string_equal(c->broker.address.uri, "mqtts://192.168.1.5:8883");
    assert_int_equal(c->broker.address.port, 8883);
    assert_int_equal(c->broker.address.transport, MQTT_TRANSPORT_OVER_SSL);
    assert_string_equal(c->broker.address.path, "/mqtt");
    assert_true(c->broker.verification.skip_cert_common_name_check);
    assert_string_equal(c->broker.verification.common_name, "broker.lan");
    assert_string_equal(c->broker.verification.certificate, "-----BEGIN CERTIFICATE-----\nx\n");
    assert_int_equal(c->broker.verification.certificate_len, 0); /* PEM: NUL-terminated, len 0 */
    assert_string_equal(c->broker.verification.alpn_protos[0], "mqtt");
    assert_string_equal(c->broker.verification.alpn_protos[1], "x");
    assert_null(c->broker.verification.alpn_protos[2]);
    assert_string_equal(c->credentials.client_id, "dut-1");
    assert_string_equal(c->credentials.username, "u");
    assert_string_equal(c->credentials.authentication.password, "p");
    assert_string_equal(c->credentials.authentication.key_password, "kp");
    assert_int_equal(c->credentials.authentication.key_password_len, 2);
    assert_int_equal(c->session.keepalive, 120);
    assert_true(c->session.disable_clean_session);
    assert_int_equal(c->session.protocol_ver, MQTT_PROTOCOL_V_5);
    assert_int_equal(c->session.message_retransmit_timeout, 1000);
    assert_string_equal(c->session.last_will.topic, "dut/status");
    assert_int_equal(c->session.last_will.msg_len, 8); /* binary will with a NUL inside */
    assert_memory_equal(c->session.last_will.msg, "off\0line", 8);
    assert_int_equal(c->session.last_will.qos, 1);
    assert_int_equal(c->session.last_will.retain, 1);
    assert_int_equal(c->network.reconnect_timeout_ms, 300);
    assert_int_equal(c->network.timeout_ms, 3000);
    assert_true(c->network.disable_auto_reconnect);
    assert_int_equal(c->network.refresh_connection_after_ms, 5);
    assert_true(c->network.tcp_keep_alive_cfg.keep_alive_enable);
    assert_int_equal(c->network.tcp_keep_alive_cfg.keep_alive_count, 3);
    assert_int_equal(c->task.stack_size, 6144);
    assert_int_equal(c->buffer.size, 2048);
    assert_int_equal(c->buffer.out_size, 512);
    assert_int_equal(c->outbox.limit, 4096);
    assert_int_equal(cJSON_GetArraySize(m->ignored), 0);
    unmap(m);
}

static void defaults_and_nulls(void **state)
{
    (void)state;
    mapped_t *m = map("{\"credentials\":{\"authentication\":{\"key_password\":null}},\"session\":{\"keepalive\":null}}");
    assert_true(m->ok);
    assert_null(m->cfg.credentials.authentication.key_password);
    assert_int_equal(m->cfg.session.keepalive, 0); /* 0: esp-mqtt's default */
    assert_int_equal(m->cfg.session.protocol_ver, MQTT_PROTOCOL_UNDEFINED);
    unmap(m);
}

static void unknown_fields_are_listed(void **state)
{
    (void)state;
    mapped_t *m = map("{\"broker\":{\"address\":{\"uri\":\"mqtt://h\",\"zone\":1},\"colour\":2},\"future\":{},"
                      "\"session\":{\"last_will\":{\"delay\":3}}}");
    assert_true(m->ok);
    char *s = cJSON_PrintUnformatted(m->ignored);
    assert_string_equal(s, "[\"broker.address.zone\",\"broker.colour\",\"future\",\"session.last_will.delay\"]");
    cJSON_free(s);
    unmap(m);
}

static void bad_fields(void **state)
{
    (void)state;
    static const struct {
        const char *json, *why;
    } V[] = {
        {"{\"session\":{\"keepalive\":\"x\"}}", "config.session.keepalive must be an integer"},
        {"{\"session\":{\"keepalive\":1.5}}", "config.session.keepalive must be an integer"},
        {"{\"session\":{\"keepalive\":70000}}", "config.session.keepalive must be an integer"},
        {"{\"session\":{\"protocol_ver\":\"4\"}}", "config.session.protocol_ver must be"},
        {"{\"session\":{\"last_will\":{\"qos\":3}}}", "config.session.last_will.qos must be"},
        {"{\"session\":{\"last_will\":{\"msg_b64\":\"!!\"}}}", "config.session.last_will.msg_b64 is not valid base64"},
        {"{\"network\":{\"disable_auto_reconnect\":1}}", "config.network.disable_auto_reconnect must be true or false"},
        {"{\"broker\":[]}", "config.broker must be an object"},
        {"{\"broker\":{\"address\":{\"transport\":\"udp\"}}}", "config.broker.address.transport must be"},
        {"{\"broker\":{\"verification\":{\"certificate\":{\"blob\":\"nope\"}}}}",
         "config.broker.verification.certificate names a blob that does not exist"},
        {"{\"broker\":{\"verification\":{\"certificate\":5}}}", "config.broker.verification.certificate must be"},
        {"{\"broker\":{\"verification\":{\"alpn_protos\":[1]}}}", "config.broker.verification.alpn_protos must be"},
        {"{\"broker\":{\"verification\":{\"crt_bundle_attach\":true}}}", "needs the certificate bundle"},
    };
    for (size_t i = 0; i < sizeof V / sizeof V[0]; i++) {
        mapped_t *m = map(V[i].json);
        assert_false(m->ok);
        if (!strstr(m->why, V[i].why)) {
            fail_msg("%s: got \"%s\", wanted \"%s\"", V[i].json, m->why, V[i].why);
        }
        unmap(m);
    }
}

static void blobs_as_certificates(void **state)
{
    (void)state;
    const char *why = NULL;
    size_t got = 0;
    dut_blobs_reset();
    const char pem[] = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
    const uint8_t der[] = {0x30, 0x82, 0x00, 0x01, 0x00};
    assert_int_equal(dut_blob_begin("ca", sizeof pem - 1, 4096, &why), DUT_BLOB_OK);
    assert_int_equal(dut_blob_chunk("ca", 0, (const uint8_t *)pem, sizeof pem - 1, &got, &why), DUT_BLOB_OK);
    assert_int_equal(dut_blob_end("ca", dut_crc32(0, pem, sizeof pem - 1), &got, &why), DUT_BLOB_OK);
    assert_int_equal(dut_blob_begin("key", sizeof der, 4096, &why), DUT_BLOB_OK);
    assert_int_equal(dut_blob_chunk("key", 0, der, sizeof der, &got, &why), DUT_BLOB_OK);
    assert_int_equal(dut_blob_end("key", dut_crc32(0, der, sizeof der), &got, &why), DUT_BLOB_OK);
    mapped_t *m = map("{\"broker\":{\"verification\":{\"certificate\":{\"blob\":\"ca\"}}},"
                      "\"credentials\":{\"authentication\":{\"certificate\":{\"blob\":\"ca\"},\"key\":{\"blob\":\"key\"}}}}");
    assert_true(m->ok);
    dut_blob_free("ca"); /* the config holds copies: freeing the blob must not pull them away */
    dut_blob_free("key");
    assert_string_equal(m->cfg.broker.verification.certificate, pem);
    assert_int_equal(m->cfg.broker.verification.certificate_len, 0);
    assert_int_equal(m->cfg.credentials.authentication.key_len, sizeof der); /* DER: with its length */
    assert_memory_equal(m->cfg.credentials.authentication.key, der, sizeof der);
    unmap(m);
}

static void default_client_id(void **state)
{
    (void)state;
    const uint8_t mac[6] = {0x24, 0x0a, 0xc4, 0xab, 0xcd, 0xef};
    char id[16];
    dut_default_client_id(mac, id);
    assert_string_equal(id, "ESP32_abCDEF");
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(full_config), cmocka_unit_test(defaults_and_nulls), cmocka_unit_test(unknown_fields_are_listed),
        cmocka_unit_test(bad_fields), cmocka_unit_test(blobs_as_certificates), cmocka_unit_test(default_client_id),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
