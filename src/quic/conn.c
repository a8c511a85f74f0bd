/*
 * QUIC connections on ngtcp2: callbacks, the write loop, timers and the
 * close sequence. Shared by client connections and those a server endpoint
 * accepts.
 */
#include "quic/conn.h"

#include <errno.h>
#include <event2/dns.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "quic/addr.h"
#include "quic/close.h"
#include "quic/conditioner.h"
#include "quic/endpoint.h"
#include "quic/loop.h"
#include "quic/stream.h"
#include "quic/testing.h"
#include "quic/tls.h"
#include "util/clock.h"
#include "util/log.h"
#include "util/varint.h"
#include "wire/protocol.h"

#define MAX_VECS 16
#define AEAD_TAG_LEN 16
#define CLIENT_DCID_LEN 18
#define PEER_UNI_STREAMS 8 /* accepted only to be stopped (docs/protocol.md 2) */
/* RFC 9000 10.2: the closing and draining periods last three PTOs. */
#define CLOSE_PERIOD_PTOS 3
/* RFC 9000 18.2: the largest max_udp_payload_size there is. */
#define QUIC_MAX_UDP_PAYLOAD 65527
/* Default qrpc_conn_opts.max_udp_payload: UDP's limit over IPv4, which
 * loopback (MTU 65536) carries; other paths stop where their probes do. */
#define DEFAULT_MAX_UDP_PAYLOAD QRPCI_GSO_MAX_BYTES
/* How long a connection past its dead-peer deadline gives the packets
 * already in its socket to be read before it closes. */
#define DEAD_PEER_RECHECK_NS (1 * NGTCP2_MILLISECONDS)
/* Default qrpc_conn_opts.dead_peer_timeout_ms. */
#define DEFAULT_DEAD_PEER_MS 1000
/* A dead peer is declared no sooner than this many PTOs of silence. */
#define DEAD_PEER_MIN_PTOS 3
/* The largest timeout the options take: a day. */
#define MAX_TIMEOUT_MS (24 * 3600 * 1000ULL)
/* qrpc_conn_opts.ack_wait_ms: by default about half the max_ack_delay we
 * announce (ngtcp2's default, 25 ms), at most 5 ms short of it, room for
 * a busy loop before the peer's loss timers would count the ACK late. */
#define DEFAULT_ACK_WAIT_MS 12
#define MAX_ACK_WAIT_MS 20
/* A packet larger than this may be bulk data whose flow-control credit
 * the sender is waiting for: its acknowledgement does not wait. */
#define ACK_WAIT_MAX_BYTES NGTCP2_MAX_UDP_PAYLOAD_SIZE

/* Packets that decrypted on this thread: a packet from the real peer
 * decrypts, while garbage or a stateless reset with a wrong token does
 * not, though ngtcp2 drops either without an error. ngtcp2's decrypt
 * callback has no user data, and each loop (one per thread) reads one
 * packet at a time, so a per-thread count read around each packet says
 * whether that packet was genuine. */
static _Thread_local uint64_t decrypted_pkts;

void qrpc_conn_opts_default(qrpc_conn_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  o->idle_timeout_ms = 30000;
  o->handshake_timeout_ms = 10000;
  o->max_streams_bidi = QRPCI_MIN_PEER_STREAMS_BIDI;
  o->stream_window = 1 << 20;
  o->conn_window = 16 << 20;
  o->stream_send_buffer = 1 << 20;
  o->enable_datagrams = 1;
  o->datagram_queue_len = 1024;
  o->max_udp_payload = DEFAULT_MAX_UDP_PAYLOAD;
  o->dead_peer_timeout_ms = DEFAULT_DEAD_PEER_MS;
  o->keepalive_ms = 0;
  o->ack_wait_ms = DEFAULT_ACK_WAIT_MS;
}

int qrpci_conn_opts_valid(const qrpc_conn_opts *o) {
  return o->size == sizeof(*o) && o->stream_window > 0 &&
         o->conn_window >= o->stream_window && o->stream_send_buffer > 0 &&
         o->max_streams_bidi > 0 && o->datagram_queue_len > 0 &&
         o->max_udp_payload >= NGTCP2_MAX_UDP_PAYLOAD_SIZE &&
         o->max_udp_payload <= QUIC_MAX_UDP_PAYLOAD &&
         o->dead_peer_timeout_ms <= MAX_TIMEOUT_MS &&
         o->keepalive_ms <= MAX_TIMEOUT_MS &&
         o->ack_wait_ms <= MAX_ACK_WAIT_MS;
}

/* ---- Allocation ------------------------------------------------------- */

static ngtcp2_conn *get_conn_cb(ngtcp2_crypto_conn_ref *ref) {
  return ((qrpc_conn *)ref->user_data)->q;
}

qrpc_conn *qrpci_conn_alloc(qrpc_loop *loop, const qrpc_conn_opts *opts,
                            const qrpc_conn_callbacks *cbs, void *user_data) {
  qrpc_conn *c = calloc(1, sizeof(*c));
  if (!c) return NULL;
  c->loop = loop;
  if (opts) {
    c->opts = *opts;
  } else {
    qrpc_conn_opts_default(&c->opts);
  }
  if (!qrpci_conn_opts_valid(&c->opts)) {
    free(c);
    return NULL;
  }
  if (cbs) c->cbs = *cbs;
  c->user_data = user_data;
  c->ref.get_conn = get_conn_cb;
  c->ref.user_data = c;
  c->own_sock.fd = -1;
  qrpci_list_init(&c->loop_node);
  qrpci_list_init(&c->ep_node);
  qrpci_list_init(&c->dirty_node);
  qrpci_list_init(&c->streams);
  qrpci_list_init(&c->sendq);
  c->timer_expiry = UINT64_MAX;
  qrpci_loop_add_conn(loop, c);
  return c;
}

void qrpci_conn_free(qrpc_conn *c) {
  if (c->dnsreq) {
    /* Cancelling runs the resolver callback now, which sees DEAD. */
    c->state = QRPCI_CONN_DEAD;
    evdns_getaddrinfo_cancel(c->dnsreq);
    c->dnsreq = NULL;
  }
  if (c->ep) qrpci_endpoint_conn_gone(c->ep, c);
  qrpci_sim_free(c->sim); /* what it holds leaves now */
  c->sim = NULL;
  qrpci_loop_remove_conn(c->loop, c);
  if (c->timer) event_free(c->timer);
  if (c->shutdown_ev) event_free(c->shutdown_ev);
  if (c->read_ev) event_free(c->read_ev);
  /* ngtcp2_conn_del() does not close streams, and it may still point into
   * their send buffers, so it goes first. */
  if (c->q) ngtcp2_conn_del(c->q);
  while (!qrpci_list_empty(&c->streams))
    qrpci_stream_free(
        QRPCI_CONTAINER_OF(c->streams.next, qrpc_stream, node));
  qrpci_tls_session_free(c);
  if (c->tlscfg) qrpc_tls_config_free(c->tlscfg);
  qrpci_sock_close(&c->own_sock);
  for (size_t i = 0; i < c->dgq_len; i++)
    qrpci_dgbuf_unref(c->dgq[(c->dgq_head + i) % c->opts.datagram_queue_len].buf);
  free(c->dgq);
  free(c->close_pkt);
  free(c->peer_certs);
  free(c->peer_cert_data);
  free(c->peer_identity);
  free(c->server_name);
  free(c->host);
  free(c->port);
  if (c->qlog) fclose(c->qlog);
  /* Last: the conditioner above may have sent on the endpoint's socket. */
  if (c->opts.via) qrpci_endpoint_unref(c->opts.via);
  free(c);
}

/* ---- Close ------------------------------------------------------------ */

void qrpci_conn_fire_closed(qrpc_conn *c) {
  if (c->closed_fired) return;
  c->closed_fired = 1;
  if (c->ep) qrpci_endpoint_conn_closed(c->ep, c);
  for (qrpci_list *n = c->streams.next; n != &c->streams;) {
    qrpc_stream *s = QRPCI_CONTAINER_OF(n, qrpc_stream, node);
    n = n->next;
    qrpci_stream_fire_closed(s, QRPC_ECLOSED);
  }
  if (c->is_server && !c->established_fired && !c->early_fired) {
    /* The application never saw this connection. */
    if (c->ep) c->ep->stats.handshake_failed++;
    return;
  }
  c->close_info.reason = c->close_reason;
  if (c->cbs.on_closed) c->cbs.on_closed(c, &c->close_info, c->user_data);
}

static void set_reason(qrpc_conn *c, const uint8_t *reason, size_t len) {
  if (len > QRPCI_CLOSE_REASON_MAX) len = QRPCI_CLOSE_REASON_MAX;
  if (reason && len) memcpy(c->close_reason, reason, len);
  c->close_reason[len] = '\0';
}

static void set_info(qrpc_conn *c, qrpc_close_kind kind, int local,
                     uint64_t code, int error, const char *reason) {
  c->close_info.kind = kind;
  c->close_info.local = local;
  c->close_info.code = code;
  c->close_info.error = error;
  set_reason(c, (const uint8_t *)reason, reason ? strlen(reason) : 0);
}

static void mark_dead(qrpc_conn *c) {
  c->state = QRPCI_CONN_DEAD;
  qrpci_loop_mark_dirty(c->loop, c);
}

/* Ends c on this side without a word to the peer (it would not hear it, or
 * must not): the application hears why, and c goes at the top level. */
static void end_silently(qrpc_conn *c, qrpc_close_kind kind, int error,
                         const char *reason) {
  set_info(c, kind, 1, 0, error, reason);
  qrpci_conn_fire_closed(c);
  mark_dead(c);
}

static void arm_close_period(qrpc_conn *c, qrpci_conn_state state) {
  c->state = state;
  uint64_t pto = ngtcp2_conn_get_pto(c->q);
  struct timeval tv = qrpci_ns_to_tv(pto * CLOSE_PERIOD_PTOS);
  evtimer_add(c->timer, &tv);
  c->timer_expiry = UINT64_MAX;
}

