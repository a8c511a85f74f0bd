/*
 * End-to-end lifecycle of RPC connections: connections lost with calls in
 * flight (server freed, connection closed on either side, client freed),
 * graceful shutdown with GOAWAY while calls are held, the client's
 * reconnection after a server restart (waiting and fail-fast calls,
 * deadlines while disconnected), and many short-lived clients without
 * leaking memory or descriptors.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/rpcstream.h"
#include "quic/testing.h"
#include "rpc_harness.h"

#define M_ECHO 1
#define M_HOLD 2
#define M_HOLD_BIDI 4

#define KILL_CALLS 50
#define DRAIN_CALLS 20

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* A server with the echo and holding handlers. */
typedef struct env {
  qrpc_server *srv;
  char addr[64];
  qt_rpc_peers peers;
  qt_holder holder;
  int echoes;
  qt_rpc_client cl;
} env;

static void server_start(env *e, const char *bind) {
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  qt_rpc_peers_install(&so, &e->peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, bind, stls, &so, &e->srv, e->addr,
                                       sizeof(e->addr)),
                   0);
  ck_assert_int_eq(qrpc_server_register(e->srv, M_ECHO, QRPC_SHAPE_UNARY,
                                        qt_rpc_echo, &e->echoes),
                   0);
  ck_assert_int_eq(qrpc_server_register(e->srv, M_HOLD, QRPC_SHAPE_UNARY,
                                        qt_holder_handler, &e->holder),
                   0);
  ck_assert_int_eq(qrpc_server_register(e->srv, M_HOLD_BIDI,
                                        QRPC_SHAPE_BIDI_STREAM,
                                        qt_holder_handler, &e->holder),
                   0);
}

/* Quick reconnection, so restarts do not slow the tests down. */
static void fast_client_opts(qrpc_client_opts *co) {
  qrpc_client_opts_default(co);
  co->backoff_initial_ms = 50;
  co->backoff_max_ms = 200;
}

static void env_start(env *e) {
  qrpc_client_opts co;
  memset(e, 0, sizeof(*e));
  qt_holder_init(&e->holder);
  server_start(e, "127.0.0.1:0");
  fast_client_opts(&co);
  ck_assert_int_eq(qt_rpc_client_start(&e->cl, loop, e->addr, ctls, &co), 0);
  ck_assert(qt_rpc_client_wait_connects(&e->cl, 1, QT_WAIT_MS));
}

static void env_finish(env *e) {
  ck_assert(qt_rpc_close_all(loop, &e->srv, &e->cl, 1));
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
}

/* Starts n held calls and runs until the server holds all of them. */
static void hold_calls(env *e, qt_call_rec *r, qt_call_tally *t, int n) {
  int i, before = e->holder.received;
  for (i = 0; i < n; i++) {
    uint8_t tag = (uint8_t)i;
    ck_assert_int_eq(
        qt_call_rec_start(&r[i], t, e->cl.cli, M_HOLD, &tag, 1, NULL), 0);
  }
  ck_assert(
      qt_run_until_count(loop, &e->holder.received, before + n, QT_WAIT_MS));
  ck_assert_int_eq(t->done, 0);
}

static void echo_ok(qrpc_client *cli, const char *what) {
  qt_call_rec r;
  size_t n = strlen(what);
  ck_assert_int_eq(qt_call_rec_start(&r, NULL, cli, M_ECHO, what, n, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_msg(qt_call_rec_replied(&r, what, n), "%s: status %s", what,
                qrpc_status_name(r.status));
}

/* ---- Connections lost mid-call --------------------------------------- */

START_TEST(test_server_freed_mid_call) {
  env e;
  qt_call_rec r[KILL_CALLS], bidi;
  qt_call_tally t;
  int i;

  env_start(&e);
  memset(&t, 0, sizeof(t));
  hold_calls(&e, r, &t, KILL_CALLS);
  /* And a streaming call on a stream of its own, mid-way. */
  qt_call_rec_init(&bidi, &t);
  ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_HOLD_BIDI,
                                      QRPC_SHAPE_BIDI_STREAM, NULL, 0, NULL,
                                      &qt_call_rec_cbs, &bidi, &bidi.call),
                   0);
  ck_assert_int_eq(qrpc_call_send(bidi.call, "item", 4), 0);
  ck_assert(
      qt_run_until_count(loop, &e.holder.received, KILL_CALLS + 1, QT_WAIT_MS));
  qrpc_server_free(e.srv);
  e.srv = NULL;
  /* rpc.h: the server's requests get on_cancel as it goes, with
   * UNAVAILABLE: the connection is lost. */
  ck_assert_int_eq(e.holder.cancels, KILL_CALLS + 1);
  ck_assert_msg(e.holder.cancel_by_status[QRPC_STATUS_UNAVAILABLE] ==
                    KILL_CALLS + 1,
                "on_cancel statuses: UNAVAILABLE %d, CANCELLED %d, "
                "DEADLINE_EXCEEDED %d, other %d (want UNAVAILABLE %d)",
                e.holder.cancel_by_status[QRPC_STATUS_UNAVAILABLE],
                e.holder.cancel_by_status[QRPC_STATUS_CANCELLED],
                e.holder.cancel_by_status[QRPC_STATUS_DEADLINE_EXCEEDED],
                e.holder.cancel_other, KILL_CALLS + 1);
  ck_assert_int_eq(e.holder.held, 0);
  ck_assert_int_eq(e.peers.closed, 1);

  ck_assert(qt_run_until_count(loop, &t.done, KILL_CALLS + 1, QT_WAIT_MS));
  qt_run_for(loop, 200);
  ck_assert_int_eq(t.done, KILL_CALLS + 1);
  ck_assert_int_eq(t.by_status[QRPC_STATUS_UNAVAILABLE], KILL_CALLS + 1);
  ck_assert_int_eq(t.local, KILL_CALLS + 1);
  for (i = 0; i < KILL_CALLS; i++) ck_assert_int_eq(r[i].after_done, 0);
  ck_assert_int_eq(bidi.after_done, 0);
  ck_assert_int_eq(e.cl.disconnects, 1);
  ck_assert_ptr_null(qrpc_client_peer(e.cl.cli));
  env_finish(&e);
}
END_TEST

