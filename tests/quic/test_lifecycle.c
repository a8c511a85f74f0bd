/*
 * End-to-end connection lifecycle tests over loopback UDP: idle timeout,
 * close and shutdown, endpoint teardown, resource leaks over many
 * connections, endpoint limits and packet-level defences (version
 * negotiation, retry, garbage), loop hand-off from other threads, and the
 * diagnostics (stats, key log, qlog).
 */
#include <check.h>
#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"

static qt_certs certs;
static qrpc_loop *loop;

static void setup(void) {
  ck_assert_int_eq(qt_certs_generate(&certs), 0);
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
}

static void teardown(void) {
  qrpc_loop_free(loop);
  loop = NULL;
  qt_certs_free(&certs);
}

typedef struct both_closed {
  qt_server *srv;
  qt_client *cl;
  int srv_target;
} both_closed;

static int is_both_closed(void *arg) {
  both_closed *b = arg;
  return b->cl->closed > 0 && b->srv->closed >= b->srv_target;
}

/* ---- Timeouts and closing -------------------------------------------- */

START_TEST(test_idle_timeout) {
  qt_server srv;
  qt_client cl;
  qrpc_conn_opts copts;
  qrpc_endpoint_opts sopts;
  both_closed b = {&srv, &cl, 1};
  uint64_t t0, elapsed;

  qrpc_endpoint_opts_default(&sopts);
  sopts.conn.idle_timeout_ms = 300;
  qrpc_conn_opts_default(&copts);
  copts.idle_timeout_ms = 300;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, &sopts, &cl, &copts), 0);
  t0 = qt_now_ms();
  ck_assert(qt_run_until(loop, is_both_closed, &b, 3000));
  elapsed = qt_now_ms() - t0;
  qt_run_for(loop, 300);
  ck_assert_uint_ge(elapsed, 200);
  ck_assert_int_eq(cl.closed, 1);
  ck_assert_int_eq(srv.closed, 1);
  ck_assert_int_eq(cl.close.kind, QRPC_CLOSE_IDLE);
  ck_assert_int_eq(cl.close.error, QRPC_EIDLE);
  ck_assert_int_eq(srv.last_close.kind, QRPC_CLOSE_IDLE);
  ck_assert_int_eq(srv.last_close.error, QRPC_EIDLE);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_close_with_app_code) {
  qt_server srv;
  qt_client cl;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  ck_assert_int_eq(qrpc_conn_close(cl.conn, 0x1234, "bye now"), 0);
  /* quic.h: on_closed fires before qrpc_conn_close() returns. */
  ck_assert_int_eq(cl.closed, 1);
  ck_assert_ptr_null(cl.conn);
  ck_assert_int_eq(cl.close.local, 1);
  ck_assert_int_eq(cl.close.kind, QRPC_CLOSE_APPLICATION);
  ck_assert_uint_eq(cl.close.code, 0x1234);

  ck_assert(qt_run_until_count(loop, &srv.closed, 1, QT_WAIT_MS));
  qt_run_for(loop, 200);
  ck_assert_int_eq(cl.closed, 1);
  ck_assert_int_eq(srv.closed, 1);
  ck_assert_int_eq(srv.last_close.local, 0);
  ck_assert_int_eq(srv.last_close.kind, QRPC_CLOSE_APPLICATION);
  ck_assert_uint_eq(srv.last_close.code, 0x1234);
  ck_assert_int_eq(srv.last_close.error, QRPC_EAPP);
  ck_assert_str_eq(srv.last_close.reason, "bye now");
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_close_orderly_and_long_reason) {
  qt_server srv;
  qt_client cl;
  qrpc_tls_config *ctls;
  char reason[1501];
  size_t i;

  /* Code 0 without a reason: an orderly close, reason "" (never NULL). */
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  ck_assert_int_eq(qrpc_conn_close(cl.conn, 0, NULL), 0);
  ck_assert_int_eq(cl.closed, 1);
  ck_assert(qt_run_until_count(loop, &srv.closed, 1, QT_WAIT_MS));
  ck_assert_int_eq(srv.last_close.kind, QRPC_CLOSE_APPLICATION);
  ck_assert_uint_eq(srv.last_close.code, 0);
  ck_assert_int_eq(srv.last_close.error, 0);
  ck_assert_int_eq(srv.last_close.local, 0);
  ck_assert_str_eq(srv.last_close.reason, "");

  /* A reason longer than 1000 bytes reaches the peer cut to 1000. */
  ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qt_client_connect_wait(&cl, loop, &srv, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  memset(reason, 'r', sizeof(reason) - 1);
  reason[sizeof(reason) - 1] = '\0';
  ck_assert_int_eq(qrpc_conn_close(cl.conn, 5, reason), 0);
  ck_assert(qt_run_until_count(loop, &srv.closed, 2, QT_WAIT_MS));
  ck_assert_uint_eq(srv.last_close.code, 5);
  ck_assert_uint_eq(strlen(srv.last_close.reason), 1000);
  for (i = 0; i < 1000; i++) ck_assert_int_eq(srv.last_close.reason[i], 'r');
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* quic.h: after a successful connect exactly one of on_established or
 * on_closed follows; closing during the handshake must pick on_closed. */
START_TEST(test_close_before_established) {
  qt_server srv;
  qt_client cl;
  qrpc_tls_config *stls = qt_server_tls(&certs);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);

  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(qt_client_connect(&cl, loop, srv.addr, NULL, ctls, NULL), 0);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
  ck_assert_int_eq(qrpc_conn_close(cl.conn, 9, "never mind"), 0);
  ck_assert_int_eq(cl.closed, 1);
  ck_assert_int_eq(cl.close.local, 1);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(cl.established, 0);
  ck_assert_int_eq(cl.closed, 1);
  ck_assert_int_eq(srv.closed, srv.established);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* Closing from inside on_established (allowed by quic.h). */
typedef struct self_closer {
  int established;
  int close_rv;
  qt_close_rec close;
  int closed_inside; /* on_closed ran inside qrpc_conn_close() */
  int in_close;
} self_closer;

static void self_close_on_established(qrpc_conn *c, void *ud) {
  self_closer *sc = ud;
  sc->established++;
  sc->in_close = 1;
  sc->close_rv = qrpc_conn_close(c, 7, "from a callback");
  sc->in_close = 0;
}

static void self_close_on_closed(qrpc_conn *c, const qrpc_close_info *info,
                                 void *ud) {
  self_closer *sc = ud;
  qt_close_rec_set(&sc->close, info);
  if (sc->in_close) sc->closed_inside++;
}

START_TEST(test_close_inside_callback) {
  static const qrpc_conn_callbacks cbs = {
      .on_established = self_close_on_established,
      .on_closed = self_close_on_closed,
  };
  qt_server srv;
  self_closer sc;
  qrpc_tls_config *stls = qt_server_tls(&certs);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qrpc_conn *conn = NULL;

  memset(&sc, 0, sizeof(sc));
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  ck_assert_int_eq(
      qrpc_conn_connect(loop, srv.addr, NULL, ctls, NULL, &cbs, &sc, &conn), 0);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
  ck_assert(qt_run_until_count(loop, &sc.close.count, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(sc.established, 1);
  ck_assert_int_eq(sc.close_rv, 0);
  ck_assert_int_eq(sc.close.count, 1);
  ck_assert_int_eq(sc.closed_inside, 1);
  ck_assert_int_eq(sc.close.local, 1);
  ck_assert_int_eq(sc.close.kind, QRPC_CLOSE_APPLICATION);
  ck_assert_uint_eq(sc.close.code, 7);
  /* The close may overtake the client's last handshake message, and then
   * the server never accepts the connection (RFC 9000 section 10.2.3).
   * If it did accept it, it must have seen the code and the reason. */
  ck_assert_int_eq(srv.closed, srv.established);
  if (srv.established) {
    ck_assert_uint_eq(srv.last_close.code, 7);
    ck_assert_str_eq(srv.last_close.reason, "from a callback");
  }
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

START_TEST(test_shutdown_waits_for_data) {
  const uint64_t total = 512u * 1024u;
  static const qrpc_stream_callbacks no_cbs;
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qrpc_stream *s = NULL;
  uint64_t t0;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "sink", total, 21, 0, NULL), 0);
  /* Below the send buffer: written and finished before the loop runs. */
  ck_assert_uint_eq(x.sent, total);
  ck_assert(x.finished);
  t0 = qt_now_ms();
  ck_assert_int_eq(qrpc_conn_shutdown(cl.conn, 5000), 0);
  ck_assert_int_eq(cl.closed, 0);
  ck_assert_int_eq(qrpc_stream_open(cl.conn, "echo", &no_cbs, NULL, &s),
                   QRPC_ESTATE);

  ck_assert(qt_run_until_count(loop, &cl.closed, 1, 8000));
  ck_assert_uint_lt(qt_now_ms() - t0, 4000);
  /* Everything was delivered and answered before the close. */
  ck_assert_int_eq(x.closes, 1);
  ck_assert(x.ok);
  ck_assert_uint_eq(srv.sink_bytes, total);
  ck_assert_uint_eq(srv.sink_hash, x.sent_hash);
  ck_assert_int_eq(cl.close.local, 1);
  ck_assert_int_eq(cl.close.kind, QRPC_CLOSE_APPLICATION);
  ck_assert_uint_eq(cl.close.code, 0);
  ck_assert_int_eq(cl.close.error, 0);

  ck_assert(qt_run_until_count(loop, &srv.closed, 1, QT_WAIT_MS));
  ck_assert_int_eq(srv.last_close.local, 0);
  ck_assert_uint_eq(srv.last_close.code, 0);
  ck_assert_int_eq(srv.last_close.error, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_shutdown_timeout) {
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  uint64_t t0, elapsed;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  /* A stream that never finishes keeps the shutdown waiting. */
  ck_assert_int_eq(
      qt_xfer_start(&x, cl.conn, "echo", 100, 22, QT_XFER_NO_FINISH, NULL), 0);
  ck_assert(qt_run_until_count(loop, &srv.streams, 1, QT_WAIT_MS));
  t0 = qt_now_ms();
  ck_assert_int_eq(qrpc_conn_shutdown(cl.conn, 300), 0);
  ck_assert(qt_run_until_count(loop, &cl.closed, 1, 3000));
  elapsed = qt_now_ms() - t0;
  ck_assert_uint_ge(elapsed, 250);
  ck_assert_int_eq(x.closes, 1);
  ck_assert_int_eq(cl.close.local, 1);
  ck_assert_uint_eq(cl.close.code, 0);
  ck_assert(qt_run_until_count(loop, &srv.closed, 1, QT_WAIT_MS));
  ck_assert_uint_eq(srv.last_close.code, 0);
  ck_assert(qt_run_until_count(loop, &srv.streams_closed, 1, QT_WAIT_MS));
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* ---- Endpoint teardown ----------------------------------------------- */

#define FREED_CLIENTS 3

typedef struct all_closed {
  qt_client *cl;
  int n;
} all_closed;

static int clients_closed(void *arg) {
  all_closed *a = arg;
  int i;
  for (i = 0; i < a->n; i++)
    if (a->cl[i].closed == 0) return 0;
  return 1;
}

START_TEST(test_endpoint_freed_with_clients) {
  qt_server srv;
  qt_client cl[FREED_CLIENTS];
  qt_xfer x[FREED_CLIENTS];
  qrpc_tls_config *stls = qt_server_tls(&certs);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  all_closed a = {cl, FREED_CLIENTS};
  int i;

  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpc_tls_config_free(stls);
  for (i = 0; i < FREED_CLIENTS; i++) {
    ck_assert_int_eq(qt_client_connect_wait(&cl[i], loop, &srv, ctls, NULL), 0);
    /* An open stream on each, so teardown has stream state to release. */
    ck_assert_int_eq(qt_xfer_start(&x[i], cl[i].conn, "echo", 100,
                                   30u + (uint64_t)i, QT_XFER_NO_FINISH, NULL),
                     0);
  }
  qrpc_tls_config_free(ctls);
  ck_assert(qt_run_until_count(loop, &srv.streams, FREED_CLIENTS, QT_WAIT_MS));

  /* quic.h: on_closed fires for each connection inside the free. */
  qt_server_stop(&srv);
  ck_assert_int_eq(srv.closed, FREED_CLIENTS);
  ck_assert_int_eq(srv.closed_by_kind[QRPC_CLOSE_ENDPOINT], FREED_CLIENTS);
  ck_assert_int_eq(srv.closed_local, FREED_CLIENTS);
  ck_assert_int_eq(srv.streams_closed, FREED_CLIENTS);

  ck_assert(qt_run_until(loop, clients_closed, &a, 3000));
  qt_run_for(loop, 200);
  for (i = 0; i < FREED_CLIENTS; i++) {
    ck_assert_int_eq(cl[i].closed, 1);
    ck_assert_int_eq(cl[i].close.local, 0);
    ck_assert_uint_eq(cl[i].close.code, 0);
    ck_assert_int_eq(cl[i].close.error, 0);
    ck_assert(cl[i].close.kind == QRPC_CLOSE_APPLICATION ||
              cl[i].close.kind == QRPC_CLOSE_TRANSPORT);
    ck_assert_int_eq(x[i].closes, 1);
  }
  ck_assert_int_eq(srv.closed, FREED_CLIENTS);
  qt_close_all(loop, NULL, cl, FREED_CLIENTS);
}
END_TEST

/* Freeing the loop while connections are in their closing period releases
 * them without callbacks; LeakSanitizer checks nothing is left. */
START_TEST(test_loop_free_while_closing) {
  qt_server srv;
  qt_client cl;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  qt_client_close(&cl);
  qt_server_stop(&srv);
  ck_assert_int_eq(cl.closed, 1);
  ck_assert_int_eq(srv.closed, 1);
}
END_TEST

/* ---- Many connections ------------------------------------------------ */

#define SEQ_WARMUP 5
#define SEQ_CONNS 200
/* glibc keeps some freed memory in its bins and caches; a real per
 * connection leak over 200 connections is far above this. */
#define SEQ_HEAP_TOLERANCE (512u * 1024u)

typedef struct seq_done {
  qt_server *srv;
  int srv_closed;
} seq_done;

static int seq_released(void *arg) {
  seq_done *d = arg;
  return d->srv->closed >= d->srv_closed && qrpci_loop_conn_count(loop) == 0;
}

static void one_connection(qt_server *srv, qrpc_tls_config *ctls, int i) {
  qt_client cl;
  qt_xfer x;
  seq_done d = {srv, srv->closed + 1};

  ck_assert_msg(qt_client_connect_wait(&cl, loop, srv, ctls, NULL) == 0,
                "connection %d did not come up", i);
  ck_assert_int_eq(
      qt_xfer_start(&x, cl.conn, "echo", 1000, (uint64_t)i, 0, NULL), 0);
  ck_assert_msg(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS),
                "connection %d: echo stalled", i);
  ck_assert(x.ok);
  qt_client_close(&cl);
  ck_assert_int_eq(cl.closed, 1);
  ck_assert_msg(qt_run_until(loop, seq_released, &d, QT_WAIT_MS),
                "connection %d: %zu connections still held", i,
                qrpci_loop_conn_count(loop));
}

START_TEST(test_sequential_connections_no_leak) {
  qt_server srv;
  qrpc_tls_config *stls = qt_server_tls(&certs);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qrpc_endpoint_stats st;
  int fds0, fds1, i;
  size_t heap0, heap1;

  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpc_tls_config_free(stls);
  /* Lazily created process-wide state (resolver, TLS library caches) is
   * not a leak: measure after a few connections. */
  for (i = 0; i < SEQ_WARMUP; i++) one_connection(&srv, ctls, i);
  fds0 = qt_count_fds();
  heap0 = qt_heap_in_use();
  for (i = 0; i < SEQ_CONNS; i++) one_connection(&srv, ctls, SEQ_WARMUP + i);
  fds1 = qt_count_fds();
  heap1 = qt_heap_in_use();

  ck_assert_int_ge(fds0, 0);
  ck_assert_int_eq(fds1, fds0);
  if (!qt_asan_enabled())
    ck_assert_msg(heap1 < heap0 + SEQ_HEAP_TOLERANCE,
                  "heap grew by %zu bytes over %d connections", heap1 - heap0,
                  SEQ_CONNS);
  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_eq(st.accepted, SEQ_WARMUP + SEQ_CONNS);
  ck_assert_uint_eq(st.connections, 0);
  ck_assert_int_eq(srv.closed, SEQ_WARMUP + SEQ_CONNS);
  qrpc_tls_config_free(ctls);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* ---- Endpoint limits and packet-level defences ----------------------- */

START_TEST(test_max_connections) {
  qt_server srv;
  qt_client a, b, c;
  qt_xfer x;
  qrpc_endpoint_opts sopts;
  qrpc_conn_opts copts;
  qrpc_endpoint_stats st;
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  seq_done d = {&srv, 1};

  ck_assert_ptr_nonnull(ctls);
  qrpc_endpoint_opts_default(&sopts);
  sopts.max_connections = 1;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, &sopts, &a, NULL), 0);

  /* The excess client is refused: it never gets established, and its
   * on_closed fires once, from the server's refusal rather than from its
   * own handshake timer running out. */
  qrpc_conn_opts_default(&copts);
  copts.handshake_timeout_ms = 2000;
  ck_assert_int_eq(qt_client_connect(&b, loop, srv.addr, NULL, ctls, &copts),
                   0);
  ck_assert(qt_run_until_count(loop, &b.closed, 1, QT_WAIT_MS));
  qt_run_for(loop, 200);
  ck_assert_int_eq(b.established, 0);
  ck_assert_int_eq(b.closed, 1);
  ck_assert_int_eq(b.close.local, 0);
  ck_assert_int_ne(b.close.kind, QRPC_CLOSE_HANDSHAKE_TIMEOUT);
  ck_assert_int_eq(srv.established, 1);
  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_ge(st.refused, 1);

  /* The admitted one is unaffected. */
  ck_assert_int_eq(qt_xfer_start(&x, a.conn, "echo", 5000, 40, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  ck_assert(x.ok);

  /* Room again once it is gone. */
  qt_client_close(&a);
  ck_assert(qt_run_until(loop, seq_released, &d, QT_WAIT_MS));
  ck_assert_int_eq(qt_client_connect_wait(&c, loop, &srv, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  qt_close_all(loop, &srv, &c, 1);
}
END_TEST

/* A long-header packet of a version nobody speaks, padded to the minimum
 * Initial size (RFC 9000 section 14.1). */
#define VN_UNKNOWN_VERSION UINT32_C(0x1a2a3a4a)
#define QUIC_V1 UINT32_C(0x00000001)
#define MIN_INITIAL 1200

typedef struct vn_wait {
  int fd;
  uint8_t buf[2048];
  ssize_t len;
} vn_wait;

static int vn_received(void *arg) {
  vn_wait *w = arg;
  w->len = recv(w->fd, w->buf, sizeof(w->buf), MSG_DONTWAIT);
  return w->len > 0;
}

static uint32_t be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

START_TEST(test_version_negotiation) {
  static const uint8_t dcid[8] = {1, 2, 3, 4, 5, 6, 7, 8};
  static const uint8_t scid[8] = {9, 10, 11, 12, 13, 14, 15, 16};
  qt_server srv;
  qrpc_tls_config *stls = qt_server_tls(&certs);
  qrpc_endpoint_stats st;
  uint8_t pkt[MIN_INITIAL];
  vn_wait w;
  size_t off;
  int has_v1 = 0, has_unknown = 0;

  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpc_tls_config_free(stls);
  memset(pkt, 0, sizeof(pkt));
  pkt[0] = 0xc0; /* long header, fixed bit, Initial */
  pkt[1] = 0x1a;
  pkt[2] = 0x2a;
  pkt[3] = 0x3a;
  pkt[4] = 0x4a;
  pkt[5] = sizeof(dcid);
  memcpy(pkt + 6, dcid, sizeof(dcid));
  pkt[6 + sizeof(dcid)] = sizeof(scid);
  memcpy(pkt + 7 + sizeof(dcid), scid, sizeof(scid));
  ck_assert_uint_eq(be32(pkt + 1), VN_UNKNOWN_VERSION);

  w.fd = qt_udp_socket_v4();
  ck_assert_int_ge(w.fd, 0);
  ck_assert_int_eq(qt_udp_send_v4(w.fd, srv.port, pkt, sizeof(pkt)), 0);
  ck_assert_msg(qt_run_until(loop, vn_received, &w, 3000),
                "no Version Negotiation packet came back");
  close(w.fd);

  /* RFC 9000 section 17.2.1: header form 1, version 0, the connection IDs
   * echoed swapped, then a list of 32-bit versions. */
  ck_assert_int_ge(w.len, 7 + 16 + 4);
  ck_assert(w.buf[0] & 0x80);
  ck_assert_uint_eq(be32(w.buf + 1), 0);
  ck_assert_uint_eq(w.buf[5], sizeof(scid));
  ck_assert_mem_eq(w.buf + 6, scid, sizeof(scid));
  ck_assert_uint_eq(w.buf[6 + sizeof(scid)], sizeof(dcid));
  ck_assert_mem_eq(w.buf + 7 + sizeof(scid), dcid, sizeof(dcid));
  off = 7 + sizeof(scid) + sizeof(dcid);
  ck_assert_uint_eq(((size_t)w.len - off) % 4, 0);
  for (; off + 4 <= (size_t)w.len; off += 4) {
    has_v1 |= be32(w.buf + off) == QUIC_V1;
    has_unknown |= be32(w.buf + off) == VN_UNKNOWN_VERSION;
  }
  ck_assert(has_v1);
  ck_assert(!has_unknown);

  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_ge(st.version_negotiations_sent, 1);
  ck_assert_uint_eq(st.connections, 0);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

START_TEST(test_stateless_retry) {
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qrpc_endpoint_opts sopts;
  qrpc_endpoint_stats st;

  qrpc_endpoint_opts_default(&sopts);
  sopts.validate_address = 1;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, &sopts, &cl, NULL), 0);
  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_ge(st.retries_sent, 1);
  ck_assert_uint_eq(st.accepted, 1);
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", 20000, 50, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  ck_assert(x.ok);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

#define GARBAGE_PACKETS 60

typedef struct dropped_wait {
  qrpc_endpoint *ep;
  uint64_t target;
} dropped_wait;

static int dropped_reached(void *arg) {
  dropped_wait *w = arg;
  qrpc_endpoint_stats st;
  qrpc_endpoint_get_stats(w->ep, &st);
  return st.packets_dropped >= w->target;
}

/* Garbage that no reading of RFC 9000 turns into anything but a drop:
 * short headers for connection IDs nobody issued, version 1 long headers
 * too short for an Initial, and runt datagrams. */
static size_t make_garbage(int i, uint8_t *pkt, size_t cap) {
  size_t len;
  qt_pattern_fill(0xbad, (uint64_t)i * cap, pkt, cap);
  switch (i % 3) {
  case 0:
    len = 21 + (size_t)pkt[1] * 4;
    pkt[0] = (uint8_t)(0x40 | (pkt[0] & 0x3f));
    break;
  case 1:
    len = 30 + (size_t)pkt[1] * 3;
    pkt[0] = (uint8_t)(0xc0 | (pkt[0] & 0x3f));
    pkt[1] = 0;
    pkt[2] = 0;
    pkt[3] = 0;
    pkt[4] = 1;
    break;
  default: len = 1 + (size_t)(pkt[1] % 4); break;
  }
  return len < cap ? len : cap;
}

START_TEST(test_garbage_dropped) {
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qrpc_endpoint_stats st;
  dropped_wait w;
  uint8_t pkt[1100];
  int fd, i;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  qrpc_endpoint_get_stats(srv.ep, &st);
  w.ep = srv.ep;
  w.target = st.packets_dropped + GARBAGE_PACKETS;
  fd = qt_udp_socket_v4();
  ck_assert_int_ge(fd, 0);
  for (i = 0; i < GARBAGE_PACKETS; i++) {
    size_t len = make_garbage(i, pkt, sizeof(pkt));
    ck_assert_int_eq(qt_udp_send_v4(fd, srv.port, pkt, len), 0);
  }
  close(fd);
  ck_assert_msg(qt_run_until(loop, dropped_reached, &w, 3000),
                "packets_dropped did not grow by %d", GARBAGE_PACKETS);

  /* The established connection did not notice. */
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", 20000, 60, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  ck_assert(x.ok);
  ck_assert_int_eq(cl.closed, 0);
  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_eq(st.connections, 1);
  ck_assert_uint_eq(st.accepted, 1);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* More than the receive buffer the test gives the server holds (the
 * kernel doubles FLOOD_RCVBUF for its bookkeeping; each datagram takes at
 * least 768 bytes of it). */
#define FLOOD_PACKETS 30000
#define FLOOD_RCVBUF (4 * 1024 * 1024)

static int flood_accounted(void *arg) {
  dropped_wait *w = arg;
  qrpc_endpoint_stats st;
  qrpc_endpoint_get_stats(w->ep, &st);
  return st.packets_dropped + st.socket_drops >= w->target;
}

/* A flood sent while the loop does not read overflows the server's socket:
 * the kernel's drops show in socket_drops, what was read in
 * packets_dropped, every datagram of the flood in one of them, and the
 * server goes on serving. (The kernel also drops what the good client
 * sends while the buffer is full, a few packets, counted as well.) */
START_TEST(test_socket_drops_counted) {
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qrpc_endpoint_stats st;
  uint8_t pkt[1100];

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  /* An endpoint asks for more than any flood a test can send in time,
   * and gets it when the process may exceed rmem_max (as root). */
  qrpci_endpoint_set_rcvbuf(srv.ep, FLOOD_RCVBUF);
  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_eq(st.socket_drops, 0);
  dropped_wait w = {srv.ep, st.packets_dropped + FLOOD_PACKETS};
  int fd = qt_udp_socket_v4();
  ck_assert_int_ge(fd, 0);
  for (int i = 0; i < FLOOD_PACKETS; i++) {
    size_t len = make_garbage(i, pkt, sizeof(pkt));
    ck_assert_int_eq(qt_udp_send_v4(fd, srv.port, pkt, len), 0);
  }
  close(fd);
  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_gt(st.socket_drops, 0);
  ck_assert_uint_lt(st.socket_drops, FLOOD_PACKETS);
  ck_assert(qt_run_until(loop, flood_accounted, &w, QT_WAIT_MS));
  qt_run_for(loop, 50);
  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_ge(st.packets_dropped + st.socket_drops, w.target);
  ck_assert_uint_le(st.packets_dropped + st.socket_drops, w.target + 100);

  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", 20000, 61, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  ck_assert(x.ok);
  ck_assert_int_eq(cl.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* ---- Loop hand-off --------------------------------------------------- */

#define POSTS 100

typedef struct post_rec {
  pthread_t loop_thread;
  int runs[POSTS];
  int on_loop_thread;
  int in_order;
  int next;
  int post_errors;
} post_rec;

typedef struct post_arg {
  post_rec *rec;
  int index;
} post_arg;

static post_arg post_args[POSTS];

static void posted(qrpc_loop *l, void *arg) {
  post_arg *a = arg;
  post_rec *r = a->rec;
  r->runs[a->index]++;
  if (pthread_equal(pthread_self(), r->loop_thread) && l == loop)
    r->on_loop_thread++;
  if (a->index == r->next) r->in_order++;
  r->next = a->index + 1;
}

static void *poster(void *arg) {
  post_rec *r = arg;
  int i;
  for (i = 0; i < POSTS; i++)
    if (qrpc_loop_post(loop, posted, &post_args[i]) != 0) r->post_errors++;
  return NULL;
}

START_TEST(test_loop_post_from_thread) {
  post_rec r;
  pthread_t th;
  int i, done = 0;

  memset(&r, 0, sizeof(r));
  r.loop_thread = pthread_self();
  for (i = 0; i < POSTS; i++) {
    post_args[i].rec = &r;
    post_args[i].index = i;
  }
  ck_assert_int_eq(pthread_create(&th, NULL, poster, &r), 0);
  ck_assert_int_eq(pthread_join(th, NULL), 0);
  ck_assert_int_eq(r.post_errors, 0);
  ck_assert(qt_run_until_count(loop, &r.next, POSTS, QT_WAIT_MS));
  qt_run_for(loop, 100);
  for (i = 0; i < POSTS; i++) done += r.runs[i] == 1;
  ck_assert_int_eq(done, POSTS);
  ck_assert_int_eq(r.on_loop_thread, POSTS);
  ck_assert_int_eq(r.in_order, POSTS);
}
END_TEST

static void count_run(qrpc_loop *l, void *arg) { ++*(int *)arg; }

START_TEST(test_loop_post_dropped_by_free) {
  qrpc_loop *other = NULL;
  int runs = 0;

  ck_assert_int_eq(qrpc_loop_new(NULL, &other), 0);
  ck_assert_int_eq(qrpc_loop_post(other, count_run, &runs), 0);
  qrpc_loop_free(other);
  ck_assert_int_eq(runs, 0);
  ck_assert_int_eq(qrpc_loop_post(NULL, count_run, &runs), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_loop_post(loop, NULL, &runs), QRPC_EINVAL);
}
END_TEST

/* ---- Diagnostics ----------------------------------------------------- */

static void assert_stats_after_traffic(qrpc_conn *c, uint64_t min_sent,
                                       uint64_t min_recv) {
  qrpc_conn_stats st;
  qrpc_conn_get_stats(c, &st);
  ck_assert_uint_ge(st.bytes_sent, min_sent);
  ck_assert_uint_ge(st.bytes_recv, min_recv);
  ck_assert_uint_gt(st.pkts_sent, 0);
  ck_assert_uint_gt(st.pkts_recv, 0);
  ck_assert_uint_gt(st.smoothed_rtt_ns, 0);
  ck_assert_uint_lt(st.smoothed_rtt_ns, UINT64_C(1000000000));
  ck_assert_uint_gt(st.min_rtt_ns, 0);
  ck_assert_uint_le(st.min_rtt_ns, st.latest_rtt_ns);
  ck_assert_uint_gt(st.cwnd, 0);
}

START_TEST(test_conn_stats) {
  const uint64_t total = 100000;
  qt_server srv;
  qt_client cl;
  qt_xfer x;

  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", total, 70, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  ck_assert(x.ok);
  assert_stats_after_traffic(cl.conn, total, total);
  assert_stats_after_traffic(srv.last_conn, total, total);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

static char *read_text(const char *path) {
  FILE *f = fopen(path, "rb");
  char *buf = NULL;
  long n;
  if (!f) return NULL;
  if (fseek(f, 0, SEEK_END) == 0 && (n = ftell(f)) >= 0 &&
      fseek(f, 0, SEEK_SET) == 0 && (buf = malloc((size_t)n + 1)) != NULL) {
    size_t got = fread(buf, 1, (size_t)n, f);
    buf[got] = '\0';
  }
  fclose(f);
  return buf;
}

/* GnuTLS reads SSLKEYLOGFILE once per process, at its first handshake:
 * this relies on Check running each test in its own process (the
 * default). */
START_TEST(test_sslkeylogfile) {
  char dir[256], path[320];
  qt_server srv;
  qt_client cl;
  char *text;

  ck_assert_int_eq(qt_tmpdir_make(dir, sizeof(dir)), 0);
  snprintf(path, sizeof(path), "%s/keys.log", dir);
  ck_assert_int_eq(setenv("SSLKEYLOGFILE", path, 1), 0);
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, NULL), 0);
  qt_close_all(loop, &srv, &cl, 1);
  unsetenv("SSLKEYLOGFILE");

  text = read_text(path);
  qt_tmpdir_remove(dir);
  ck_assert_msg(text != NULL, "no key log file was written");
  ck_assert_ptr_nonnull(strstr(text, "CLIENT_HANDSHAKE_TRAFFIC_SECRET "));
  ck_assert_ptr_nonnull(strstr(text, "CLIENT_TRAFFIC_SECRET_0 "));
  free(text);
}
END_TEST

/* Size of the first "*.sqlog" file in dir, or -1 if there is none. */
static long sqlog_size(const char *dir) {
  struct dirent *e;
  long size = -1;
  DIR *d = opendir(dir);
  if (!d) return -1;
  while (size < 0 && (e = readdir(d)) != NULL) {
    size_t n = strlen(e->d_name);
    char path[600];
    struct stat sb;
    if (n <= 6 || strcmp(e->d_name + n - 6, ".sqlog") != 0) continue;
    snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
    if (stat(path, &sb) == 0) size = (long)sb.st_size;
  }
  closedir(d);
  return size;
}

START_TEST(test_qlog_dir) {
  char dir[256];
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qrpc_conn_opts copts;
  long size;

  ck_assert_int_eq(qt_tmpdir_make(dir, sizeof(dir)), 0);
  qrpc_conn_opts_default(&copts);
  copts.qlog_dir = dir;
  ck_assert_int_eq(qt_pair_start(loop, &certs, &srv, NULL, &cl, &copts), 0);
  ck_assert_int_eq(qt_xfer_start(&x, cl.conn, "echo", 1000, 80, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &x.closes, 1, QT_WAIT_MS));
  /* Released connections have flushed and closed their qlog. */
  qt_close_all(loop, &srv, &cl, 1);
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
  size = sqlog_size(dir);
  qt_tmpdir_remove(dir);
  ck_assert_msg(size > 0, "no non-empty .sqlog file (size %ld)", size);
}
END_TEST

static Suite *lifecycle_suite(void) {
  Suite *s = suite_create("quic_lifecycle");
  TCase *tc = tcase_create("lifecycle");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_idle_timeout);
  tcase_add_test(tc, test_close_with_app_code);
  tcase_add_test(tc, test_close_orderly_and_long_reason);
  tcase_add_test(tc, test_close_before_established);
  tcase_add_test(tc, test_close_inside_callback);
  tcase_add_test(tc, test_shutdown_waits_for_data);
  tcase_add_test(tc, test_shutdown_timeout);
  tcase_add_test(tc, test_endpoint_freed_with_clients);
  tcase_add_test(tc, test_loop_free_while_closing);
  tcase_add_test(tc, test_sequential_connections_no_leak);
  tcase_add_test(tc, test_max_connections);
  tcase_add_test(tc, test_version_negotiation);
  tcase_add_test(tc, test_stateless_retry);
  tcase_add_test(tc, test_garbage_dropped);
  tcase_add_test(tc, test_socket_drops_counted);
  tcase_add_test(tc, test_loop_post_from_thread);
  tcase_add_test(tc, test_loop_post_dropped_by_free);
  tcase_add_test(tc, test_conn_stats);
  tcase_add_test(tc, test_sslkeylogfile);
  tcase_add_test(tc, test_qlog_dir);
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
