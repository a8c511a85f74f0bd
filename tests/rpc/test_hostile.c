/*
 * A hostile peer: hand-built clients that send malformed or unexpected
 * frames on RPC streams. Each must be closed with PROTOCOL_ERROR or
 * FRAME_TOO_LARGE and a reason naming the frame, while a well-behaved
 * client on the same server keeps being served the whole time.
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
#include "util/varint.h"

#define M_ECHO 1
#define M_HOLD 2

/* The server's frame limit: the smallest the protocol allows. */
#define MAX_FRAME QRPCI_MIN_FRAME_LIMIT

/* Calls the good client keeps in flight, and the progress it must make
 * after each hostile peer is gone. */
#define GOOD_WINDOW 4
#define GOOD_PROGRESS 20

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* ---- The well-behaved client ----------------------------------------- */

typedef struct good {
  qrpc_client *cli;
  int stopping;
  int in_flight;
  int started;
  int ok;
  int failed;
  int first_failure;
  int start_errors;
  uint32_t seq;
} good;

static void good_fill(good *g);

static void good_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  good *g = ud;
  g->in_flight--;
  if (res->status == QRPC_STATUS_OK && res->len == 4 && res->payload) {
    g->ok++;
  } else {
    if (!g->failed) g->first_failure = res->status;
    g->failed++;
  }
  good_fill(g);
}

/* Keeps GOOD_WINDOW calls in flight until told to stop. */
static void good_fill(good *g) {
  static const qrpc_call_callbacks cbs = {.on_done = good_on_done};
  while (!g->stopping && g->in_flight < GOOD_WINDOW) {
    uint8_t buf[4];
    uint32_t s = g->seq++;
    buf[0] = (uint8_t)(s >> 24);
    buf[1] = (uint8_t)(s >> 16);
    buf[2] = (uint8_t)(s >> 8);
    buf[3] = (uint8_t)s;
    if (qrpc_client_call(g->cli, M_ECHO, buf, 4, NULL, &cbs, g, NULL) != 0) {
      g->start_errors++;
      return;
    }
    g->in_flight++;
    g->started++;
  }
}

/* ---- Hostile cases --------------------------------------------------- */

typedef struct hostile_case {
  const char *name;
  uint8_t bytes[32];
  size_t len;
  int fin;            /* finish the stream after the bytes */
  int second_stream;  /* send on a second stream, after a held call */
  uint64_t code;      /* expected close code */
  const char *reason; /* expected in the close reason, any case */
} hostile_case;

/* The cases whose bytes are fixed; built ones are added in the test. */
static const hostile_case fixed_cases[] = {
    {.name = "unknown frame type",
     .bytes = {0x02, 0x2a, 0x00},
     .len = 3,
     .code = 0x1,
     .reason = "type"},
    {.name = "frame with Length 0",
     .bytes = {0x00},
     .len = 1,
     .code = 0x1,
     .reason = "length"},
    /* REQUEST MsgId 0, Method 1, Timeout 0 */
    {.name = "REQUEST with MsgId 0",
     .bytes = {0x04, 0x01, 0x00, 0x01, 0x00},
     .len = 5,
     .code = 0x1,
     .reason = "REQUEST"},
    /* REQUEST MsgId 5, then the frame ends before Method */
    {.name = "REQUEST truncated",
     .bytes = {0x02, 0x01, 0x05},
     .len = 3,
     .code = 0x1,
     .reason = "REQUEST"},
    /* REPLY MsgId 7 "x": the server never made a call */
    {.name = "REPLY never issued",
     .bytes = {0x03, 0x03, 0x07, 'x'},
     .len = 4,
     .code = 0x1,
     .reason = "REPLY"},
    /* END MsgId 9 status 0, detail empty: no call 9 was ever made */
    {.name = "END never issued",
     .bytes = {0x04, 0x07, 0x09, 0x00, 0x00},
     .len = 5,
     .code = 0x1,
     .reason = "END"},
    /* ERROR MsgId 1 status 0 */
    {.name = "ERROR with status 0",
     .bytes = {0x04, 0x04, 0x01, 0x00, 0x00},
     .len = 5,
     .code = 0x1,
     .reason = "ERROR"},
    /* CANCEL MsgId 1 and a stray byte */
    {.name = "CANCEL with trailing bytes",
     .bytes = {0x03, 0x05, 0x01, 0x00},
     .len = 4,
     .code = 0x1,
     .reason = "CANCEL"},
    /* GOAWAY Last 0 and a stray byte */
    {.name = "GOAWAY with trailing bytes",
     .bytes = {0x03, 0x08, 0x00, 0x00},
     .len = 4,
     .code = 0x1,
     .reason = "GOAWAY"},
    /* ERROR MsgId 1 status 2, Detail Length 9 with one byte there */
    {.name = "ERROR detail past frame",
     .bytes = {0x05, 0x04, 0x01, 0x02, 0x09, 'a'},
     .len = 6,
     .code = 0x1,
     .reason = "ERROR"},
    /* REQUEST MsgId 1 again on the same stream (1 was the ping) */
    {.name = "REQUEST MsgId not increasing",
     .bytes = {0x04, 0x01, 0x01, 0x01, 0x00},
     .len = 5,
     .code = 0x1,
     .reason = "REQUEST"},
    /* REQUEST MsgId 2 on a second stream while 2 is held on the first */
    {.name = "REQUEST MsgId of a call in flight",
     .bytes = {0x04, 0x01, 0x02, 0x01, 0x00},
     .len = 5,
     .second_stream = 1,
     .code = 0x1,
     .reason = "REQUEST"},
    /* Half a REQUEST, then FIN */
    {.name = "frame cut by FIN",
     .bytes = {0x06, 0x01, 0x03},
     .len = 3,
     .fin = 1,
     .code = 0x1,
     .reason = ""},
};

