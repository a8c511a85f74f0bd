/*
 * The server endpoint: one UDP socket, routing by connection id, version
 * negotiation, stateless retry, connection limits and accept.
 */
#include "quic/endpoint.h"

#include <errno.h>
#include <netdb.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qrpc/error.h"
#include "quic/addr.h"
#include "quic/cidmap.h"
#include "quic/close.h"
#include "quic/conn.h"
#include "quic/loop.h"
#include "quic/testing.h"
#include "quic/tls.h"
#include "quic/workers.h"
#include "util/clock.h"
#include "util/log.h"
#include "wire/protocol.h"

/* How long a Retry token stays valid. */
#define RETRY_TOKEN_TIMEOUT (10 * NGTCP2_SECONDS)
/* RFC 9000 14.1: datagrams carrying a client's first packet are at least
 * this large; smaller ones get no Version Negotiation (anti-amplification). */
#define MIN_INITIAL_DATAGRAM 1200
/* RFC 9000 10.3 and RFC 9001 5.4.2: a short-header packet for one of our
 * connection IDs holds the first byte, the 16-byte DCID, and at least the
 * 4 bytes before and the 16 bytes of the header-protection sample. A
 * smaller datagram cannot be a packet of ours, so it gets no reset: this
 * also ends any exchange of resets between two endpoints, as each reset
 * is smaller than its trigger. */
#define MIN_RESET_TRIGGER (1 + QRPCI_SCID_LEN + 4 + 16)
/* Resets are one byte shorter than their trigger (RFC 9000 10.3: never
 * larger, and a reset to a packet of 43 bytes or less one byte shorter),
 * at most this long: enough to pass for a short-header packet with the
 * longest DCID. */
#define MAX_RESET_LEN 43

void qrpc_endpoint_opts_default(qrpc_endpoint_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  qrpc_conn_opts_default(&o->conn);
  /* A client that a NAT moved learns nothing until its next PING, sent
   * after QRPCI_KEEP_ALIVE_MS while it waits for answers: the server
   * waits for a few of those before it gives the client up. */
  o->conn.dead_peer_timeout_ms = 3 * QRPCI_KEEP_ALIVE_MS;
  o->max_connections = 10000;
  o->max_handshakes = 1000;
  o->stateless_resets_per_s = 1000;
}

int qrpci_endpoint_map_cid(qrpc_endpoint *ep, const ngtcp2_cid *cid,
                           qrpc_conn *c) {
  return qrpci_cidmap_put(ep->cids, cid->data, cid->datalen, c);
}

int qrpci_endpoint_new_cid(qrpc_endpoint *ep, uint8_t *cid, size_t len) {
  if (qrpci_tls_rand(cid, len) != 0) return QRPC_ESYSTEM;
  if (ep && ep->group && len > QRPCI_WORKER_CID_BYTE)
    cid[QRPCI_WORKER_CID_BYTE] = (uint8_t)ep->widx;
  return 0;
}

size_t qrpci_endpoint_worker(const qrpc_endpoint *ep) { return ep->widx; }

void qrpci_endpoint_unmap_cid(qrpc_endpoint *ep, const ngtcp2_cid *cid) {
  qrpc_conn *c = qrpci_cidmap_get(ep->cids, cid->data, cid->datalen);
  if (c) qrpci_cidmap_del(ep->cids, cid->data, cid->datalen, c);
}

void qrpci_endpoint_conn_established(qrpc_endpoint *ep, qrpc_conn *c) {
  if (c->counted_handshake) {
    c->counted_handshake = 0;
    ep->nhandshaking--;
  }
  if (c->is_server) ep->stats.accepted++;
}

void qrpci_endpoint_ref(qrpc_endpoint *ep) { ep->refs++; }

static void endpoint_release(qrpc_endpoint *ep) {
  if (ep->tls) qrpc_tls_config_free(ep->tls);
  free(ep);
}

void qrpci_endpoint_unref(qrpc_endpoint *ep) {
  if (--ep->refs == 0) endpoint_release(ep);
}

