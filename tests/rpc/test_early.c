/*
 * Calls in 0-RTT over loopback (docs/protocol.md, "Calls in 0-RTT"): a
 * first client gets a session ticket, and a new client on the same TLS
 * config resumes with it. Its calls marked idempotent go out in early data
 * and run at once on the server if the method was registered idempotent
 * (the handler sees qrpc_req_is_early()), or are refused with TOO_EARLY
 * without running if it was not; calls not marked idempotent wait for the
 * handshake; and when a restarted server refuses the early data, the calls
 * sent in it run once, after the handshake. Then what needs no 0-RTT at
 * all: the versions of
 * qrpc_call_opts a caller may pass, registration flags, the status name.
 */
#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"
#include "rpc_harness.h"

#define M_IDEM 1        /* unary, registered idempotent */
#define M_PLAIN 2       /* unary, registered without the flag */
#define M_IDEM_ITEMS 3  /* server streaming, idempotent: the payload twice */
#define M_IDEM_COUNT 4  /* client streaming, idempotent: counts items */
#define M_PLAIN_ITEMS 5 /* server streaming, not idempotent */
#define M_UNKNOWN 0x2badbeefu

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* What the server's handlers saw, per method. */
typedef struct method_seen {
  int calls;
  int early;           /* qrpc_req_is_early() was 1 */
  int before_open;     /* ran before on_peer_open of its connection */
  int items;           /* client streaming: items received */
  int items_early_bad; /* a request that did not arrive early said it did */
} method_seen;

typedef struct fixture {
  qrpc_server *srv;
  char addr[64];
  qt_rpc_peers peers;
  int opened_before; /* peers opened before the client under test came */
  method_seen idem, plain, idem_items, idem_count, plain_items;
  qt_rpc_client first;   /* gets the ticket */
  qt_rpc_client resumed; /* a new client on the same TLS config */
} fixture;

static fixture fx;

static void seen_request(method_seen *m, qrpc_req *req) {
  m->calls++;
  m->early += qrpc_req_is_early(req);
  if (fx.peers.opened <= fx.opened_before) m->before_open++;
}

static void on_unary(qrpc_req *req, const uint8_t *payload, size_t len,
                     void *user_data) {
  seen_request(user_data, req);
  qrpc_req_reply(req, payload, len);
}

static void on_items(qrpc_req *req, const uint8_t *payload, size_t len,
                     void *user_data) {
  seen_request(user_data, req);
  qrpc_req_send(req, payload, len);
  qrpc_req_send(req, payload, len);
  qrpc_req_end(req);
}

static void count_item(qrpc_req *req, const uint8_t *data, size_t len,
                       void *user_data) {
  method_seen *m = user_data;
  (void)req;
  (void)data;
  (void)len;
  m->items++;
}

static void count_end(qrpc_req *req, void *user_data) {
  method_seen *m = user_data;
  uint8_t n = (uint8_t)m->items;
  qrpc_req_reply(req, &n, 1);
}

static void on_count(qrpc_req *req, const uint8_t *payload, size_t len,
                     void *user_data) {
  static const qrpc_req_callbacks cbs = {count_item, count_end, NULL, NULL};
  (void)payload;
  (void)len;
  seen_request(user_data, req);
  qrpc_req_set_callbacks(req, &cbs, user_data);
}

