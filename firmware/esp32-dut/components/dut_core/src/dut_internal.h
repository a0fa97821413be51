/* Internals of dut_core, exposed for the unit tests (host/tests) and the fuzz target. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef ESP_PLATFORM
#include "sdkconfig.h" /* CONFIG_MQTT_PROTOCOL_5 decides the shape of esp_mqtt_event_t */
#endif
#include "cJSON.h"
#include "dut_core.h"
#include "mqtt_client.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------------------------ util */

size_t dut_b64_encoded_len(size_t n); /* without the NUL */
/* Writes the base64 of data[0..n) and a NUL to out (dut_b64_encoded_len(n) + 1 bytes). Returns the length. */
size_t dut_b64_encode(const uint8_t *data, size_t n, char *out);
/* Strict decoder (standard alphabet, padding required, no whitespace). out needs text_len / 4 * 3 bytes.
 * Returns false on any invalid input. */
bool dut_b64_decode(const char *text, size_t text_len, uint8_t *out, size_t *out_len);

/* CRC-32 (IEEE 802.3, as zlib's crc32): dut_crc32(0, data, n), chainable. */
uint32_t dut_crc32(uint32_t crc, const void *data, size_t n);

bool dut_utf8_valid(const uint8_t *s, size_t n); /* also rejects NUL bytes (they cannot be in a JSON string) */

const char *dut_errno_name(int err);          /* "ECONNREFUSED" or NULL */
/* {"code":n,"name":..,"msg":..}; code 0 gives name and msg null. */
cJSON *dut_errno_json(int err);
/* {"code":n,"hex":"0x..","names":["MBEDTLS_X509_BADCERT_..."]} */
cJSON *dut_verify_flags_json(uint32_t flags);
const char *dut_connect_rc_name(int code, bool v5); /* NULL if unknown */
const char *dut_error_type_name(int type);
const char *dut_event_name(int event_id);
const char *dut_protocol_ver_name(int ver);   /* "3.1", "3.1.1", "5" or NULL */
/* The full error_handle object of docs/dut-protocol.md §7. */
cJSON *dut_error_handle_json(const esp_mqtt_error_codes_t *e, int protocol_ver);
/* "0x1c291ca3" style (lower case, no padding for the error_handle fields). */
void dut_hex(char *out, size_t out_len, uint32_t v);

/* ----------------------------------------------------------------------------------------- frame */

enum { DUT_FRAME_OK = 0, DUT_FRAME_NO_MARKER, DUT_FRAME_BAD };

typedef struct {
    int major;           /* protocol major of the line */
    long id;             /* request id, -1 for '-' */
    bool id_valid;       /* an id (or '-') could be read */
    char kind[33];
    const char *json;    /* points into the line; not NUL-terminated */
    size_t json_len;
} dut_frame_t;

/* Parse `@@<major> <id|-> <KIND> <json>`. The marker may follow other text. On DUT_FRAME_BAD, id/id_valid/major
 * are filled as far as they could be read (so the ERR can carry the id). */
int dut_frame_parse(const char *line, size_t len, dut_frame_t *out);

/* Line assembly with a limit: lines longer than max bytes (without "\n" and a "\r" before it) are reported
 * with too_long=true and the first bytes kept, so the id can still be recovered. */
typedef void (*dut_line_cb)(void *arg, const char *line, size_t len, bool too_long);
typedef struct {
    char *buf;
    size_t len, max;
    bool overflow;
    dut_line_cb cb;
    void *arg;
} dut_linebuf_t;
bool dut_linebuf_init(dut_linebuf_t *lb, size_t max, dut_line_cb cb, void *arg);
void dut_linebuf_feed(dut_linebuf_t *lb, const uint8_t *data, size_t n);
void dut_linebuf_free(dut_linebuf_t *lb);

/* ----------------------------------------------------------------------------------------- blobs */

