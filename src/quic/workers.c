/*
 * Worker groups (workers.h): the reuseport sockets of one server address,
 * in the order the kernel numbers them, and the classic BPF program that
 * steers short-header packets by the worker byte of their connection id.
 */
#include "quic/workers.h"

#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "qrpc/error.h"
#include "quic/addr.h"
#include "quic/endpoint.h"
#include "quic/udp.h"
#include "util/log.h"

#ifndef SO_ATTACH_REUSEPORT_CBPF
#define SO_ATTACH_REUSEPORT_CBPF 51
#endif

int qrpci_workers_no_bpf;

struct qrpci_wgroup {
  size_t n;
  int bpf;
  qrpci_sock *socks;   /* n, bound in index order */
  qrpc_endpoint **eps; /* n; NULL until a worker listens */
};

/* The kernel runs this on the UDP payload of each datagram for the group
 * and delivers it to the socket whose index it returns; an index past the
 * last socket makes it use its 4-tuple hash instead. */
static int attach_bpf(int fd) {
  struct sock_filter code[] = {
      /* A = first byte; a long header (form bit set) goes by hash. */
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 0),
      BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, 0x80, 2, 0),
      /* A short header: the worker byte of the destination id. */
      BPF_STMT(BPF_LD | BPF_B | BPF_ABS, 1 + QRPCI_WORKER_CID_BYTE),
      BPF_STMT(BPF_RET | BPF_A, 0),
      BPF_STMT(BPF_RET | BPF_K, 0xffffffffu),
  };
  struct sock_fprog prog;
  memset(&prog, 0, sizeof(prog)); /* its padding goes to the kernel too */
  prog.len = sizeof(code) / sizeof(code[0]);
  prog.filter = code;
  return setsockopt(fd, SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, &prog,
                    sizeof(prog));
}

static int resolve(const char *addr, struct sockaddr_storage *ss,
                   socklen_t *len) {
  char *host, *port;
  int rv = qrpci_parse_addr(addr, &host, &port);
  if (rv != 0) return rv;
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  int gai = getaddrinfo(host, port, &hints, &res);
  free(host);
  free(port);
  if (gai != 0 || !res || res->ai_addrlen > sizeof(*ss)) {
    QRPCI_ERROR("workers: cannot resolve %s: %s", addr,
                gai ? gai_strerror(gai) : "no address");
    if (res) freeaddrinfo(res);
    return QRPC_EINVAL;
  }
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = (socklen_t)res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

int qrpci_wgroup_new(const char *addr, size_t n, int want_bpf,
                     qrpci_wgroup **out) {
  if (!addr || !out || n == 0 || n > QRPCI_MAX_WORKERS) return QRPC_EINVAL;
  struct sockaddr_storage ss;
  socklen_t sslen;
  int rv = resolve(addr, &ss, &sslen);
  if (rv != 0) return rv;
  qrpci_wgroup *g = calloc(1, sizeof(*g));
  if (!g) return QRPC_ENOMEM;
  g->socks = calloc(n, sizeof(*g->socks));
  g->eps = calloc(n, sizeof(*g->eps));
  if (!g->socks || !g->eps) {
    free(g->socks);
    free(g->eps);
    free(g);
    return QRPC_ENOMEM;
  }
  for (size_t i = 0; i < n; i++) g->socks[i].fd = -1;
  g->n = n;
  for (size_t i = 0; i < n; i++) {
    if ((rv = qrpci_sock_open(&g->socks[i], ss.ss_family)) != 0) goto fail;
    int on = 1;
    if (setsockopt(g->socks[i].fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof(on)) !=
        0) {
      QRPCI_ERROR("workers: SO_REUSEPORT: %s", strerror(errno));
      rv = QRPC_ESYSTEM;
      goto fail;
    }
    if (bind(g->socks[i].fd, (struct sockaddr *)&ss, sslen) != 0) {
      rv = errno == EADDRINUSE ? QRPC_EADDRINUSE : QRPC_ESYSTEM;
      QRPCI_ERROR("workers: bind %s (worker %zu): %s", addr, i,
                  strerror(errno));
      goto fail;
    }
    if (i == 0) {
      /* Port 0 asked for a free port: the others join the one it got. */
      sslen = sizeof(ss);
      if (getsockname(g->socks[0].fd, (struct sockaddr *)&ss, &sslen) != 0) {
        rv = QRPC_ESYSTEM;
        goto fail;
      }
    }
  }
  if (want_bpf && n > 1) {
    if (attach_bpf(g->socks[0].fd) == 0) {
      g->bpf = 1;
    } else {
      QRPCI_WARN("workers: cannot attach the steering program (%s); "
                 "packets that reach the wrong worker are handed over",
                 strerror(errno));
    }
  }
  *out = g;
  return 0;
fail:
  qrpci_wgroup_free(g);
  return rv;
}

int qrpci_wgroup_bpf(const qrpci_wgroup *g) { return g->bpf; }
size_t qrpci_wgroup_size(const qrpci_wgroup *g) { return g->n; }

qrpc_endpoint *qrpci_wgroup_endpoint(qrpci_wgroup *g, size_t idx) {
  return idx < g->n ? g->eps[idx] : NULL;
}

void qrpci_wgroup_forget(qrpci_wgroup *g, size_t idx) {
  if (idx < g->n) g->eps[idx] = NULL;
}

int qrpci_wgroup_listen(qrpci_wgroup *g, size_t idx, qrpc_loop *loop,
                        qrpc_tls_config *tls, const qrpc_endpoint_opts *opts,
                        const qrpc_conn_callbacks *cbs, void *user_data,
                        qrpc_endpoint **out) {
  if (!g || idx >= g->n || !out) return QRPC_EINVAL;
  if (g->eps[idx]) return QRPC_ESTATE;
  /* The endpoint gets a descriptor of its own for the same socket: the
   * group's stays open, so the kernel's numbering never changes. */
  int fd = fcntl(g->socks[idx].fd, F_DUPFD_CLOEXEC, 0);
  if (fd < 0) return QRPC_ESYSTEM;
  qrpc_endpoint *ep;
  int rv = qrpci_endpoint_listen_fd(loop, fd, g->socks[idx].gso, tls, opts, cbs,
                                    user_data, g, idx, &ep);
  if (rv != 0) return rv;
  g->eps[idx] = ep;
  *out = ep;
  return 0;
}

void qrpci_wgroup_free(qrpci_wgroup *g) {
  if (!g) return;
  for (size_t i = 0; i < g->n; i++)
    if (g->socks[i].fd >= 0) qrpci_sock_close(&g->socks[i]);
  free(g->socks);
  free(g->eps);
  free(g);
}