static void send_packets(qrpc_conn *c, const ngtcp2_path *path,
                         const uint8_t *data, size_t len, size_t seg) {
  if (c->mute) return;
  const struct sockaddr *to = path ? (const struct sockaddr *)path->remote.addr
                                   : (const struct sockaddr *)&c->remote;
  socklen_t tolen = path ? (socklen_t)path->remote.addrlen : c->remotelen;
  if (!c->sim_started && qrpci_sim_wanted(&c->opts)) {
    c->sim_started = 1;
    c->sim = qrpci_sim_new(c->loop->base, c->sock, &c->opts,
                           c->is_server ? "a server's connection"
                                        : "a client's connection");
  }
  if (c->sim)
    qrpci_sim_send(c->sim, to, tolen, data, len, seg);
  else
    qrpci_sock_send(c->sock, to, tolen, data, len, seg);
  c->stats.bytes_sent += len;
  c->stats.pkts_sent += seg ? (len + seg - 1) / seg : 1;
}

void qrpci_conn_close_now(qrpc_conn *c, const ngtcp2_ccerr *ccerr,
                          int linger) {
  if (c->state >= QRPCI_CONN_CLOSING) return;
  if (c->busy) {
    c->pending_close = 1;
    c->pending_ccerr = *ccerr;
    return;
  }
  if (!c->q) {
    mark_dead(c);
    return;
  }
  uint8_t buf[NGTCP2_MAX_UDP_PAYLOAD_SIZE];
  ngtcp2_path_storage ps;
  ngtcp2_path_storage_zero(&ps);
  ngtcp2_pkt_info pi;
  ngtcp2_ssize n = ngtcp2_conn_write_connection_close(
      c->q, &ps.path, &pi, buf, sizeof(buf), ccerr, qrpci_now_ns());
  if (n > 0) send_packets(c, &ps.path, buf, (size_t)n, 0);
  if (n > 0 && linger && (c->close_pkt = malloc((size_t)n))) {
    memcpy(c->close_pkt, buf, (size_t)n);
    c->close_pktlen = (size_t)n;
    arm_close_period(c, QRPCI_CONN_CLOSING);
  } else {
    mark_dead(c);
  }
}

/* The part of discarding that leaves the connection allocated. */
static void close_for_endpoint(qrpc_conn *c, const char *peer_reason) {
  if (!c->closed_fired) {
    set_info(c, QRPC_CLOSE_ENDPOINT, 1, 0, QRPC_ECLOSED, NULL);
    qrpci_conn_fire_closed(c);
  }
  if (peer_reason && (c->state == QRPCI_CONN_HANDSHAKING ||
                      c->state == QRPCI_CONN_ESTABLISHED)) {
    ngtcp2_ccerr cc;
    ngtcp2_ccerr_set_application_error(&cc, QRPCI_ERR_NO_ERROR,
                                       (const uint8_t *)peer_reason,
                                       strlen(peer_reason));
    qrpci_conn_close_now(c, &cc, 0);
  }
}

void qrpci_conn_discard(qrpc_conn *c, const char *peer_reason) {
  close_for_endpoint(c, peer_reason);
  qrpci_conn_free(c);
}

void qrpci_conn_leave_endpoint(qrpc_conn *c, const char *peer_reason) {
  close_for_endpoint(c, peer_reason);
  qrpci_endpoint_conn_gone(c->ep, c);
  /* Nothing more leaves: the socket it shared is about to close. */
  c->sock = &c->own_sock;
  mark_dead(c);
}

/* Closes from inside the transport for a protocol reason of our own. */
static void fail_app(qrpc_conn *c, uint64_t code, const char *reason) {
  if (c->state >= QRPCI_CONN_CLOSING || c->pending_close) return;
  set_info(c, QRPC_CLOSE_APPLICATION, 1, code,
           code == QRPCI_ERR_PROTOCOL_ERROR ? QRPC_EPROTO : QRPC_EAPP, reason);
  qrpci_conn_fire_closed(c);
  ngtcp2_ccerr cc;
  ngtcp2_ccerr_set_application_error(&cc, code, (const uint8_t *)reason,
                                     strlen(reason));
  qrpci_conn_close_now(c, &cc, 1);
}

void qrpci_conn_fail_protocol(qrpc_conn *c, const char *reason) {
  qrpci_conn_fail(c, QRPCI_ERR_PROTOCOL_ERROR, reason);
}

void qrpci_conn_fail(qrpc_conn *c, uint64_t code, const char *reason) {
  QRPCI_WARN("conn: closing with error 0x%llx: %s", (unsigned long long)code,
             reason);
  fail_app(c, code, reason);
}

void qrpci_conn_set_rpc_acceptor(qrpc_conn *c, qrpci_rpc_accept_fn fn,
                                 void *ud) {
  c->rpc_accept = fn;
  c->rpc_accept_ud = ud;
}

#define PEER_REFUSED_CLIENT_CERT                                               \
  "the server refused this client's certificate, or requires one"
#define PEER_REFUSED_SERVER_CERT "the client refused this server's certificate"

/* Fills close_info from the CONNECTION_CLOSE the peer sent. */
static void info_from_remote(qrpc_conn *c) {
  const ngtcp2_ccerr *cc = ngtcp2_conn_get_ccerr(c->q);
  if (cc->type == NGTCP2_CCERR_TYPE_APPLICATION) {
    set_info(c, QRPC_CLOSE_APPLICATION, 0, cc->error_code,
             cc->error_code == QRPCI_ERR_NO_ERROR ? 0 : QRPC_EAPP, NULL);
  } else if (cc->error_code >= NGTCP2_CRYPTO_ERROR &&
             cc->error_code <= NGTCP2_CRYPTO_ERROR + 0xff) {
    uint8_t alert = (uint8_t)(cc->error_code - NGTCP2_CRYPTO_ERROR);
    set_info(c, QRPC_CLOSE_TLS, 0, alert, qrpci_tls_alert_error(alert), NULL);
  } else {
    set_info(c, QRPC_CLOSE_TRANSPORT, 0, cc->error_code,
             cc->error_code == NGTCP2_NO_ERROR ? 0 : QRPC_ETRANSPORT, NULL);
  }
  set_reason(c, cc->reason, cc->reasonlen);
  /* Under TLS 1.3 a server judges the client's certificate after the client
   * has finished its handshake: this alert is the only trace of the verdict,
   * so say what it means when the peer sent no words of its own. */
  if (c->close_info.error == QRPC_ECERT && !c->close_reason[0]) {
    const char *why = c->is_server ? PEER_REFUSED_SERVER_CERT
                                   : PEER_REFUSED_CLIENT_CERT;
    set_reason(c, (const uint8_t *)why, strlen(why));
  }
}

/* Acts on an error ngtcp2 returned from reading, writing or expiry. */
static void handle_error(qrpc_conn *c, int rv) {
  ngtcp2_ccerr cc;
  switch (rv) {
  case NGTCP2_ERR_DRAINING:
    if (c->reset_received) {
      /* The peer has no state for us: nothing to drain, nobody to hear. */
      set_info(c, QRPC_CLOSE_RESET, 0, 0, QRPC_ECONNRESET,
               "stateless reset: the peer lost this connection "
               "(it restarted or forgot it)");
      QRPCI_INFO("conn: %s", c->close_reason);
      qrpci_conn_fire_closed(c);
      mark_dead(c);
      return;
    }
    info_from_remote(c);
    qrpci_conn_fire_closed(c);
    arm_close_period(c, QRPCI_CONN_DRAINING);
    return;
  case NGTCP2_ERR_IDLE_CLOSE:
    end_silently(c, QRPC_CLOSE_IDLE, QRPC_EIDLE, "idle timeout");
    return;
  case NGTCP2_ERR_HANDSHAKE_TIMEOUT:
    end_silently(c, QRPC_CLOSE_HANDSHAKE_TIMEOUT, QRPC_ETIMEDOUT,
                 "handshake timeout");
    return;
  case NGTCP2_ERR_DROP_CONN:
    end_silently(c, QRPC_CLOSE_ERROR, QRPC_ETRANSPORT, "connection dropped");
    return;
  case NGTCP2_ERR_CRYPTO: {
    uint8_t alert = ngtcp2_conn_get_tls_alert(c->q);
    int err = c->cert_rejected ? QRPC_ECERT : qrpci_tls_alert_error(alert);
    char why[320];
    snprintf(why, sizeof(why), "%s%s%s",
             c->state == QRPCI_CONN_ESTABLISHED ? "TLS error"
                                                : "TLS handshake failed",
             c->refusal[0] ? ": " : "", c->refusal);
    set_info(c, QRPC_CLOSE_TLS, 1, alert, err, why);
    QRPCI_INFO("conn: %s (alert %u): %s", why, alert, qrpc_strerror(err));
    qrpci_conn_fire_closed(c);
    ngtcp2_ccerr_set_tls_alert(&cc, alert, NULL, 0);
    qrpci_conn_close_now(c, &cc, 1);
    return;
  }
  default:
    ngtcp2_ccerr_set_liberr(&cc, rv, NULL, 0);
    set_info(c, QRPC_CLOSE_TRANSPORT, 1, cc.error_code, QRPC_ETRANSPORT,
             ngtcp2_strerror(rv));
    QRPCI_INFO("conn: closing on transport error: %s", ngtcp2_strerror(rv));
    qrpci_conn_fire_closed(c);
    qrpci_conn_close_now(c, &cc, 1);
    return;
  }
}

static void run_pending_close(qrpc_conn *c) {
  if (!c->pending_close || c->busy) return;
  c->pending_close = 0;
  ngtcp2_ccerr cc = c->pending_ccerr;
  /* What was queued before the close request goes first, so a close from
   * on_established still lets the handshake's last flight reach the peer. */
  if (c->state == QRPCI_CONN_ESTABLISHED) qrpci_conn_write(c);
  qrpci_conn_close_now(c, &cc, 1);
}

/* ---- ngtcp2 callbacks ------------------------------------------------- */

static void rand_cb(uint8_t *dest, size_t destlen, const ngtcp2_rand_ctx *ctx) {
  qrpci_tls_rand(dest, destlen);
}

