/* Request dispatch and line output of docs/dut-protocol.md: one OK/ERR per request, numbered EVT lines, every
 * protocol line written with one write under the platform's lock. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dut_internal.h"

#ifndef DUT_MAX_BLOB_SIZE
#define DUT_MAX_BLOB_SIZE (64 * 1024)
#endif
#ifndef DUT_MAX_PAYLOAD
#define DUT_MAX_PAYLOAD (256 * 1024) /* pattern x reps */
#endif
#define DUT_MAX_TOPICS 16

static struct {
    const dut_platform_t *p;
    size_t max_line;
    dut_linebuf_t lb;
    bool ready;
    esp_mqtt_client_handle_t client;
    dut_arena_t arena_cur, arena_prev; /* the config the client uses, and the one before (still referenced?) */
    volatile int tracked;              /* index into STATES, from events */
    uint32_t seq;                      /* last EVT seq written; guarded by the platform lock */
    uint32_t data_crc;                 /* running CRC-32 of the DATA message in progress */
    long last_id;                      /* the previous request's id (0: none since boot or HELLO) */
} s;

enum { ST_ERROR, ST_UNKNOWN, ST_INIT, ST_DISCONNECTED, ST_CONNECTED, ST_WAIT_RECONNECT };
static const char *const STATES[] = {"MQTT_STATE_ERROR", "MQTT_STATE_UNKNOWN", "MQTT_STATE_INIT",
                                     "MQTT_STATE_DISCONNECTED", "MQTT_STATE_CONNECTED", "MQTT_STATE_WAIT_RECONNECT"};

static void logf_(char level, const char *fmt, ...)
{
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    /* text from the host (config keys) must not break the log line or pose as a protocol line */
    for (char *c = buf; *c; c++) {
        if ((unsigned char)*c < 0x20 || (unsigned char)*c == 0x7f) {
            *c = '?';
        } else if (c[0] == '@' && c[1] == '@') {
            c[1] = '_';
        }
    }
    if (s.p && s.p->log) {
        s.p->log(s.p->ctx, level, buf);
    }
}

/* ---------------------------------------------------------------------------------------------- output */

static void write_locked(const char *line, size_t len)
{
    s.p->write(s.p->ctx, line, len);
}

static void write_line(long id, const char *kind, const char *json)
{
    size_t n = strlen(json) + strlen(kind) + 32;
    char *line = malloc(n);
    if (!line) {
        return;
    }
    int len;
    if (id < 0) {
        len = snprintf(line, n, "@@%d - %s %s\n", DUT_PROTO_MAJOR, kind, json);
    } else {
        len = snprintf(line, n, "@@%d %ld %s %s\n", DUT_PROTO_MAJOR, id, kind, json);
    }
    s.p->lock(s.p->ctx);
    write_locked(line, (size_t)len);
    s.p->unlock(s.p->ctx);
    free(line);
}

/* Called with the lock held: gives the EVT its seq and writes it. json is "{...}" without seq. */
static void write_evt_locked(const char *json)
{
    size_t jl = strlen(json);
    char *line = malloc(jl + DUT_EVT_OVERHEAD + 8);
    if (!line) {
        return;
    }
    uint32_t seq = ++s.seq;
    const char *rest = jl > 2 ? json + 1 : "}";
    int len = snprintf(line, jl + DUT_EVT_OVERHEAD + 8, "@@%d - EVT {\"seq\":%lu%s%s\n", DUT_PROTO_MAJOR,
                       (unsigned long)seq, jl > 2 ? "," : "", rest);
    write_locked(line, (size_t)len);
    free(line);
}

static void piece_cb(void *arg, const char *json)
{
    (void)arg;
    write_evt_locked(json);
}

/* ------------------------------------------------------------------------------------------- events */

const char *dut_core_tracked_state(void)
{
    return STATES[s.tracked];
}

void dut_core_event_handler(void *arg, esp_event_base_t base, int32_t event_id, void *event_data)
{
    (void)arg;
    (void)base;
    (void)event_id;
    const esp_mqtt_event_t *ev = (const esp_mqtt_event_t *)event_data;
    if (!ev || !s.p) {
        return;
    }
    int64_t t = s.p->now_ms(s.p->ctx);
    switch (ev->event_id) {
    case MQTT_EVENT_BEFORE_CONNECT:
        s.tracked = ST_INIT;
        break;
    case MQTT_EVENT_CONNECTED:
        s.tracked = ST_CONNECTED;
        break;
    case MQTT_EVENT_DISCONNECTED:
        s.tracked = ST_WAIT_RECONNECT; /* esp_mqtt_abort_connection() always goes to WAIT_RECONNECT */
        break;
    default:
        break;
    }
    if (ev->event_id == MQTT_EVENT_DATA) {
        s.p->lock(s.p->ctx);
        dut_event_pieces(ev, t, s.max_line, &s.data_crc, piece_cb, NULL);
        s.p->unlock(s.p->ctx);
        return;
    }
    cJSON *o = dut_event_json(ev, t);
    if (!o) {
        return;
    }
    char *text = cJSON_PrintUnformatted(o);
    if (text && strlen(text) + DUT_EVT_OVERHEAD > s.max_line) {
        /* only data can make a non-DATA event long (a SUBSCRIBED with many codes): cut it, say so */
        cJSON_free(text);
        cJSON_ReplaceItemInObjectCaseSensitive(o, "data_b64", cJSON_CreateNull());
        cJSON_AddBoolToObject(o, "data_cut", true);
        text = cJSON_PrintUnformatted(o);
    }
    cJSON_Delete(o);
    if (!text) {
        return;
    }
    s.p->lock(s.p->ctx);
    write_evt_locked(text);
    s.p->unlock(s.p->ctx);
    cJSON_free(text);
}

