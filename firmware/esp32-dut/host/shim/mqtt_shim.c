/*
 * esp-mqtt's client API (mqtt_client.h) over libmosquitto, for the host build of the device firmware.
 *
 * Shape: like esp-mqtt, one task per started client runs the connection state machine (INIT ->
 * CONNECTED -> WAIT_RECONNECT, BEFORE_CONNECT before every attempt, ERROR then DISCONNECTED when an attempt or a
 * connection fails, reconnect after reconnect_timeout_ms) and delivers every event from that task, in order.
 * The task drives libmosquitto with mosquitto_loop() itself instead of mosquitto_loop_start(): libmosquitto's
 * own thread reconnects on its own schedule, which would hide exactly the behaviour (reconnect timing,
 * disable_auto_reconnect, RECONNECT) the harness tests. libmosquitto runs in threaded mode
 * (mosquitto_threaded_set), so publish/subscribe from the console task go straight into its queues.
 *
 * Errors are reported with esp-tls names (esp_err.h here): see firmware/README.md for the mapping and for
 * what libmosquitto/OpenSSL cannot tell us.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "mqtt_client.h"
#include "shim_host.h"

ESP_EVENT_DEFINE_BASE(MQTT_EVENTS);

#define TAG "mqtt_client"
#define SLICE_MS 50 /* longest the task blocks before looking at stop/disconnect requests */
#define MAX_SUB_TOPICS 16

/* esp-mqtt's defaults (mqtt_config.h) */
#define DEF_KEEPALIVE 120
#define DEF_RECONNECT_MS 10000
#define DEF_TIMEOUT_MS 10000
#define DEF_RETRANSMIT_MS 1000
#define DEF_BUFFER 1024

/* mbedTLS error numbers the shim reports as esp_tls_stack_err (positive, as the protocol sends them) */
#define MBEDTLS_X509_CERT_VERIFY_FAILED 0x2700
#define MBEDTLS_X509_INVALID_FORMAT 0x2180
#define MBEDTLS_PK_KEY_INVALID_FORMAT 0x3D00
#define MBEDTLS_PK_PASSWORD_MISMATCH 0x3B80
#define MBEDTLS_SSL_FATAL_ALERT_MESSAGE 0x7780
#define MBEDTLS_SSL_CONN_EOF 0x7280
#define MBEDTLS_SSL_HANDSHAKE_FAILURE 0x6E00
#define MBEDTLS_NET_CONN_RESET 0x0050

enum { ST_INIT = 0, ST_DISCONNECTED, ST_CONNECTED, ST_WAIT_RECONNECT };
enum { OB_PUBLISH, OB_SUBSCRIBE, OB_UNSUBSCRIBE };

typedef struct ob_item {
    int mid, type, qos;
    size_t size;
    struct ob_item *next;
} ob_item_t;

/* esp-mqtt sends one SUBSCRIBE with a QoS per topic; libmosquitto's multiple subscribe has one QoS for all.
 * Mixed QoS go out as one SUBSCRIBE per topic and come back as one SUBSCRIBED with every code, in order. */
typedef struct sub_group {
    int n, got;
    int mids[MAX_SUB_TOPICS];
    int counts[MAX_SUB_TOPICS];
    bool done[MAX_SUB_TOPICS];
    uint8_t codes[MAX_SUB_TOPICS][MAX_SUB_TOPICS];
    struct sub_group *next;
} sub_group_t;

typedef struct qos0 {
    char *topic, *data;
    int len, retain;
    struct qos0 *next;
} qos0_t;

typedef struct handler {
    esp_mqtt_event_id_t id;
    esp_event_handler_t fn;
    void *arg;
    struct handler *next;
} handler_t;

typedef struct {
    char *scheme, *host, *path, *username, *password, *client_id, *common_name, *key_password;
    char **alpn;
    uint32_t port;
    bool set_null_client_id, use_global_ca_store, skip_cn, clean_session, disable_keepalive, auto_reconnect;
    const char *ca, *cert, *key; /* not copied, as in esp-mqtt: the application keeps them alive */
    size_t ca_len, cert_len, key_len;
    char *will_topic, *will_msg;
    int will_len, will_qos, will_retain;
    int keepalive, protocol_ver, retransmit_ms, reconnect_ms, timeout_ms, refresh_ms, buffer_size;
    uint64_t outbox_limit;
} cfg_t;

struct mqtt5_user_property_list_t {
    struct up_item *first;
};
struct up_item {
    char *key, *value;
    struct up_item *next;
};

struct esp_mqtt_client {
    pthread_mutex_t lock; /* config, state, requests, outbox, subscription groups, handlers */
    pthread_cond_t cond;
    cfg_t cfg;
    bool mosq_dirty; /* client id / clean session changed: libmosquitto only takes them at creation */
    struct mosquitto *mosq;
    SSL_CTX *mosq_ctx; /* the SSL_CTX libmosquitto holds a reference to */
    pthread_t task;
    bool task_alive, started;
    volatile bool run;
    int state;
    bool disconnect_req, reconnect_req, stop_disconnect;
    int64_t reconnect_tick, refresh_tick;
    int wait_timeout_ms;
    handler_t *handlers;
    ob_item_t *outbox;
    size_t outbox_bytes;
    sub_group_t *subs;
    qos0_t *qos0;
    /* below: the task's own (mosquitto callbacks run in the task, inside mosquitto_loop) */
    cfg_t cur;      /* snapshot of cfg for the connection being made or in use */
    int proto_in_use;
    esp_mqtt_error_codes_t err;
    struct {
        bool connack, lost;
        int rc, flags, lost_rc, lost_errno;
        int reason;
    } conn;
    struct {
        bool verify_failed, alert, handshake_done;
        uint32_t flags;
        char alert_desc[64];
        char reason[160];
    } tls;
};

static pthread_once_t s_once = PTHREAD_ONCE_INIT;
static int s_ctx_index = -1;

static void lib_init(void)
{
    mosquitto_lib_init();
    s_ctx_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, NULL);
}

static int64_t now_ms(void)
{
    return shim_host_now_ms();
}

static char *dupstr(const char *s)
{
    return s ? strdup(s) : NULL;
}

static void cfg_free(cfg_t *k)
{
    free(k->scheme);
    free(k->host);
    free(k->path);
    free(k->username);
    free(k->password);
    free(k->client_id);
    free(k->common_name);
    free(k->key_password);
    free(k->will_topic);
    free(k->will_msg);
    if (k->alpn) {
        for (char **p = k->alpn; *p; p++) {
            free(*p);
        }
        free(k->alpn);
    }
    memset(k, 0, sizeof *k);
}

static char **alpn_dup(char *const *list)
{
    if (!list) {
        return NULL;
    }
    size_t n = 0;
    while (list[n]) {
        n++;
    }
    char **out = calloc(n + 1, sizeof *out);
    for (size_t i = 0; out && i < n; i++) {
        out[i] = strdup(list[i]);
    }
    return out;
}

static void cfg_copy(cfg_t *dst, const cfg_t *src)
{
    *dst = *src;
    dst->scheme = dupstr(src->scheme);
    dst->host = dupstr(src->host);
    dst->path = dupstr(src->path);
    dst->username = dupstr(src->username);
    dst->password = dupstr(src->password);
    dst->client_id = dupstr(src->client_id);
    dst->common_name = dupstr(src->common_name);
    dst->key_password = dupstr(src->key_password);
    dst->will_topic = dupstr(src->will_topic);
    dst->alpn = alpn_dup(src->alpn);
    dst->will_msg = NULL;
    if (src->will_msg) {
        dst->will_msg = malloc((size_t)src->will_len + 1);
        if (dst->will_msg) {
            memcpy(dst->will_msg, src->will_msg, (size_t)src->will_len);
            dst->will_msg[src->will_len] = '\0';
        }
    }
}

static void set_str(char **dst, const char *src)
{
    if (src) {
        free(*dst);
        *dst = strdup(src);
    }
}

/* ------------------------------------------------------------------------------------------------ URI */

static bool parse_uri(cfg_t *k, const char *uri)
{
    const char *sep = strstr(uri, "://");
    if (!sep || sep == uri) {
        return false;
    }
    const char *auth = sep + 3;
    const char *end = auth + strcspn(auth, "/?#");
    const char *at = NULL;
    for (const char *p = auth; p < end; p++) {
        if (*p == '@') {
            at = p;
        }
    }
    const char *hs = at ? at + 1 : auth;
    const char *he, *ps = NULL;
    if (*hs == '[') {
        const char *rb = memchr(hs, ']', (size_t)(end - hs));
        if (!rb) {
            return false;
        }
        he = rb + 1;
        if (he < end && *he == ':') {
            ps = he + 1;
        } else if (he != end) {
            return false;
        }
    } else {
        const char *colon = memchr(hs, ':', (size_t)(end - hs));
        he = colon ? colon : end;
        ps = colon ? colon + 1 : NULL;
    }
    if (he == hs) {
        return false;
    }
    long port = 0;
    if (ps) {
        if (ps == end) {
            return false;
        }
        for (const char *p = ps; p < end; p++) {
            if (*p < '0' || *p > '9' || port > 65535) {
                return false;
            }
            port = port * 10 + (*p - '0');
        }
        if (port > 65535) {
            return false;
        }
    }
    free(k->scheme);
    k->scheme = strndup(uri, (size_t)(sep - uri));
    for (char *p = k->scheme; p && *p; p++) {
        *p = (char)((*p >= 'A' && *p <= 'Z') ? *p + 32 : *p);
    }
    free(k->host);
    if (*hs == '[') {
        k->host = strndup(hs + 1, (size_t)(he - hs - 2));
    } else {
        k->host = strndup(hs, (size_t)(he - hs));
    }
    k->port = (uint32_t)port;
    if (at) {
        const char *colon = memchr(auth, ':', (size_t)(at - auth));
        free(k->username);
        k->username = strndup(auth, (size_t)((colon ? colon : at) - auth));
        if (colon) {
            free(k->password);
            k->password = strndup(colon + 1, (size_t)(at - colon - 1));
        }
    }
    if (*end == '/') {
        free(k->path);
        k->path = strndup(end, strcspn(end, "?#"));
    }
    return true;
}

