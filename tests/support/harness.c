#include "harness.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <malloc.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "quic/testing.h"

int qt_wait_scale(void) {
  static int scale;
  if (!scale) {
    const char *e = getenv("QT_WAIT_SCALE");
    int v = e ? atoi(e) : 1;
    scale = v < 1 ? 1 : v > 20 ? 20 : v;
  }
  return scale;
}

int qt_verify_record(qrpc_conn *conn, const qrpc_cert *chain, size_t chain_len,
                     int ok, void *user_data) {
  qt_verify_rec *v = user_data;
  v->calls++;
  v->ok = ok;
  v->conn = conn;
  v->chain_len = chain_len;
  v->chain0_matches = chain_len > 0 && chain && chain[0].len == v->expect.len &&
                      memcmp(chain[0].der, v->expect.der, v->expect.len) == 0;
  return v->verdict;
}

/* Loop slices are short so predicates are re-checked promptly, and long
 * enough that the check itself costs nothing measurable. */
#define QT_SLICE_MS 10

/* ---- Time and bounded loop running ----------------------------------- */

uint64_t qt_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static void sleep_ms(unsigned ms) {
  struct timespec ts = {0, (long)ms * 1000000L};
  nanosleep(&ts, NULL);
}

int qt_run_until(qrpc_loop *loop, qt_pred_fn pred, void *arg,
                 uint64_t timeout_ms) {
  uint64_t deadline = qt_now_ms() + timeout_ms;
  for (;;) {
    uint64_t now, slice, started;
    if (pred(arg)) return 1;
    now = qt_now_ms();
    if (now >= deadline) return 0;
    slice = deadline - now < QT_SLICE_MS ? deadline - now : QT_SLICE_MS;
    started = now;
    if (qrpc_loop_run_for(loop, slice) != 0) return pred(arg);
    /* The loop returns at once when it has nothing to wait for; do not
     * spin a core against the code under test while waiting. */
    if (qt_now_ms() - started < 1) sleep_ms(1);
  }
}

typedef struct count_target {
  const int *counter;
  int target;
} count_target;

static int count_reached(void *arg) {
  const count_target *t = arg;
  return *t->counter >= t->target;
}

int qt_run_until_count(qrpc_loop *loop, const int *counter, int target,
                       uint64_t timeout_ms) {
  count_target t = {counter, target};
  return qt_run_until(loop, count_reached, &t, timeout_ms);
}

static int never(void *arg) {
  (void)arg;
  return 0;
}

void qt_run_for(qrpc_loop *loop, uint64_t ms) {
  qt_run_until(loop, never, NULL, ms);
}

static int released(void *arg) { return qrpci_loop_conn_count(arg) == 0; }

int qt_run_until_released(qrpc_loop *loop, uint64_t timeout_ms) {
  return qt_run_until(loop, released, loop, timeout_ms);
}

/* ---- Resource probes ------------------------------------------------- */

int qt_count_fds(void) {
  struct dirent *e;
  int n = 0;
  DIR *d = opendir("/proc/self/fd");
  if (!d) return -1;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n - 1; /* the directory stream's own descriptor */
}

#if defined(__SANITIZE_ADDRESS__)
#define QT_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define QT_ASAN 1
#endif
#endif

int qt_asan_enabled(void) {
#ifdef QT_ASAN
  return 1;
#else
  return 0;
#endif
}

size_t qt_heap_in_use(void) {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks;
}

/* ---- Self-checking payloads ------------------------------------------ */

static uint64_t splitmix64(uint64_t x) {
  x += UINT64_C(0x9e3779b97f4a7c15);
  x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
  return x ^ (x >> 31);
}

/* Eight bytes per mixed block: cheap enough for 64 MiB under ASan, and
 * every position differs from its neighbours and from other seeds. */
static uint64_t pattern_block(uint64_t seed, uint64_t block) {
  return splitmix64(splitmix64(seed) ^ block);
}

void qt_pattern_fill(uint64_t seed, uint64_t offset, uint8_t *buf, size_t len) {
  size_t i = 0;
  while (i < len) {
    uint64_t pos = offset + i;
    uint64_t v = pattern_block(seed, pos >> 3);
    unsigned k;
    for (k = (unsigned)(pos & 7); k < 8 && i < len; k++, i++)
      buf[i] = (uint8_t)(v >> (k * 8));
  }
}

