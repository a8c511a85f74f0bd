/*
 * Internal structures of the QUIC transport, shared by loop.c, endpoint.c,
 * conn.c, stream.c and udp.c. Nothing here is visible to users.
 *
 * Reentrancy rule: ngtcp2 must not be re-entered from its own callbacks
 * (read, write and expiry handling). User callbacks run inside those
 * callbacks, so everything a user may call there either only touches our own
 * buffers and marks the connection for the next flush, or is deferred until
 * ngtcp2 returns (see qrpci_conn.busy).
 */
#ifndef QRPCI_QUIC_INTERNAL_H
#define QRPCI_QUIC_INTERNAL_H

#include <event2/event.h>
#include <gnutls/gnutls.h>
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <pthread.h>
#include <stdio.h>

#include "qrpc/quic.h"
#include "quic/rpcglue.h"
#include "util/list.h"

#define QRPCI_SCID_LEN 16
#define QRPCI_MAX_PKTS_PER_FLUSH 64
#define QRPCI_RECV_BATCH 32
#define QRPCI_RECV_BUDGET 512   /* packets read per readiness callback */
#define QRPCI_CLOSE_REASON_MAX 1000
#define QRPCI_STATIC_SECRET_LEN 32
/* A receive buffer holds the largest datagram UDP can carry (65527 bytes
 * over IPv6), rounded up. */
#define QRPCI_MAX_UDP 65536
/* The kernel refuses a whole GSO send (EMSGSIZE or EINVAL, and every
 * packet in it is lost) when its bytes exceed what one IPv4 UDP datagram
 * may carry or it has more than 64 segments, so a batch stays within
 * both. Packets grown by PMTUD make the byte limit the one that binds:
 * four 16 KiB packets are already too many. */
#define QRPCI_GSO_MAX_BYTES 65507
#define QRPCI_GSO_MAX_SEGS 64
/* Sizes in the PMTUD probe ladder of a connection (conn.c). */
#define QRPCI_PMTUD_PROBES_MAX 12

struct evdns_base;
struct evdns_getaddrinfo_request;
typedef struct qrpci_cidmap qrpci_cidmap;
typedef struct qrpci_post qrpci_post;

struct qrpc_loop {
  struct event_base *base;
  int own_base;
  struct event *flush_ev;   /* activated when a connection has work */
  qrpci_list dirty;         /* connections to flush this turn */
  qrpci_list conns;         /* every connection the loop holds */
  size_t nconns;
  struct evdns_base *dns;   /* created on the first name lookup */
  struct event *post_ev;    /* activated by qrpc_loop_post() */
  pthread_mutex_t post_mu;
  qrpci_post *post_head, *post_tail;
  uint8_t *txbuf;           /* packets of one flush, for GSO batching */
  uint8_t (*rxbufs)[QRPCI_MAX_UDP]; /* one recvmmsg batch */
  size_t txcap;             /* a GSO batch plus one packet being written */
  qrpci_list txq_socks;     /* sockets with packets queued for sendmmsg */
};

/* Packets of many connections waiting for one sendmmsg on a shared
 * (server) socket; see qrpci_sock_enable_txq(). */
typedef struct qrpci_txq qrpci_txq;

/* Per-socket send state: the GSO batch being assembled. */
typedef struct qrpci_sock {
  int fd;
  int gso;                  /* kernel accepts UDP_SEGMENT */
  int connected;            /* client sockets are connected */
  struct event *write_ev;   /* armed when the socket buffer was full */
  int blocked;
  void (*on_writable)(void *arg); /* the owner resumes sending */
  void *owner;
  qrpci_txq *txq;           /* NULL: every send is its own sendmsg */
  qrpci_list txq_node;      /* in the loop's txq_socks while it holds data */
  struct qrpc_loop *loop;
} qrpci_sock;

struct qrpc_tls_config {
  int refs;
  int in_use;
  gnutls_certificate_credentials_t cred;
  int has_cert;
  int has_ca;
  int has_system_ca;
  int insecure;
  int insecure_warned; /* the warning was logged once */
  qrpc_verify_fn verify_fn;
  void *verify_ud;
  char alpn[256];
  size_t alpn_len;
};

struct qrpc_endpoint {
  qrpc_loop *loop;
  qrpc_tls_config *tls;
  qrpc_endpoint_opts opts;
  qrpc_conn_callbacks cbs;
  void *user_data;
  void (*rpc_accept)(qrpc_conn *, qrpc_stream *, void *);
  void *rpc_accept_ud;
  qrpci_sock sock;
  struct event *read_ev;
  struct sockaddr_storage local;
  socklen_t locallen;
  qrpci_cidmap *cids;
  qrpci_list conns;
  size_t nhandshaking;
  size_t nconns;            /* including those in their closing period */
  qrpc_endpoint_stats stats;
  uint8_t secret[QRPCI_STATIC_SECRET_LEN];
};

