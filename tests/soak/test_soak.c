/*
 * Soak: for a bounded time (QRPC_SOAK_SECONDS, 60 by default), cycle
 * connections through everything the library does today, then check that
 * the process is back where it started: the heap in use (in builds
 * without AddressSanitizer, where LeakSanitizer checks at exit instead)
 * and the open descriptors.
 *
 * One cycle: a qrpc_client connects to a qrpc_server and makes unary
 * calls, a server-streaming call, a streaming call it cancels midway,
 * datagrams on a channel the server echoes, and a notify; a raw QUIC
 * connection to a second endpoint echoes a stream and datagrams. Every
 * third cycle the client is freed with calls still in flight, which must
 * each complete once (CANCELLED). A broker serves a reliable and a
 * realtime subscriber and a publisher, which come and go every cycle (one
 * subscription is unsubscribed, the others end with their client, every
 * other cycle with messages still queued). Then every connection is
 * closed and released before the next cycle.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fault_fixtures.h"
#include "harness.h"
#include "qrpc/broker.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"
#include "rpc_harness.h"

#define KiB 1024u

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

static uint64_t soak_ms(void) {
  const char *s = getenv("QRPC_SOAK_SECONDS");
  unsigned long v = s ? strtoul(s, NULL, 10) : 60;
  return (uint64_t)(v ? v : 1) * 1000u;
}

/* ---- Datagrams on the RPC connection ------------------------------------ */

#define DG_CHANNEL 77
#define DG_PER_CYCLE 40
#define DG_LEN 100

static void server_dgram_echo(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                              const uint8_t *payload, size_t len, void *ud) {
  (void)seq;
  (void)ud;
  qrpc_peer_send_dgram(peer, channel, payload, len);
}

typedef struct dgram_count {
  int received;
  int bad;
} dgram_count;

static void client_dgram(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                         const uint8_t *payload, size_t len, void *ud) {
  (void)peer;
  (void)seq;
  dgram_count *d = ud;
  if (channel == DG_CHANNEL && len == DG_LEN && qt_dgram_check(payload, len))
    d->received++;
  else
    d->bad++;
}

/* ---- Notifies -------------------------------------------------------------
 */

#define M_NOTE 9

static int notes_seen;

static void note_handler(qrpc_req *req, const uint8_t *p, size_t len,
                         void *ud) {
  (void)p;
  (void)len;
  (void)ud;
  if (qrpc_req_is_notify(req)) notes_seen++;
}

/* ---- One cycle --------------------------------------------------------------
 */

typedef struct soak {
  qrpc_server *srv;
  char addr[64];
  qt_rpc_peers peers;
  qt_server raw;
  qrpc_broker *broker;
  char broker_addr[64];
  size_t conns0;
  /* Totals over all cycles. */
  int cycles;
  uint64_t unary_ok;
  uint64_t items_ok;
  uint64_t cancelled_ok;
  uint64_t freed_midway;
  uint64_t dgrams_back;
  uint64_t raw_bytes;
  uint64_t raw_dgrams_back;
  int notes_sent;
  uint64_t broker_reliable;
  uint64_t broker_realtime;
} soak;

static int pump_finished(void *arg) { return qf_pump_finished(arg); }
static int items_done(void *arg) { return ((qf_items *)arg)->done > 0; }

typedef struct enough_items {
  qf_items *it;
  uint32_t n;
} enough_items;

static int items_at_least(void *arg) {
  enough_items *e = arg;
  return e->it->next >= e->n || e->it->done;
}

static int dgrams_at_least(void *arg) {
  return ((dgram_count *)arg)->received >= DG_PER_CYCLE * 3 / 4;
}

static int released(void *arg) {
  return qrpci_loop_conn_count(loop) <= ((soak *)arg)->conns0;
}

static int xfer_closed(void *arg) { return ((qt_xfer *)arg)->closes > 0; }

static int raw_dgrams_back(void *arg) {
  return ((qt_client *)arg)->datagrams >= DG_PER_CYCLE * 3 / 4;
}