/* ------------------------------------------------------------------------------------------ requests */

typedef struct {
    long id;
    const cJSON *body;
    cJSON *ok;
    const char *err;
    const char *esp_err;
    char msg[240];
    bool reboot_after;
    bool no_answer;
} req_t;

static void set_err(req_t *r, const char *name, const char *fmt, ...)
{
    if (r->err) {
        return;
    }
    r->err = name;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(r->msg, sizeof r->msg, fmt, ap);
    va_end(ap);
}

static cJSON *ok(req_t *r)
{
    if (!r->ok) {
        r->ok = cJSON_CreateObject();
    }
    return r->ok;
}

/* esp_err_t calls: OK {"err":"ESP_OK"} or ERR ESP_ERR with the name */
static void answer_esp(req_t *r, esp_err_t e, const char *call)
{
    if (e == ESP_OK) {
        cJSON_AddStringToObject(ok(r), "err", "ESP_OK");
    } else {
        r->esp_err = esp_err_to_name(e);
        set_err(r, "ESP_ERR", "%s returned %s", call, r->esp_err);
    }
}

static const cJSON *field(req_t *r, const char *key)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(r->body, key);
    return cJSON_IsNull(v) ? NULL : v;
}

static bool want_str(req_t *r, const char *key, bool required, const char **out)
{
    const cJSON *v = field(r, key);
    if (!v) {
        if (required) {
            set_err(r, "BAD_ARGS", "%s is missing (a string)", key);
        }
        return !required;
    }
    if (!cJSON_IsString(v)) {
        set_err(r, "BAD_ARGS", "%s must be a string", key);
        return false;
    }
    *out = v->valuestring;
    return true;
}

static bool want_int(req_t *r, const char *key, double lo, double hi, bool required, double *out)
{
    const cJSON *v = field(r, key);
    if (!v) {
        if (required) {
            set_err(r, "BAD_ARGS", "%s is missing (an integer from %.0f to %.0f)", key, lo, hi);
        }
        return !required;
    }
    if (!cJSON_IsNumber(v) || !(v->valuedouble >= lo && v->valuedouble <= hi) ||
            v->valuedouble != (double)(long long)v->valuedouble) {
        set_err(r, "BAD_ARGS", "%s must be an integer from %.0f to %.0f", key, lo, hi);
        return false;
    }
    *out = v->valuedouble;
    return true;
}

static bool want_bool(req_t *r, const char *key, bool *out)
{
    const cJSON *v = field(r, key);
    if (!v) {
        return true;
    }
    if (!cJSON_IsBool(v)) {
        set_err(r, "BAD_ARGS", "%s must be true or false", key);
        return false;
    }
    *out = cJSON_IsTrue(v);
    return true;
}

static bool need_client(req_t *r)
{
    if (!s.client) {
        set_err(r, "NO_CLIENT", "no client: INIT first");
        return false;
    }
    return true;
}

static void add_banner(cJSON *o)
{
    dut_identity_t id;
    memset(&id, 0, sizeof id);
    s.p->identity(s.p->ctx, &id);
    char buf[64];
    cJSON_AddNumberToObject(o, "proto", DUT_PROTO_MAJOR);
    cJSON_AddNumberToObject(o, "proto_minor", DUT_PROTO_MINOR);
    cJSON_AddStringToObject(o, "fw", DUT_FW_NAME " " DUT_FW_VERSION);
    cJSON_AddStringToObject(o, "idf", id.idf ? id.idf : "unknown");
    cJSON_AddStringToObject(o, "esp_mqtt", id.esp_mqtt ? id.esp_mqtt : "unknown");
    cJSON_AddStringToObject(o, "chip", id.chip ? id.chip : "unknown");
    snprintf(buf, sizeof buf, "%02x:%02x:%02x:%02x:%02x:%02x", id.mac[0], id.mac[1], id.mac[2], id.mac[3], id.mac[4],
             id.mac[5]);
    cJSON_AddStringToObject(o, "mac", buf);
    cJSON_AddStringToObject(o, "reset_reason", s.p->reset_reason(s.p->ctx));
    cJSON_AddNumberToObject(o, "max_line", (double)s.max_line);
    cJSON_AddStringToObject(o, "platform", id.platform ? id.platform : "unknown");
    cJSON *caps = cJSON_AddArrayToObject(o, "caps");
    const char *c = id.caps ? id.caps : "";
    while (*c) {
        const char *e = strchr(c, ',');
        size_t n = e ? (size_t)(e - c) : strlen(c);
        if (n && n < sizeof buf) {
            memcpy(buf, c, n);
            buf[n] = '\0';
            cJSON_AddItemToArray(caps, cJSON_CreateString(buf));
        }
        c += n + (e ? 1 : 0);
    }
    if (id.extra_json) {
        cJSON *extra = cJSON_Parse(id.extra_json);
        if (cJSON_IsObject(extra)) {
            for (cJSON *it = extra->child; it; it = it->next) {
                if (it->string && !cJSON_HasObjectItem(o, it->string)) {
                    cJSON_AddItemToObject(o, it->string, cJSON_Duplicate(it, true));
                }
            }
        }
        cJSON_Delete(extra);
    }
}

