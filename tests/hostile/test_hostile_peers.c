/*
 * Hostile peers at the transport and stream level: random UDP garbage at
 * the server's port, truncated, corrupted and replayed QUIC packets, a
 * client that opens every stream it may and never reads, a client that
 * sends frames of the largest size slowly, and floods of new connections,
 * complete and half-open.
 *
 * In every test a well-behaved qrpc_client keeps a window of calls going
 * to the same server the whole time; each test asserts that it was served
 * throughout (calls kept completing, none failed, its connection stayed
 * up) and, in builds without AddressSanitizer, that the heap the process
 * uses stayed within a stated bound above its baseline and came back
 * afterwards. The hostile peers run in the same process, so the bounds
 * count their memory too; they are set up to hold little of their own.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "fault_fixtures.h"
#include "harness.h"
#include "lossy_proxy.h"
#include "qrpc/qrpc.h"
#include "quic/rpcstream.h"
#include "quic/testing.h"
#include "rpc_harness.h"
#include "util/varint.h"
#include "wire/frame.h"

#define MiB (1024u * 1024u)

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_certs_generate(&certs), 0);
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
  stls = qt_server_tls(&certs);
  ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(stls);
  ck_assert_ptr_nonnull(ctls);
  /* Refusals and protocol errors are the point here; keep the log quiet. */
  qrpc_log_set_level(QRPC_LOG_NONE);
}

static void teardown(void) {
  qrpc_log_set_level(QRPC_LOG_WARN);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
  stls = ctls = NULL;
  qrpc_loop_free(loop);
  loop = NULL;
  qt_certs_free(&certs);
}

/* ---- The server and its well-behaved client ----------------------------- */

/* Calls the good client keeps in flight (refilled between loop slices),
 * each with its own deadline, so a stall shows up as failures rather than
 * as a hang. */
#define GOOD_WINDOW 4
#define GOOD_TIMEOUT_MS 5000
/* The longest the good client may go without a completed call. Loopback
 * answers in well under a millisecond; this allows for a loaded machine
 * and the sanitizers. */
#define GOOD_MAX_GAP_MS 1500

typedef struct env {
  qrpc_server *srv;
  char addr[64];
  qt_rpc_peers peers;
  qt_proxy *proxy; /* when the good client goes through one */
  qt_rpc_client good;
  qf_pump pump;
  uint64_t ok0;
  uint64_t gap_from_ms;
  uint64_t max_gap_ms;
  size_t heap0;
  size_t heap_peak;
  int fds0;
  size_t conns0; /* connections the loop holds at the baseline */
} env;

static void env_server_opts(qrpc_server_opts *so, env *e) {
  qrpc_server_opts_default(so);
  qt_rpc_peers_install(so, &e->peers);
}

/* Samples what the assertions look at and paces the good client; called
 * between loop slices (every few milliseconds). */
static void watch(env *e) {
  qf_pump_fill(&e->pump);
  uint64_t now = qt_now_ms();
  uint64_t since =
      e->pump.last_ok_ms > e->gap_from_ms ? e->pump.last_ok_ms : e->gap_from_ms;
  if (now > since && now - since > e->max_gap_ms) e->max_gap_ms = now - since;
  size_t heap = qf_heap_in_use();
  if (heap > e->heap_peak) e->heap_peak = heap;
}

/* Every wait during an attack goes through these, so the good client is
 * kept going and watched the whole time. */
typedef struct watched {
  env *e;
  qt_pred_fn pred;
  void *arg;
} watched;

static int watched_pred(void *arg) {
  watched *w = arg;
  watch(w->e);
  return w->pred ? w->pred(w->arg) : 0;
}

static int env_run_until(env *e, qt_pred_fn pred, void *arg, uint64_t ms) {
  watched w = {e, pred, arg};
  return qt_run_until(loop, watched_pred, &w, ms);
}

typedef struct count_at_least {
  const int *counter;
  int target;
} count_at_least;

static int count_reached(void *arg) {
  count_at_least *c = arg;
  return *c->counter >= c->target;
}

static int env_run_until_count(env *e, const int *counter, int target,
                               uint64_t ms) {
  count_at_least c = {counter, target};
  return env_run_until(e, count_reached, &c, ms);
}

static void env_run_for(env *e, uint64_t ms) {
  env_run_until(e, NULL, NULL, ms);
}