static int get_new_cid_cb(ngtcp2_conn *q, ngtcp2_cid *cid, uint8_t *token,
                          size_t cidlen, void *ud) {
  qrpc_conn *c = ud;
  if (qrpci_endpoint_new_cid(c->ep, cid->data, cidlen) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  cid->datalen = cidlen;
  if (c->ep) {
    if (ngtcp2_crypto_generate_stateless_reset_token(
            token, c->ep->secret, sizeof(c->ep->secret), cid) != 0)
      return NGTCP2_ERR_CALLBACK_FAILURE;
    if (qrpci_endpoint_map_cid(c->ep, cid, c) != 0)
      return NGTCP2_ERR_CALLBACK_FAILURE;
  } else if (qrpci_tls_rand(token, NGTCP2_STATELESS_RESET_TOKENLEN) != 0) {
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  return 0;
}

static int remove_cid_cb(ngtcp2_conn *q, const ngtcp2_cid *cid, void *ud) {
  qrpc_conn *c = ud;
  if (c->ep) qrpci_endpoint_unmap_cid(c->ep, cid);
  return 0;
}

static int handshake_completed_cb(ngtcp2_conn *q, void *ud) {
  qrpc_conn *c = ud;
  /* Some TLS libraries say only now that the server refused early data. */
  if (!c->is_server && c->early && !qrpci_tlsb_early_accepted(c) &&
      ngtcp2_conn_tls_early_data_rejected(q) != 0)
    return NGTCP2_ERR_CALLBACK_FAILURE;
  c->stats.resumed = qrpci_tlsb_resumed(c);
  if (c->early_fired)
    c->stats.early_data =
        c->early_rejected ? QRPC_EARLY_REJECTED : QRPC_EARLY_ACCEPTED;
  c->early = 0;
  /* A resumed handshake verifies no chain: the session's verdict holds. */
  if (c->stats.resumed) c->peer_verified = c->resume_verified;
  if (qrpci_tls_handshake_done(c) != 0) {
    QRPCI_WARN("conn: peer negotiated ALPN '%s'", c->alpn);
    return NGTCP2_ERR_CALLBACK_FAILURE;
  }
  c->state = QRPCI_CONN_ESTABLISHED;
  if (c->ep) qrpci_endpoint_conn_established(c->ep, c);
  c->established_fired = 1;
  if (!c->closed_fired && c->cbs.on_established)
    c->cbs.on_established(c, c->user_data);
  return 0;
}

/* Server: the client's early data was accepted. */
static int recv_rx_key_cb(ngtcp2_conn *q, ngtcp2_encryption_level level,
                          void *ud) {
  qrpc_conn *c = ud;
  if (level != NGTCP2_ENCRYPTION_LEVEL_0RTT || !c->is_server ||
      c->early_fired)
    return 0;
  c->early = 1;
  c->early_fired = 1;
  if (c->early_hook) c->early_hook(c, c->user_data);
  return 0;
}

/* Client: the server refused our early data, and ngtcp2 forgot the
 * streams opened in it; they go again, under new ids. */
static int early_rejected_cb(ngtcp2_conn *q, void *ud) {
  qrpc_conn *c = ud;
  if (c->is_server || !c->early_fired) return 0;
  c->early_rejected = 1;
  for (qrpci_list *n = c->streams.next; n != &c->streams;) {
    qrpc_stream *s = QRPCI_CONTAINER_OF(n, qrpc_stream, node);
    n = n->next;
    if (!s->local || s->transport_closed) continue;
    if (qrpci_list_linked(&s->send_node)) qrpci_list_remove(&s->send_node);
    if (qrpci_stream_restart(s) != 0) {
      s->id = -1;
      qrpci_stream_transport_closed(s, QRPC_ECLOSED);
    }
  }
  return 0;
}

static int stream_open_cb(ngtcp2_conn *q, int64_t sid, void *ud) {
  qrpc_conn *c = ud;
  if (!ngtcp2_is_bidi_stream(sid)) {
    ngtcp2_conn_shutdown_stream_read(q, 0, sid, QRPCI_ERR_UNKNOWN_STREAM_KIND);
    return 0;
  }
  qrpc_stream *s = qrpci_stream_new(c, sid, 0);
  if (!s) return NGTCP2_ERR_CALLBACK_FAILURE;
  ngtcp2_conn_set_stream_user_data(q, sid, s);
  return 0;
}

static int recv_stream_data_cb(ngtcp2_conn *q, uint32_t flags, int64_t sid,
                               uint64_t offset, const uint8_t *data,
                               size_t len, void *ud, void *sud) {
  qrpc_stream *s = sud;
  if (!s) {
    /* A unidirectional stream we stopped; its bytes are discarded but
     * still count against flow control. */
    ngtcp2_conn_extend_max_offset(q, len);
    return 0;
  }
  return qrpci_stream_recv(s, flags, data, len) == 0
             ? 0
             : NGTCP2_ERR_CALLBACK_FAILURE;
}

static int acked_cb(ngtcp2_conn *q, int64_t sid, uint64_t offset,
                    uint64_t datalen, void *ud, void *sud) {
  if (sud) qrpci_stream_acked(sud, offset, datalen);
  return 0;
}

static int stream_close_cb(ngtcp2_conn *q, uint32_t flags, int64_t sid,
                           uint64_t app_error, void *ud, void *sud) {
  if (!ngtcp2_conn_is_local_stream(q, sid)) {
    /* MAX_STREAMS is not replenished by ngtcp2 itself. */
    if (ngtcp2_is_bidi_stream(sid))
      ngtcp2_conn_extend_max_streams_bidi(q, 1);
    else
      ngtcp2_conn_extend_max_streams_uni(q, 1);
  }
  if (sud) {
    int reset = (flags & NGTCP2_STREAM_CLOSE_FLAG_APP_ERROR_CODE_SET) &&
                app_error != QRPCI_ERR_NO_ERROR;
    qrpci_stream_transport_closed(sud, reset ? QRPC_ERESET : 0);
  }
  return 0;
}

static int stream_reset_cb(ngtcp2_conn *q, int64_t sid, uint64_t final_size,
                           uint64_t app_error, void *ud, void *sud) {
  qrpc_stream *s = sud;
  if (s && s->has_user && !s->closed_fired && s->cbs.on_reset)
    s->cbs.on_reset(s, app_error, s->user_data);
  return 0;
}

static int stop_sending_cb(ngtcp2_conn *q, int64_t sid, uint64_t app_error,
                           void *ud, void *sud) {
  qrpc_stream *s = sud;
  if (!s) return 0;
  s->stopped = 1;
  if (qrpci_list_linked(&s->send_node)) qrpci_list_remove(&s->send_node);
  if (s->has_user && !s->closed_fired && s->cbs.on_stop_sending)
    s->cbs.on_stop_sending(s, app_error, s->user_data);
  return 0;
}

static int extend_stream_data_cb(ngtcp2_conn *q, int64_t sid,
                                 uint64_t max_data, void *ud, void *sud) {
  qrpc_stream *s = sud;
  if (s && s->data_blocked) {
    s->data_blocked = 0;
    if (qrpci_stream_has_pending(s) && !qrpci_list_linked(&s->send_node))
      qrpci_list_push_back(&s->conn->sendq, &s->send_node);
  }
  return 0;
}

static int recv_datagram_cb(ngtcp2_conn *q, uint32_t flags,
                            const uint8_t *data, size_t len, void *ud) {
  qrpc_conn *c = ud;
  c->stats.datagrams_recv++;
  if (!c->closed_fired && c->established_fired && c->cbs.on_datagram)
    c->cbs.on_datagram(c, data, len, c->user_data);
  return 0;
}

/* Called by ngtcp2 only for a reset whose token matches one the peer gave
 * us; ngtcp2_conn_read_pkt() then returns NGTCP2_ERR_DRAINING. */
static int recv_stateless_reset_cb(ngtcp2_conn *q,
                                   const ngtcp2_pkt_stateless_reset *sr,
                                   void *ud) {
  ((qrpc_conn *)ud)->reset_received = 1;
  return 0;
}

static int decrypt_cb(uint8_t *dest, const ngtcp2_crypto_aead *aead,
                      const ngtcp2_crypto_aead_ctx *aead_ctx,
                      const uint8_t *ciphertext, size_t ciphertextlen,
                      const uint8_t *nonce, size_t noncelen,
                      const uint8_t *aad, size_t aadlen) {
  int rv = ngtcp2_crypto_decrypt_cb(dest, aead, aead_ctx, ciphertext,
                                    ciphertextlen, nonce, noncelen, aad,
                                    aadlen);
  if (rv == 0) decrypted_pkts++;
  return rv;
}

static int lost_datagram_cb(ngtcp2_conn *q, uint64_t id, void *ud) {
  qrpc_conn *c = ud;
  c->stats.datagrams_lost++;
  if (c->dghooks.lost && !c->closed_fired)
    c->dghooks.lost(c, id, c->dghooks.ud);
  return 0;
}

static int ack_datagram_cb(ngtcp2_conn *q, uint64_t id, void *ud) {
  qrpc_conn *c = ud;
  if (c->dghooks.acked && !c->closed_fired)
    c->dghooks.acked(c, id, c->dghooks.ud);
  return 0;
}

/* A server frees its TLS session once the handshake completed
 * (drop_server_tls()). The client has nothing more to say in TLS then: QUIC
 * forbids it KeyUpdate messages (RFC 9001, 6) and post-handshake
 * authentication (4.4), and its Finished was the last of its flight. So
 * new CRYPTO data after that is refused as TLS refuses an unexpected
 * message, with alert 10 (CRYPTO_ERROR 0x10a). Data the session already
 * had is dropped by ngtcp2 before it reaches here. */
static int recv_crypto_cb(ngtcp2_conn *q, ngtcp2_encryption_level level,
                          uint64_t offset, const uint8_t *data, size_t len,
                          void *ud) {
  qrpc_conn *c = ud;
  if (!c->tls) {
    snprintf(c->refusal, sizeof(c->refusal),
             "%zu bytes of TLS data from the client after the handshake", len);
    ngtcp2_conn_set_tls_alert(q, 10);
    return NGTCP2_ERR_CRYPTO;
  }
  return ngtcp2_crypto_recv_crypto_data_cb(q, level, offset, data, len, ud);
}

/* Server, after a read: the TLS session goes once the handshake completed.
 * Everything the connection needs from it afterwards was copied out in
 * handshake_completed_cb (ALPN, the peer's chain and identity, resumption
 * and 0-RTT flags), ngtcp2 keeps its own copy of the handshake flight it
 * may have to send again, and keys are updated from ngtcp2's secrets, not
 * by TLS. An idle connection keeps about a third less memory this way:
 * the session, the client's key share and TLS's buffers. A client keeps
 * its session, which still receives tickets. */
static void drop_server_tls(qrpc_conn *c) {
  if (!c->is_server || !c->tls || c->busy || c->state != QRPCI_CONN_ESTABLISHED)
    return;
  ngtcp2_conn_set_tls_native_handle(c->q, NULL);
  qrpci_tls_session_free(c);
}

void qrpci_conn_setup_callbacks(ngtcp2_callbacks *cb, int server) {
  memset(cb, 0, sizeof(*cb));
  if (server) {
    cb->recv_client_initial = ngtcp2_crypto_recv_client_initial_cb;
    cb->recv_rx_key = recv_rx_key_cb;
  } else {
    cb->client_initial = ngtcp2_crypto_client_initial_cb;
    cb->recv_retry = ngtcp2_crypto_recv_retry_cb;
    cb->tls_early_data_rejected = early_rejected_cb;
  }
  cb->recv_crypto_data = recv_crypto_cb;
  cb->encrypt = ngtcp2_crypto_encrypt_cb;
  cb->decrypt = decrypt_cb;
  cb->hp_mask = ngtcp2_crypto_hp_mask_cb;
  cb->update_key = ngtcp2_crypto_update_key_cb;
  cb->delete_crypto_aead_ctx = ngtcp2_crypto_delete_crypto_aead_ctx_cb;
  cb->delete_crypto_cipher_ctx = ngtcp2_crypto_delete_crypto_cipher_ctx_cb;
  cb->get_path_challenge_data = ngtcp2_crypto_get_path_challenge_data_cb;
  cb->version_negotiation = ngtcp2_crypto_version_negotiation_cb;
  cb->rand = rand_cb;
  cb->get_new_connection_id = get_new_cid_cb;
  cb->remove_connection_id = remove_cid_cb;
  cb->handshake_completed = handshake_completed_cb;
  cb->stream_open = stream_open_cb;
  cb->recv_stream_data = recv_stream_data_cb;
  cb->acked_stream_data_offset = acked_cb;
  cb->stream_close = stream_close_cb;
  cb->stream_reset = stream_reset_cb;
  cb->stream_stop_sending = stop_sending_cb;
  cb->extend_max_stream_data = extend_stream_data_cb;
  cb->recv_datagram = recv_datagram_cb;
  cb->lost_datagram = lost_datagram_cb;
  cb->ack_datagram = ack_datagram_cb;
  cb->recv_stateless_reset = recv_stateless_reset_cb;
}

static void qlog_cb(void *ud, uint32_t flags, const void *data, size_t len) {
  qrpc_conn *c = ud;
  if (c->qlog) fwrite(data, 1, len, c->qlog);
}

static void open_qlog(qrpc_conn *c, const ngtcp2_cid *odcid) {
  char path[4096];
  int n = snprintf(path, sizeof(path), "%s/", c->opts.qlog_dir);
  for (size_t i = 0; i < odcid->datalen && n > 0 && (size_t)n + 3 < sizeof(path);
       i++)
    n += snprintf(path + n, sizeof(path) - (size_t)n, "%02x", odcid->data[i]);
  if (n <= 0 || (size_t)n + 8 >= sizeof(path)) return;
  /* Both ends name the file after the same connection id. */
  snprintf(path + n, sizeof(path) - (size_t)n,
           c->is_server ? "_server.sqlog" : "_client.sqlog");
  c->qlog = fopen(path, "w");
  if (!c->qlog) QRPCI_WARN("conn: cannot open qlog %s: %s", path, strerror(errno));
}

/* The sizes PMTUD tries, in order, below a connection's own maximum: the
 * common Internet path MTUs first (ngtcp2's own list, then the full 1500
 * of Ethernet over IPv6), then a jumbo frame (9000) and sizes only
 * loopback-like links carry, up to loopback's 65536 over IPv6. A failed
 * probe ends the climb, as ngtcp2 skips every size at or above one that
 * failed, so a real path pays for one lost probe (three tries) past its
 * MTU and no more. */
static const uint16_t pmtud_ladder[] = {
    1454 - 48, 1390 - 48, 1280 - 48, 1492 - 48,  1500 - 48,
    9000 - 48, 16384,     32768,     65536 - 48,
};
_Static_assert(sizeof(pmtud_ladder) / sizeof(pmtud_ladder[0]) <
                   QRPCI_PMTUD_PROBES_MAX,
               "the ladder and the connection's maximum fit pmtud_probes");

/* Fills c->pmtud_probes; returns how many sizes there are. */
static size_t pmtud_probes(qrpc_conn *c, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < sizeof(pmtud_ladder) / sizeof(pmtud_ladder[0]); i++)
    if (pmtud_ladder[i] < max) c->pmtud_probes[n++] = pmtud_ladder[i];
  /* The largest size is tried last (ngtcp2 wants it in the list), and
   * ngtcp2 takes only sizes above the 1200 every path carries. */
  if (max > NGTCP2_MAX_UDP_PAYLOAD_SIZE) c->pmtud_probes[n++] = (uint16_t)max;
  return n;
}

void qrpci_conn_setup_settings(qrpc_conn *c, ngtcp2_settings *s,
                               ngtcp2_transport_params *p,
                               const ngtcp2_cid *odcid) {
  ngtcp2_settings_default(s);
  s->initial_ts = qrpci_now_ns();
  s->handshake_timeout = c->opts.handshake_timeout_ms * NGTCP2_MILLISECONDS;
  s->max_stream_window = c->opts.stream_window;
  /* Every ack-eliciting packet is acknowledged in the next packet sent.
   * Writes happen once per loop turn, after a whole batch of packets was
   * read, so this is one ACK per batch at most; and an answer written in
   * the same turn carries it. With the default (every second packet, or
   * after min(max_ack_delay, srtt/8)), a reply written a few microseconds
   * after its request went out without the ACK, and the ACK followed in a
   * packet of its own: one more send, wake-up and receive per call. */
  s->ack_thresh = 1;
  s->max_window = c->opts.conn_window;
  /* Packets start at 1200 bytes and grow to a size only once a PMTUD
   * probe of that size is acknowledged on the current path (ngtcp2 shapes
   * every packet to the probed size; no_tx_udp_payload_size_shaping would
   * skip that and send packets the path may not carry). On loopback they
   * grow to 64 KiB, which cuts the CPU per byte of a bulk transfer
   * several times over; on the Internet they stop near 1450 as before. */
  s->max_tx_udp_payload_size = c->opts.max_udp_payload;
  s->pmtud_probes = c->pmtud_probes;
  s->pmtud_probeslen = pmtud_probes(c, c->opts.max_udp_payload);
  if (s->pmtud_probeslen == 0) s->no_pmtud = 1;
  if (c->opts.qlog_dir) {
    open_qlog(c, odcid);
    if (c->qlog) {
      s->qlog_write = qlog_cb;
    }
  }
  ngtcp2_transport_params_default(p);
  p->initial_max_stream_data_bidi_local = c->opts.stream_window;
  p->initial_max_stream_data_bidi_remote = c->opts.stream_window;
  p->initial_max_stream_data_uni = 0;
  p->initial_max_data = c->opts.conn_window;
  p->initial_max_streams_bidi = c->opts.max_streams_bidi;
  p->initial_max_streams_uni = PEER_UNI_STREAMS;
  p->max_idle_timeout = c->opts.idle_timeout_ms * NGTCP2_MILLISECONDS;
  /* The peer's packets grow no further than ours: its probes stop here. */
  p->max_udp_payload_size = c->opts.max_udp_payload;
  p->max_datagram_frame_size =
      c->opts.enable_datagrams ? QRPCI_DEFAULT_DATAGRAM_FRAME_SIZE : 0;
}

/* ---- Reading ---------------------------------------------------------- */

static int addr_equal(const struct sockaddr *a, socklen_t alen,
                      const struct sockaddr_storage *b, socklen_t blen) {
  return alen == blen && memcmp(a, b, alen) == 0;
}

static void check_path(qrpc_conn *c) {
  const ngtcp2_path *p = ngtcp2_conn_get_path(c->q);
  if (addr_equal(p->remote.addr, (socklen_t)p->remote.addrlen, &c->remote,
                 c->remotelen) &&
      addr_equal(p->local.addr, (socklen_t)p->local.addrlen, &c->local,
                 c->locallen))
    return;
  memcpy(&c->remote, p->remote.addr, p->remote.addrlen);
  c->remotelen = (socklen_t)p->remote.addrlen;
  memcpy(&c->local, p->local.addr, p->local.addrlen);
  c->locallen = (socklen_t)p->local.addrlen;
  if (c->established_fired && !c->closed_fired && c->cbs.on_path_changed)
    c->cbs.on_path_changed(c, c->user_data);
}

/* ---- Dead-peer detection --------------------------------------------- */

static uint64_t bytes_in_flight(qrpc_conn *c) {
  ngtcp2_conn_info ci;
  ngtcp2_conn_get_conn_info(c->q, &ci);
  return ci.bytes_in_flight;
}

/* A packet from the peer decrypted: it is alive. What is still
 * outstanding gets a fresh allowance from now. */
static void peer_heard(qrpc_conn *c) {
  c->unanswered_since = 0;
  c->dead_recheck_at = 0;
  if (c->state == QRPCI_CONN_ESTABLISHED && bytes_in_flight(c) > 0)
    c->unanswered_since = qrpci_now_ns();
}

/* After a write: ack-eliciting packets are outstanding and the peer has
 * been silent since the first of them. */
static void note_sent(qrpc_conn *c, uint64_t now) {
  if (c->unanswered_since == 0 && c->state == QRPCI_CONN_ESTABLISHED &&
      c->opts.dead_peer_timeout_ms && bytes_in_flight(c) > 0)
    c->unanswered_since = now;
}

/* When the peer counts as dead, or UINT64_MAX. */
static uint64_t dead_peer_deadline(qrpc_conn *c) {
  if (!c->unanswered_since || !c->opts.dead_peer_timeout_ms ||
      c->state != QRPCI_CONN_ESTABLISHED)
    return UINT64_MAX;
  if (c->dead_recheck_at) return c->dead_recheck_at;
  uint64_t t = c->opts.dead_peer_timeout_ms * NGTCP2_MILLISECONDS;
  uint64_t ptos = DEAD_PEER_MIN_PTOS * ngtcp2_conn_get_pto(c->q);
  return c->unanswered_since + (t > ptos ? t : ptos);
}

static void close_dead_peer(qrpc_conn *c, uint64_t now) {
  char why[128];
  snprintf(why, sizeof(why),
           "dead peer: nothing received for %llu ms with packets "
           "outstanding",
           (unsigned long long)((now - c->unanswered_since) /
                                NGTCP2_MILLISECONDS));
  QRPCI_INFO("conn: %s", why);
  if (c->ep && c->is_server) c->ep->stats.dead_peers++;
  set_info(c, QRPC_CLOSE_DEAD_PEER, 1, 0, QRPC_EDEADPEER, why);
  qrpci_conn_fire_closed(c);
  ngtcp2_ccerr cc;
  ngtcp2_ccerr_set_application_error(&cc, QRPCI_ERR_NO_ERROR,
                                     (const uint8_t *)"dead peer", 9);
  /* One CONNECTION_CLOSE in case the peer still listens, no closing
   * period: nobody is expected to answer. */
  qrpci_conn_close_now(c, &cc, 0);
}

void qrpci_conn_read(qrpc_conn *c, const ngtcp2_path *path, uint8_t *data,
                     size_t len) {
  c->stats.bytes_recv += len;
  c->stats.pkts_recv++;
  if (c->state == QRPCI_CONN_CLOSING) {
    /* Answer with our CONNECTION_CLOSE, less and less often (RFC 9000
     * 10.2.1), so a flood cannot make us amplify. */
    c->close_recv++;
    if ((c->close_recv & (c->close_recv - 1)) == 0)
      send_packets(c, path, c->close_pkt, c->close_pktlen, 0);
    return;
  }
  if (c->state != QRPCI_CONN_HANDSHAKING && c->state != QRPCI_CONN_ESTABLISHED)
    return;
  ngtcp2_pkt_info pi = {0};
  uint64_t decrypted = decrypted_pkts;
  /* A small packet while nothing of ours is in flight (and the handshake
   * is done, so what it needed sent has gone): it is not an ACK that
   * declares some of ours lost or frees room to send, nor bulk data
   * whose sender waits for credit, and its own ACK may wait. */
  int one_way = c->opts.ack_wait_ms && len <= ACK_WAIT_MAX_BYTES &&
                c->state == QRPCI_CONN_ESTABLISHED &&
                ngtcp2_conn_get_handshake_completed(c->q) &&
                bytes_in_flight(c) == 0;
  c->busy++;
  c->rx_ns = qrpci_now_ns();
  int rv = ngtcp2_conn_read_pkt(c->q, path, &pi, data, len, c->rx_ns);
  c->busy--;
  if (decrypted_pkts != decrypted) peer_heard(c);
  if (rv != 0) {
    if (rv == NGTCP2_ERR_DISCARD_PKT) return;
    handle_error(c, rv);
    return;
  }
  check_path(c);
  drop_server_tls(c);
  run_pending_close(c);
  if (c->flush_close) qrpci_conn_check_shutdown(c);
  c->rx_unacked++;
  if (one_way)
    qrpci_loop_mark_read(c->loop, c);
  else
    qrpci_loop_mark_dirty(c->loop, c);
}

/* ---- Writing ---------------------------------------------------------- */

/* Packets of one connection's flush, sent with GSO: all segments but the
 * last have the same size and share one path, and the whole stays within
 * QRPCI_GSO_MAX_BYTES and QRPCI_GSO_MAX_SEGS. */
typedef struct batch {
  uint8_t *buf;
  size_t len, seg, nseg;
  size_t pathmax; /* the path's packet size; larger is a probe */
  ngtcp2_path_storage path;
} batch;

static void batch_flush(qrpc_conn *c, batch *b) {
  if (b->len) send_packets(c, &b->path.path, b->buf, b->len, b->seg);
  b->len = 0;
  b->seg = 0;
  b->nseg = 0;
}

/* Whether a packet of the path's size could still join the batch; if not,
 * the batch leaves before the next packet is written. */
static int batch_has_room(const batch *b) {
  return b->nseg < QRPCI_GSO_MAX_SEGS &&
         b->len + b->pathmax <= QRPCI_GSO_MAX_BYTES;
}

/* Adds the packet just written at b->buf + b->len. */
static void batch_add(qrpc_conn *c, batch *b, const ngtcp2_path *path,
                      size_t n) {
  int same_path = b->len == 0 ||
                  (path->remote.addrlen == b->path.path.remote.addrlen &&
                   memcmp(path->remote.addr, b->path.path.remote.addr,
                          path->remote.addrlen) == 0);
  if (b->len &&
      (!same_path || n > b->seg || b->len + n > QRPCI_GSO_MAX_BYTES)) {
    uint8_t *pkt = b->buf + b->len;
    batch_flush(c, b);
    memmove(b->buf, pkt, n);
  }
  if (b->len == 0) {
    ngtcp2_path_copy(&b->path.path, path);
    b->seg = n;
  }
  b->len += n;
  b->nseg++;
  /* A short packet ends the run of equal segments. A PMTUD probe goes
   * alone: a path too narrow for it must not take other packets along. */
  if (n < b->seg || n > b->pathmax) batch_flush(c, b);
}

static void drop_datagram(qrpc_conn *c) {
  size_t cap = c->opts.datagram_queue_len;
  qrpci_dgbuf_unref(c->dgq[c->dgq_head].buf);
  c->dgq[c->dgq_head].buf = NULL;
  c->dgq_head = (c->dgq_head + 1) % cap;
  c->dgq_len--;
}

/* Drops queued datagrams that can no longer go out as they should: too
 * old for their channel, or larger than the path now allows. */
static void drop_unsendable(qrpc_conn *c, uint64_t now) {
  while (c->dgq_len) {
    qrpci_dgent *e = &c->dgq[c->dgq_head];
    if (e->deadline_ns && now > e->deadline_ns) {
      uint64_t id = e->id;
      drop_datagram(c);
      if (c->dghooks.aged) c->dghooks.aged(c, id, c->dghooks.ud);
    } else if (e->buf->len > qrpc_conn_max_datagram_size(c)) {
      uint64_t id = e->id;
      drop_datagram(c);
      c->stats.datagrams_lost++;
      if (c->dghooks.lost) c->dghooks.lost(c, id, c->dghooks.ud);
    } else {
      return;
    }
  }
}

static uint64_t vec_len(const ngtcp2_vec *v, size_t n) {
  uint64_t total = 0;
  for (size_t i = 0; i < n; i++) total += v[i].len;
  return total;
}

/* Writes one packet's worth; returns the packet size, 0 when nothing more
 * can be sent now, or a negative ngtcp2 error. */
static ngtcp2_ssize write_one(qrpc_conn *c, ngtcp2_path *path, uint8_t *dst,
                              size_t cap, uint64_t now) {
  ngtcp2_pkt_info pi;
  for (;;) {
    ngtcp2_ssize nw;
    drop_unsendable(c, now);
    if (c->dgq_len && c->state == QRPCI_CONN_ESTABLISHED) {
      qrpci_dgent *e = &c->dgq[c->dgq_head];
      ngtcp2_vec v = {.base = e->buf->data, .len = e->buf->len};
      int accepted = 0;
      /* An empty datagram is valid (RFC 9221) but must reach ngtcp2 as no
       * vector at all: it asserts that every vector it gets has bytes. */
      nw = ngtcp2_conn_writev_datagram(c->q, path, &pi, dst, cap, &accepted,
                                       NGTCP2_WRITE_DATAGRAM_FLAG_MORE, e->id,
                                       &v, v.len ? 1 : 0, now);
      /* Not accepted but a packet was written: the packet was already
       * partly full, so the datagram goes into the next one. */
      if (accepted) {
        uint64_t id = e->id;
        drop_datagram(c);
        c->stats.datagrams_sent++;
        if (c->dghooks.sent) c->dghooks.sent(c, id, c->dghooks.ud);
      }
      if (nw == NGTCP2_ERR_WRITE_MORE) continue;
      if (nw == NGTCP2_ERR_INVALID_STATE) {
        while (c->dgq_len) drop_datagram(c);
        continue;
      }
      return nw;
    }
    qrpc_stream *s = NULL;
    ngtcp2_vec vec[MAX_VECS];
    size_t nv = 0;
    int64_t sid = -1;
    uint32_t flags = 0;
    if (!qrpci_list_empty(&c->sendq)) {
      s = QRPCI_CONTAINER_OF(c->sendq.next, qrpc_stream, send_node);
      nv = qrpci_stream_pending_vec(s, vec, MAX_VECS);
      sid = s->id;
      flags = NGTCP2_WRITE_STREAM_FLAG_MORE;
      if (s->fin_queued && s->sent + vec_len(vec, nv) == s->written)
        flags |= NGTCP2_WRITE_STREAM_FLAG_FIN;
    }
    ngtcp2_ssize ndata = -1;
    nw = ngtcp2_conn_writev_stream(c->q, path, &pi, dst, cap, &ndata, flags,
                                   sid, vec, nv, now);
    if (s) {
      if (ndata >= 0) {
        if ((flags & NGTCP2_WRITE_STREAM_FLAG_FIN) &&
            (uint64_t)ndata == vec_len(vec, nv))
          s->fin_sent = 1;
        qrpci_stream_advance(s, (size_t)ndata);
      } else if (nw == NGTCP2_ERR_STREAM_DATA_BLOCKED) {
        if (!s->data_blocked) c->stats.flow_blocked++;
        s->data_blocked = 1;
        qrpci_list_remove(&s->send_node);
        continue;
      } else if (nw == NGTCP2_ERR_STREAM_SHUT_WR ||
                 nw == NGTCP2_ERR_STREAM_NOT_FOUND) {
        qrpci_list_remove(&s->send_node);
        continue;
      }
      /* Rotate so a long transfer does not starve other streams. */
      if (qrpci_list_linked(&s->send_node)) {
        qrpci_list_remove(&s->send_node);
        qrpci_list_push_back(&c->sendq, &s->send_node);
      }
    }
    if (nw == NGTCP2_ERR_WRITE_MORE) continue;
    return nw;
  }
}

static void arm_timer_at(qrpc_conn *c, uint64_t exp, uint64_t now);

int qrpci_conn_ack_can_wait(qrpc_conn *c) {
  /* A second packet, anything to send, or a close on the way: write. */
  if (c->rx_unacked != 1 || c->state != QRPCI_CONN_ESTABLISHED ||
      !qrpci_list_empty(&c->sendq) || c->dgq_len || c->flush_close ||
      c->pending_close || c->resume_pending)
    return 0;
  uint64_t now = qrpci_now_ns();
  uint64_t at = now + c->opts.ack_wait_ms * NGTCP2_MILLISECONDS;
  if (c->timer_expiry > now && c->timer_expiry < at) at = c->timer_expiry;
  arm_timer_at(c, at, now);
  return 1;
}

void qrpci_conn_write(qrpc_conn *c) {
  c->write_wanted = 0;
  c->rx_unacked = 0;
  if (c->state != QRPCI_CONN_HANDSHAKING && c->state != QRPCI_CONN_ESTABLISHED)
    return;
  if (c->sock->blocked) return;
  /* ngtcp2 gets room for its largest packet, or it never sends a PMTUD
   * probe; packets other than probes have the path's probed size. */
  size_t room = ngtcp2_conn_get_max_tx_udp_payload_size(c->q);
  size_t pathmax = ngtcp2_conn_get_path_max_tx_udp_payload_size(c->q);
  size_t maxn = ngtcp2_conn_get_send_quantum(c->q) / pathmax;
  if (maxn < 1) maxn = 1;
  if (maxn > QRPCI_MAX_PKTS_PER_FLUSH) maxn = QRPCI_MAX_PKTS_PER_FLUSH;
  batch b = {.buf = c->loop->txbuf, .pathmax = pathmax};
  ngtcp2_path_storage_zero(&b.path);
  ngtcp2_path_storage ps;
  ngtcp2_path_storage_zero(&ps);
  uint64_t now = qrpci_now_ns();
  size_t npkts = 0;
  int rv = 0, drained = 0;
  c->busy++;
  while (npkts < maxn && !c->sock->blocked) {
    if (!batch_has_room(&b)) batch_flush(c, &b);
    ngtcp2_ssize n = write_one(c, &ps.path, b.buf + b.len, room, now);
    if (n < 0) {
      rv = (int)n;
      break;
    }
    if (n == 0) {
      drained = 1;
      break;
    }
    batch_add(c, &b, &ps.path, (size_t)n);
    npkts++;
  }
  batch_flush(c, &b);
  c->busy--;
  if (rv != 0) {
    handle_error(c, rv);
    return;
  }
  /* When ngtcp2 had nothing more to write, its expiry before
   * update_pkt_tx_time() holds a pacing time only if pacing held a packet
   * back: the time after it, a few microseconds ahead, would wake the
   * connection to find nothing to send. */
  uint64_t unpaced = drained ? ngtcp2_conn_get_expiry(c->q) : 0;
  ngtcp2_conn_update_pkt_tx_time(c->q, now);
  if (npkts) note_sent(c, now);
  /* More to send than one turn's share: come back next turn, after other
   * connections and incoming packets had theirs. */
  if (npkts == maxn) qrpci_loop_mark_dirty(c->loop, c);
  uint64_t exp = ngtcp2_conn_get_expiry(c->q);
  if (drained && unpaced > exp) {
    /* The connection sleeps until its other deadlines, but the loop still
     * wakes at that pacing time, once for all its connections: leaving
     * the wake-up out cost unary calls with 1 in flight 0.70x and with
     * 128 in flight 0.90x (alternating runs, docs/performance.md), while
     * a connection's own timer there cost a loop serving many
     * connections a timer callback per packet. Why the bare wake-up
     * helps is not settled; it may spare the thread a deeper sleep
     * before the answer comes. */
    qrpci_loop_nudge(c->loop, exp, now);
    exp = unpaced;
  }
  arm_timer_at(c, exp, now);
  run_pending_close(c);
}

/* ---- Timers ----------------------------------------------------------- */

/* Arms the connection's timer for ngtcp2's expiry exp, or the dead-peer
 * deadline if sooner; now is a recent qrpci_now_ns(). */
static void arm_timer_at(qrpc_conn *c, uint64_t exp, uint64_t now) {
  if (c->state != QRPCI_CONN_HANDSHAKING && c->state != QRPCI_CONN_ESTABLISHED)
    return;
  uint64_t dead = dead_peer_deadline(c);
  if (dead < exp) exp = dead;
  if (exp == c->timer_expiry) return;
  c->timer_expiry = exp;
  if (exp == UINT64_MAX) {
    evtimer_del(c->timer);
    return;
  }
  struct timeval tv = qrpci_ns_to_tv(exp > now ? exp - now : 0);
  evtimer_add(c->timer, &tv);
}

void qrpci_conn_arm_timer(qrpc_conn *c) {
  if (c->state != QRPCI_CONN_HANDSHAKING && c->state != QRPCI_CONN_ESTABLISHED)
    return;
  arm_timer_at(c, ngtcp2_conn_get_expiry(c->q), qrpci_now_ns());
}

static void conn_start(qrpc_conn *c);

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_conn *c = arg;
  c->timer_expiry = UINT64_MAX;
  switch (c->state) {
  case QRPCI_CONN_RESOLVING:
    conn_start(c);
    return;
  case QRPCI_CONN_CLOSING:
  case QRPCI_CONN_DRAINING:
  case QRPCI_CONN_DEAD:
    qrpci_conn_free(c);
    return;
  default:
    break;
  }
  uint64_t now = qrpci_now_ns();
  if (now >= dead_peer_deadline(c)) {
    /* Nothing in flight any more (a lost probe was written off once
     * later packets were acknowledged): nothing is waiting for the peer. */
    if (bytes_in_flight(c) == 0) {
      c->unanswered_since = 0;
      c->dead_recheck_at = 0;
    } else if (!c->dead_recheck_at) {
      /* After a stall (a busy, stopped or traced process) this timer
       * can run before the peer's packets waiting in the socket are
       * read: read them first, and decide then. */
      c->dead_recheck_at = now + DEAD_PEER_RECHECK_NS;
    } else {
      close_dead_peer(c, now);
      return;
    }
  }
  c->busy++;
  int rv = ngtcp2_conn_handle_expiry(c->q, now);
  c->busy--;
  if (rv != 0) {
    handle_error(c, rv);
    return;
  }
  qrpci_conn_write(c);
}