typedef enum qrpci_conn_state {
  QRPCI_CONN_RESOLVING,
  QRPCI_CONN_HANDSHAKING,
  QRPCI_CONN_ESTABLISHED,
  QRPCI_CONN_CLOSING,   /* we sent CONNECTION_CLOSE; answer with it */
  QRPCI_CONN_DRAINING,  /* the peer closed; stay silent */
  QRPCI_CONN_DEAD,      /* waiting to be freed at the top level */
} qrpci_conn_state;

/* A queued datagram: a reference to its bytes (shared when one encoding
 * goes to many connections), the id its lost/aged notices carry, and the
 * time after which it is too stale to send. */
typedef struct qrpci_dgent {
  qrpci_dgbuf *buf;
  uint64_t id;
  uint64_t deadline_ns; /* 0: none */
} qrpci_dgent;

struct qrpc_conn {
  qrpc_loop *loop;
  qrpc_endpoint *ep;         /* server side only */
  qrpci_list loop_node;      /* in loop->conns */
  qrpci_list ep_node;        /* in ep->conns */
  qrpci_list dirty_node;     /* in loop->dirty */
  qrpci_conn_state state;
  int is_server;
  int busy;                  /* inside ngtcp2: defer closes */
  int established_fired;
  int closed_fired;
  int counted_handshake;     /* included in ep->nhandshaking */
  int counted_open;          /* included in ep->stats.connections */
  int shutting_down;
  int flush_close;           /* close once all stream data is acked */
  uint64_t flush_close_code;
  int resume_pending;        /* a paused stream was resumed */
  int cert_rejected;         /* our verification refused the peer */

  ngtcp2_conn *q;
  ngtcp2_crypto_conn_ref ref;
  gnutls_session_t tls;
  qrpc_tls_config *tlscfg;
  char *server_name;         /* client: SNI and verification name */
  char *host, *port;         /* client: what to resolve */
  struct evdns_getaddrinfo_request *dnsreq;

  qrpci_sock own_sock;       /* client: its own connected socket */
  qrpci_sock *sock;          /* the socket packets go out on */
  struct event *read_ev;     /* client only */
  struct event *timer;       /* ngtcp2 expiry, closing period, start */
  struct event *shutdown_ev; /* graceful shutdown deadline */
  struct sockaddr_storage local, remote;
  socklen_t locallen, remotelen;
  ngtcp2_cid client_dcid;    /* server: the client's first DCID, mapped */
  ngtcp2_cid first_scid;     /* server: our first SCID, mapped */

  qrpc_conn_opts opts;
  qrpc_conn_callbacks cbs;
  void *user_data;
  void (*rpc_accept)(qrpc_conn *, qrpc_stream *, void *);
  void *rpc_accept_ud;
  /* ngtcp2 reads the probe sizes from here when the connection is made. */
  uint16_t pmtud_probes[QRPCI_PMTUD_PROBES_MAX];

  qrpci_list streams;        /* every qrpc_stream of the connection */
  qrpci_list sendq;          /* streams with bytes or FIN to send */

  qrpci_dgent *dgq;          /* ring of queued datagrams */
  size_t dgq_head, dgq_len;
  qrpci_dgram_hooks dghooks;

  int pending_close;         /* a close requested while busy */
  ngtcp2_ccerr pending_ccerr;
  qrpc_close_info close_info;
  char close_reason[QRPCI_CLOSE_REASON_MAX + 1];
  uint8_t *close_pkt;        /* CONNECTION_CLOSE kept for the closing period */
  size_t close_pktlen;
  uint64_t close_recv;       /* packets received while closing */
  uint64_t timer_expiry;     /* what the timer is armed for */

  qrpc_cert *peer_certs;
  size_t npeer_certs;
  uint8_t *peer_cert_data;
  char alpn[256];

  FILE *qlog;
  qrpc_conn_stats stats;
};

/* Stream send buffer: a list of chunks that never move, because ngtcp2
 * keeps pointers into sent data until it is acknowledged. */
typedef struct qrpci_chunk {
  struct qrpci_chunk *next;
  size_t cap, len;
  uint8_t data[];
} qrpci_chunk;

struct qrpc_stream {
  qrpc_conn *conn;
  int64_t id;
  qrpci_list node;           /* in conn->streams */
  qrpci_list send_node;      /* in conn->sendq while it has data */
  qrpc_stream_callbacks cbs;
  void *user_data;
  int local;                 /* we opened it */
  int kind_known;            /* header parsed (or we wrote it) */
  int has_user;              /* the application has the handle */
  int cbs_set;               /* callbacks were given */
  int fin_queued, fin_sent;
  int write_blocked;         /* a write returned EAGAIN */
  int stopped;               /* peer sent STOP_SENDING */
  int data_blocked;          /* flow control: wait for MAX_STREAM_DATA */
  int paused;
  int fin_received, fin_delivered;
  int transport_closed;      /* ngtcp2 closed it; free when delivered */
  int close_error;
  int closed_fired;
  uint64_t hdr_len;          /* bytes of our stream header */

  qrpci_chunk *head, *tail, *cur;
  uint64_t head_off;         /* stream offset of head->data[0] */
  uint64_t cur_off;          /* stream offset of cur->data[0] */
  uint64_t written, sent, acked;

