/*
 * UDP sockets: batched receive (recvmmsg) and batched send
 * (one sendmsg with UDP_SEGMENT for a run of equal-sized packets; on a
 * server's socket, the packets of all its connections in one sendmmsg per
 * loop turn).
 */
#include <errno.h>
#include <linux/sock_diag.h>
#include <netinet/in.h>
#include <netinet/udp.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "qrpc/error.h"
#include "quic/loop.h"
#include "quic/udp.h"
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
/* A server socket's send queue: a fan-out to many connections writes a
 * packet or two to each, and one system call per connection would cost
 * more than the packets. An entry is one GSO batch, so it always holds the
 * largest (a packet grown by PMTUD, or several), and the queue holds
 * several of those. A full queue leaves at once: in runs of 8 the
 * receivers start on a burst (a publish to 100 subscribers, a game tick
 * to every client) while the rest is still being encrypted. Against runs
 * of 64, alternating: fan-out 1 -> 100 paced at 1k msg/s p50 0.69-0.91x,
 * 1 -> 1000 at full speed 0.92-0.98x (docs/performance.md). */
#define QRPCI_TXQ_MSGS 8
#define QRPCI_TXQ_BYTES (256 * 1024)
_Static_assert(QRPCI_TXQ_BYTES >= 4 * QRPCI_GSO_MAX_BYTES,
               "a server's send queue holds several full GSO batches");

typedef union qrpci_segctl {
  char buf[CMSG_SPACE(sizeof(uint16_t))];
  struct cmsghdr align;
} qrpci_segctl;