/* ---------------------------------------------------------------------------------------------- config */

static esp_err_t apply_config(esp_mqtt_client_handle_t c, const esp_mqtt_client_config_t *config)
{
    cfg_t *k = &c->cfg;
    set_str(&k->host, config->broker.address.hostname);
    set_str(&k->path, config->broker.address.path);
    static const char *const SCHEMES[] = {NULL, "mqtt", "mqtts", "ws", "wss"};
    if (config->broker.address.transport > MQTT_TRANSPORT_UNKNOWN &&
            config->broker.address.transport <= MQTT_TRANSPORT_OVER_WSS) {
        set_str(&k->scheme, SCHEMES[config->broker.address.transport]);
    }
    if (config->broker.address.port) {
        k->port = config->broker.address.port;
    }
    if (config->broker.address.uri && !parse_uri(k, config->broker.address.uri)) {
        shim_host_log('E', TAG, "Error parse uri = %s", config->broker.address.uri);
        return ESP_FAIL;
    }
    set_str(&k->username, config->credentials.username);
    set_str(&k->password, config->credentials.authentication.password);
    if (config->credentials.client_id &&
            (!k->client_id || strcmp(k->client_id, config->credentials.client_id) != 0)) {
        set_str(&k->client_id, config->credentials.client_id);
        c->mosq_dirty = true;
    }
    if (config->credentials.set_null_client_id != k->set_null_client_id) {
        k->set_null_client_id = config->credentials.set_null_client_id;
        c->mosq_dirty = true;
    }
    k->ca = config->broker.verification.certificate;
    k->ca_len = config->broker.verification.certificate_len;
    k->use_global_ca_store = config->broker.verification.use_global_ca_store;
    k->skip_cn = config->broker.verification.skip_cert_common_name_check;
    set_str(&k->common_name, config->broker.verification.common_name);
    if (config->broker.verification.alpn_protos) {
        if (k->alpn) {
            for (char **p = k->alpn; *p; p++) {
                free(*p);
            }
            free(k->alpn);
        }
        k->alpn = alpn_dup((char *const *)config->broker.verification.alpn_protos);
    }
    k->cert = config->credentials.authentication.certificate;
    k->cert_len = config->credentials.authentication.certificate_len;
    k->key = config->credentials.authentication.key;
    k->key_len = config->credentials.authentication.key_len;
    if (config->credentials.authentication.key_password) {
        free(k->key_password);
        int n = config->credentials.authentication.key_password_len;
        if (n <= 0) {
            n = (int)strlen(config->credentials.authentication.key_password);
        }
        k->key_password = strndup(config->credentials.authentication.key_password, (size_t)n);
    }
    if (config->session.last_will.topic) {
        set_str(&k->will_topic, config->session.last_will.topic);
        free(k->will_msg);
        k->will_msg = NULL;
        k->will_len = 0;
        if (config->session.last_will.msg) {
            int n = config->session.last_will.msg_len;
            if (n <= 0) {
                n = (int)strlen(config->session.last_will.msg);
            }
            k->will_msg = malloc((size_t)n + 1);
            if (k->will_msg) {
                memcpy(k->will_msg, config->session.last_will.msg, (size_t)n);
                k->will_msg[n] = '\0';
                k->will_len = n;
            }
        }
        k->will_qos = config->session.last_will.qos;
        k->will_retain = config->session.last_will.retain;
    }
    bool clean = !config->session.disable_clean_session;
    if (clean != k->clean_session) {
        k->clean_session = clean;
        c->mosq_dirty = true;
    }
    if (config->session.keepalive) {
        k->keepalive = config->session.keepalive;
    }
    k->disable_keepalive = config->session.disable_keepalive;
    if (config->session.protocol_ver != MQTT_PROTOCOL_UNDEFINED) {
        k->protocol_ver = config->session.protocol_ver;
    }
    if (config->session.message_retransmit_timeout > 0) {
        k->retransmit_ms = config->session.message_retransmit_timeout;
    }
    if (config->network.reconnect_timeout_ms > 0) {
        k->reconnect_ms = config->network.reconnect_timeout_ms;
    }
    if (config->network.timeout_ms > 0) {
        k->timeout_ms = config->network.timeout_ms;
    }
    k->refresh_ms = config->network.refresh_connection_after_ms;
    k->auto_reconnect = !config->network.disable_auto_reconnect;
    if (config->buffer.size > 0) {
        k->buffer_size = config->buffer.size;
    }
    k->outbox_limit = config->outbox.limit;
    if (config->broker.verification.crt_bundle_attach || config->broker.verification.psk_hint_key ||
            config->credentials.authentication.use_secure_element || config->credentials.authentication.ds_data ||
            config->network.transport || config->network.if_name) {
        shim_host_log('W', TAG, "host shim: certificate bundle, PSK, secure element, DS peripheral, custom "
                      "transport and if_name are not available and are ignored");
    }
    return ESP_OK;
}

/* ------------------------------------------------------------------------------------------- dispatch */

static void dispatch(esp_mqtt_client_handle_t c, esp_mqtt_event_t *ev)
{
    handler_t copy[8];
    int n = 0;
    ev->client = c;
    ev->error_handle = &c->err;
    ev->protocol_ver = (esp_mqtt_protocol_ver_t)c->proto_in_use;
    esp_mqtt5_event_property_t empty;
    if (!ev->property) {
        memset(&empty, 0, sizeof empty);
        ev->property = &empty;
    }
    pthread_mutex_lock(&c->lock);
    for (handler_t *h = c->handlers; h && n < 8; h = h->next) {
        if (h->id == MQTT_EVENT_ANY || h->id == ev->event_id) {
            copy[n++] = *h;
        }
    }
    pthread_mutex_unlock(&c->lock);
    for (int i = 0; i < n; i++) {
        copy[i].fn(copy[i].arg, MQTT_EVENTS, ev->event_id, ev); /* never under c->lock: handlers call the API */
    }
}

static void simple_event(esp_mqtt_client_handle_t c, esp_mqtt_event_id_t id, int msg_id)
{
    esp_mqtt_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.event_id = id;
    ev.msg_id = msg_id;
    dispatch(c, &ev);
}

static void report_transport(esp_mqtt_client_handle_t c, esp_err_t tls, int stack, uint32_t flags, int sock_errno)
{
    memset(&c->err, 0, sizeof c->err);
    c->err.error_type = MQTT_ERROR_TYPE_TCP_TRANSPORT;
    c->err.esp_tls_last_esp_err = tls;
    c->err.esp_tls_stack_err = stack;
    c->err.esp_tls_cert_verify_flags = (int)flags;
    c->err.esp_transport_sock_errno = sock_errno;
    simple_event(c, MQTT_EVENT_ERROR, 0);
}

static void report_refused(esp_mqtt_client_handle_t c, int code)
{
    memset(&c->err, 0, sizeof c->err);
    c->err.error_type = MQTT_ERROR_TYPE_CONNECTION_REFUSED;
    c->err.connect_return_code = (esp_mqtt_connect_return_code_t)code;
    simple_event(c, MQTT_EVENT_ERROR, 0);
}

/* ------------------------------------------------------------------------------------------- outbox */

static void ob_add(esp_mqtt_client_handle_t c, int mid, int type, int qos, size_t size)
{
    ob_item_t *it = calloc(1, sizeof *it);
    if (!it) {
        return;
    }
    it->mid = mid;
    it->type = type;
    it->qos = qos;
    it->size = size;
    it->next = c->outbox;
    c->outbox = it;
    c->outbox_bytes += size;
}

/* Removes the item; true if it was there. Call with c->lock held. */
static bool ob_take(esp_mqtt_client_handle_t c, int mid, int type, int *qos)
{
    for (ob_item_t **pp = &c->outbox; *pp; pp = &(*pp)->next) {
        ob_item_t *it = *pp;
        if (it->mid == mid && it->type == type) {
            *pp = it->next;
            c->outbox_bytes -= it->size;
            if (qos) {
                *qos = it->qos;
            }
            free(it);
            return true;
        }
    }
    return false;
}

static void ob_clear(esp_mqtt_client_handle_t c)
{
    while (c->outbox) {
        ob_item_t *it = c->outbox;
        c->outbox = it->next;
        free(it);
    }
    c->outbox_bytes = 0;
    while (c->subs) {
        sub_group_t *g = c->subs;
        c->subs = g->next;
        free(g);
    }
    while (c->qos0) {
        qos0_t *q = c->qos0;
        c->qos0 = q->next;
        free(q->topic);
        free(q->data);
        free(q);
    }
}

static size_t varint_len(size_t n)
{
    return n < 128 ? 1 : n < 16384 ? 2 : n < 2097152 ? 3 : 4;
}

/* Size of the PUBLISH as encoded: what esp-mqtt's outbox counts */
static size_t publish_size(const char *topic, int len, int qos)
{
    size_t rem = 2 + strlen(topic) + (qos ? 2 : 0) + (size_t)len;
    return 1 + varint_len(rem) + rem;
}

/* ------------------------------------------------------------------------------------- mosquitto setup */

static void on_connect(struct mosquitto *m, void *obj, int rc, int flags, const mosquitto_property *props);
static void on_disconnect(struct mosquitto *m, void *obj, int rc, const mosquitto_property *props);
static void on_publish(struct mosquitto *m, void *obj, int mid, int reason, const mosquitto_property *props);
static void on_subscribe(struct mosquitto *m, void *obj, int mid, int count, const int *granted,
                         const mosquitto_property *props);