  uint8_t *hdr;              /* peer header bytes until complete */
  size_t hdr_got;
  uint8_t *rx;               /* bytes held while paused */
  size_t rx_len, rx_cap;
};

/* loop.c */
void qrpci_loop_mark_dirty(qrpc_loop *loop, qrpc_conn *c);
struct evdns_base *qrpci_loop_dns(qrpc_loop *loop);
void qrpci_loop_add_conn(qrpc_loop *loop, qrpc_conn *c);
void qrpci_loop_remove_conn(qrpc_loop *loop, qrpc_conn *c);

/* tls_gnutls.c */
int qrpci_tls_session_new(qrpc_tls_config *cfg, qrpc_conn *c, int server,
                          const char *server_name);
void qrpci_tls_config_ref(qrpc_tls_config *cfg);
void qrpci_tls_cache_peer(qrpc_conn *c);
int qrpci_tls_alert_error(uint8_t alert);

/* udp.c */
int qrpci_parse_addr(const char *addr, char **host, char **port);
int qrpci_sock_open(qrpci_sock *s, int family);
void qrpci_sock_close(qrpci_sock *s);
/* Makes sends on a socket shared by many connections wait in a queue that
 * leaves in one sendmmsg per loop turn (or when full), instead of one
 * sendmsg per connection. Errors: QRPC_ENOMEM. */
int qrpci_sock_enable_txq(qrpci_sock *s, struct qrpc_loop *loop);
/* Sends what the queues of the loop's sockets hold. */
void qrpci_loop_flush_txqs(struct qrpc_loop *loop);
int qrpci_sock_watch(qrpci_sock *s, struct event_base *base,
                     void (*on_writable)(void *owner), void *owner);
int qrpci_sock_send(qrpci_sock *s, const struct sockaddr *to, socklen_t tolen,
                    const uint8_t *data, size_t len, size_t segsize);
typedef void (*qrpci_recv_fn)(void *ctx, const struct sockaddr *from,
                              socklen_t fromlen, uint8_t *data, size_t len);
int qrpci_sock_recv_batch(qrpci_sock *s, uint8_t (*bufs)[QRPCI_MAX_UDP],
                          qrpci_recv_fn fn, void *ctx);

/* conn.c */
int qrpci_conn_opts_valid(const qrpc_conn_opts *o);
qrpc_conn *qrpci_conn_alloc(qrpc_loop *loop, const qrpc_conn_opts *opts,
                            const qrpc_conn_callbacks *cbs, void *user_data);
void qrpci_conn_setup_callbacks(ngtcp2_callbacks *cb, int server);
void qrpci_conn_setup_settings(qrpc_conn *c, ngtcp2_settings *s,
                               ngtcp2_transport_params *p,
                               const ngtcp2_cid *odcid);
int qrpci_conn_init_timer(qrpc_conn *c);
void qrpci_conn_fail_protocol(qrpc_conn *c, const char *reason);
void qrpci_conn_check_shutdown(qrpc_conn *c);
void qrpci_conn_read(qrpc_conn *c, const ngtcp2_path *path, uint8_t *data,
                     size_t len);
void qrpci_conn_write(qrpc_conn *c);
void qrpci_conn_arm_timer(qrpc_conn *c);
void qrpci_conn_free(qrpc_conn *c);
void qrpci_conn_fire_closed(qrpc_conn *c);
void qrpci_conn_close_now(qrpc_conn *c, const ngtcp2_ccerr *ccerr, int linger);
void qrpci_conn_process_resumed(qrpc_conn *c);
int qrpci_conn_rand(void *dest, size_t len);

/* stream.c */
qrpc_stream *qrpci_stream_new(qrpc_conn *c, int64_t id, int local);
void qrpci_stream_free(qrpc_stream *s);
int qrpci_stream_recv(qrpc_stream *s, uint32_t flags, const uint8_t *data,
                      size_t len);
void qrpci_stream_acked(qrpc_stream *s, uint64_t offset, uint64_t len);
void qrpci_stream_transport_closed(qrpc_stream *s, int error);
void qrpci_stream_fire_closed(qrpc_stream *s, int error);
size_t qrpci_stream_pending_vec(qrpc_stream *s, ngtcp2_vec *v, size_t max);
void qrpci_stream_advance(qrpc_stream *s, size_t n);
int qrpci_stream_has_pending(qrpc_stream *s);
void qrpci_stream_deliver_held(qrpc_stream *s);

/* endpoint.c */
void qrpci_endpoint_conn_gone(qrpc_endpoint *ep, qrpc_conn *c);
void qrpci_endpoint_conn_closed(qrpc_endpoint *ep, qrpc_conn *c);
void qrpci_endpoint_conn_established(qrpc_endpoint *ep, qrpc_conn *c);
int qrpci_endpoint_map_cid(qrpc_endpoint *ep, const ngtcp2_cid *cid,
                           qrpc_conn *c);
void qrpci_endpoint_unmap_cid(qrpc_endpoint *ep, const ngtcp2_cid *cid);

#endif