int qrpci_endpoint_attach(qrpc_endpoint *ep, qrpc_conn *c,
                          const struct sockaddr *peer, const ngtcp2_cid *scid) {
  if (ep->freed) return QRPC_ECLOSED;
  if (peer->sa_family != ep->local.ss_family) return QRPC_EINVAL;
  if (qrpci_endpoint_map_cid(ep, scid, c) != 0) return QRPC_ENOMEM;
  c->ep = ep;
  c->sock = &ep->sock;
  memcpy(&c->local, &ep->local, ep->locallen);
  c->locallen = ep->locallen;
  qrpci_list_push_back(&ep->conns, &c->ep_node);
  ep->nconns++;
  return 0;
}

void qrpci_endpoint_conn_closed(qrpc_endpoint *ep, qrpc_conn *c) {
  if (!c->counted_open) return;
  c->counted_open = 0;
  ep->stats.connections--;
}

static void add_traffic(qrpc_conn_stats *sum, const qrpc_conn_stats *cs) {
  sum->bytes_sent += cs->bytes_sent;
  sum->bytes_recv += cs->bytes_recv;
  sum->pkts_sent += cs->pkts_sent;
  sum->pkts_recv += cs->pkts_recv;
  sum->pkts_lost += cs->pkts_lost;
  sum->bytes_lost += cs->bytes_lost;
  sum->datagrams_sent += cs->datagrams_sent;
  sum->datagrams_recv += cs->datagrams_recv;
  sum->datagrams_lost += cs->datagrams_lost;
  sum->stream_blocked += cs->stream_blocked;
  sum->flow_blocked += cs->flow_blocked;
}

void qrpci_endpoint_conn_gone(qrpc_endpoint *ep, qrpc_conn *c) {
  qrpc_conn_stats cs;
  qrpc_conn_get_stats(c, &cs);
  add_traffic(&ep->gone, &cs);
  if (c->q) {
    size_t n = ngtcp2_conn_get_scid(c->q, NULL);
    ngtcp2_cid *ids = calloc(n ? n : 1, sizeof(*ids));
    if (ids) {
      ngtcp2_conn_get_scid(c->q, ids);
      for (size_t i = 0; i < n; i++)
        qrpci_cidmap_del(ep->cids, ids[i].data, ids[i].datalen, c);
      free(ids);
    }
  }
  qrpci_cidmap_del(ep->cids, c->client_dcid.data, c->client_dcid.datalen, c);
  qrpci_cidmap_del(ep->cids, c->first_scid.data, c->first_scid.datalen, c);
  if (c->counted_handshake) ep->nhandshaking--;
  c->counted_handshake = 0;
  qrpci_endpoint_conn_closed(ep, c);
  qrpci_list_remove(&c->ep_node);
  ep->nconns--;
  c->ep = NULL;
}

static void send_raw(qrpc_endpoint *ep, const ngtcp2_path *path,
                     const uint8_t *data, size_t len) {
  qrpci_sock_send(&ep->sock, (const struct sockaddr *)path->remote.addr,
                  (socklen_t)path->remote.addrlen, data, len, 0);
}

static void send_version_negotiation(qrpc_endpoint *ep,
                                     const ngtcp2_version_cid *vc,
                                     const ngtcp2_path *path, size_t pktlen) {
  if (pktlen < MIN_INITIAL_DATAGRAM) {
    ep->stats.packets_dropped++;
    return;
  }
  uint8_t buf[NGTCP2_MAX_UDP_PAYLOAD_SIZE];
  uint8_t unused;
  qrpci_tls_rand(&unused, 1);
  const uint32_t versions[] = {NGTCP2_PROTO_VER_V1};
  ngtcp2_ssize n = ngtcp2_pkt_write_version_negotiation(
      buf, sizeof(buf), unused, vc->scid, vc->scidlen, vc->dcid, vc->dcidlen,
      versions, 1);
  if (n <= 0) return;
  send_raw(ep, path, buf, (size_t)n);
  ep->stats.version_negotiations_sent++;
}

/* Sends a stateless CONNECTION_CLOSE in an Initial packet. */
static void send_refusal(qrpc_endpoint *ep, const ngtcp2_pkt_hd *hd,
                         const ngtcp2_path *path, uint64_t code) {
  uint8_t buf[NGTCP2_MAX_UDP_PAYLOAD_SIZE];
  ngtcp2_ssize n = ngtcp2_crypto_write_connection_close(
      buf, sizeof(buf), hd->version, &hd->scid, &hd->dcid, code, NULL, 0);
  if (n > 0) send_raw(ep, path, buf, (size_t)n);
}