static void v_hello(req_t *r)
{
    const cJSON *proto = field(r, "proto");
    if (cJSON_IsNumber(proto) && proto->valuedouble != DUT_PROTO_MAJOR) {
        set_err(r, "PROTO_VERSION", "this device speaks protocol %d, the host asked for %g", DUT_PROTO_MAJOR,
                proto->valuedouble);
        return;
    }
    add_banner(ok(r));
}

static void v_ping(req_t *r)
{
    ok(r);
}

static void v_sysinfo(req_t *r)
{
    cJSON *o = ok(r);
    uint32_t free_b = 0, min_b = 0;
    if (s.p->heap) {
        s.p->heap(s.p->ctx, &free_b, &min_b);
    }
    cJSON_AddNumberToObject(o, "free_heap", free_b);
    cJSON_AddNumberToObject(o, "min_free_heap", min_b);
    cJSON_AddNumberToObject(o, "uptime_ms", (double)s.p->now_ms(s.p->ctx));
    int64_t epoch = 0;
    const char *source = "none";
    if (s.p->time_get && s.p->time_get(s.p->ctx, &epoch, &source)) {
        cJSON_AddNumberToObject(o, "time", (double)epoch);
    } else {
        cJSON_AddNullToObject(o, "time");
    }
    cJSON_AddStringToObject(o, "time_source", source ? source : "none");
    char ip[DUT_ADDR_LEN] = "";
    const char *netif = NULL;
    if (s.p->netinfo) {
        s.p->netinfo(s.p->ctx, ip, sizeof ip, &netif);
    }
    if (ip[0]) {
        cJSON_AddStringToObject(o, "ip", ip);
    } else {
        cJSON_AddNullToObject(o, "ip");
    }
    if (netif) {
        cJSON_AddStringToObject(o, "netif", netif);
    } else {
        cJSON_AddNullToObject(o, "netif");
    }
    cJSON_AddStringToObject(o, "client_state", s.client ? STATES[s.tracked] : "none");
    add_banner(o);
}

static void v_set_time(req_t *r)
{
    double epoch = 0;
    if (!want_int(r, "epoch", 0, 253402300799.0, true, &epoch)) {
        return;
    }
    if (!s.p->time_set || !s.p->time_set(s.p->ctx, (int64_t)epoch)) {
        set_err(r, "NOT_SUPPORTED", "this device cannot set its clock");
        return;
    }
    cJSON_AddNumberToObject(ok(r), "time", epoch);
}

static void v_loglevel(req_t *r)
{
    const char *tag = "*", *level = NULL;
    if (!want_str(r, "tag", false, &tag) || !want_str(r, "level", true, &level)) {
        return;
    }
    static const char *const LEVELS[] = {"NONE", "ERROR", "WARN", "INFO", "DEBUG", "VERBOSE"};
    bool known = false;
    for (size_t i = 0; i < sizeof LEVELS / sizeof LEVELS[0]; i++) {
        known |= strcmp(level, LEVELS[i]) == 0;
    }
    if (!known) {
        set_err(r, "BAD_ARGS", "level must be NONE, ERROR, WARN, INFO, DEBUG or VERBOSE");
        return;
    }
    if (!s.p->loglevel(s.p->ctx, tag, level)) {
        set_err(r, "BAD_ARGS", "could not set the level of that tag");
        return;
    }
    ok(r);
}

static void v_reset(req_t *r)
{
    ok(r);
    r->reboot_after = true; /* answered before rebooting, as the protocol wants */
}

static void v_crash(req_t *r)
{
    const char *reason = "ESP_RST_PANIC";
    if (!want_str(r, "reason", false, &reason)) {
        return;
    }
    static const char *const OK_REASONS[] = {"ESP_RST_PANIC", "ESP_RST_INT_WDT", "ESP_RST_TASK_WDT", "ESP_RST_WDT",
                                             "ESP_RST_BROWNOUT", "ESP_RST_SW", "ESP_RST_UNKNOWN"};
    for (size_t i = 0; i < sizeof OK_REASONS / sizeof OK_REASONS[0]; i++) {
        if (strcmp(reason, OK_REASONS[i]) == 0) {
            r->no_answer = true; /* CRASH is the one request without an answer: the device reboots at once */
            s.p->crash(s.p->ctx, OK_REASONS[i]);
            return;
        }
    }
    set_err(r, "BAD_ARGS", "reason must be an ESP_RST_* name a crash can give (ESP_RST_PANIC, ...)");
}

/* ------------------------------------------------------------------------------------------- blobs */

static void blob_err(req_t *r, int rc, const char *why)
{
    static const char *const NAMES[] = {"OK", "BAD_ARGS", "NO_BLOB", "NO_MEMORY", "CRC_MISMATCH"};
    set_err(r, NAMES[rc], "%s", why);
}

static void v_blob_begin(req_t *r)
{
    const char *name = NULL, *why = "";
    double size = 0;
    if (!want_str(r, "name", true, &name) || !want_int(r, "size", 0, 1e9, true, &size)) {
        return;
    }
    int rc = dut_blob_begin(name, (size_t)size, DUT_MAX_BLOB_SIZE, &why);
    if (rc) {
        blob_err(r, rc, why);
        return;
    }
    ok(r);
}