START_TEST(test_server_closes_conn_mid_call) {
  env e;
  qt_call_rec r[KILL_CALLS];
  qt_call_tally t;
  qrpc_conn *c;

  env_start(&e);
  memset(&t, 0, sizeof(t));
  hold_calls(&e, r, &t, KILL_CALLS);
  ck_assert_ptr_nonnull(e.peers.last);
  c = qrpc_peer_conn(e.peers.last);
  ck_assert_ptr_nonnull(c);
  ck_assert_int_eq(qrpc_conn_close(c, 0x2, "killed by the test"), 0);
  ck_assert(
      qt_run_until_count(loop, &e.holder.cancels, KILL_CALLS, QT_WAIT_MS));
  ck_assert_int_eq(e.holder.cancel_by_status[QRPC_STATUS_UNAVAILABLE],
                   KILL_CALLS);
  ck_assert(qt_run_until_count(loop, &e.peers.closed, 1, QT_WAIT_MS));

  ck_assert(qt_run_until_count(loop, &t.done, KILL_CALLS, QT_WAIT_MS));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_UNAVAILABLE], KILL_CALLS);
  ck_assert_int_eq(t.local, KILL_CALLS);
  ck_assert_int_eq(e.cl.disconnects, 1);
  ck_assert_int_eq(e.cl.last_disconnect.kind, QRPC_CLOSE_APPLICATION);
  ck_assert_int_eq(e.cl.last_disconnect.local, 0);
  ck_assert_uint_eq(e.cl.last_disconnect.code, 0x2);
  ck_assert_str_eq(e.cl.last_disconnect.reason, "killed by the test");

  /* The server is still there: the client comes back and is served. */
  ck_assert(qt_rpc_client_wait_connects(&e.cl, 2, QT_WAIT_MS));
  echo_ok(e.cl.cli, "back again");
  qt_run_for(loop, 100);
  ck_assert_int_eq(t.done, KILL_CALLS);
  ck_assert_str_eq(e.cl.events, "CDC");
  ck_assert_int_eq(e.holder.cancels, KILL_CALLS);
  env_finish(&e);
}
END_TEST

START_TEST(test_client_closes_conn_mid_call) {
  env e;
  qt_call_rec r[KILL_CALLS];
  qt_call_tally t;
  qrpc_peer *peer;

  env_start(&e);
  memset(&t, 0, sizeof(t));
  hold_calls(&e, r, &t, KILL_CALLS);
  peer = qrpc_client_peer(e.cl.cli);
  ck_assert_ptr_nonnull(peer);
  ck_assert_int_eq(qrpc_conn_close(qrpc_peer_conn(peer), 0x2, "client quit"),
                   0);
  ck_assert(qt_run_until_count(loop, &t.done, KILL_CALLS, QT_WAIT_MS));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_UNAVAILABLE], KILL_CALLS);
  ck_assert_int_eq(t.local, KILL_CALLS);
  ck_assert(
      qt_run_until_count(loop, &e.holder.cancels, KILL_CALLS, QT_WAIT_MS));
  ck_assert_int_eq(e.holder.cancel_by_status[QRPC_STATUS_UNAVAILABLE],
                   KILL_CALLS);
  ck_assert_int_eq(e.cl.disconnects, 1);
  ck_assert_int_eq(e.cl.last_disconnect.local, 1);
  ck_assert(qt_rpc_client_wait_connects(&e.cl, 2, QT_WAIT_MS));
  echo_ok(e.cl.cli, "reconnected");
  qt_run_for(loop, 100);
  ck_assert_int_eq(t.done, KILL_CALLS);
  env_finish(&e);
}
END_TEST