/* A server on bind with tls and the test's methods. */
static void server_up(const char *bind, qrpc_tls_config *tls) {
  qrpc_server_opts o;
  qrpc_server_opts_default(&o);
  qt_rpc_peers_install(&o, &fx.peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, bind, tls, &o, &fx.srv, fx.addr,
                                       sizeof(fx.addr)),
                   0);
  ck_assert_int_eq(qrpc_server_register_flags(fx.srv, M_IDEM, QRPC_SHAPE_UNARY,
                                              QRPC_METHOD_IDEMPOTENT, on_unary,
                                              &fx.idem),
                   0);
  ck_assert_int_eq(qrpc_server_register(fx.srv, M_PLAIN, QRPC_SHAPE_UNARY,
                                        on_unary, &fx.plain),
                   0);
  ck_assert_int_eq(qrpc_server_register_flags(
                       fx.srv, M_IDEM_ITEMS, QRPC_SHAPE_SERVER_STREAM,
                       QRPC_METHOD_IDEMPOTENT, on_items, &fx.idem_items),
                   0);
  ck_assert_int_eq(qrpc_server_register_flags(
                       fx.srv, M_IDEM_COUNT, QRPC_SHAPE_CLIENT_STREAM,
                       QRPC_METHOD_IDEMPOTENT, on_count, &fx.idem_count),
                   0);
  ck_assert_int_eq(qrpc_server_register(fx.srv, M_PLAIN_ITEMS,
                                        QRPC_SHAPE_SERVER_STREAM, on_items,
                                        &fx.plain_items),
                   0);
}

static void start_server(void) {
  memset(&fx, 0, sizeof(fx));
  server_up("127.0.0.1:0", stls);
}

/* Servers take no early data with tickets issued in the second their TLS
 * config was made (a previous run with the same key may have issued them
 * too; the clock counts seconds): wait for the next one. */
static void wait_next_second(void) {
  time_t t0 = time(NULL);
  uint64_t start = qt_now_ms();
  while (time(NULL) <= t0 && qt_now_ms() - start < 2000) qt_run_for(loop, 20);
  ck_assert(time(NULL) > t0);
}

static int has_ticket(void *arg) { return qrpc_tls_config_tickets(arg) > 0; }

/* A first client connects, makes one call, waits for the server's session
 * ticket and goes away. */
static void leave_ticket(void) {
  qt_call_rec r;
  ck_assert_int_eq(qt_rpc_client_start(&fx.first, loop, fx.addr, ctls, NULL),
                   0);
  ck_assert(qt_rpc_client_wait_connects(&fx.first, 1, QT_WAIT_MS));
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, fx.first.cli, M_PLAIN, "t", 1, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert(qt_run_until(loop, has_ticket, ctls, QT_WAIT_MS));
  ck_assert_int_eq(fx.plain.early, 0);
  ck_assert_uint_eq(qrpc_client_early_calls(fx.first.cli), 0);
  qt_rpc_client_free(&fx.first);
  ck_assert(qt_run_until_count(loop, &fx.peers.closed, 1, QT_WAIT_MS));
}

/* A new client on the same TLS config as the first, which resumes with
 * its ticket. Calls made right after this returns are made before its
 * first packet. */
static void start_second_client(void) {
  memset(&fx.idem, 0, sizeof(fx.idem));
  memset(&fx.plain, 0, sizeof(fx.plain));
  fx.opened_before = fx.peers.opened;
  ck_assert_int_eq(qt_rpc_client_start(&fx.resumed, loop, fx.addr, ctls, NULL),
                   0);
}

/* A server, a ticket good for early data, and a client resuming with it. */
static void start_resumed(void) {
  start_server();
  wait_next_second();
  leave_ticket();
  start_second_client();
}

static void finish(void) {
  ck_assert(qt_rpc_close_all(loop, &fx.srv, &fx.resumed, 1));
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
  /* Early peers are released too: every peer that opened has closed. */
  ck_assert_int_eq(fx.peers.opened, fx.peers.closed);
}

static int some_early_call(void *arg) {
  return qrpc_client_early_calls(arg) > 0;
}

/* The transport's view of the client's connection: resumed, and its
 * early data accepted. */
static void assert_early_accepted(qrpc_client *cli) {
  qrpc_conn_stats st;
  qrpc_peer *peer = qrpc_client_peer(cli);
  ck_assert_ptr_nonnull(peer);
  qrpc_conn_get_stats(qrpc_peer_conn(peer), &st);
  ck_assert_int_eq(st.resumed, 1);
  ck_assert_int_eq(st.early_data, QRPC_EARLY_ACCEPTED);
}