static void env_start(env *e, const qrpc_server_opts *so, int via_proxy) {
  memset(e, 0, sizeof(*e));
  qrpc_server_opts o;
  if (so) {
    o = *so;
  } else {
    env_server_opts(&o, e);
  }
  qt_rpc_peers_install(&o, &e->peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &o, &e->srv,
                                       e->addr, sizeof(e->addr)),
                   0);
  ck_assert_int_eq(qf_register_methods(e->srv), 0);
  const char *target = e->addr;
  if (via_proxy) {
    ck_assert_int_eq(qt_proxy_new(qrpc_loop_base(loop), e->addr, 99, &e->proxy),
                     0);
    target = qt_proxy_addr(e->proxy);
  }
  ck_assert_int_eq(qt_rpc_client_start(&e->good, loop, target, ctls, NULL), 0);
  ck_assert(qt_rpc_client_wait_connects(&e->good, 1, QT_WAIT_MS));
  ck_assert_int_eq(
      qf_pump_start(&e->pump, e->good.cli, 0, GOOD_WINDOW, GOOD_TIMEOUT_MS), 0);
  /* A few calls per slice: enough to see any stall, without a tight
   * request loop competing with the attack for the CPU. */
  e->pump.paced = 1;
  /* Warm up (lazy allocations, TLS caches), then take the baseline. */
  env_run_for(e, 300);
  ck_assert_uint_gt(e->pump.ok, 0);
  e->heap0 = e->heap_peak = qf_heap_in_use();
  e->fds0 = qt_count_fds();
  e->conns0 = qrpci_loop_conn_count(loop);
  e->ok0 = e->pump.ok;
  e->gap_from_ms = qt_now_ms();
  e->max_gap_ms = 0;
}

/* The good client was served throughout: at least min_ok calls completed
 * since the baseline, none failed, no gap was longer than allowed, and its
 * connection never dropped. */
static void env_check_served(env *e, uint64_t min_ok, const char *what) {
  uint64_t ok = e->pump.ok - e->ok0;
  printf("%s: good client: %llu calls, longest gap %llu ms", what,
         (unsigned long long)ok, (unsigned long long)e->max_gap_ms);
  if (!qt_asan_enabled())
    printf(", heap peak +%zu KiB over baseline",
           e->heap_peak > e->heap0 ? (e->heap_peak - e->heap0) / 1024 : 0);
  printf("\n");
  ck_assert_uint_ge(ok, min_ok);
  ck_assert_uint_eq(e->pump.failed, 0);
  ck_assert_uint_eq(e->pump.wrong_payload, 0);
  ck_assert_uint_le(e->max_gap_ms, GOOD_MAX_GAP_MS);
  ck_assert_int_eq(e->good.connects, 1);
  ck_assert_int_eq(e->good.lost, 0);
}

static void env_check_heap_peak(env *e, size_t bound) {
  if (qt_asan_enabled()) return;
  ck_assert_msg(e->heap_peak <= e->heap0 + bound,
                "heap peaked %zu KiB over its baseline; the bound is %zu KiB",
                (e->heap_peak - e->heap0) / 1024, bound / 1024);
}

static int back_to_baseline(void *arg) {
  env *e = arg;
  return qrpci_loop_conn_count(loop) <= e->conns0;
}

/* After the attack: once the hostile connections have finished their
 * closing periods, memory and descriptors come back to the baseline
 * (within slack for allocator caches and the good client's own traffic). */
static void env_check_recovered(env *e, size_t slack) {
  ck_assert_msg(env_run_until(e, back_to_baseline, e, 2 * QT_WAIT_MS),
                "%zu connections still held, %zu at the baseline",
                qrpci_loop_conn_count(loop), e->conns0);
  if (!qt_asan_enabled()) {
    size_t heap = qf_heap_in_use();
    ck_assert_msg(heap <= e->heap0 + slack,
                  "heap %zu KiB over its baseline after the attack",
                  heap > e->heap0 ? (heap - e->heap0) / 1024 : 0);
  }
  ck_assert_int_eq(qt_count_fds(), e->fds0);
}

static int pump_idle(void *arg) { return ((qf_pump *)arg)->in_flight == 0; }

static void env_stop(env *e) {
  qf_pump_stop(&e->pump);
  ck_assert(qt_run_until(loop, pump_idle, &e->pump, 2 * GOOD_TIMEOUT_MS));
  qf_pump_free(&e->pump);
  ck_assert_int_eq(qt_rpc_close_all(loop, &e->srv, &e->good, 1), 1);
  qt_proxy_free(e->proxy);
  e->proxy = NULL;
}

static uint64_t rng_state = 0x9e3779b97f4a7c15u;

static uint32_t rnd(void) {
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 16);
}

/* ---- Random UDP garbage ----------------------------------------------------
 */

