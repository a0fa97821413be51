/* base64, CRC-32, UTF-8 and the name tables. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>
#include <errno.h>

#include "dut_internal.h"

static void b64_roundtrip(void **state)
{
    (void)state;
    static const struct {
        const char *raw, *b64;
    } V[] = {{"", ""}, {"f", "Zg=="}, {"fo", "Zm8="}, {"foo", "Zm9v"}, {"foob", "Zm9vYg=="},
        {"fooba", "Zm9vYmE="}, {"foobar", "Zm9vYmFy"}};
    for (size_t i = 0; i < sizeof V / sizeof V[0]; i++) {
        char out[16];
        uint8_t back[16];
        size_t n = 0;
        assert_int_equal(dut_b64_encode((const uint8_t *)V[i].raw, strlen(V[i].raw), out), strlen(V[i].b64));
        assert_string_equal(out, V[i].b64);
        assert_int_equal(dut_b64_encoded_len(strlen(V[i].raw)), strlen(V[i].b64));
        assert_true(dut_b64_decode(V[i].b64, strlen(V[i].b64), back, &n));
        assert_int_equal(n, strlen(V[i].raw));
        assert_memory_equal(back, V[i].raw, n);
    }
    uint8_t all[256], back[256];
    char text[400];
    size_t n = 0;
    for (int i = 0; i < 256; i++) {
        all[i] = (uint8_t)i;
    }
    dut_b64_encode(all, 256, text);
    assert_true(dut_b64_decode(text, strlen(text), back, &n));
    assert_int_equal(n, 256);
    assert_memory_equal(all, back, 256);
}

static void b64_rejects(void **state)
{
    (void)state;
    uint8_t out[16];
    size_t n;
    const char *bad[] = {"Zg=", "Zg", "Z===", "Zg==Zg==", "Zm9v!", "Zm 9v", "Zh==", "Zm9=", "=Zm9"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        assert_false(dut_b64_decode(bad[i], strlen(bad[i]), out, &n));
    }
}

static void crc32_matches_zlib(void **state)
{
    (void)state;
    assert_int_equal(dut_crc32(0, "", 0), 0);
    assert_int_equal(dut_crc32(0, "hello", 5), 0x3610a686);
    assert_int_equal(dut_crc32(0, "123456789", 9), 0xcbf43926);
    /* chaining equals one pass */
    uint32_t c = dut_crc32(0, "1234", 4);
    assert_int_equal(dut_crc32(c, "56789", 5), 0xcbf43926);
}

static void utf8(void **state)
{
    (void)state;
    assert_true(dut_utf8_valid((const uint8_t *)"plain", 5));
    assert_true(dut_utf8_valid((const uint8_t *)"\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80", 9));
    assert_false(dut_utf8_valid((const uint8_t *)"\xff", 1));
    assert_false(dut_utf8_valid((const uint8_t *)"\xc3", 1));          /* truncated */
    assert_false(dut_utf8_valid((const uint8_t *)"\xc0\xaf", 2));      /* overlong */
    assert_false(dut_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3));  /* surrogate */
    assert_false(dut_utf8_valid((const uint8_t *)"a\0b", 3));          /* NUL */
    assert_false(dut_utf8_valid((const uint8_t *)"\xe2\x82", 2));
}

static void names(void **state)
{
    (void)state;
    assert_string_equal(dut_errno_name(ECONNREFUSED), "ECONNREFUSED");
    assert_null(dut_errno_name(123456));
    assert_string_equal(dut_connect_rc_name(5, false), "MQTT_CONNECTION_REFUSE_NOT_AUTHORIZED");
    assert_string_equal(dut_connect_rc_name(0x87, true), "MQTT5_NOT_AUTHORIZED");
    assert_string_equal(dut_connect_rc_name(0, true), "MQTT_CONNECTION_ACCEPTED");
    assert_null(dut_connect_rc_name(9, false));
    assert_string_equal(dut_event_name(MQTT_EVENT_BEFORE_CONNECT), "MQTT_EVENT_BEFORE_CONNECT");
    assert_string_equal(dut_protocol_ver_name(MQTT_PROTOCOL_V_5), "5");
}

static void error_handle_json(void **state)
{
    (void)state;
    esp_mqtt_error_codes_t e;
    memset(&e, 0, sizeof e);
    e.error_type = MQTT_ERROR_TYPE_TCP_TRANSPORT;
    e.esp_tls_last_esp_err = ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED;
    e.esp_tls_stack_err = -0x2700;
    e.esp_tls_cert_verify_flags = 0x08 | 0x04 | 0x400000;
    e.esp_transport_sock_errno = ECONNREFUSED;
    cJSON *o = dut_error_handle_json(&e, MQTT_PROTOCOL_V_3_1_1);
    char *s = cJSON_PrintUnformatted(o);
    assert_non_null(strstr(s, "\"error_type\":\"MQTT_ERROR_TYPE_TCP_TRANSPORT\",\"error_type_id\":1"));
    assert_non_null(strstr(s, "\"esp_tls_last_esp_err\":{\"code\":32794,\"hex\":\"0x801a\","
                           "\"name\":\"ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED\"}"));
    assert_non_null(strstr(s, "\"esp_tls_stack_err\":{\"code\":9984,\"hex\":\"0x2700\"}"));
    assert_non_null(strstr(s, "\"names\":[\"MBEDTLS_X509_BADCERT_CN_MISMATCH\",\"MBEDTLS_X509_BADCERT_NOT_TRUSTED\","
                           "\"0x400000\"]"));
    assert_non_null(strstr(s, "\"connect_return_code\":{\"code\":0,\"name\":\"MQTT_CONNECTION_ACCEPTED\"}"));
    assert_non_null(strstr(s, "\"esp_transport_sock_errno\":{\"code\":111,\"name\":\"ECONNREFUSED\",\"msg\":\"Connection refused\"}"));
    cJSON_free(s);
    cJSON_Delete(o);

    memset(&e, 0, sizeof e);
    e.error_type = MQTT_ERROR_TYPE_CONNECTION_REFUSED;
    e.connect_return_code = (esp_mqtt_connect_return_code_t)0x86;
    o = dut_error_handle_json(&e, MQTT_PROTOCOL_V_5);
    s = cJSON_PrintUnformatted(o);
    assert_non_null(strstr(s, "\"connect_return_code\":{\"code\":134,\"name\":\"MQTT5_BAD_USERNAME_OR_PWD\"}"));
    assert_non_null(strstr(s, "\"esp_transport_sock_errno\":{\"code\":0,\"name\":null,\"msg\":null}"));
    assert_non_null(strstr(s, "\"esp_tls_last_esp_err\":{\"code\":0,\"hex\":\"0x0\",\"name\":\"ESP_OK\"}"));
    cJSON_free(s);
    cJSON_Delete(o);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(b64_roundtrip), cmocka_unit_test(b64_rejects), cmocka_unit_test(crc32_matches_zlib),
        cmocka_unit_test(utf8), cmocka_unit_test(names), cmocka_unit_test(error_handle_json),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