int qt_pattern_check(uint64_t seed, uint64_t offset, const uint8_t *buf,
                     size_t len) {
  size_t i = 0;
  while (i < len) {
    uint64_t pos = offset + i;
    uint64_t v = pattern_block(seed, pos >> 3);
    unsigned k;
    for (k = (unsigned)(pos & 7); k < 8 && i < len; k++, i++)
      if (buf[i] != (uint8_t)(v >> (k * 8))) return 0;
  }
  return 1;
}

uint64_t qt_fnv1a(uint64_t h, const uint8_t *p, size_t n) {
  size_t i;
  for (i = 0; i < n; i++) {
    h ^= p[i];
    h *= UINT64_C(0x100000001b3);
  }
  return h;
}

void qt_put_be64(uint8_t *p, uint64_t v) {
  int i;
  for (i = 7; i >= 0; i--, v >>= 8) p[i] = (uint8_t)v;
}

uint64_t qt_get_be64(const uint8_t *p) {
  uint64_t v = 0;
  int i;
  for (i = 0; i < 8; i++) v = (v << 8) | p[i];
  return v;
}

static void put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

static uint32_t get_be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

void qt_dgram_fill(uint32_t seed, uint8_t *buf, size_t len) {
  put_be32(buf, seed);
  put_be32(buf + 4, (uint32_t)len);
  qt_pattern_fill(seed, QT_DGRAM_MIN, buf + QT_DGRAM_MIN, len - QT_DGRAM_MIN);
}

int qt_dgram_check(const uint8_t *buf, size_t len) {
  if (len < QT_DGRAM_MIN || get_be32(buf + 4) != len) return 0;
  return qt_pattern_check(get_be32(buf), QT_DGRAM_MIN, buf + QT_DGRAM_MIN,
                          len - QT_DGRAM_MIN);
}

/* ---- TLS configs ----------------------------------------------------- */

qrpc_tls_config *qt_server_tls(const qt_certs *c) {
  qrpc_tls_config *cfg = NULL;
  if (qrpc_tls_config_new(&cfg) != 0) return NULL;
  if (qrpc_tls_config_set_cert_pem(cfg, c->server_cert_pem,
                                   c->server_key_pem) != 0) {
    qrpc_tls_config_free(cfg);
    return NULL;
  }
  return cfg;
}

qrpc_tls_config *qt_client_tls(const char *ca_pem) {
  qrpc_tls_config *cfg = NULL;
  if (qrpc_tls_config_new(&cfg) != 0) return NULL;
  if (qrpc_tls_config_set_ca_pem(cfg, ca_pem) != 0) {
    qrpc_tls_config_free(cfg);
    return NULL;
  }
  return cfg;
}

/* ---- Close records --------------------------------------------------- */

void qt_close_rec_set(qt_close_rec *r, const qrpc_close_info *info) {
  r->count++;
  r->kind = info->kind;
  r->local = info->local;
  r->code = info->code;
  r->error = info->error;
  snprintf(r->reason, sizeof(r->reason), "%s",
           info->reason ? info->reason : "(null)");
}

/* ---- Echo server ----------------------------------------------------- */

enum { SRV_ECHO, SRV_SINK, SRV_RESET };

typedef struct srv_stream {
  qt_server *srv;
  int mode;
  int fin_seen;
  int finish_pending; /* FIN seen while echo bytes still wait */
  uint8_t *pending;   /* echo bytes the stream refused with EAGAIN */
  size_t pending_len;
  size_t pending_cap;
  uint64_t count;
  uint64_t hash;
} srv_stream;

static int has_prefix(const char *name, size_t len, const char *prefix) {
  size_t n = strlen(prefix);
  return len >= n && memcmp(name, prefix, n) == 0;
}