int qrpci_conn_init_timer(qrpc_conn *c) {
  c->timer = evtimer_new(c->loop->base, timer_cb, c);
  return c->timer ? 0 : QRPC_ENOMEM;
}

/* ---- Client connections ----------------------------------------------- */

static void client_pkt(void *ctx, const struct sockaddr *from,
                       socklen_t fromlen, uint8_t *data, size_t len) {
  qrpc_conn *c = ctx;
  ngtcp2_path path = {
      .local = {.addr = (ngtcp2_sockaddr *)&c->local, .addrlen = c->locallen},
      .remote = {.addr = (ngtcp2_sockaddr *)from, .addrlen = fromlen},
  };
  qrpci_conn_read(c, &path, data, len);
}

/* A client's handshake got nothing back but an ICMP error: nothing
 * listens at the address, or no route leads there. ICMP is not
 * authenticated, so it ends only a handshake that has received nothing
 * at all, where a forged one costs a retry; later it is ignored. */
static void handshake_unreachable(qrpc_conn *c, int err) {
  char why[300];
  snprintf(why, sizeof(why), "no server at %s:%s: %s (ICMP)", c->host, c->port,
           strerror(err));
  QRPCI_INFO("conn: %s", why);
  end_silently(c, QRPC_CLOSE_ERROR, QRPC_EUNREACHABLE, why);
}

