/* A scripted esp-mqtt for tests and fuzzing: no network, no threads; events are dispatched synchronously. */
#include <stdlib.h>
#include <string.h>

#include "fake.h"

ESP_EVENT_DEFINE_BASE(MQTT_EVENTS);

typedef struct {
    esp_event_handler_t fn;
    void *arg;
} handler_t;

struct esp_mqtt_client {
    handler_t h[4];
    int nh;
    bool started, connected, waiting;
    int next_id;
    esp_mqtt_client_config_t cfg;
    esp_mqtt_error_codes_t err;
};

static struct esp_mqtt_client *s_live;
static int s_clients;
static esp_mqtt_client_config_t s_last;
bool fake_mqtt_connect_on_start = true;
int fake_mqtt_buffer = 1024;

void fake_mqtt_reset(void)
{
    fake_mqtt_connect_on_start = true;
    fake_mqtt_buffer = 1024;
    memset(&s_last, 0, sizeof s_last);
}

const esp_mqtt_client_config_t *fake_mqtt_last_config(void)
{
    return &s_last;
}

int fake_mqtt_clients(void)
{
    return s_clients;
}

static void emit(esp_mqtt_client_handle_t c, esp_mqtt_event_t *ev)
{
    ev->client = c;
    if (!ev->error_handle) {
        ev->error_handle = &c->err;
    }
    if (!ev->protocol_ver) {
        ev->protocol_ver = c->cfg.session.protocol_ver ? c->cfg.session.protocol_ver : MQTT_PROTOCOL_V_3_1_1;
    }
    for (int i = 0; i < c->nh; i++) {
        c->h[i].fn(c->h[i].arg, MQTT_EVENTS, ev->event_id, ev);
    }
}

void fake_mqtt_emit(esp_mqtt_event_t *ev)
{
    if (s_live) {
        emit(s_live, ev);
    }
}

static void simple(esp_mqtt_client_handle_t c, esp_mqtt_event_id_t id, int msg_id)
{
    esp_mqtt_event_t ev;
    memset(&ev, 0, sizeof ev);
    ev.event_id = id;
    ev.msg_id = msg_id;
    emit(c, &ev);
}

esp_mqtt_client_handle_t esp_mqtt_client_init(const esp_mqtt_client_config_t *config)
{
    if (config->broker.address.uri && !strstr(config->broker.address.uri, "://")) {
        return NULL;
    }
    esp_mqtt_client_handle_t c = calloc(1, sizeof *c);
    if (!c) {
        return NULL;
    }
    c->cfg = *config;
    c->next_id = 1;
    s_last = *config;
    s_live = c;
    s_clients++;
    return c;
}

esp_err_t esp_mqtt_set_config(esp_mqtt_client_handle_t c, const esp_mqtt_client_config_t *config)
{
    if (!c) {
        return ESP_ERR_INVALID_ARG;
    }
    if (config->broker.address.uri && !strstr(config->broker.address.uri, "://")) {
        return ESP_ERR_INVALID_ARG;
    }
    c->cfg = *config;
    s_last = *config;
    return ESP_OK;
}

esp_err_t esp_mqtt_client_set_uri(esp_mqtt_client_handle_t c, const char *uri)
{
    return c && strstr(uri, "://") ? ESP_OK : ESP_FAIL;
}

esp_err_t esp_mqtt_client_register_event(esp_mqtt_client_handle_t c, esp_mqtt_event_id_t event,
                                         esp_event_handler_t fn, void *arg)
{
    (void)event;
    if (!c || c->nh >= 4) {
        return ESP_ERR_NO_MEM;
    }
    c->h[c->nh].fn = fn;
    c->h[c->nh].arg = arg;
    c->nh++;
    return ESP_OK;
}

esp_err_t esp_mqtt_client_unregister_event(esp_mqtt_client_handle_t c, esp_mqtt_event_id_t event,
                                           esp_event_handler_t fn)
{
    (void)event;
    (void)fn;
    if (c) {
        c->nh = 0;
    }
    return ESP_OK;
}

esp_err_t esp_mqtt_client_start(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return ESP_ERR_INVALID_ARG;
    }
    if (c->started) {
        return ESP_FAIL;
    }
    c->started = true;
    if (fake_mqtt_connect_on_start) {
        simple(c, MQTT_EVENT_BEFORE_CONNECT, 0);
        c->connected = true;
        esp_mqtt_event_t ev;
        memset(&ev, 0, sizeof ev);
        ev.event_id = MQTT_EVENT_CONNECTED;
        ev.session_present = c->cfg.session.disable_clean_session;
        emit(c, &ev);
    }
    return ESP_OK;
}

esp_err_t esp_mqtt_client_stop(esp_mqtt_client_handle_t c)
{
    if (!c || !c->started) {
        return ESP_FAIL;
    }
    c->started = c->connected = c->waiting = false;
    return ESP_OK;
}

esp_err_t esp_mqtt_client_disconnect(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return ESP_ERR_INVALID_ARG;
    }
    if (c->connected) {
        c->connected = false;
        c->waiting = true;
        simple(c, MQTT_EVENT_DISCONNECTED, 0);
    }
    return ESP_OK;
}

esp_err_t esp_mqtt_client_reconnect(esp_mqtt_client_handle_t c)
{
    return c && c->waiting ? ESP_OK : ESP_FAIL;
}

esp_err_t esp_mqtt_client_destroy(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return ESP_ERR_INVALID_ARG;
    }
    if (s_live == c) {
        s_live = NULL;
    }
    s_clients--;
    free(c);
    return ESP_OK;
}