static int pending_append(srv_stream *st, const uint8_t *data, size_t len) {
  if (st->pending_len + len > st->pending_cap) {
    size_t cap = st->pending_cap ? st->pending_cap : 65536;
    uint8_t *p;
    while (cap < st->pending_len + len) cap *= 2;
    p = realloc(st->pending, cap);
    if (!p) return -1;
    st->pending = p;
    st->pending_cap = cap;
  }
  memcpy(st->pending + st->pending_len, data, len);
  st->pending_len += len;
  return 0;
}

static void srv_finish(qrpc_stream *s, srv_stream *st) {
  if (qrpc_stream_finish(s) != 0) st->srv->stream_write_errors++;
}

static void srv_echo(qrpc_stream *s, srv_stream *st, const uint8_t *data,
                     size_t len) {
  int rv;
  if (len == 0) return;
  if (st->pending_len > 0) {
    if (pending_append(st, data, len) != 0) st->srv->stream_write_errors++;
    return;
  }
  rv = qrpc_stream_write(s, data, len);
  if (rv == QRPC_EAGAIN) {
    st->srv->stream_eagains++;
    /* Stop reading until the peer takes our echo: the same back-pressure
     * a real server applies. */
    if (pending_append(st, data, len) != 0) st->srv->stream_write_errors++;
    qrpc_stream_pause_read(s, 1);
  } else if (rv != 0) {
    st->srv->stream_write_errors++;
  }
}

static void srv_sink_done(qrpc_stream *s, srv_stream *st) {
  uint8_t reply[QT_SINK_REPLY_LEN];
  qt_server *srv = st->srv;
  srv->sinks_done++;
  srv->sink_bytes = st->count;
  srv->sink_hash = st->hash;
  qt_put_be64(reply, st->count);
  qt_put_be64(reply + 8, st->hash);
  if (qrpc_stream_write(s, reply, sizeof(reply)) != 0)
    srv->stream_write_errors++;
  srv_finish(s, st);
}

static void srv_on_read(qrpc_stream *s, const uint8_t *data, size_t len,
                        int fin, void *ud) {
  srv_stream *st = ud;
  qt_server *srv = st->srv;
  if (st->fin_seen) {
    srv->stream_read_after_fin++;
    return;
  }
  srv->bytes_in += len;
  if (fin) {
    st->fin_seen = 1;
    srv->stream_fins++;
  }
  switch (st->mode) {
  case SRV_RESET:
    /* The stream state may be gone once reset returns. */
    qrpc_stream_reset(s, QT_SERVER_RESET_CODE);
    return;
  case SRV_SINK:
    st->count += len;
    st->hash = qt_fnv1a(st->hash, data, len);
    if (fin) srv_sink_done(s, st);
    return;
  default:
    srv_echo(s, st, data, len);
    if (fin) {
      if (st->pending_len == 0)
        srv_finish(s, st);
      else
        st->finish_pending = 1;
    }
    return;
  }
}

static void srv_on_writable(qrpc_stream *s, void *ud) {
  srv_stream *st = ud;
  int rv;
  if (st->pending_len == 0) return;
  rv = qrpc_stream_write(s, st->pending, st->pending_len);
  if (rv == QRPC_EAGAIN) return;
  if (rv != 0) st->srv->stream_write_errors++;
  st->pending_len = 0;
  if (st->finish_pending) {
    st->finish_pending = 0;
    srv_finish(s, st);
  }
  /* Last, because resuming may deliver held bytes from inside the call. */
  if (!st->fin_seen) qrpc_stream_pause_read(s, 0);
}

static void srv_on_reset(qrpc_stream *s, uint64_t code, void *ud) {
  srv_stream *st = ud;
  st->srv->stream_resets++;
  st->srv->last_reset_code = code;
}

static void srv_on_stop_sending(qrpc_stream *s, uint64_t code, void *ud) {
  srv_stream *st = ud;
  st->srv->stream_stop_sendings++;
}

static void srv_on_stream_closed(qrpc_stream *s, int error, void *ud) {
  srv_stream *st = ud;
  qt_server *srv = st->srv;
  srv->streams_closed++;
  if (srv->last_stream == s) srv->last_stream = NULL;
  free(st->pending);
  free(st);
}

