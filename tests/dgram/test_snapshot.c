/*
 * Snapshot channels over real loopback connections: a server's world goes
 * out tick by tick as deltas against what each client acknowledged, and
 * every client rebuilds exactly the server's state; through loss only
 * whole, correct states are handed over and the client converges;
 * clients on one baseline share one encoding; the client's estimate of
 * the server's clock is close to the truth (both sides share one clock
 * here); deltas against missing baselines and deltas that do not apply
 * are dropped and counted, and the connection stays up.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "certs.h"
#include "harness.h"
#include "qrpc/qrpc.h"
#include "util/varint.h"

#define CH_WORLD 31
#define RING 8
#define ENTITIES 300
#define ENTITY_DATA 24
#define MAX_CLIENTS 3

static qt_certs certs;
static qrpc_loop *loop;

/* World { uint64 tick = 1; repeated Entity entities = 2; }
 * Entity { uint32 id = 1; bytes data = 2; }: each tick changes every
 * twentieth entity, in a pattern only the tick decides. */
typedef struct world {
  uint8_t buf[ENTITIES * (ENTITY_DATA + 16) + 32];
  size_t len;
} world;

static size_t pb_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  do {
    p[n] = (uint8_t)(v & 0x7f);
    v >>= 7;
    if (v) p[n] |= 0x80;
    n++;
  } while (v);
  return n;
}

static void world_at(uint64_t tick, world *w) {
  uint8_t *p = w->buf;
  p += pb_varint(p, (1 << 3) | 0);
  p += pb_varint(p, tick);
  for (uint32_t id = 1; id <= ENTITIES; id++) {
    /* The tick an entity last changed at: entity id changes at the ticks
     * where (tick + id) % 20 == 0. */
    uint64_t changed = tick - (tick + id) % 20;
    if (changed > tick) changed = 0;
    uint8_t ent[ENTITY_DATA + 16];
    size_t n = pb_varint(ent, (1 << 3) | 0);
    n += pb_varint(ent + n, id);
    n += pb_varint(ent + n, (2 << 3) | 2);
    n += pb_varint(ent + n, ENTITY_DATA);
    for (size_t i = 0; i < ENTITY_DATA; i++)
      ent[n + i] = (uint8_t)(changed * 31 + id * 7 + i);
    n += ENTITY_DATA;
    p += pb_varint(p, (2 << 3) | 2);
    p += pb_varint(p, n);
    memcpy(p, ent, n);
    p += n;
  }
  w->len = (size_t)(p - w->buf);
}

typedef struct server_side {
  qrpc_server *srv;
  char addr[64];
  qrpc_peer *peers[MAX_CLIENTS];
  size_t npeers;
} server_side;

typedef struct client_side {
  qrpc_client *cli;
  qrpc_peer *peer;
  uint64_t tick; /* the newest handed over */
  uint64_t delivered;
  uint64_t wrong; /* states that differ from the server's at their tick */
  uint64_t backwards;
} client_side;

static void peer_open(qrpc_peer *peer, void *ud) {
  server_side *s = ud;
  if (s->npeers < MAX_CLIENTS) s->peers[s->npeers++] = peer;
}

static void on_world(qrpc_peer *peer, uint32_t ch, uint64_t tick,
                     const uint8_t *p, size_t n, void *ud) {
  client_side *c = ud;
  world w;
  world_at(tick, &w);
  if (n != w.len || memcmp(p, w.buf, n)) c->wrong++;
  if (tick <= c->tick) c->backwards++;
  c->tick = tick;
  c->delivered++;
}

static void on_connect(qrpc_client *cli, qrpc_peer *peer, void *ud) {
  ((client_side *)ud)->peer = peer;
}

/* The server's snapshot_whole_per_tick (0: the default). */
static size_t whole_cap;
/* Both sides' snapshot_ring (0: RING). */
static size_t ring;

static void world_opts(qrpc_dgram_opts *o) {
  qrpc_dgram_opts_default(o);
  o->snapshot_whole_per_tick = whole_cap;
  o->snapshot_ring = ring ? ring : RING;
  o->snapshot_entities = 2;
  o->snapshot_key = 1;
}

