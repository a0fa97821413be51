/* The `config` JSON of docs/dut-protocol.md §6 -> esp_mqtt_client_config_t (esp-mqtt >= 5.0 nesting). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "dut_internal.h"

/* Set by the ESP32 platform when the certificate bundle is compiled in (esp_crt_bundle_attach). */
int (*dut_crt_bundle_attach_fn)(void *conf) = NULL;

void dut_arena_free(dut_arena_t *a)
{
    dut_arena_chunk_t *c = a->head;
    while (c) {
        dut_arena_chunk_t *next = c->next;
        free(c);
        c = next;
    }
    a->head = NULL;
}

char *dut_arena_memdup(dut_arena_t *a, const void *p, size_t n)
{
    dut_arena_chunk_t *c = malloc(sizeof *c + n + 1);
    if (!c) {
        return NULL;
    }
    c->len = n;
    if (p && n) {
        memcpy(c->data, p, n);
    } else {
        memset(c->data, 0, n);
    }
    c->data[n] = '\0';
    c->next = a->head;
    a->head = c;
    return c->data;
}

void *dut_arena_zalloc(dut_arena_t *a, size_t n)
{
    return dut_arena_memdup(a, NULL, n);
}

char *dut_arena_strdup(dut_arena_t *a, const char *s)
{
    return dut_arena_memdup(a, s, strlen(s));
}

void dut_default_client_id(const uint8_t mac[6], char out[16])
{
    /* esp-mqtt platform_create_id_string(): first byte lower case, the other two upper case */
    snprintf(out, 16, "ESP32_%02x%02X%02X", mac[3], mac[4], mac[5]);
}

typedef struct {
    dut_arena_t *arena;
    cJSON *ignored;
    char *why;
    size_t why_len;
    bool ok;
} ctx_t;

#define EACH(var, obj) for (const cJSON *var = (obj)->child; var; var = var->next)

static bool fail(ctx_t *c, const char *path, const cJSON *item, const char *what)
{
    if (c->ok) {
        snprintf(c->why, c->why_len, "config.%s%s%s %s", path, path[0] ? "." : "", item->string ? item->string : "?",
                 what);
    }
    c->ok = false;
    return false;
}

static void ignore(ctx_t *c, const char *path, const cJSON *item)
{
    char full[160];
    const char *key = item->string ? item->string : "?";
    snprintf(full, sizeof full, "%s.%s", path, key);
    /* keys come from the host's JSON unchecked: keep the reported path valid UTF-8 */
    if (!dut_utf8_valid((const uint8_t *)full, strlen(full))) {
        snprintf(full, sizeof full, "%s.<key that is not UTF-8>", path);
    }
    if (c->ignored) {
        cJSON_AddItemToArray(c->ignored, cJSON_CreateString(full));
    }
}

static bool is(const cJSON *item, const char *name)
{
    return item->string && strcmp(item->string, name) == 0;
}

/* null means "leave esp-mqtt's default": every getter returns false for it without failing */
static bool get_bool(ctx_t *c, const char *path, const cJSON *item, bool *out)
{
    if (cJSON_IsNull(item)) {
        return false;
    }
    if (!cJSON_IsBool(item)) {
        return fail(c, path, item, "must be true or false");
    }
    *out = cJSON_IsTrue(item);
    return true;
}

static bool get_int(ctx_t *c, const char *path, const cJSON *item, double lo, double hi, double *out)
{
    if (cJSON_IsNull(item)) {
        return false;
    }
    /* range first: converting an out-of-range double to an integer is undefined */
    if (!cJSON_IsNumber(item) || !(item->valuedouble >= lo && item->valuedouble <= hi) ||
            item->valuedouble != (double)(long long)item->valuedouble) {
        char what[96];
        snprintf(what, sizeof what, "must be an integer from %.0f to %.0f", lo, hi);
        return fail(c, path, item, what);
    }
    *out = item->valuedouble;
    return true;
}

static bool get_str(ctx_t *c, const char *path, const cJSON *item, const char **out)
{
    if (cJSON_IsNull(item)) {
        return false;
    }
    if (!cJSON_IsString(item)) {
        return fail(c, path, item, "must be a string");
    }
    *out = dut_arena_strdup(c->arena, item->valuestring);
    if (!*out) {
        return fail(c, path, item, "does not fit in memory");
    }
    return true;
}

