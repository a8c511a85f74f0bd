/*
 * End-to-end deadlines and cancellation: the caller's deadline, the
 * budget carried to the server (remaining time, on_cancel at the deadline),
 * a reply that arrives after the deadline, replies racing deadlines, and
 * qrpc_call_cancel() on both ends.
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
#define M_LATE 3

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

typedef struct pair {
  qrpc_server *srv;
  char addr[64];
  qt_holder holder;
  int echoes;
  qt_rpc_client cl;
} pair;

static void pair_start(pair *p, const qrpc_client_opts *copts) {
  memset(p, 0, sizeof(*p));
  qt_holder_init(&p->holder);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, NULL, &p->srv,
                                       p->addr, sizeof(p->addr)),
                   0);
  ck_assert_int_eq(qrpc_server_register(p->srv, M_ECHO, QRPC_SHAPE_UNARY,
                                        qt_rpc_echo, &p->echoes),
                   0);
  ck_assert_int_eq(qrpc_server_register(p->srv, M_HOLD, QRPC_SHAPE_UNARY,
                                        qt_holder_handler, &p->holder),
                   0);
  ck_assert_int_eq(qt_rpc_client_start(&p->cl, loop, p->addr, ctls, copts), 0);
  ck_assert_msg(qt_rpc_client_wait_connects(&p->cl, 1, QT_WAIT_MS),
                "client did not connect");
}

static void pair_finish(pair *p) {
  ck_assert(qt_rpc_close_all(loop, &p->srv, &p->cl, 1));
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
}

/* The connection is still usable: one more echo succeeds. */
static void assert_echo_works(qrpc_client *cli) {
  qt_call_rec e;
  ck_assert_int_eq(
      qt_call_rec_start(&e, NULL, cli, M_ECHO, "still here", 10, NULL), 0);
  ck_assert(qt_run_until_count(loop, &e.done, 1, QT_WAIT_MS));
  ck_assert_msg(qt_call_rec_replied(&e, "still here", 10),
                "echo after the test: status %s", qrpc_status_name(e.status));
}

/* ---- Cancel ---------------------------------------------------------- */

START_TEST(test_cancel_reaches_server) {
  pair p;
  qt_call_rec r;
  qrpc_call *call;

  pair_start(&p, NULL);
  ck_assert_int_eq(qt_call_rec_start(&r, NULL, p.cl.cli, M_HOLD, "c", 1, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &p.holder.received, 1, QT_WAIT_MS));
  call = r.call;
  ck_assert_ptr_nonnull(call);
  ck_assert_ptr_eq(qrpc_call_user_data(call), &r);
  ck_assert_int_eq(qrpc_call_cancel(call), 0);
  /* rpc.h: on_done follows from the loop, after cancel returns. */
  ck_assert_int_eq(r.done, 0);
  /* Cancelling a call that is already over is a no-op. */
  ck_assert_int_eq(qrpc_call_cancel(call), QRPC_ECLOSED);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_CANCELLED);
  ck_assert_int_eq(r.local, 1);
  ck_assert_int_eq(r.user_data_wrong, 0);

  /* The CANCEL frame reaches the server, whose request goes away with
   * on_cancel(CANCELLED). */
  ck_assert(qt_run_until_count(loop, &p.holder.cancels, 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(p.holder.cancels, 1);
  ck_assert_int_eq(p.holder.cancel_by_status[QRPC_STATUS_CANCELLED], 1);
  ck_assert_int_eq(p.holder.held, 0);
  ck_assert_int_eq(r.done, 1);
  ck_assert_int_eq(r.after_done, 0);
  assert_echo_works(p.cl.cli);
  ck_assert_int_eq(p.cl.disconnects, 0);
  pair_finish(&p);
}
END_TEST

/* Cancelled before the loop ever ran: the call may not have reached the
 * wire yet. */
START_TEST(test_cancel_at_once) {
  pair p;
  qt_call_rec r[16];
  qt_call_tally t;
  int i;

  pair_start(&p, NULL);
  memset(&t, 0, sizeof(t));
  for (i = 0; i < 16; i++) {
    ck_assert_int_eq(qt_call_rec_start(&r[i], &t, p.cl.cli,
                                       i % 2 ? M_HOLD : M_ECHO, "x", 1, NULL),
                     0);
    ck_assert_int_eq(qrpc_call_cancel(r[i].call), 0);
  }
  ck_assert_int_eq(t.done, 0);
  ck_assert(qt_run_until_count(loop, &t.done, 16, QT_WAIT_MS));
  qt_run_for(loop, 200);
  ck_assert_int_eq(t.done, 16);
  ck_assert_int_eq(t.by_status[QRPC_STATUS_CANCELLED], 16);
  ck_assert_int_eq(t.local, 16);
  /* Whatever reached the server was cancelled there too. */
  ck_assert_int_eq(p.holder.held, 0);
  ck_assert_int_eq(p.holder.cancels, p.holder.received);
  assert_echo_works(p.cl.cli);
  ck_assert_int_eq(p.cl.disconnects, 0);
  pair_finish(&p);
}
END_TEST

/* The first answer cancels the other calls from inside its on_done. */
#define RACE_WIDTH 8

typedef struct first_wins {
  qrpc_call *calls[RACE_WIDTH];
  int done[RACE_WIDTH];
  int status[RACE_WIDTH];
  int total;
  int winner;
  int cancel_errors;
} first_wins;

typedef struct fw_slot {
  first_wins *fw;
  int i;
} fw_slot;

static void fw_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  fw_slot *slot = ud;
  first_wins *fw = slot->fw;
  int i;
  fw->done[slot->i]++;
  fw->status[slot->i] = res->status;
  fw->calls[slot->i] = NULL;
  fw->total++;
  if (res->status != QRPC_STATUS_OK || fw->winner >= 0) return;
  fw->winner = slot->i;
  for (i = 0; i < RACE_WIDTH; i++)
    if (fw->calls[i] && qrpc_call_cancel(fw->calls[i]) != 0)
      fw->cancel_errors++;
}