static void server_start(server_side *s, unsigned loss_pct) {
  memset(s, 0, sizeof(*s));
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  so.on_peer_open = peer_open;
  so.user_data = s;
  so.endpoint.conn.sim_loss_pct = loss_pct;
  so.endpoint.conn.sim_seed = 7;
  qrpc_tls_config *tls = qt_server_tls(&certs);
  ck_assert_int_eq(qrpc_server_new(loop, "127.0.0.1:0", tls, &so, &s->srv), 0);
  qrpc_tls_config_free(tls);
  snprintf(s->addr, sizeof(s->addr), "127.0.0.1:%u", qrpc_server_port(s->srv));
  qrpc_dgram_opts o;
  world_opts(&o);
  ck_assert_int_eq(qrpc_server_register_dgram(s->srv, CH_WORLD, &o, NULL, NULL),
                   0);
}

static void client_start(client_side *c, const char *addr) {
  memset(c, 0, sizeof(*c));
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.server_name = "localhost";
  co.on_connect = on_connect;
  co.user_data = c;
  co.conn.max_udp_payload = 1200; /* the smallest path: many fragments */
  qrpc_tls_config *tls = qt_client_tls(certs.ca_pem);
  ck_assert_int_eq(qrpc_client_new(loop, addr, tls, &co, &c->cli), 0);
  qrpc_tls_config_free(tls);
  qrpc_dgram_opts o;
  world_opts(&o);
  ck_assert_int_eq(
      qrpc_client_register_dgram(c->cli, CH_WORLD, &o, on_world, c), 0);
}

typedef struct group {
  server_side *s;
  client_side *c;
  size_t n;
  uint64_t tick; /* wait for: every client at this tick */
} group;

static int all_connected(void *arg) {
  group *g = arg;
  for (size_t i = 0; i < g->n; i++)
    if (!g->c[i].peer) return 0;
  return g->s->npeers == g->n;
}

static int all_at_tick(void *arg) {
  group *g = arg;
  for (size_t i = 0; i < g->n; i++)
    if (g->c[i].tick < g->tick) return 0;
  return 1;
}

static void start(group *g, server_side *s, client_side *c, size_t n,
                  unsigned loss_pct) {
  server_start(s, loss_pct);
  for (size_t i = 0; i < n; i++) client_start(&c[i], s->addr);
  *g = (group){.s = s, .c = c, .n = n};
  ck_assert(qt_run_until(loop, all_connected, g, QT_WAIT_MS));
}

static void stop(group *g) {
  for (size_t i = 0; i < g->n; i++) qrpc_client_free(g->c[i].cli);
  qrpc_server_free(g->s->srv);
}

/* Makes tick's snapshot and sends it to every peer; returns how many
 * encodings it took. */
static size_t send_tick(group *g, uint64_t tick) {
  world w;
  world_at(tick, &w);
  qrpc_snapshot *snap;
  ck_assert_int_eq(
      qrpc_server_snapshot_new(g->s->srv, CH_WORLD, tick, w.buf, w.len, &snap),
      0);
  /* A peer still waiting for a whole state gets none on top of it. */
  for (size_t i = 0; i < g->s->npeers; i++) {
    int rc = qrpc_peer_send_snapshot(g->s->peers[i], snap);
    ck_assert(rc == 0 || rc == QRPC_EAGAIN);
  }
  size_t n = qrpc_snapshot_encodings(snap);
  qrpc_snapshot_free(snap);
  return n;
}

static void setup(void) { ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0); }

static void teardown(void) {
  qrpc_loop_free(loop);
  loop = NULL;
}

START_TEST(test_deltas_rebuild_the_world) {
  server_side s;
  client_side c[1];
  group g;
  start(&g, &s, c, 1, 0);
  world w;
  world_at(1, &w);
  for (uint64_t t = 1; t <= 40; t++) {
    send_tick(&g, t);
    g.tick = t;
    ck_assert(qt_run_until(loop, all_at_tick, &g, QT_WAIT_MS));
    /* Time for the acknowledgement, so the next tick can be a delta. */
    qt_run_for(loop, 5);
  }
  ck_assert_uint_eq(c[0].delivered, 40);
  ck_assert_uint_eq(c[0].wrong, 0);
  ck_assert_uint_eq(c[0].backwards, 0);
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(s.peers[0], CH_WORLD, &st);
  ck_assert_uint_eq(st.snap_full_sent + st.snap_delta_sent, 40);
  ck_assert_uint_ge(st.snap_delta_sent, 35);
  /* 5% of the entities change per tick: the deltas are a small part of
   * what whole states would have cost. */
  ck_assert_uint_lt(st.bytes_sent, 40 * w.len / 4);
  qrpc_dgram_stats cs;
  qrpc_peer_dgram_stats(c[0].peer, CH_WORLD, &cs);
  ck_assert_uint_eq(cs.snap_no_baseline + cs.snap_bad_delta, 0);
  ck_assert_uint_eq(cs.received, cs.delivered + cs.dropped_stale);
  stop(&g);
}
END_TEST