static bool get_obj(ctx_t *c, const char *path, const cJSON *item)
{
    if (cJSON_IsNull(item)) {
        return false;
    }
    if (!cJSON_IsObject(item)) {
        return fail(c, path, item, "must be an object");
    }
    return true;
}

/* A certificate or key: {"blob":"name"} or a PEM string. PEM goes with len 0 (NUL-terminated), DER with its
 * length, as esp-mqtt wants. The bytes are copied: the client keeps pointing at them after BLOB_FREE. */
static bool get_pem(ctx_t *c, const char *path, const cJSON *item, const char **ptr, size_t *len)
{
    if (cJSON_IsNull(item)) {
        return false;
    }
    if (cJSON_IsString(item)) {
        *ptr = dut_arena_strdup(c->arena, item->valuestring);
        *len = 0;
        return *ptr ? true : fail(c, path, item, "does not fit in memory");
    }
    const cJSON *name = cJSON_IsObject(item) ? cJSON_GetObjectItemCaseSensitive(item, "blob") : NULL;
    if (!cJSON_IsString(name)) {
        return fail(c, path, item, "must be {\"blob\":\"name\"} or a PEM string");
    }
    const dut_blob_t *b = dut_blob_get(name->valuestring);
    if (!b) {
        return fail(c, path, item, "names a blob that does not exist or is incomplete");
    }
    char *copy = dut_arena_memdup(c->arena, b->data, b->size);
    if (!copy) {
        return fail(c, path, item, "does not fit in memory");
    }
    *ptr = copy;
    bool pem = b->size >= 10 && memcmp(b->data, "-----BEGIN", 10) == 0;
    *len = pem ? 0 : b->size;
    return true;
}

static void address(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "broker.address";
    double d;
    EACH(it, o) {
        if (is(it, "uri")) {
            get_str(c, p, it, &cfg->broker.address.uri);
        } else if (is(it, "hostname")) {
            get_str(c, p, it, &cfg->broker.address.hostname);
        } else if (is(it, "path")) {
            get_str(c, p, it, &cfg->broker.address.path);
        } else if (is(it, "port")) {
            if (get_int(c, p, it, 0, 65535, &d)) {
                cfg->broker.address.port = (uint32_t)d;
            }
        } else if (is(it, "transport")) {
            if (cJSON_IsNull(it)) {
                continue;
            }
            static const struct {
                const char *a, *b;
                esp_mqtt_transport_t t;
            } T[] = {
                {"MQTT_TRANSPORT_UNKNOWN", "unknown", MQTT_TRANSPORT_UNKNOWN},
                {"MQTT_TRANSPORT_OVER_TCP", "tcp", MQTT_TRANSPORT_OVER_TCP},
                {"MQTT_TRANSPORT_OVER_SSL", "ssl", MQTT_TRANSPORT_OVER_SSL},
                {"MQTT_TRANSPORT_OVER_WS", "ws", MQTT_TRANSPORT_OVER_WS},
                {"MQTT_TRANSPORT_OVER_WSS", "wss", MQTT_TRANSPORT_OVER_WSS},
            };
            bool found = false;
            for (size_t i = 0; cJSON_IsString(it) && i < sizeof T / sizeof T[0]; i++) {
                if (strcmp(it->valuestring, T[i].a) == 0 || strcmp(it->valuestring, T[i].b) == 0) {
                    cfg->broker.address.transport = T[i].t;
                    found = true;
                }
            }
            if (!found) {
                fail(c, p, it, "must be MQTT_TRANSPORT_OVER_TCP|_SSL|_WS|_WSS (or tcp, ssl, ws, wss)");
            }
        } else {
            ignore(c, p, it);
        }
    }
}

