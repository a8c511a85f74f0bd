/*
 * A server that restarts, or a peer that vanishes, over loopback UDP:
 * stateless resets from a restarted endpoint with the same server key,
 * resets with a wrong token ignored, the reset rate limit and sizes under
 * a flood of unknown connection IDs, dead-peer detection on clients and
 * keepalive PINGs that free a server's connection to a vanished client.
 *
 * Bounds here are generous ceilings that catch a hang or a fall-back to
 * the 30 s idle timeout, never measurements of speed.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"

static qt_certs certs;
static qrpc_loop *loop;

/* Far below the 30 s idle timeout a dead connection would otherwise take,
 * far above what loopback needs. */
#define RECOVERY_BOUND_MS (8000 * qt_wait_scale())

static void setup(void) {
  ck_assert_int_eq(qt_certs_generate(&certs), 0);
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
}

static void teardown(void) {
  qrpc_loop_free(loop);
  loop = NULL;
  qt_certs_free(&certs);
}

/* A server config with the test certificate and, if key is not NULL,
 * that server key. */
static qrpc_tls_config *server_tls(const uint8_t *key) {
  qrpc_tls_config *t = qt_server_tls(&certs);
  ck_assert_ptr_nonnull(t);
  if (key)
    ck_assert_int_eq(
        qrpc_tls_config_set_server_key(t, key, QRPC_SERVER_KEY_LEN), 0);
  return t;
}

static const uint8_t key_a[QRPC_SERVER_KEY_LEN] = {
    1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15, 16,
    17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32};

static int client_closed(void *arg) { return ((qt_client *)arg)->closed > 0; }

/* Starts a server on bind with key (NULL: a random one) and connects a
 * client with copts. */
static void start_pair(qt_server *srv, const char *bind, const uint8_t *key,
                       const qrpc_endpoint_opts *sopts, qt_client *cl,
                       const qrpc_conn_opts *copts) {
  qrpc_tls_config *stls = server_tls(key);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qt_server_start(srv, loop, bind, stls, sopts), 0);
  ck_assert_int_eq(qt_client_connect_wait(cl, loop, srv, ctls, copts), 0);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
}

/* Kills srv as SIGKILL would and starts a new endpoint on the same
 * address with key (NULL: a random one). */
static void restart(qt_server *srv, qt_server *next, const uint8_t *key,
                    const qrpc_endpoint_opts *sopts) {
  char bind[64];
  snprintf(bind, sizeof(bind), "127.0.0.1:%u", (unsigned)srv->port);
  qrpci_endpoint_vanish(srv->ep);
  srv->ep = NULL;
  qrpc_tls_config *stls = server_tls(key);
  ck_assert_int_eq(qt_server_start(next, loop, bind, stls, sopts), 0);
  qrpc_tls_config_free(stls);
}

/* Something ack-eliciting from the client: a stream with a few bytes. */
static void poke(qt_client *cl, qt_xfer *x) {
  memset(x, 0, sizeof(*x));
  ck_assert_int_eq(qt_xfer_start(x, cl->conn, "echo", 100, 7, 0, NULL), 0);
}

START_TEST(test_restart_with_key) {
  qt_server srv, next;
  qt_client cl;
  qt_xfer x;
  qrpc_conn_opts copts;
  qrpc_endpoint_stats st;

  qrpc_conn_opts_default(&copts);
  copts.dead_peer_timeout_ms = 0; /* only the reset may close it */
  start_pair(&srv, "127.0.0.1:0", key_a, NULL, &cl, &copts);
  restart(&srv, &next, key_a, NULL);
  uint64_t t0 = qt_now_ms();
  poke(&cl, &x);
  ck_assert(qt_run_until(loop, client_closed, &cl, RECOVERY_BOUND_MS));
  uint64_t took = qt_now_ms() - t0;
  ck_assert_int_eq(cl.close.kind, QRPC_CLOSE_RESET);
  ck_assert_int_eq(cl.close.error, QRPC_ECONNRESET);
  ck_assert_int_eq(cl.close.local, 0);
  ck_assert(strstr(cl.close.reason, "stateless reset") != NULL);
  qrpc_endpoint_get_stats(next.ep, &st);
  ck_assert_uint_ge(st.stateless_resets_sent, 1);
  ck_assert_uint_eq(st.stateless_resets_limited, 0);
  fprintf(stderr, "restart with a key: reset after %llu ms\n",
          (unsigned long long)took);

  /* The restarted server takes a new connection. */
  qt_client cl2;
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  ck_assert_int_eq(qt_client_connect_wait(&cl2, loop, &next, ctls, NULL), 0);
  qrpc_tls_config_free(ctls);
  qt_close_all(loop, &next, &cl2, 1);
}
END_TEST