static void send_retry(qrpc_endpoint *ep, const ngtcp2_pkt_hd *hd,
                       const ngtcp2_path *path) {
  uint8_t token[NGTCP2_CRYPTO_MAX_RETRY_TOKENLEN2];
  uint8_t buf[NGTCP2_MAX_UDP_PAYLOAD_SIZE];
  ngtcp2_cid scid;
  scid.datalen = QRPCI_SCID_LEN;
  if (qrpci_endpoint_new_cid(ep, scid.data, scid.datalen) != 0) return;
  ngtcp2_ssize tl = ngtcp2_crypto_generate_retry_token2(
      token, ep->secret, sizeof(ep->secret), hd->version, path->remote.addr,
      path->remote.addrlen, &scid, &hd->dcid, qrpci_now_ns());
  if (tl < 0) return;
  ngtcp2_ssize n = ngtcp2_crypto_write_retry(buf, sizeof(buf), hd->version,
                                             &hd->scid, &scid, &hd->dcid,
                                             token, (size_t)tl);
  if (n <= 0) return;
  send_raw(ep, path, buf, (size_t)n);
  ep->stats.retries_sent++;
}

/* A token bucket holding one second of stateless_resets_per_s, refilled
 * with the time since the last reset. */
static int reset_allowed(qrpc_endpoint *ep) {
  uint64_t rate = ep->opts.stateless_resets_per_s;
  if (rate == 0) return 0;
  uint64_t now = qrpci_now_ns(), cap = rate * NGTCP2_SECONDS;
  uint64_t elapsed = now - ep->reset_ts;
  if (!ep->reset_started || elapsed >= NGTCP2_SECONDS ||
      cap - ep->reset_credit <= elapsed * rate)
    ep->reset_credit = cap;
  else
    ep->reset_credit += elapsed * rate;
  ep->reset_started = 1;
  ep->reset_ts = now;
  if (ep->reset_credit < NGTCP2_SECONDS) return 0;
  ep->reset_credit -= NGTCP2_SECONDS;
  return 1;
}

/* Answers a short-header packet for a connection we do not know with a
 * Stateless Reset (RFC 9000 10.3), whose token is derived from the DCID
 * and the endpoint's secret exactly as the tokens given to peers were. */
static void send_stateless_reset(qrpc_endpoint *ep,
                                 const ngtcp2_version_cid *vc,
                                 const ngtcp2_path *path, size_t pktlen) {
  if (pktlen < MIN_RESET_TRIGGER || vc->dcidlen != QRPCI_SCID_LEN) return;
  if (!reset_allowed(ep)) {
    ep->stats.stateless_resets_limited++;
    return;
  }
  ngtcp2_cid dcid;
  ngtcp2_cid_init(&dcid, vc->dcid, vc->dcidlen);
  uint8_t token[NGTCP2_STATELESS_RESET_TOKENLEN];
  if (ngtcp2_crypto_generate_stateless_reset_token(
          token, ep->secret, sizeof(ep->secret), &dcid) != 0)
    return;
  size_t len = pktlen - 1 < MAX_RESET_LEN ? pktlen - 1 : MAX_RESET_LEN;
  uint8_t rnd[MAX_RESET_LEN];
  size_t rndlen = len - 1 - NGTCP2_STATELESS_RESET_TOKENLEN;
  if (qrpci_tls_rand(rnd, rndlen) != 0) return;
  uint8_t buf[MAX_RESET_LEN];
  ngtcp2_ssize n = ngtcp2_pkt_write_stateless_reset(buf, sizeof(buf), token,
                                                    rnd, rndlen);
  if (n <= 0 || (size_t)n >= pktlen) return;
  send_raw(ep, path, buf, (size_t)n);
  ep->stats.stateless_resets_sent++;
}