static void v_blob_chunk(req_t *r)
{
    const char *name = NULL, *b64 = NULL, *why = "";
    double offset = 0;
    if (!want_str(r, "name", true, &name) || !want_int(r, "offset", 0, 1e9, true, &offset) ||
            !want_str(r, "b64", true, &b64)) {
        return;
    }
    size_t tl = strlen(b64), n = 0, received = 0;
    uint8_t *tmp = malloc(tl / 4 * 3 + 1);
    if (!tmp) {
        set_err(r, "NO_MEMORY", "no heap for the chunk");
        return;
    }
    if (!dut_b64_decode(b64, tl, tmp, &n)) {
        set_err(r, "BAD_ARGS", "b64 is not valid base64");
    } else {
        int rc = dut_blob_chunk(name, (size_t)offset, tmp, n, &received, &why);
        if (rc) {
            blob_err(r, rc, why);
        } else {
            cJSON_AddNumberToObject(ok(r), "received", (double)received);
        }
    }
    free(tmp);
}

static bool parse_crc(const cJSON *v, uint32_t *out)
{
    if (cJSON_IsNumber(v) && v->valuedouble >= 0 && v->valuedouble <= 4294967295.0) {
        *out = (uint32_t)v->valuedouble;
        return true;
    }
    if (!cJSON_IsString(v)) {
        return false;
    }
    const char *t = v->valuestring;
    if (t[0] == '0' && (t[1] == 'x' || t[1] == 'X')) {
        t += 2;
    }
    if (!*t || strlen(t) > 8) {
        return false;
    }
    uint32_t x = 0;
    for (; *t; t++) {
        char c = *t;
        int d = (c >= '0' && c <= '9') ? c - '0' : (c >= 'a' && c <= 'f') ? c - 'a' + 10 :
                (c >= 'A' && c <= 'F') ? c - 'A' + 10 : -1;
        if (d < 0) {
            return false;
        }
        x = (x << 4) | (uint32_t)d;
    }
    *out = x;
    return true;
}

static void v_blob_end(req_t *r)
{
    const char *name = NULL, *why = "";
    uint32_t crc = 0;
    size_t size = 0;
    if (!want_str(r, "name", true, &name)) {
        return;
    }
    if (!parse_crc(field(r, "crc32"), &crc)) {
        set_err(r, "BAD_ARGS", "crc32 must be a hex string (\"0x1c291ca3\") or a number");
        return;
    }
    int rc = dut_blob_end(name, crc, &size, &why);
    if (rc) {
        blob_err(r, rc, why);
        return;
    }
    cJSON_AddNumberToObject(ok(r), "size", (double)size);
}

static void v_blob_free(req_t *r)
{
    const char *name = NULL;
    if (!want_str(r, "name", true, &name)) {
        return;
    }
    /* freeing what is not there is not an error: the host frees to get a clean state */
    cJSON_AddBoolToObject(ok(r), "existed", dut_blob_free(name) == DUT_BLOB_OK);
}

/* ------------------------------------------------------------------------------------------ client */

static void log_ignored(const cJSON *ignored)
{
    for (const cJSON *it = ignored ? ignored->child : NULL; it; it = it->next) {
        logf_('W', "config: ignored unknown field %s", it->valuestring);
    }
}

static bool build_config(req_t *r, esp_mqtt_client_config_t *cfg, dut_arena_t *arena, cJSON *ignored)
{
    const cJSON *json = cJSON_GetObjectItemCaseSensitive(r->body, "config");
    char why[200];
    if (json && !cJSON_IsObject(json) && !cJSON_IsNull(json)) {
        set_err(r, "BAD_ARGS", "config must be an object");
        return false;
    }
    if (!dut_config_from_json(json, cfg, arena, ignored, why, sizeof why)) {
        set_err(r, "BAD_ARGS", "%s", why);
        return false;
    }
    log_ignored(ignored);
    return true;
}

static void v_init(req_t *r)
{
    if (s.client) {
        set_err(r, "CLIENT_EXISTS", "a client exists: DESTROY it first");
        return;
    }
    esp_mqtt_client_config_t cfg;
    dut_arena_t arena = {0};
    cJSON *ignored = cJSON_CreateArray();
    if (!build_config(r, &cfg, &arena, ignored)) {
        dut_arena_free(&arena);
        cJSON_Delete(ignored);
        return;
    }
    esp_mqtt_client_handle_t c = esp_mqtt_client_init(&cfg);
    if (!c) {
        r->esp_err = "ESP_FAIL";
        set_err(r, "ESP_ERR", "esp_mqtt_client_init returned NULL (bad URI or out of memory)");
        dut_arena_free(&arena);
        cJSON_Delete(ignored);
        return;
    }
    esp_err_t e = esp_mqtt_client_register_event(c, (esp_mqtt_event_id_t)ESP_EVENT_ANY_ID, dut_core_event_handler,
                                                 NULL);
    if (e != ESP_OK) {
        esp_mqtt_client_destroy(c);
        dut_arena_free(&arena);
        cJSON_Delete(ignored);
        answer_esp(r, e, "esp_mqtt_client_register_event");
        return;
    }
    s.client = c;
    s.arena_cur = arena;
    s.tracked = ST_INIT;
    cJSON *o = ok(r);
    if (cfg.credentials.set_null_client_id) {
        cJSON_AddStringToObject(o, "client_id", "");
    } else if (cfg.credentials.client_id) {
        /* the host's bytes, unchecked by cJSON: only valid UTF-8 goes out as a JSON string */
        const char *cid = cfg.credentials.client_id;
        if (dut_utf8_valid((const uint8_t *)cid, strlen(cid))) {
            cJSON_AddStringToObject(o, "client_id", cid);
        } else {
            char *b = malloc(dut_b64_encoded_len(strlen(cid)) + 1);
            if (b) {
                dut_b64_encode((const uint8_t *)cid, strlen(cid), b);
                cJSON_AddStringToObject(o, "client_id_b64", b);
                free(b);
            }
        }
    } else {
        dut_identity_t id;
        char cid[16];
        memset(&id, 0, sizeof id);
        s.p->identity(s.p->ctx, &id);
        dut_default_client_id(id.mac, cid);
        cJSON_AddStringToObject(o, "client_id", cid);
    }
    if (cJSON_GetArraySize(ignored) > 0) {
        cJSON_AddItemToObject(o, "ignored", ignored);
    } else {
        cJSON_Delete(ignored);
    }
}