static qrpc_call_opts idempotent_opts(void) {
  qrpc_call_opts o = qt_call_opts(QT_WAIT_MS, -1);
  o.idempotent = 1;
  return o;
}

/* ---- Reconnection ------------------------------------------------------ */

static int peer_conn_resumed(qrpc_peer *peer) {
  qrpc_conn_stats st;
  qrpc_conn_get_stats(qrpc_peer_conn(peer), &st);
  return st.resumed;
}

/* A client whose connection the server closes reconnects by itself, and
 * that reconnection resumes with the ticket of the first connection. */
START_TEST(test_client_resumes_own_reconnect) {
  start_server();
  ck_assert_int_eq(qt_rpc_client_start(&fx.resumed, loop, fx.addr, ctls, NULL),
                   0);
  ck_assert(qt_rpc_client_wait_connects(&fx.resumed, 1, QT_WAIT_MS));
  ck_assert_int_eq(peer_conn_resumed(fx.resumed.peer), 0);
  ck_assert(qt_run_until(loop, has_ticket, ctls, QT_WAIT_MS));
  /* GnuTLS's server sends its tickets with its Finished, before its side
   * of the handshake completes: wait for the server's peer as well. */
  ck_assert(qt_run_until_count(loop, &fx.peers.opened, 1, QT_WAIT_MS));
  ck_assert_ptr_nonnull(fx.peers.last);
  qrpc_conn_close(qrpc_peer_conn(fx.peers.last), 0, "test");
  ck_assert(qt_rpc_client_wait_connects(&fx.resumed, 2, QT_WAIT_MS));
  ck_assert_int_eq(fx.resumed.lost, 1);
  ck_assert_int_eq(peer_conn_resumed(fx.resumed.peer), 1);
  /* Calls work on it. */
  qt_call_rec r;
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, fx.resumed.cli, M_PLAIN, "r", 1, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  finish();
}
END_TEST

/* ---- Calls in 0-RTT ---------------------------------------------------- */

START_TEST(test_idempotent_call_in_0rtt) {
  qrpc_call_opts o;
  qt_call_rec r;
  start_resumed();
  o = idempotent_opts();
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, fx.resumed.cli, M_IDEM, "early", 5, &o), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_msg(qt_call_rec_replied(&r, "early", 5), "status %s",
                qrpc_status_name(r.status));
  ck_assert_int_eq(fx.idem.calls, 1);
  ck_assert_uint_eq(qrpc_client_early_calls(fx.resumed.cli), 1);
  ck_assert(qt_rpc_client_wait_connects(&fx.resumed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &fx.peers.opened, 2, QT_WAIT_MS));
  assert_early_accepted(fx.resumed.cli);
  ck_assert_msg(fx.idem.early == 1, "the handler did not see the call early");
  /* It ran before the handshake was done, as early data. */
  ck_assert_int_eq(fx.idem.before_open, 1);
  /* After the handshake the same call is an ordinary one. */
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, fx.resumed.cli, M_IDEM, "late", 4, &o), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&r, "late", 4));
  ck_assert_int_eq(fx.idem.calls, 2);
  ck_assert_int_eq(fx.idem.early, 1);
  ck_assert_uint_eq(qrpc_client_early_calls(fx.resumed.cli), 1);
  finish();
}
END_TEST

/* The caller says idempotent, the server does not agree: refused with
 * TOO_EARLY before the handler; sent again after the handshake, it runs. */
