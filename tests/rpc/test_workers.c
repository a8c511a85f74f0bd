/*
 * Servers on several workers (qrpc_server_opts.workers): many real
 * connections over loopback spread over two workers (and four, with a
 * server stream and datagrams besides calls), every call served on
 * the thread of its connection's worker, packets that reach the wrong
 * worker handed to their owner (the steering program deliberately left
 * off), clients that change their address mid-run staying on their
 * worker, graceful shutdown across workers, and bad worker counts.
 *
 * The test's loop is worker 0 and runs every client; the other workers
 * run on the server's own threads, so what handlers count is atomic.
 */
#include <check.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"
#include "quic/workers.h"
#include "rpc_harness.h"

#define M_WHO 1
#define M_TICKS 2 /* server streaming: TICK_ITEMS items, then the end */
#define CH_ECHO 3 /* a datagram channel: the server echoes each datagram */
#define TICK_ITEMS 5
#define DGRAMS_PER_CLIENT 3
#define MAXW 4
#define NCLIENTS 40
#define CALLS_PER_CLIENT 3

static qt_certs certs;
static qrpc_loop *loop;
/* Workers of the server under test: 2, or 4 in the test that says so. */
static int nworkers = 2;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
  qrpci_workers_no_bpf = 0;
  nworkers = 2;
}

static void teardown(void) {
  qrpci_workers_no_bpf = 0;
  qt_env_teardown(&certs, &loop, &stls, &ctls);
}

/* What the server saw, from any worker's thread. */
typedef struct srv_state {
  qrpc_server *srv;
  pthread_t thread[MAXW];
  atomic_int thread_known[MAXW];
  atomic_int calls[MAXW];    /* handler runs, by the peer's worker */
  atomic_int streams[MAXW];  /* streaming handler runs */
  atomic_int dgrams[MAXW];   /* datagrams echoed */
  atomic_int wrong_thread;   /* a handler ran off its worker's thread */
  atomic_int unknown_loop;   /* a peer's loop was no worker's */
  atomic_int opened, closed; /* on_peer_open / on_peer_close */
  atomic_int open_wrong_thread;
} srv_state;

static srv_state st;

static int worker_of_loop(qrpc_loop *l) {
  for (int i = 0; i < nworkers; i++)
    if (qrpc_server_worker_loop(st.srv, (size_t)i) == l) return i;
  return -1;
}

static int on_worker_thread(int w) {
  return w >= 0 && atomic_load(&st.thread_known[w]) &&
         pthread_equal(pthread_self(), st.thread[w]);
}

/* Answers with the index of the worker whose thread it ran on. */
static void who_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                        void *ud) {
  int w = worker_of_loop(qrpc_peer_loop(qrpc_req_peer(req)));
  if (w < 0) {
    atomic_fetch_add(&st.unknown_loop, 1);
    qrpc_req_error(req, QRPC_STATUS_INTERNAL, "no worker");
    return;
  }
  if (!on_worker_thread(w)) atomic_fetch_add(&st.wrong_thread, 1);
  atomic_fetch_add(&st.calls[w], 1);
  uint8_t b = (uint8_t)w;
  qrpc_req_reply(req, &b, 1);
}

/* Sends TICK_ITEMS items, each the index of the worker it runs on. */
static void ticks_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                          void *ud) {
  int w = worker_of_loop(qrpc_peer_loop(qrpc_req_peer(req)));
  if (w < 0 || !on_worker_thread(w)) {
    atomic_fetch_add(&st.wrong_thread, 1);
    qrpc_req_error(req, QRPC_STATUS_INTERNAL, "off its worker");
    return;
  }
  atomic_fetch_add(&st.streams[w], 1);
  uint8_t b = (uint8_t)w;
  for (int i = 0; i < TICK_ITEMS; i++) qrpc_req_send(req, &b, 1);
  qrpc_req_end(req);
}