static qrpc_conn *server_conn_new(qrpc_endpoint *ep, const ngtcp2_pkt_hd *hd,
                                  const ngtcp2_path *path,
                                  const ngtcp2_cid *odcid) {
  qrpc_conn *c = qrpci_conn_alloc(ep->loop, &ep->opts.conn, &ep->cbs,
                                  ep->user_data);
  if (!c) return NULL;
  c->opts.via = NULL; /* for outgoing connections only */
  c->ep = ep;
  c->is_server = 1;
  c->rpc_accept = ep->rpc_accept;
  c->rpc_accept_ud = ep->rpc_accept_ud;
  c->early_hook = ep->early_hook;
  c->sock = &ep->sock;
  c->tlscfg = ep->tls;
  qrpci_tls_config_ref(ep->tls);
  qrpci_list_push_back(&ep->conns, &c->ep_node);
  ep->nconns++;
  ep->stats.connections++;
  c->counted_open = 1;
  c->counted_handshake = 1;
  ep->nhandshaking++;
  memcpy(&c->local, &ep->local, ep->locallen);
  c->locallen = ep->locallen;
  memcpy(&c->remote, path->remote.addr, path->remote.addrlen);
  c->remotelen = (socklen_t)path->remote.addrlen;
  c->client_dcid = hd->dcid;
  c->first_scid.datalen = QRPCI_SCID_LEN;
  if (qrpci_conn_init_timer(c) != 0 ||
      qrpci_endpoint_new_cid(ep, c->first_scid.data, QRPCI_SCID_LEN) != 0)
    goto fail;

  ngtcp2_callbacks cb;
  ngtcp2_settings settings;
  ngtcp2_transport_params params;
  qrpci_conn_setup_callbacks(&cb, 1);
  qrpci_conn_setup_settings(c, &settings, &params, odcid ? odcid : &hd->dcid);
  if (hd->tokenlen) {
    settings.token = hd->token;
    settings.tokenlen = hd->tokenlen;
    settings.token_type = NGTCP2_TOKEN_TYPE_RETRY;
  }
  params.original_dcid = odcid ? *odcid : hd->dcid;
  params.original_dcid_present = 1;
  if (odcid) {
    params.retry_scid = hd->dcid;
    params.retry_scid_present = 1;
  }
  if (ngtcp2_crypto_generate_stateless_reset_token(
          params.stateless_reset_token, ep->secret, sizeof(ep->secret),
          &c->first_scid) != 0)
    goto fail;
  params.stateless_reset_token_present = 1;
  ngtcp2_path p = {
      .local = {.addr = (ngtcp2_sockaddr *)&c->local, .addrlen = c->locallen},
      .remote = {.addr = (ngtcp2_sockaddr *)&c->remote,
                 .addrlen = c->remotelen},
  };
  if (ngtcp2_conn_server_new(&c->q, &hd->scid, &c->first_scid, &p,
                             hd->version, &cb, &settings, &params, NULL,
                             c) != 0)
    goto fail;
  if (qrpci_tls_session_new(ep->tls, c, 1, NULL) != 0) goto fail;
  qrpci_conn_apply_keepalive(c);
  if (qrpci_endpoint_map_cid(ep, &c->first_scid, c) != 0 ||
      qrpci_endpoint_map_cid(ep, &hd->dcid, c) != 0)
    goto fail;
  c->state = QRPCI_CONN_HANDSHAKING;
  return c;
fail:
  qrpci_conn_free(c);
  return NULL;
}