#define MAX_CASES 32

/* One hostile client and what happened to it. It lives until the end of
 * the test, so no callback of its connection can outlive it. */
typedef struct hostile {
  qt_client cl;
  qt_raw_rpc a, b;
  qt_raw_acceptor acc;
  int closed;
  qt_close_rec close;
  int ping_ok;
  int good_ok_before;
  int good_ok_after;
  int good_disconnects;
} hostile;

/* Runs one hostile client through its case and records what happened. */
static void run_case(const hostile_case *hc, const char *addr,
                     qt_holder *holder, good *g, qt_rpc_client *gc,
                     hostile *h) {
  qrpci_frame ping = qt_frame_request(1, M_ECHO, 0, "ping", 4);

  memset(h, 0, sizeof(*h));
  h->good_ok_before = g->ok;
  if (qt_client_connect(&h->cl, loop, addr, NULL, ctls, NULL) != 0) return;
  /* Streams the server might open toward this client are taken in too. */
  qrpci_conn_set_rpc_acceptor(h->cl.conn, qt_raw_accept_fn, &h->acc);
  qt_run_until_count(loop, &h->cl.established, 1, QT_WAIT_MS);
  if (!h->cl.established || qt_raw_rpc_open(&h->a, h->cl.conn, NULL, NULL))
    goto out;

  /* First a well-formed call, so the peer is known to work. */
  qt_raw_rpc_send(&h->a, &ping);
  qt_run_until_count(loop, &h->a.by_type[QRPCI_FRAME_REPLY], 1, QT_WAIT_MS);
  h->ping_ok = h->a.by_type[QRPCI_FRAME_REPLY] == 1 && h->a.last.msgid == 1 &&
               h->a.last_payload_len == 4 &&
               memcmp(h->a.last_payload, "ping", 4) == 0;

  if (hc->second_stream) {
    int before = holder->received;
    qrpci_frame hold = qt_frame_request(2, M_HOLD, 0, "held", 4);
    qt_raw_rpc_send(&h->a, &hold);
    qt_run_until_count(loop, &holder->received, before + 1, QT_WAIT_MS);
    if (qt_raw_rpc_open(&h->b, h->cl.conn, NULL, NULL) != 0) goto out;
    qt_raw_rpc_send_bytes(&h->b, hc->bytes, hc->len);
  } else {
    qt_raw_rpc_send_bytes(&h->a, hc->bytes, hc->len);
    if (hc->fin && h->a.s) qrpc_stream_finish(h->a.s);
  }
  qt_run_until_count(loop, &h->cl.closed, 1, QT_WAIT_MS);

out:
  h->closed = h->cl.closed;
  h->close = h->cl.close;
  qt_client_close(&h->cl);
  /* The good client goes on being served after the hostile one is gone. */
  qt_run_until_count(loop, &g->ok, g->ok + GOOD_PROGRESS, QT_WAIT_MS);
  h->good_ok_after = g->ok;
  h->good_disconnects = gc->disconnects;
}