START_TEST(test_not_idempotent_method_refused_too_early) {
  qrpc_call_opts o;
  qt_call_rec r, unknown;
  start_resumed();
  o = idempotent_opts();
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, fx.resumed.cli, M_PLAIN, "x", 1, &o), 0);
  ck_assert_int_eq(
      qt_call_rec_start(&unknown, NULL, fx.resumed.cli, M_UNKNOWN, "y", 1, &o),
      0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &unknown.done, 1, QT_WAIT_MS));
  ck_assert_msg(r.status == QRPC_STATUS_TOO_EARLY, "status %s",
                qrpc_status_name(r.status));
  ck_assert_int_eq(r.local, 0);
  ck_assert_int_eq(fx.plain.calls, 0);
  /* Unknown methods are refused as ever, early or not. */
  ck_assert_int_eq(unknown.status, QRPC_STATUS_UNIMPLEMENTED);
  ck_assert_uint_eq(qrpc_client_early_calls(fx.resumed.cli), 2);

  ck_assert(qt_rpc_client_wait_connects(&fx.resumed, 1, QT_WAIT_MS));
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, fx.resumed.cli, M_PLAIN, "x", 1, &o), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&r, "x", 1));
  ck_assert_int_eq(fx.plain.calls, 1);
  ck_assert_int_eq(fx.plain.early, 0);
  finish();
}
END_TEST

/* A call not marked idempotent, made with an idempotent one before the
 * first packet, waits for the handshake; the idempotent one does not. */
START_TEST(test_plain_call_waits_for_handshake) {
  qrpc_call_opts o;
  qt_call_rec idem, plain;
  start_resumed();
  ck_assert_int_eq(
      qt_call_rec_start(&plain, NULL, fx.resumed.cli, M_PLAIN, "p", 1, NULL),
      0);
  o = idempotent_opts();
  ck_assert_int_eq(
      qt_call_rec_start(&idem, NULL, fx.resumed.cli, M_IDEM, "i", 1, &o), 0);
  ck_assert(qt_run_until_count(loop, &plain.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &idem.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&plain, "p", 1));
  ck_assert(qt_call_rec_replied(&idem, "i", 1));
  ck_assert_int_eq(fx.plain.calls, 1);
  ck_assert_int_eq(fx.plain.early, 0);
  ck_assert_int_eq(fx.plain.before_open, 0);
  ck_assert_int_eq(fx.idem.early, 1);
  ck_assert_uint_eq(qrpc_client_early_calls(fx.resumed.cli), 1);
  finish();
}
END_TEST

/* Streaming shapes go out in 0-RTT too: a server streaming call, and a
 * client streaming call whose items follow once it is under way. A
 * streaming method the server does not mark idempotent is refused. */
