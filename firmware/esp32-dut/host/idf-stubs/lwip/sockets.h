/* Stand-in for ESP-IDF 5.x components/lwip lwip/src/include/lwip/sockets.h: lwIP's BSD API as the host's POSIX one. */
#pragma once

/* With LWIP_COMPAT_SOCKETS (IDF's setting) socket/connect/select/getsockopt/inet_ntop have their POSIX names and
 * signatures; the host's declarations of them are used, so calls are checked against the same prototypes. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/select.h>
#include <sys/socket.h>
#include <sys/types.h>
