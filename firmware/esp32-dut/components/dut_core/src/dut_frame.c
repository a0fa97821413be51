/* Framing of docs/dut-protocol.md §2: `@@<major> <id|-> <KIND> <json>` and line assembly with max_line. */
#include <stdlib.h>
#include <string.h>

#include "dut_internal.h"

static bool is_digit(char c)
{
    return c >= '0' && c <= '9';
}

int dut_frame_parse(const char *line, size_t len, dut_frame_t *out)
{
    memset(out, 0, sizeof *out);
    out->id = -1;
    size_t i = 0;
    /* the marker may sit anywhere: text before it is log that lost its newline */
    for (;;) {
        if (i + 2 >= len) {
            return DUT_FRAME_NO_MARKER;
        }
        if (line[i] == '@' && line[i + 1] == '@' && is_digit(line[i + 2])) {
            break;
        }
        i++;
    }
    i += 2;
    int major = 0, nd = 0;
    while (i < len && is_digit(line[i]) && nd < 4) {
        major = major * 10 + (line[i] - '0');
        i++;
        nd++;
    }
    if (nd > 3 || i >= len || line[i] != ' ') {
        return DUT_FRAME_NO_MARKER; /* "@@12345" or "@@1x": not our marker, treat as text */
    }
    out->major = major;
    i++;
    if (i < len && line[i] == '-') {
        out->id_valid = true;
        out->id = -1;
        i++;
    } else {
        long id = 0;
        nd = 0;
        while (i < len && is_digit(line[i]) && nd < 11) {
            id = id * 10 + (line[i] - '0');
            i++;
            nd++;
        }
        if (nd == 0 || nd > 10 || id < 1 || id > 2147483647L) {
            return DUT_FRAME_BAD;
        }
        out->id = id;
        out->id_valid = true;
    }
    if (i >= len || line[i] != ' ') {
        return DUT_FRAME_BAD;
    }
    i++;
    size_t k = 0;
    if (i >= len || !(line[i] >= 'A' && line[i] <= 'Z')) {
        return DUT_FRAME_BAD;
    }
    while (i < len && ((line[i] >= 'A' && line[i] <= 'Z') || is_digit(line[i]) || line[i] == '_')) {
        if (k >= sizeof out->kind - 1) {
            return DUT_FRAME_BAD;
        }
        out->kind[k++] = line[i++];
    }
    out->kind[k] = '\0';
    if (i == len) {
        /* no JSON at all: read as {} (lenient; the host always sends one) */
        out->json = "{}";
        out->json_len = 2;
        return DUT_FRAME_OK;
    }
    if (line[i] != ' ') {
        return DUT_FRAME_BAD;
    }
    i++;
    out->json = line + i;
    out->json_len = len - i;
    return DUT_FRAME_OK;
}

bool dut_linebuf_init(dut_linebuf_t *lb, size_t max, dut_line_cb cb, void *arg)
{
    memset(lb, 0, sizeof *lb);
    /* +1: a '\r' before the newline is not counted; +1: room for a NUL the dispatcher adds */
    lb->buf = malloc(max + 2);
    if (!lb->buf) {
        return false;
    }
    lb->max = max;
    lb->cb = cb;
    lb->arg = arg;
    return true;
}

void dut_linebuf_feed(dut_linebuf_t *lb, const uint8_t *data, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = (char)data[i];
        if (c == '\n') {
            size_t len = lb->len;
            if (len > 0 && lb->buf[len - 1] == '\r') {
                len--;
            }
            if (!lb->overflow && len > lb->max) {
                lb->overflow = true;
            }
            if (lb->overflow && len > lb->max) {
                len = lb->max;
            }
            lb->buf[len] = '\0';
            lb->cb(lb->arg, lb->buf, len, lb->overflow);
            lb->len = 0;
            lb->overflow = false;
            continue;
        }
        if (lb->len < lb->max + 1) {
            lb->buf[lb->len++] = c;
        } else {
            lb->overflow = true; /* keep the head (it holds the id), drop the rest up to the newline */
        }
    }
}

void dut_linebuf_free(dut_linebuf_t *lb)
{
    free(lb->buf);
    lb->buf = NULL;
}