static void on_unsubscribe(struct mosquitto *m, void *obj, int mid, const mosquitto_property *props);
static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props);
static void on_log(struct mosquitto *m, void *obj, int level, const char *str);

static void default_client_id(char out[16])
{
    uint8_t mac[6];
    shim_host_mac(mac);
    snprintf(out, 16, "ESP32_%02x%02X%02X", mac[3], mac[4], mac[5]);
}

/* Call with c->lock held and no connection in progress. */
static bool mosq_create(esp_mqtt_client_handle_t c)
{
    char def[16];
    const char *id;
    bool clean = c->cfg.clean_session;
    if (c->cfg.set_null_client_id) {
        id = NULL; /* libmosquitto then sends a zero-length client id */
        if (!clean) {
            shim_host_log('W', TAG, "host shim: a null client id with a persistent session is not possible with "
                          "libmosquitto; using a clean session");
            clean = true;
        }
    } else if (c->cfg.client_id) {
        id = c->cfg.client_id;
    } else {
        default_client_id(def);
        id = def;
    }
    if (c->mosq) {
        if (c->mosq_ctx) {
            SSL_CTX_free(c->mosq_ctx); /* drop libmosquitto's reference: it would leak it on reinitialise */
            c->mosq_ctx = NULL;
        }
        mosquitto_destroy(c->mosq);
        c->mosq = NULL;
    }
    c->mosq = mosquitto_new(id, clean, c);
    if (!c->mosq) {
        shim_host_log('E', TAG, "mosquitto_new failed: %s", strerror(errno));
        return false;
    }
    mosquitto_threaded_set(c->mosq, true);
    mosquitto_int_option(c->mosq, MOSQ_OPT_SEND_MAXIMUM, 65535); /* esp-mqtt has no in-flight cap in 3.1.1 */
    mosquitto_connect_v5_callback_set(c->mosq, on_connect);
    mosquitto_disconnect_v5_callback_set(c->mosq, on_disconnect);
    mosquitto_publish_v5_callback_set(c->mosq, on_publish);
    mosquitto_subscribe_v5_callback_set(c->mosq, on_subscribe);
    mosquitto_unsubscribe_v5_callback_set(c->mosq, on_unsubscribe);
    mosquitto_message_v5_callback_set(c->mosq, on_message);
    mosquitto_log_callback_set(c->mosq, on_log);
    c->mosq_dirty = false;
    return true;
}

static void mosq_set_ctx(esp_mqtt_client_handle_t c, SSL_CTX *ctx)
{
    if (c->mosq_ctx) {
        SSL_CTX_free(c->mosq_ctx);
        c->mosq_ctx = NULL;
    }
    mosquitto_void_option(c->mosq, MOSQ_OPT_SSL_CTX, ctx); /* takes its own reference */
    if (ctx) {
        mosquitto_int_option(c->mosq, MOSQ_OPT_SSL_CTX_WITH_DEFAULTS, 0);
        c->mosq_ctx = ctx;
    }
}

/* ------------------------------------------------------------------------------------------------ TLS */

static esp_mqtt_client_handle_t client_of_ssl(const SSL *ssl)
{
    return (esp_mqtt_client_handle_t)SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), s_ctx_index);
}

/* OpenSSL verification result -> the MBEDTLS_X509_BADCERT_* bit mbedTLS sets for the same fault */
static uint32_t badcert_flag(int err)
{
    switch (err) {
    case X509_V_OK:
        return 0;
    case X509_V_ERR_CERT_HAS_EXPIRED:
        return 0x01;
    case X509_V_ERR_CERT_REVOKED:
        return 0x02;
    case X509_V_ERR_HOSTNAME_MISMATCH:
    case X509_V_ERR_IP_ADDRESS_MISMATCH:
    case X509_V_ERR_EMAIL_MISMATCH:
        return 0x04;
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT:
    case X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY:
    case X509_V_ERR_UNABLE_TO_VERIFY_LEAF_SIGNATURE:
    case X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT:
    case X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN:
    case X509_V_ERR_CERT_UNTRUSTED:
    case X509_V_ERR_CERT_SIGNATURE_FAILURE:
    case X509_V_ERR_INVALID_CA:
    case X509_V_ERR_PATH_LENGTH_EXCEEDED:
    case X509_V_ERR_CERT_CHAIN_TOO_LONG:
    case X509_V_ERR_CERT_REJECTED:
        return 0x08;
    case X509_V_ERR_CERT_NOT_YET_VALID:
        return 0x200;
    case X509_V_ERR_KEYUSAGE_NO_CERTSIGN:
    case X509_V_ERR_KEYUSAGE_NO_DIGITAL_SIGNATURE:
        return 0x800;
    case X509_V_ERR_INVALID_PURPOSE:
        return 0x1000;
    case X509_V_ERR_CA_MD_TOO_WEAK:
        return 0x4000;
    case X509_V_ERR_EE_KEY_TOO_SMALL:
    case X509_V_ERR_CA_KEY_TOO_SMALL:
        return 0x10000;
    default:
        return 0x100; /* MBEDTLS_X509_BADCERT_OTHER */
    }
}

static int collect_cb(int ok, X509_STORE_CTX *x)
{
    uint32_t *flags = X509_STORE_CTX_get_app_data(x);
    if (!ok && flags) {
        *flags |= badcert_flag(X509_STORE_CTX_get_error(x));
    }
    return 1; /* keep going: mbedTLS reports every fault of the chain, not the first */
}

/* All faults of the peer's chain at once, by verifying it again with a callback that never stops. */
static uint32_t collect_flags(X509_STORE_CTX *x)
{
    uint32_t flags = 0;
    X509_STORE_CTX *n = X509_STORE_CTX_new();
    if (!n) {
        return badcert_flag(X509_STORE_CTX_get_error(x));
    }
    if (X509_STORE_CTX_init(n, X509_STORE_CTX_get0_store(x), X509_STORE_CTX_get0_cert(x),
                            X509_STORE_CTX_get0_untrusted(x)) == 1) {
        X509_STORE_CTX_set_default(n, "ssl_server");
        X509_VERIFY_PARAM_set1(X509_STORE_CTX_get0_param(n), X509_STORE_CTX_get0_param(x));
        X509_STORE_CTX_set_verify_cb(n, collect_cb);
        X509_STORE_CTX_set_app_data(n, &flags);
        X509_verify_cert(n);
    }
    X509_STORE_CTX_free(n);
    if (!flags) {
        flags = badcert_flag(X509_STORE_CTX_get_error(x));
    }
    return flags;
}

static int verify_cb(int ok, X509_STORE_CTX *x)
{
    SSL *ssl = X509_STORE_CTX_get_ex_data(x, SSL_get_ex_data_X509_STORE_CTX_idx());
    esp_mqtt_client_handle_t c = ssl ? client_of_ssl(ssl) : NULL;
    if (!ok && c) {
        if (!c->tls.verify_failed) {
            c->tls.flags = collect_flags(x);
            snprintf(c->tls.reason, sizeof c->tls.reason, "certificate verify failed at depth %d: %s",
                     X509_STORE_CTX_get_error_depth(x),
                     X509_verify_cert_error_string(X509_STORE_CTX_get_error(x)));
        }
        c->tls.verify_failed = true;
    }
    return ok; /* abort the handshake at the first fault, as mbedTLS with VERIFY_REQUIRED does */
}

static void info_cb(const SSL *ssl, int where, int ret)
{
    esp_mqtt_client_handle_t c = client_of_ssl(ssl);
    if (!c) {
        return;
    }
    if ((where & SSL_CB_ALERT) && (where & SSL_CB_READ)) {
        c->tls.alert = true;
        snprintf(c->tls.alert_desc, sizeof c->tls.alert_desc, "%s", SSL_alert_desc_string_long(ret));
    }
    if (where & SSL_CB_HANDSHAKE_DONE) {
        c->tls.handshake_done = true;
    }
}

static BIO *mem_bio(const char *data, size_t len)
{
    return BIO_new_mem_buf(data, len ? (int)len : (int)strlen(data));
}

/* esp-mqtt passes PEM with len 0 (NUL-terminated) and DER with its length */
static bool load_certs(const char *data, size_t len, STACK_OF(X509) *out)
{
    BIO *bio = mem_bio(data, len);
    if (!bio) {
        return false;
    }
    if (len == 0) {
        X509 *x;
        while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
            sk_X509_push(out, x);
        }
        ERR_clear_error(); /* the loop ends with a "no start line" error */
    } else {
        X509 *x = d2i_X509_bio(bio, NULL);
        if (x) {
            sk_X509_push(out, x);
        }
    }
    BIO_free(bio);
    return sk_X509_num(out) > 0;
}

static int pw_cb(char *buf, int size, int rwflag, void *u)
{
    (void)rwflag;
    const char *pw = u;
    if (!pw) {
        return 0;
    }
    int n = (int)strlen(pw);
    if (n > size) {
        n = size;
    }
    memcpy(buf, pw, (size_t)n);
    return n;
}

static bool is_ip_literal(const char *h)
{
    unsigned char buf[sizeof(struct in6_addr)];
    return inet_pton(AF_INET, h, buf) == 1 || inet_pton(AF_INET6, h, buf) == 1;
}

/* An SSL_CTX that behaves like esp-tls over mbedTLS with the given settings; on a setup fault returns NULL
 * with the esp-tls error that esp-tls would give (reported after the TCP connect, where esp-tls finds it). */
