/* Fuzz target: bytes as they would arrive on the console -> line reader, framing, JSON, dispatch of every verb
 * (against the scripted esp-mqtt, so no network). After each input the output is checked: every line the core
 * wrote is whole, within max_line, and a protocol line parses with a JSON object body. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dut_internal.h"
#include "fake.h"

#define FUZZ_MAX_LINE 1024

static void check_output(void)
{
    for (int i = 0; i < fake_nlines(); i++) {
        const char *l = fake_line(i);
        size_t n = strlen(l);
        if (n == 0 || l[n - 1] != '\n' || memchr(l, '\n', n - 1) || n - 1 > FUZZ_MAX_LINE) {
            fprintf(stderr, "bad output line %d (%zu bytes): %.200s\n", i, n, l);
            abort();
        }
        if (!dut_utf8_valid((const uint8_t *)l, n)) {
            fprintf(stderr, "output line %d is not UTF-8: %.200s\n", i, l);
            abort();
        }
        if (l[0] == '@') {
            long id;
            char kind[16];
            cJSON *o = fake_parse(i, &id, kind);
            if (!cJSON_IsObject(o)) {
                fprintf(stderr, "protocol line %d does not parse: %.200s\n", i, l);
                abort();
            }
            cJSON_Delete(o);
        }
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fake_platform_reset();
    fake_mqtt_reset();
    if (!dut_core_init(fake_platform(), FUZZ_MAX_LINE)) {
        return 0;
    }
    /* feed in two parts: the line reader must not care where reads split */
    size_t cut = size ? data[0] % (size + 1) : 0;
    dut_core_feed(data, cut);
    dut_core_feed(data + cut, size - cut);
    dut_core_feed((const uint8_t *)"\n", 1);
    int answers = fake_count("OK") + fake_count("ERR");
    size_t lines = 1;
    for (size_t i = 0; i < size; i++) {
        lines += data[i] == '\n';
    }
    if ((size_t)answers > lines) {
        fprintf(stderr, "%d answers for %zu lines\n", answers, lines);
        abort();
    }
    check_output();
    dut_core_deinit();
    if (fake_mqtt_clients() != 0) {
        fprintf(stderr, "client leaked after deinit\n");
        abort();
    }
    return 0;
}