/* Echoes a datagram with the index of the worker it arrived on. */
static void echo_dgram(qrpc_peer *peer, uint32_t ch, uint64_t seq,
                       const uint8_t *p, size_t n, void *ud) {
  int w = worker_of_loop(qrpc_peer_loop(peer));
  if (w < 0 || !on_worker_thread(w)) {
    atomic_fetch_add(&st.wrong_thread, 1);
    return;
  }
  atomic_fetch_add(&st.dgrams[w], 1);
  uint8_t b[2] = {n ? p[0] : 0, (uint8_t)w};
  qrpc_peer_send_dgram(peer, CH_ECHO, b, sizeof(b));
}

/* Whether server_start() also registers M_TICKS and CH_ECHO. */
static int with_streams_and_dgrams;

static void peer_open(qrpc_peer *peer, void *ud) {
  int w = worker_of_loop(qrpc_peer_loop(peer));
  if (!on_worker_thread(w)) atomic_fetch_add(&st.open_wrong_thread, 1);
  atomic_fetch_add(&st.opened, 1);
}

static void peer_close(qrpc_peer *peer, void *ud) {
  atomic_fetch_add(&st.closed, 1);
}

static void note_thread(qrpc_loop *l, void *arg) {
  int w = (int)(intptr_t)arg;
  st.thread[w] = pthread_self();
  atomic_store(&st.thread_known[w], 1);
}

static int threads_known(void *arg) {
  for (int i = 0; i < nworkers; i++)
    if (!atomic_load(&st.thread_known[i])) return 0;
  return 1;
}

static void server_start(char *addr, size_t cap) {
  memset(&st, 0, sizeof(st));
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  so.workers = (size_t)nworkers;
  so.on_peer_open = peer_open;
  so.on_peer_close = peer_close;
  ck_assert_int_eq(
      qt_rpc_server_start(loop, "127.0.0.1:0", stls, &so, &st.srv, addr, cap),
      0);
  ck_assert_uint_eq(qrpc_server_workers(st.srv), (size_t)nworkers);
  ck_assert_int_eq(
      qrpc_server_register(st.srv, M_WHO, QRPC_SHAPE_UNARY, who_handler, NULL),
      0);
  if (with_streams_and_dgrams) {
    ck_assert_int_eq(qrpc_server_register(st.srv, M_TICKS,
                                          QRPC_SHAPE_SERVER_STREAM,
                                          ticks_handler, NULL),
                     0);
    ck_assert_int_eq(
        qrpc_server_register_dgram(st.srv, CH_ECHO, NULL, echo_dgram, NULL), 0);
  }
  /* Each worker says which thread it is; worker 0 is this one. */
  for (int i = 0; i < nworkers; i++)
    ck_assert_int_eq(qrpc_loop_post(qrpc_server_worker_loop(st.srv, (size_t)i),
                                    note_thread, (void *)(intptr_t)i),
                     0);
  ck_assert(qt_run_until(loop, threads_known, NULL, QT_WAIT_MS));
  ck_assert(pthread_equal(st.thread[0], pthread_self()));
  ck_assert(!pthread_equal(st.thread[1], pthread_self()));
  /* Registrations are closed once the workers run. */
  ck_assert_int_eq(qrpc_server_register(st.srv, M_WHO + 1, QRPC_SHAPE_UNARY,
                                        who_handler, NULL),
                   QRPC_ESTATE);
}

static qt_rpc_client clients[NCLIENTS];
static qt_call_rec recs[NCLIENTS * CALLS_PER_CLIENT];
static qt_call_tally tally;

static void clients_start(const char *addr) {
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  for (int i = 0; i < NCLIENTS; i++)
    ck_assert_int_eq(qt_rpc_client_start(&clients[i], loop, addr, ctls, &co),
                     0);
  for (int i = 0; i < NCLIENTS; i++)
    ck_assert(qt_rpc_client_wait_connects(&clients[i], 1, QT_WAIT_MS));
}

/* Starts one call per client and runs until all are done; returns how many
 * were answered OK by a worker. */