static SSL_CTX *build_ctx(esp_mqtt_client_handle_t c, esp_err_t *tls_err, int *stack)
{
    const cfg_t *k = &c->cur;
    *tls_err = ESP_OK;
    *stack = 0;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) {
        *tls_err = ESP_ERR_MBEDTLS_SSL_SETUP_FAILED;
        return NULL;
    }
    SSL_CTX_set_ex_data(ctx, s_ctx_index, c);
    /* ESP-IDF's mbedTLS has TLS 1.3 off by default: with 1.2 a rejected client certificate fails the
     * handshake itself, as on the device, instead of the first read after it */
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_max_proto_version(ctx, TLS1_2_VERSION);
    X509_STORE *store = SSL_CTX_get_cert_store(ctx);
    if (k->ca) {
        STACK_OF(X509) *cas = sk_X509_new_null();
        if (!cas || !load_certs(k->ca, k->ca_len, cas)) {
            *tls_err = ESP_ERR_MBEDTLS_X509_CRT_PARSE_FAILED;
            *stack = MBEDTLS_X509_INVALID_FORMAT;
            sk_X509_pop_free(cas, X509_free);
            SSL_CTX_free(ctx);
            return NULL;
        }
        for (int i = 0; i < sk_X509_num(cas); i++) {
            X509_STORE_add_cert(store, sk_X509_value(cas, i));
        }
        sk_X509_pop_free(cas, X509_free);
    } else if (k->use_global_ca_store) {
        /* the host has no esp-tls global store: the system's CA certificates stand in for it */
        SSL_CTX_set_default_verify_paths(ctx);
    } else {
        shim_host_log('E', "esp-tls-mbedtls", "No server verification option set in esp_tls_cfg_t structure. "
                      "Check esp_tls API reference");
        *tls_err = ESP_ERR_MBEDTLS_SSL_SETUP_FAILED;
        SSL_CTX_free(ctx);
        return NULL;
    }
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, verify_cb);
    SSL_CTX_set_info_callback(ctx, info_cb);
    X509_VERIFY_PARAM *param = SSL_CTX_get0_param(ctx);
    X509_VERIFY_PARAM_set_time(param, (time_t)shim_host_wall_time()); /* the device's clock, SET_TIME and all */
    if (!k->skip_cn) {
        const char *name = k->common_name ? k->common_name : k->host;
        if (is_ip_literal(name)) {
            X509_VERIFY_PARAM_set1_ip_asc(param, name);
        } else {
            X509_VERIFY_PARAM_set1_host(param, name, 0);
        }
    }
    if (k->cert || k->key) {
        if (!k->cert || !k->key) {
            shim_host_log('E', "esp-tls", "You have to provide both clientcert_buf and clientkey_buf for mutual "
                          "authentication");
            *tls_err = ESP_ERR_MBEDTLS_SSL_SETUP_FAILED;
            SSL_CTX_free(ctx);
            return NULL;
        }
        STACK_OF(X509) *chain = sk_X509_new_null();
        if (!chain || !load_certs(k->cert, k->cert_len, chain)) {
            *tls_err = ESP_ERR_MBEDTLS_X509_CRT_PARSE_FAILED;
            *stack = MBEDTLS_X509_INVALID_FORMAT;
            sk_X509_pop_free(chain, X509_free);
            SSL_CTX_free(ctx);
            return NULL;
        }
        SSL_CTX_use_certificate(ctx, sk_X509_value(chain, 0));
        for (int i = 1; i < sk_X509_num(chain); i++) {
            X509 *extra = sk_X509_value(chain, i);
            X509_up_ref(extra);
            SSL_CTX_add_extra_chain_cert(ctx, extra);
        }
        sk_X509_pop_free(chain, X509_free);
        BIO *bio = mem_bio(k->key, k->key_len);
        EVP_PKEY *pkey = NULL;
        if (bio) {
            pkey = k->key_len == 0 ? PEM_read_bio_PrivateKey(bio, NULL, pw_cb, k->key_password)
                   : d2i_PrivateKey_bio(bio, NULL);
            BIO_free(bio);
        }
        if (!pkey) {
            unsigned long e = ERR_peek_last_error();
            *tls_err = ESP_ERR_MBEDTLS_PK_PARSE_KEY_FAILED;
            *stack = (ERR_GET_REASON(e) == EVP_R_BAD_DECRYPT || ERR_GET_REASON(e) == PEM_R_BAD_PASSWORD_READ)
                     ? MBEDTLS_PK_PASSWORD_MISMATCH : MBEDTLS_PK_KEY_INVALID_FORMAT;
            ERR_clear_error();
            SSL_CTX_free(ctx);
            return NULL;
        }
        int used = SSL_CTX_use_PrivateKey(ctx, pkey);
        EVP_PKEY_free(pkey);
        if (used != 1 || SSL_CTX_check_private_key(ctx) != 1) {
            ERR_clear_error();
            *tls_err = ESP_ERR_MBEDTLS_SSL_CONF_OWN_CERT_FAILED;
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    if (k->alpn && k->alpn[0]) {
        unsigned char wire[256];
        size_t n = 0;
        for (char **p = k->alpn; *p; p++) {
            size_t l = strlen(*p);
            if (l == 0 || l > 255 || n + 1 + l > sizeof wire) {
                break;
            }
            wire[n++] = (unsigned char)l;
            memcpy(wire + n, *p, l);
            n += l;
        }
        if (SSL_CTX_set_alpn_protos(ctx, wire, (unsigned)n) != 0) {
            *tls_err = ESP_ERR_MBEDTLS_SSL_CONF_ALPN_PROTOCOLS_FAILED;
            SSL_CTX_free(ctx);
            return NULL;
        }
    }
    return ctx;
}

/* --------------------------------------------------------------------------------- mosquitto callbacks */

static void on_connect(struct mosquitto *m, void *obj, int rc, int flags, const mosquitto_property *props)
{
    (void)m;
    (void)props;
    esp_mqtt_client_handle_t c = obj;
    c->conn.connack = true;
    c->conn.rc = rc;
    c->conn.flags = flags;
}

static void on_disconnect(struct mosquitto *m, void *obj, int rc, const mosquitto_property *props)
{
    int e = errno; /* first: the socket error that made libmosquitto give up */
    (void)m;
    (void)props;
    esp_mqtt_client_handle_t c = obj;
    c->conn.lost = true;
    c->conn.lost_rc = rc;
    c->conn.lost_errno = e;
}

static void on_publish(struct mosquitto *m, void *obj, int mid, int reason, const mosquitto_property *props)
{
    (void)m;
    (void)props;
    esp_mqtt_client_handle_t c = obj;
    int qos = 0;
    pthread_mutex_lock(&c->lock);
    bool ours = ob_take(c, mid, OB_PUBLISH, &qos);
    pthread_mutex_unlock(&c->lock);
    if (!ours || qos == 0) {
        return; /* esp-mqtt has no PUBLISHED for QoS 0 */
    }
    esp_mqtt_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.event_id = MQTT_EVENT_PUBLISHED;
    ev.msg_id = mid;
    ev.reason_code = (esp_mqtt5_reason_code_t)reason;
    dispatch(c, &ev);
}

static void on_subscribe(struct mosquitto *m, void *obj, int mid, int count, const int *granted,
                         const mosquitto_property *props)
{
    (void)m;
    (void)props;
    esp_mqtt_client_handle_t c = obj;
    uint8_t codes[MAX_SUB_TOPICS * MAX_SUB_TOPICS];
    int n = 0, first_mid = mid;
    bool complete = false;
    pthread_mutex_lock(&c->lock);
    ob_take(c, mid, OB_SUBSCRIBE, NULL);
    for (sub_group_t **pp = &c->subs; *pp; pp = &(*pp)->next) {
        sub_group_t *g = *pp;
        int slot = -1;
        for (int i = 0; i < g->n; i++) {
            if (g->mids[i] == mid && !g->done[i]) {
                slot = i;
            }
        }
        if (slot < 0) {
            continue;
        }
        g->done[slot] = true;
        g->counts[slot] = count < MAX_SUB_TOPICS ? count : MAX_SUB_TOPICS;
        for (int i = 0; i < g->counts[slot]; i++) {
            g->codes[slot][i] = (uint8_t)granted[i];
        }
        if (++g->got == g->n) {
            complete = true;
            first_mid = g->mids[0];
            for (int s = 0; s < g->n; s++) {
                for (int i = 0; i < g->counts[s]; i++) {
                    codes[n++] = g->codes[s][i];
                }
            }
            *pp = g->next;
            free(g);
        }
        break;
    }
    pthread_mutex_unlock(&c->lock);
    if (!complete) {
        return;
    }
    esp_mqtt_event_t ev;
    memset(&ev, 0, sizeof ev);
    memset(&c->err, 0, sizeof c->err);
    for (int i = 0; i < n; i++) {
        if (codes[i] >= 0x80) {
            c->err.error_type = MQTT_ERROR_TYPE_SUBSCRIBE_FAILED;
        }
    }
    ev.event_id = MQTT_EVENT_SUBSCRIBED;
    ev.msg_id = first_mid;
    ev.data = (char *)codes;
    ev.data_len = n;
    ev.total_data_len = n;
    ev.reason_code = n ? (esp_mqtt5_reason_code_t)codes[0] : MQTT5_SUCCESS;
    dispatch(c, &ev);
}

static void on_unsubscribe(struct mosquitto *m, void *obj, int mid, const mosquitto_property *props)
{
    (void)m;
    (void)props;
    esp_mqtt_client_handle_t c = obj;
    pthread_mutex_lock(&c->lock);
    ob_take(c, mid, OB_UNSUBSCRIBE, NULL);
    pthread_mutex_unlock(&c->lock);
    simple_event(c, MQTT_EVENT_UNSUBSCRIBED, mid);
}

static void read_user_props(const mosquitto_property *props, mqtt5_user_property_handle_t *out)
{
    char *k = NULL, *v = NULL;
    const mosquitto_property *p = mosquitto_property_read_string_pair(props, MQTT_PROP_USER_PROPERTY, &k, &v, false);
    while (p) {
        esp_mqtt5_user_property_item_t item = {k, v};
        esp_mqtt5_client_set_user_property(out, &item, 1);
        free(k);
        free(v);
        k = v = NULL;
        p = mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, &k, &v, true);
    }
}