/* Without the same key the new server's resets carry tokens the client
 * never got: they are ignored, and dead-peer detection ends the
 * connection instead. */
START_TEST(test_restart_without_key) {
  qt_server srv, next;
  qt_client cl;
  qt_xfer x;
  qrpc_endpoint_stats st;

  start_pair(&srv, "127.0.0.1:0", NULL, NULL, &cl, NULL);
  restart(&srv, &next, NULL, NULL);
  poke(&cl, &x);
  ck_assert(qt_run_until(loop, client_closed, &cl, RECOVERY_BOUND_MS));
  ck_assert_int_eq(cl.close.kind, QRPC_CLOSE_DEAD_PEER);
  ck_assert_int_eq(cl.close.error, QRPC_EDEADPEER);
  ck_assert_int_eq(cl.close.local, 1);
  qrpc_endpoint_get_stats(next.ep, &st);
  ck_assert_uint_ge(st.stateless_resets_sent, 1);
  qt_close_all(loop, &next, NULL, 0);
}
END_TEST

START_TEST(test_wrong_token_ignored) {
  qt_server srv, next;
  qt_client cl;
  qt_xfer x;
  qrpc_conn_opts copts;
  qrpc_endpoint_stats st;
  static const uint8_t key_b[QRPC_SERVER_KEY_LEN] = {99};

  qrpc_conn_opts_default(&copts);
  copts.dead_peer_timeout_ms = 0;
  start_pair(&srv, "127.0.0.1:0", key_a, NULL, &cl, &copts);
  restart(&srv, &next, key_b, NULL);
  poke(&cl, &x);
  /* The client retransmits on its probe timer; every packet draws a
   * reset with key_b's token. */
  qt_run_for(loop, 1500);
  qrpc_endpoint_get_stats(next.ep, &st);
  ck_assert_uint_ge(st.stateless_resets_sent, 2);
  ck_assert_int_eq(cl.closed, 0);
  ck_assert(qrpc_conn_is_established(cl.conn));
  qt_close_all(loop, &next, &cl, 1);
}
END_TEST

/* ---- A flood of packets for unknown connection IDs ------------------- */

typedef struct flood {
  int fd;
  int replies;
  size_t max_reply;
  int bad_form; /* a reply that is not a short-header packet */
} flood;

static void flood_drain(flood *f) {
  uint8_t buf[2048];
  ssize_t n;
  while ((n = recv(f->fd, buf, sizeof(buf), 0)) > 0) {
    f->replies++;
    if ((size_t)n > f->max_reply) f->max_reply = (size_t)n;
    if ((buf[0] & 0xc0) != 0x40) f->bad_form++;
  }
}

/* Sends count packets of len bytes with random 16-byte DCIDs. */
static void flood_send(flood *f, uint16_t port, size_t len, int count) {
  uint8_t pkt[1200];
  for (int i = 0; i < count; i++) {
    for (size_t j = 0; j < len; j++) pkt[j] = (uint8_t)rand();
    pkt[0] = (uint8_t)(0x40 | (pkt[0] & 0x3f)); /* short header */
    ck_assert_int_eq(qt_udp_send_v4(f->fd, port, pkt, len), 0);
    if (i % 16 == 0) {
      qt_run_for(loop, 1);
      flood_drain(f);
    }
  }
  qt_run_for(loop, 200);
  flood_drain(f);
}