#define GARBAGE_SOCKETS 4
#define GARBAGE_PACKETS 40000
#define GARBAGE_PER_SLICE 400

/* Kinds of garbage: random bytes; Initial-looking long headers (QUIC v1,
 * random connection ids, padded to 1200 bytes so a server must look at
 * them); an unknown version (answered with Version Negotiation); short
 * headers with random connection ids. */
static size_t garbage_packet(uint8_t *p, size_t cap) {
  size_t len, i;
  uint32_t kind = rnd() % 4;
  if (kind == 0) {
    len = 1 + rnd() % 1500;
    for (i = 0; i < len && i < cap; i++) p[i] = (uint8_t)rnd();
    return len < cap ? len : cap;
  }
  len = kind == 3 ? 20 + rnd() % 1300 : 1200 + rnd() % 150;
  if (len > cap) len = cap;
  for (i = 0; i < len; i++) p[i] = (uint8_t)rnd();
  if (kind == 3) {
    p[0] = (uint8_t)(0x40 | (p[0] & 0x3f));
    return len;
  }
  p[0] = (uint8_t)(0xc0 | (p[0] & 0x0f)); /* long header, Initial */
  uint32_t version = kind == 1 ? 1u : 0x1a2a3a4au;
  p[1] = (uint8_t)(version >> 24);
  p[2] = (uint8_t)(version >> 16);
  p[3] = (uint8_t)(version >> 8);
  p[4] = (uint8_t)version;
  p[5] = (uint8_t)(8 + rnd() % 13); /* DCID length 8..20 */
  size_t o = 6 + p[5];
  p[o] = (uint8_t)(rnd() % 21); /* SCID length */
  o += 1 + p[o];
  p[o++] = 0; /* no token */
  uint64_t rest = len - o - 2;
  p[o] = (uint8_t)(0x40 | (rest >> 8));
  p[o + 1] = (uint8_t)rest;
  return len;
}

static int only_good_left(void *arg) {
  qrpc_endpoint_stats st;
  qrpc_endpoint_get_stats(qrpc_server_endpoint(arg), &st);
  return st.connections == 1;
}

typedef struct garbage {
  int fds[GARBAGE_SOCKETS];
  uint16_t port;
  int sent;
  int send_errors;
} garbage;

static int garbage_step(void *arg) {
  garbage *g = arg;
  uint8_t pkt[1500];
  for (int i = 0; i < GARBAGE_PER_SLICE && g->sent < GARBAGE_PACKETS; i++) {
    size_t n = garbage_packet(pkt, sizeof(pkt));
    if (qt_udp_send_v4(g->fds[g->sent % GARBAGE_SOCKETS], g->port, pkt, n) != 0)
      g->send_errors++;
    g->sent++;
  }
  return g->sent >= GARBAGE_PACKETS;
}

/* The half-open connections random Initials may cost are capped by
 * max_handshakes, each no more than a TLS session and a QUIC connection. */
#define GARBAGE_MAX_HANDSHAKES 64
#define GARBAGE_HEAP_BOUND (24 * MiB)

START_TEST(test_udp_garbage) {
  env e;
  garbage g;
  qrpc_server_opts so;
  qrpc_endpoint_stats st;
  env_server_opts(&so, &e);
  so.endpoint.max_handshakes = GARBAGE_MAX_HANDSHAKES;
  so.endpoint.conn.handshake_timeout_ms = 1000;
  env_start(&e, &so, 0);
  memset(&g, 0, sizeof(g));
  g.port = qrpc_server_port(e.srv);
  for (int i = 0; i < GARBAGE_SOCKETS; i++) {
    g.fds[i] = qt_udp_socket_v4();
    ck_assert_int_ge(g.fds[i], 0);
  }
  /* The receive buffer drops part of a burst; that is the kernel's
   * business, the server must survive whatever reaches it. */
  ck_assert(env_run_until(&e, garbage_step, &g, 60000));
  env_run_for(&e, 200);
  qrpc_endpoint_get_stats(qrpc_server_endpoint(e.srv), &st);
  printf("garbage: %d datagrams sent; server dropped %llu packets, refused "
         "%llu, %llu version negotiations, %llu handshakes failed\n",
         g.sent, (unsigned long long)st.packets_dropped,
         (unsigned long long)st.refused,
         (unsigned long long)st.version_negotiations_sent,
         (unsigned long long)st.handshake_failed);
  env_check_served(&e, 50, "garbage");
  env_check_heap_peak(&e, GARBAGE_HEAP_BOUND);
  ck_assert_uint_gt(st.packets_dropped + st.refused, 0);
  ck_assert_uint_eq(st.accepted, 1); /* only the good client */
  for (int i = 0; i < GARBAGE_SOCKETS; i++) close(g.fds[i]);
  /* Half-open connections made by Initial-looking garbage time out. */
  ck_assert(env_run_until(&e, only_good_left, e.srv, 5000));
  env_check_served(&e, 50, "after garbage");
  env_check_recovered(&e, 2 * MiB);
  env_stop(&e);
}
END_TEST