static int client_at(void *arg) {
  group *g = arg;
  return g->c[0].tick >= g->tick;
}

START_TEST(test_loss_only_delays_and_converges) {
  server_side s;
  client_side c[1];
  group g;
  start(&g, &s, c, 1, 10);
  uint64_t t = 0;
  /* 10% of the server's packets are lost: each tick's state either
   * arrives whole and right, or not at all. */
  for (int i = 0; i < 150; i++) {
    send_tick(&g, ++t);
    qt_run_for(loop, 4);
  }
  ck_assert_uint_eq(c[0].wrong, 0);
  ck_assert_uint_eq(c[0].backwards, 0);
  ck_assert_uint_gt(c[0].delivered, 30);
  ck_assert_uint_lt(c[0].delivered, 150);
  /* Converges: the newest tick arrives within a few more. */
  uint64_t deadline = t + 40;
  g.tick = t + 1;
  while (c[0].tick < g.tick && t < deadline) {
    send_tick(&g, ++t);
    g.tick = t;
    qt_run_until(loop, client_at, &g, 50);
  }
  ck_assert_uint_eq(c[0].tick, t);
  ck_assert_uint_eq(c[0].wrong, 0);
  qrpc_dgram_stats st, cs;
  qrpc_peer_dgram_stats(s.peers[0], CH_WORLD, &st);
  qrpc_peer_dgram_stats(c[0].peer, CH_WORLD, &cs);
  ck_assert_uint_gt(st.lost, 0);
  ck_assert_uint_gt(st.snap_delta_sent, 0);
  ck_assert_uint_eq(cs.snap_bad_delta, 0);
  stop(&g);
}
END_TEST

START_TEST(test_shared_baseline_encoded_once) {
  server_side s;
  client_side c[MAX_CLIENTS];
  group g;
  start(&g, &s, c, MAX_CLIENTS, 0);
  size_t shared = 0;
  for (uint64_t t = 1; t <= 20; t++) {
    size_t n = send_tick(&g, t);
    ck_assert_uint_ge(n, 1);
    if (t > 2 && n == 1) shared++;
    g.tick = t;
    ck_assert(qt_run_until(loop, all_at_tick, &g, QT_WAIT_MS));
    qt_run_for(loop, 5);
  }
  /* In lockstep every client acknowledged the same tick: one delta for
   * all of them. */
  ck_assert_uint_ge(shared, 15);
  for (size_t i = 0; i < MAX_CLIENTS; i++) ck_assert_uint_eq(c[i].wrong, 0);
  stop(&g);
}
END_TEST

/* A crowd without baselines is served whole states a few per tick. */
START_TEST(test_whole_states_capped_per_tick) {
  server_side s;
  client_side c[MAX_CLIENTS];
  group g;
  whole_cap = 1;
  start(&g, &s, c, MAX_CLIENTS, 0);
  whole_cap = 0;
  world w;
  world_at(1, &w);
  qrpc_snapshot *snap;
  ck_assert_int_eq(
      qrpc_server_snapshot_new(g.s->srv, CH_WORLD, 1, w.buf, w.len, &snap), 0);
  ck_assert_int_eq(qrpc_peer_send_snapshot(s.peers[0], snap), 0);
  ck_assert_int_eq(qrpc_peer_send_snapshot(s.peers[1], snap), QRPC_EAGAIN);
  ck_assert_int_eq(qrpc_peer_send_snapshot(s.peers[2], snap), QRPC_EAGAIN);
  qrpc_snapshot_free(snap);
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(s.peers[1], CH_WORLD, &st);
  ck_assert_uint_eq(st.snap_deferred, 1);
  ck_assert_uint_eq(st.bytes_sent, 0);
  /* Every client gets its state within a few ticks all the same. */
  uint64_t t = 1;
  g.tick = 1;
  while (!all_at_tick(&g) && t < 40) {
    send_tick(&g, ++t);
    qt_run_for(loop, 10);
  }
  ck_assert(all_at_tick(&g));
  for (size_t i = 0; i < MAX_CLIENTS; i++) ck_assert_uint_eq(c[i].wrong, 0);
  stop(&g);
}
END_TEST