static void client_read_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_conn *c = arg;
  c->own_sock.icmp_error = 0;
  qrpci_sock_recv_batch(&c->own_sock, c->loop->rxbufs, client_pkt, c);
  if (c->own_sock.icmp_error && c->state == QRPCI_CONN_HANDSHAKING &&
      c->stats.pkts_recv == 0)
    handshake_unreachable(c, c->own_sock.icmp_error);
}

static void client_writable(void *owner) {
  qrpci_loop_mark_dirty(((qrpc_conn *)owner)->loop, owner);
}

static void fail_local(qrpc_conn *c, int err, const char *reason) {
  QRPCI_WARN("conn: %s:%s: %s", c->host, c->port, reason);
  set_info(c, QRPC_CLOSE_ERROR, 1, 0, err, reason);
  qrpci_conn_fire_closed(c);
  mark_dead(c);
}

/* Opens a UDP socket connected to sa and reads its local address. */
static int client_socket(qrpci_sock *sock, const struct sockaddr *sa,
                         socklen_t salen, struct sockaddr_storage *local,
                         socklen_t *locallen) {
  if (qrpci_sock_open(sock, sa->sa_family) != 0) return QRPC_ESYSTEM;
  if (connect(sock->fd, sa, salen) != 0) return QRPC_ESYSTEM;
  sock->connected = 1;
  *locallen = sizeof(*local);
  if (getsockname(sock->fd, (struct sockaddr *)local, locallen) != 0)
    return QRPC_ESYSTEM;
  return 0;
}