/* ---- Truncated, corrupted and replayed packets ----------------------------
 */

#define MUTANTS_PER_PACKET 2
#define REPLAY_EVERY 16
#define CAPTURED_MAX 64

typedef struct mutator {
  size_t good_flow; /* mutated copies added, original passed */
  int corrupt_flow; /* every packet corrupted in place; -1: none */
  uint8_t captured[CAPTURED_MAX][1500];
  size_t captured_len[CAPTURED_MAX];
  size_t ncaptured;
  uint64_t seen;
  uint64_t injected;
  uint64_t corrupted;
} mutator;

/* One damaged copy: cut short, bits flipped, or bytes of the header or
 * connection id changed. */
static size_t mutate(const uint8_t *src, size_t len, uint8_t *out) {
  size_t n = len;
  memcpy(out, src, len);
  switch (rnd() % 4) {
  case 0: n = rnd() % len; break;
  case 1: out[rnd() % len] ^= (uint8_t)(1u << (rnd() % 8)); break;
  case 2:
    for (int k = 0; k < 8; k++) out[rnd() % len] = (uint8_t)rnd();
    break;
  default:
    out[0] ^= (uint8_t)(1 + rnd() % 255);
    if (len > 1) out[1 + rnd() % (len - 1 < 20 ? len - 1 : 20)] ^= 0x55;
    break;
  }
  return n;
}

static int mutator_tap(qt_proxy *p, qt_dir dir, size_t flow, uint8_t *pkt,
                       size_t *len, size_t cap, void *ud) {
  (void)cap;
  mutator *m = ud;
  uint8_t copy[1500];
  if (*len == 0 || *len > sizeof(copy)) return 0;
  if ((int)flow == m->corrupt_flow) {
    /* Corrupted in place: the packet still goes, but cannot decrypt. */
    pkt[rnd() % *len] ^= (uint8_t)(1u << (rnd() % 8));
    m->corrupted++;
    return 0;
  }
  if (flow != m->good_flow) return 0;
  m->seen++;
  for (int i = 0; i < MUTANTS_PER_PACKET; i++) {
    size_t n = mutate(pkt, *len, copy);
    if (n > 0 && qt_proxy_inject(p, dir, flow, copy, n) == 0) m->injected++;
  }
  if (dir == QT_UP && m->ncaptured < CAPTURED_MAX) {
    memcpy(m->captured[m->ncaptured], pkt, *len);
    m->captured_len[m->ncaptured++] = *len;
  }
  /* Replays of old packets, handshake ones included. */
  if (dir == QT_UP && m->ncaptured > 0 && m->seen % REPLAY_EVERY == 0) {
    size_t k = rnd() % m->ncaptured;
    if (qt_proxy_inject(p, dir, flow, m->captured[k], m->captured_len[k]) == 0)
      m->injected++;
  }
  return 0;
}

typedef struct raw_peer {
  qrpc_conn *c;
  int established;
  int closed;
  qt_close_rec close;
} raw_peer;

static void raw_on_established(qrpc_conn *c, void *ud) {
  (void)c;
  ((raw_peer *)ud)->established++;
}

static void raw_on_closed(qrpc_conn *c, const qrpc_close_info *info, void *ud) {
  (void)c;
  raw_peer *r = ud;
  r->closed++;
  r->c = NULL;
  qt_close_rec_set(&r->close, info);
}

static const qrpc_conn_callbacks raw_cbs = {
    .on_established = raw_on_established, .on_closed = raw_on_closed};

static int raw_closed(void *arg) { return ((raw_peer *)arg)->closed > 0; }