START_TEST(test_client_freed_mid_call) {
  env e;
  qt_call_rec r[KILL_CALLS];
  qt_call_rec w;
  qt_call_tally t;
  qrpc_client *cli;

  env_start(&e);
  memset(&t, 0, sizeof(t));
  hold_calls(&e, r, &t, KILL_CALLS);
  cli = e.cl.cli;
  e.cl.cli = NULL;
  qrpc_client_free(cli);
  /* rpc.h: every call fails with CANCELLED. */
  ck_assert(qt_run_until_count(loop, &t.done, KILL_CALLS, QT_WAIT_MS));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_CANCELLED], KILL_CALLS);
  ck_assert_int_eq(t.local, KILL_CALLS);
  ck_assert(
      qt_run_until_count(loop, &e.holder.cancels, KILL_CALLS, QT_WAIT_MS));
  ck_assert_int_eq(e.holder.held, 0);
  ck_assert(qt_run_until_count(loop, &e.peers.closed, 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(t.done, KILL_CALLS);

  /* The same for a call still waiting for its first connection. */
  memset(&e.cl, 0, sizeof(e.cl));
  ck_assert_int_eq(qt_rpc_client_start(&e.cl, loop, e.addr, ctls, NULL), 0);
  ck_assert_int_eq(qt_call_rec_start(&w, NULL, e.cl.cli, M_ECHO, "w", 1, NULL),
                   0);
  qt_rpc_client_free(&e.cl);
  ck_assert(qt_run_until_count(loop, &w.done, 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(w.done, 1);
  ck_assert_int_eq(w.status, QRPC_STATUS_CANCELLED);
  ck_assert_int_eq(w.local, 1);
  env_finish(&e);
}
END_TEST

/* A handler closes its own connection while other calls of that
 * connection are held: everything ends once, nothing is touched after it
 * is gone (the sanitizer build checks the latter). */
#define M_KILL 3

static void kill_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                         void *ud) {
  (void)payload;
  (void)len;
  int *kills = ud;
  ++*kills;
  qrpc_conn_close(qrpc_peer_conn(qrpc_req_peer(req)), 0x2, "handler quit");
}

START_TEST(test_close_inside_handler) {
  env e;
  qt_call_rec r[KILL_CALLS], k;
  qt_call_tally t;
  int kills = 0;

  env_start(&e);
  ck_assert_int_eq(qrpc_server_register(e.srv, M_KILL, QRPC_SHAPE_UNARY,
                                        kill_handler, &kills),
                   0);
  memset(&t, 0, sizeof(t));
  hold_calls(&e, r, &t, KILL_CALLS);
  ck_assert_int_eq(qt_call_rec_start(&k, &t, e.cl.cli, M_KILL, "k", 1, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &t.done, KILL_CALLS + 1, QT_WAIT_MS));
  ck_assert(
      qt_run_until_count(loop, &e.holder.cancels, KILL_CALLS, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(kills, 1);
  ck_assert_int_eq(t.done, KILL_CALLS + 1);
  ck_assert_int_eq(t.by_status[QRPC_STATUS_UNAVAILABLE], KILL_CALLS + 1);
  ck_assert_int_eq(e.holder.cancels, KILL_CALLS);
  ck_assert_int_eq(e.holder.cancel_by_status[QRPC_STATUS_UNAVAILABLE],
                   KILL_CALLS);
  ck_assert_int_eq(e.holder.held, 0);
  ck_assert_int_eq(e.peers.closed, 1);
  ck_assert_uint_eq(e.cl.last_lost.code, 0x2);
  ck_assert_str_eq(e.cl.last_lost.reason, "handler quit");
  ck_assert(qt_rpc_client_wait_connects(&e.cl, 2, QT_WAIT_MS));
  echo_ok(e.cl.cli, "after the kill");
  env_finish(&e);
}
END_TEST

/* ---- Graceful shutdown ----------------------------------------------- */

typedef struct shutdown_rec {
  int done;
  qrpc_server *srv;
  int wrong_server;
} shutdown_rec;

static void on_shutdown(qrpc_server *srv, void *ud) {
  shutdown_rec *sd = ud;
  sd->done++;
  if (srv != sd->srv) sd->wrong_server++;
}

START_TEST(test_goaway_drains_calls) {
  env e;
  qt_call_rec r[DRAIN_CALLS], ff, wait;
  qt_call_tally t;
  shutdown_rec sd;
  qrpc_call_opts fast = qt_call_opts(0, 1);
  qrpc_call_opts patient = qt_call_opts(0, 0);
  qrpc_endpoint_stats st;
  uint16_t port;
  char bind[64];
  int i, ff_rv;

  env_start(&e);
  memset(&t, 0, sizeof(t));
  memset(&sd, 0, sizeof(sd));
  hold_calls(&e, r, &t, DRAIN_CALLS);
  sd.srv = e.srv;
  ck_assert_int_eq(qrpc_server_shutdown(e.srv, 5000, on_shutdown, &sd), 0);
  ck_assert_int_eq(qrpc_server_shutdown(e.srv, 5000, on_shutdown, &sd),
                   QRPC_ESTATE);
  /* Let the GOAWAY arrive. The held calls keep the connection open. */
  qt_run_for(loop, 200);
  ck_assert_int_eq(t.done, 0);
  ck_assert_int_eq(sd.done, 0);
  /* The connection is alive and serving: nothing says it is lost. */
  ck_assert_msg(e.cl.disconnects == 0,
                "on_disconnect while the connection still serves %d held "
                "calls: events \"%s\", last kind %d code 0x%llx local %d "
                "reason \"%s\"",
                DRAIN_CALLS - t.done, e.cl.events,
                (int)e.cl.last_disconnect.kind,
                (unsigned long long)e.cl.last_disconnect.code,
                e.cl.last_disconnect.local, e.cl.last_disconnect.reason);

  /* New calls are not sent on a connection going away: fail-fast ones
   * fail, patient ones wait for the next connection. */
  ff_rv = qt_call_rec_start(&ff, NULL, e.cl.cli, M_ECHO, "ff", 2, &fast);
  ck_assert_msg(ff_rv == QRPC_ECLOSED || ff_rv == 0, "fail-fast call: %s",
                qrpc_strerror(ff_rv));
  ck_assert_int_eq(
      qt_call_rec_start(&wait, NULL, e.cl.cli, M_ECHO, "wait", 4, &patient), 0);
  if (ff_rv == 0) {
    ck_assert(qt_run_until_count(loop, &ff.done, 1, QT_WAIT_MS));
    ck_assert_int_eq(ff.status, QRPC_STATUS_UNAVAILABLE);
  }

  /* The held calls still get their answers. */
  ck_assert_int_eq(qt_holder_reply_all(&e.holder), DRAIN_CALLS);
  ck_assert(qt_run_until_count(loop, &t.done, DRAIN_CALLS, QT_WAIT_MS));
  ck_assert_int_eq(t.ok, DRAIN_CALLS);
  for (i = 0; i < DRAIN_CALLS; i++) {
    uint8_t tag = (uint8_t)i;
    ck_assert(qt_call_rec_replied(&r[i], &tag, 1));
  }

  /* Then the connection closes and the shutdown is done, once. */
  ck_assert(qt_run_until_count(loop, &sd.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(e.peers.closed, 1);
  ck_assert_int_eq(e.peers.live, 0);
  qrpc_endpoint_get_stats(qrpc_server_endpoint(e.srv), &st);
  ck_assert_uint_eq(st.connections, 0);
  qt_run_for(loop, 200);
  ck_assert_int_eq(sd.done, 1);
  ck_assert_int_eq(sd.wrong_server, 0);
  ck_assert_int_eq(wait.done, 0);
  ck_assert_int_eq(e.echoes, 0);

  /* A new server on the same port serves the call that waited. */
  port = qrpc_server_port(e.srv);
  qrpc_server_free(e.srv);
  e.srv = NULL;
  snprintf(bind, sizeof(bind), "127.0.0.1:%u", (unsigned)port);
  server_start(&e, bind);
  ck_assert(qt_run_until_count(loop, &wait.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&wait, "wait", 4));
  ck_assert_int_eq(e.cl.connects, 2);
  if (ff_rv == QRPC_ECLOSED) ck_assert_int_eq(ff.done, 0);

  /* The application was told about the connection it lost, with the
   * GOING_AWAY code, and about nothing else: on_disconnect follows an
   * on_connect, once. */
  ck_assert_msg(
      e.cl.lost == 1 && e.cl.unpaired == 0 && strcmp(e.cl.events, "CDC") == 0,
      "client events \"%s\" (want \"CDC\"; 'd' is on_disconnect "
      "with no connection): %d losses, %d unpaired, last "
      "on_disconnect kind %d code 0x%llx local %d reason \"%s\"",
      e.cl.events, e.cl.lost, e.cl.unpaired, (int)e.cl.last_disconnect.kind,
      (unsigned long long)e.cl.last_disconnect.code, e.cl.last_disconnect.local,
      e.cl.last_disconnect.reason);
  ck_assert_int_eq(e.cl.last_lost.kind, QRPC_CLOSE_APPLICATION);
  ck_assert_int_eq(e.cl.last_lost.local, 0);
  ck_assert_uint_eq(e.cl.last_lost.code, 0x4);
  env_finish(&e);
}
END_TEST

/* The same seen from a hand-built client: the GOAWAY frame, ERROR 14 for
 * a REQUEST sent after it, the held call's REPLY, then GOING_AWAY. */
typedef struct goaway_seen {
  int goaways;
  uint64_t last_msgid;
  int errors;
  uint64_t error_msgid;
  uint64_t error_status;
  int goaways_at_error; /* GOAWAYs seen when the ERROR came */
  int replies;
  uint64_t reply_msgid;
} goaway_seen;

static void goaway_on_frame(qt_raw_rpc *r, const qrpci_frame *f, void *ud) {
  (void)r;
  goaway_seen *g = ud;
  switch (f->type) {
  case QRPCI_FRAME_GOAWAY:
    g->goaways++;
    g->last_msgid = f->last_msgid;
    break;
  case QRPCI_FRAME_ERROR:
    g->errors++;
    g->error_msgid = f->msgid;
    g->error_status = f->status;
    g->goaways_at_error = g->goaways;
    break;
  case QRPCI_FRAME_REPLY:
    g->replies++;
    g->reply_msgid = f->msgid;
    break;
  default: break;
  }
}

START_TEST(test_goaway_raw_peer) {
  env e;
  qt_client cl;
  qt_raw_rpc a;
  qt_raw_acceptor acc;
  goaway_seen g;
  shutdown_rec sd;
  qrpci_frame hold = qt_frame_request(1, M_HOLD, 0, "held", 4);
  qrpci_frame late = qt_frame_request(2, M_ECHO, 0, "late", 4);

  memset(&e, 0, sizeof(e));
  memset(&g, 0, sizeof(g));
  memset(&sd, 0, sizeof(sd));
  memset(&acc, 0, sizeof(acc));
  qt_holder_init(&e.holder);
  server_start(&e, "127.0.0.1:0");
  acc.on_frame = goaway_on_frame;
  acc.user_data = &g;
  ck_assert_int_eq(qt_client_connect(&cl, loop, e.addr, NULL, ctls, NULL), 0);
  qrpci_conn_set_rpc_acceptor(cl.conn, qt_raw_accept_fn, &acc);
  ck_assert(qt_run_until_count(loop, &cl.established, 1, QT_WAIT_MS));
  ck_assert_int_eq(qt_raw_rpc_open(&a, cl.conn, goaway_on_frame, &g), 0);
  ck_assert_int_eq(qt_raw_rpc_send(&a, &hold), 0);
  ck_assert(qt_run_until_count(loop, &e.holder.received, 1, QT_WAIT_MS));

  sd.srv = e.srv;
  ck_assert_int_eq(qrpc_server_shutdown(e.srv, 5000, on_shutdown, &sd), 0);
  ck_assert(qt_run_until_count(loop, &g.goaways, 1, QT_WAIT_MS));
  ck_assert_uint_eq(g.last_msgid, 1);

  /* A REQUEST above Last MsgId is answered with UNAVAILABLE, after
   * GOAWAY again (the same Last) on its own stream, and the connection
   * stays up for the call still in flight. */
  ck_assert_int_eq(qt_raw_rpc_send(&a, &late), 0);
  ck_assert(qt_run_until_count(loop, &g.errors, 1, QT_WAIT_MS));
  ck_assert_uint_eq(g.error_msgid, 2);
  ck_assert_uint_eq(g.error_status, QRPC_STATUS_UNAVAILABLE);
  ck_assert_int_eq(g.goaways_at_error, 2);
  ck_assert_uint_eq(g.last_msgid, 1);
  ck_assert_int_eq(cl.closed, 0);
  ck_assert_int_eq(e.echoes, 0);

  ck_assert_int_eq(qt_holder_reply_all(&e.holder), 1);
  ck_assert(qt_run_until_count(loop, &g.replies, 1, QT_WAIT_MS));
  ck_assert_uint_eq(g.reply_msgid, 1);
  ck_assert(qt_run_until_count(loop, &cl.closed, 1, QT_WAIT_MS));
  ck_assert_int_eq(cl.close.kind, QRPC_CLOSE_APPLICATION);
  ck_assert_uint_eq(cl.close.code, 0x4);
  ck_assert_int_eq(cl.close.local, 0);
  ck_assert(qt_run_until_count(loop, &sd.done, 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(sd.done, 1);
  ck_assert_int_eq(g.goaways, 2);
  ck_assert_int_eq(a.undecodable + acc.undecodable, 0);
  env_finish(&e);
}
END_TEST

/* Shutting down a server with no connection finishes at once (from the
 * loop), and its deadline closes connections whose calls never end. */
START_TEST(test_shutdown_idle_and_deadline) {
  env e;
  qt_call_rec r[2];
  qt_call_tally t;
  shutdown_rec sd;
  qrpc_server *idle = NULL;
  char addr[64];
  uint64_t t0;

  memset(&sd, 0, sizeof(sd));
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, NULL, &idle,
                                       addr, sizeof(addr)),
                   0);
  sd.srv = idle;
  ck_assert_int_eq(qrpc_server_shutdown(idle, 5000, on_shutdown, &sd), 0);
  ck_assert(qt_run_until_count(loop, &sd.done, 1, QT_WAIT_MS));
  qrpc_server_free(idle);

  env_start(&e);
  memset(&t, 0, sizeof(t));
  memset(&sd, 0, sizeof(sd));
  hold_calls(&e, r, &t, 2);
  sd.srv = e.srv;
  t0 = qt_now_ms();
  ck_assert_int_eq(qrpc_server_shutdown(e.srv, 300, on_shutdown, &sd), 0);
  ck_assert(qt_run_until_count(loop, &sd.done, 1, QT_WAIT_MS));
  ck_assert_uint_ge(qt_now_ms() - t0, 250);
  ck_assert(qt_run_until_count(loop, &t.done, 2, QT_WAIT_MS));
  ck_assert_int_eq(t.ok, 0);
  ck_assert_int_eq(t.by_status[QRPC_STATUS_UNAVAILABLE], 2);
  ck_assert_int_eq(e.holder.cancels, 2);
  ck_assert_int_eq(e.holder.held, 0);
  ck_assert_int_eq(e.peers.closed, 1);
  env_finish(&e);
}
END_TEST

/* ---- Reconnection ---------------------------------------------------- */

START_TEST(test_reconnect_after_restart) {
  env e;
  qt_call_rec ff, waits, expires;
  qrpc_call_opts fast = qt_call_opts(0, 1);
  qrpc_call_opts patient = qt_call_opts(0, 0);
  qrpc_call_opts short_wait = qt_call_opts(300, 0);
  uint16_t port;
  char bind[64];
  uint64_t t0;

  env_start(&e);
  echo_ok(e.cl.cli, "before");
  port = qrpc_server_port(e.srv);
  qrpc_server_free(e.srv);
  e.srv = NULL;
  ck_assert(qt_run_until_count(loop, &e.cl.disconnects, 1, QT_WAIT_MS));
  ck_assert_ptr_null(qrpc_client_peer(e.cl.cli));

  /* While disconnected: fail-fast calls and notifications fail at once. */
  ck_assert_int_eq(
      qt_call_rec_start(&ff, NULL, e.cl.cli, M_ECHO, "ff", 2, &fast),
      QRPC_ECLOSED);
  ck_assert_int_eq(qrpc_client_notify(e.cl.cli, M_ECHO, "n", 1), QRPC_ECLOSED);
  /* Waiting calls wait; one with a deadline gives up when it passes. */
  ck_assert_int_eq(
      qt_call_rec_start(&waits, NULL, e.cl.cli, M_ECHO, "waited", 6, &patient),
      0);
  t0 = qt_now_ms();
  ck_assert_int_eq(qt_call_rec_start(&expires, NULL, e.cl.cli, M_ECHO,
                                     "expires", 7, &short_wait),
                   0);
  ck_assert(qt_run_until_count(loop, &expires.done, 1, QT_WAIT_MS));
  ck_assert_uint_ge(qt_now_ms() - t0, 250);
  ck_assert_int_eq(expires.status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_int_eq(expires.local, 1);
  ck_assert_int_eq(waits.done, 0);
  ck_assert_int_eq(ff.done, 0);

  /* The server comes back on the same port; the client reconnects and the
   * waiting call goes through. */
  snprintf(bind, sizeof(bind), "127.0.0.1:%u", (unsigned)port);
  server_start(&e, bind);
  ck_assert(qt_rpc_client_wait_connects(&e.cl, 2, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &waits.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&waits, "waited", 6));
  echo_ok(e.cl.cli, "after");
  qt_run_for(loop, 100);
  ck_assert_int_eq(ff.done, 0);
  ck_assert_int_eq(expires.done, 1);
  ck_assert_int_eq(waits.done, 1);
  ck_assert_str_eq(e.cl.events, "CDC");
  ck_assert_int_eq(e.cl.peer_mismatch, 0);
  ck_assert_ptr_nonnull(qrpc_client_peer(e.cl.cli));
  env_finish(&e);
}
END_TEST

/* While the server cannot be reached: the client's fail_fast option is
 * the default of calls that say -1, and at most max_pending calls wait. */
#define MAX_PENDING 3

START_TEST(test_unreachable_server) {
  qrpc_client_opts co;
  qt_rpc_client cl;
  qt_call_rec r, w, q[MAX_PENDING + 1];
  qt_call_tally qt;
  int i;
  qrpc_call_opts dflt = qt_call_opts(0, -1);
  qrpc_call_opts patient = qt_call_opts(200, 0);
  qt_udp_sink nobody;

  /* A port where nothing answers, so the client never connects. */
  ck_assert_int_eq(qt_udp_sink_open(&nobody, loop), 0);
  fast_client_opts(&co);
  co.fail_fast = 1;
  co.max_pending = MAX_PENDING;
  ck_assert_int_eq(qt_rpc_client_start(&cl, loop, nobody.addr, ctls, &co), 0);
  ck_assert_int_eq(qt_call_rec_start(&r, NULL, cl.cli, M_ECHO, "x", 1, &dflt),
                   QRPC_ECLOSED);
  ck_assert_int_eq(
      qt_call_rec_start(&w, NULL, cl.cli, M_ECHO, "x", 1, &patient), 0);
  ck_assert(qt_run_until_count(loop, &w.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(w.status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_int_eq(w.local, 1);
  ck_assert_int_eq(r.done, 0);
  ck_assert_int_eq(cl.connects, 0);

  /* The queue of waiting calls is bounded. */
  memset(&qt, 0, sizeof(qt));
  for (i = 0; i < MAX_PENDING; i++)
    ck_assert_int_eq(
        qt_call_rec_start(&q[i], &qt, cl.cli, M_ECHO, "q", 1, &patient), 0);
  ck_assert_int_eq(
      qt_call_rec_start(&q[MAX_PENDING], &qt, cl.cli, M_ECHO, "q", 1, &patient),
      QRPC_ENOBUFS);
  ck_assert(qt_run_until_count(loop, &qt.done, MAX_PENDING, QT_WAIT_MS));
  ck_assert_int_eq(qt.by_status[QRPC_STATUS_DEADLINE_EXCEEDED], MAX_PENDING);
  /* Their deadlines freed the room. */
  ck_assert_int_eq(
      qt_call_rec_start(&q[MAX_PENDING], &qt, cl.cli, M_ECHO, "q", 1, &patient),
      0);
  qt_rpc_client_free(&cl);
  ck_assert(qt_run_until_count(loop, &qt.done, MAX_PENDING + 1, QT_WAIT_MS));
  ck_assert_int_eq(q[MAX_PENDING].status, QRPC_STATUS_CANCELLED);
  qt_run_for(loop, 100);
  ck_assert_int_eq(qt.done, MAX_PENDING + 1);
  qt_udp_sink_close(&nobody);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* ---- Many short-lived clients ---------------------------------------- */

#define CYCLES 1000
#define CYCLE_WARMUP 20
#define CYCLE_LANES 8
#define CYCLE_WAIT_MS 90000
/* glibc keeps freed memory in its bins and caches; a leak of even a few
 * bytes per connection over 1,000 connections is far above this noise. */
#define CYCLE_HEAP_TOLERANCE (512u * 1024u)

typedef struct cycler cycler;

typedef struct lane {
  cycler *cy;
  qrpc_client *cli;
  uint32_t n;
  uint8_t payload[8];
} lane;

struct cycler {
  const char *addr;
  int target;
  int started;
  int finished;
  int ok;
  int failed;
  int first_failure;
  int start_errors;
  int post_errors;
  lane lanes[CYCLE_LANES];
};

static void lane_start(lane *l);

/* The client is freed from a posted function: never from inside its own
 * callbacks. */
static void lane_next(qrpc_loop *lp, void *arg) {
  lane *l = arg;
  cycler *cy = l->cy;
  qrpc_client_free(l->cli);
  l->cli = NULL;
  cy->finished++;
  if (cy->started < cy->target) lane_start(l);
  if (cy->finished == cy->target) qrpc_loop_stop(lp);
}

static void lane_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  lane *l = ud;
  cycler *cy = l->cy;
  if (res->status == QRPC_STATUS_OK && res->len == sizeof(l->payload) &&
      memcmp(res->payload, l->payload, sizeof(l->payload)) == 0) {
    cy->ok++;
  } else {
    if (!cy->failed) cy->first_failure = res->status;
    cy->failed++;
  }
  if (qrpc_loop_post(loop, lane_next, l) != 0) cy->post_errors++;
}

static void lane_start(lane *l) {
  static const qrpc_call_callbacks cbs = {.on_done = lane_on_done};
  cycler *cy = l->cy;
  qrpc_client_opts co;
  qrpc_call_opts o = qt_call_opts(QT_WAIT_MS, 0);
  fast_client_opts(&co);
  l->n = (uint32_t)cy->started++;
  qt_put_be64(l->payload, l->n);
  if (qrpc_client_new(loop, cy->addr, ctls, &co, &l->cli) != 0) {
    cy->start_errors++;
    cy->finished++;
    l->cli = NULL;
    return;
  }
  if (qrpc_client_call(l->cli, M_ECHO, l->payload, sizeof(l->payload), &o, &cbs,
                       l, NULL) != 0) {
    cy->start_errors++;
    if (qrpc_loop_post(loop, lane_next, l) != 0) cy->post_errors++;
  }
}

typedef struct cycle_wait {
  cycler *cy;
  qt_rpc_peers *peers;
} cycle_wait;

static int cycles_released(void *arg) {
  cycle_wait *w = arg;
  return w->cy->finished >= w->cy->target &&
         w->peers->closed == w->peers->opened &&
         qrpci_loop_conn_count(loop) == 0;
}

static void run_cycles(cycler *cy, const char *addr, int n,
                       qt_rpc_peers *peers) {
  cycle_wait w = {cy, peers};
  int i;
  memset(cy, 0, sizeof(*cy));
  cy->addr = addr;
  cy->target = n;
  for (i = 0; i < CYCLE_LANES && i < n; i++) {
    cy->lanes[i].cy = cy;
    lane_start(&cy->lanes[i]);
  }
  qt_run_until_count(loop, &cy->finished, n, CYCLE_WAIT_MS);
  qt_run_until(loop, cycles_released, &w, QT_WAIT_MS);
}

START_TEST(test_connect_cycles_no_leak) {
  env e;
  cycler *cy = calloc(1, sizeof(*cy));
  int fds0, fds1;
  size_t heap0, heap1;
  uint64_t t0;

  ck_assert_ptr_nonnull(cy);
  memset(&e, 0, sizeof(e));
  qt_holder_init(&e.holder);
  server_start(&e, "127.0.0.1:0");
  /* Lazily created process-wide state (TLS library caches, free lists
   * that reach their steady size) is not a leak: measure after a few. */
  run_cycles(cy, e.addr, CYCLE_WARMUP, &e.peers);
  ck_assert_int_eq(cy->ok, CYCLE_WARMUP);
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
  fds0 = qt_count_fds();
  heap0 = qt_heap_in_use();

  t0 = qt_now_ms();
  run_cycles(cy, e.addr, CYCLES, &e.peers);
  fprintf(stderr, "rpc_lifecycle: %d client cycles: %llu ms%s\n", CYCLES,
          (unsigned long long)(qt_now_ms() - t0),
          qt_asan_enabled() ? " (sanitizers)" : "");
  fds1 = qt_count_fds();
  heap1 = qt_heap_in_use();

  ck_assert_int_eq(cy->start_errors, 0);
  ck_assert_int_eq(cy->post_errors, 0);
  ck_assert_msg(cy->finished == CYCLES, "only %d of %d cycles finished",
                cy->finished, CYCLES);
  ck_assert_msg(cy->failed == 0, "%d calls failed, first with %s", cy->failed,
                qrpc_status_name(cy->first_failure));
  ck_assert_int_eq(cy->ok, CYCLES);
  ck_assert_int_eq(e.echoes, CYCLE_WARMUP + CYCLES);
  ck_assert_int_eq(e.peers.opened, CYCLE_WARMUP + CYCLES);
  ck_assert_int_eq(e.peers.closed, CYCLE_WARMUP + CYCLES);
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
  ck_assert_int_ge(fds0, 0);
  ck_assert_int_eq(fds1, fds0);
  if (!qt_asan_enabled())
    ck_assert_msg(heap1 < heap0 + CYCLE_HEAP_TOLERANCE,
                  "heap grew by %zu bytes over %d clients", heap1 - heap0,
                  CYCLES);
  free(cy);
  ck_assert(qt_rpc_close_all(loop, &e.srv, NULL, 0));
}
END_TEST

static Suite *lifecycle_suite(void) {
  Suite *s = suite_create("rpc_lifecycle");
  TCase *tc = tcase_create("lifecycle");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_server_freed_mid_call);
  tcase_add_test(tc, test_server_closes_conn_mid_call);
  tcase_add_test(tc, test_client_closes_conn_mid_call);
  tcase_add_test(tc, test_client_freed_mid_call);
  tcase_add_test(tc, test_close_inside_handler);
  tcase_add_test(tc, test_goaway_drains_calls);
  tcase_add_test(tc, test_goaway_raw_peer);
  tcase_add_test(tc, test_shutdown_idle_and_deadline);
  tcase_add_test(tc, test_reconnect_after_restart);
  tcase_add_test(tc, test_unreachable_server);
  tcase_add_test(tc, test_connect_cycles_no_leak);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(lifecycle_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
