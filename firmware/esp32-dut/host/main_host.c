/*
 * mqtt-dut-host: the device firmware's core built for Linux. Opens a pseudo-terminal, prints the path of its
 * slave side alone on the first stdout line, and serves docs/dut-protocol.md on it until SIGTERM/SIGINT, like a
 * board on a serial port. RESET and CRASH re-exec the binary on the same pty (a new BOOT, uptime from 0).
 *
 *   mqtt-dut-host [--resolve NAME=IP]... [--max-line N] [--mac aa:bb:cc:dd:ee:ff]
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/signalfd.h>
#include <sys/syscall.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "dut_core.h"
#include "host.h"

#define ENV_PTY "DUT_HOST_PTY_FDS"
#define ENV_RESET "DUT_HOST_RESET_REASON"
#define ENV_MAC "DUT_HOST_MAC"
#define ENV_TIME "DUT_HOST_TIME_OFFSET"

static void usage(void)
{
    fprintf(stderr, "usage: mqtt-dut-host [--resolve NAME=IP]... [--max-line N] [--mac aa:bb:cc:dd:ee:ff]\n"
                    "Serves the mqtt-harness device protocol on a new pseudo-terminal whose path is printed alone\n"
                    "on the first line of stdout. Names resolve only through --resolve, 'localhost' and IP\n"
                    "literals: never through DNS.\n");
}

static bool parse_mac(const char *s, uint8_t mac[6])
{
    unsigned v[6];
    if (sscanf(s, "%2x:%2x:%2x:%2x:%2x:%2x", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5]) != 6) {
        return false;
    }
    for (int i = 0; i < 6; i++) {
        mac[i] = (uint8_t)v[i];
    }
    return true;
}

static int open_pty(int *slave_out, char *path, size_t path_len)
{
    int master = posix_openpt(O_RDWR | O_NOCTTY);
    if (master < 0 || grantpt(master) != 0 || unlockpt(master) != 0) {
        perror("mqtt-dut-host: posix_openpt");
        return -1;
    }
    if (ptsname_r(master, path, path_len) != 0) {
        perror("mqtt-dut-host: ptsname");
        return -1;
    }
    /* keep a slave fd open ourselves: the host may close and reopen the port between tests without the
     * master seeing a hang-up, as with a real UART */
    int slave = open(path, O_RDWR | O_NOCTTY);
    if (slave < 0) {
        perror("mqtt-dut-host: open slave");
        return -1;
    }
    struct termios t;
    if (tcgetattr(slave, &t) == 0) {
        cfmakeraw(&t); /* bytes as they are: no echo, no CR/LF translation, no line discipline */
        cfsetispeed(&t, B115200);
        cfsetospeed(&t, B115200);
        tcsetattr(slave, TCSANOW, &t);
    }
    *slave_out = slave;
    return master;
}

static void random_mac(uint8_t mac[6])
{
    /* locally administered, unicast: 02:xx:..; differs per process so default client ids do not collide */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint32_t x = (uint32_t)getpid() * 2654435761u ^ (uint32_t)ts.tv_nsec;
    mac[0] = 0x02;
    mac[1] = 0x00;
    for (int i = 2; i < 6; i++) {
        x = x * 1103515245u + 12345u;
        mac[i] = (uint8_t)(x >> 16);
    }
}

void host_reexec(const char *reset_reason)
{
    char fds[32], mac[32], off[32];
    snprintf(fds, sizeof fds, "%d,%d", g_host.keep_fds[0], g_host.keep_fds[1]);
    snprintf(mac, sizeof mac, "%02x:%02x:%02x:%02x:%02x:%02x", g_host.mac[0], g_host.mac[1], g_host.mac[2],
             g_host.mac[3], g_host.mac[4], g_host.mac[5]);
    snprintf(off, sizeof off, "%lld%s", (long long)g_host.time_offset, g_host.time_set ? ",set" : "");
    setenv(ENV_PTY, fds, 1);
    setenv(ENV_RESET, reset_reason, 1);
    setenv(ENV_MAC, mac, 1);
    setenv(ENV_TIME, off, 1); /* the RTC keeps the time across a software reset */
    /* every other descriptor (broker sockets, libmosquitto's socketpair) closes on exec, as a reset drops them */
#ifdef SYS_close_range
    if (syscall(SYS_close_range, 3u, ~0u, 4u /* CLOSE_RANGE_CLOEXEC */) != 0)
#endif
    {
        long max = sysconf(_SC_OPEN_MAX);
        for (int fd = 3; fd < (max > 0 ? max : 1024); fd++) {
            fcntl(fd, F_SETFD, FD_CLOEXEC);
        }
    }
    for (int i = 0; i < 2; i++) {
        fcntl(g_host.keep_fds[i], F_SETFD, 0);
    }
    execv(g_host.exe, g_host.argv);
    perror("mqtt-dut-host: re-exec for reset");
}