static int call_round(int round) {
  int before = tally.done;
  for (int i = 0; i < NCLIENTS; i++) {
    qt_call_rec *r = &recs[round * NCLIENTS + i];
    ck_assert_int_eq(
        qt_call_rec_start(r, &tally, clients[i].cli, M_WHO, "x", 1, NULL), 0);
  }
  ck_assert(
      qt_run_until_count(loop, &tally.done, before + NCLIENTS, QT_WAIT_MS));
  int ok = 0;
  for (int i = 0; i < NCLIENTS; i++) {
    qt_call_rec *r = &recs[round * NCLIENTS + i];
    if (r->status == QRPC_STATUS_OK && r->reply_len == 1 &&
        r->reply[0] < nworkers)
      ok++;
  }
  return ok;
}

static void clients_free(void) {
  for (int i = 0; i < NCLIENTS; i++) qt_rpc_client_free(&clients[i]);
}

static void server_free_all(void) {
  clients_free();
  qrpc_server_free(st.srv);
  st.srv = NULL;
  /* Closed client connections wait three PTOs; 40 handshakes at once on a
   * busy machine (a sanitizer build) make for RTT samples, and so PTOs,
   * of a second or more. */
  int released = qt_run_until_released(loop, 4 * QT_WAIT_MS);
  ck_assert_msg(released, "%zu connections left", qrpci_loop_conn_count(loop));
  ck_assert_int_eq(atomic_load(&st.opened), atomic_load(&st.closed));
}

static void get_stats(qrpc_endpoint_stats *total,
                      qrpc_server_worker_stats *per) {
  ck_assert_int_eq(qrpc_server_get_stats(st.srv, total, per, (size_t)nworkers),
                   0);
}

/* ---- Tests ------------------------------------------------------------ */

START_TEST(test_many_clients_spread) {
  char addr[64];
  server_start(addr, sizeof(addr));
  memset(&tally, 0, sizeof(tally));
  clients_start(addr);
  for (int round = 0; round < CALLS_PER_CLIENT; round++)
    ck_assert_int_eq(call_round(round), NCLIENTS);

  qrpc_endpoint_stats total;
  qrpc_server_worker_stats per[MAXW];
  get_stats(&total, per);
  ck_assert_uint_eq(total.accepted, NCLIENTS);
  ck_assert_uint_eq(per[0].peers + per[1].peers, NCLIENTS);
  ck_assert_uint_eq(per[0].peers_opened + per[1].peers_opened, NCLIENTS);
  /* The kernel's hash over 40 client ports: each worker gets some (the
   * chance that one gets fewer than 4 is below one in a million). */
  ck_assert_uint_ge(per[0].peers_opened, 4);
  ck_assert_uint_ge(per[1].peers_opened, 4);
  /* Each worker served exactly the calls of its own connections. */
  for (int w = 0; w < nworkers; w++) {
    ck_assert_int_eq(atomic_load(&st.calls[w]),
                     (int)per[w].peers_opened * CALLS_PER_CLIENT);
    ck_assert_uint_eq(per[w].endpoint.accepted, per[w].peers_opened);
  }
  ck_assert_int_eq(atomic_load(&st.wrong_thread), 0);
  ck_assert_int_eq(atomic_load(&st.unknown_loop), 0);
  ck_assert_int_eq(atomic_load(&st.open_wrong_thread), 0);
  ck_assert_int_eq(atomic_load(&st.opened), NCLIENTS);
  /* A connection's calls all went to one worker. */
  for (int i = 0; i < NCLIENTS; i++)
    for (int round = 1; round < CALLS_PER_CLIENT; round++)
      ck_assert_uint_eq(recs[round * NCLIENTS + i].reply[0], recs[i].reply[0]);
  /* Steered by the kernel where it takes the program: nothing to hand
   * over then, as no client changed its address. */
  if (qrpc_server_steered(st.srv)) ck_assert_uint_eq(total.handed_off, 0);
  server_free_all();
}
END_TEST

/* What each client saw of its stream and its datagrams. */
typedef struct client_seen {
  int items, bad_items, done, status;
  int echoes, echo_worker, echo_mixed;
} client_seen;