static void on_message(struct mosquitto *m, void *obj, const struct mosquitto_message *msg,
                       const mosquitto_property *props)
{
    (void)m;
    esp_mqtt_client_handle_t c = obj;
    esp_mqtt5_event_property_t prop;
    memset(&prop, 0, sizeof prop);
    char *rt = NULL, *ct = NULL;
    void *cd = NULL;
    uint16_t cd_len = 0;
    uint8_t pfi = 0;
    uint32_t sub_id = 0;
    if (c->proto_in_use == MQTT_PROTOCOL_V_5 && props) {
        if (mosquitto_property_read_byte(props, MQTT_PROP_PAYLOAD_FORMAT_INDICATOR, &pfi, false)) {
            prop.payload_format_indicator = pfi != 0;
        }
        if (mosquitto_property_read_string(props, MQTT_PROP_RESPONSE_TOPIC, &rt, false)) {
            prop.response_topic = rt;
            prop.response_topic_len = (int)strlen(rt);
        }
        if (mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &cd, &cd_len, false)) {
            prop.correlation_data = cd;
            prop.correlation_data_len = cd_len;
        }
        if (mosquitto_property_read_string(props, MQTT_PROP_CONTENT_TYPE, &ct, false)) {
            prop.content_type = ct;
            prop.content_type_len = (int)strlen(ct);
        }
        if (mosquitto_property_read_varint(props, MQTT_PROP_SUBSCRIPTION_IDENTIFIER, &sub_id, false)) {
            prop.subscribe_id = (uint16_t)sub_id;
        }
        read_user_props(props, &prop.user_property);
    }
    /* esp-mqtt gives a message longer than its buffer as several DATA events: the first holds what fits after
     * the PUBLISH header, each later one a full buffer */
    size_t total = msg->payloadlen > 0 ? (size_t)msg->payloadlen : 0;
    size_t tlen = strlen(msg->topic);
    size_t rem = 2 + tlen + (msg->qos ? 2 : 0) + total;
    size_t header = 1 + varint_len(rem) + rem - total;
    size_t buf = c->cur.buffer_size > 0 ? (size_t)c->cur.buffer_size : DEF_BUFFER;
    size_t off = 0;
    do {
        size_t room = off == 0 ? (buf > header ? buf - header : 1) : buf;
        size_t n = total - off < room ? total - off : room;
        esp_mqtt_event_t ev;
        memset(&ev, 0, sizeof ev);
        ev.event_id = MQTT_EVENT_DATA;
        ev.msg_id = msg->mid;
        ev.qos = msg->qos;
        ev.retain = msg->retain;
        ev.dup = false; /* libmosquitto does not expose the DUP flag of a received PUBLISH */
        if (off == 0) {
            ev.topic = msg->topic;
            ev.topic_len = (int)tlen;
        }
        ev.data = total ? (char *)msg->payload + off : NULL;
        ev.data_len = (int)n;
        ev.total_data_len = (int)total;
        ev.current_data_offset = (int)off;
        ev.property = &prop;
        dispatch(c, &ev);
        off += n;
    } while (off < total);
    free(rt);
    free(ct);
    free(cd);
    esp_mqtt5_client_delete_user_property(prop.user_property);
}

static void on_log(struct mosquitto *m, void *obj, int level, const char *str)
{
    (void)m;
    (void)obj;
    char l = level == MOSQ_LOG_ERR ? 'E' : level == MOSQ_LOG_WARNING ? 'W' : level == MOSQ_LOG_INFO ? 'I' : 'D';
    shim_host_log(l == 'E' || l == 'W' ? l : 'D', "libmosquitto", "%s", str);
}

/* ---------------------------------------------------------------------------------------- task */

static bool running(esp_mqtt_client_handle_t c)
{
    return c->run;
}

/* Close the transport without a DISCONNECT, as esp_mqtt_abort_connection() does, and go to WAIT_RECONNECT. */
static void abort_connection(esp_mqtt_client_handle_t c, int reason)
{
    int sock = mosquitto_socket(c->mosq);
    if (sock >= 0) {
        shutdown(sock, SHUT_RDWR);
        /* let libmosquitto notice and close its socket; a TLS handshake in progress never notices, then the
         * next connect or the destroy closes it */
        for (int i = 0; i < 5 && mosquitto_socket(c->mosq) >= 0; i++) {
            mosquitto_loop(c->mosq, 10, 1);
        }
    }
    pthread_mutex_lock(&c->lock);
    if (c->run) {
        c->state = ST_WAIT_RECONNECT;
    }
    c->wait_timeout_ms = c->cfg.reconnect_ms;
    c->reconnect_tick = now_ms();
    pthread_mutex_unlock(&c->lock);
    esp_mqtt_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.event_id = MQTT_EVENT_DISCONNECTED;
    ev.reason_code = (esp_mqtt5_reason_code_t)reason;
    dispatch(c, &ev);
}

/* Wait until the non-blocking connect finishes: 1 connected, 0 timeout, -1 failed (errno in *err), -2 stop. */
static int wait_tcp(esp_mqtt_client_handle_t c, int sock, int timeout_ms, int *err)
{
    int64_t deadline = now_ms() + timeout_ms;
    for (;;) {
        if (!running(c)) {
            return -2;
        }
        int64_t left = deadline - now_ms();
        if (left <= 0) {
            return 0;
        }
        struct pollfd p = {.fd = sock, .events = POLLOUT};
        int r = poll(&p, 1, left < SLICE_MS ? (int)left : SLICE_MS);
        if (r < 0 && errno != EINTR) {
            *err = errno;
            return -1;
        }
        if (r > 0) {
            int so = 0;
            socklen_t sl = sizeof so;
            getsockopt(sock, SOL_SOCKET, SO_ERROR, &so, &sl);
            struct sockaddr_storage peer;
            socklen_t pl = sizeof peer;
            if (so == 0 && getpeername(sock, (struct sockaddr *)&peer, &pl) == 0) {
                return 1;
            }
            /* a TLS ClientHello attempted on the connecting socket may already have consumed SO_ERROR */
            *err = so ? so : ECONNREFUSED;
            return -1;
        }
    }
}

