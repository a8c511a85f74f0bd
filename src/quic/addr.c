/* Addresses as users write them: "host:port" and "[v6]:port". */
#include "quic/addr.h"

#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"

int qrpci_parse_addr(const char *addr, char **host, char **port) {
  if (!addr || !*addr) return QRPC_EINVAL;
  const char *h, *he, *p;
  if (addr[0] == '[') {
    h = addr + 1;
    he = strchr(h, ']');
    if (!he || he[1] != ':') return QRPC_EINVAL;
    p = he + 2;
  } else {
    he = strrchr(addr, ':');
    if (!he) return QRPC_EINVAL;
    if (memchr(addr, ':', (size_t)(he - addr))) return QRPC_EINVAL;
    h = addr;
    p = he + 1;
  }
  if (he == h || !*p || strlen(p) > 5) return QRPC_EINVAL;
  for (const char *q = p; *q; q++)
    if (*q < '0' || *q > '9') return QRPC_EINVAL;
  if (atoi(p) > 65535) return QRPC_EINVAL;
  *host = strndup(h, (size_t)(he - h));
  *port = strdup(p);
  if (!*host || !*port) {
    free(*host);
    free(*port);
    return QRPC_ENOMEM;
  }
  return 0;
}