static void accept_new(qrpc_endpoint *ep, const ngtcp2_path *path,
                       uint8_t *data, size_t len) {
  ngtcp2_pkt_hd hd;
  if (ngtcp2_accept(&hd, data, len) != 0) {
    ep->stats.packets_dropped++;
    return;
  }
  if (!ep->tls) {
    /* An endpoint for outgoing connections answers no handshake. */
    ep->stats.packets_dropped++;
    return;
  }
  if (ep->nconns >= ep->opts.max_connections ||
      ep->nhandshaking >= ep->opts.max_handshakes) {
    ep->stats.refused++;
    send_refusal(ep, &hd, path, NGTCP2_CONNECTION_REFUSED);
    return;
  }
  ngtcp2_cid odcid;
  const ngtcp2_cid *pod = NULL;
  if (ep->opts.validate_address) {
    if (hd.tokenlen == 0 || hd.token[0] != NGTCP2_CRYPTO_TOKEN_MAGIC_RETRY2) {
      send_retry(ep, &hd, path);
      return;
    }
    if (ngtcp2_crypto_verify_retry_token2(
            &odcid, hd.token, hd.tokenlen, ep->secret, sizeof(ep->secret),
            hd.version, path->remote.addr, path->remote.addrlen, &hd.dcid,
            RETRY_TOKEN_TIMEOUT, qrpci_now_ns()) != 0) {
      send_refusal(ep, &hd, path, NGTCP2_INVALID_TOKEN);
      ep->stats.packets_dropped++;
      return;
    }
    pod = &odcid;
  }
  qrpc_conn *c = server_conn_new(ep, &hd, path, pod);
  if (!c) {
    QRPCI_WARN("endpoint: cannot create a connection");
    return;
  }
  qrpci_conn_read(c, path, data, len);
}

/* ---- Packets for another worker of the group --------------------------- */

struct qrpci_handoff {
  qrpci_handoff *next;
  struct sockaddr_storage from;
  socklen_t fromlen;
  size_t len;
  uint8_t data[];
};

static void ep_pkt_here(qrpc_endpoint *ep, const struct sockaddr *from,
                        socklen_t fromlen, uint8_t *data, size_t len);

/* Copies the packet into the inbox of the worker that owns its
 * connection. Any worker's thread; the owner drains it on its own. */
static void hand_off(qrpc_endpoint *ep, size_t owner,
                     const struct sockaddr *from, socklen_t fromlen,
                     const uint8_t *data, size_t len) {
  qrpc_endpoint *to = qrpci_wgroup_endpoint(ep->group, owner);
  qrpci_handoff *h = NULL;
  if (to && fromlen <= sizeof(h->from)) h = malloc(sizeof(*h) + len);
  if (!h) {
    ep->stats.handoff_dropped++;
    return;
  }
  h->next = NULL;
  memcpy(&h->from, from, fromlen);
  h->fromlen = fromlen;
  h->len = len;
  memcpy(h->data, data, len);
  pthread_mutex_lock(&to->inbox_mu);
  int full = to->inbox_len >= QRPCI_INBOX_MAX, was_empty = !to->inbox_head;
  if (!full) {
    if (to->inbox_tail)
      to->inbox_tail->next = h;
    else
      to->inbox_head = h;
    to->inbox_tail = h;
    to->inbox_len++;
  }
  pthread_mutex_unlock(&to->inbox_mu);
  if (full) {
    free(h);
    ep->stats.handoff_dropped++;
    return;
  }
  ep->stats.handed_off++;
  /* Thread-safe with libevent's locking on (qrpc_loop_new turns it on). */
  if (was_empty) event_active(to->inbox_ev, 0, 0);
}

static void inbox_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_endpoint *ep = arg;
  pthread_mutex_lock(&ep->inbox_mu);
  qrpci_handoff *h = ep->inbox_head;
  ep->inbox_head = ep->inbox_tail = NULL;
  ep->inbox_len = 0;
  pthread_mutex_unlock(&ep->inbox_mu);
  while (h) {
    qrpci_handoff *next = h->next;
    ep->stats.handed_in++;
    ep_pkt_here(ep, (const struct sockaddr *)&h->from, h->fromlen, h->data,
                h->len);
    free(h);
    h = next;
  }
}

static void inbox_free(qrpc_endpoint *ep) {
  if (!ep->inbox_mu_init) return;
  qrpci_handoff *h = ep->inbox_head;
  while (h) {
    qrpci_handoff *next = h->next;
    free(h);
    h = next;
  }
  ep->inbox_head = ep->inbox_tail = NULL;
  pthread_mutex_destroy(&ep->inbox_mu);
  ep->inbox_mu_init = 0;
}