/* Watches c->own_sock, where it now lives, for reading and for room. */
static int client_watch(qrpc_conn *c) {
  if (qrpci_sock_watch(&c->own_sock, c->loop->base, client_writable, c) != 0)
    return QRPC_ENOMEM;
  c->read_ev = event_new(c->loop->base, c->own_sock.fd, EV_READ | EV_PERSIST,
                         client_read_cb, c);
  if (!c->read_ev || event_add(c->read_ev, NULL) != 0) return QRPC_ENOMEM;
  return 0;
}

static int client_setup(qrpc_conn *c, const struct sockaddr *sa,
                        socklen_t salen) {
  memcpy(&c->remote, sa, salen);
  c->remotelen = salen;
  ngtcp2_cid dcid, scid;
  dcid.datalen = CLIENT_DCID_LEN;
  scid.datalen = QRPCI_SCID_LEN;
  if (qrpci_tls_rand(dcid.data, dcid.datalen) != 0 ||
      qrpci_endpoint_new_cid(c->opts.via, scid.data, scid.datalen) != 0)
    return QRPC_ESYSTEM;
  int rv;
  if (c->opts.via) {
    /* Through a shared socket: packets find this connection by the ids it
     * issues, starting with scid. */
    rv = qrpci_endpoint_attach(c->opts.via, c, sa, &scid);
    if (rv == 0) c->first_scid = scid;
  } else {
    c->sock = &c->own_sock;
    rv = client_socket(&c->own_sock, sa, salen, &c->local, &c->locallen);
    if (rv == 0) rv = client_watch(c);
  }
  if (rv != 0) return rv;

  ngtcp2_path path = {
      .local = {.addr = (ngtcp2_sockaddr *)&c->local, .addrlen = c->locallen},
      .remote = {.addr = (ngtcp2_sockaddr *)&c->remote,
                 .addrlen = c->remotelen},
  };
  ngtcp2_callbacks cb;
  ngtcp2_settings settings;
  ngtcp2_transport_params params;
  qrpci_conn_setup_callbacks(&cb, 0);
  qrpci_conn_setup_settings(c, &settings, &params, &dcid);
  if (ngtcp2_conn_client_new(&c->q, &dcid, &scid, &path, NGTCP2_PROTO_VER_V1,
                             &cb, &settings, &params, NULL, c) != 0)
    return QRPC_ENOMEM;
  rv = qrpci_tls_session_new(c->tlscfg, c, 0, c->server_name);
  if (rv != 0) return rv;
  qrpci_conn_apply_keepalive(c);
  c->early = qrpci_tls_client_resume(c);
  c->state = QRPCI_CONN_HANDSHAKING;
  return 0;
}