static void srv_on_stream(qrpc_conn *c, qrpc_stream *s, const char *name,
                          size_t name_len, void *ud) {
  static const qrpc_stream_callbacks cbs = {
      .on_read = srv_on_read,
      .on_reset = srv_on_reset,
      .on_stop_sending = srv_on_stop_sending,
      .on_writable = srv_on_writable,
      .on_closed = srv_on_stream_closed,
  };
  qt_server *srv = ud;
  srv_stream *st;
  int paused = 0;

  srv->streams++;
  srv->last_name_len = name_len < sizeof(srv->last_name) - 1
                           ? name_len
                           : sizeof(srv->last_name) - 1;
  memcpy(srv->last_name, name, srv->last_name_len);
  srv->last_name[srv->last_name_len] = '\0';

  st = calloc(1, sizeof(*st));
  if (!st) {
    srv->stream_write_errors++;
    return; /* left without callbacks: the library resets it */
  }
  st->srv = srv;
  st->hash = QT_FNV1A_INIT;
  if (has_prefix(name, name_len, "sink")) {
    st->mode = SRV_SINK;
  } else if (has_prefix(name, name_len, "paused")) {
    st->mode = SRV_SINK;
    paused = 1;
  } else if (has_prefix(name, name_len, "reset")) {
    st->mode = SRV_RESET;
  } else {
    st->mode = SRV_ECHO;
  }
  qrpc_stream_set_callbacks(s, &cbs, st);
  if (paused) qrpc_stream_pause_read(s, 1);
  srv->last_stream = s;
}

static void srv_on_established(qrpc_conn *c, void *ud) {
  qt_server *srv = ud;
  int i;
  srv->established++;
  srv->live++;
  srv->last_conn = c;
  for (i = 0; i < QT_SERVER_MAX_CONNS; i++) {
    if (!srv->conns[i]) {
      srv->conns[i] = c;
      return;
    }
  }
  srv->conns_overflow++;
}

static void srv_on_datagram(qrpc_conn *c, const uint8_t *data, size_t len,
                            void *ud) {
  qt_server *srv = ud;
  srv->datagrams++;
  if (!qt_dgram_check(data, len)) srv->datagrams_bad++;
  if (len > srv->datagram_max_len) srv->datagram_max_len = len;
  if (srv->echo_datagrams && qrpc_conn_send_datagram(c, data, len) != 0)
    srv->datagram_echo_errors++;
}

static void srv_on_closed(qrpc_conn *c, const qrpc_close_info *info, void *ud) {
  qt_server *srv = ud;
  int i, found = 0;
  srv->closed++;
  qt_close_rec_set(&srv->last_close, info);
  if ((unsigned)info->kind <= QRPC_CLOSE_DEAD_PEER)
    srv->closed_by_kind[info->kind]++;
  if (info->local) srv->closed_local++;
  for (i = 0; i < QT_SERVER_MAX_CONNS; i++) {
    if (srv->conns[i] == c) {
      srv->conns[i] = NULL;
      found = 1;
      break;
    }
  }
  if (found || srv->conns_overflow > 0)
    srv->live--;
  else
    srv->closed_before_established++;
  if (srv->last_conn == c) srv->last_conn = NULL;
}

int qt_server_start(qt_server *s, qrpc_loop *loop, const char *bind,
                    qrpc_tls_config *tls, const qrpc_endpoint_opts *opts) {
  static const qrpc_conn_callbacks cbs = {
      .on_established = srv_on_established,
      .on_stream = srv_on_stream,
      .on_datagram = srv_on_datagram,
      .on_closed = srv_on_closed,
  };
  int rv;
  memset(s, 0, sizeof(*s));
  s->loop = loop;
  s->echo_datagrams = 1;
  rv = qrpc_endpoint_listen(loop, bind, tls, opts, &cbs, s, &s->ep);
  if (rv != 0) {
    s->ep = NULL;
    return rv;
  }
  s->port = qrpc_endpoint_port(s->ep);
  snprintf(s->addr, sizeof(s->addr),
           bind[0] == '[' ? "[::1]:%u" : "127.0.0.1:%u", (unsigned)s->port);
  return 0;
}

void qt_server_stop(qt_server *s) {
  qrpc_endpoint *ep = s->ep;
  s->ep = NULL;
  qrpc_endpoint_free(ep);
}

/* ---- Client fixture -------------------------------------------------- */