static void verification(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "broker.verification";
    bool b;
    EACH(it, o) {
        if (is(it, "use_global_ca_store")) {
            if (get_bool(c, p, it, &b)) {
                cfg->broker.verification.use_global_ca_store = b;
            }
        } else if (is(it, "skip_cert_common_name_check")) {
            if (get_bool(c, p, it, &b)) {
                cfg->broker.verification.skip_cert_common_name_check = b;
            }
        } else if (is(it, "common_name")) {
            get_str(c, p, it, &cfg->broker.verification.common_name);
        } else if (is(it, "certificate")) {
            get_pem(c, p, it, &cfg->broker.verification.certificate, &cfg->broker.verification.certificate_len);
        } else if (is(it, "crt_bundle_attach")) {
            if (get_bool(c, p, it, &b) && b) {
                if (!dut_crt_bundle_attach_fn) {
                    fail(c, p, it, "needs the certificate bundle (CONFIG_MBEDTLS_CERTIFICATE_BUNDLE), not built in");
                } else {
                    cfg->broker.verification.crt_bundle_attach = dut_crt_bundle_attach_fn;
                }
            }
        } else if (is(it, "alpn_protos")) {
            if (cJSON_IsNull(it)) {
                continue;
            }
            int n = cJSON_GetArraySize(it);
            if (!cJSON_IsArray(it) || n > 8) {
                fail(c, p, it, "must be a list of at most 8 strings");
                continue;
            }
            /* a NULL-terminated array of strings, kept in the arena */
            char *mem = dut_arena_zalloc(c->arena, sizeof(char *) * (size_t)(n + 1));
            if (!mem) {
                fail(c, p, it, "does not fit in memory");
                continue;
            }
            const char **protos = (const char **)(void *)mem;
            int i = 0;
            EACH(s, it) {
                if (!cJSON_IsString(s)) {
                    fail(c, p, it, "must be a list of strings");
                    break;
                }
                protos[i++] = dut_arena_strdup(c->arena, s->valuestring);
            }
            protos[i] = NULL;
            cfg->broker.verification.alpn_protos = protos;
        } else {
            ignore(c, p, it);
        }
    }
}

static void authentication(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "credentials.authentication";
    bool b;
    EACH(it, o) {
        if (is(it, "password")) {
            get_str(c, p, it, &cfg->credentials.authentication.password);
        } else if (is(it, "certificate")) {
            get_pem(c, p, it, &cfg->credentials.authentication.certificate,
                    &cfg->credentials.authentication.certificate_len);
        } else if (is(it, "key")) {
            get_pem(c, p, it, &cfg->credentials.authentication.key, &cfg->credentials.authentication.key_len);
        } else if (is(it, "key_password")) {
            if (get_str(c, p, it, &cfg->credentials.authentication.key_password)) {
                cfg->credentials.authentication.key_password_len =
                    (int)strlen(cfg->credentials.authentication.key_password);
            }
        } else if (is(it, "use_secure_element")) {
            if (get_bool(c, p, it, &b)) {
                cfg->credentials.authentication.use_secure_element = b;
            }
        } else {
            ignore(c, p, it);
        }
    }
}

static void credentials(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "credentials";
    bool b;
    EACH(it, o) {
        if (is(it, "username")) {
            get_str(c, p, it, &cfg->credentials.username);
        } else if (is(it, "client_id")) {
            get_str(c, p, it, &cfg->credentials.client_id);
        } else if (is(it, "set_null_client_id")) {
            if (get_bool(c, p, it, &b)) {
                cfg->credentials.set_null_client_id = b;
            }
        } else if (is(it, "authentication")) {
            if (get_obj(c, p, it)) {
                authentication(c, it, cfg);
            }
        } else {
            ignore(c, p, it);
        }
    }
}

static void last_will(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "session.last_will";
    double d;
    bool b;
    EACH(it, o) {
        if (is(it, "topic")) {
            get_str(c, p, it, &cfg->session.last_will.topic);
        } else if (is(it, "msg")) {
            if (get_str(c, p, it, &cfg->session.last_will.msg)) {
                cfg->session.last_will.msg_len = (int)strlen(cfg->session.last_will.msg);
            }
        } else if (is(it, "msg_b64")) {
            if (cJSON_IsNull(it)) {
                continue;
            }
            if (!cJSON_IsString(it)) {
                fail(c, p, it, "must be a base64 string");
                continue;
            }
            size_t tl = strlen(it->valuestring), n = 0;
            uint8_t *tmp = malloc(tl / 4 * 3 + 1);
            if (!tmp) {
                fail(c, p, it, "does not fit in memory");
                continue;
            }
            if (!dut_b64_decode(it->valuestring, tl, tmp, &n)) {
                fail(c, p, it, "is not valid base64");
            } else {
                cfg->session.last_will.msg = dut_arena_memdup(c->arena, tmp, n);
                cfg->session.last_will.msg_len = (int)n;
            }
            free(tmp);
        } else if (is(it, "qos")) {
            if (get_int(c, p, it, 0, 2, &d)) {
                cfg->session.last_will.qos = (int)d;
            }
        } else if (is(it, "retain")) {
            /* esp-mqtt has an int here; accept 0/1 as well as booleans */
            if (cJSON_IsNumber(it)) {
                if (get_int(c, p, it, 0, 1, &d)) {
                    cfg->session.last_will.retain = (int)d;
                }
            } else if (get_bool(c, p, it, &b)) {
                cfg->session.last_will.retain = b;
            }
        } else {
            ignore(c, p, it);
        }
    }
}