static void v_config(req_t *r)
{
    if (!need_client(r)) {
        return;
    }
    esp_mqtt_client_config_t cfg;
    dut_arena_t arena = {0};
    cJSON *ignored = cJSON_CreateArray();
    if (!build_config(r, &cfg, &arena, ignored)) {
        dut_arena_free(&arena);
        cJSON_Delete(ignored);
        return;
    }
    esp_err_t e = esp_mqtt_set_config(s.client, &cfg);
    if (e == ESP_OK) {
        /* esp-mqtt copies strings but keeps pointing at certificates: keep this config's memory, and the one
         * before in case a connection attempt still reads it */
        dut_arena_free(&s.arena_prev);
        s.arena_prev = s.arena_cur;
        s.arena_cur = arena;
    } else {
        dut_arena_free(&arena);
    }
    answer_esp(r, e, "esp_mqtt_set_config");
    if (r->ok && cJSON_GetArraySize(ignored) > 0) {
        cJSON_AddItemToObject(r->ok, "ignored", ignored);
    } else {
        cJSON_Delete(ignored);
    }
}

static void v_set_uri(req_t *r)
{
    const char *uri = NULL;
    if (!need_client(r) || !want_str(r, "uri", true, &uri)) {
        return;
    }
    answer_esp(r, esp_mqtt_client_set_uri(s.client, uri), "esp_mqtt_client_set_uri");
}

static void v_start(req_t *r)
{
    if (!need_client(r)) {
        return;
    }
    esp_err_t e = esp_mqtt_client_start(s.client);
    answer_esp(r, e, "esp_mqtt_client_start");
}

static void v_stop(req_t *r)
{
    if (!need_client(r)) {
        return;
    }
    esp_err_t e = esp_mqtt_client_stop(s.client);
    if (e == ESP_OK) {
        s.tracked = ST_DISCONNECTED;
    }
    answer_esp(r, e, "esp_mqtt_client_stop");
}

static void v_disconnect(req_t *r)
{
    if (need_client(r)) {
        answer_esp(r, esp_mqtt_client_disconnect(s.client), "esp_mqtt_client_disconnect");
    }
}

static void v_reconnect(req_t *r)
{
    if (need_client(r)) {
        answer_esp(r, esp_mqtt_client_reconnect(s.client), "esp_mqtt_client_reconnect");
    }
}

static void destroy_client(void)
{
    if (s.client) {
        esp_mqtt_client_destroy(s.client);
        s.client = NULL;
    }
    dut_arena_free(&s.arena_cur);
    dut_arena_free(&s.arena_prev);
    s.tracked = ST_UNKNOWN;
}

static void v_destroy(req_t *r)
{
    if (!s.client) {
        cJSON_AddStringToObject(ok(r), "err", "ESP_OK"); /* the host destroys to start from a clean state */
        return;
    }
    esp_err_t e = esp_mqtt_client_destroy(s.client);
    s.client = NULL;
    destroy_client();
    answer_esp(r, e, "esp_mqtt_client_destroy");
}

/* The payload of PUBLISH/ENQUEUE: payload_b64, blob or pattern x reps; NULL/0 for none. */
static bool payload(req_t *r, const char **data, int *len, char **owned)
{
    const cJSON *b64 = field(r, "payload_b64"), *blob = field(r, "blob"), *pattern = field(r, "pattern");
    *data = NULL;
    *len = 0;
    *owned = NULL;
    if ((b64 != NULL) + (blob != NULL) + (pattern != NULL) > 1) {
        set_err(r, "BAD_ARGS", "give one of payload_b64, blob, pattern");
        return false;
    }
    if (b64) {
        if (!cJSON_IsString(b64)) {
            set_err(r, "BAD_ARGS", "payload_b64 must be a string");
            return false;
        }
        size_t tl = strlen(b64->valuestring), n = 0;
        char *buf = malloc(tl / 4 * 3 + 1);
        if (!buf) {
            set_err(r, "NO_MEMORY", "no heap for the payload");
            return false;
        }
        if (!dut_b64_decode(b64->valuestring, tl, (uint8_t *)buf, &n)) {
            free(buf);
            set_err(r, "BAD_ARGS", "payload_b64 is not valid base64");
            return false;
        }
        *owned = buf;
        *data = buf;
        *len = (int)n;
    } else if (blob) {
        const dut_blob_t *b = cJSON_IsString(blob) ? dut_blob_get(blob->valuestring) : NULL;
        if (!cJSON_IsString(blob)) {
            set_err(r, "BAD_ARGS", "blob must be a blob name");
            return false;
        }
        if (!b) {
            set_err(r, "NO_BLOB", "no complete blob of that name");
            return false;
        }
        *data = (const char *)b->data;
        *len = (int)b->size;
    } else if (pattern) {
        double reps = 1;
        if (!cJSON_IsString(pattern)) {
            set_err(r, "BAD_ARGS", "pattern must be a string");
            return false;
        }
        if (!want_int(r, "reps", 0, DUT_MAX_PAYLOAD, false, &reps)) {
            return false;
        }
        size_t pl = strlen(pattern->valuestring);
        size_t total = pl * (size_t)reps;
        if (total > DUT_MAX_PAYLOAD) {
            set_err(r, "NO_MEMORY", "pattern x reps is %lu bytes, more than this device's %lu", (unsigned long)total,
                    (unsigned long)DUT_MAX_PAYLOAD);
            return false;
        }
        char *buf = malloc(total + 1);
        if (!buf) {
            set_err(r, "NO_MEMORY", "no heap for %lu payload bytes", (unsigned long)total);
            return false;
        }
        for (size_t i = 0; i < (size_t)reps; i++) {
            memcpy(buf + i * pl, pattern->valuestring, pl);
        }
        *owned = buf;
        *data = buf;
        *len = (int)total;
    }
    if (*len == 0) {
        *data = NULL; /* esp-mqtt takes len 0 with data as "use strlen(data)": an empty payload is NULL, 0 */
    }
    return true;
}