static void cl_on_established(qrpc_conn *c, void *ud) {
  qt_client *cl = ud;
  const char *alpn = qrpc_conn_alpn(c);
  cl->established++;
  cl->alpn_ok_at_established = alpn && strcmp(alpn, "qrpc/1") == 0;
}

static void cl_on_stream(qrpc_conn *c, qrpc_stream *s, const char *name,
                         size_t name_len, void *ud) {
  qt_client *cl = ud;
  cl->peer_streams++;
}

static void cl_on_datagram(qrpc_conn *c, const uint8_t *data, size_t len,
                           void *ud) {
  qt_client *cl = ud;
  cl->datagrams++;
  cl->datagram_bytes += len;
  if (!qt_dgram_check(data, len)) cl->datagrams_bad++;
}

static void cl_on_closed(qrpc_conn *c, const qrpc_close_info *info, void *ud) {
  qt_client *cl = ud;
  cl->closed++;
  qt_close_rec_set(&cl->close, info);
  cl->conn = NULL;
}

int qt_client_connect(qt_client *cl, qrpc_loop *loop, const char *addr,
                      const char *server_name, qrpc_tls_config *tls,
                      const qrpc_conn_opts *opts) {
  static const qrpc_conn_callbacks cbs = {
      .on_established = cl_on_established,
      .on_stream = cl_on_stream,
      .on_datagram = cl_on_datagram,
      .on_closed = cl_on_closed,
  };
  int rv;
  memset(cl, 0, sizeof(*cl));
  cl->loop = loop;
  rv = qrpc_conn_connect(loop, addr, server_name, tls, opts, &cbs, cl,
                         &cl->conn);
  if (rv != 0) cl->conn = NULL;
  return rv;
}

void qt_client_close(qt_client *cl) {
  if (cl->conn) qrpc_conn_close(cl->conn, 0, NULL);
}

typedef struct connect_wait {
  qt_client *cl;
  qt_server *srv;
  int srv_target;
} connect_wait;

static int connect_done(void *arg) {
  connect_wait *w = arg;
  return w->cl->closed > 0 ||
         (w->cl->established > 0 && w->srv->established >= w->srv_target);
}

int qt_client_connect_wait(qt_client *cl, qrpc_loop *loop, qt_server *srv,
                           qrpc_tls_config *tls, const qrpc_conn_opts *opts) {
  connect_wait w = {cl, srv, srv->established + 1};
  int rv = qt_client_connect(cl, loop, srv->addr, NULL, tls, opts);
  if (rv != 0) return rv;
  if (!qt_run_until(loop, connect_done, &w, QT_WAIT_MS) || cl->closed > 0)
    return QRPC_ETIMEDOUT;
  return 0;
}

int qt_pair_start(qrpc_loop *loop, const qt_certs *certs, qt_server *srv,
                  const qrpc_endpoint_opts *srv_opts, qt_client *cl,
                  const qrpc_conn_opts *cl_opts) {
  qrpc_tls_config *stls = qt_server_tls(certs);
  qrpc_tls_config *ctls = qt_client_tls(certs->ca_pem);
  int rv = QRPC_ETLS;
  memset(cl, 0, sizeof(*cl));
  memset(srv, 0, sizeof(*srv));
  if (stls && ctls) {
    rv = qt_server_start(srv, loop, "127.0.0.1:0", stls, srv_opts);
    if (rv == 0) rv = qt_client_connect_wait(cl, loop, srv, ctls, cl_opts);
  }
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
  return rv;
}

void qt_close_all(qrpc_loop *loop, qt_server *srv, qt_client *clients,
                  size_t n) {
  size_t i;
  for (i = 0; i < n; i++) qt_client_close(&clients[i]);
  if (srv) qt_server_stop(srv);
  qt_run_until_released(loop, QT_WAIT_MS);
}

/* ---- Client stream transfer ------------------------------------------ */