START_TEST(test_reset_flood) {
  qt_server srv;
  qrpc_endpoint_opts sopts;
  qrpc_endpoint_stats st;
  flood f = {0};
  const uint64_t rate = 20;

  qrpc_endpoint_opts_default(&sopts);
  sopts.stateless_resets_per_s = (uint32_t)rate;
  qrpc_tls_config *stls = server_tls(key_a);
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, &sopts), 0);
  qrpc_tls_config_free(stls);
  f.fd = qt_udp_socket_v4();
  ck_assert_int_ge(f.fd, 0);

  /* Too small to be a packet of ours (under 37 bytes): never answered. */
  flood_send(&f, srv.port, 36, 50);
  ck_assert_int_eq(f.replies, 0);

  /* Just large enough: each reset one byte shorter than its trigger. */
  uint64_t t0 = qt_now_ms();
  flood_send(&f, srv.port, 37, 300);
  ck_assert_int_ge(f.replies, 1);
  ck_assert_uint_le(f.max_reply, 36);
  int small = f.replies;

  /* Large triggers: resets stay small (43 bytes at most). */
  f.max_reply = 0;
  flood_send(&f, srv.port, 1200, 300);
  ck_assert_uint_le(f.max_reply, 43);
  uint64_t secs = (qt_now_ms() - t0) / 1000 + 1;
  ck_assert_int_eq(f.bad_form, 0);

  /* At most one second's burst plus the refill over the flood. */
  ck_assert_uint_le((uint64_t)f.replies, rate + rate * secs);
  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_eq(st.stateless_resets_sent, (uint64_t)f.replies);
  ck_assert_uint_eq(st.stateless_resets_sent + st.stateless_resets_limited,
                    600);
  ck_assert_uint_ge(st.stateless_resets_limited, 600 - (rate + rate * secs));
  fprintf(stderr,
          "flood: %d resets (%d to 37-byte triggers) for 600 "
          "packets in about %llu s\n",
          f.replies, small, (unsigned long long)secs);
  close(f.fd);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

START_TEST(test_resets_off) {
  qt_server srv;
  qrpc_endpoint_opts sopts;
  qrpc_endpoint_stats st;
  flood f = {0};

  qrpc_endpoint_opts_default(&sopts);
  sopts.stateless_resets_per_s = 0;
  qrpc_tls_config *stls = server_tls(NULL);
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, &sopts), 0);
  qrpc_tls_config_free(stls);
  f.fd = qt_udp_socket_v4();
  ck_assert_int_ge(f.fd, 0);
  flood_send(&f, srv.port, 100, 20);
  ck_assert_int_eq(f.replies, 0);
  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_eq(st.stateless_resets_sent, 0);
  close(f.fd);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

/* ---- Keepalive and dead peers ---------------------------------------- */

/* A client with keepalive PINGs learns that its idle server died, with no
 * call of its own. */
START_TEST(test_client_keepalive_finds_dead_server) {
  qt_server srv;
  qt_client cl;
  qrpc_conn_opts copts;

  qrpc_conn_opts_default(&copts);
  copts.keepalive_ms = 200;
  start_pair(&srv, "127.0.0.1:0", NULL, NULL, &cl, &copts);
  qrpci_endpoint_vanish(srv.ep);
  srv.ep = NULL;
  ck_assert(qt_run_until(loop, client_closed, &cl, RECOVERY_BOUND_MS));
  ck_assert_int_eq(cl.close.kind, QRPC_CLOSE_DEAD_PEER);
  qt_close_all(loop, NULL, NULL, 0);
}
END_TEST

/* Without keepalive, an idle connection to a dead server stays up: only
 * unanswered packets count. */