/* During a TLS handshake libmosquitto treats EOF and resets as "try again": look at the socket ourselves. */
static bool handshake_eof(int sock, int *err)
{
    char b;
    ssize_t r = recv(sock, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    if (r == 0) {
        *err = 0;
        return true;
    }
    if (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
        *err = errno;
        return true;
    }
    return false;
}

static void report_tls_failure(esp_mqtt_client_handle_t c, int sock_err)
{
    if (c->tls.verify_failed) {
        shim_host_log('E', "esp-tls-mbedtls", "mbedtls_ssl_handshake returned -0x%x (%s)",
                      MBEDTLS_X509_CERT_VERIFY_FAILED, c->tls.reason);
        report_transport(c, ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED, MBEDTLS_X509_CERT_VERIFY_FAILED, c->tls.flags, 0);
    } else if (c->tls.alert) {
        shim_host_log('E', "esp-tls-mbedtls", "mbedtls_ssl_handshake returned -0x%x (fatal alert from the server: "
                      "%s)", MBEDTLS_SSL_FATAL_ALERT_MESSAGE, c->tls.alert_desc);
        report_transport(c, ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED, MBEDTLS_SSL_FATAL_ALERT_MESSAGE, 0, 0);
    } else if (sock_err == ECONNRESET) {
        shim_host_log('E', "esp-tls-mbedtls", "mbedtls_ssl_handshake returned -0x%x (connection reset)",
                      MBEDTLS_NET_CONN_RESET);
        report_transport(c, ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED, MBEDTLS_NET_CONN_RESET, 0, sock_err);
    } else if (sock_err >= 0) {
        shim_host_log('E', "esp-tls-mbedtls", "mbedtls_ssl_handshake returned -0x%x (the server closed the "
                      "connection)", MBEDTLS_SSL_CONN_EOF);
        report_transport(c, ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED, MBEDTLS_SSL_CONN_EOF, 0, sock_err);
    } else {
        shim_host_log('E', "esp-tls-mbedtls", "mbedtls_ssl_handshake failed (OpenSSL gave no verify fault or "
                      "alert)");
        report_transport(c, ESP_ERR_MBEDTLS_SSL_HANDSHAKE_FAILED, MBEDTLS_SSL_HANDSHAKE_FAILURE, 0, 0);
    }
}

/* An established connection was lost: ERROR (when esp-mqtt gives one) then DISCONNECTED. */
static void connection_lost(esp_mqtt_client_handle_t c, int rc, int e)
{
    int reason = 0;
    if (rc == MOSQ_ERR_KEEPALIVE) {
        shim_host_log('E', TAG, "No PING_RESP, disconnected");
    } else if (rc == MOSQ_ERR_CONN_LOST || rc == MOSQ_ERR_ERRNO || rc == MOSQ_ERR_NO_CONN) {
        if (e == ECONNRESET || e == EPIPE || e == ETIMEDOUT || e == EHOSTUNREACH || e == ENETUNREACH ||
                e == ECONNABORTED) {
            shim_host_log('E', TAG, "esp_mqtt_handle_transport_read_error: transport_read() error: errno=%d", e);
            report_transport(c, ESP_OK, 0, 0, e);
        } else {
            /* a clean close (TLS close_notify shows as EPROTO from libmosquitto) */
            shim_host_log('E', TAG, "esp_mqtt_handle_transport_read_error: transport_read(): EOF");
            report_transport(c, ESP_ERR_ESP_TLS_TCP_CLOSED_FIN, 0, 0, 0);
        }
    } else if (c->proto_in_use == MQTT_PROTOCOL_V_5 && (rc >= 0x80 || rc == 0)) {
        shim_host_log('I', TAG, "MQTT5 DISCONNECT from the server, reason code 0x%02x", rc);
        reason = rc;
    } else {
        shim_host_log('E', TAG, "connection ended: %s", mosquitto_strerror(rc));
    }
    abort_connection(c, reason);
}

static void flush_qos0(esp_mqtt_client_handle_t c)
{
    pthread_mutex_lock(&c->lock);
    qos0_t *list = c->qos0;
    c->qos0 = NULL;
    pthread_mutex_unlock(&c->lock);
    while (list) {
        qos0_t *q = list;
        list = q->next;
        mosquitto_publish_v5(c->mosq, NULL, q->topic, q->len, q->data, 0, q->retain, NULL);
        free(q->topic);
        free(q->data);
        free(q);
    }
}

static void connect_once(esp_mqtt_client_handle_t c)
{
    pthread_mutex_lock(&c->lock);
    c->disconnect_req = false;
    c->reconnect_req = false;
    cfg_free(&c->cur);
    cfg_copy(&c->cur, &c->cfg);
    if (c->mosq_dirty) {
        mosq_create(c); /* under the lock: the API's publish calls hold it around libmosquitto calls */
    }
    pthread_mutex_unlock(&c->lock);
    const cfg_t *k = &c->cur;
    c->proto_in_use = k->protocol_ver ? k->protocol_ver : MQTT_PROTOCOL_V_3_1_1;
    memset(&c->err, 0, sizeof c->err);
    memset(&c->conn, 0, sizeof c->conn);
    memset(&c->tls, 0, sizeof c->tls);

    simple_event(c, MQTT_EVENT_BEFORE_CONNECT, 0);
    if (!running(c)) {
        return;
    }
    const char *scheme = k->scheme ? k->scheme : "mqtt";
    bool tls = strcmp(scheme, "mqtts") == 0;
    if (!tls && strcmp(scheme, "mqtt") != 0) {
        /* as esp-mqtt without that transport: "There are no transports valid, stop mqtt client" */
        shim_host_log('E', TAG, "There are no transports valid, stop mqtt client, config scheme = %s (the host shim "
                      "has no WebSocket transport)", scheme);
        c->run = false;
        return;
    }
    char ip[64];
    if (!k->host || !shim_host_resolve(k->host, ip, sizeof ip)) {
        shim_host_log('E', "esp-tls", "couldn't get hostname for :%s: getaddrinfo() returns 202, addrinfo=0x0",
                      k->host ? k->host : "");
        report_transport(c, ESP_ERR_ESP_TLS_CANNOT_RESOLVE_HOSTNAME, 0, 0, 0);
        abort_connection(c, 0);
        return;
    }
    int port = k->port ? (int)k->port : (tls ? 8883 : 1883);
    esp_err_t setup_err = ESP_OK;
    int setup_stack = 0;
    SSL_CTX *ctx = NULL;
    if (tls) {
        ctx = build_ctx(c, &setup_err, &setup_stack);
    }
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION,
                         c->proto_in_use == MQTT_PROTOCOL_V_5 ? MQTT_PROTOCOL_V5 :
                         c->proto_in_use == MQTT_PROTOCOL_V_3_1 ? MQTT_PROTOCOL_V31 : MQTT_PROTOCOL_V311);
    mosquitto_username_pw_set(c->mosq, k->username, k->password);
    mosquitto_will_clear(c->mosq);
    if (k->will_topic) {
        if (mosquitto_will_set(c->mosq, k->will_topic, k->will_len, k->will_msg, k->will_qos, k->will_retain != 0)) {
            shim_host_log('W', TAG, "host shim: libmosquitto refused the last will (topic %s)", k->will_topic);
        }
    }
    mosq_set_ctx(c, ctx); /* NULL for mqtt:// also clears a previous connection's TLS */
    int keepalive = k->disable_keepalive ? 0 : (k->keepalive > 0 ? k->keepalive : DEF_KEEPALIVE);
    if (keepalive > 0 && keepalive < 5) {
        shim_host_log('W', TAG, "host shim: libmosquitto needs keepalive 0 or >= 5 s; using 5 instead of %d",
                      keepalive);
        keepalive = 5;
    }
    errno = 0;
    int rc = mosquitto_connect_bind_async(c->mosq, ip, port, keepalive, NULL);
    if (rc == MOSQ_ERR_ERRNO) {
        int e = errno;
        shim_host_log('E', "esp-tls", "[sock=-1] connect() error: %s", strerror(e));
        report_transport(c, ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST, 0, 0, e);
        abort_connection(c, 0);
        return;
    }
    if (rc == MOSQ_ERR_TLS) {
        /* on the loopback the whole handshake can run inside connect_async, verification failure included */
        report_tls_failure(c, -1);
        abort_connection(c, 0);
        return;
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        shim_host_log('E', TAG, "host shim: mosquitto_connect_async: %s", mosquitto_strerror(rc));
        report_transport(c, ESP_ERR_ESP_TLS_CANNOT_CREATE_SOCKET, 0, 0, 0);
        abort_connection(c, 0);
        return;
    }
    int timeout = k->timeout_ms > 0 ? k->timeout_ms : DEF_TIMEOUT_MS;
    int sock = mosquitto_socket(c->mosq);
    int err = 0;
    int w = sock >= 0 ? wait_tcp(c, sock, timeout, &err) : -1;
    if (w == -2) {
        return;
    }
    if (w == 0) {
        shim_host_log('E', "esp-tls", "[sock=%d] select() timeout", sock);
        report_transport(c, ESP_ERR_ESP_TLS_CONNECTION_TIMEOUT, 0, 0, 0);
        abort_connection(c, 0);
        return;
    }
    if (w < 0) {
        shim_host_log('E', "esp-tls", "[sock=%d] delayed connect error: %s", sock, strerror(err));
        report_transport(c, ESP_ERR_ESP_TLS_FAILED_CONNECT_TO_HOST, 0, 0, err);
        abort_connection(c, 0);
        return;
    }
    if (tls && !ctx) {
        report_transport(c, setup_err, setup_stack, 0, 0); /* esp-tls finds setup faults after the TCP connect */
        abort_connection(c, 0);
        return;
    }
    /* handshake (TLS) and CONNACK, within network.timeout_ms like esp-tls and esp_mqtt_connect() */
    int64_t deadline = now_ms() + timeout;
    while (!c->conn.connack) {
        if (!running(c)) {
            return;
        }
        rc = mosquitto_loop(c->mosq, SLICE_MS, 1);
        if (c->conn.connack) {
            break;
        }
        if (rc == MOSQ_ERR_TLS) {
            report_tls_failure(c, -1);
            abort_connection(c, 0);
            return;
        }
        if (tls && !c->tls.handshake_done) {
            int e = 0;
            if (c->tls.verify_failed || c->tls.alert) {
                report_tls_failure(c, -1);
                abort_connection(c, 0);
                return;
            }
            if ((c->conn.lost || (sock >= 0 && handshake_eof(sock, &e)))) {
                report_tls_failure(c, c->conn.lost ? c->conn.lost_errno : e);
                abort_connection(c, 0);
                return;
            }
        } else if (c->conn.lost || (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN)) {
            int e = c->conn.lost ? c->conn.lost_errno : errno;
            int lrc = c->conn.lost ? c->conn.lost_rc : rc;
            if (e == ECONNRESET || e == EPIPE) {
                report_transport(c, ESP_OK, 0, 0, e);
            } else if (lrc == MOSQ_ERR_CONN_LOST || lrc == MOSQ_ERR_ERRNO) {
                shim_host_log('E', TAG, "esp_mqtt_handle_transport_read_error: transport_read(): EOF");
                report_transport(c, ESP_ERR_ESP_TLS_TCP_CLOSED_FIN, 0, 0, 0);
            } else {
                shim_host_log('E', TAG, "MQTT connect failed: %s", mosquitto_strerror(lrc));
            }
            abort_connection(c, 0);
            return;
        }
        if (now_ms() > deadline) {
            if (tls && !c->tls.handshake_done) {
                shim_host_log('E', "esp-tls", "Failed to open new connection in specified timeout");
                report_transport(c, ESP_ERR_ESP_TLS_CONNECTION_TIMEOUT, 0, 0, 0);
            } else {
                /* esp-mqtt: no CONNACK in time is not an ERROR, only a log line and DISCONNECTED */
                shim_host_log('E', TAG, "mqtt_message_receive: no CONNACK within %d ms; MQTT connect failed", timeout);
            }
            abort_connection(c, 0);
            return;
        }
    }
    if (c->conn.rc != 0) {
        shim_host_log('W', TAG, "Connection refused, reason code 0x%x", c->conn.rc);
        report_refused(c, c->conn.rc);
        abort_connection(c, 0);
        return;
    }
    pthread_mutex_lock(&c->lock);
    if (c->run) {
        c->state = ST_CONNECTED;
    }
    c->refresh_tick = now_ms();
    pthread_mutex_unlock(&c->lock);
    esp_mqtt_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.event_id = MQTT_EVENT_CONNECTED;
    ev.session_present = (c->conn.flags & 1) != 0;
    dispatch(c, &ev);
    flush_qos0(c);
}

static void connected_step(esp_mqtt_client_handle_t c)
{
    pthread_mutex_lock(&c->lock);
    bool dreq = c->disconnect_req;
    c->disconnect_req = false;
    int refresh = c->cur.refresh_ms;
    pthread_mutex_unlock(&c->lock);
    if (dreq) {
        mosquitto_disconnect(c->mosq); /* DISCONNECT, then libmosquitto closes once it is written */
        for (int i = 0; i < 40 && mosquitto_socket(c->mosq) >= 0; i++) {
            mosquitto_loop(c->mosq, 25, 1);
        }
        abort_connection(c, 0);
        return;
    }
    c->conn.lost = false;
    errno = 0;
    int rc = mosquitto_loop(c->mosq, SLICE_MS, 1);
    if (c->conn.lost || (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN) || mosquitto_socket(c->mosq) < 0) {
        int lrc = c->conn.lost ? c->conn.lost_rc : (rc ? rc : MOSQ_ERR_CONN_LOST);
        int e = c->conn.lost ? c->conn.lost_errno : errno;
        connection_lost(c, lrc, e);
        return;
    }
    flush_qos0(c);
    if (refresh > 0 && now_ms() - c->refresh_tick > refresh) {
        shim_host_log('D', TAG, "Refreshing the connection...");
        abort_connection(c, 0);
        pthread_mutex_lock(&c->lock);
        if (c->run) {
            c->state = ST_INIT;
        }
        pthread_mutex_unlock(&c->lock);
    }
}