static void publish_common(req_t *r, bool enqueue)
{
    const char *topic = NULL, *data = NULL;
    double qos = 0;
    bool retain = false, store = false;
    int len = 0;
    char *owned = NULL;
    if (!need_client(r) || !want_str(r, "topic", true, &topic) || !want_int(r, "qos", 0, 2, false, &qos) ||
            !want_bool(r, "retain", &retain) || (enqueue && !want_bool(r, "store", &store)) ||
            !payload(r, &data, &len, &owned)) {
        return;
    }
    int id = enqueue ? esp_mqtt_client_enqueue(s.client, topic, data, len, (int)qos, retain, store)
             : esp_mqtt_client_publish(s.client, topic, data, len, (int)qos, retain);
    free(owned);
    cJSON_AddNumberToObject(ok(r), "msg_id", id); /* verbatim, -1 and -2 included */
}

static void v_publish(req_t *r)
{
    publish_common(r, false);
}

static void v_enqueue(req_t *r)
{
    publish_common(r, true);
}

static void v_subscribe(req_t *r)
{
    esp_mqtt_topic_t list[DUT_MAX_TOPICS];
    int n = 0;
    if (!need_client(r)) {
        return;
    }
    const cJSON *topics = field(r, "topics");
    if (topics) {
        if (!cJSON_IsArray(topics) || cJSON_GetArraySize(topics) < 1 || cJSON_GetArraySize(topics) > DUT_MAX_TOPICS) {
            set_err(r, "BAD_ARGS", "topics must be a list of 1 to %d {\"filter\",\"qos\"}", DUT_MAX_TOPICS);
            return;
        }
        for (const cJSON *t = topics->child; t; t = t->next) {
            const cJSON *f = cJSON_GetObjectItemCaseSensitive(t, "filter");
            const cJSON *q = cJSON_GetObjectItemCaseSensitive(t, "qos");
            if (!cJSON_IsString(f)) {
                set_err(r, "BAD_ARGS", "topics[%d].filter must be a string", n);
                return;
            }
            double qv = 0;
            if (q && !cJSON_IsNull(q)) {
                if (!cJSON_IsNumber(q) || (q->valuedouble != 0 && q->valuedouble != 1 && q->valuedouble != 2)) {
                    set_err(r, "BAD_ARGS", "topics[%d].qos must be 0, 1 or 2", n);
                    return;
                }
                qv = q->valuedouble;
            }
            list[n].filter = f->valuestring;
            list[n].qos = (int)qv;
            n++;
        }
    } else {
        const char *topic = NULL;
        double qos = 0;
        if (!want_str(r, "topic", true, &topic) || !want_int(r, "qos", 0, 2, false, &qos)) {
            return;
        }
        list[0].filter = topic;
        list[0].qos = (int)qos;
        n = 1;
    }
    int id = esp_mqtt_client_subscribe_multiple(s.client, list, n);
    cJSON_AddNumberToObject(ok(r), "msg_id", id);
}

static void v_unsubscribe(req_t *r)
{
    const char *topic = NULL;
    if (!need_client(r) || !want_str(r, "topic", true, &topic)) {
        return;
    }
    cJSON_AddNumberToObject(ok(r), "msg_id", esp_mqtt_client_unsubscribe(s.client, topic));
}

static void v_outbox(req_t *r)
{
    if (need_client(r)) {
        cJSON_AddNumberToObject(ok(r), "size", esp_mqtt_client_get_outbox_size(s.client));
    }
}

static void v_state(req_t *r)
{
    if (!need_client(r)) {
        return;
    }
#ifdef DUT_HAVE_MQTT_GET_STATE
    const char *name;
    switch (esp_mqtt_client_get_state(s.client)) {
    case MQTT_CLIENT_STATE_NOT_STARTED:
        name = STATES[s.tracked == ST_DISCONNECTED ? ST_DISCONNECTED : ST_INIT];
        break;
    case MQTT_CLIENT_STATE_DISCONNECTED:
        name = STATES[ST_DISCONNECTED];
        break;
    case MQTT_CLIENT_STATE_CONNECTED:
        name = STATES[ST_CONNECTED];
        break;
    case MQTT_CLIENT_STATE_WAITING_RECONNECT:
        name = STATES[ST_WAIT_RECONNECT];
        break;
    default:
        name = STATES[ST_UNKNOWN];
        break;
    }
    cJSON_AddStringToObject(ok(r), "state", name);
    cJSON_AddStringToObject(ok(r), "source", "esp_mqtt_client_get_state");
#else
    cJSON_AddStringToObject(ok(r), "state", STATES[s.tracked]);
    cJSON_AddStringToObject(ok(r), "source", "events");
#endif
}