START_TEST(test_corrupted_packets) {
  env e;
  mutator *m = calloc(1, sizeof(*m));
  raw_peer bad;
  qrpc_conn_opts co;
  qrpc_endpoint_stats st;
  ck_assert_ptr_nonnull(m);
  m->good_flow = 0;
  m->corrupt_flow = -1;
  env_start(&e, NULL, 1);
  /* The good client's packets both ways, with damaged copies and replays
   * alongside. */
  qt_proxy_set_tap(e.proxy, mutator_tap, m);
  env_run_for(&e, 3000);
  /* A second client whose every packet is damaged never gets in. */
  m->corrupt_flow = 1;
  memset(&bad, 0, sizeof(bad));
  qrpc_conn_opts_default(&co);
  co.handshake_timeout_ms = 1500;
  ck_assert_int_eq(qrpc_conn_connect(loop, qt_proxy_addr(e.proxy), "localhost",
                                     ctls, &co, &raw_cbs, &bad, &bad.c),
                   0);
  ck_assert(env_run_until(&e, raw_closed, &bad, 10000));
  env_run_for(&e, 200);
  qt_proxy_set_tap(e.proxy, NULL, NULL);
  qrpc_endpoint_get_stats(qrpc_server_endpoint(e.srv), &st);
  printf("corrupted: %llu packets seen, %llu damaged copies and replays, "
         "%llu corrupted in place; server dropped %llu\n",
         (unsigned long long)m->seen, (unsigned long long)m->injected,
         (unsigned long long)m->corrupted,
         (unsigned long long)st.packets_dropped);
  env_check_served(&e, 100, "corrupted");
  ck_assert_uint_gt(m->injected, 500);
  ck_assert_int_eq(bad.established, 0);
  ck_assert_int_eq(bad.closed, 1);
  ck_assert_uint_gt(m->corrupted, 0);
  ck_assert_uint_eq(st.accepted, 1);
  env_check_heap_peak(&e, 8 * MiB);
  env_stop(&e);
  free(m);
}
END_TEST

/* ---- Every stream open, nothing read --------------------------------------
 */

/* The hostile client opens RPC streams until the server's limit and on
 * each asks for large replies it never reads. The server may buffer what
 * flow control keeps from leaving, but only up to a bound: the stream
 * send buffer per stream (plus one reply being written). */
#define NOREAD_STREAM_BUFFER (64 * 1024)
#define NOREAD_REPLY (64 * 1024)
#define NOREAD_REQUESTS_PER_STREAM 16
#define NOREAD_MAX_STREAMS 100

typedef struct noread {
  raw_peer peer;
  qrpc_stream *s[NOREAD_MAX_STREAMS + 8];
  int nstreams;
  int open_refused; /* QRPC_ELIMIT when the limit was reached */
  uint64_t msgid;
  int requests;
  int closed_streams;
} noread;

static void noread_on_closed(qrpc_stream *s, int error, void *ud) {
  (void)error;
  noread *n = ud;
  n->closed_streams++;
  for (int i = 0; i < n->nstreams; i++)
    if (n->s[i] == s) n->s[i] = NULL;
}

static const qrpc_stream_callbacks noread_cbs = {.on_closed = noread_on_closed};

static void noread_open_all(noread *n) {
  for (;;) {
    qrpc_stream *s;
    int rv = qrpci_stream_open_rpc(n->peer.c, &noread_cbs, n, &s);
    if (rv != 0) {
      n->open_refused = rv;
      return;
    }
    ck_assert_int_lt(n->nstreams, NOREAD_MAX_STREAMS + 8);
    qrpc_stream_pause_read(s, 1);
    n->s[n->nstreams++] = s;
    uint8_t size[4];
    qf_put_be32(size, NOREAD_REPLY);
    for (int k = 0; k < NOREAD_REQUESTS_PER_STREAM; k++) {
      uint8_t frame[32];
      qrpci_frame f = qt_frame_request(++n->msgid, QF_M_BIG, 0, size, 4);
      size_t len = qrpci_frame_encode(frame, sizeof(frame), &f);
      ck_assert_uint_gt(len, 0);
      if (qrpc_stream_write(s, frame, len) == 0) n->requests++;
    }
  }
}