static void wait_step(esp_mqtt_client_handle_t c)
{
    pthread_mutex_lock(&c->lock);
    if (!c->cfg.auto_reconnect && c->reconnect_req) {
        c->reconnect_req = false;
        c->state = ST_INIT;
        c->wait_timeout_ms = c->cfg.reconnect_ms;
    } else if (c->cfg.auto_reconnect && now_ms() - c->reconnect_tick > c->wait_timeout_ms) {
        c->state = ST_INIT;
        c->reconnect_tick = now_ms();
    } else if (c->run) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += SLICE_MS * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec += 1;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&c->cond, &c->lock, &ts);
    }
    pthread_mutex_unlock(&c->lock);
}

static void *task_main(void *arg)
{
    esp_mqtt_client_handle_t c = arg;
    while (running(c)) {
        pthread_mutex_lock(&c->lock);
        int st = c->state;
        pthread_mutex_unlock(&c->lock);
        switch (st) {
        case ST_INIT:
            connect_once(c);
            break;
        case ST_CONNECTED:
            connected_step(c);
            break;
        case ST_WAIT_RECONNECT:
            wait_step(c);
            break;
        default:
            wait_step(c);
            break;
        }
    }
    /* esp_mqtt_client_stop(): a DISCONNECT if connected, then the transport closes */
    if (c->stop_disconnect && mosquitto_socket(c->mosq) >= 0) {
        mosquitto_disconnect(c->mosq);
        for (int i = 0; i < 40 && mosquitto_socket(c->mosq) >= 0; i++) {
            mosquitto_loop(c->mosq, 25, 1);
        }
    }
    int sock = mosquitto_socket(c->mosq);
    if (sock >= 0) {
        shutdown(sock, SHUT_RDWR);
    }
    return NULL;
}

/* ----------------------------------------------------------------------------------------------- API */

esp_mqtt_client_handle_t esp_mqtt_client_init(const esp_mqtt_client_config_t *config)
{
    pthread_once(&s_once, lib_init);
    esp_mqtt_client_handle_t c = calloc(1, sizeof *c);
    if (!c) {
        return NULL;
    }
    pthread_mutex_init(&c->lock, NULL);
    pthread_cond_init(&c->cond, NULL);
    cfg_t *k = &c->cfg;
    k->keepalive = DEF_KEEPALIVE;
    k->reconnect_ms = DEF_RECONNECT_MS;
    k->timeout_ms = DEF_TIMEOUT_MS;
    k->retransmit_ms = DEF_RETRANSMIT_MS;
    k->buffer_size = DEF_BUFFER;
    k->protocol_ver = MQTT_PROTOCOL_V_3_1_1;
    k->clean_session = true;
    k->auto_reconnect = true;
    c->state = ST_INIT;
    c->proto_in_use = MQTT_PROTOCOL_V_3_1_1;
    if (apply_config(c, config) != ESP_OK || !mosq_create(c)) {
        esp_mqtt_client_destroy(c);
        return NULL;
    }
    return c;
}

esp_err_t esp_mqtt_set_config(esp_mqtt_client_handle_t c, const esp_mqtt_client_config_t *config)
{
    if (!c || !config) {
        return ESP_ERR_INVALID_ARG;
    }
    pthread_mutex_lock(&c->lock);
    esp_err_t e = apply_config(c, config);
    if (c->mosq_dirty && !c->task_alive) {
        mosq_create(c);
    }
    pthread_mutex_unlock(&c->lock);
    return e == ESP_OK ? ESP_OK : ESP_ERR_INVALID_ARG;
}

esp_err_t esp_mqtt_client_set_uri(esp_mqtt_client_handle_t c, const char *uri)
{
    if (!c || !uri) {
        return ESP_ERR_INVALID_ARG;
    }
    pthread_mutex_lock(&c->lock);
    bool ok = parse_uri(&c->cfg, uri);
    pthread_mutex_unlock(&c->lock);
    if (!ok) {
        shim_host_log('E', TAG, "Error parse uri = %s", uri);
    }
    return ok ? ESP_OK : ESP_FAIL;
}

esp_err_t esp_mqtt_client_register_event(esp_mqtt_client_handle_t c, esp_mqtt_event_id_t event,
                                         esp_event_handler_t fn, void *arg)
{
    if (!c || !fn) {
        return ESP_ERR_INVALID_ARG;
    }
    handler_t *h = calloc(1, sizeof *h);
    if (!h) {
        return ESP_ERR_NO_MEM;
    }
    h->id = event;
    h->fn = fn;
    h->arg = arg;
    pthread_mutex_lock(&c->lock);
    handler_t **pp = &c->handlers;
    while (*pp) {
        pp = &(*pp)->next;
    }
    *pp = h;
    pthread_mutex_unlock(&c->lock);
    return ESP_OK;
}

esp_err_t esp_mqtt_client_unregister_event(esp_mqtt_client_handle_t c, esp_mqtt_event_id_t event,
                                           esp_event_handler_t fn)
{
    if (!c) {
        return ESP_ERR_INVALID_ARG;
    }
    pthread_mutex_lock(&c->lock);
    for (handler_t **pp = &c->handlers; *pp;) {
        if ((*pp)->id == event && (*pp)->fn == fn) {
            handler_t *h = *pp;
            *pp = h->next;
            free(h);
        } else {
            pp = &(*pp)->next;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return ESP_OK;
}

esp_err_t esp_mqtt_client_start(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return ESP_ERR_INVALID_ARG;
    }
    pthread_mutex_lock(&c->lock);
    if (c->task_alive || (c->state != ST_INIT && c->state != ST_DISCONNECTED)) {
        pthread_mutex_unlock(&c->lock);
        shim_host_log('E', TAG, "Client has started");
        return ESP_FAIL;
    }
    c->run = true;
    c->state = ST_INIT;
    c->stop_disconnect = false;
    if (pthread_create(&c->task, NULL, task_main, c) != 0) {
        c->run = false;
        pthread_mutex_unlock(&c->lock);
        shim_host_log('E', TAG, "Error create mqtt task");
        return ESP_FAIL;
    }
    c->task_alive = true;
    c->started = true;
    pthread_mutex_unlock(&c->lock);
    return ESP_OK;
}

esp_err_t esp_mqtt_client_stop(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return ESP_ERR_INVALID_ARG;
    }
    pthread_mutex_lock(&c->lock);
    if (!c->task_alive) {
        pthread_mutex_unlock(&c->lock);
        shim_host_log('W', TAG, "Client asked to stop, but was not started");
        return ESP_FAIL;
    }
    if (pthread_equal(pthread_self(), c->task)) {
        pthread_mutex_unlock(&c->lock);
        shim_host_log('E', TAG, "Client cannot be stopped from MQTT task");
        return ESP_FAIL;
    }
    c->stop_disconnect = c->state == ST_CONNECTED;
    c->run = false;
    c->state = ST_DISCONNECTED;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    pthread_join(c->task, NULL);
    pthread_mutex_lock(&c->lock);
    c->task_alive = false;
    /* esp-mqtt empties its outbox when the task ends: a fresh libmosquitto instance drops its queue */
    ob_clear(c);
    mosq_create(c);
    pthread_mutex_unlock(&c->lock);
    return ESP_OK;
}

esp_err_t esp_mqtt_client_disconnect(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return ESP_ERR_INVALID_ARG;
    }
    shim_host_log('I', TAG, "Client asked to disconnect");
    pthread_mutex_lock(&c->lock);
    c->disconnect_req = true;
    pthread_mutex_unlock(&c->lock);
    return ESP_OK;
}

esp_err_t esp_mqtt_client_reconnect(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return ESP_ERR_INVALID_ARG;
    }
    shim_host_log('I', TAG, "Client force reconnect requested");
    pthread_mutex_lock(&c->lock);
    if (c->state != ST_WAIT_RECONNECT || !c->task_alive) {
        pthread_mutex_unlock(&c->lock);
        return ESP_FAIL;
    }
    c->wait_timeout_ms = 0;
    c->reconnect_req = true;
    pthread_cond_broadcast(&c->cond);
    pthread_mutex_unlock(&c->lock);
    return ESP_OK;
}

esp_err_t esp_mqtt_client_destroy(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return ESP_ERR_INVALID_ARG;
    }
    if (c->task_alive) {
        esp_mqtt_client_stop(c);
    }
    pthread_mutex_lock(&c->lock);
    ob_clear(c);
    if (c->mosq) {
        if (c->mosq_ctx) {
            SSL_CTX_free(c->mosq_ctx);
        }
        mosquitto_destroy(c->mosq);
    }
    while (c->handlers) {
        handler_t *h = c->handlers;
        c->handlers = h->next;
        free(h);
    }
    cfg_free(&c->cfg);
    cfg_free(&c->cur);
    pthread_mutex_unlock(&c->lock);
    pthread_mutex_destroy(&c->lock);
    pthread_cond_destroy(&c->cond);
    free(c);
    return ESP_OK;
}

static int publish_locked(esp_mqtt_client_handle_t c, const char *topic, const char *data, int len, int qos,
                          int retain)
{
    int mid = 0;
    int rc = mosquitto_publish_v5(c->mosq, &mid, topic, len, data, qos, retain != 0, NULL);
    /* not connected: libmosquitto keeps a QoS>0 message queued and sends it after the next CONNACK, as the
     * esp-mqtt outbox does (it says NO_CONN while doing so) */
    if (rc == MOSQ_ERR_NO_CONN && qos > 0) {
        rc = MOSQ_ERR_SUCCESS;
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        shim_host_log('E', TAG, "host shim: mosquitto_publish: %s", mosquitto_strerror(rc));
        return -1;
    }
    if (qos > 0) {
        ob_add(c, mid, OB_PUBLISH, qos, publish_size(topic, len, qos));
        return mid;
    }
    return 0;
}