START_TEST(test_streaming_calls_in_0rtt) {
  static const uint8_t item[] = {7};
  qrpc_call_opts o;
  qt_call_rec items, count, plain;
  start_resumed();
  o = idempotent_opts();
  qt_call_rec_init(&items, NULL);
  qt_call_rec_init(&count, NULL);
  qt_call_rec_init(&plain, NULL);
  ck_assert_int_eq(qrpc_client_stream(fx.resumed.cli, M_IDEM_ITEMS,
                                      QRPC_SHAPE_SERVER_STREAM, "s", 1, &o,
                                      &qt_call_rec_cbs, &items, &items.call),
                   0);
  ck_assert_int_eq(qrpc_client_stream(fx.resumed.cli, M_IDEM_COUNT,
                                      QRPC_SHAPE_CLIENT_STREAM, NULL, 0, &o,
                                      &qt_call_rec_cbs, &count, &count.call),
                   0);
  ck_assert_int_eq(qrpc_client_stream(fx.resumed.cli, M_PLAIN_ITEMS,
                                      QRPC_SHAPE_SERVER_STREAM, "s", 1, &o,
                                      &qt_call_rec_cbs, &plain, &plain.call),
                   0);
  /* The calls are under way once they went out. */
  ck_assert(qt_run_until(loop, some_early_call, fx.resumed.cli, QT_WAIT_MS));
  for (int i = 0; i < 3; i++)
    ck_assert_int_eq(qrpc_call_send(count.call, item, sizeof(item)), 0);
  ck_assert_int_eq(qrpc_call_end(count.call), 0);
  ck_assert(qt_run_until_count(loop, &items.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &count.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &plain.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(items.status, QRPC_STATUS_OK);
  ck_assert_int_eq(items.items, 2);
  ck_assert_int_eq(count.status, QRPC_STATUS_OK);
  ck_assert_uint_eq(count.reply_len, 1);
  ck_assert_uint_eq(count.reply[0], 3);
  ck_assert_int_eq(plain.status, QRPC_STATUS_TOO_EARLY);
  ck_assert_int_eq(plain.items, 0);
  ck_assert_int_eq(fx.idem_items.early, 1);
  ck_assert_int_eq(fx.idem_count.early, 1);
  ck_assert_int_eq(fx.plain_items.calls, 0);
  ck_assert_uint_eq(qrpc_client_early_calls(fx.resumed.cli), 3);
  finish();
}
END_TEST

/* A server restarted on the same port with the same server key resumes
 * the session of a ticket its previous run issued, but cannot know whether
 * that run took early data with it, so it refuses the early data. The
 * transport sends the calls again after the handshake: they run once, not
 * early, whether the method is idempotent or not. */
START_TEST(test_early_data_rejected_calls_sent_again) {
  static const uint8_t key[QRPC_SERVER_KEY_LEN] = {5, 4, 3, 2, 1};
  qrpc_tls_config *restarted;
  qrpc_call_opts o;
  qt_call_rec idem, plain;
  char bind[64];
  ck_assert_int_eq(qrpc_tls_config_set_server_key(stls, key, sizeof(key)), 0);
  start_server();
  leave_ticket();
  snprintf(bind, sizeof(bind), "%s", fx.addr);
  qrpc_server_free(fx.srv);
  fx.srv = NULL;
  restarted = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(restarted);
  ck_assert_int_eq(qrpc_tls_config_set_server_key(restarted, key, sizeof(key)),
                   0);
  server_up(bind, restarted);
  qrpc_tls_config_free(restarted); /* the server keeps its reference */
  start_second_client();

  o = idempotent_opts();
  ck_assert_int_eq(
      qt_call_rec_start(&idem, NULL, fx.resumed.cli, M_IDEM, "i", 1, &o), 0);
  ck_assert_int_eq(
      qt_call_rec_start(&plain, NULL, fx.resumed.cli, M_PLAIN, "p", 1, &o), 0);
  ck_assert(qt_run_until_count(loop, &idem.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &plain.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&idem, "i", 1));
  ck_assert(qt_call_rec_replied(&plain, "p", 1));
  ck_assert_int_eq(fx.idem.calls, 1);
  ck_assert_int_eq(fx.plain.calls, 1);
  ck_assert_int_eq(fx.idem.early + fx.plain.early, 0);
  /* They went out in 0-RTT all the same. */
  ck_assert_uint_eq(qrpc_client_early_calls(fx.resumed.cli), 2);
  qrpc_conn_stats st;
  ck_assert(qt_rpc_client_wait_connects(&fx.resumed, 1, QT_WAIT_MS));
  qrpc_conn_get_stats(qrpc_peer_conn(qrpc_client_peer(fx.resumed.cli)), &st);
  ck_assert_int_eq(st.resumed, 1);
  ck_assert_int_eq(st.early_data, QRPC_EARLY_REJECTED);
  finish();
}
END_TEST

/* ---- What needs no 0-RTT ------------------------------------------------ */

/* A connection without a ticket (the first one) sends idempotent calls
 * after the handshake, as every other call: none is early. */
START_TEST(test_no_ticket_no_early_calls) {
  qrpc_call_opts o;
  qt_call_rec r;
  start_server();
  ck_assert_int_eq(qt_rpc_client_start(&fx.resumed, loop, fx.addr, ctls, NULL),
                   0);
  o = idempotent_opts();
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, fx.resumed.cli, M_IDEM, "a", 1, &o), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&r, "a", 1));
  ck_assert_int_eq(fx.idem.early, 0);
  ck_assert_int_eq(fx.idem.before_open, 0);
  ck_assert_uint_eq(qrpc_client_early_calls(fx.resumed.cli), 0);
  finish();
}
END_TEST

/* qrpc_call_opts as a caller built against the first version passes it
 * (size up to fail_fast), as this version's, and sizes no version had. */