struct qrpci_txq {
  size_t n, used;
  struct mmsghdr msgs[QRPCI_TXQ_MSGS];
  struct iovec iov[QRPCI_TXQ_MSGS];
  struct sockaddr_storage to[QRPCI_TXQ_MSGS];
  socklen_t tolen[QRPCI_TXQ_MSGS];
  size_t seg[QRPCI_TXQ_MSGS];
  qrpci_segctl ctl[QRPCI_TXQ_MSGS];
  uint8_t buf[QRPCI_TXQ_BYTES];
};

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
  /* Don't fragment, and leave path MTU discovery to QUIC (RFC 9000
   * section 14): by default the kernel fragments a datagram larger than
   * the interface MTU, so a PMTUD probe too big for the path would arrive
   * in pieces, succeed, and have every later packet fragmented. With the
   * DF bit a probe either fits or is lost, and the kernel refuses one
   * larger than the interface outright. PROBE rather than DO, so ICMP
   * messages (which anyone can forge) neither lower the size we may send
   * nor turn into socket errors. */
  if (family == AF_INET6) {
    int on = 1;
    setsockopt(s->fd, IPPROTO_IPV6, IPV6_V6ONLY, &on, sizeof(on));
    int pmtud = IPV6_PMTUDISC_PROBE;
    setsockopt(s->fd, IPPROTO_IPV6, IPV6_MTU_DISCOVER, &pmtud, sizeof(pmtud));
  } else {
    int pmtud = IP_PMTUDISC_PROBE;
    setsockopt(s->fd, IPPROTO_IP, IP_MTU_DISCOVER, &pmtud, sizeof(pmtud));
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

/* A socket that many connections share takes bursts for all of them at
 * once: a broker's fan-out to a thousand subscribers arriving at one
 * client process, or a thousand clients' packets at a server. What the
 * buffer cannot hold is dropped, and each drop stalls its connection for
 * a loss recovery. A limit, not an allocation: the kernel charges only
 * what is queued. */
#define QRPCI_EP_RCVBUF (64 * 1024 * 1024)

void qrpci_sock_grow_rcvbuf(qrpci_sock *s) {
  static atomic_int told; /* loops of several threads make endpoints */
  int v = QRPCI_EP_RCVBUF;
  if (setsockopt(s->fd, SOL_SOCKET, SO_RCVBUFFORCE, &v, sizeof(v)) == 0) return;
  setsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &v, sizeof(v));
  int got = 0;
  socklen_t len = sizeof(got);
  /* The kernel reports twice what it allows (its bookkeeping share). */
  if (getsockopt(s->fd, SOL_SOCKET, SO_RCVBUF, &got, &len) == 0 &&
      got / 2 < v && !atomic_exchange(&told, 1)) {
    QRPCI_INFO("udp: receive buffer %d KiB of %d asked (net.core.rmem_max); "
               "a socket shared by many connections may drop bursts",
               got / 2 / 1024, v / 1024);
  }
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

static void txq_flush(qrpci_sock *s);

void qrpci_sock_close(qrpci_sock *s) {
  if (s->txq) {
    if (s->fd >= 0) txq_flush(s);
    free(s->txq);
    s->txq = NULL;
  }
  if (qrpci_list_linked(&s->txq_node)) qrpci_list_remove(&s->txq_node);
  if (s->write_ev) event_free(s->write_ev);
  s->write_ev = NULL;
  if (s->fd >= 0) close(s->fd);
  s->fd = -1;
}

/* Fills msg for one send of len bytes at iov (and segctl for GSO). */
static void msg_fill(const qrpci_sock *s, struct msghdr *msg,
                     struct iovec *iov, qrpci_segctl *ctl,
                     const struct sockaddr *to, socklen_t tolen,
                     size_t len, size_t segsize) {
  memset(msg, 0, sizeof(*msg));
  if (!s->connected) {
    msg->msg_name = (void *)to;
    msg->msg_namelen = tolen;
  }
  msg->msg_iov = iov;
  msg->msg_iovlen = 1;
  if (segsize && segsize < len) {
    memset(ctl, 0, sizeof(*ctl));
    msg->msg_control = ctl->buf;
    msg->msg_controllen = sizeof(ctl->buf);
    struct cmsghdr *cm = CMSG_FIRSTHDR(msg);
    cm->cmsg_level = SOL_UDP;
    cm->cmsg_type = UDP_SEGMENT;
    cm->cmsg_len = CMSG_LEN(sizeof(uint16_t));
    uint16_t seg = (uint16_t)segsize;
    memcpy(CMSG_DATA(cm), &seg, sizeof(seg));
  }
}

static int send_one(qrpci_sock *s, const struct sockaddr *to, socklen_t tolen,
                    const uint8_t *data, size_t len, size_t segsize) {
  struct iovec iov = {.iov_base = (void *)data, .iov_len = len};
  struct msghdr msg;
  qrpci_segctl ctl;
  msg_fill(s, &msg, &iov, &ctl, to, tolen, len, segsize);
  ssize_t n;
  do {
    n = sendmsg(s->fd, &msg, 0);
  } while (n < 0 && errno == EINTR);
  return n < 0 ? -errno : 0;
}

static int txq_add(qrpci_sock *s, const struct sockaddr *to, socklen_t tolen,
                   const uint8_t *data, size_t len, size_t segsize);

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
  if (s->txq && len <= QRPCI_TXQ_BYTES && tolen <= sizeof(s->txq->to[0]))
    return txq_add(s, to, tolen, data, len, segsize);
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

/* ---- The send queue of a shared socket ------------------------------- */

int qrpci_sock_enable_txq(qrpci_sock *s, struct qrpc_loop *loop) {
  s->txq = malloc(sizeof(*s->txq));
  if (!s->txq) return QRPC_ENOMEM;
  s->txq->n = s->txq->used = 0;
  s->loop = loop;
  qrpci_list_init(&s->txq_node);
  return 0;
}

static void blocked_now(qrpci_sock *s) {
  s->blocked = 1;
  if (s->write_ev) event_add(s->write_ev, NULL);
}

/* Sends everything queued, in order; what the kernel refuses for want of
 * buffer space is lost to QUIC, which retransmits, as for a single send. */
static void txq_flush(qrpci_sock *s) {
  qrpci_txq *q = s->txq;
  if (qrpci_list_linked(&s->txq_node)) qrpci_list_remove(&s->txq_node);
  size_t off = 0;
  for (size_t i = 0; i < q->n; i++) {
    q->iov[i].iov_base = q->buf + off;
    msg_fill(s, &q->msgs[i].msg_hdr, &q->iov[i], &q->ctl[i],
             (const struct sockaddr *)&q->to[i], q->tolen[i],
             q->iov[i].iov_len, q->seg[i]);
    off += q->iov[i].iov_len;
  }
  size_t done = 0;
  while (done < q->n && !s->blocked) {
    int n = sendmmsg(s->fd, q->msgs + done, (unsigned)(q->n - done), 0);
    if (n > 0) {
      done += (size_t)n;
      continue;
    }
    int err = n < 0 ? errno : EIO;
    if (err == EINTR) continue;
    if (err == EAGAIN || err == EWOULDBLOCK || err == ENOBUFS) {
      blocked_now(s);
      break;
    }
    if (err == EIO && q->seg[done] && s->gso) {
      /* The device cannot offload segmentation: stop asking, and send this
       * run a segment at a time. */
      QRPCI_INFO("udp: UDP GSO unavailable on this path; sending singly");
      s->gso = 0;
      qrpci_txq *keep = s->txq;
      s->txq = NULL;
      qrpci_sock_send(s, (const struct sockaddr *)&q->to[done],
                      q->tolen[done], q->iov[done].iov_base,
                      q->iov[done].iov_len, q->seg[done]);
      s->txq = keep;
    } else {
      QRPCI_DEBUG("udp: sendmmsg: %s", strerror(err));
    }
    done++;
  }
  q->n = q->used = 0;
}

static int txq_add(qrpci_sock *s, const struct sockaddr *to, socklen_t tolen,
                   const uint8_t *data, size_t len, size_t segsize) {
  qrpci_txq *q = s->txq;
  if (q->used + len > QRPCI_TXQ_BYTES) txq_flush(s);
  if (s->blocked) return QRPC_EAGAIN;
  memcpy(q->buf + q->used, data, len);
  q->iov[q->n].iov_len = len;
  memcpy(&q->to[q->n], to, tolen);
  q->tolen[q->n] = tolen;
  q->seg[q->n] = segsize;
  q->n++;
  q->used += len;
  if (q->n == QRPCI_TXQ_MSGS) {
    txq_flush(s);
    return 0;
  }
  if (!qrpci_list_linked(&s->txq_node)) {
    qrpci_list_push_back(&s->loop->txq_socks, &s->txq_node);
    /* Packets a flush pass writes leave at its end; only packets written
     * elsewhere (a timer, a read) need a pass of their own. Activating it
     * from inside would cost a loop turn that sends nothing. */
    if (!s->loop->flushing) event_active(s->loop->flush_ev, 0, 0);
  }
  return 0;
}

void qrpci_loop_flush_txqs(struct qrpc_loop *loop) {
  while (!qrpci_list_empty(&loop->txq_socks))
    txq_flush(QRPCI_CONTAINER_OF(loop->txq_socks.next, qrpci_sock, txq_node));
}

uint64_t qrpci_sock_drops(const qrpci_sock *s) {
  uint32_t info[SK_MEMINFO_VARS];
  socklen_t len = sizeof(info);
  if (getsockopt(s->fd, SOL_SOCKET, SO_MEMINFO, info, &len) != 0 ||
      len <= SK_MEMINFO_DROPS * sizeof(uint32_t))
    return 0;
  return info[SK_MEMINFO_DROPS];
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
       * authenticated information, so QUIC ignores them, except that a
       * client's handshake that has heard nothing else takes the hint
       * (conn.c). */
      if (errno == ECONNREFUSED || errno == EHOSTUNREACH ||
          errno == ENETUNREACH) {
        s->icmp_error = errno;
        continue;
      }
      if (errno == EMSGSIZE) continue;
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