int esp_mqtt_client_publish(esp_mqtt_client_handle_t c, const char *topic, const char *data, int len, int qos,
                            int retain)
{
    if (!c) {
        shim_host_log('E', TAG, "Client was not initialized");
        return -1;
    }
    if (len <= 0 && data) {
        len = (int)strlen(data);
    }
    if (!topic || qos < 0 || qos > 2) {
        return -1;
    }
    pthread_mutex_lock(&c->lock);
    if (c->cfg.outbox_limit > 0 && qos > 0 && (uint64_t)len + c->outbox_bytes > c->cfg.outbox_limit) {
        pthread_mutex_unlock(&c->lock);
        return -2;
    }
    if (c->state != ST_CONNECTED && qos == 0) {
        pthread_mutex_unlock(&c->lock);
        shim_host_log('W', TAG, "Publish: Losing qos0 data when client not connected");
        return -1;
    }
    /* the lock spans the call and the outbox entry, so a PUBACK racing in finds the entry */
    int id = publish_locked(c, topic, data, len, qos, retain);
    pthread_mutex_unlock(&c->lock);
    return id;
}

int esp_mqtt_client_enqueue(esp_mqtt_client_handle_t c, const char *topic, const char *data, int len, int qos,
                            int retain, bool store)
{
    if (!c) {
        shim_host_log('E', TAG, "Client was not initialized");
        return -1;
    }
    if (len <= 0 && data) {
        len = (int)strlen(data);
    }
    if (!topic || qos < 0 || qos > 2) {
        return -1;
    }
    pthread_mutex_lock(&c->lock);
    if (c->cfg.outbox_limit > 0 && (uint64_t)len + c->outbox_bytes > c->cfg.outbox_limit) {
        pthread_mutex_unlock(&c->lock);
        return -2;
    }
    int id;
    if (qos > 0) {
        id = publish_locked(c, topic, data, len, qos, retain);
    } else if (!store) {
        id = -1; /* esp-mqtt: QoS 0 is not enqueued unless store is set, which it reports as -1 */
    } else if (c->state == ST_CONNECTED) {
        id = publish_locked(c, topic, data, len, 0, retain);
    } else {
        qos0_t *q = calloc(1, sizeof *q);
        id = -1;
        if (q) {
            q->topic = strdup(topic);
            q->data = malloc((size_t)len + 1);
            q->len = len;
            q->retain = retain;
            if (q->topic && q->data) {
                if (len) {
                    memcpy(q->data, data, (size_t)len);
                }
                qos0_t **pp = &c->qos0;
                while (*pp) {
                    pp = &(*pp)->next;
                }
                *pp = q;
                id = 0;
            } else {
                free(q->topic);
                free(q->data);
                free(q);
            }
        }
    }
    pthread_mutex_unlock(&c->lock);
    return id;
}

int esp_mqtt_client_subscribe_multiple(esp_mqtt_client_handle_t c, const esp_mqtt_topic_t *list, int size)
{
    if (!c || !list || size < 1 || size > MAX_SUB_TOPICS) {
        return -1;
    }
    pthread_mutex_lock(&c->lock);
    if (c->state != ST_CONNECTED) {
        pthread_mutex_unlock(&c->lock);
        shim_host_log('E', TAG, "Client has not connected");
        return -1;
    }
    if (c->cfg.outbox_limit > 0 && c->outbox_bytes > c->cfg.outbox_limit) {
        pthread_mutex_unlock(&c->lock);
        return -2;
    }
    sub_group_t *g = calloc(1, sizeof *g);
    if (!g) {
        pthread_mutex_unlock(&c->lock);
        return -1;
    }
    bool same = true;
    size_t bytes = 4;
    for (int i = 0; i < size; i++) {
        same &= list[i].qos == list[0].qos;
        bytes += 3 + strlen(list[i].filter);
    }
    int rc = MOSQ_ERR_SUCCESS;
    if (same) {
        char *subs[MAX_SUB_TOPICS];
        for (int i = 0; i < size; i++) {
            subs[i] = (char *)list[i].filter;
        }
        rc = mosquitto_subscribe_multiple(c->mosq, &g->mids[0], size, subs, list[0].qos, 0, NULL);
        g->n = 1;
    } else {
        for (int i = 0; i < size && rc == MOSQ_ERR_SUCCESS; i++) {
            rc = mosquitto_subscribe(c->mosq, &g->mids[i], list[i].filter, list[i].qos);
            g->n = i + 1;
        }
    }
    if (rc != MOSQ_ERR_SUCCESS) {
        shim_host_log('E', TAG, "host shim: mosquitto_subscribe: %s", mosquitto_strerror(rc));
        free(g);
        pthread_mutex_unlock(&c->lock);
        return -1;
    }
    for (int i = 0; i < g->n; i++) {
        ob_add(c, g->mids[i], OB_SUBSCRIBE, 1, i == 0 ? bytes : 0);
    }
    g->next = c->subs;
    c->subs = g;
    int id = g->mids[0];
    pthread_mutex_unlock(&c->lock);
    return id;
}

int esp_mqtt_client_subscribe_single(esp_mqtt_client_handle_t c, const char *topic, int qos)
{
    esp_mqtt_topic_t t = {topic, qos};
    return esp_mqtt_client_subscribe_multiple(c, &t, 1);
}

int esp_mqtt_client_unsubscribe(esp_mqtt_client_handle_t c, const char *topic)
{
    if (!c || !topic) {
        return -1;
    }
    pthread_mutex_lock(&c->lock);
    if (c->state != ST_CONNECTED) {
        pthread_mutex_unlock(&c->lock);
        shim_host_log('E', TAG, "Client has not connected");
        return -1;
    }
    int mid = 0;
    int rc = mosquitto_unsubscribe(c->mosq, &mid, topic);
    if (rc != MOSQ_ERR_SUCCESS) {
        pthread_mutex_unlock(&c->lock);
        shim_host_log('E', TAG, "host shim: mosquitto_unsubscribe: %s", mosquitto_strerror(rc));
        return -1;
    }
    ob_add(c, mid, OB_UNSUBSCRIBE, 1, 6 + strlen(topic));
    pthread_mutex_unlock(&c->lock);
    return mid;
}

int esp_mqtt_client_get_outbox_size(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return 0;
    }
    pthread_mutex_lock(&c->lock);
    int n = (int)c->outbox_bytes;
    pthread_mutex_unlock(&c->lock);
    return n;
}

esp_mqtt_client_connection_state_t esp_mqtt_client_get_state(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return MQTT_CLIENT_STATE_NOT_INITIALIZED;
    }
    pthread_mutex_lock(&c->lock);
    esp_mqtt_client_connection_state_t r;
    if (!c->started) {
        r = MQTT_CLIENT_STATE_NOT_STARTED;
    } else {
        switch (c->state) {
        case ST_CONNECTED:
            r = MQTT_CLIENT_STATE_CONNECTED;
            break;
        case ST_WAIT_RECONNECT:
            r = MQTT_CLIENT_STATE_WAITING_RECONNECT;
            break;
        case ST_DISCONNECTED:
            r = MQTT_CLIENT_STATE_DISCONNECTED;
            break;
        default:
            r = MQTT_CLIENT_STATE_NOT_STARTED;
            break;
        }
    }
    pthread_mutex_unlock(&c->lock);
    return r;
}

/* ------------------------------------------------------------------------------------ user properties */

esp_err_t esp_mqtt5_client_set_user_property(mqtt5_user_property_handle_t *user_property,
                                             esp_mqtt5_user_property_item_t item[], uint8_t item_num)
{
    if (!user_property || !item) {
        return ESP_FAIL;
    }
    if (!*user_property) {
        *user_property = calloc(1, sizeof **user_property);
        if (!*user_property) {
            return ESP_ERR_NO_MEM;
        }
    }
    struct up_item **tail = &(*user_property)->first;
    while (*tail) {
        tail = &(*tail)->next;
    }
    for (uint8_t i = 0; i < item_num; i++) {
        struct up_item *u = calloc(1, sizeof *u);
        if (!u) {
            return ESP_ERR_NO_MEM;
        }
        u->key = strdup(item[i].key ? item[i].key : "");
        u->value = strdup(item[i].value ? item[i].value : "");
        *tail = u;
        tail = &u->next;
    }
    return ESP_OK;
}

esp_err_t esp_mqtt5_client_get_user_property(mqtt5_user_property_handle_t user_property,
                                             esp_mqtt5_user_property_item_t *item, uint8_t *item_num)
{
    if (!user_property || !item || !item_num || !*item_num) {
        return ESP_FAIL;
    }
    uint8_t i = 0;
    for (struct up_item *u = user_property->first; u && i < *item_num; u = u->next, i++) {
        item[i].key = strdup(u->key);
        item[i].value = strdup(u->value);
    }
    *item_num = i;
    return ESP_OK;
}

uint8_t esp_mqtt5_client_get_user_property_count(mqtt5_user_property_handle_t user_property)
{
    uint8_t n = 0;
    for (struct up_item *u = user_property ? user_property->first : NULL; u && n < 255; u = u->next) {
        n++;
    }
    return n;
}

void esp_mqtt5_client_delete_user_property(mqtt5_user_property_handle_t user_property)
{
    if (!user_property) {
        return;
    }
    struct up_item *u = user_property->first;
    while (u) {
        struct up_item *next = u->next;
        free(u->key);
        free(u->value);
        free(u);
        u = next;
    }
    free(user_property);
}