/* "echo/..." topics come back as DATA, split like esp-mqtt splits by its buffer */
static void echo(esp_mqtt_client_handle_t c, const char *topic, const char *data, int len, int qos, int id)
{
    int off = 0;
    do {
        int n = len - off < fake_mqtt_buffer ? len - off : fake_mqtt_buffer;
        esp_mqtt_event_t ev;
        memset(&ev, 0, sizeof ev);
        ev.event_id = MQTT_EVENT_DATA;
        ev.msg_id = qos ? id : 0;
        ev.qos = qos;
        if (off == 0) {
            ev.topic = (char *)topic;
            ev.topic_len = (int)strlen(topic);
        }
        ev.data = len ? (char *)data + off : NULL;
        ev.data_len = n;
        ev.total_data_len = len;
        ev.current_data_offset = off;
        emit(c, &ev);
        off += n;
    } while (off < len);
}

int esp_mqtt_client_publish(esp_mqtt_client_handle_t c, const char *topic, const char *data, int len, int qos,
                            int retain)
{
    (void)retain;
    if (!c) {
        return -1;
    }
    if (len <= 0 && data) {
        len = (int)strlen(data);
    }
    if (!c->connected) {
        return qos ? c->next_id++ : -1;
    }
    int id = qos ? c->next_id++ : 0;
    if (qos) {
        simple(c, MQTT_EVENT_PUBLISHED, id);
    }
    if (strncmp(topic, "echo/", 5) == 0) {
        echo(c, topic, data, len, qos, id);
    }
    return id;
}

int esp_mqtt_client_enqueue(esp_mqtt_client_handle_t c, const char *topic, const char *data, int len, int qos,
                            int retain, bool store)
{
    if (qos == 0 && !store) {
        return -1;
    }
    return esp_mqtt_client_publish(c, topic, data, len, qos, retain);
}

int esp_mqtt_client_subscribe_multiple(esp_mqtt_client_handle_t c, const esp_mqtt_topic_t *list, int size)
{
    if (!c || !c->connected) {
        return -1;
    }
    char codes[16];
    for (int i = 0; i < size && i < 16; i++) {
        codes[i] = (char)(strcmp(list[i].filter, "#bad") == 0 ? 0x80 : list[i].qos);
    }
    int id = c->next_id++;
    esp_mqtt_event_t ev;
    memset(&ev, 0, sizeof ev);
    memset(&c->err, 0, sizeof c->err);
    for (int i = 0; i < size && i < 16; i++) {
        if ((unsigned char)codes[i] >= 0x80) {
            c->err.error_type = MQTT_ERROR_TYPE_SUBSCRIBE_FAILED;
        }
    }
    ev.event_id = MQTT_EVENT_SUBSCRIBED;
    ev.msg_id = id;
    ev.data = codes;
    ev.data_len = size < 16 ? size : 16;
    ev.total_data_len = ev.data_len;
    emit(c, &ev);
    return id;
}

int esp_mqtt_client_subscribe_single(esp_mqtt_client_handle_t c, const char *topic, int qos)
{
    esp_mqtt_topic_t t = {topic, qos};
    return esp_mqtt_client_subscribe_multiple(c, &t, 1);
}

int esp_mqtt_client_unsubscribe(esp_mqtt_client_handle_t c, const char *topic)
{
    (void)topic;
    if (!c || !c->connected) {
        return -1;
    }
    int id = c->next_id++;
    simple(c, MQTT_EVENT_UNSUBSCRIBED, id);
    return id;
}

int esp_mqtt_client_get_outbox_size(esp_mqtt_client_handle_t c)
{
    return c ? 0 : 0;
}

esp_mqtt_client_connection_state_t esp_mqtt_client_get_state(esp_mqtt_client_handle_t c)
{
    if (!c) {
        return MQTT_CLIENT_STATE_NOT_INITIALIZED;
    }
    if (!c->started) {
        return MQTT_CLIENT_STATE_NOT_STARTED;
    }
    return c->connected ? MQTT_CLIENT_STATE_CONNECTED : c->waiting ? MQTT_CLIENT_STATE_WAITING_RECONNECT
           : MQTT_CLIENT_STATE_DISCONNECTED;
}

/* user properties: a plain list */
struct mqtt5_user_property_list_t {
    int n;
    esp_mqtt5_user_property_item_t items[8];
};

esp_err_t esp_mqtt5_client_set_user_property(mqtt5_user_property_handle_t *up, esp_mqtt5_user_property_item_t item[],
                                             uint8_t n)
{
    if (!*up) {
        *up = calloc(1, sizeof **up);
    }
    for (uint8_t i = 0; i < n && (*up)->n < 8; i++) {
        (*up)->items[(*up)->n].key = strdup(item[i].key);
        (*up)->items[(*up)->n].value = strdup(item[i].value);
        (*up)->n++;
    }
    return ESP_OK;
}

esp_err_t esp_mqtt5_client_get_user_property(mqtt5_user_property_handle_t up, esp_mqtt5_user_property_item_t *item,
                                             uint8_t *n)
{
    if (!up || !*n) {
        return ESP_FAIL;
    }
    uint8_t i = 0;
    for (; i < *n && i < up->n; i++) {
        item[i].key = strdup(up->items[i].key);
        item[i].value = strdup(up->items[i].value);
    }
    *n = i;
    return ESP_OK;
}

uint8_t esp_mqtt5_client_get_user_property_count(mqtt5_user_property_handle_t up)
{
    return up ? (uint8_t)up->n : 0;
}

void esp_mqtt5_client_delete_user_property(mqtt5_user_property_handle_t up)
{
    if (!up) {
        return;
    }
    for (int i = 0; i < up->n; i++) {
        free((char *)up->items[i].key);
        free((char *)up->items[i].value);
    }
    free(up);
}
