/* base64, CRC-32, UTF-8 check and the name tables of docs/dut-protocol.md §7. */
#include <errno.h>
#include <stdio.h>
#include <string.h>

#include "dut_internal.h"
#include "esp_err.h"

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

size_t dut_b64_encoded_len(size_t n)
{
    return (n + 2) / 3 * 4;
}

size_t dut_b64_encode(const uint8_t *data, size_t n, char *out)
{
    size_t o = 0, i = 0;
    for (; i + 2 < n; i += 3) {
        uint32_t v = ((uint32_t)data[i] << 16) | ((uint32_t)data[i + 1] << 8) | data[i + 2];
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = B64[(v >> 6) & 63];
        out[o++] = B64[v & 63];
    }
    if (i < n) {
        uint32_t v = (uint32_t)data[i] << 16;
        if (i + 1 < n) {
            v |= (uint32_t)data[i + 1] << 8;
        }
        out[o++] = B64[(v >> 18) & 63];
        out[o++] = B64[(v >> 12) & 63];
        out[o++] = (i + 1 < n) ? B64[(v >> 6) & 63] : '=';
        out[o++] = '=';
    }
    out[o] = '\0';
    return o;
}

static int b64_value(char c)
{
    if (c >= 'A' && c <= 'Z') {
        return c - 'A';
    }
    if (c >= 'a' && c <= 'z') {
        return c - 'a' + 26;
    }
    if (c >= '0' && c <= '9') {
        return c - '0' + 52;
    }
    if (c == '+') {
        return 62;
    }
    if (c == '/') {
        return 63;
    }
    return -1;
}

bool dut_b64_decode(const char *text, size_t len, uint8_t *out, size_t *out_len)
{
    size_t o = 0;
    if (len % 4 != 0) {
        return false;
    }
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            char c = text[i + k];
            if (c == '=') {
                /* padding only in the last quantum, only at its end */
                if (i + 4 != len || k < 2) {
                    return false;
                }
                pad++;
                v[k] = 0;
            } else {
                if (pad) {
                    return false;
                }
                v[k] = b64_value(c);
                if (v[k] < 0) {
                    return false;
                }
            }
        }
        uint32_t w = ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) | ((uint32_t)v[2] << 6) | (uint32_t)v[3];
        /* the bits a padded quantum does not use must be zero (canonical form, as Python's validate) */
        if ((pad == 1 && (w & 0xFF)) || (pad == 2 && (w & 0xFFFF))) {
            return false;
        }
        out[o++] = (uint8_t)(w >> 16);
        if (pad < 2) {
            out[o++] = (uint8_t)(w >> 8);
        }
        if (pad < 1) {
            out[o++] = (uint8_t)w;
        }
    }
    *out_len = o;
    return true;
}

uint32_t dut_crc32(uint32_t crc, const void *data, size_t n)
{
    /* bitwise with a 16-entry table: small enough for any chip, fast enough for payload checks */
    static const uint32_t T[16] = {
        0x00000000, 0x1db71064, 0x3b6e20c8, 0x26d930ac, 0x76dc4190, 0x6b6b51f4, 0x4db26158, 0x5005713c,
        0xedb88320, 0xf00f9344, 0xd6d6a3e8, 0xcb61b38c, 0x9b64c2b0, 0x86d3d2d4, 0xa00ae278, 0xbdbdf21c,
    };
    const uint8_t *p = (const uint8_t *)data;
    crc = ~crc;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        crc = (crc >> 4) ^ T[crc & 15];
        crc = (crc >> 4) ^ T[crc & 15];
    }
    return ~crc;
}

bool dut_utf8_valid(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        if (c == 0) {
            return false;
        }
        if (c < 0x80) {
            i++;
            continue;
        }
        size_t need;
        uint32_t cp;
        if ((c & 0xE0) == 0xC0) {
            need = 1;
            cp = c & 0x1F;
        } else if ((c & 0xF0) == 0xE0) {
            need = 2;
            cp = c & 0x0F;
        } else if ((c & 0xF8) == 0xF0) {
            need = 3;
            cp = c & 0x07;
        } else {
            return false;
        }
        if (i + need >= n) {
            return false;
        }
        for (size_t k = 1; k <= need; k++) {
            if ((s[i + k] & 0xC0) != 0x80) {
                return false;
            }
            cp = (cp << 6) | (s[i + k] & 0x3F);
        }
        /* overlong forms, surrogates, beyond U+10FFFF */
        if ((need == 1 && cp < 0x80) || (need == 2 && cp < 0x800) || (need == 3 && cp < 0x10000) ||
                (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF) {
            return false;
        }
        i += need + 1;
    }
    return true;
}

