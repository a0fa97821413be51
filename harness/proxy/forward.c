/* The proxy's native forwarder: moves bytes both ways between two connected TCP sockets, nothing else.
 *
 * Used when a proxy has nothing to decode or record (no rules, no faults, no tap); the Python event
 * loop then costs more per chunk than the forwarding itself. Built by harness/proxy/native.py with the
 * system C compiler and called through ctypes, one call per connection in its own thread (ctypes
 * releases the GIL for the call). The caller owns the sockets: nothing here closes them.
 *
 * ACKs: paho and mosquitto leave Nagle on, so a small write of theirs waits until their previous one
 * is ACKed. Left to the kernel, our ACK may wait ~40 ms for data to ride on and the peer stalls that
 * long (what socat does). ACKing every read at once keeps the peer from ever stalling but also from
 * coalescing its writes, which costs both sides. So a read is quick-ACKed at the loop's first wake-up
 * ack_delay_us or more after it (epoll's timeout is in ms): one ACK per socket per delay at most, whether
 * or not traffic back has carried one already. The delay trades CPU for the tail of a round trip that
 * waits on that ACK (bench/README.md, "Profile: proxy": at 1 ms, paho's p99 +1.2 ms; at 0.2 ms, 45 % more
 * CPU per message).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { CLIENT_CLOSED = 1, BROKER_CLOSED = 2, CLIENT_FAILED = 3, BROKER_FAILED = 4, STOPPED = 5, SETUP_FAILED = 6 };
#define CHUNK (256 * 1024)

struct end {
    int fd;
    int eof;            /* read 0: no more reads from it */
    int ack_due;        /* a read not yet quick-ACKed */
    int64_t ack_at_us;  /* when to ACK it */
    char *pending;      /* bytes read from the other end that this socket has not taken yet (reads land here) */
    size_t len, off;
};

static int64_t now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static int quick_ack(int fd) {
    int one = 1;
    return setsockopt(fd, IPPROTO_TCP, TCP_QUICKACK, &one, sizeof one);
}

/* Write what `to` still owes; 0 when done or it would block, -1 on an error. */
static int flush(struct end *to) {
    while (to->off < to->len) {
        ssize_t w = send(to->fd, to->pending + to->off, to->len - to->off, MSG_NOSIGNAL);
        if (w < 0) {
            if (errno == EINTR) continue;
            return (errno == EAGAIN || errno == EWOULDBLOCK) ? 0 : -1;
        }
        to->off += (size_t)w;
    }
    to->len = to->off = 0;
    return 0;
}

/* Interest for end i: read while the other end has nothing pending, write while this one has. */
static int watch(int ep, struct end *e, int i, int op) {
    struct end *other = &e[1 - i];
    struct epoll_event ev = {.events = 0, .data.u32 = (uint32_t)i};
    if (!e[i].eof && other->len == 0) ev.events |= EPOLLIN;
    if (e[i].len) ev.events |= EPOLLOUT;
    return epoll_ctl(ep, op, e[i].fd, &ev);
}

int mh_forward(int client_fd, int broker_fd, int stop_fd, int ack_delay_us, uint64_t *moved, int *error) {
    struct end e[2];
    memset(e, 0, sizeof e);
    e[0].fd = client_fd;
    e[1].fd = broker_fd;
    moved[0] = moved[1] = 0;
    *error = 0;
    int result = SETUP_FAILED;
    e[0].pending = malloc(CHUNK);
    e[1].pending = malloc(CHUNK);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (!e[0].pending || !e[1].pending || ep < 0) goto out;
    for (int i = 0; i < 2; i++) {
        int flags = fcntl(e[i].fd, F_GETFL);
        if (flags < 0 || fcntl(e[i].fd, F_SETFL, flags | O_NONBLOCK) < 0 || watch(ep, e, i, EPOLL_CTL_ADD) < 0)
            goto out;
    }
    struct epoll_event sev = {.events = EPOLLIN, .data.u32 = 2};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, stop_fd, &sev) < 0) goto out;

    int closing = 0; /* CLIENT_CLOSED or BROKER_CLOSED once one end sent FIN: finish writes, then return */
    for (;;) {
        int timeout = -1;
        if (ack_delay_us > 0) {
            int64_t t = now_us();
            for (int i = 0; i < 2; i++)
                if (e[i].ack_due) {
                    int64_t ms = (e[i].ack_at_us - t + 999) / 1000;
                    if (ms < 0) ms = 0;
                    if (timeout < 0 || ms < timeout) timeout = (int)ms;
                }
        }
        struct epoll_event evs[3];
        int n = epoll_wait(ep, evs, 3, timeout);
        if (n < 0) {
            if (errno == EINTR) continue;
            *error = errno;
            result = CLIENT_FAILED;
            goto out;
        }
        for (int k = 0; k < n; k++) {
            uint32_t i = evs[k].data.u32;
            if (i == 2) {
                result = STOPPED;
                goto out;
            }
            struct end *from = &e[i], *to = &e[1 - i];
            if (evs[k].events & EPOLLOUT) { /* `from` can take more of what it owes */
                if (flush(from) < 0) {
                    *error = errno;
                    result = i == 0 ? CLIENT_FAILED : BROKER_FAILED;
                    goto out;
                }
                if (from->len == 0 && (watch(ep, e, (int)i, EPOLL_CTL_MOD) < 0 || watch(ep, e, 1 - (int)i, EPOLL_CTL_MOD) < 0))
                    goto out;
            }
            if (!(evs[k].events & (EPOLLIN | EPOLLHUP | EPOLLERR)) || from->eof || to->len) continue;
            ssize_t r = recv(from->fd, to->pending, CHUNK, 0);
            if (r < 0) {
                if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) continue;
                *error = errno;
                result = i == 0 ? CLIENT_FAILED : BROKER_FAILED;
                goto out;
            }
            if (r == 0) {
                from->eof = 1;
                if (!closing) closing = i == 0 ? CLIENT_CLOSED : BROKER_CLOSED;
                if (watch(ep, e, (int)i, EPOLL_CTL_MOD) < 0) goto out;
                continue;
            }
            moved[i] += (uint64_t)r;
            if (ack_delay_us == 0) {
                quick_ack(from->fd);
            } else if (ack_delay_us > 0 && !from->ack_due) {
                from->ack_due = 1;
                from->ack_at_us = now_us() + ack_delay_us;
            }
            to->len = (size_t)r; /* read straight into `to`'s (empty) pending buffer: no copy */
            to->off = 0;
            if (flush(to) < 0) {
                *error = errno;
                result = i == 0 ? BROKER_FAILED : CLIENT_FAILED;
                goto out;
            }
            if (to->len && (watch(ep, e, 1 - (int)i, EPOLL_CTL_MOD) < 0 || watch(ep, e, (int)i, EPOLL_CTL_MOD) < 0))
                goto out;
        }
        if (ack_delay_us > 0) {
            int64_t t = now_us();
            for (int i = 0; i < 2; i++)
                if (e[i].ack_due && t >= e[i].ack_at_us) {
                    e[i].ack_due = 0;
                    quick_ack(e[i].fd);
                }
        }
        if (closing && e[0].len == 0 && e[1].len == 0) {
            result = closing;
            goto out;
        }
    }
out:
    if (result == SETUP_FAILED && !*error) *error = errno;
    if (ep >= 0) close(ep);
    free(e[0].pending);
    free(e[1].pending);
    return result;
}