/* While a whole state to a client is unacknowledged, the next waits when
 * a delta could follow the acknowledgement; with a ring of one every state
 * is whole, and each goes out at once. */
static int first_at_tick(void *arg) {
  group *g = arg;
  return g->c[0].tick >= g->tick;
}

START_TEST(test_whole_in_flight_holds_back_only_deltas) {
  const int ring_of_one = _i == 0;
  server_side s;
  client_side c[1];
  group g;
  ring = ring_of_one ? 1 : RING;
  start(&g, &s, c, 1, 0);
  ring = 0;
  for (uint64_t t = 1; t <= 2; t++) {
    world w;
    world_at(t, &w);
    qrpc_snapshot *snap;
    ck_assert_int_eq(
        qrpc_server_snapshot_new(s.srv, CH_WORLD, t, w.buf, w.len, &snap), 0);
    int want = t == 1 || ring_of_one ? 0 : QRPC_EAGAIN;
    ck_assert_int_eq(qrpc_peer_send_snapshot(s.peers[0], snap), want);
    qrpc_snapshot_free(snap);
  }
  g.tick = ring_of_one ? 2 : 1;
  ck_assert(qt_run_until(loop, first_at_tick, &g, QT_WAIT_MS));
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(s.peers[0], CH_WORLD, &st);
  ck_assert_uint_eq(st.snap_full_sent, ring_of_one ? 2 : 1);
  ck_assert_uint_eq(st.snap_deferred, ring_of_one ? 0 : 1);
  ck_assert_uint_eq(c[0].wrong, 0);
  stop(&g);
}
END_TEST

START_TEST(test_clock_estimate) {
  server_side s;
  client_side c[1];
  group g;
  start(&g, &s, c, 1, 0);
  qrpc_snapshot_clock clk;
  ck_assert_int_eq(qrpc_peer_snapshot_clock(c[0].peer, CH_WORLD, &clk),
                   QRPC_EAGAIN);
  for (uint64_t t = 1; t <= 20; t++) {
    send_tick(&g, t);
    g.tick = t;
    ck_assert(qt_run_until(loop, all_at_tick, &g, QT_WAIT_MS));
    qt_run_for(loop, 2);
  }
  ck_assert_int_eq(qrpc_peer_snapshot_clock(c[0].peer, CH_WORLD, &clk), 0);
  ck_assert_uint_eq(clk.tick, 20);
  ck_assert_uint_gt(clk.error_us, 0);
  /* Server and client share CLOCK_MONOTONIC here, so the true offset is
   * 0: the estimate is off by the one-way delay it guessed wrong. */
  ck_assert_int_lt(clk.offset_us < 0 ? -clk.offset_us : clk.offset_us,
                   20000 * (int64_t)qt_wait_scale());
  ck_assert_uint_le(clk.tick_server_us, clk.server_now_us);
  stop(&g);
}
END_TEST

/* A snapshot message made by hand: Tick, Baseline, Server Time, body. */
static void send_raw(qrpc_peer *peer, uint64_t tick, uint64_t base,
                     const uint8_t *body, size_t n) {
  uint8_t msg[64 * 1024];
  size_t hl = qrpci_varint_put(msg, tick);
  hl += qrpci_varint_put(msg + hl, base);
  hl += qrpci_varint_put(msg + hl, 1);
  if (n) memcpy(msg + hl, body, n);
  ck_assert_int_eq(qrpc_peer_send_dgram(peer, CH_WORLD, msg, hl + n), 0);
}

static int stats_reach(void *arg) {
  group *g = arg;
  qrpc_dgram_stats cs;
  qrpc_peer_dgram_stats(g->c[0].peer, CH_WORLD, &cs);
  return cs.snap_no_baseline + cs.snap_bad_delta >= g->tick;
}

