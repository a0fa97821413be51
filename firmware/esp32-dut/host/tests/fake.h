/* Test doubles: a scripted esp-mqtt (no network, events delivered synchronously from the calling thread) and a
 * platform that captures the lines the core writes. Used by the cmocka tests and the fuzz target. */
#pragma once

#include <stdbool.h>
#include <stddef.h>

#include "cJSON.h"
#include "dut_core.h"
#include "mqtt_client.h"

/* ---- platform */
const dut_platform_t *fake_platform(void);
void fake_platform_reset(void);
int fake_nlines(void);
const char *fake_line(int i);
/* The i-th line parsed: returns its JSON body (caller deletes), with id (-1 for '-') and kind. NULL if the
 * line is not a protocol line. */
cJSON *fake_parse(int i, long *id, char kind[16]);
/* The last line of the given kind ("OK", "ERR", "EVT", "BOOT"), parsed; NULL if none. */
cJSON *fake_last(const char *kind, long *id);
int fake_count(const char *kind);
extern int fake_reboots;
extern char fake_crash_reason[32];
extern bool fake_silent; /* fuzzing: do not keep lines */

/* ---- esp-mqtt */
void fake_mqtt_reset(void);
/* The config of the last esp_mqtt_client_init / esp_mqtt_set_config (pointers as the core passed them). */
const esp_mqtt_client_config_t *fake_mqtt_last_config(void);
int fake_mqtt_clients(void); /* live clients */
/* Deliver an event to the registered handlers of the live client. */
void fake_mqtt_emit(esp_mqtt_event_t *ev);
extern bool fake_mqtt_connect_on_start; /* START dispatches BEFORE_CONNECT + CONNECTED (default true) */
extern int fake_mqtt_buffer;            /* DATA split size of the echo (default 1024) */