void dut_hex(char *out, size_t out_len, uint32_t v)
{
    snprintf(out, out_len, "0x%lx", (unsigned long)v);
}

/* ------------------------------------------------------------------------------------------ errno */

typedef struct {
    int code;
    const char *name;
} named_t;

#define E(x) {x, #x},
static const named_t ERRNOS[] = {
#ifdef EPERM
    E(EPERM)
#endif
#ifdef ENOENT
    E(ENOENT)
#endif
#ifdef EINTR
    E(EINTR)
#endif
#ifdef EIO
    E(EIO)
#endif
#ifdef EBADF
    E(EBADF)
#endif
#ifdef EAGAIN
    E(EAGAIN)
#endif
#ifdef ENOMEM
    E(ENOMEM)
#endif
#ifdef EACCES
    E(EACCES)
#endif
#ifdef EFAULT
    E(EFAULT)
#endif
#ifdef EBUSY
    E(EBUSY)
#endif
#ifdef EINVAL
    E(EINVAL)
#endif
#ifdef ENFILE
    E(ENFILE)
#endif
#ifdef EMFILE
    E(EMFILE)
#endif
#ifdef ENOSPC
    E(ENOSPC)
#endif
#ifdef EPIPE
    E(EPIPE)
#endif
#ifdef ERANGE
    E(ERANGE)
#endif
#ifdef ENOSYS
    E(ENOSYS)
#endif
#ifdef ENOTSOCK
    E(ENOTSOCK)
#endif
#ifdef EDESTADDRREQ
    E(EDESTADDRREQ)
#endif
#ifdef EMSGSIZE
    E(EMSGSIZE)
#endif
#ifdef EPROTOTYPE
    E(EPROTOTYPE)
#endif
#ifdef ENOPROTOOPT
    E(ENOPROTOOPT)
#endif
#ifdef EPROTONOSUPPORT
    E(EPROTONOSUPPORT)
#endif
#ifdef EOPNOTSUPP
    E(EOPNOTSUPP)
#endif
#ifdef EAFNOSUPPORT
    E(EAFNOSUPPORT)
#endif
#ifdef EADDRINUSE
    E(EADDRINUSE)
#endif
#ifdef EADDRNOTAVAIL
    E(EADDRNOTAVAIL)
#endif
#ifdef ENETDOWN
    E(ENETDOWN)
#endif
#ifdef ENETUNREACH
    E(ENETUNREACH)
#endif
#ifdef ENETRESET
    E(ENETRESET)
#endif
#ifdef ECONNABORTED
    E(ECONNABORTED)
#endif
#ifdef ECONNRESET
    E(ECONNRESET)
#endif
#ifdef ENOBUFS
    E(ENOBUFS)
#endif
#ifdef EISCONN
    E(EISCONN)
#endif
#ifdef ENOTCONN
    E(ENOTCONN)
#endif
#ifdef ESHUTDOWN
    E(ESHUTDOWN)
#endif
#ifdef ETIMEDOUT
    E(ETIMEDOUT)
#endif
#ifdef ECONNREFUSED
    E(ECONNREFUSED)
#endif
#ifdef EHOSTDOWN
    E(EHOSTDOWN)
#endif
#ifdef EHOSTUNREACH
    E(EHOSTUNREACH)
#endif
#ifdef EALREADY
    E(EALREADY)
#endif
#ifdef EINPROGRESS
    E(EINPROGRESS)
#endif
#ifdef EPROTO
    E(EPROTO)
#endif
#ifdef EILSEQ
    E(EILSEQ)
#endif
};
#undef E

const char *dut_errno_name(int err)
{
    for (size_t i = 0; i < sizeof ERRNOS / sizeof ERRNOS[0]; i++) {
        if (ERRNOS[i].code == err) {
            return ERRNOS[i].name;
        }
    }
    return NULL;
}