static void session(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "session";
    double d;
    bool b;
    EACH(it, o) {
        if (is(it, "last_will")) {
            if (get_obj(c, p, it)) {
                last_will(c, it, cfg);
            }
        } else if (is(it, "disable_clean_session")) {
            if (get_bool(c, p, it, &b)) {
                cfg->session.disable_clean_session = b;
            }
        } else if (is(it, "keepalive")) {
            if (get_int(c, p, it, 0, 65535, &d)) {
                cfg->session.keepalive = (int)d;
            }
        } else if (is(it, "disable_keepalive")) {
            if (get_bool(c, p, it, &b)) {
                cfg->session.disable_keepalive = b;
            }
        } else if (is(it, "message_retransmit_timeout")) {
            if (get_int(c, p, it, 0, 2147483647, &d)) {
                cfg->session.message_retransmit_timeout = (int)d;
            }
        } else if (is(it, "protocol_ver")) {
            if (cJSON_IsNull(it)) {
                continue;
            }
            const char *v = cJSON_IsString(it) ? it->valuestring : "";
            if (strcmp(v, "3.1") == 0 || strcmp(v, "MQTT_PROTOCOL_V_3_1") == 0) {
                cfg->session.protocol_ver = MQTT_PROTOCOL_V_3_1;
            } else if (strcmp(v, "3.1.1") == 0 || strcmp(v, "MQTT_PROTOCOL_V_3_1_1") == 0) {
                cfg->session.protocol_ver = MQTT_PROTOCOL_V_3_1_1;
            } else if (strcmp(v, "5") == 0 || strcmp(v, "MQTT_PROTOCOL_V_5") == 0) {
#ifdef CONFIG_MQTT_PROTOCOL_5
                cfg->session.protocol_ver = MQTT_PROTOCOL_V_5;
#else
                fail(c, p, it, "\"5\" needs CONFIG_MQTT_PROTOCOL_5, which this firmware was built without");
#endif
            } else if (strcmp(v, "MQTT_PROTOCOL_UNDEFINED") == 0) {
                cfg->session.protocol_ver = MQTT_PROTOCOL_UNDEFINED;
            } else {
                fail(c, p, it, "must be \"3.1\", \"3.1.1\" or \"5\"");
            }
        } else {
            ignore(c, p, it);
        }
    }
}

static void keep_alive(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "network.tcp_keep_alive_cfg";
    double d;
    bool b;
    EACH(it, o) {
        if (is(it, "keep_alive_enable")) {
            if (get_bool(c, p, it, &b)) {
                cfg->network.tcp_keep_alive_cfg.keep_alive_enable = b;
            }
        } else if (is(it, "keep_alive_idle")) {
            if (get_int(c, p, it, 0, 86400, &d)) {
                cfg->network.tcp_keep_alive_cfg.keep_alive_idle = (int)d;
            }
        } else if (is(it, "keep_alive_interval")) {
            if (get_int(c, p, it, 0, 86400, &d)) {
                cfg->network.tcp_keep_alive_cfg.keep_alive_interval = (int)d;
            }
        } else if (is(it, "keep_alive_count")) {
            if (get_int(c, p, it, 0, 1000, &d)) {
                cfg->network.tcp_keep_alive_cfg.keep_alive_count = (int)d;
            }
        } else {
            ignore(c, p, it);
        }
    }
}