static int good_idle(void *arg) { return ((good *)arg)->in_flight == 0; }

static int case_ok(const hostile_case *hc, const hostile *o) {
  return o->ping_ok && o->closed == 1 &&
         o->close.kind == QRPC_CLOSE_APPLICATION && o->close.local == 0 &&
         o->close.code == hc->code && o->close.reason[0] != '\0' &&
         qt_contains_nocase(o->close.reason, hc->reason) &&
         o->good_ok_after >= o->good_ok_before + GOOD_PROGRESS &&
         o->good_disconnects == 0;
}

START_TEST(test_hostile_frames) {
  qrpc_server_opts so;
  qrpc_server *srv = NULL;
  char addr[64];
  qt_holder holder;
  qt_rpc_peers peers;
  qt_rpc_client gc;
  good g;
  hostile_case cases[MAX_CASES];
  hostile *hs = calloc(MAX_CASES, sizeof(*hs));
  size_t ncases = 0, i, fails = 0;
  char report[4096];
  size_t rlen = 0;
  int echoes = 0;

  ck_assert_ptr_nonnull(hs);
  /* Built cases: a Length one over the server's limit, announced without
   * the body (the limit must be checked before anything is buffered). */
  for (i = 0; i < sizeof(fixed_cases) / sizeof(fixed_cases[0]); i++)
    cases[ncases++] = fixed_cases[i];
  memset(&cases[ncases], 0, sizeof(cases[ncases]));
  cases[ncases].name = "Length over max_frame";
  cases[ncases].len =
      qrpci_varint_put(cases[ncases].bytes, (uint64_t)MAX_FRAME + 1);
  cases[ncases].bytes[cases[ncases].len++] = QRPCI_FRAME_REQUEST;
  cases[ncases].code = 0x3;
  cases[ncases].reason = "frame";
  ncases++;

  qt_holder_init(&holder);
  qrpc_server_opts_default(&so);
  so.rpc.max_frame = MAX_FRAME;
  qt_rpc_peers_install(&so, &peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &so, &srv,
                                       addr, sizeof(addr)),
                   0);
  ck_assert_int_eq(
      qrpc_server_register(srv, M_ECHO, QRPC_SHAPE_UNARY, qt_rpc_echo, &echoes),
      0);
  ck_assert_int_eq(qrpc_server_register(srv, M_HOLD, QRPC_SHAPE_UNARY,
                                        qt_holder_handler, &holder),
                   0);
  ck_assert_int_eq(qt_rpc_client_start(&gc, loop, addr, ctls, NULL), 0);
  ck_assert(qt_rpc_client_wait_connects(&gc, 1, QT_WAIT_MS));
  memset(&g, 0, sizeof(g));
  g.cli = gc.cli;
  good_fill(&g);

  for (i = 0; i < ncases; i++)
    run_case(&cases[i], addr, &holder, &g, &gc, &hs[i]);

  report[0] = '\0';
  for (i = 0; i < ncases; i++) {
    const hostile *o = &hs[i];
    if (case_ok(&cases[i], o)) continue;
    fails++;
    if (rlen < sizeof(report))
      rlen += (size_t)snprintf(
          report + rlen, sizeof(report) - rlen,
          "\n  %s: ping %d, closed %d, kind %d, local %d, code 0x%llx "
          "(want 0x%llx), reason \"%s\" (want \"%s\"), good client +%d, "
          "disconnects %d",
          cases[i].name, o->ping_ok, o->closed, (int)o->close.kind,
          o->close.local, (unsigned long long)o->close.code,
          (unsigned long long)cases[i].code, o->close.reason, cases[i].reason,
          o->good_ok_after - o->good_ok_before, o->good_disconnects);
  }

  g.stopping = 1;
  qt_run_until(loop, good_idle, &g, QT_WAIT_MS);
  ck_assert_msg(g.in_flight == 0, "good client: %d calls still in flight",
                g.in_flight);
  ck_assert_msg(fails == 0, "%zu of %zu hostile cases failed:%s", fails, ncases,
                report);
  ck_assert_int_eq(g.start_errors, 0);
  ck_assert_msg(g.failed == 0, "good client: %d calls failed, first with %s",
                g.failed, qrpc_status_name(g.first_failure));
  ck_assert_int_eq(gc.disconnects, 0);
  ck_assert_int_eq(gc.connects, 1);
  /* Every hostile connection came and went; the good one is still there. */
  ck_assert(qt_run_until_count(loop, &peers.closed, (int)ncases, QT_WAIT_MS));
  ck_assert_int_eq(peers.opened, (int)ncases + 1);
  ck_assert_int_eq(peers.live, 1);
  /* The held request died with its connection. */
  ck_assert_int_eq(holder.held, 0);
  ck_assert_int_eq(holder.cancels, holder.received);
  ck_assert(qt_rpc_close_all(loop, &srv, &gc, 1));
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
  free(hs);
}
END_TEST