static void ep_pkt(void *ctx, const struct sockaddr *from, socklen_t fromlen,
                   uint8_t *data, size_t len) {
  qrpc_endpoint *ep = ctx;
  /* A short-header packet names its connection's worker in the id; one
   * the kernel brought here for another worker goes to that worker. Long
   * headers stay: the kernel's 4-tuple hash keeps a handshake on one
   * worker, and the client chose the first ids at random. */
  if (ep->group && len > 1 + QRPCI_WORKER_CID_BYTE && !(data[0] & 0x80)) {
    size_t owner = data[1 + QRPCI_WORKER_CID_BYTE];
    if (owner != ep->widx && owner < qrpci_wgroup_size(ep->group)) {
      hand_off(ep, owner, from, fromlen, data, len);
      return;
    }
  }
  ep_pkt_here(ep, from, fromlen, data, len);
}

static void ep_pkt_here(qrpc_endpoint *ep, const struct sockaddr *from,
                        socklen_t fromlen, uint8_t *data, size_t len) {
  ngtcp2_path path = {
      .local = {.addr = (ngtcp2_sockaddr *)&ep->local, .addrlen = ep->locallen},
      .remote = {.addr = (ngtcp2_sockaddr *)from, .addrlen = fromlen},
  };
  ngtcp2_version_cid vc;
  int rv = ngtcp2_pkt_decode_version_cid(&vc, data, len, QRPCI_SCID_LEN);
  if (rv == NGTCP2_ERR_VERSION_NEGOTIATION) {
    send_version_negotiation(ep, &vc, &path, len);
    return;
  }
  if (rv != 0) {
    ep->stats.packets_dropped++;
    return;
  }
  qrpc_conn *c = qrpci_cidmap_get(ep->cids, vc.dcid, vc.dcidlen);
  if (c) {
    qrpci_conn_read(c, &path, data, len);
    return;
  }
  if (!(data[0] & 0x80)) {
    /* A short-header packet for no connection we know: perhaps one of a
     * connection our predecessor on this address held. */
    ep->stats.packets_dropped++;
    send_stateless_reset(ep, &vc, &path, len);
    return;
  }
  accept_new(ep, &path, data, len);
}

static void ep_read_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_endpoint *ep = arg;
  qrpci_sock_recv_batch(&ep->sock, ep->loop->rxbufs, ep_pkt, ep);
}

static void ep_writable(void *owner) {
  qrpc_endpoint *ep = owner;
  for (qrpci_list *n = ep->conns.next; n != &ep->conns; n = n->next)
    qrpci_loop_mark_dirty(ep->loop,
                          QRPCI_CONTAINER_OF(n, qrpc_conn, ep_node));
}

static int bind_socket(qrpc_endpoint *ep, const char *addr) {
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
  if (gai != 0 || !res) {
    QRPCI_ERROR("endpoint: cannot resolve %s: %s", addr, gai_strerror(gai));
    return QRPC_EINVAL;
  }
  rv = qrpci_sock_open(&ep->sock, res->ai_family);
  if (rv == 0 && bind(ep->sock.fd, res->ai_addr, res->ai_addrlen) != 0) {
    rv = errno == EADDRINUSE ? QRPC_EADDRINUSE : QRPC_ESYSTEM;
    QRPCI_ERROR("endpoint: bind %s: %s", addr, strerror(errno));
  }
  freeaddrinfo(res);
  return rv;
}

/* What every endpoint starts with: checked options, the TLS config and
 * the secret derived from its server key; no socket yet. */