static void network(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "network";
    double d;
    bool b;
    EACH(it, o) {
        if (is(it, "reconnect_timeout_ms")) {
            if (get_int(c, p, it, 0, 2147483647, &d)) {
                cfg->network.reconnect_timeout_ms = (int)d;
            }
        } else if (is(it, "timeout_ms")) {
            if (get_int(c, p, it, 0, 2147483647, &d)) {
                cfg->network.timeout_ms = (int)d;
            }
        } else if (is(it, "refresh_connection_after_ms")) {
            if (get_int(c, p, it, 0, 2147483647, &d)) {
                cfg->network.refresh_connection_after_ms = (int)d;
            }
        } else if (is(it, "disable_auto_reconnect")) {
            if (get_bool(c, p, it, &b)) {
                cfg->network.disable_auto_reconnect = b;
            }
        } else if (is(it, "tcp_keep_alive_cfg")) {
            if (get_obj(c, p, it)) {
                keep_alive(c, it, cfg);
            }
        } else {
            ignore(c, p, it);
        }
    }
}

static void task(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "task";
    double d;
    EACH(it, o) {
        if (is(it, "priority")) {
            if (get_int(c, p, it, 0, 24, &d)) {
                cfg->task.priority = (int)d;
            }
        } else if (is(it, "stack_size")) {
            if (get_int(c, p, it, 0, 1048576, &d)) {
                cfg->task.stack_size = (int)d;
            }
        } else {
            ignore(c, p, it);
        }
    }
}

static void buffer(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "buffer";
    double d;
    EACH(it, o) {
        if (is(it, "size")) {
            if (get_int(c, p, it, 0, 1048576, &d)) {
                cfg->buffer.size = (int)d;
            }
        } else if (is(it, "out_size")) {
            if (get_int(c, p, it, 0, 1048576, &d)) {
                cfg->buffer.out_size = (int)d;
            }
        } else {
            ignore(c, p, it);
        }
    }
}

static void outbox(ctx_t *c, const cJSON *o, esp_mqtt_client_config_t *cfg)
{
    const char *p = "outbox";
    double d;
    EACH(it, o) {
        if (is(it, "limit")) {
            if (get_int(c, p, it, 0, 9007199254740991.0, &d)) {
                cfg->outbox.limit = (uint64_t)d;
            }
        } else {
            ignore(c, p, it);
        }
    }
}

bool dut_config_from_json(const cJSON *json, esp_mqtt_client_config_t *cfg, dut_arena_t *arena, cJSON *ignored,
                          char *why, size_t why_len)
{
    ctx_t c = {.arena = arena, .ignored = ignored, .why = why, .why_len = why_len, .ok = true};
    memset(cfg, 0, sizeof *cfg);
    why[0] = '\0';
    if (!json || cJSON_IsNull(json)) {
        return true;
    }
    if (!cJSON_IsObject(json)) {
        snprintf(why, why_len, "config must be an object");
        return false;
    }
    EACH(it, json) {
        if (is(it, "broker")) {
            if (!get_obj(&c, "", it)) {
                continue;
            }
            EACH(b, it) {
                if (is(b, "address")) {
                    if (get_obj(&c, "broker", b)) {
                        address(&c, b, cfg);
                    }
                } else if (is(b, "verification")) {
                    if (get_obj(&c, "broker", b)) {
                        verification(&c, b, cfg);
                    }
                } else {
                    ignore(&c, "broker", b);
                }
            }
        } else if (is(it, "credentials")) {
            if (get_obj(&c, "", it)) {
                credentials(&c, it, cfg);
            }
        } else if (is(it, "session")) {
            if (get_obj(&c, "", it)) {
                session(&c, it, cfg);
            }
        } else if (is(it, "network")) {
            if (get_obj(&c, "", it)) {
                network(&c, it, cfg);
            }
        } else if (is(it, "task")) {
            if (get_obj(&c, "", it)) {
                task(&c, it, cfg);
            }
        } else if (is(it, "buffer")) {
            if (get_obj(&c, "", it)) {
                buffer(&c, it, cfg);
            }
        } else if (is(it, "outbox")) {
            if (get_obj(&c, "", it)) {
                outbox(&c, it, cfg);
            }
        } else {
            char full[96];
            snprintf(full, sizeof full, "%s", it->string ? it->string : "?");
            if (!dut_utf8_valid((const uint8_t *)full, strlen(full))) {
                snprintf(full, sizeof full, "<key that is not UTF-8>");
            }
            if (ignored) {
                cJSON_AddItemToArray(ignored, cJSON_CreateString(full));
            }
        }
    }
    return c.ok;
}