int main(int argc, char **argv)
{
    size_t max_line = DUT_DEFAULT_MAX_LINE;
    bool have_mac = false;
    memset(&g_host, 0, sizeof g_host);
    g_host.argv = argv;
    g_host.exe = "/proc/self/exe";
    for (int i = 1; i < argc; i++) {
        const char *why = NULL;
        if (strcmp(argv[i], "--resolve") == 0 && i + 1 < argc) {
            if (!host_add_resolve(argv[++i], &why)) {
                fprintf(stderr, "mqtt-dut-host: --resolve %s: %s\n", argv[i], why);
                return 2;
            }
        } else if (strncmp(argv[i], "--resolve=", 10) == 0) {
            if (!host_add_resolve(argv[i] + 10, &why)) {
                fprintf(stderr, "mqtt-dut-host: %s: %s\n", argv[i], why);
                return 2;
            }
        } else if (strcmp(argv[i], "--max-line") == 0 && i + 1 < argc) {
            long v = strtol(argv[++i], NULL, 10);
            if (v < DUT_MIN_MAX_LINE || v > 1 << 20) {
                fprintf(stderr, "mqtt-dut-host: --max-line must be %d to %d\n", DUT_MIN_MAX_LINE, 1 << 20);
                return 2;
            }
            max_line = (size_t)v;
        } else if (strcmp(argv[i], "--mac") == 0 && i + 1 < argc) {
            if (!parse_mac(argv[++i], g_host.mac)) {
                fprintf(stderr, "mqtt-dut-host: --mac wants aa:bb:cc:dd:ee:ff\n");
                return 2;
            }
            have_mac = true;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage();
            return 0;
        } else {
            usage();
            return 2;
        }
    }

    /* signals arrive on a signalfd in the main loop; every thread (libmosquitto's, the shim's) blocks them */
    sigset_t mask;
    sigemptyset(&mask);
    sigaddset(&mask, SIGTERM);
    sigaddset(&mask, SIGINT);
    sigprocmask(SIG_BLOCK, &mask, NULL);
    signal(SIGPIPE, SIG_IGN);
    int sfd = signalfd(-1, &mask, SFD_CLOEXEC);

    const char *inherited = getenv(ENV_PTY);
    int master = -1, slave = -1;
    if (inherited && sscanf(inherited, "%d,%d", &master, &slave) == 2 && fcntl(master, F_GETFD) >= 0) {
        /* after RESET/CRASH: same pty, nothing printed (the path was announced at the first start) */
        const char *r = getenv(ENV_RESET);
        snprintf(g_host.reset_reason, sizeof g_host.reset_reason, "%s", r ? r : "ESP_RST_SW");
        const char *m = getenv(ENV_MAC);
        have_mac = m && parse_mac(m, g_host.mac);
        const char *t = getenv(ENV_TIME);
        if (t) {
            g_host.time_offset = strtoll(t, NULL, 10);
            g_host.time_set = strstr(t, ",set") != NULL;
        }
    } else {
        char path[128];
        master = open_pty(&slave, path, sizeof path);
        if (master < 0) {
            return 1;
        }
        snprintf(g_host.reset_reason, sizeof g_host.reset_reason, "ESP_RST_POWERON");
        printf("%s\n", path);
        fflush(stdout);
    }
    unsetenv(ENV_PTY);
    unsetenv(ENV_RESET);
    unsetenv(ENV_MAC);
    unsetenv(ENV_TIME);
    fcntl(master, F_SETFD, FD_CLOEXEC);
    fcntl(slave, F_SETFD, FD_CLOEXEC);
    fcntl(master, F_SETFL, fcntl(master, F_GETFL) | O_NONBLOCK);
    if (!have_mac) {
        random_mac(g_host.mac);
    }
    g_host.out_fd = master;
    g_host.keep_fds[0] = master;
    g_host.keep_fds[1] = slave;

    if (!dut_core_init(host_platform(), max_line)) {
        fprintf(stderr, "mqtt-dut-host: out of memory\n");
        return 1;
    }
    dut_core_banner();

    struct pollfd fds[2] = {{.fd = master, .events = POLLIN}, {.fd = sfd, .events = POLLIN}};
    int status = 0;
    for (;;) {
        int r = poll(fds, sfd >= 0 ? 2 : 1, -1);
        if (r < 0) {
            if (errno == EINTR) {
                continue;
            }
            perror("mqtt-dut-host: poll");
            status = 1;
            break;
        }
        if (sfd >= 0 && (fds[1].revents & POLLIN)) {
            break;
        }
        if (fds[0].revents & (POLLIN | POLLHUP | POLLERR)) {
            uint8_t buf[4096];
            ssize_t n = read(master, buf, sizeof buf);
            if (n > 0) {
                dut_core_feed(buf, (size_t)n);
            } else if (n < 0 && errno != EAGAIN && errno != EINTR && errno != EIO) {
                perror("mqtt-dut-host: read");
                status = 1;
                break;
            } else if (n <= 0 && (fds[0].revents & POLLHUP)) {
                /* we hold a slave fd, so this should not happen; do not spin if it does */
                struct timespec ts = {0, 20 * 1000000L};
                nanosleep(&ts, NULL);
            }
        }
    }
    dut_core_deinit();
    close(slave);
    close(master);
    return status;
}