#define DUT_MAX_BLOBS 8
#define DUT_BLOB_NAME_MAX 32

typedef struct {
    char name[DUT_BLOB_NAME_MAX];
    uint8_t *data;     /* size + 1 bytes: a NUL after the end, so a PEM blob is a C string */
    size_t size;
    size_t received;
    bool complete;
    bool used;
} dut_blob_t;

enum { DUT_BLOB_OK = 0, DUT_BLOB_ERR_ARGS, DUT_BLOB_ERR_NOBLOB, DUT_BLOB_ERR_NOMEM, DUT_BLOB_ERR_CRC };

void dut_blobs_reset(void);
int dut_blob_begin(const char *name, size_t size, size_t max_size, const char **why);
int dut_blob_chunk(const char *name, size_t offset, const uint8_t *data, size_t n, size_t *received, const char **why);
int dut_blob_end(const char *name, uint32_t crc, size_t *size, const char **why);
int dut_blob_free(const char *name);
/* A complete blob by name, or NULL. */
const dut_blob_t *dut_blob_get(const char *name);

/* ---------------------------------------------------------------------------------------- config */

/* Strings and certificate copies a config points to; they live as long as the client may use them. */
typedef struct dut_arena_chunk {
    struct dut_arena_chunk *next;
    size_t len;
    char data[];
} dut_arena_chunk_t;
typedef struct {
    dut_arena_chunk_t *head;
} dut_arena_t;

void dut_arena_free(dut_arena_t *a);
char *dut_arena_strdup(dut_arena_t *a, const char *s);
/* A copy of n bytes plus a NUL (p NULL: n zero bytes). */
char *dut_arena_memdup(dut_arena_t *a, const void *p, size_t n);
void *dut_arena_zalloc(dut_arena_t *a, size_t n);

/* JSON (docs/dut-protocol.md §6) -> esp_mqtt_client_config_t. Unknown fields are appended to `ignored` (an
 * array of dotted paths, may be NULL) and logged. Returns false with why[] naming the bad field. */
bool dut_config_from_json(const cJSON *json, esp_mqtt_client_config_t *cfg, dut_arena_t *arena, cJSON *ignored,
                          char *why, size_t why_len);
/* The client id esp-mqtt will use for this config: the configured one, "" for set_null_client_id, or
 * ESP32_%02x%02X%02X from the last three MAC bytes. */
void dut_default_client_id(const uint8_t mac[6], char out[16]);

/* ---------------------------------------------------------------------------------------- events */

/* Line writer the event code uses: body is a complete JSON object text "{...}" that still lacks seq. */
typedef struct {
    size_t max_line;
    int64_t t_ms;
} dut_evt_ctx_t;

/* Build the JSON of an esp-mqtt event (all fields but seq and the data pieces). */
cJSON *dut_event_json(const esp_mqtt_event_t *ev, int64_t t_ms);
/* Split a DATA event into pieces that fit max_line; calls emit(arg, json_text) per piece, in order. Keeps the
 * running CRC of the message in *crc (reset when current_data_offset is 0). Returns the number of pieces. */
typedef void (*dut_piece_cb)(void *arg, const char *json_without_seq);
int dut_event_pieces(const esp_mqtt_event_t *ev, int64_t t_ms, size_t max_line, uint32_t *crc, dut_piece_cb emit,
                     void *arg);
/* Bytes of framing around an EVT body: "@@1 - EVT " + "{\"seq\":2147483647," + "\n". */
#define DUT_EVT_OVERHEAD 40

/* ------------------------------------------------------------------------------------------ core */

/* The state the core tracks from events (STATE verb when the esp-mqtt build has no esp_mqtt_client_get_state). */
const char *dut_core_tracked_state(void);
/* For tests: the event handler the core registers. */
void dut_core_event_handler(void *arg, esp_event_base_t base, int32_t event_id, void *event_data);

#ifdef __cplusplus
}
#endif