static void xfer_on_read(qrpc_stream *s, const uint8_t *data, size_t len,
                         int fin, void *ud) {
  qt_xfer *x = ud;
  if (x->fins) {
    x->read_after_fin++;
    return;
  }
  if (x->expect_sink) {
    if (x->recvd + len > QT_SINK_REPLY_LEN)
      x->mismatch = 1;
    else
      memcpy(x->reply + x->recvd, data, len);
  } else if (x->recvd + len > x->len ||
             !qt_pattern_check(x->seed, x->recvd, data, len)) {
    x->mismatch = 1;
  }
  x->recvd += len;
  if (fin) x->fins++;
}

static void xfer_on_reset(qrpc_stream *s, uint64_t code, void *ud) {
  qt_xfer *x = ud;
  x->resets++;
  x->reset_code = code;
}

static void xfer_on_stop_sending(qrpc_stream *s, uint64_t code, void *ud) {
  qt_xfer *x = ud;
  x->stop_sendings++;
}

static void xfer_on_writable(qrpc_stream *s, void *ud) {
  qt_xfer *x = ud;
  x->writables++;
  qt_xfer_pump(x);
}

static void xfer_on_acked(qrpc_stream *s, uint64_t offset, void *ud) {
  qt_xfer *x = ud;
  if (offset < x->acked || offset > x->sent) x->acked_backwards++;
  x->acked = offset;
}

static int xfer_verdict(const qt_xfer *x) {
  if (x->closes != 1 || x->close_error != 0 || x->fins != 1 ||
      x->read_after_fin || x->mismatch || x->write_error || x->resets ||
      x->sent != x->len || !x->finished)
    return 0;
  if (x->expect_sink)
    return x->recvd == QT_SINK_REPLY_LEN && qt_get_be64(x->reply) == x->len &&
           qt_get_be64(x->reply + 8) == x->sent_hash;
  return x->recvd == x->len;
}

static void xfer_on_closed(qrpc_stream *s, int error, void *ud) {
  qt_xfer *x = ud;
  x->closes++;
  x->close_error = error;
  x->s = NULL;
  x->ok = xfer_verdict(x);
  if (x->stats) {
    x->stats->closed++;
    if (x->ok)
      x->stats->ok++;
    else
      x->stats->failed++;
  }
}

void qt_xfer_pump(qt_xfer *x) {
  uint8_t buf[QT_XFER_CHUNK];
  if (x->in_pump) return;
  x->in_pump = 1;
  while (x->s && x->sent < x->len && !x->write_error) {
    size_t n = x->len - x->sent < sizeof(buf) ? (size_t)(x->len - x->sent)
                                              : sizeof(buf);
    size_t b;
    int rv;
    qt_pattern_fill(x->seed, x->sent, buf, n);
    rv = qrpc_stream_write(x->s, buf, n);
    if (rv == QRPC_EAGAIN) {
      x->eagain++;
      break;
    }
    if (rv != 0) {
      x->write_error = rv;
      break;
    }
    x->sent_hash = qt_fnv1a(x->sent_hash, buf, n);
    x->sent += n;
    if (n > x->max_chunk) x->max_chunk = n;
    if (x->s && (b = qrpc_stream_buffered(x->s)) > x->max_buffered)
      x->max_buffered = b;
  }
  if (x->s && x->sent == x->len && !x->finished && !x->no_finish &&
      !x->write_error) {
    int rv = qrpc_stream_finish(x->s);
    if (rv == 0)
      x->finished = 1;
    else
      x->write_error = rv;
  }
  x->in_pump = 0;
}

int qt_xfer_start(qt_xfer *x, qrpc_conn *c, const char *name, uint64_t len,
                  uint64_t seed, int flags, qt_xfer_stats *stats) {
  static const qrpc_stream_callbacks cbs = {
      .on_read = xfer_on_read,
      .on_reset = xfer_on_reset,
      .on_stop_sending = xfer_on_stop_sending,
      .on_writable = xfer_on_writable,
      .on_acked = xfer_on_acked,
      .on_closed = xfer_on_closed,
  };
  int rv;
  memset(x, 0, sizeof(*x));
  x->stats = stats;
  x->seed = seed;
  x->len = len;
  x->sent_hash = QT_FNV1A_INIT;
  x->no_finish = (flags & QT_XFER_NO_FINISH) != 0;
  x->expect_sink =
      strncmp(name, "sink", 4) == 0 || strncmp(name, "paused", 6) == 0;
  rv = qrpc_stream_open(c, name, &cbs, x, &x->s);
  if (rv != 0) {
    x->s = NULL;
    return rv;
  }
  if (stats) stats->opened++;
  qt_xfer_pump(x);
  return 0;
}