static void rpc_part(soak *s, int free_midway) {
  qt_rpc_client cl;
  qf_pump p;
  qf_items it, big;
  qrpc_call *big_call = NULL;
  dgram_count dc = {0, 0};
  qrpc_client_opts co;
  uint8_t buf[DG_LEN];

  qrpc_client_opts_default(&co);
  ck_assert_int_eq(qt_rpc_client_start(&cl, loop, s->addr, ctls, &co), 0);
  ck_assert_int_eq(
      qrpc_client_register_dgram(cl.cli, DG_CHANNEL, NULL, client_dgram, &dc),
      0);
  ck_assert(qt_rpc_client_wait_connects(&cl, 1, QT_WAIT_MS));

  ck_assert_int_eq(qf_pump_start(&p, cl.cli, 200, 32, 0), 0);
  ck_assert(qt_run_until(loop, pump_finished, &p, QT_WAIT_MS));
  ck_assert_uint_eq(p.ok, 200);
  ck_assert_uint_eq(qf_pump_not_once(&p), 0);
  s->unary_ok += p.ok;
  qf_pump_free(&p);

  ck_assert_int_eq(qf_items_start(&it, cl.cli, 300, NULL), 0);
  ck_assert(qt_run_until(loop, items_done, &it, QT_WAIT_MS));
  ck_assert_int_eq(it.status, QRPC_STATUS_OK);
  ck_assert_uint_eq(it.next, 300);
  ck_assert_uint_eq(it.bad, 0);
  s->items_ok += it.next;

  /* A long stream cancelled midway: the server's handler must be told. */
  ck_assert_int_eq(qf_items_start(&big, cl.cli, 1000000, &big_call), 0);
  enough_items ei = {&big, 50};
  ck_assert(qt_run_until(loop, items_at_least, &ei, QT_WAIT_MS));
  ck_assert_int_eq(big.done, 0);
  ck_assert_int_eq(qrpc_call_cancel(big_call), 0);
  ck_assert(qt_run_until(loop, items_done, &big, QT_WAIT_MS));
  ck_assert_int_eq(big.status, QRPC_STATUS_CANCELLED);
  s->cancelled_ok++;

  qrpc_peer *peer = qrpc_client_peer(cl.cli);
  ck_assert_ptr_nonnull(peer);
  for (int i = 0; i < DG_PER_CYCLE; i++) {
    qt_dgram_fill((uint32_t)(s->cycles * DG_PER_CYCLE + i + 1), buf, DG_LEN);
    qrpc_peer_send_dgram(peer, DG_CHANNEL, buf, DG_LEN);
  }
  /* Unreliable: most come back on loopback; none may be corrupted. */
  qt_run_until(loop, dgrams_at_least, &dc, 1000);
  ck_assert_int_eq(dc.bad, 0);
  s->dgrams_back += (uint64_t)dc.received;

  ck_assert_int_eq(qrpc_client_notify(cl.cli, M_NOTE, "n", 1), 0);
  s->notes_sent++;
  ck_assert(qt_run_until_count(loop, &notes_seen, s->notes_sent, QT_WAIT_MS));

  if (free_midway) {
    /* Calls in flight when the client goes: each completes once. */
    ck_assert_int_eq(qf_pump_start(&p, cl.cli, 100, 100, 0), 0);
    qf_pump_stop(&p);
    qrpc_loop_run_for(loop, 1);
    qt_rpc_client_free(&cl);
    ck_assert(qt_run_until(loop, pump_finished, &p, QT_WAIT_MS));
    ck_assert_uint_eq(qf_pump_not_once(&p), 0);
    ck_assert_uint_eq(p.completed, 100);
    s->freed_midway++;
    qf_pump_free(&p);
  } else {
    qt_rpc_client_free(&cl);
  }
  /* Nothing arrives for a client that is gone. */
  ck_assert_int_eq(it.after_done + big.after_done, 0);
}

static void raw_part(soak *s) {
  qt_client cl;
  qt_xfer x;
  uint8_t buf[DG_LEN];
  memset(&x, 0, sizeof(x));
  memset(&cl, 0, sizeof(cl));
  ck_assert_int_eq(qt_client_connect_wait(&cl, loop, &s->raw, ctls, NULL), 0);
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", 128 * KiB,
                                 (uint64_t)s->cycles, 0, NULL),
                   0);
  for (int i = 0; i < DG_PER_CYCLE; i++) {
    qt_dgram_fill((uint32_t)i + 1, buf, DG_LEN);
    qrpc_conn_send_datagram(cl.conn, buf, DG_LEN);
  }
  ck_assert(qt_run_until(loop, xfer_closed, &x, QT_WAIT_MS));
  ck_assert_int_eq(x.ok, 1);
  qt_run_until(loop, raw_dgrams_back, &cl, 1000);
  ck_assert_int_eq(cl.datagrams_bad, 0);
  s->raw_bytes += x.recvd;
  s->raw_dgrams_back += (uint64_t)cl.datagrams;
  qt_client_close(&cl);
}

/* ---- The broker's part ----------------------------------------------- */

#define BROKER_MSGS 200

typedef struct bk_client {
  qrpc_broker_client *bc;
  int ready;
  uint64_t received;
  uint64_t bad; /* out of order or not from this cycle */
  int subscribed;
  int acked;
} bk_client;