cJSON *dut_errno_json(int err)
{
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "code", err);
    if (err == 0) {
        cJSON_AddNullToObject(o, "name");
        cJSON_AddNullToObject(o, "msg");
        return o;
    }
    const char *name = dut_errno_name(err);
    if (name) {
        cJSON_AddStringToObject(o, "name", name);
    } else {
        cJSON_AddNullToObject(o, "name");
    }
    const char *msg = strerror(err);
    if (msg && dut_utf8_valid((const uint8_t *)msg, strlen(msg))) {
        cJSON_AddStringToObject(o, "msg", msg);
    } else {
        cJSON_AddNullToObject(o, "msg");
    }
    return o;
}

/* mbedTLS x509.h MBEDTLS_X509_BADCERT_* (the numbers are stable across mbedTLS 2.x and 3.x) */
static const named_t VERIFY_FLAGS[] = {
    {0x01, "MBEDTLS_X509_BADCERT_EXPIRED"},   {0x02, "MBEDTLS_X509_BADCERT_REVOKED"},
    {0x04, "MBEDTLS_X509_BADCERT_CN_MISMATCH"}, {0x08, "MBEDTLS_X509_BADCERT_NOT_TRUSTED"},
    {0x10, "MBEDTLS_X509_BADCRL_NOT_TRUSTED"}, {0x20, "MBEDTLS_X509_BADCRL_EXPIRED"},
    {0x40, "MBEDTLS_X509_BADCERT_MISSING"},   {0x80, "MBEDTLS_X509_BADCERT_SKIP_VERIFY"},
    {0x100, "MBEDTLS_X509_BADCERT_OTHER"},    {0x200, "MBEDTLS_X509_BADCERT_FUTURE"},
    {0x400, "MBEDTLS_X509_BADCRL_FUTURE"},    {0x800, "MBEDTLS_X509_BADCERT_KEY_USAGE"},
    {0x1000, "MBEDTLS_X509_BADCERT_EXT_KEY_USAGE"}, {0x2000, "MBEDTLS_X509_BADCERT_NS_CERT_TYPE"},
    {0x4000, "MBEDTLS_X509_BADCERT_BAD_MD"},  {0x8000, "MBEDTLS_X509_BADCERT_BAD_PK"},
    {0x10000, "MBEDTLS_X509_BADCERT_BAD_KEY"}, {0x20000, "MBEDTLS_X509_BADCRL_BAD_MD"},
    {0x40000, "MBEDTLS_X509_BADCRL_BAD_PK"},  {0x80000, "MBEDTLS_X509_BADCRL_BAD_KEY"},
};

cJSON *dut_verify_flags_json(uint32_t flags)
{
    char hex[16];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "code", (double)flags);
    dut_hex(hex, sizeof hex, flags);
    cJSON_AddStringToObject(o, "hex", hex);
    cJSON *names = cJSON_AddArrayToObject(o, "names");
    uint32_t known = 0;
    for (size_t i = 0; i < sizeof VERIFY_FLAGS / sizeof VERIFY_FLAGS[0]; i++) {
        if (flags & (uint32_t)VERIFY_FLAGS[i].code) {
            cJSON_AddItemToArray(names, cJSON_CreateString(VERIFY_FLAGS[i].name));
        }
        known |= (uint32_t)VERIFY_FLAGS[i].code;
    }
    if (flags & ~known) {
        char bits[32];
        snprintf(bits, sizeof bits, "0x%lx", (unsigned long)(flags & ~known));
        cJSON_AddItemToArray(names, cJSON_CreateString(bits));
    }
    return o;
}

static const char *const RC311[] = {
    "MQTT_CONNECTION_ACCEPTED", "MQTT_CONNECTION_REFUSE_PROTOCOL", "MQTT_CONNECTION_REFUSE_ID_REJECTED",
    "MQTT_CONNECTION_REFUSE_SERVER_UNAVAILABLE", "MQTT_CONNECTION_REFUSE_BAD_USERNAME",
    "MQTT_CONNECTION_REFUSE_NOT_AUTHORIZED",
};

