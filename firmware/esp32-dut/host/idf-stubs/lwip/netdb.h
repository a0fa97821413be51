/* Stand-in for ESP-IDF 5.x components/lwip lwip/src/include/lwip/netdb.h: getaddrinfo & co. as the host's POSIX ones. */
#pragma once

/* struct addrinfo has the POSIX member names in lwIP too; the EAI_* values differ (lwIP: 200..), names do not. */
#include <netdb.h>

#include "lwip/sockets.h"