START_TEST(test_max_streams_never_read) {
  env e;
  noread *n = calloc(1, sizeof(*n));
  qrpc_server_opts so;
  qrpc_conn_opts co;
  ck_assert_ptr_nonnull(n);
  env_server_opts(&so, &e);
  so.endpoint.conn.stream_send_buffer = NOREAD_STREAM_BUFFER;
  so.endpoint.conn.max_streams_bidi = NOREAD_MAX_STREAMS;
  env_start(&e, &so, 0);

  /* The hostile side holds little itself: small receive windows. */
  qrpc_conn_opts_default(&co);
  co.stream_window = 16 * 1024;
  co.conn_window = 256 * 1024;
  ck_assert_int_eq(qrpc_conn_connect(loop, e.addr, "localhost", ctls, &co,
                                     &raw_cbs, &n->peer, &n->peer.c),
                   0);
  ck_assert(env_run_until_count(&e, &n->peer.established, 1, QT_WAIT_MS));
  noread_open_all(n);
  env_run_for(&e, 3000);
  printf("never reads: %d streams (then %s), %d requests for %d KiB "
         "replies\n",
         n->nstreams, qrpc_strerror(n->open_refused), n->requests,
         NOREAD_REPLY / 1024);
  ck_assert_int_eq(n->nstreams, NOREAD_MAX_STREAMS);
  ck_assert_int_eq(n->open_refused, QRPC_ELIMIT);
  env_check_served(&e, 100, "never reads");
  /* Every stream's send buffer full, one reply over, and slack. A server
   * that keeps reading requests whose replies cannot leave holds every
   * reply instead: NOREAD_REQUESTS_PER_STREAM times as much, and more with
   * every request the client adds. */
  env_check_heap_peak(&e, (size_t)NOREAD_MAX_STREAMS *
                                  (NOREAD_STREAM_BUFFER + NOREAD_REPLY) +
                              8 * MiB);
  if (n->peer.c) qrpc_conn_close(n->peer.c, 0, NULL);
  env_run_for(&e, 500);
  env_check_recovered(&e, 2 * MiB);
  env_stop(&e);
  free(n);
}
END_TEST

/* ---- Largest frames, sent slowly ------------------------------------------
 */

/* Streams that each announce a frame of the largest size and then send
 * its body a little at a time. The server holds what has arrived and no
 * more, and closes the connection (RESOURCE_LIMIT) once the partial frames
 * of one connection pass max_buffered. */
#define SLOW_STREAMS 16
#define SLOW_MAX_FRAME QRPCI_MIN_FRAME_LIMIT
#define SLOW_MAX_BUFFERED (8 * MiB)
#define SLOW_CHUNK 1024

typedef struct slow {
  raw_peer peer;
  qrpc_stream *s[SLOW_STREAMS];
  uint64_t sent[SLOW_STREAMS];
  uint64_t total;
  uint64_t limit_total; /* stop at this many body bytes in all */
} slow;

static void slow_on_closed(qrpc_stream *s, int error, void *ud) {
  (void)error;
  slow *w = ud;
  for (int i = 0; i < SLOW_STREAMS; i++)
    if (w->s[i] == s) w->s[i] = NULL;
}

static const qrpc_stream_callbacks slow_cbs = {.on_closed = slow_on_closed};

static void slow_open(slow *w) {
  for (int i = 0; i < SLOW_STREAMS; i++) {
    uint8_t hdr[16];
    size_t o = qrpci_varint_put(hdr, SLOW_MAX_FRAME);
    hdr[o++] = QRPCI_FRAME_REQUEST;
    o += qrpci_varint_put(hdr + o, (uint64_t)i + 1);
    o += qrpci_varint_put(hdr + o, QF_M_ECHO);
    o += qrpci_varint_put(hdr + o, 0);
    ck_assert_int_eq(qrpci_stream_open_rpc(w->peer.c, &slow_cbs, w, &w->s[i]),
                     0);
    ck_assert_int_eq(qrpc_stream_write(w->s[i], hdr, o), 0);
  }
}

typedef struct slow_step {
  slow *w;
  uint64_t next_ms;
  uint64_t every_ms;
} slow_step;

/* A chunk on every stream each every_ms, until limit_total. */
static int slow_tick(void *arg) {
  slow_step *st = arg;
  slow *w = st->w;
  uint8_t chunk[SLOW_CHUNK];
  if (w->peer.closed || w->total >= w->limit_total) return 1;
  if (qt_now_ms() < st->next_ms) return 0;
  st->next_ms = qt_now_ms() + st->every_ms;
  memset(chunk, 'x', sizeof(chunk));
  for (int i = 0; i < SLOW_STREAMS && w->total < w->limit_total; i++) {
    if (!w->s[i] || w->sent[i] + SLOW_CHUNK >= SLOW_MAX_FRAME) continue;
    if (qrpc_stream_write(w->s[i], chunk, sizeof(chunk)) == 0) {
      w->sent[i] += SLOW_CHUNK;
      w->total += SLOW_CHUNK;
    }
  }
  return 0;
}