/* MQTT 5 reason codes, named as esp-mqtt's esp_mqtt5_reason_code_t */
static const named_t RC5[] = {
    {0x00, "MQTT5_SUCCESS"}, {0x04, "MQTT5_DISCONNECT_WITH_WILL"}, {0x10, "MQTT5_NO_MATCHING_SUBSCRIBERS"},
    {0x11, "MQTT5_NO_SUBSCRIPTION_EXISTED"}, {0x18, "MQTT5_CONTINUE_AUTHENTICATION"}, {0x19, "MQTT5_REAUTHENTICATE"},
    {0x80, "MQTT5_UNSPECIFIED_ERROR"}, {0x81, "MQTT5_MALFORMED_PACKET"}, {0x82, "MQTT5_PROTOCOL_ERROR"},
    {0x83, "MQTT5_IMPLEMENT_SPECIFIC_ERROR"}, {0x84, "MQTT5_UNSUPPORTED_PROTOCOL_VER"},
    {0x85, "MQTT5_INVALID_CLIENT_ID"}, {0x86, "MQTT5_BAD_USERNAME_OR_PWD"}, {0x87, "MQTT5_NOT_AUTHORIZED"},
    {0x88, "MQTT5_SERVER_UNAVAILABLE"}, {0x89, "MQTT5_SERVER_BUSY"}, {0x8A, "MQTT5_BANNED"},
    {0x8B, "MQTT5_SERVER_SHUTTING_DOWN"}, {0x8C, "MQTT5_BAD_AUTH_METHOD"}, {0x8D, "MQTT5_KEEP_ALIVE_TIMEOUT"},
    {0x8E, "MQTT5_SESSION_TAKEN_OVER"}, {0x8F, "MQTT5_TOPIC_FILTER_INVALID"}, {0x90, "MQTT5_TOPIC_NAME_INVALID"},
    {0x91, "MQTT5_PACKET_IDENTIFIER_IN_USE"}, {0x92, "MQTT5_PACKET_IDENTIFIER_NOT_FOUND"},
    {0x93, "MQTT5_RECEIVE_MAXIMUM_EXCEEDED"}, {0x94, "MQTT5_TOPIC_ALIAS_INVALID"}, {0x95, "MQTT5_PACKET_TOO_LARGE"},
    {0x96, "MQTT5_MESSAGE_RATE_TOO_HIGH"}, {0x97, "MQTT5_QUOTA_EXCEEDED"}, {0x98, "MQTT5_ADMINISTRATIVE_ACTION"},
    {0x99, "MQTT5_PAYLOAD_FORMAT_INVALID"}, {0x9A, "MQTT5_RETAIN_NOT_SUPPORT"}, {0x9B, "MQTT5_QOS_NOT_SUPPORT"},
    {0x9C, "MQTT5_USE_ANOTHER_SERVER"}, {0x9D, "MQTT5_SERVER_MOVED"}, {0x9E, "MQTT5_SHARED_SUBSCR_NOT_SUPPORTED"},
    {0x9F, "MQTT5_CONNECTION_RATE_EXCEEDED"}, {0xA0, "MQTT5_MAXIMUM_CONNECT_TIME"},
    {0xA1, "MQTT5_SUBSCRIBE_IDENTIFIER_NOT_SUPPORT"}, {0xA2, "MQTT5_WILDCARD_SUBSCRIBE_NOT_SUPPORT"},
};

const char *dut_connect_rc_name(int code, bool v5)
{
    /* esp-mqtt puts the raw MQTT 5 reason code into connect_return_code; 0 reads the same in both */
    if (!v5 || code == 0) {
        if (code >= 0 && code < (int)(sizeof RC311 / sizeof RC311[0])) {
            return RC311[code];
        }
        if (!v5 && code < 0x80) {
            return NULL;
        }
    }
    for (size_t i = 0; i < sizeof RC5 / sizeof RC5[0]; i++) {
        if (RC5[i].code == code) {
            return RC5[i].name;
        }
    }
    return NULL;
}