static int endpoint_create(qrpc_loop *loop, qrpc_tls_config *tls,
                           const qrpc_endpoint_opts *opts,
                           const qrpc_conn_callbacks *cbs, void *user_data,
                           qrpc_endpoint **out) {
  if (!loop || !out) return QRPC_EINVAL;
  if (opts && (opts->size != sizeof(*opts) ||
               !qrpci_conn_opts_valid(&opts->conn) ||
               opts->conn.max_streams_bidi < QRPCI_MIN_PEER_STREAMS_BIDI ||
               opts->max_connections == 0 || opts->max_handshakes == 0))
    return QRPC_EINVAL;
  int trv = tls ? qrpci_tls_config_check_server(tls) : 0;
  if (trv != 0) return trv;
  qrpc_endpoint *ep = calloc(1, sizeof(*ep));
  if (!ep) return QRPC_ENOMEM;
  ep->refs = 1;
  ep->loop = loop;
  ep->sock.fd = -1;
  qrpci_list_init(&ep->conns);
  if (opts) {
    ep->opts = *opts;
  } else {
    qrpc_endpoint_opts_default(&ep->opts);
  }
  if (cbs) ep->cbs = *cbs;
  ep->user_data = user_data;
  ep->tls = tls;
  if (tls) qrpci_tls_config_ref(tls);
  int rv = QRPC_ENOMEM;
  if (!(ep->cids = qrpci_cidmap_new())) goto fail;
  /* From the server key: a restarted server, a twin with the same key, or
   * another worker of the same server makes the same stateless-reset
   * tokens and accepts the same Retry tokens. With no key (outgoing
   * connections only), random: its tokens need not outlive it. */
  if (tls ? qrpci_tls_derive(tls, "qrpc endpoint secret", 0, ep->secret,
                             sizeof(ep->secret)) != 0
          : qrpci_tls_rand(ep->secret, sizeof(ep->secret)) != 0)
    goto fail;
  *out = ep;
  return 0;
fail:
  qrpc_endpoint_free(ep);
  return rv;
}

/* Starts reading and sending on the endpoint's bound socket. */
static int endpoint_start(qrpc_endpoint *ep) {
  qrpc_loop *loop = ep->loop;
  ep->locallen = sizeof(ep->local);
  if (getsockname(ep->sock.fd, (struct sockaddr *)&ep->local, &ep->locallen))
    return QRPC_ESYSTEM;
  qrpci_sock_grow_rcvbuf(&ep->sock);
  if (qrpci_sock_watch(&ep->sock, loop->base, ep_writable, ep) != 0 ||
      qrpci_sock_enable_txq(&ep->sock, loop) != 0)
    return QRPC_ENOMEM;
  if (ep->group) {
    ep->inbox_ev = event_new(loop->base, -1, 0, inbox_cb, ep);
    if (!ep->inbox_ev) return QRPC_ENOMEM;
  }
  ep->read_ev = event_new(loop->base, ep->sock.fd, EV_READ | EV_PERSIST,
                          ep_read_cb, ep);
  if (!ep->read_ev || event_add(ep->read_ev, NULL) != 0) return QRPC_ENOMEM;
  return 0;
}

/* An endpoint on a socket of its own bound to addr; tls NULL: outgoing
 * connections only. */
static int endpoint_bind(qrpc_loop *loop, const char *addr,
                         qrpc_tls_config *tls, const qrpc_endpoint_opts *opts,
                         const qrpc_conn_callbacks *cbs, void *user_data,
                         qrpc_endpoint **out) {
  if (!addr) return QRPC_EINVAL;
  qrpc_endpoint *ep;
  int rv = endpoint_create(loop, tls, opts, cbs, user_data, &ep);
  if (rv != 0) return rv;
  if ((rv = bind_socket(ep, addr)) != 0 || (rv = endpoint_start(ep)) != 0) {
    qrpc_endpoint_free(ep);
    return rv;
  }
  *out = ep;
  return 0;
}

int qrpc_endpoint_listen(qrpc_loop *loop, const char *addr,
                         qrpc_tls_config *tls,
                         const qrpc_endpoint_opts *opts,
                         const qrpc_conn_callbacks *cbs, void *user_data,
                         qrpc_endpoint **out) {
  if (!tls) return QRPC_EINVAL;
  return endpoint_bind(loop, addr, tls, opts, cbs, user_data, out);
}

int qrpc_endpoint_open(qrpc_loop *loop, const char *addr,
                       const qrpc_endpoint_opts *opts, qrpc_endpoint **out) {
  return endpoint_bind(loop, addr, NULL, opts, NULL, NULL, out);
}

int qrpci_endpoint_listen_fd(qrpc_loop *loop, int fd, int gso,
                             qrpc_tls_config *tls,
                             const qrpc_endpoint_opts *opts,
                             const qrpc_conn_callbacks *cbs, void *user_data,
                             qrpci_wgroup *group, size_t widx,
                             qrpc_endpoint **out) {
  qrpc_endpoint *ep;
  int rv = endpoint_create(loop, tls, opts, cbs, user_data, &ep);
  if (rv != 0) {
    close(fd);
    return rv;
  }
  ep->sock.fd = fd;
  ep->sock.gso = gso;
  ep->group = group;
  ep->widx = widx;
  pthread_mutex_init(&ep->inbox_mu, NULL);
  ep->inbox_mu_init = 1;
  if ((rv = endpoint_start(ep)) != 0) {
    qrpc_endpoint_free(ep);
    return rv;
  }
  *out = ep;
  return 0;
}