static client_seen seen[NCLIENTS];
static int streams_done;

static void on_tick_item(qrpc_call *call, const uint8_t *data, size_t len,
                         void *ud) {
  client_seen *c = ud;
  int i = (int)(c - seen);
  if (len == 1 && data[0] == recs[i].reply[0])
    c->items++;
  else
    c->bad_items++;
}

static void on_ticks_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  client_seen *c = ud;
  c->done = 1;
  c->status = res->status;
  streams_done++;
}

static void on_echo(qrpc_peer *peer, uint32_t ch, uint64_t seq,
                    const uint8_t *p, size_t n, void *ud) {
  client_seen *c = ud;
  if (n != 2) return;
  if (c->echoes++ == 0) c->echo_worker = p[1];
  if (p[1] != c->echo_worker) c->echo_mixed++;
}

static int all_echoed(void *arg) {
  for (int i = 0; i < NCLIENTS; i++)
    if (seen[i].echoes == 0) return 0;
  return 1;
}

/* Four workers: calls, a server stream and datagrams on every connection,
 * each served on its connection's worker and thread. */
START_TEST(test_four_workers_calls_streams_datagrams) {
  char addr[64];
  nworkers = 4;
  with_streams_and_dgrams = 1;
  server_start(addr, sizeof(addr));
  memset(&tally, 0, sizeof(tally));
  memset(seen, 0, sizeof(seen));
  streams_done = 0;
  clients_start(addr);
  for (int i = 0; i < NCLIENTS; i++)
    ck_assert_int_eq(qrpc_client_register_dgram(clients[i].cli, CH_ECHO, NULL,
                                                on_echo, &seen[i]),
                     0);
  ck_assert_int_eq(call_round(0), NCLIENTS);
  qrpc_call_callbacks cbs = {.on_done = on_ticks_done, .on_item = on_tick_item};
  for (int i = 0; i < NCLIENTS; i++)
    ck_assert_int_eq(qrpc_client_stream(clients[i].cli, M_TICKS,
                                        QRPC_SHAPE_SERVER_STREAM, "t", 1, NULL,
                                        &cbs, &seen[i], NULL),
                     0);
  ck_assert(qt_run_until_count(loop, &streams_done, NCLIENTS, QT_WAIT_MS));
  /* Datagrams may be lost, even on loopback: a few per client, and each
   * client must hear back at least once. */
  for (int k = 0; k < DGRAMS_PER_CLIENT; k++) {
    for (int i = 0; i < NCLIENTS; i++) {
      uint8_t b = (uint8_t)i;
      qrpc_peer *peer = qrpc_client_peer(clients[i].cli);
      ck_assert_ptr_nonnull(peer);
      ck_assert_int_eq(qrpc_peer_send_dgram(peer, CH_ECHO, &b, 1), 0);
    }
    qt_run_for(loop, 20);
  }
  ck_assert(qt_run_until(loop, all_echoed, NULL, QT_WAIT_MS));
  qrpc_server_worker_stats per[MAXW];
  get_stats(NULL, per);
  int spread = 0, dg = 0;
  for (int w = 0; w < nworkers; w++) {
    spread += per[w].peers_opened > 0;
    ck_assert_int_eq(atomic_load(&st.streams[w]), (int)per[w].peers_opened);
    dg += atomic_load(&st.dgrams[w]);
  }
  /* 40 client ports over 4 workers: each gets some (the chance that one
   * gets none is about 1 in 100,000). */
  ck_assert_int_eq(spread, nworkers);
  ck_assert_int_le(dg, NCLIENTS * DGRAMS_PER_CLIENT);
  for (int i = 0; i < NCLIENTS; i++) {
    ck_assert_int_eq(seen[i].status, QRPC_STATUS_OK);
    ck_assert_int_eq(seen[i].items, TICK_ITEMS);
    ck_assert_int_eq(seen[i].bad_items, 0);
    /* The datagrams came back from the worker that answers its calls. */
    ck_assert_int_eq(seen[i].echo_mixed, 0);
    ck_assert_int_eq(seen[i].echo_worker, recs[i].reply[0]);
  }
  ck_assert_int_eq(atomic_load(&st.wrong_thread), 0);
  server_free_all();
  with_streams_and_dgrams = 0;
}
END_TEST

