/*
 * UDP sockets: address parsing, batched receive (recvmmsg) and batched send
 * (one sendmsg with UDP_SEGMENT for a run of equal-sized packets).
 */
#include <errno.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "qrpc/error.h"
#include "quic/internal.h"
#include "util/log.h"

#ifndef UDP_SEGMENT
#define UDP_SEGMENT 103
#endif
#ifndef SOL_UDP
#define SOL_UDP 17
#endif

/* Socket buffers: loopback loss came from full receive buffers, so ask for
 * plenty; the kernel caps it at net.core.[rw]mem_max. */
#define QRPCI_SOCK_BUF (8 * 1024 * 1024)

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

int qrpci_sock_open(qrpci_sock *s, int family) {
  memset(s, 0, sizeof(*s));
  s->fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (s->fd < 0) {
    QRPCI_ERROR("udp: socket: %s", strerror(errno));
    return QRPC_ESYSTEM;
  }
  int v = QRPCI_SOCK_BUF;
  setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
  setsockopt(s->fd, SOL_SOCKET, SO_SNDBUF, &v, sizeof(v));
  if (family == AF_INET6) {
    int on = 1;
    setsockopt(s->fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
  }
  /* Probe GSO: a kernel without it rejects the option. */
  int seg = 1200;
  s->gso = setsockopt(s->fd, SOL_UDP, UDP_SEGMENT, &seg, sizeof(seg)) == 0;
  if (s->gso) {
    seg = 0;
    setsockopt(s->fd, SOL_UDP, UDP_SEGMENT, &seg, sizeof(seg));
  }
  return 0;
}

static void sock_writable_cb(evutil_socket_t fd, short what, void *arg) {
  qrpci_sock *s = arg;
  s->blocked = 0;
  s->on_writable(s->owner);
}

int qrpci_sock_watch(qrpci_sock *s, struct event_base *base,
                     void (*on_writable)(void *owner), void *owner) {
  s->on_writable = on_writable;
  s->owner = owner;
  s->write_ev = event_new(base, s->fd, EV_WRITE, sock_writable_cb, s);
  return s->write_ev ? 0 : QRPC_ENOMEM;
}

void qrpci_sock_close(qrpci_sock *s) {
  if (s->write_ev) event_free(s->write_ev);
  s->write_ev = NULL;
  if (s->fd >= 0) close(s->fd);
  s->fd = -1;
}

static int send_one(qrpci_sock *s, const struct sockaddr *to, socklen_t tolen,
                    const uint8_t *data, size_t len, size_t segsize) {
  struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
  struct msghdr msg = {0};
  union {
    char buf[CMSG_SPACE(sizeof(uint16_t))];
    struct cmsghdr align;
  } ctrl;
  if (!s->connected) {
    msg.msg_name = (void *)to;
    msg.msg_namelen = tolen;
  }
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  if (segsize && segsize < len) {
    memset(&ctrl, 0, sizeof(ctrl));
    msg.msg_control = ctrl.buf;
    msg.msg_controllen = sizeof(ctrl.buf);
    struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t seg = (uint16_t)segsize;
    memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
  }
  ssize_t n;
  do {
    n = sendmsg(s->fd, &msg, 0);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? -errno : 0;
}

int qrpci_sock_send(qrpci_sock *s, const struct sockaddr *to, socklen_t tolen,
                    const uint8_t *data, size_t len, size_t segsize) {
  if (len <= segsize) segsize = 0;
  if (segsize && !s->gso) {
    for (size_t off = 0; off < len; off += segsize) {
      size_t n = len - off < segsize ? len - off : segsize;
      int rv = qrpci_sock_send(s, to, tolen, data + off, n, 0);
      if (rv) return rv;
    }
    return 0;
  }
  int rv = send_one(s, to, tolen, data, len, segsize);
  if (rv == -EIO && segsize) {
    /* The device cannot offload segmentation: stop asking. */
    QRPCI_INFO("udp: UDP GSO unavailable on this path; sending singly");
    s->gso = 0;
    return qrpci_sock_send(s, to, tolen, data, len, segsize);
  }
  if (rv == -EAGAIN || rv == -EWOULDBLOCK || rv == -ENOBUFS) {
    /* The packets are lost to QUIC, which retransmits; stop writing on
     * this socket until the kernel has room again. */
    s->blocked = 1;
    if (s->write_ev) event_add(s->write_ev, NULL);
    return QRPC_EAGAIN;
  }
  if (rv) {
    /* QUIC recovers from a lost packet; an unreachable peer shows up as a
     * timeout, so this is not fatal to the connection. */
    QRPCI_DEBUG("udp: sendmsg: %s", strerror(-rv));
    return QRPC_ESYSTEM;
  }
  return 0;
}

int qrpci_sock_recv_batch(qrpci_sock *s, uint8_t (*bufs)[QRPCI_MAX_UDP],
                          qrpci_recv_fn fn, void *ctx) {
  struct mmsghdr msgs[QRPCI_RECV_BATCH];
  struct iovec iovs[QRPCI_RECV_BATCH];
  struct sockaddr_storage addrs[QRPCI_RECV_BATCH];
  size_t total = 0;
  while (total < QRPCI_RECV_BUDGET) {
    memset(msgs, 0, sizeof(msgs));
    for (int i = 0; i < QRPCI_RECV_BATCH; i++) {
      iovs[i].iov_base = bufs[i];
      iovs[i].iov_len = QRPCI_MAX_UDP;
      msgs[i].msg_hdr.msg_iov = &iovs[i];
      msgs[i].msg_hdr.msg_iovlen = 1;
      msgs[i].msg_hdr.msg_name = &addrs[i];
      msgs[i].msg_hdr.msg_namelen = sizeof(addrs[i]);
    }
    int n = recvmmsg(s->fd, msgs, QRPCI_RECV_BATCH, MSG_DONTWAIT, NULL);
    if (n < 0) {
      if (errno == EINTR) continue;
      if (errno == EAGAIN || errno == EWOULDBLOCK) return 0;
      /* ICMP errors surface here on connected sockets; they carry no
       * authenticated information, so QUIC ignores them. */
      if (errno == ECONNREFUSED || errno == EHOSTUNREACH ||
          errno == ENETUNREACH)
        continue;
      QRPCI_WARN("udp: recvmmsg: %s", strerror(errno));
      return QRPC_ESYSTEM;
    }
    for (int i = 0; i < n; i++)
      fn(ctx, (struct sockaddr *)&addrs[i], msgs[i].msg_hdr.msg_namelen,
         bufs[i], msgs[i].msg_len);
    total += (size_t)n;
    if (n < QRPCI_RECV_BATCH) return 0;
  }
  return 0;
}