START_TEST(test_bad_deltas_dropped_and_counted) {
  server_side s;
  client_side c[1];
  group g;
  start(&g, &s, c, 1, 0);
  world w;
  world_at(1, &w);
  send_raw(s.peers[0], 1, 0, w.buf, w.len); /* a whole state: fine */
  g.tick = 1;
  ck_assert(qt_run_until(loop, all_at_tick, &g, QT_WAIT_MS));
  static const uint8_t upsert_no_key[] = {2, 2, 0x10, 0x01};
  static const uint8_t unknown_op[] = {9, 1};
  static const uint8_t delete_missing[] = {3, 0xe7, 0x07}; /* key 999 */
  send_raw(s.peers[0], 5, 3, upsert_no_key, 0); /* tick 3 never came */
  send_raw(s.peers[0], 6, 1, unknown_op, sizeof(unknown_op));
  send_raw(s.peers[0], 7, 1, delete_missing, sizeof(delete_missing));
  send_raw(s.peers[0], 8, 1, upsert_no_key, sizeof(upsert_no_key) - 1);
  send_raw(s.peers[0], 9, 9, NULL, 0); /* a baseline not older */
  static const uint8_t cut[] = {0x80};
  ck_assert_int_eq(qrpc_peer_send_dgram(s.peers[0], CH_WORLD, cut, 1), 0);
  g.tick = 6;
  ck_assert(qt_run_until(loop, stats_reach, &g, QT_WAIT_MS));
  qrpc_dgram_stats cs;
  qrpc_peer_dgram_stats(c[0].peer, CH_WORLD, &cs);
  ck_assert_uint_eq(cs.snap_no_baseline, 1);
  ck_assert_uint_eq(cs.snap_bad_delta, 5);
  ck_assert_uint_eq(c[0].delivered, 1);
  /* The connection serves on: a real delta against tick 1 applies. */
  send_tick(&g, 10);
  g.tick = 10;
  ck_assert(qt_run_until(loop, all_at_tick, &g, QT_WAIT_MS));
  ck_assert_uint_eq(c[0].wrong, 0);
  qrpc_peer_dgram_stats(c[0].peer, CH_WORLD, &cs);
  ck_assert_uint_eq(cs.delivered, 2);
  ck_assert_uint_eq(cs.received, cs.delivered + cs.dropped_stale);
  stop(&g);
}
END_TEST

START_TEST(test_snapshot_api_checks) {
  server_side s;
  client_side c[1];
  group g;
  start(&g, &s, c, 1, 0);
  qrpc_snapshot *snap = NULL;
  uint8_t b = 0;
  ck_assert_int_eq(qrpc_server_snapshot_new(s.srv, CH_WORLD, 0, &b, 1, &snap),
                   QRPC_EINVAL);
  ck_assert_int_eq(
      qrpc_server_snapshot_new(s.srv, CH_WORLD + 1, 1, &b, 1, &snap),
      QRPC_EINVAL);
  uint8_t *huge = calloc(1, QRPC_DGRAM_SNAPSHOT_MESSAGE + 1);
  ck_assert_int_eq(qrpc_server_snapshot_new(s.srv, CH_WORLD, 1, huge,
                                            QRPC_DGRAM_SNAPSHOT_MESSAGE + 1,
                                            &snap),
                   QRPC_EMSGSIZE);
  free(huge);
  ck_assert_int_eq(qrpc_server_snapshot_new(s.srv, CH_WORLD, 5, &b, 0, &snap),
                   0);
  qrpc_snapshot_free(snap);
  /* Ticks only increase. */
  ck_assert_int_eq(qrpc_server_snapshot_new(s.srv, CH_WORLD, 5, &b, 0, &snap),
                   QRPC_EINVAL);
  qrpc_dgram_opts o;
  world_opts(&o);
  o.snapshot_ring = QRPC_DGRAM_MAX_RING + 1;
  ck_assert_int_eq(qrpc_server_register_dgram(s.srv, 40, &o, NULL, NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_peer_send_snapshot(s.peers[0], NULL), QRPC_EINVAL);
  ck_assert_uint_eq(qrpc_snapshot_encodings(NULL), 0);
  stop(&g);
}
END_TEST

static Suite *suite(void) {
  Suite *su = suite_create("dgram_snapshot");
  TCase *tc = tcase_create("snapshot");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_deltas_rebuild_the_world);
  tcase_add_test(tc, test_loss_only_delays_and_converges);
  tcase_add_test(tc, test_shared_baseline_encoded_once);
  tcase_add_test(tc, test_whole_states_capped_per_tick);
  tcase_add_loop_test(tc, test_whole_in_flight_holds_back_only_deltas, 0, 2);
  tcase_add_test(tc, test_clock_estimate);
  tcase_add_test(tc, test_bad_deltas_dropped_and_counted);
  tcase_add_test(tc, test_snapshot_api_checks);
  suite_add_tcase(su, tc);
  return su;
}

int main(void) {
  if (qt_certs_generate(&certs) != 0) return 1;
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  qt_certs_free(&certs);
  return failed ? 1 : 0;
}