static int rebound[NCLIENTS];

/* Moves every client's connection to a new local port (as a NAT
 * rebinding would); a connection without a spare id yet is tried again
 * on the next slice. */
static int rebind_all(void *arg) {
  int left = 0;
  for (int i = 0; i < NCLIENTS; i++) {
    if (rebound[i]) continue;
    qrpc_peer *peer = qrpc_client_peer(clients[i].cli);
    if (peer && qrpc_conn_rebind(qrpc_peer_conn(peer)) == 0)
      rebound[i] = 1;
    else
      left++;
  }
  return left == 0;
}

/* Every client moves to a new port, then calls again on its connection. */
static void rebind_and_call(int round) {
  memset(rebound, 0, sizeof(rebound));
  ck_assert(qt_run_until(loop, rebind_all, NULL, QT_WAIT_MS));
  ck_assert_int_eq(call_round(round), NCLIENTS);
}

static void check_same_worker_after_move(int round) {
  for (int i = 0; i < NCLIENTS; i++)
    ck_assert_uint_eq(recs[round * NCLIENTS + i].reply[0], recs[i].reply[0]);
  for (int i = 0; i < NCLIENTS; i++) {
    ck_assert_int_eq(clients[i].connects, 1);
    ck_assert_int_eq(clients[i].lost, 0);
  }
}

START_TEST(test_rebind_stays_on_worker) {
  char addr[64];
  server_start(addr, sizeof(addr));
  memset(&tally, 0, sizeof(tally));
  clients_start(addr);
  ck_assert_int_eq(call_round(0), NCLIENTS);
  rebind_and_call(1);
  check_same_worker_after_move(1);
  ck_assert_int_eq(atomic_load(&st.wrong_thread), 0);
  qrpc_endpoint_stats total;
  get_stats(&total, NULL);
  /* With the program the kernel sends the moved packets straight to
   * their worker. */
  if (qrpc_server_steered(st.srv)) ck_assert_uint_eq(total.handed_off, 0);
  server_free_all();
}
END_TEST

/* Without the steering program the kernel's hash alone picks a worker:
 * it keeps a client's first address on the worker that accepted it, but
 * a client that moves lands on either. Those packets are handed over,
 * and every call still completes on its own worker. */
START_TEST(test_no_bpf_hands_off) {
  char addr[64];
  qrpci_workers_no_bpf = 1;
  server_start(addr, sizeof(addr));
  ck_assert_int_eq(qrpc_server_steered(st.srv), 0);
  memset(&tally, 0, sizeof(tally));
  clients_start(addr);
  ck_assert_int_eq(call_round(0), NCLIENTS);
  rebind_and_call(1);
  ck_assert_int_eq(call_round(2), NCLIENTS);
  check_same_worker_after_move(2);
  ck_assert_int_eq(atomic_load(&st.wrong_thread), 0);
  qrpc_endpoint_stats total;
  qrpc_server_worker_stats per[MAXW];
  get_stats(&total, per);
  /* 40 moved clients, each to a fresh hash: some land on the other
   * worker (all 40 staying put has a chance of 2^-40). */
  ck_assert_uint_gt(total.handed_off, 0);
  /* Packets still in an inbox when the figures were taken are counted
   * out but not yet in. */
  ck_assert_uint_gt(total.handed_in, 0);
  ck_assert_uint_le(total.handed_in, total.handed_off);
  ck_assert_uint_eq(total.handoff_dropped, 0);
  ck_assert_uint_le(per[0].endpoint.handed_in, per[1].endpoint.handed_off);
  ck_assert_uint_le(per[1].endpoint.handed_in, per[0].endpoint.handed_off);
  server_free_all();
}
END_TEST

static int shutdown_done;

static void on_shutdown(qrpc_server *srv, void *ud) {
  (void)srv;
  (void)ud;
  shutdown_done++;
}

