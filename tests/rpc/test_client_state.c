/*
 * The client's connection-state callback (qrpc_client_opts.on_state) over
 * real loopback UDP: every attempt reports CONNECTING, then READY or
 * FAILED exactly once, FAILED says why (a closed port, a silent one, a
 * certificate from an untrusted CA, a lost connection) and when the next
 * attempt starts; a TLS refusal is logged as a warning once, not on every
 * retry.
 */
#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"
#include "rpc_harness.h"

#define M_ECHO 1
#define MAX_EVENTS 64
#define BACKOFF_MAX_MS 200

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* Every transition, in order, with what FAILED said. */
typedef struct state_rec {
  qrpc_client *cli;
  char seq[MAX_EVENTS + 1]; /* 'C' connecting, 'R' ready, 'F' failed */
  size_t n;
  int overflow;
  uint64_t attempt[MAX_EVENTS];
  int error[MAX_EVENTS];
  int was_ready[MAX_EVENTS];
  int has_close[MAX_EVENTS];
  qt_close_rec close[MAX_EVENTS];
  uint64_t retry_in_ms[MAX_EVENTS];
  int bad_info;      /* a field set that the state does not carry */
  int wrong_cli;     /* the client pointer was not the one created */
  int failed;        /* FAILED count */
  int ready;         /* READY count */
  int connects;      /* on_connect count */
  int seen_cli_null; /* a callback before qrpc_client_new returned */
} state_rec;

static void on_state(qrpc_client *cli, const qrpc_client_state_info *info,
                     void *user_data) {
  state_rec *r = user_data;
  if (r->cli == NULL)
    r->seen_cli_null++;
  else if (r->cli != cli)
    r->wrong_cli++;
  if (r->n >= MAX_EVENTS) {
    r->overflow = 1;
    return;
  }
  size_t i = r->n++;
  r->seq[i] = info->state == QRPC_CLIENT_CONNECTING ? 'C'
              : info->state == QRPC_CLIENT_READY    ? 'R'
              : info->state == QRPC_CLIENT_FAILED   ? 'F'
                                                    : '?';
  r->attempt[i] = info->attempt;
  r->error[i] = info->error;
  r->was_ready[i] = info->was_ready;
  r->retry_in_ms[i] = info->retry_in_ms;
  r->has_close[i] = info->close != NULL;
  if (info->close) qt_close_rec_set(&r->close[i], info->close);
  if (info->state == QRPC_CLIENT_FAILED) {
    r->failed++;
    if (info->error == 0) r->bad_info++;
  } else {
    if (info->error != 0 || info->close || info->retry_in_ms || info->was_ready)
      r->bad_info++;
    if (info->state == QRPC_CLIENT_READY) r->ready++;
  }
}

static void on_connect(qrpc_client *cli, qrpc_peer *peer, void *user_data) {
  (void)cli, (void)peer;
  ((state_rec *)user_data)->connects++;
}

static qrpc_client *client_new(state_rec *r, const char *addr,
                               qrpc_tls_config *tls, uint64_t handshake_ms) {
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.backoff_initial_ms = 50;
  co.backoff_max_ms = BACKOFF_MAX_MS;
  co.conn.handshake_timeout_ms = handshake_ms;
  co.on_state = on_state;
  co.on_connect = on_connect;
  co.user_data = r;
  memset(r, 0, sizeof(*r));
  qrpc_client *cli = NULL;
  ck_assert_int_eq(qrpc_client_new(loop, addr, tls, &co, &cli), 0);
  r->cli = cli;
  return cli;
}

/* Checks that events [from, to) are CONNECTING/FAILED pairs of
 * consecutive attempts starting at first, each FAILED with err, a close,
 * and a retry time within the backoff cap. */
static void check_failed_attempts(const state_rec *r, size_t from, size_t to,
                                  uint64_t first, int err) {
  ck_assert_msg((to - from) % 2 == 0, "sequence %s", r->seq);
  for (size_t i = from; i < to; i += 2) {
    uint64_t a = first + (i - from) / 2;
    ck_assert_msg(r->seq[i] == 'C' && r->seq[i + 1] == 'F', "sequence %s",
                  r->seq);
    ck_assert_uint_eq(r->attempt[i], a);
    ck_assert_uint_eq(r->attempt[i + 1], a);
    ck_assert_msg(r->error[i + 1] == err, "attempt %llu: %s, want %s",
                  (unsigned long long)a, qrpc_strerror(r->error[i + 1]),
                  qrpc_strerror(err));
    ck_assert_int_eq(r->was_ready[i + 1], 0);
    ck_assert_int_eq(r->has_close[i + 1], 1);
    ck_assert_int_eq(r->close[i + 1].error, err);
    ck_assert_uint_le(r->retry_in_ms[i + 1], BACKOFF_MAX_MS);
  }
}