const char *dut_error_type_name(int type)
{
    switch (type) {
    case MQTT_ERROR_TYPE_NONE:
        return "MQTT_ERROR_TYPE_NONE";
    case MQTT_ERROR_TYPE_TCP_TRANSPORT:
        return "MQTT_ERROR_TYPE_TCP_TRANSPORT";
    case MQTT_ERROR_TYPE_CONNECTION_REFUSED:
        return "MQTT_ERROR_TYPE_CONNECTION_REFUSED";
    case MQTT_ERROR_TYPE_SUBSCRIBE_FAILED:
        return "MQTT_ERROR_TYPE_SUBSCRIBE_FAILED";
    default:
        return "MQTT_ERROR_TYPE_UNKNOWN";
    }
}

const char *dut_event_name(int id)
{
    switch (id) {
    case MQTT_EVENT_ERROR:
        return "MQTT_EVENT_ERROR";
    case MQTT_EVENT_CONNECTED:
        return "MQTT_EVENT_CONNECTED";
    case MQTT_EVENT_DISCONNECTED:
        return "MQTT_EVENT_DISCONNECTED";
    case MQTT_EVENT_SUBSCRIBED:
        return "MQTT_EVENT_SUBSCRIBED";
    case MQTT_EVENT_UNSUBSCRIBED:
        return "MQTT_EVENT_UNSUBSCRIBED";
    case MQTT_EVENT_PUBLISHED:
        return "MQTT_EVENT_PUBLISHED";
    case MQTT_EVENT_DATA:
        return "MQTT_EVENT_DATA";
    case MQTT_EVENT_BEFORE_CONNECT:
        return "MQTT_EVENT_BEFORE_CONNECT";
    case MQTT_EVENT_DELETED:
        return "MQTT_EVENT_DELETED";
    default:
        return "MQTT_USER_EVENT";
    }
}

const char *dut_protocol_ver_name(int ver)
{
    switch (ver) {
    case MQTT_PROTOCOL_V_3_1:
        return "3.1";
    case MQTT_PROTOCOL_V_3_1_1:
        return "3.1.1";
    case MQTT_PROTOCOL_V_5:
        return "5";
    default:
        return NULL;
    }
}

cJSON *dut_error_handle_json(const esp_mqtt_error_codes_t *e, int protocol_ver)
{
    char hex[16];
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "error_type", dut_error_type_name(e->error_type));
    cJSON_AddNumberToObject(o, "error_type_id", e->error_type);

    cJSON *tls = cJSON_AddObjectToObject(o, "esp_tls_last_esp_err");
    cJSON_AddNumberToObject(tls, "code", e->esp_tls_last_esp_err);
    dut_hex(hex, sizeof hex, (uint32_t)e->esp_tls_last_esp_err);
    cJSON_AddStringToObject(tls, "hex", hex);
    cJSON_AddStringToObject(tls, "name", esp_err_to_name(e->esp_tls_last_esp_err));

    /* mbedTLS errors are negative; the protocol sends them positive (-0x2700 as 9984) */
    int stack = e->esp_tls_stack_err < 0 ? -e->esp_tls_stack_err : e->esp_tls_stack_err;
    cJSON *st = cJSON_AddObjectToObject(o, "esp_tls_stack_err");
    cJSON_AddNumberToObject(st, "code", stack);
    dut_hex(hex, sizeof hex, (uint32_t)stack);
    cJSON_AddStringToObject(st, "hex", hex);

    cJSON_AddItemToObject(o, "esp_tls_cert_verify_flags", dut_verify_flags_json((uint32_t)e->esp_tls_cert_verify_flags));

    cJSON *rc = cJSON_AddObjectToObject(o, "connect_return_code");
    cJSON_AddNumberToObject(rc, "code", e->connect_return_code);
    const char *rc_name = dut_connect_rc_name((int)e->connect_return_code, protocol_ver == MQTT_PROTOCOL_V_5);
    if (rc_name) {
        cJSON_AddStringToObject(rc, "name", rc_name);
    } else {
        char buf[24];
        snprintf(buf, sizeof buf, "REASON_0x%02x", (unsigned)e->connect_return_code);
        cJSON_AddStringToObject(rc, "name", buf);
    }

    cJSON_AddItemToObject(o, "esp_transport_sock_errno", dut_errno_json(e->esp_transport_sock_errno));
    return o;
}