START_TEST(test_cancel_inside_on_done) {
  static const qrpc_call_callbacks cbs = {.on_done = fw_on_done};
  pair p;
  first_wins fw;
  fw_slot slots[RACE_WIDTH];
  int i;

  pair_start(&p, NULL);
  memset(&fw, 0, sizeof(fw));
  fw.winner = -1;
  /* One call is answered at once; the others are held by the server. */
  for (i = 0; i < RACE_WIDTH; i++) {
    slots[i].fw = &fw;
    slots[i].i = i;
    ck_assert_int_eq(qrpc_client_call(p.cl.cli, i == 3 ? M_ECHO : M_HOLD, "r",
                                      1, NULL, &cbs, &slots[i], &fw.calls[i]),
                     0);
  }
  ck_assert(qt_run_until_count(loop, &fw.total, RACE_WIDTH, QT_WAIT_MS));
  ck_assert(
      qt_run_until_count(loop, &p.holder.cancels, RACE_WIDTH - 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(fw.winner, 3);
  ck_assert_int_eq(fw.cancel_errors, 0);
  for (i = 0; i < RACE_WIDTH; i++) {
    ck_assert_int_eq(fw.done[i], 1);
    ck_assert_int_eq(fw.status[i],
                     i == 3 ? QRPC_STATUS_OK : QRPC_STATUS_CANCELLED);
  }
  ck_assert_int_eq(p.holder.cancel_by_status[QRPC_STATUS_CANCELLED],
                   RACE_WIDTH - 1);
  ck_assert_int_eq(p.holder.held, 0);
  assert_echo_works(p.cl.cli);
  pair_finish(&p);
}
END_TEST

/* ---- Deadlines ------------------------------------------------------- */

START_TEST(test_deadline_on_both_sides) {
  pair p;
  qt_call_rec r;
  qrpc_call_opts o = qt_call_opts(300, -1);
  uint64_t t0, elapsed;

  pair_start(&p, NULL);
  t0 = qt_now_ms();
  ck_assert_int_eq(qt_call_rec_start(&r, NULL, p.cl.cli, M_HOLD, "d", 1, &o),
                   0);
  ck_assert(qt_run_until_count(loop, &p.holder.received, 1, QT_WAIT_MS));
  /* The budget travelled with the REQUEST. */
  ck_assert_uint_le(p.holder.last_remaining_ms, 300);
  ck_assert_uint_gt(p.holder.last_remaining_ms, 100);

  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  elapsed = qt_now_ms() - t0;
  ck_assert_int_eq(r.status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_int_eq(r.local, 1);
  ck_assert_uint_ge(elapsed, 250);
  ck_assert_uint_lt(elapsed, 2000);

  /* The server's request ends too, once: on its own clock, or by the
   * CANCEL the caller may send at its deadline, whichever comes first (the
   * server's clock alone is tested with a hand-built caller below). */
  ck_assert(qt_run_until_count(loop, &p.holder.cancels, 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(p.holder.cancels, 1);
  ck_assert_int_eq(p.holder.cancel_by_status[QRPC_STATUS_DEADLINE_EXCEEDED] +
                       p.holder.cancel_by_status[QRPC_STATUS_CANCELLED],
                   1);
  ck_assert_int_eq(p.holder.held, 0);
  ck_assert_int_eq(r.done, 1);
  assert_echo_works(p.cl.cli);
  ck_assert_int_eq(p.cl.disconnects, 0);
  pair_finish(&p);
}
END_TEST

/* A hand-built caller that never cancels: only the server's own clock can
 * end the request, with DEADLINE_EXCEEDED, and nothing is answered after
 * it. */
START_TEST(test_server_deadline_alone) {
  pair p;
  qt_client cl;
  qt_raw_rpc a;
  qrpci_frame req = qt_frame_request(1, M_HOLD, 300, "d", 1);
  qrpci_frame ping = qt_frame_request(2, M_ECHO, 0, "ping", 4);
  uint64_t t0, elapsed;

  pair_start(&p, NULL);
  ck_assert_int_eq(qt_client_connect(&cl, loop, p.addr, NULL, ctls, NULL), 0);
  ck_assert(qt_run_until_count(loop, &cl.established, 1, QT_WAIT_MS));
  ck_assert_int_eq(qt_raw_rpc_open(&a, cl.conn, NULL, NULL), 0);
  t0 = qt_now_ms();
  ck_assert_int_eq(qt_raw_rpc_send(&a, &req), 0);
  ck_assert(qt_run_until_count(loop, &p.holder.received, 1, QT_WAIT_MS));
  ck_assert_uint_le(p.holder.last_remaining_ms, 300);
  ck_assert_uint_gt(p.holder.last_remaining_ms, 100);
  ck_assert(qt_run_until_count(loop, &p.holder.cancels, 1, QT_WAIT_MS));
  elapsed = qt_now_ms() - t0;
  ck_assert_int_eq(p.holder.cancel_by_status[QRPC_STATUS_DEADLINE_EXCEEDED], 1);
  ck_assert_uint_ge(elapsed, 250);
  ck_assert_uint_lt(elapsed, 2000);
  qt_run_for(loop, 200);
  ck_assert_int_eq(p.holder.cancels, 1);
  ck_assert_int_eq(p.holder.held, 0);
  /* Nothing came back for the expired call. */
  ck_assert_int_eq(a.frames, 0);
  ck_assert_int_eq(cl.closed, 0);

  ck_assert_int_eq(qt_raw_rpc_send(&a, &ping), 0);
  ck_assert(
      qt_run_until_count(loop, &a.by_type[QRPCI_FRAME_REPLY], 1, QT_WAIT_MS));
  ck_assert_uint_eq(a.last.msgid, 2);
  ck_assert_int_eq(a.frames, 1);
  ck_assert_int_eq(a.undecodable, 0);
  qt_client_close(&cl);
  pair_finish(&p);
}
END_TEST

START_TEST(test_default_and_no_timeout) {
  pair p;
  qt_call_rec d, n;
  qrpc_client_opts co;
  qrpc_call_opts none;

  qrpc_client_opts_default(&co);
  co.default_timeout_ms = 200;
  pair_start(&p, &co);
  /* timeout_ms 0 takes the client's default. */
  ck_assert_int_eq(qt_call_rec_start(&d, NULL, p.cl.cli, M_HOLD, "d", 1, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &d.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(d.status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_int_eq(d.local, 1);
  ck_assert(qt_run_until_count(loop, &p.holder.cancels, 1, QT_WAIT_MS));
  pair_finish(&p);

  /* Without any timeout the server sees no budget at all. */
  pair_start(&p, NULL);
  none = qt_call_opts(0, -1);
  ck_assert_int_eq(qt_call_rec_start(&n, NULL, p.cl.cli, M_HOLD, "n", 1, &none),
                   0);
  ck_assert(qt_run_until_count(loop, &p.holder.received, 1, QT_WAIT_MS));
  ck_assert(p.holder.last_remaining_ms == UINT64_MAX);
  qt_run_for(loop, 300);
  ck_assert_int_eq(n.done, 0);
  ck_assert_int_eq(qt_holder_reply_all(&p.holder), 1);
  ck_assert(qt_run_until_count(loop, &n.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&n, "n", 1));
  pair_finish(&p);
}
END_TEST

/* Replies and deadlines at the same moment: every call ends exactly once,
 * either way, and the server's requests are answered or cancelled, never
 * both. */
#define RACE_CALLS 64

START_TEST(test_deadline_races_reply) {
  pair p;
  qt_call_rec r[RACE_CALLS];
  qt_call_tally t;
  int i;

  pair_start(&p, NULL);
  memset(&t, 0, sizeof(t));
  for (i = 0; i < RACE_CALLS; i++) {
    qrpc_call_opts o = qt_call_opts(20 + (uint64_t)i, -1);
    uint8_t tag = (uint8_t)i;
    ck_assert_int_eq(
        qt_call_rec_start(&r[i], &t, p.cl.cli, M_HOLD, &tag, 1, &o), 0);
  }
  /* Answer whatever is still held about halfway through the deadlines. */
  qt_run_for(loop, 50);
  qt_holder_reply_all(&p.holder);
  ck_assert(qt_run_until_count(loop, &t.done, RACE_CALLS, QT_WAIT_MS));
  qt_run_for(loop, 300);
  ck_assert_int_eq(t.done, RACE_CALLS);
  ck_assert_int_eq(t.ok + t.by_status[QRPC_STATUS_DEADLINE_EXCEEDED],
                   RACE_CALLS);
  for (i = 0; i < RACE_CALLS; i++) {
    uint8_t tag = (uint8_t)i;
    ck_assert_int_eq(r[i].after_done, 0);
    if (r[i].status == QRPC_STATUS_OK)
      ck_assert(qt_call_rec_replied(&r[i], &tag, 1));
    else
      ck_assert_int_eq(r[i].local, 1);
  }
  ck_assert_int_eq(p.holder.held, 0);
  ck_assert_int_eq(p.holder.answered + p.holder.cancels, p.holder.received);
  /* Server side: its own deadline, or the caller's CANCEL sent at the
   * caller's deadline, whichever came first. */
  ck_assert_int_eq(p.holder.cancels,
                   p.holder.cancel_by_status[QRPC_STATUS_DEADLINE_EXCEEDED] +
                       p.holder.cancel_by_status[QRPC_STATUS_CANCELLED]);
  ck_assert_int_eq(p.holder.answer_errors, 0);
  assert_echo_works(p.cl.cli);
  ck_assert_int_eq(p.cl.disconnects, 0);
  pair_finish(&p);
}
END_TEST

/* ---- A reply after the deadline -------------------------------------- */

/* The server is hand-built, so it can answer after the deadline on
 * purpose (a qrpc server would give up at the deadline itself). */
typedef struct late_srv {
  qt_raw_rpc *held_on; /* the stream of the held REQUEST */
  uint64_t held_msgid;
  uint64_t held_timeout;
  int late_requests;
  int echo_requests;
  int cancels;
  int other;
  int send_errors;
} late_srv;

static void late_on_frame(qt_raw_rpc *r, const qrpci_frame *f, void *ud) {
  late_srv *ls = ud;
  if (f->type == QRPCI_FRAME_CANCEL) {
    ls->cancels++;
    return;
  }
  if (f->type != QRPCI_FRAME_REQUEST) {
    ls->other++;
    return;
  }
  if (f->method == M_LATE) {
    ls->late_requests++;
    ls->held_on = r;
    ls->held_msgid = f->msgid;
    ls->held_timeout = f->timeout_ms;
    return;
  }
  ls->echo_requests++;
  {
    qrpci_frame rep = qt_frame_reply(f->msgid, f->payload, f->payload_len);
    if (qt_raw_rpc_send(r, &rep) != 0) ls->send_errors++;
  }
}

START_TEST(test_late_reply_dropped) {
  qt_server raw;
  qt_raw_acceptor acc;
  late_srv ls;
  qt_rpc_client cl;
  qt_call_rec r, e;
  qrpc_call_opts o = qt_call_opts(200, -1);
  qrpci_frame late;
  uint64_t t0, elapsed;

  memset(&ls, 0, sizeof(ls));
  memset(&acc, 0, sizeof(acc));
  acc.on_frame = late_on_frame;
  acc.user_data = &ls;
  ck_assert_int_eq(qt_server_start(&raw, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpci_endpoint_set_rpc_acceptor(raw.ep, qt_raw_accept_fn, &acc);
  ck_assert_int_eq(qt_rpc_client_start(&cl, loop, raw.addr, ctls, NULL), 0);
  ck_assert(qt_rpc_client_wait_connects(&cl, 1, QT_WAIT_MS));

  t0 = qt_now_ms();
  ck_assert_int_eq(qt_call_rec_start(&r, NULL, cl.cli, M_LATE, "late", 4, &o),
                   0);
  ck_assert(qt_run_until_count(loop, &ls.late_requests, 1, QT_WAIT_MS));
  ck_assert_uint_le(ls.held_timeout, 200);
  ck_assert_uint_gt(ls.held_timeout, 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  elapsed = qt_now_ms() - t0;
  ck_assert_int_eq(r.status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_int_eq(r.local, 1);
  ck_assert_uint_ge(elapsed, 150);

  /* Now the answer arrives, on the stream of its REQUEST. */
  ck_assert_ptr_nonnull(ls.held_on);
  ck_assert_ptr_nonnull(ls.held_on->s);
  late = qt_frame_reply(ls.held_msgid, "too late", 8);
  ck_assert_int_eq(qt_raw_rpc_send(ls.held_on, &late), 0);
  qt_run_for(loop, 300);
  ck_assert_int_eq(r.done, 1);
  ck_assert_int_eq(r.after_done, 0);
  ck_assert_int_eq(r.status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_int_eq(cl.disconnects, 0);
  ck_assert_int_eq(raw.closed, 0);

  /* The connection stays up: the next call is served. */
  ck_assert_int_eq(qt_call_rec_start(&e, NULL, cl.cli, M_ECHO, "next", 4, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &e.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&e, "next", 4));
  ck_assert_int_eq(ls.echo_requests, 1);
  ck_assert_int_eq(ls.send_errors, 0);
  ck_assert_int_eq(ls.other, 0);
  ck_assert_int_eq(acc.undecodable, 0);
  ck_assert_int_eq(cl.disconnects, 0);
  ck_assert_int_eq(cl.connects, 1);

  qt_rpc_client_free(&cl);
  qt_server_stop(&raw);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

static Suite *deadline_suite(void) {
  Suite *s = suite_create("rpc_deadline");
  TCase *tc = tcase_create("deadline");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_cancel_reaches_server);
  tcase_add_test(tc, test_cancel_at_once);
  tcase_add_test(tc, test_cancel_inside_on_done);
  tcase_add_test(tc, test_deadline_on_both_sides);
  tcase_add_test(tc, test_server_deadline_alone);
  tcase_add_test(tc, test_default_and_no_timeout);
  tcase_add_test(tc, test_deadline_races_reply);
  tcase_add_test(tc, test_late_reply_dropped);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(deadline_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