START_TEST(test_idle_not_dead) {
  qt_server srv;
  qt_client cl;

  start_pair(&srv, "127.0.0.1:0", NULL, NULL, &cl, NULL);
  qt_run_for(loop, 1500);
  ck_assert_int_eq(cl.closed, 0);
  ck_assert_int_eq(srv.closed, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

/* Runs the server's loop and the client's, in turns, for ms. */
static void run_both(qrpc_loop *cloop, uint64_t ms) {
  uint64_t end = qt_now_ms() + ms;
  while (qt_now_ms() < end) {
    qrpc_loop_run_for(loop, 5);
    qrpc_loop_run_for(cloop, 5);
  }
}

#define NS_PER_MS 1000000u

/* Attempts at arranging the stall below before the test gives up. */
#define STALL_TRIES 5

typedef struct busy_arg {
  qrpc_loop *loop;
  uint64_t until; /* qrpc_loop_now_ns() time */
} busy_arg;

/* Keeps the loop's thread busy until the time in ud, a busy_arg. */
static void busy_until(qrpc_timer *t, void *ud) {
  const busy_arg *b = ud;
  uint64_t until = b->until;
  uint64_t now = qrpc_loop_now_ns(b->loop);
  (void)t;
  if (until > now) {
    struct timespec ts = {(time_t)((until - now) / 1000000000u),
                          (long)((until - now) % 1000000000u)};
    nanosleep(&ts, NULL);
  }
}

/* A client whose loop stalls past its dead-peer deadline while the
 * server's answers arrive reads them before it decides: the server is
 * alive, and the connection stays up. The stall is arranged so that the
 * connection's timer is left due when qrpc_loop_run_for() returns (a busy
 * callback delays the turn in which both the run's own timer and the
 * connection's come due, and the run's, due first, ends the run): the
 * next run starts with that timer, before the socket is looked at. */
START_TEST(test_stalled_client_reads_before_deciding) {
  qt_server srv;
  qt_client cl;
  qt_xfer x;
  qrpc_loop *cloop;
  qrpc_conn_opts copts;
  qrpc_timer *busy;

  ck_assert_int_eq(qrpc_loop_new(NULL, &cloop), 0);
  qrpc_tls_config *stls = server_tls(NULL);
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(ctls);
  ck_assert_int_eq(qt_server_start(&srv, loop, "127.0.0.1:0", stls, NULL), 0);
  qrpc_conn_opts_default(&copts);
  copts.dead_peer_timeout_ms = 200;
  ck_assert_int_eq(qt_client_connect(&cl, cloop, srv.addr, NULL, ctls, &copts),
                   0);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
  uint64_t end = qt_now_ms() + QT_WAIT_MS;
  while (!(cl.established && srv.established) && !cl.closed &&
         qt_now_ms() < end)
    run_both(cloop, 10);
  ck_assert(cl.established && srv.established);
  run_both(cloop, 100);

  /* The client sends, the server does not run yet: the client's timer
   * is armed (a PTO or the ACK delay, tens of ms on loopback). On a loaded
   * machine this thread can be descheduled past that timer before the
   * stall is arranged; the stream is then let finish and the arrangement
   * is tried again. */
  uint64_t now = 0, due = 0;
  int tries;
  for (tries = 0; tries < STALL_TRIES; tries++) {
    poke(&cl, &x);
    qrpc_loop_run_for(cloop, 1);
    ck_assert_uint_gt(x.sent, 0);
    now = qrpc_loop_now_ns(cloop);
    due = qrpci_conn_timer_due(cl.conn);
    if (due > now + 4 * NS_PER_MS) break;
    end = qt_now_ms() + QT_WAIT_MS;
    while (x.fins == 0 && qt_now_ms() < end) run_both(cloop, 10);
    ck_assert_int_eq(x.fins, 1);
  }
  ck_assert_msg(tries < STALL_TRIES,
                "the client's timer came due before it could be read, "
                "%d times",
                STALL_TRIES);
  ck_assert_uint_lt(due, now + 1000 * NS_PER_MS);
  busy_arg b = {cloop, due + 2 * NS_PER_MS};
  ck_assert_int_eq(qrpc_timer_new(cloop, busy_until, &b, &busy), 0);
  ck_assert_int_eq(qrpc_timer_start(busy, 0, 0), 0);
  qrpc_loop_run_for(cloop, (due - now) / NS_PER_MS / 2);
  qrpc_timer_free(busy);

  /* Only the server runs, well past the client's dead-peer deadline
   * (200 ms, or three PTOs), and answers. */
  qrpc_loop_run_for(loop, 1500);

  /* The client runs again: what waits in its socket is read first. */
  run_both(cloop, 300);
  ck_assert_msg(cl.closed == 0, "closed: %s", cl.close.reason);
  end = qt_now_ms() + QT_WAIT_MS;
  while (x.fins == 0 && qt_now_ms() < end) run_both(cloop, 10);
  ck_assert_int_eq(x.fins, 1);
  ck_assert_uint_eq(x.recvd, x.len);
  ck_assert_int_eq(x.mismatch, 0);

  qt_client_close(&cl);
  end = qt_now_ms() + QT_WAIT_MS;
  while (cl.closed == 0 && qt_now_ms() < end) run_both(cloop, 10);
  qrpc_loop_free(cloop);
  qt_close_all(loop, &srv, NULL, 0);
}
END_TEST

static int server_closed(void *arg) { return ((qt_server *)arg)->closed > 0; }

START_TEST(test_server_frees_vanished_client) {
  qt_server srv;
  qt_client cl;
  qrpc_endpoint_opts sopts;
  qrpc_endpoint_stats st;

  qrpc_endpoint_opts_default(&sopts);
  sopts.conn.keepalive_ms = 200;
  sopts.conn.dead_peer_timeout_ms = 300;
  start_pair(&srv, "127.0.0.1:0", NULL, &sopts, &cl, NULL);
  qrpci_conn_vanish(cl.conn);
  ck_assert(qt_run_until(loop, server_closed, &srv, RECOVERY_BOUND_MS));
  ck_assert_int_eq(srv.last_close.kind, QRPC_CLOSE_DEAD_PEER);
  ck_assert_int_eq(srv.last_close.error, QRPC_EDEADPEER);
  qrpc_endpoint_get_stats(srv.ep, &st);
  ck_assert_uint_eq(st.dead_peers, 1);
  ck_assert_uint_eq(st.connections, 0);
  qt_close_all(loop, &srv, &cl, 1);
}
END_TEST

START_TEST(test_opts_checked) {
  qrpc_conn_opts o;
  qrpc_conn *c = NULL;
  qrpc_tls_config *ctls = qt_client_tls(certs.ca_pem);
  qrpc_conn_opts_default(&o);
  ck_assert_uint_eq(o.dead_peer_timeout_ms, 1000);
  ck_assert_uint_eq(o.keepalive_ms, 0);
  o.dead_peer_timeout_ms = UINT64_MAX;
  ck_assert_int_eq(
      qrpc_conn_connect(loop, "127.0.0.1:1", NULL, ctls, &o, NULL, NULL, &c),
      QRPC_EINVAL);
  qrpc_conn_opts_default(&o);
  o.keepalive_ms = UINT64_MAX / 2;
  ck_assert_int_eq(
      qrpc_conn_connect(loop, "127.0.0.1:1", NULL, ctls, &o, NULL, NULL, &c),
      QRPC_EINVAL);
  /* An ACK may not wait as long as the max_ack_delay we announce. */
  qrpc_conn_opts_default(&o);
  ck_assert_uint_eq(o.ack_wait_ms, 12);
  o.ack_wait_ms = 21;
  ck_assert_int_eq(
      qrpc_conn_connect(loop, "127.0.0.1:1", NULL, ctls, &o, NULL, NULL, &c),
      QRPC_EINVAL);
  qrpc_tls_config_free(ctls);
  ck_assert_str_eq(qrpc_strerror(QRPC_ECONNRESET),
                   "connection reset by the peer");
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("quic_reset");
  TCase *tc = tcase_create("reset");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_restart_with_key);
  tcase_add_test(tc, test_restart_without_key);
  tcase_add_test(tc, test_wrong_token_ignored);
  tcase_add_test(tc, test_reset_flood);
  tcase_add_test(tc, test_resets_off);
  tcase_add_test(tc, test_client_keepalive_finds_dead_server);
  tcase_add_test(tc, test_idle_not_dead);
  tcase_add_test(tc, test_stalled_client_reads_before_deciding);
  tcase_add_test(tc, test_server_frees_vanished_client);
  tcase_add_test(tc, test_opts_checked);
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