START_TEST(test_max_frames_slowly) {
  env e;
  slow *w = calloc(1, sizeof(*w));
  qrpc_server_opts so;
  ck_assert_ptr_nonnull(w);
  env_server_opts(&so, &e);
  so.rpc.max_frame = SLOW_MAX_FRAME;
  so.rpc.max_buffered = SLOW_MAX_BUFFERED;
  env_start(&e, &so, 0);
  ck_assert_int_eq(qrpc_conn_connect(loop, e.addr, "localhost", ctls, NULL,
                                     &raw_cbs, &w->peer, &w->peer.c),
                   0);
  ck_assert(env_run_until_count(&e, &w->peer.established, 1, QT_WAIT_MS));
  slow_open(w);

  /* Slowly, under the limit: 16 KiB a second per stream for 2 s. */
  slow_step st = {w, 0, 62};
  w->limit_total = SLOW_STREAMS * 32 * 1024;
  ck_assert(env_run_until(&e, slow_tick, &st, 10000));
  env_run_for(&e, 300);
  ck_assert_int_eq(w->peer.closed, 0);
  env_check_served(&e, 100, "slow frames, under the limit");
  /* What arrived is held, nothing for what was only announced. */
  env_check_heap_peak(&e, w->total * 2 + 4 * MiB);

  /* Then past max_buffered: the connection is closed for it. */
  st.every_ms = 1;
  w->limit_total = (uint64_t)SLOW_MAX_BUFFERED + 2 * MiB;
  ck_assert(env_run_until(&e, slow_tick, &st, 30000));
  ck_assert(env_run_until(&e, raw_closed, &w->peer, QT_WAIT_MS));
  printf("slow frames: closed after %llu KiB with %s (code 0x%llx): %s\n",
         (unsigned long long)w->total / 1024,
         w->peer.close.local ? "a local close" : "the server's close",
         (unsigned long long)w->peer.close.code, w->peer.close.reason);
  ck_assert_int_eq(w->peer.close.kind, QRPC_CLOSE_APPLICATION);
  ck_assert_int_eq(w->peer.close.local, 0);
  ck_assert_uint_eq(w->peer.close.code, 0x5); /* RESOURCE_LIMIT */
  env_run_for(&e, 300);
  env_check_served(&e, 100, "slow frames, over the limit");
  env_check_heap_peak(&e, SLOW_MAX_BUFFERED + SLOW_MAX_FRAME + 8 * MiB);
  env_check_recovered(&e, 2 * MiB);
  env_stop(&e);
  free(w);
}
END_TEST

/* ---- Connection floods ------------------------------------------------------
 */

#define FLOOD_MAX_HANDSHAKES 16
#define FLOOD_CONNS 150

typedef struct flood {
  raw_peer peers[FLOOD_CONNS];
  int ended; /* established or closed, whichever came first */
} flood;

static int flood_all_closed(void *arg) {
  flood *f = arg;
  for (int i = 0; i < FLOOD_CONNS; i++)
    if (!f->peers[i].closed) return 0;
  return 1;
}

/* Complete handshakes, far more at once than max_handshakes: those over
 * the limit are refused (CONNECTION_REFUSED), the others get in; each
 * attempt ends exactly once either way. */
START_TEST(test_connection_flood) {
  env e;
  flood *f = calloc(1, sizeof(*f));
  qrpc_server_opts so;
  qrpc_endpoint_stats st;
  int refused = 0, established = 0;
  ck_assert_ptr_nonnull(f);
  env_server_opts(&so, &e);
  so.endpoint.max_handshakes = FLOOD_MAX_HANDSHAKES;
  env_start(&e, &so, 0);
  for (int i = 0; i < FLOOD_CONNS; i++)
    ck_assert_int_eq(qrpc_conn_connect(loop, e.addr, "localhost", ctls, NULL,
                                       &raw_cbs, &f->peers[i], &f->peers[i].c),
                     0);
  env_run_for(&e, 2000);
  for (int i = 0; i < FLOOD_CONNS; i++) {
    established += f->peers[i].established;
    if (f->peers[i].closed && !f->peers[i].established) refused++;
    if (f->peers[i].c) qrpc_conn_close(f->peers[i].c, 0, NULL);
  }
  ck_assert(env_run_until(&e, flood_all_closed, f, QT_WAIT_MS));
  env_run_for(&e, 300);
  qrpc_endpoint_get_stats(qrpc_server_endpoint(e.srv), &st);
  printf("flood: %d connections at once, max_handshakes %d: %d established, "
         "%d refused; server refused %llu\n",
         FLOOD_CONNS, FLOOD_MAX_HANDSHAKES, established, refused,
         (unsigned long long)st.refused);
  ck_assert_int_eq(established + refused, FLOOD_CONNS);
  for (int i = 0; i < FLOOD_CONNS; i++) {
    ck_assert_int_le(f->peers[i].established, 1);
    ck_assert_int_eq(f->peers[i].closed, 1);
  }
  ck_assert_uint_gt(st.refused, 0);
  ck_assert_int_gt(refused, 0);
  env_check_served(&e, 50, "flood");
  env_check_heap_peak(&e, 48 * MiB);
  env_check_recovered(&e, 4 * MiB);
  env_stop(&e);
  free(f);
}
END_TEST