static void v_dns(req_t *r)
{
    const char *host = NULL, *error = NULL;
    double timeout = 5000;
    char addrs[DUT_DNS_MAX_ADDRS][DUT_ADDR_LEN];
    if (!want_str(r, "host", true, &host) || !want_int(r, "timeout_ms", 1, 60000, false, &timeout)) {
        return;
    }
    if (strlen(host) == 0 || strlen(host) > 253) {
        set_err(r, "BAD_ARGS", "host must be 1 to 253 bytes");
        return;
    }
    int64_t t0 = s.p->now_ms(s.p->ctx);
    int n = s.p->dns(s.p->ctx, host, (int)timeout, addrs, DUT_DNS_MAX_ADDRS, &error);
    int64_t t1 = s.p->now_ms(s.p->ctx);
    cJSON *o = ok(r);
    cJSON *list = cJSON_AddArrayToObject(o, "addresses");
    for (int i = 0; i < n; i++) {
        cJSON_AddItemToArray(list, cJSON_CreateString(addrs[i]));
    }
    if (n <= 0) {
        cJSON_AddStringToObject(o, "error", error ? error : "EAI_FAIL");
    }
    cJSON_AddNumberToObject(o, "elapsed_ms", (double)(t1 - t0));
}

static void v_tcp_probe(req_t *r)
{
    const char *host = NULL;
    double port = 0, timeout = 3000;
    if (!want_str(r, "host", true, &host) || !want_int(r, "port", 1, 65535, true, &port) ||
            !want_int(r, "timeout_ms", 1, 60000, false, &timeout)) {
        return;
    }
    int err = 0;
    bool timed_out = false;
    int64_t t0 = s.p->now_ms(s.p->ctx);
    bool connected = s.p->tcp_probe(s.p->ctx, host, (int)port, (int)timeout, &err, &timed_out);
    int64_t t1 = s.p->now_ms(s.p->ctx);
    cJSON *o = ok(r);
    cJSON_AddBoolToObject(o, "connected", connected);
    if (!connected) {
        cJSON_AddItemToObject(o, "errno", dut_errno_json(err));
        cJSON_AddBoolToObject(o, "timed_out", timed_out);
    }
    cJSON_AddNumberToObject(o, "elapsed_ms", (double)(t1 - t0));
}

typedef struct {
    const char *verb;
    void (*fn)(req_t *r);
} verb_t;

static const verb_t VERBS[] = {
    {"HELLO", v_hello},         {"PING", v_ping},           {"SYSINFO", v_sysinfo},
    {"SET_TIME", v_set_time},   {"LOGLEVEL", v_loglevel},   {"RESET", v_reset},
    {"CRASH", v_crash},         {"BLOB_BEGIN", v_blob_begin}, {"BLOB_CHUNK", v_blob_chunk},
    {"BLOB_END", v_blob_end},   {"BLOB_FREE", v_blob_free}, {"INIT", v_init},
    {"CONFIG", v_config},       {"SET_URI", v_set_uri},     {"START", v_start},
    {"STOP", v_stop},           {"DISCONNECT", v_disconnect}, {"RECONNECT", v_reconnect},
    {"DESTROY", v_destroy},     {"PUBLISH", v_publish},     {"ENQUEUE", v_enqueue},
    {"SUBSCRIBE", v_subscribe}, {"UNSUBSCRIBE", v_unsubscribe}, {"OUTBOX", v_outbox},
    {"STATE", v_state},         {"DNS", v_dns},             {"TCP_PROBE", v_tcp_probe},
};

static bool verb_available(const char *verb)
{
    if (strcmp(verb, "CRASH") == 0) {
        return s.p->crash != NULL;
    }
    if (strcmp(verb, "LOGLEVEL") == 0) {
        return s.p->loglevel != NULL;
    }
    if (strcmp(verb, "DNS") == 0) {
        return s.p->dns != NULL;
    }
    if (strcmp(verb, "TCP_PROBE") == 0) {
        return s.p->tcp_probe != NULL;
    }
    return true;
}

static void send_err(long id, const char *name, const char *msg, const char *esp_err)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "name", name);
    if (esp_err) {
        cJSON_AddStringToObject(o, "err", esp_err);
    }
    if (strcmp(name, "PROTO_VERSION") == 0) {
        cJSON_AddNumberToObject(o, "proto", DUT_PROTO_MAJOR);
    }
    cJSON_AddStringToObject(o, "msg", dut_utf8_valid((const uint8_t *)msg, strlen(msg)) ? msg : "(not UTF-8)");
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text) {
        write_line(id, "ERR", text);
        cJSON_free(text);
    }
}