void qrpci_endpoint_set_rpc_acceptor(qrpc_endpoint *ep, qrpci_rpc_accept_fn fn,
                                     void *ud) {
  ep->rpc_accept = fn;
  ep->rpc_accept_ud = ud;
}

void qrpci_endpoint_set_early_hook(qrpc_endpoint *ep, qrpci_early_fn fn) {
  ep->early_hook = fn;
}

void qrpci_endpoint_refuse_new(qrpc_endpoint *ep) {
  ep->opts.max_connections = 0;
}

int qrpc_endpoint_local_addr(qrpc_endpoint *ep, struct sockaddr_storage *ss,
                             socklen_t *len) {
  if (!ep || !ss || !len) return QRPC_EINVAL;
  memcpy(ss, &ep->local, ep->locallen);
  *len = ep->locallen;
  return 0;
}

uint16_t qrpc_endpoint_port(qrpc_endpoint *ep) {
  if (ep->local.ss_family == AF_INET6)
    return ntohs(((struct sockaddr_in6 *)&ep->local)->sin6_port);
  return ntohs(((struct sockaddr_in *)&ep->local)->sin_port);
}

void qrpc_endpoint_get_stats(qrpc_endpoint *ep, qrpc_endpoint_stats *st) {
  *st = ep->stats;
  qrpc_conn_stats sum = ep->gone, cs;
  for (qrpci_list *n = ep->conns.next; n != &ep->conns; n = n->next) {
    qrpc_conn_get_stats(QRPCI_CONTAINER_OF(n, qrpc_conn, ep_node), &cs);
    add_traffic(&sum, &cs);
  }
  st->bytes_sent = sum.bytes_sent;
  st->bytes_recv = sum.bytes_recv;
  st->pkts_sent = sum.pkts_sent;
  st->pkts_recv = sum.pkts_recv;
  st->pkts_lost = sum.pkts_lost;
  st->bytes_lost = sum.bytes_lost;
  st->datagrams_sent = sum.datagrams_sent;
  st->datagrams_recv = sum.datagrams_recv;
  st->datagrams_lost = sum.datagrams_lost;
  st->stream_blocked = sum.stream_blocked;
  st->flow_blocked = sum.flow_blocked;
  st->socket_drops = qrpci_sock_drops(&ep->sock);
}

static void endpoint_free(qrpc_endpoint *ep, const char *peer_reason) {
  if (!ep) return;
  ep->freed = 1;
  while (!qrpci_list_empty(&ep->conns)) {
    qrpc_conn *c = QRPCI_CONTAINER_OF(ep->conns.next, qrpc_conn, ep_node);
    if (c->is_server)
      qrpci_conn_discard(c, peer_reason);
    else
      qrpci_conn_leave_endpoint(c, peer_reason);
  }
  if (ep->read_ev) event_free(ep->read_ev);
  ep->read_ev = NULL;
  if (ep->inbox_ev) event_free(ep->inbox_ev);
  ep->inbox_ev = NULL;
  if (ep->group) qrpci_wgroup_forget(ep->group, ep->widx);
  inbox_free(ep);
  qrpci_sock_close(&ep->sock);
  qrpci_cidmap_free(ep->cids);
  ep->cids = NULL;
  qrpci_endpoint_unref(ep);
}

void qrpc_endpoint_free(qrpc_endpoint *ep) {
  endpoint_free(ep, "server shutting down");
}

void qrpci_endpoint_vanish(qrpc_endpoint *ep) { endpoint_free(ep, NULL); }

void qrpci_endpoint_set_rcvbuf(qrpc_endpoint *ep, int bytes) {
  setsockopt(ep->sock.fd, SOL_SOCKET, SO_RCVBUF, &bytes, sizeof(bytes));
}