/* Half-open handshakes: clients behind a proxy that lets nothing come
 * back, so the server sends its first flight and waits for an answer that
 * never comes. It keeps at most max_handshakes of them, refuses the rest,
 * and releases the ones it kept when their handshake times out. */
#define HALF_OPEN_CONNS 200
#define HALF_OPEN_TIMEOUT_MS 1500

typedef struct half_open {
  raw_peer *peers;
  int n;
} half_open;

static int all_closed(void *arg) {
  half_open *h = arg;
  for (int i = 0; i < h->n; i++)
    if (!h->peers[i].closed) return 0;
  return 1;
}

START_TEST(test_half_open_flood) {
  env e;
  raw_peer *peers = calloc(HALF_OPEN_CONNS, sizeof(*peers));
  qt_proxy *proxy;
  qrpc_server_opts so;
  qrpc_conn_opts co;
  qrpc_endpoint_stats st;
  ck_assert_ptr_nonnull(peers);
  env_server_opts(&so, &e);
  so.endpoint.max_handshakes = FLOOD_MAX_HANDSHAKES;
  so.endpoint.conn.handshake_timeout_ms = HALF_OPEN_TIMEOUT_MS;
  env_start(&e, &so, 0);
  ck_assert_int_eq(qt_proxy_new(qrpc_loop_base(loop), e.addr, 5, &proxy), 0);
  qt_proxy_blackout(proxy, 1u << QT_DOWN, 60000);
  qrpc_conn_opts_default(&co);
  co.handshake_timeout_ms = 2 * HALF_OPEN_TIMEOUT_MS;
  for (int i = 0; i < HALF_OPEN_CONNS; i++) {
    ck_assert_int_eq(qrpc_conn_connect(loop, qt_proxy_addr(proxy), "localhost",
                                       ctls, &co, &raw_cbs, &peers[i],
                                       &peers[i].c),
                     0);
    if (i % 20 == 19) env_run_for(&e, 5);
  }
  env_run_for(&e, 500);
  qrpc_endpoint_get_stats(qrpc_server_endpoint(e.srv), &st);
  printf("half-open: %d clients that never answer, max_handshakes %d: server "
         "refused %llu, %llu open\n",
         HALF_OPEN_CONNS, FLOOD_MAX_HANDSHAKES, (unsigned long long)st.refused,
         (unsigned long long)st.connections);
  ck_assert_uint_gt(st.refused, 0);
  ck_assert_uint_le(st.connections, 1 + FLOOD_MAX_HANDSHAKES);
  env_check_served(&e, 50, "half-open");
  /* The server's half-open connections time out and are released; so do
   * the clients, which never heard back. */
  ck_assert(env_run_until(&e, only_good_left, e.srv, 4 * HALF_OPEN_TIMEOUT_MS));
  half_open hc = {peers, HALF_OPEN_CONNS};
  ck_assert(env_run_until(&e, all_closed, &hc, 4 * HALF_OPEN_TIMEOUT_MS));
  qrpc_endpoint_get_stats(qrpc_server_endpoint(e.srv), &st);
  ck_assert_uint_eq(st.accepted, 1);
  for (int i = 0; i < HALF_OPEN_CONNS; i++) {
    ck_assert_int_eq(peers[i].established, 0);
    ck_assert_int_eq(peers[i].closed, 1);
  }
  env_check_served(&e, 50, "after half-open");
  /* Both sides' half-open state: the clients' here, the server's capped. */
  env_check_heap_peak(&e, 48 * MiB);
  qt_proxy_free(proxy);
  env_check_recovered(&e, 4 * MiB);
  env_stop(&e);
  free(peers);
}
END_TEST

static Suite *hostile_suite(void) {
  Suite *s = suite_create("hostile_peers");
  TCase *tc = tcase_create("hostile");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_udp_garbage);
  tcase_add_test(tc, test_corrupted_packets);
  tcase_add_test(tc, test_max_streams_never_read);
  tcase_add_test(tc, test_max_frames_slowly);
  tcase_add_test(tc, test_connection_flood);
  tcase_add_test(tc, test_half_open_flood);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(hostile_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