/* Graceful shutdown reaches the connections of every worker, and on_done
 * fires once, on worker 0's thread, after the last one closed. */
START_TEST(test_shutdown_drains_every_worker) {
  char addr[64];
  server_start(addr, sizeof(addr));
  memset(&tally, 0, sizeof(tally));
  clients_start(addr);
  ck_assert_int_eq(call_round(0), NCLIENTS);
  qrpc_server_worker_stats per[MAXW];
  get_stats(NULL, per);
  ck_assert_uint_gt(per[1].peers, 0);
  shutdown_done = 0;
  ck_assert_int_eq(qrpc_server_shutdown(st.srv, 2000, on_shutdown, NULL), 0);
  ck_assert_int_eq(qrpc_server_shutdown(st.srv, 2000, on_shutdown, NULL),
                   QRPC_ESTATE);
  ck_assert(qt_run_until_count(loop, &shutdown_done, 1, QT_WAIT_MS));
  ck_assert_int_eq(atomic_load(&st.closed), NCLIENTS);
  get_stats(NULL, per);
  ck_assert_uint_eq(per[0].peers + per[1].peers, 0);
  qt_run_for(loop, 50);
  ck_assert_int_eq(shutdown_done, 1);
  server_free_all();
}
END_TEST

/* Freed with every connection open, and freed before its workers ever
 * ran: nothing leaks (the sanitizer build checks) and nothing is left. */
START_TEST(test_free_live_and_unstarted) {
  char addr[64];
  server_start(addr, sizeof(addr));
  memset(&tally, 0, sizeof(tally));
  clients_start(addr);
  ck_assert_int_eq(call_round(0), NCLIENTS);
  server_free_all();

  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  so.workers = (size_t)nworkers;
  qrpc_server *srv;
  ck_assert_int_eq(qrpc_server_new(loop, "127.0.0.1:0", stls, &so, &srv), 0);
  ck_assert_uint_ne(qrpc_server_port(srv), 0);
  qrpc_server_free(srv);
}
END_TEST

START_TEST(test_worker_counts) {
  qrpc_server_opts so;
  qrpc_server *srv;
  qrpc_server_opts_default(&so);
  ck_assert_uint_eq(so.workers, 1);
  so.workers = QRPCI_MAX_WORKERS + 1;
  ck_assert_int_eq(qrpc_server_new(loop, "127.0.0.1:0", stls, &so, &srv),
                   QRPC_EINVAL);
  so.workers = 0; /* one per online CPU */
  ck_assert_int_eq(qrpc_server_new(loop, "127.0.0.1:0", stls, &so, &srv), 0);
  ck_assert_uint_ge(qrpc_server_workers(srv), 1);
  qt_run_for(loop, 20);
  qrpc_server_free(srv);
  /* One worker: a lone endpoint, as before (the port is exclusive). */
  so.workers = 1;
  ck_assert_int_eq(qrpc_server_new(loop, "127.0.0.1:0", stls, &so, &srv), 0);
  ck_assert_uint_eq(qrpc_server_workers(srv), 1);
  ck_assert_int_eq(qrpc_server_steered(srv), 0);
  char bind[64];
  snprintf(bind, sizeof(bind), "127.0.0.1:%u", qrpc_server_port(srv));
  qrpc_server *other;
  so.workers = 2;
  ck_assert_int_eq(qrpc_server_new(loop, bind, stls, &so, &other),
                   QRPC_EADDRINUSE);
  qrpc_server_free(srv);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("rpc_workers");
  TCase *tc = tcase_create("workers");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_many_clients_spread);
  tcase_add_test(tc, test_four_workers_calls_streams_datagrams);
  tcase_add_test(tc, test_rebind_stays_on_worker);
  tcase_add_test(tc, test_no_bpf_hands_off);
  tcase_add_test(tc, test_shutdown_drains_every_worker);
  tcase_add_test(tc, test_free_live_and_unstarted);
  tcase_add_test(tc, test_worker_counts);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