static void bk_ready(qrpc_broker_client *bc, int status, const char *d,
                     void *ud) {
  if (status == 0) ((bk_client *)ud)->ready++;
}

static void bk_message(qrpc_broker_sub *sub, const qrpc_broker_msg *m,
                       void *ud) {
  bk_client *c = ud;
  if (m->len != 8 || qt_get_be64(m->payload) != c->received + 1) c->bad++;
  c->received++;
}

static void bk_realtime(qrpc_broker_sub *sub, const qrpc_broker_msg *m,
                        void *ud) {
  ((bk_client *)ud)->received++;
}

static void bk_subscribed(qrpc_broker_sub *sub, uint64_t id, void *ud) {
  ((bk_client *)ud)->subscribed++;
}

static void bk_acked(qrpc_broker_client *bc, int status, uint32_t n,
                     const char *d, void *ud) {
  if (status == 0) ((bk_client *)ud)->acked++;
}

static void bk_start(bk_client *c, const char *addr) {
  memset(c, 0, sizeof(*c));
  qrpc_broker_client_opts o;
  qrpc_broker_client_opts_default(&o);
  o.on_ready = bk_ready;
  o.user_data = c;
  ck_assert_int_eq(qrpc_broker_client_new(loop, addr, ctls, &o, &c->bc), 0);
  ck_assert(qt_run_until_count(loop, &c->ready, 1, QT_WAIT_MS));
}

static void broker_part(soak *s) {
  bk_client sub, rt, pub;
  bk_start(&sub, s->broker_addr);
  bk_start(&rt, s->broker_addr);
  bk_start(&pub, s->broker_addr);
  qrpc_broker_sub_callbacks cb = {.on_message = bk_message,
                                  .on_subscribed = bk_subscribed};
  qrpc_broker_sub *h1, *h2, *h3;
  ck_assert_int_eq(
      qrpc_broker_subscribe(sub.bc, "soak.>", NULL, &cb, &sub, &h1), 0);
  qrpc_broker_sub_opts ro;
  qrpc_broker_sub_opts_default(&ro);
  ro.mode = QRPC_BROKER_REALTIME;
  qrpc_broker_sub_callbacks rcb = {.on_message = bk_realtime,
                                   .on_subscribed = bk_subscribed};
  ck_assert_int_eq(qrpc_broker_subscribe(rt.bc, "soak.*", &ro, &rcb, &rt, &h2),
                   0);
  ck_assert_int_eq(
      qrpc_broker_subscribe(rt.bc, "other.*", NULL, &rcb, &rt, &h3), 0);
  ck_assert(qt_run_until_count(loop, &sub.subscribed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &rt.subscribed, 2, QT_WAIT_MS));
  qrpc_broker_unsubscribe(h3);
  uint8_t buf[8];
  for (uint64_t i = 1; i <= BROKER_MSGS; i++) {
    qt_put_be64(buf, i);
    ck_assert_int_eq(qrpc_broker_publish(pub.bc, "soak.x", buf, sizeof(buf), 0,
                                         bk_acked, &pub),
                     0);
  }
  ck_assert(qt_run_until_count(loop, &pub.acked, BROKER_MSGS, QT_WAIT_MS));
  if (s->cycles % 2 == 0) {
    /* Every message arrives, in order. */
    uint64_t end = qt_now_ms() + QT_WAIT_MS;
    while (sub.received < BROKER_MSGS && qt_now_ms() < end)
      qrpc_loop_run_for(loop, 5);
    ck_assert_uint_eq(sub.received, BROKER_MSGS);
    ck_assert_uint_eq(sub.bad, 0);
  }
  /* Otherwise the subscriber goes with messages still on their way. */
  s->broker_reliable += sub.received;
  s->broker_realtime += rt.received;
  qrpc_broker_client_free(pub.bc);
  qrpc_broker_client_free(rt.bc);
  qrpc_broker_client_free(sub.bc);
}

static void cycle(soak *s) {
  rpc_part(s, s->cycles % 3 == 2);
  raw_part(s);
  broker_part(s);
  /* Closing periods over: everything of this cycle released. */
  ck_assert_msg(qt_run_until(loop, released, s, 2 * QT_WAIT_MS),
                "cycle %d: %zu connections still held", s->cycles,
                qrpci_loop_conn_count(loop));
  s->cycles++;
}

/* The heap may differ from the baseline by allocator caches and the
 * engine's free lists (bounded, filled in the first cycles). Anything
 * growing per cycle would exceed this within a minute's worth of them. */
#define HEAP_TOLERANCE (256 * KiB)
#define WARMUP_CYCLES 3