static void dns_cb(int result, struct evutil_addrinfo *res, void *arg) {
  qrpc_conn *c = arg;
  c->dnsreq = NULL;
  if (c->state != QRPCI_CONN_RESOLVING) {
    if (res) evutil_freeaddrinfo(res);
    return;
  }
  if (result != 0 || !res) {
    char why[256];
    snprintf(why, sizeof(why), "cannot resolve %s: %s", c->host,
             evutil_gai_strerror(result));
    fail_local(c, QRPC_ERESOLVE, why);
    return;
  }
  int rv = client_setup(c, res->ai_addr, (socklen_t)res->ai_addrlen);
  evutil_freeaddrinfo(res);
  if (rv == QRPC_EINVAL) {
    fail_local(c, rv, "the server's address family differs from the socket's "
                      "(qrpc_conn_opts.via)");
    return;
  }
  if (rv == QRPC_ECLOSED) {
    fail_local(c, rv, "its endpoint (qrpc_conn_opts.via) was freed");
    return;
  }
  if (rv != 0) {
    fail_local(c, rv, rv == QRPC_ESYSTEM ? strerror(errno) : qrpc_strerror(rv));
    return;
  }
  if (c->early) {
    /* What the layer above writes now goes out with the ClientHello. */
    c->early_fired = 1;
    if (c->early_hook) c->early_hook(c, c->user_data);
  }
  qrpci_conn_write(c);
}

/* Runs from the loop, never inside qrpc_conn_connect(), so that even an
 * immediate failure reaches the application as a callback. */
static void conn_start(qrpc_conn *c) {
  struct evdns_base *dns = qrpci_loop_dns(c->loop);
  if (!dns) {
    fail_local(c, QRPC_ERESOLVE, "no DNS resolver");
    return;
  }
  struct evutil_addrinfo hints;
  memset(&hints, 0, sizeof(hints));
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_protocol = IPPROTO_UDP;
  c->dnsreq = evdns_getaddrinfo(dns, c->host, c->port, &hints, dns_cb, c);
}

int qrpc_conn_connect(qrpc_loop *loop, const char *addr,
                      const char *server_name, qrpc_tls_config *tls,
                      const qrpc_conn_opts *opts,
                      const qrpc_conn_callbacks *cbs, void *user_data,
                      qrpc_conn **out) {
  if (!loop || !addr || !tls || !out) return QRPC_EINVAL;
  if (opts && !qrpci_conn_opts_valid(opts)) return QRPC_EINVAL;
  /* A shared socket belongs to one loop, and a worker group's endpoint
   * routes packets by ids its workers issue. */
  if (opts && opts->via &&
      (opts->via->loop != loop || opts->via->group || opts->via->freed))
    return QRPC_EINVAL;
  char *host, *port;
  int rv = qrpci_parse_addr(addr, &host, &port);
  if (rv != 0) return rv;
  qrpc_conn *c = qrpci_conn_alloc(loop, opts, cbs, user_data);
  if (!c) {
    free(host);
    free(port);
    return QRPC_ENOMEM;
  }
  c->host = host;
  c->port = port;
  /* Held until qrpci_conn_free(). */
  if (c->opts.via) qrpci_endpoint_ref(c->opts.via);
  c->server_name = strdup(server_name ? server_name : host);
  c->tlscfg = tls;
  qrpci_tls_config_ref(tls);
  c->state = QRPCI_CONN_RESOLVING;
  if (!c->server_name || qrpci_conn_init_timer(c) != 0) {
    qrpci_conn_free(c);
    return QRPC_ENOMEM;
  }
  struct timeval zero = {0, 0};
  evtimer_add(c->timer, &zero);
  *out = c;
  return 0;
}

int qrpc_conn_rebind(qrpc_conn *c) {
  if (!c || c->is_server) return QRPC_EINVAL;
  if (c->closed_fired || c->state != QRPCI_CONN_ESTABLISHED || c->opts.via)
    return QRPC_ESTATE;
  qrpci_sock ns;
  struct sockaddr_storage local;
  socklen_t locallen;
  int rv = client_socket(&ns, (struct sockaddr *)&c->remote, c->remotelen,
                         &local, &locallen);
  if (rv == 0) {
    ngtcp2_path path = {
        .local = {.addr = (ngtcp2_sockaddr *)&local, .addrlen = locallen},
        .remote = {.addr = (ngtcp2_sockaddr *)&c->remote,
                   .addrlen = c->remotelen},
    };
    if (ngtcp2_conn_initiate_immediate_migration(c->q, &path,
                                                 qrpci_now_ns()) != 0)
      rv = QRPC_ESTATE;
  }
  if (rv != 0) {
    qrpci_sock_close(&ns);
    return rv;
  }
  event_free(c->read_ev);
  c->read_ev = NULL;
  qrpci_sock_close(&c->own_sock);
  c->own_sock = ns;
  memcpy(&c->local, &local, locallen);
  c->locallen = locallen;
  if (client_watch(c) != 0) {
    fail_local(c, QRPC_ENOMEM, "cannot watch the new socket");
    return 0;
  }
  if (c->cbs.on_path_changed) c->cbs.on_path_changed(c, c->user_data);
  qrpci_loop_mark_dirty(c->loop, c);
  return 0;
}

/* The PING interval: every QRPCI_KEEP_ALIVE_MS while answers are due,
 * else the keepalive option (or none); never above half this side's idle
 * timeout, so the PING is answered before the connection could idle
 * out. */
void qrpci_conn_apply_keepalive(qrpc_conn *c) {
  uint64_t ms = c->opts.keepalive_ms;
  uint64_t half_idle = c->opts.idle_timeout_ms / 2;
  if (!c->q) return;
  if (c->awaiting && (ms == 0 || ms > QRPCI_KEEP_ALIVE_MS))
    ms = QRPCI_KEEP_ALIVE_MS;
  if (ms && half_idle > 0 && half_idle < ms) ms = half_idle;
  ngtcp2_conn_set_keep_alive_timeout(c->q, ms ? ms * NGTCP2_MILLISECONDS
                                              : UINT64_MAX);
  /* The timer follows the new expiry on the next write. */
  qrpci_loop_mark_dirty(c->loop, c);
}

uint64_t qrpci_conn_timer_due(qrpc_conn *c) { return c->timer_expiry; }

int qrpci_conn_has_tls(qrpc_conn *c) { return c->tls != NULL; }

int qrpci_conn_update_key(qrpc_conn *c) {
  if (c->state != QRPCI_CONN_ESTABLISHED) return QRPC_EINVAL;
  int rv = ngtcp2_conn_initiate_key_update(c->q, qrpci_now_ns());
  if (rv != 0) return QRPC_EINVAL;
  qrpci_loop_mark_dirty(c->loop, c);
  return 0;
}

int qrpci_conn_send_tls_data(qrpc_conn *c, const uint8_t *data, size_t len) {
  if (c->state != QRPCI_CONN_ESTABLISHED) return QRPC_EINVAL;
  if (ngtcp2_conn_submit_crypto_data(c->q, NGTCP2_ENCRYPTION_LEVEL_1RTT, data,
                                     len) != 0)
    return QRPC_ENOMEM;
  qrpci_loop_mark_dirty(c->loop, c);
  return 0;
}

void qrpci_conn_vanish(qrpc_conn *c) {
  if (c->read_ev) event_del(c->read_ev);
  c->mute = 1;
}

void qrpci_conn_set_awaiting(qrpc_conn *c, int awaiting) {
  c->awaiting = awaiting != 0;
  qrpci_conn_apply_keepalive(c);
}

/* ---- Public connection API -------------------------------------------- */

void qrpci_conn_set_early_hook(qrpc_conn *c, qrpci_early_fn fn) {
  c->early_hook = fn;
}

int qrpci_conn_in_early(qrpc_conn *c) {
  return c->early && !c->established_fired && !c->closed_fired;
}

void qrpc_conn_set_user_data(qrpc_conn *c, void *user_data) {
  c->user_data = user_data;
}
void *qrpc_conn_user_data(qrpc_conn *c) { return c->user_data; }
int qrpc_conn_is_server(qrpc_conn *c) { return c->is_server; }
int qrpc_conn_is_established(qrpc_conn *c) {
  return c->state == QRPCI_CONN_ESTABLISHED && !c->closed_fired;
}

static int copy_addr(const struct sockaddr_storage *a, socklen_t alen,
                     struct sockaddr_storage *ss, socklen_t *len) {
  if (alen == 0) return QRPC_ESTATE;
  if (ss) memcpy(ss, a, alen);
  if (len) *len = alen;
  return 0;
}

int qrpc_conn_local_addr(qrpc_conn *c, struct sockaddr_storage *ss,
                         socklen_t *len) {
  return copy_addr(&c->local, c->locallen, ss, len);
}