/* Frames that never complete: each stream holds less than max_frame, but
 * together they pass the connection's max_buffered, and the connection
 * is closed with RESOURCE_LIMIT instead of growing without bound. */
#define PARTIAL_STREAMS 3
#define PARTIAL_BODY (600u * 1024u)

START_TEST(test_partial_frames_bounded) {
  qrpc_server_opts so;
  qrpc_server *srv = NULL;
  char addr[64];
  qt_rpc_peers peers;
  qt_rpc_client gc;
  good g;
  qt_client cl;
  qt_raw_rpc raw[PARTIAL_STREAMS];
  uint8_t *chunk = calloc(1, PARTIAL_BODY);
  uint8_t hdr[16];
  size_t n;
  int i, ok_before, echoes = 0;

  ck_assert_ptr_nonnull(chunk);
  qrpc_server_opts_default(&so);
  so.rpc.max_frame = MAX_FRAME;
  so.rpc.max_buffered = MAX_FRAME;
  qt_rpc_peers_install(&so, &peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &so, &srv,
                                       addr, sizeof(addr)),
                   0);
  ck_assert_int_eq(
      qrpc_server_register(srv, M_ECHO, QRPC_SHAPE_UNARY, qt_rpc_echo, &echoes),
      0);
  ck_assert_int_eq(qt_rpc_client_start(&gc, loop, addr, ctls, NULL), 0);
  ck_assert(qt_rpc_client_wait_connects(&gc, 1, QT_WAIT_MS));
  memset(&g, 0, sizeof(g));
  g.cli = gc.cli;
  good_fill(&g);

  ck_assert_int_eq(qt_client_connect(&cl, loop, addr, NULL, ctls, NULL), 0);
  ck_assert(qt_run_until_count(loop, &cl.established, 1, QT_WAIT_MS));
  /* A REQUEST announcing a body just under the frame limit, then only
   * part of it, on each stream. */
  n = qrpci_varint_put(hdr, MAX_FRAME - 16);
  hdr[n++] = QRPCI_FRAME_REQUEST;
  for (i = 0; i < PARTIAL_STREAMS; i++) {
    ck_assert_int_eq(qt_raw_rpc_open(&raw[i], cl.conn, NULL, NULL), 0);
    ck_assert_int_eq(qt_raw_rpc_send_bytes(&raw[i], hdr, n), 0);
    ck_assert_int_eq(qt_raw_rpc_send_bytes(&raw[i], chunk, PARTIAL_BODY), 0);
  }
  ck_assert(qt_run_until_count(loop, &cl.closed, 1, QT_WAIT_MS));
  ck_assert_int_eq(cl.close.kind, QRPC_CLOSE_APPLICATION);
  ck_assert_int_eq(cl.close.local, 0);
  ck_assert_uint_eq(cl.close.code, 0x5);
  ck_assert_str_ne(cl.close.reason, "");

  /* The good client goes on. */
  ok_before = g.ok;
  ck_assert(
      qt_run_until_count(loop, &g.ok, ok_before + GOOD_PROGRESS, QT_WAIT_MS));
  g.stopping = 1;
  ck_assert(qt_run_until(loop, good_idle, &g, QT_WAIT_MS));
  ck_assert_int_eq(g.failed, 0);
  ck_assert_int_eq(g.start_errors, 0);
  ck_assert_int_eq(gc.disconnects, 0);
  ck_assert(qt_run_until_count(loop, &peers.closed, 1, QT_WAIT_MS));
  ck_assert_int_eq(peers.live, 1);
  ck_assert(qt_rpc_close_all(loop, &srv, &gc, 1));
  free(chunk);
}
END_TEST

static Suite *hostile_suite(void) {
  Suite *s = suite_create("rpc_hostile");
  TCase *tc = tcase_create("hostile");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 90);
  tcase_add_test(tc, test_hostile_frames);
  tcase_add_test(tc, test_partial_frames_bounded);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(hostile_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