START_TEST(test_soak) {
  soak s;
  qrpc_server_opts so;
  memset(&s, 0, sizeof(s));
  qrpc_server_opts_default(&so);
  qt_rpc_peers_install(&so, &s.peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &so, &s.srv,
                                       s.addr, sizeof(s.addr)),
                   0);
  ck_assert_int_eq(qf_register_methods(s.srv), 0);
  ck_assert_int_eq(
      qrpc_server_register(s.srv, M_NOTE, QRPC_SHAPE_UNARY, note_handler, NULL),
      0);
  ck_assert_int_eq(qrpc_server_register_dgram(s.srv, DG_CHANNEL, NULL,
                                              server_dgram_echo, NULL),
                   0);
  ck_assert_int_eq(qt_server_start(&s.raw, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(
      qrpc_broker_new(loop, "127.0.0.1:0", stls, NULL, &s.broker, NULL, 0), 0);
  snprintf(s.broker_addr, sizeof(s.broker_addr), "127.0.0.1:%u",
           (unsigned)qrpc_server_port(qrpc_broker_server(s.broker)));
  s.raw.echo_datagrams = 1;
  s.conns0 = qrpci_loop_conn_count(loop);
  notes_seen = 0;

  for (int i = 0; i < WARMUP_CYCLES; i++) cycle(&s);
  size_t heap0 = qf_heap_in_use();
  int fds0 = qt_count_fds();
  size_t heap_max = heap0;

  uint64_t t0 = qt_now_ms(), budget = soak_ms();
  while (qt_now_ms() - t0 < budget) {
    cycle(&s);
    size_t h = qf_heap_in_use();
    if (h > heap_max) heap_max = h;
    ck_assert_int_eq(qt_count_fds(), fds0);
  }
  size_t heap1 = qf_heap_in_use();
  int fds1 = qt_count_fds();
  printf("soak: %d cycles in %llu ms: %llu unary calls, %llu items, %llu "
         "cancelled streams, %llu clients freed mid-call, %llu/%d RPC "
         "datagrams echoed, %llu KiB raw echo, %llu raw datagrams echoed, "
         "%d notifies; broker: %llu reliable and %llu realtime "
         "deliveries\n",
         s.cycles, (unsigned long long)(qt_now_ms() - t0),
         (unsigned long long)s.unary_ok, (unsigned long long)s.items_ok,
         (unsigned long long)s.cancelled_ok, (unsigned long long)s.freed_midway,
         (unsigned long long)s.dgrams_back, s.cycles * DG_PER_CYCLE,
         (unsigned long long)s.raw_bytes / KiB,
         (unsigned long long)s.raw_dgrams_back, notes_seen,
         (unsigned long long)s.broker_reliable,
         (unsigned long long)s.broker_realtime);
  if (!qt_asan_enabled())
    printf("soak: heap %zu KiB at the baseline, %zu KiB at the end, at most "
           "%zu KiB between cycles; %d descriptors\n",
           heap0 / KiB, heap1 / KiB, heap_max / KiB, fds1);

  ck_assert_int_eq(fds1, fds0);
  if (!qt_asan_enabled())
    ck_assert_msg(heap1 <= heap0 + HEAP_TOLERANCE,
                  "heap grew by %zu KiB over %d cycles", (heap1 - heap0) / KiB,
                  s.cycles - WARMUP_CYCLES);
  ck_assert_int_eq(qf_items_streams_open(), 0);
  ck_assert_int_eq(s.peers.opened, s.peers.closed);
  ck_assert_int_eq(s.peers.opened, s.cycles);
  ck_assert_int_eq(notes_seen, s.notes_sent);
  ck_assert_uint_gt(s.dgrams_back, 0);
  ck_assert_uint_gt(s.raw_dgrams_back, 0);
  ck_assert_uint_gt(s.broker_realtime, 0);
  qrpc_broker_stats bst;
  qrpc_broker_get_stats(s.broker, &bst);
  ck_assert_uint_eq(bst.connections, 0);
  ck_assert_uint_eq(bst.subscriptions, 0);
  ck_assert_uint_eq(bst.queued_bytes, 0);

  qrpc_broker_free(s.broker);
  qrpc_server_free(s.srv);
  qt_server_stop(&s.raw);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

static Suite *soak_suite(void) {
  Suite *s = suite_create("soak");
  TCase *tc = tcase_create("soak");
  tcase_add_checked_fixture(tc, setup, teardown);
  /* The soak's own length, plus its setup and the last cycle. */
  tcase_set_timeout(tc, (double)(soak_ms() / 1000 + 60));
  tcase_add_test(tc, test_soak);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(soak_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