int qrpc_conn_remote_addr(qrpc_conn *c, struct sockaddr_storage *ss,
                          socklen_t *len) {
  return copy_addr(&c->remote, c->remotelen, ss, len);
}

const char *qrpc_conn_alpn(qrpc_conn *c) {
  return c->established_fired ? c->alpn : NULL;
}

const qrpc_cert *qrpc_conn_peer_certs(qrpc_conn *c, size_t *count) {
  if (count) *count = c->npeer_certs;
  return c->npeer_certs ? c->peer_certs : NULL;
}

const qrpc_identity *qrpc_conn_peer_identity(qrpc_conn *c) {
  return c && c->established_fired ? c->peer_identity : NULL;
}

void qrpci_conn_keep_chain(qrpc_conn *c, const qrpc_cert *chain, size_t n) {
  size_t total = 0;
  for (size_t i = 0; i < n; i++) total += chain[i].len;
  c->peer_certs = calloc(n, sizeof(*c->peer_certs));
  c->peer_cert_data = malloc(total ? total : 1);
  if (!c->peer_certs || !c->peer_cert_data) {
    free(c->peer_certs);
    free(c->peer_cert_data);
    c->peer_certs = NULL;
    c->peer_cert_data = NULL;
    return;
  }
  size_t off = 0;
  for (size_t i = 0; i < n; i++) {
    memcpy(c->peer_cert_data + off, chain[i].der, chain[i].len);
    c->peer_certs[i].der = c->peer_cert_data + off;
    c->peer_certs[i].len = chain[i].len;
    off += chain[i].len;
  }
  c->npeer_certs = n;
}

void qrpc_conn_get_stats(qrpc_conn *c, qrpc_conn_stats *st) {
  *st = c->stats;
  st->sim_dropped = qrpci_sim_dropped(c->sim);
  if (!c->q) return;
  ngtcp2_conn_info ci;
  ngtcp2_conn_get_conn_info(c->q, &ci);
  st->smoothed_rtt_ns = ci.smoothed_rtt;
  st->min_rtt_ns = ci.min_rtt == UINT64_MAX ? 0 : ci.min_rtt;
  st->latest_rtt_ns = ci.latest_rtt;
  st->cwnd = ci.cwnd;
  st->bytes_in_flight = ci.bytes_in_flight;
#ifdef NGTCP2_CONN_INFO_V2
  st->pkts_lost = ci.pkt_lost;
  st->bytes_lost = ci.bytes_lost;
#endif
}

int qrpc_conn_close(qrpc_conn *c, uint64_t app_error, const char *reason) {
  if (!c) return QRPC_EINVAL;
  if (c->closed_fired) return QRPC_ECLOSED;
  if (!reason) reason = "";
  set_info(c, QRPC_CLOSE_APPLICATION, 1, app_error,
           app_error == QRPCI_ERR_NO_ERROR ? 0 : QRPC_EAPP, reason);
  qrpci_conn_fire_closed(c);
  if (c->state == QRPCI_CONN_RESOLVING) {
    mark_dead(c);
    return 0;
  }
  ngtcp2_ccerr cc;
  ngtcp2_ccerr_set_application_error(&cc, app_error,
                                     (const uint8_t *)c->close_reason,
                                     strlen(c->close_reason));
  qrpci_conn_close_now(c, &cc, 1);
  return 0;
}

static void shutdown_deadline_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_conn *c = arg;
  if (c->closed_fired) return;
  if (c->flush_close)
    qrpc_conn_close(c, c->flush_close_code, c->close_reason);
  else
    qrpc_conn_close(c, QRPCI_ERR_NO_ERROR, "shutdown deadline");
}

static int all_acked(qrpc_conn *c) {
  for (qrpci_list *n = c->streams.next; n != &c->streams; n = n->next) {
    qrpc_stream *s = QRPCI_CONTAINER_OF(n, qrpc_stream, node);
    if (!s->stopped && s->acked < s->written) return 0;
  }
  return 1;
}

void qrpci_conn_check_shutdown(qrpc_conn *c) {
  if (c->closed_fired) return;
  if (c->shutting_down && qrpci_list_empty(&c->streams))
    qrpc_conn_close(c, QRPCI_ERR_NO_ERROR, "shutdown");
  else if (c->flush_close && all_acked(c))
    qrpc_conn_close(c, c->flush_close_code, c->close_reason);
}

static int arm_shutdown(qrpc_conn *c, uint64_t timeout_ms) {
  if (!c->shutdown_ev &&
      !(c->shutdown_ev = evtimer_new(c->loop->base, shutdown_deadline_cb, c)))
    return QRPC_ENOMEM;
  struct timeval tv = qrpci_ns_to_tv(timeout_ms * QRPCI_NS_PER_MS);
  evtimer_add(c->shutdown_ev, &tv);
  return 0;
}

void qrpci_conn_close_after_flush(qrpc_conn *c, uint64_t code,
                                  const char *reason, uint64_t timeout_ms) {
  if (c->closed_fired || c->flush_close) return;
  c->flush_close = 1;
  c->flush_close_code = code;
  set_reason(c, (const uint8_t *)reason, strlen(reason));
  if (arm_shutdown(c, timeout_ms) != 0) {
    qrpc_conn_close(c, code, reason);
    return;
  }
  qrpci_conn_check_shutdown(c);
}

int qrpc_conn_shutdown(qrpc_conn *c, uint64_t timeout_ms) {
  if (!c) return QRPC_EINVAL;
  if (c->closed_fired) return QRPC_ECLOSED;
  if (c->shutting_down) return 0;
  c->shutting_down = 1;
  int rv = arm_shutdown(c, timeout_ms);
  if (rv != 0) return rv;
  qrpci_conn_check_shutdown(c);
  return 0;
}

/* ---- Datagrams -------------------------------------------------------- */

size_t qrpc_conn_max_datagram_size(qrpc_conn *c) {
  /* Whether we may send depends on the peer's transport parameter alone
   * (RFC 9221 section 3); enable_datagrams governs what we receive. */
  if (!c->q || !c->established_fired) return 0;
  const ngtcp2_transport_params *rp =
      ngtcp2_conn_get_remote_transport_params(c->q);
  if (!rp || rp->max_datagram_frame_size == 0) return 0;
  /* A 1-RTT packet: first byte, DCID, up to 4 packet-number bytes and the
   * AEAD tag; then the DATAGRAM frame's type and length. The path's size
   * grows as PMTUD probes succeed, so this answer may grow too; it shrinks
   * only when the path changes. */
  size_t udp = ngtcp2_conn_get_path_max_tx_udp_payload_size(c->q);
  size_t overhead = 1 + ngtcp2_conn_get_dcid(c->q)->datalen + 4 +
                    AEAD_TAG_LEN + 1;
  size_t room = udp > overhead + 2 ? udp - overhead : 2;
  /* The length takes 2 bytes up to 16383 and 4 beyond: at most two steps
   * down find the largest datagram whose frame fits. */
  size_t max = room - 2;
  while (max && max + qrpci_varint_len(max) > room) max--;
  uint64_t frame_room = rp->max_datagram_frame_size;
  if (frame_room < 1 + 2) return 0;
  frame_room -= 1 + qrpci_varint_len(frame_room);
  return max < frame_room ? max : (size_t)frame_room;
}

qrpci_dgbuf *qrpci_dgbuf_new(size_t len) {
  qrpci_dgbuf *b = malloc(sizeof(*b) + len);
  if (!b) return NULL;
  b->refs = 1;
  b->len = len;
  return b;
}

void qrpci_dgbuf_unref(qrpci_dgbuf *b) {
  if (b && --b->refs == 0) free(b);
}

void qrpci_conn_set_dgram_hooks(qrpc_conn *c, const qrpci_dgram_hooks *h) {
  c->dghooks = *h;
}

int qrpci_conn_queue_dgram(qrpc_conn *c, qrpci_dgbuf *buf, uint64_t id,
                           uint64_t max_age_ns) {
  if (c->closed_fired || c->state > QRPCI_CONN_ESTABLISHED) return QRPC_ECLOSED;
  if (!c->established_fired) return QRPC_ESTATE;
  const ngtcp2_transport_params *rp =
      ngtcp2_conn_get_remote_transport_params(c->q);
  if (!rp || rp->max_datagram_frame_size == 0) return QRPC_ENODGRAM;
  if (buf->len > qrpc_conn_max_datagram_size(c)) return QRPC_EMSGSIZE;
  size_t cap = c->opts.datagram_queue_len;
  if (c->dgq_len == cap) return QRPC_ENOBUFS;
  if (!c->dgq && !(c->dgq = calloc(cap, sizeof(*c->dgq)))) return QRPC_ENOMEM;
  qrpci_dgent *e = &c->dgq[(c->dgq_head + c->dgq_len) % cap];
  e->buf = buf;
  e->id = id;
  e->deadline_ns = max_age_ns ? qrpci_now_ns() + max_age_ns : 0;
  buf->refs++;
  c->dgq_len++;
  qrpci_loop_mark_dirty(c->loop, c);
  return 0;
}

size_t qrpci_conn_dgram_room(qrpc_conn *c) {
  if (c->closed_fired || c->state > QRPCI_CONN_ESTABLISHED ||
      !c->established_fired)
    return 0;
  return c->opts.datagram_queue_len - c->dgq_len;
}

int qrpc_conn_send_datagram(qrpc_conn *c, const void *data, size_t len) {
  if (!c || (!data && len)) return QRPC_EINVAL;
  qrpci_dgbuf *b = qrpci_dgbuf_new(len);
  if (!b) return QRPC_ENOMEM;
  if (len) memcpy(b->data, data, len);
  int rv = qrpci_conn_queue_dgram(c, b, 0, 0);
  qrpci_dgbuf_unref(b);
  return rv;
}

void qrpci_conn_process_resumed(qrpc_conn *c) {
  c->resume_pending = 0;
  for (qrpci_list *n = c->streams.next; n != &c->streams;) {
    qrpc_stream *s = QRPCI_CONTAINER_OF(n, qrpc_stream, node);
    n = n->next;
    if (!s->paused && (s->rx_len || (s->fin_received && !s->fin_delivered) ||
                       s->transport_closed))
      qrpci_stream_deliver_held(s);
  }
}
