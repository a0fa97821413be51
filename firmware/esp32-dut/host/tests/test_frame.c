/* Framing and line assembly. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <cmocka.h>

#include "dut_internal.h"

static int parse(const char *line, dut_frame_t *f)
{
    return dut_frame_parse(line, strlen(line), f);
}

static void frames(void **state)
{
    (void)state;
    dut_frame_t f;
    assert_int_equal(parse("@@1 7 PUBLISH {\"topic\":\"t\"}", &f), DUT_FRAME_OK);
    assert_int_equal(f.major, 1);
    assert_int_equal(f.id, 7);
    assert_string_equal(f.kind, "PUBLISH");
    assert_int_equal(f.json_len, strlen("{\"topic\":\"t\"}"));
    assert_int_equal(parse("I (123) wifi: conn@@1 2147483647 PING {}", &f), DUT_FRAME_OK);
    assert_int_equal(f.id, 2147483647L);
    assert_int_equal(parse("@@1 - BOOT {}", &f), DUT_FRAME_OK);
    assert_int_equal(f.id, -1);
    assert_int_equal(parse("@@1 3 PING", &f), DUT_FRAME_OK); /* no JSON: {} */
    assert_string_equal(f.json, "{}");
    assert_int_equal(parse("@@2 4 PING {}", &f), DUT_FRAME_OK);
    assert_int_equal(f.major, 2);
}

static void bad_frames(void **state)
{
    (void)state;
    dut_frame_t f;
    assert_int_equal(parse("plain log line", &f), DUT_FRAME_NO_MARKER);
    assert_int_equal(parse("email@@example", &f), DUT_FRAME_NO_MARKER);
    assert_int_equal(parse("@@1x 2 PING {}", &f), DUT_FRAME_NO_MARKER);
    assert_int_equal(parse("@@", &f), DUT_FRAME_NO_MARKER);
    assert_int_equal(parse("@@1 0 PING {}", &f), DUT_FRAME_BAD);
    assert_int_equal(parse("@@1 2147483648 PING {}", &f), DUT_FRAME_BAD);
    assert_int_equal(parse("@@1 5 ping {}", &f), DUT_FRAME_BAD);
    assert_true(f.id_valid);
    assert_int_equal(f.id, 5); /* the ERR can still carry the id */
    assert_int_equal(parse("@@1 6 PING{}", &f), DUT_FRAME_BAD);
    assert_int_equal(parse("@@1 x PING {}", &f), DUT_FRAME_BAD);
    assert_false(f.id_valid);
    assert_int_equal(parse("@@1 8 AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA {}", &f), DUT_FRAME_BAD);
}

typedef struct {
    int n;
    char last[64];
    size_t last_len;
    bool too_long;
} got_t;

static void cb(void *arg, const char *line, size_t len, bool too_long)
{
    got_t *g = arg;
    g->n++;
    g->last_len = len;
    g->too_long = too_long;
    snprintf(g->last, sizeof g->last, "%.*s", (int)(len < 60 ? len : 60), line);
}

static void linebuf(void **state)
{
    (void)state;
    dut_linebuf_t lb;
    got_t g = {0};
    assert_true(dut_linebuf_init(&lb, 8, cb, &g));
    dut_linebuf_feed(&lb, (const uint8_t *)"ab", 2);
    assert_int_equal(g.n, 0);
    dut_linebuf_feed(&lb, (const uint8_t *)"c\r\nxy\n", 6);
    assert_int_equal(g.n, 2);
    assert_string_equal(g.last, "xy");
    dut_linebuf_feed(&lb, (const uint8_t *)"12345678\r\n", 10); /* exactly max, CR not counted */
    assert_int_equal(g.n, 3);
    assert_false(g.too_long);
    assert_int_equal(g.last_len, 8);
    dut_linebuf_feed(&lb, (const uint8_t *)"123456789\n", 10);
    assert_int_equal(g.n, 4);
    assert_true(g.too_long);
    assert_string_equal(g.last, "12345678"); /* the head is kept */
    dut_linebuf_feed(&lb, (const uint8_t *)"123456789012345678901234567890\nok\n", 34);
    assert_int_equal(g.n, 6);
    assert_false(g.too_long);
    assert_string_equal(g.last, "ok");
    dut_linebuf_free(&lb);
}

int main(void)
{
    const struct CMUnitTest tests[] = {cmocka_unit_test(frames), cmocka_unit_test(bad_frames),
                                       cmocka_unit_test(linebuf)};
    return cmocka_run_group_tests(tests, NULL, NULL);
}