/* ---- No server -------------------------------------------------------- */

/* A port nothing listens on: the kernel answers the first Initial with
 * ICMP port unreachable, and the attempt fails with QRPC_EUNREACHABLE
 * long before its handshake timeout (a minute here). */
START_TEST(test_no_server) {
  qt_udp_sink gone;
  char addr[64];
  state_rec r;
  ck_assert_int_eq(qt_udp_sink_open(&gone, loop), 0);
  snprintf(addr, sizeof(addr), "%s", gone.addr);
  qt_udp_sink_close(&gone);

  qrpc_client *cli = client_new(&r, addr, ctls, 60000);
  /* The first CONNECTING fires inside qrpc_client_new(). */
  ck_assert_int_eq(r.seen_cli_null, 1);
  ck_assert_str_eq(r.seq, "C");
  ck_assert(qt_run_until_count(loop, &r.failed, 3, QT_WAIT_MS));
  ck_assert_int_eq(r.overflow, 0);
  /* Stop at a whole pair: the third attempt's CONNECTING may be out. */
  size_t pairs = r.n - r.n % 2;
  check_failed_attempts(&r, 0, pairs, 1, QRPC_EUNREACHABLE);
  ck_assert_int_eq(r.close[1].kind, QRPC_CLOSE_ERROR);
  ck_assert_int_eq(r.close[1].local, 1);
  ck_assert_msg(strstr(r.close[1].reason, "no server at") != NULL, "reason: %s",
                r.close[1].reason);
  ck_assert_int_eq(r.ready, 0);
  ck_assert_int_eq(r.connects, 0);
  ck_assert_int_eq(r.bad_info, 0);
  ck_assert_int_eq(r.wrong_cli, 0);
  qrpc_client_free(cli);
  /* Nothing after the free. */
  size_t n = r.n;
  qt_run_for(loop, 100);
  ck_assert_uint_eq(r.n, n);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* A port that swallows everything: the handshake times out, and FAILED
 * says so. */
START_TEST(test_silent_server) {
  qt_udp_sink sink;
  state_rec r;
  ck_assert_int_eq(qt_udp_sink_open(&sink, loop), 0);
  qrpc_client *cli = client_new(&r, sink.addr, ctls, 300);
  ck_assert(qt_run_until_count(loop, &r.failed, 2, QT_WAIT_MS));
  size_t pairs = r.n - r.n % 2;
  check_failed_attempts(&r, 0, pairs, 1, QRPC_ETIMEDOUT);
  ck_assert_int_eq(r.close[1].kind, QRPC_CLOSE_HANDSHAKE_TIMEOUT);
  ck_assert_int_gt(sink.received, 0);
  ck_assert_int_eq(r.bad_info, 0);
  qrpc_client_free(cli);
  qt_udp_sink_close(&sink);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* ---- Wrong CA --------------------------------------------------------- */

typedef struct log_rec {
  int warn_untrusted; /* warnings naming the refused certificate */
  int info_untrusted; /* the same at info level */
} log_rec;

static void count_log(qrpc_log_level level, const char *msg, void *ud) {
  log_rec *l = ud;
  if (strstr(msg, "not trusted") == NULL) return;
  if (level == QRPC_LOG_WARN) l->warn_untrusted++;
  if (level == QRPC_LOG_INFO) l->info_untrusted++;
}

START_TEST(test_wrong_ca) {
  qrpc_server *srv;
  char addr[64];
  state_rec r;
  log_rec logs = {0, 0};
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, NULL, &srv,
                                       addr, sizeof(addr)),
                   0);
  qrpc_tls_config *wrong = qt_client_tls(certs.other_ca_pem);
  ck_assert_ptr_nonnull(wrong);
  qrpc_log_set_handler(count_log, &logs);
  qrpc_log_set_level(QRPC_LOG_INFO);

  qrpc_client *cli = client_new(&r, addr, wrong, 5000);
  ck_assert(qt_run_until_count(loop, &r.failed, 4, QT_WAIT_MS));
  size_t pairs = r.n - r.n % 2;
  check_failed_attempts(&r, 0, pairs, 1, QRPC_ECERT);
  for (size_t i = 1; i < pairs; i += 2) {
    ck_assert_int_eq(r.close[i].kind, QRPC_CLOSE_TLS);
    ck_assert_int_eq(r.close[i].local, 1);
    ck_assert_msg(strstr(r.close[i].reason, "not trusted") != NULL,
                  "reason: %s", r.close[i].reason);
  }
  /* Said once as a warning; the retries repeat it at info level only. */
  ck_assert_int_eq(logs.warn_untrusted, 1);
  ck_assert_int_ge(logs.info_untrusted, 3);
  ck_assert_int_eq(r.ready, 0);
  qrpc_client_free(cli);
  qrpc_log_set_handler(NULL, NULL);
  qrpc_log_set_level(QRPC_LOG_WARN);
  qrpc_tls_config_free(wrong);
  qrpc_server_free(srv);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* ---- Ready, lost, ready again ----------------------------------------- */

static void echo_once(qrpc_client *cli) {
  qt_call_rec c;
  ck_assert_int_eq(qt_call_rec_start(&c, NULL, cli, M_ECHO, "hi", 2, NULL), 0);
  ck_assert(qt_run_until_count(loop, &c.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&c, "hi", 2));
}

START_TEST(test_ready_lost_ready) {
  qrpc_server *srv;
  char addr[64], bind[64];
  state_rec r;
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, NULL, &srv,
                                       addr, sizeof(addr)),
                   0);
  ck_assert_int_eq(
      qrpc_server_register(srv, M_ECHO, QRPC_SHAPE_UNARY, qt_rpc_echo, NULL),
      0);
  uint16_t port = qrpc_server_port(srv);
  qrpc_client *cli = client_new(&r, addr, ctls, 5000);
  ck_assert(qt_run_until_count(loop, &r.ready, 1, QT_WAIT_MS));
  echo_once(cli);
  qt_run_for(loop, 100);
  ck_assert_str_eq(r.seq, "CR");
  ck_assert_uint_eq(r.attempt[1], 1);
  ck_assert_int_eq(r.connects, 1);

  /* The server goes: the READY connection fails, was_ready set. */
  qrpc_server_free(srv);
  ck_assert(qt_run_until_count(loop, &r.failed, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.seq[2], 'F');
  ck_assert_uint_eq(r.attempt[2], 1);
  ck_assert_int_eq(r.was_ready[2], 1);
  ck_assert_int_eq(r.has_close[2], 1);
  ck_assert_int_ne(r.error[2], 0);
  /* Let a few attempts fail against the closed port. */
  ck_assert(qt_run_until_count(loop, &r.failed, 3, QT_WAIT_MS));

  /* It comes back on the same port: READY again, once. */
  snprintf(bind, sizeof(bind), "127.0.0.1:%u", (unsigned)port);
  ck_assert_int_eq(
      qt_rpc_server_start(loop, bind, stls, NULL, &srv, addr, sizeof(addr)), 0);
  ck_assert_int_eq(
      qrpc_server_register(srv, M_ECHO, QRPC_SHAPE_UNARY, qt_rpc_echo, NULL),
      0);
  ck_assert(qt_run_until_count(loop, &r.ready, 2, QT_WAIT_MS));
  echo_once(cli);
  qt_run_for(loop, 100);
  ck_assert_int_eq(r.overflow, 0);
  ck_assert_int_eq(r.ready, 2);
  ck_assert_int_eq(r.connects, 2);
  ck_assert_msg(r.n >= 6 && r.seq[r.n - 1] == 'R' && r.seq[r.n - 2] == 'C',
                "sequence %s", r.seq);
  /* Between the loss and the last READY only failed attempts. */
  check_failed_attempts(&r, 3, r.n - 2, 2, QRPC_EUNREACHABLE);
  ck_assert_uint_eq(r.attempt[r.n - 1], r.attempt[r.n - 2]);
  ck_assert_int_eq(r.bad_info, 0);
  ck_assert_int_eq(r.wrong_cli, 0);
  qrpc_client_free(cli);
  qrpc_server_free(srv);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* ---- A server that vanishes and stays down ------------------------------ */

/* The server's process is killed (no word to the client) and nothing
 * comes back: with a call waiting, dead-peer detection fails the READY
 * connection with QRPC_EDEADPEER (was_ready set) well before the idle
 * timeout, the call fails, and the client then keeps trying with backoff:
 * each attempt fails (the closed port answers with ICMP) and the retry
 * times grow to the cap. */
START_TEST(test_server_vanishes_stays_down) {
  qt_server srv;
  state_rec r;
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpc_client *cli = client_new(&r, srv.addr, ctls, 5000);
  ck_assert(qt_run_until_count(loop, &r.ready, 1, QT_WAIT_MS));
  ck_assert_str_eq(r.seq, "CR");

  qrpci_endpoint_vanish(srv.ep);
  srv.ep = NULL;
  uint64_t t0 = qt_now_ms();
  qrpc_call_opts o = qt_call_opts(30000, -1);
  qt_call_rec c;
  ck_assert_int_eq(qt_call_rec_start(&c, NULL, cli, M_ECHO, "hi", 2, &o), 0);
  ck_assert(qt_run_until_count(loop, &r.failed, 1, QT_WAIT_MS));
  uint64_t took = qt_now_ms() - t0;
  ck_assert_int_eq(r.seq[2], 'F');
  ck_assert_int_eq(r.was_ready[2], 1);
  ck_assert_msg(r.error[2] == QRPC_EDEADPEER, "lost with %s",
                qrpc_strerror(r.error[2]));
  ck_assert_int_eq(r.has_close[2], 1);
  ck_assert_int_eq(r.close[2].kind, QRPC_CLOSE_DEAD_PEER);
  /* Found by dead-peer detection, not by the 30 s idle timeout. */
  ck_assert_msg(took < 10000, "took %llu ms", (unsigned long long)took);
  ck_assert(qt_run_until_count(loop, &c.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(c.status, QRPC_STATUS_UNAVAILABLE);

  /* It stays down: attempts keep failing, with backoff up to the cap. */
  ck_assert(qt_run_until_count(loop, &r.failed, 6, QT_WAIT_MS));
  check_failed_attempts(&r, 3, 11, 2, QRPC_EUNREACHABLE); /* 4 attempts */
  /* At once after the loss, then half to all of a backoff that doubles
   * from 50 ms up to the 200 ms cap. */
  ck_assert_uint_eq(r.retry_in_ms[2], 0);
  uint64_t d = 50;
  for (size_t i = 4; i<11; i += 2, d = d * 2> 200 ? 200 : d * 2)
    ck_assert_msg(r.retry_in_ms[i] >= d / 2 && r.retry_in_ms[i] <= d,
                  "attempt %zu: retry in %llu ms, backoff %llu", i / 2,
                  (unsigned long long)r.retry_in_ms[i], (unsigned long long)d);
  ck_assert_int_eq(r.ready, 1);
  ck_assert_int_eq(r.bad_info, 0);
  qrpc_client_free(cli);
  qt_server_stop(&srv);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* ---- Older callers ---------------------------------------------------- */

/* A caller built before on_state passes the smaller size: accepted, and
 * on_state stays off. */
START_TEST(test_old_opts_size) {
  qrpc_client_opts co;
  qrpc_client *cli = NULL;
  qrpc_client_opts_default(&co);
  co.size = offsetof(qrpc_client_opts, on_state);
  ck_assert_int_eq(qrpc_client_new(loop, "127.0.0.1:9", ctls, &co, &cli), 0);
  qrpc_client_free(cli);
  co.size = offsetof(qrpc_client_opts, on_state) - 1;
  ck_assert_int_eq(qrpc_client_new(loop, "127.0.0.1:9", ctls, &co, &cli),
                   QRPC_EINVAL);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

static Suite *state_suite(void) {
  Suite *s = suite_create("client_state");
  TCase *tc = tcase_create("state");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_no_server);
  tcase_add_test(tc, test_silent_server);
  tcase_add_test(tc, test_wrong_ca);
  tcase_add_test(tc, test_ready_lost_ready);
  tcase_add_test(tc, test_server_vanishes_stays_down);
  tcase_add_test(tc, test_old_opts_size);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(state_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