/* ---- Plain UDP helpers ----------------------------------------------- */

socklen_t qt_loopback_addr(int family, uint16_t port,
                           struct sockaddr_storage *ss) {
  memset(ss, 0, sizeof(*ss));
  if (family == AF_INET6) {
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
    a6->sin6_family = AF_INET6;
    a6->sin6_port = htons(port);
    a6->sin6_addr = in6addr_loopback;
    return sizeof(*a6);
  } else {
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    a4->sin_family = AF_INET;
    a4->sin_port = htons(port);
    a4->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sizeof(*a4);
  }
}

uint16_t qt_sockaddr_port(const struct sockaddr_storage *ss) {
  if (ss->ss_family == AF_INET6)
    return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
  if (ss->ss_family == AF_INET)
    return ntohs(((const struct sockaddr_in *)ss)->sin_port);
  return 0;
}

static int udp_bound(int family) {
  struct sockaddr_storage ss;
  socklen_t len = qt_loopback_addr(family, 0, &ss);
  int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  if (bind(fd, (struct sockaddr *)&ss, len) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

int qt_udp_socket_v4(void) { return udp_bound(AF_INET); }

int qt_ipv6_available(void) {
  int fd = udp_bound(AF_INET6);
  if (fd < 0) return 0;
  close(fd);
  return 1;
}

int qt_udp_send_v4(int fd, uint16_t port, const void *buf, size_t len) {
  struct sockaddr_storage ss;
  socklen_t sl = qt_loopback_addr(AF_INET, port, &ss);
  ssize_t n = sendto(fd, buf, len, 0, (struct sockaddr *)&ss, sl);
  return n == (ssize_t)len ? 0 : -1;
}

static void sink_on_readable(evutil_socket_t fd, short what, void *arg) {
  qt_udp_sink *u = arg;
  uint8_t buf[2048];
  while (recv(fd, buf, sizeof(buf), 0) >= 0) u->received++;
}

int qt_udp_sink_open(qt_udp_sink *u, qrpc_loop *loop) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  memset(u, 0, sizeof(*u));
  u->fd = udp_bound(AF_INET);
  if (u->fd < 0) return -1;
  if (getsockname(u->fd, (struct sockaddr *)&ss, &len) != 0) goto fail;
  u->port = qt_sockaddr_port(&ss);
  snprintf(u->addr, sizeof(u->addr), "127.0.0.1:%u", (unsigned)u->port);
  u->ev = event_new(qrpc_loop_base(loop), u->fd, EV_READ | EV_PERSIST,
                    sink_on_readable, u);
  if (!u->ev || event_add(u->ev, NULL) != 0) goto fail;
  return 0;
fail:
  qt_udp_sink_close(u);
  return -1;
}

void qt_udp_sink_close(qt_udp_sink *u) {
  if (u->ev) event_free(u->ev);
  if (u->fd >= 0) close(u->fd);
  u->ev = NULL;
  u->fd = -1;
}

int qt_env_setup(qt_certs *certs, qrpc_loop **loop, qrpc_tls_config **stls,
                 qrpc_tls_config **ctls) {
  *loop = NULL;
  *stls = *ctls = NULL;
  if (qt_certs_generate(certs) != 0) return -1;
  if (qrpc_loop_new(NULL, loop) == 0) {
    *stls = qt_server_tls(certs);
    *ctls = qt_client_tls(certs->ca_pem);
    if (*stls && *ctls) return 0;
  }
  qt_env_teardown(certs, loop, stls, ctls);
  return -1;
}

void qt_env_teardown(qt_certs *certs, qrpc_loop **loop, qrpc_tls_config **stls,
                     qrpc_tls_config **ctls) {
  qrpc_tls_config_free(*stls);
  qrpc_tls_config_free(*ctls);
  *stls = *ctls = NULL;
  qrpc_loop_free(*loop);
  *loop = NULL;
  qt_certs_free(certs);
}
