/*
 * Connections (conn.c): the ngtcp2 connection, its callbacks, the write
 * loop, timers, the datagram queue and the close sequence. Shared by client
 * connections and those a server endpoint accepts. Internal; not
 * installed.
 */
#ifndef QRPCI_QUIC_CONN_H
#define QRPCI_QUIC_CONN_H

#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto.h>
#include <stdio.h>
#include <sys/socket.h>

#include "quic/dgqueue.h"
#include "quic/internal.h"
#include "quic/rpcstream.h"
#include "quic/udp.h"
#include "util/list.h"

#define QRPCI_SCID_LEN 16
#define QRPCI_MAX_PKTS_PER_FLUSH 64
#define QRPCI_CLOSE_REASON_MAX 1000
/* Sizes in the PMTUD probe ladder of a connection. */
#define QRPCI_PMTUD_PROBES_MAX 12
/* Silence after which a connection with answers due sends a PING
 * (qrpci_conn_set_awaiting()): how long a client moved by a NAT waits,
 * at most, before the server learns its new address. */
#define QRPCI_KEEP_ALIVE_MS 1000

struct evdns_getaddrinfo_request;

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
  qrpc_endpoint *ep;         /* whose socket and ids: server, or opts.via */
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
  char refusal[256];         /* why, when it said (qrpci_tls_verify_failed) */
  int early;                 /* in the 0-RTT phase (qrpci_conn_in_early) */
  int early_fired;           /* the early hook was called */
  int early_rejected;        /* client: the server refused our 0-RTT */
  int reset_received;        /* a stateless reset with a valid token */
  int awaiting;              /* answers are due (qrpci_conn_set_awaiting) */
  int mute;                  /* sends nothing (qrpci_conn_vanish) */
  uint64_t rx_ns;            /* when the packet being read was read */
  uint64_t unanswered_since; /* first ack-eliciting packet the peer has
                                not answered anything since; 0: none */
  uint64_t dead_recheck_at;  /* the dead-peer deadline passed; decide at
                                this time, once what waits in the socket
                                is read; 0: not yet */
  int resume_verified;       /* the resumed session's peer had verified */
  int ticket_early_ok;       /* server: the ticket may carry early data */
  qrpci_early_fn early_hook;

  ngtcp2_conn *q;
  ngtcp2_crypto_conn_ref ref;
  void *tls;                 /* the TLS backend's session (tls.h) */
  qrpc_tls_config *tlscfg;
  char *server_name;         /* client: SNI and verification name */
  char *host, *port;         /* client: what to resolve */
  struct evdns_getaddrinfo_request *dnsreq;

  qrpci_sock own_sock;       /* client: its own connected socket */
  qrpci_sock *sock;          /* the socket packets go out on */
  struct qrpci_sim *sim;     /* link conditioner (opts.sim_*), or NULL */
  int sim_started;           /* it was created, or tried */
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
  qrpci_rpc_accept_fn rpc_accept;
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
  /* An acknowledgement may wait (qrpci_conn_ack_can_wait): */
  unsigned rx_unacked;       /* packets read since the last write */
  int write_wanted;          /* marked dirty for more than a read */

  int peer_verified;         /* the peer's chain passed the built-in check */
  qrpc_identity *peer_identity; /* of a verified peer, one allocation */
  qrpc_cert *peer_certs;
  size_t npeer_certs;
  uint8_t *peer_cert_data;
  char alpn[256];

  FILE *qlog;
  qrpc_conn_stats stats;
};

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
/* Called for a connection marked by a read alone (a small packet that came
 * while nothing of ours was in flight, qrpci_conn_read) instead of writing
 * it: when that packet is all that came since the last write and nothing
 * is queued to send, its ACK waits for a second packet, data of
 * ours, or opts.ack_wait_ms (the timer is armed for it) and this returns
 * 1; else 0, and the caller writes. Loop thread. */
int qrpci_conn_ack_can_wait(qrpc_conn *c);
void qrpci_conn_arm_timer(qrpc_conn *c);
void qrpci_conn_free(qrpc_conn *c);
void qrpci_conn_fire_closed(qrpc_conn *c);
void qrpci_conn_close_now(qrpc_conn *c, const ngtcp2_ccerr *ccerr, int linger);
/* The one way a connection ends when what holds it (its endpoint or loop)
 * is freed: on_closed fires (QRPC_CLOSE_ENDPOINT) if it has not, the peer
 * is told with an application close carrying peer_reason if there is one
 * and the handshake started, and c is freed. */
void qrpci_conn_discard(qrpc_conn *c, const char *peer_reason);
/* Closes an outgoing connection whose endpoint (qrpc_conn_opts.via) is
 * being freed, as qrpci_conn_discard() does, and detaches it from the
 * endpoint's socket; the application still frees it. */
void qrpci_conn_leave_endpoint(qrpc_conn *c, const char *peer_reason);
/* Keeps a copy of the peer's chain (peer first) for
 * qrpc_conn_peer_certs(); out of memory leaves it empty. */
void qrpci_conn_keep_chain(qrpc_conn *c, const qrpc_cert *chain, size_t n);
void qrpci_conn_process_resumed(qrpc_conn *c);
/* Sets ngtcp2's PING interval from keepalive_ms and whether answers are
 * due (qrpci_conn_set_awaiting). */
void qrpci_conn_apply_keepalive(qrpc_conn *c);


#endif