static void send_answer(req_t *r)
{
    if (r->err) {
        send_err(r->id, r->err, r->msg, r->esp_err);
        return;
    }
    char *text = cJSON_PrintUnformatted(r->ok);
    if (!text) {
        send_err(r->id, "NO_MEMORY", "the answer does not fit in memory", NULL);
        return;
    }
    if (strlen(text) + 32 > s.max_line) {
        send_err(r->id, "ANSWER_TOO_LONG", "the answer would not fit in max_line", NULL);
    } else {
        write_line(r->id, "OK", text);
    }
    cJSON_free(text);
}

static void handle_line(const char *line, size_t len, bool too_long)
{
    dut_frame_t f;
    int rc = dut_frame_parse(line, len, &f);
    if (too_long) {
        /* the head is kept, so the id of a too-long request is usually known */
        if (rc != DUT_FRAME_NO_MARKER || (len >= 2 && line[0] == '@' && line[1] == '@')) {
            send_err(f.id_valid ? f.id : -1, "LINE_TOO_LONG", "the request line exceeded max_line", NULL);
        } else {
            logf_('W', "dropped an input line longer than max_line without a protocol marker");
        }
        return;
    }
    if (rc == DUT_FRAME_NO_MARKER) {
        size_t i = 0;
        while (i < len && (line[i] == ' ' || line[i] == '\t' || line[i] == '\r')) {
            i++;
        }
        if (i < len) {
            logf_('W', "ignored an input line without a protocol marker (%u bytes)", (unsigned)len);
        }
        return;
    }
    if (f.id_valid && f.major != DUT_PROTO_MAJOR) {
        char msg[96];
        snprintf(msg, sizeof msg, "this device speaks protocol %d, the line is protocol %d", DUT_PROTO_MAJOR, f.major);
        send_err(f.id, "PROTO_VERSION", msg, NULL);
        return;
    }
    if (rc == DUT_FRAME_BAD) {
        send_err(f.id_valid ? f.id : -1, "BAD_FRAME", "not '@@1 <id> <VERB> <json>'", NULL);
        return;
    }
    if (f.id < 0) {
        send_err(-1, "BAD_ARGS", "a request needs a numeric id, not '-'", NULL);
        return;
    }
    /* the same id twice in a row is a line sent twice: answering it again must not run it again (a second
     * PUBLISH); HELLO starts a host session at any id */
    if (strcmp(f.kind, "HELLO") == 0) {
        s.last_id = 0;
    } else if (f.id == s.last_id) {
        send_err(f.id, "DUPLICATE_ID", "this id was the previous request's; not executed", NULL);
        return;
    } else {
        s.last_id = f.id;
    }
    /* the line buffer is not NUL-terminated at the JSON's end when called directly: copy it */
    char *json = malloc(f.json_len + 1);
    if (!json) {
        send_err(f.id, "NO_MEMORY", "no heap for the request", NULL);
        return;
    }
    memcpy(json, f.json, f.json_len);
    json[f.json_len] = '\0';
    const char *end = NULL;
    cJSON *body = cJSON_ParseWithOpts(json, &end, true);
    if (!body || !cJSON_IsObject(body)) {
        cJSON_Delete(body);
        free(json);
        send_err(f.id, "BAD_JSON", body ? "the JSON is not an object" : "the JSON does not parse", NULL);
        return;
    }
    const verb_t *v = NULL;
    for (size_t i = 0; i < sizeof VERBS / sizeof VERBS[0]; i++) {
        if (strcmp(VERBS[i].verb, f.kind) == 0) {
            v = &VERBS[i];
        }
    }
    req_t r;
    memset(&r, 0, sizeof r);
    r.id = f.id;
    r.body = body;
    if (!v || !verb_available(f.kind)) {
        set_err(&r, "UNKNOWN_VERB", "%s is not a verb this device implements", f.kind);
    } else {
        v->fn(&r);
    }
    if (!r.no_answer) {
        if (!r.err && !r.ok) {
            set_err(&r, "INTERNAL", "the verb produced no answer");
        }
        send_answer(&r);
    }
    cJSON_Delete(r.ok);
    cJSON_Delete(body);
    free(json);
    if (r.reboot_after) {
        s.p->reboot(s.p->ctx);
    }
}

static void line_cb(void *arg, const char *line, size_t len, bool too_long)
{
    (void)arg;
    handle_line(line, len, too_long);
}

/* ------------------------------------------------------------------------------------------- public */

bool dut_core_init(const dut_platform_t *platform, size_t max_line)
{
    memset(&s, 0, sizeof s);
    s.p = platform;
    s.max_line = max_line < DUT_MIN_MAX_LINE ? DUT_MIN_MAX_LINE : max_line;
    s.tracked = ST_UNKNOWN;
    if (!dut_linebuf_init(&s.lb, s.max_line, line_cb, NULL)) {
        return false;
    }
    s.ready = true;
    return true;
}

void dut_core_banner(void)
{
    cJSON *o = cJSON_CreateObject();
    add_banner(o);
    char *text = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    if (text) {
        write_line(-1, "BOOT", text);
        cJSON_free(text);
    }
}

void dut_core_feed(const uint8_t *data, size_t len)
{
    if (s.ready) {
        dut_linebuf_feed(&s.lb, data, len);
    }
}

void dut_core_line(const char *line, size_t len)
{
    if (!s.ready) {
        return;
    }
    if (len > 0 && line[len - 1] == '\r') {
        len--;
    }
    handle_line(line, len > s.max_line ? s.max_line : len, len > s.max_line);
}

void dut_core_deinit(void)
{
    destroy_client();
    dut_blobs_reset();
    dut_linebuf_free(&s.lb);
    s.ready = false;
}
