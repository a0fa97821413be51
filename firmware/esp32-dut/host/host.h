/* The host platform of the device firmware: shared between platform_host.c and main_host.c. */
#pragma once

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "dut_core.h"

#define HOST_MAX_RESOLVE 32

typedef struct {
    int out_fd;              /* where protocol and log lines go (the pty master) */
    int keep_fds[2];         /* fds that survive a reset (re-exec): pty master and slave */
    char **argv;             /* for the re-exec */
    const char *exe;
    char reset_reason[32];
    uint8_t mac[6];
    int64_t time_offset;     /* SET_TIME: seconds added to the system clock */
    bool time_set;
    int nresolve;
    char names[HOST_MAX_RESOLVE][256];
    char addrs[HOST_MAX_RESOLVE][64];
} host_state_t;

extern host_state_t g_host;

/* The dut_platform_t of the host (write goes to g_host.out_fd). */
const dut_platform_t *host_platform(void);
/* Parse "NAME=IP" into the static table; false with a reason if malformed. */
bool host_add_resolve(const char *spec, const char **why);
/* Re-exec this binary as a device reboot with the given reset reason (keeps the pty). Returns only on failure. */
void host_reexec(const char *reset_reason);