START_TEST(test_call_opts_versions) {
  qrpc_call_opts o, copy;
  qt_call_rec r;
  size_t v1 = offsetof(qrpc_call_opts, fail_fast) + sizeof(int);

  qrpc_call_opts_default(&o);
  o.timeout_ms = 1234;
  o.fail_fast = 0;
  o.idempotent = 1;
  o.size = v1;
  ck_assert_int_eq(qrpc_call_opts_copy(&copy, &o), 0);
  ck_assert_uint_eq(copy.size, sizeof(copy));
  ck_assert_uint_eq(copy.timeout_ms, 1234);
  ck_assert_int_eq(copy.fail_fast, 0);
  ck_assert_int_eq(copy.idempotent, 0); /* not covered: the default */
  o.size = sizeof(o);
  ck_assert_int_eq(qrpc_call_opts_copy(&copy, &o), 0);
  ck_assert_int_eq(copy.idempotent, 1);
  ck_assert_int_eq(qrpc_call_opts_copy(&copy, NULL), 0);
  ck_assert_int_eq(copy.fail_fast, -1);
  ck_assert_uint_eq(copy.timeout_ms, 0);
  o.size = v1 - 1;
  ck_assert_int_eq(qrpc_call_opts_copy(&copy, &o), QRPC_EINVAL);
  o.size = sizeof(o) + 8;
  ck_assert_int_eq(qrpc_call_opts_copy(&copy, &o), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_call_opts_copy(NULL, &o), QRPC_EINVAL);

  /* The calls themselves. */
  start_server();
  ck_assert_int_eq(qt_rpc_client_start(&fx.resumed, loop, fx.addr, ctls, NULL),
                   0);
  ck_assert(qt_rpc_client_wait_connects(&fx.resumed, 1, QT_WAIT_MS));
  o.size = v1 - 1;
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, fx.resumed.cli, M_IDEM, "v", 1, &o),
      QRPC_EINVAL);
  ck_assert_int_eq(
      qt_call_rec_start_peer(&r, NULL, fx.peers.last, M_IDEM, "v", 1, &o),
      QRPC_EINVAL);
  o.size = v1;
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, fx.resumed.cli, M_IDEM, "v", 1, &o), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&r, "v", 1));
  finish();
}
END_TEST

START_TEST(test_register_flags_and_status_name) {
  start_server();
  ck_assert_int_eq(qrpc_server_register_flags(fx.srv, M_IDEM, QRPC_SHAPE_UNARY,
                                              1u << 7, on_unary, &fx.idem),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_server_register_flags(NULL, M_IDEM, QRPC_SHAPE_UNARY, 0,
                                              on_unary, &fx.idem),
                   QRPC_EINVAL);
  ck_assert_str_eq(qrpc_status_name(QRPC_STATUS_TOO_EARLY), "TOO_EARLY");
  ck_assert_int_eq(QRPC_STATUS_TOO_EARLY, 425);
  ck_assert_str_eq(qrpc_status_name(424), "UNKNOWN_STATUS");
  ck_assert_uint_eq(qrpc_client_early_calls(NULL), 0);
  finish();
}
END_TEST

static Suite *early_suite(void) {
  Suite *s = suite_create("rpc_early");
  TCase *tc = tcase_create("early");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_add_test(tc, test_idempotent_call_in_0rtt);
  tcase_add_test(tc, test_not_idempotent_method_refused_too_early);
  tcase_add_test(tc, test_plain_call_waits_for_handshake);
  tcase_add_test(tc, test_streaming_calls_in_0rtt);
  tcase_add_test(tc, test_early_data_rejected_calls_sent_again);
  tcase_add_test(tc, test_no_ticket_no_early_calls);
  tcase_add_test(tc, test_call_opts_versions);
  tcase_add_test(tc, test_register_flags_and_status_name);
  tcase_add_test(tc, test_client_resumes_own_reconnect);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(early_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? 0 : 1;
}
