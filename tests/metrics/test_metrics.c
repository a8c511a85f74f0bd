/*
 * The metrics endpoint (qrpc/metrics.h) end to end: a server and a broker
 * carry real traffic over loopback UDP, a plain HTTP client in another
 * thread scrapes /metrics over loopback TCP, and the values are checked
 * against the traffic sent; promtool checks the format where installed.
 * Bad requests: other paths, other methods, oversized headers, idle
 * connections and more connections than the cap.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"
#include "rpc_harness.h"

#define M_ECHO 1
#define M_FAIL 7
#define CH_STATE 5
#define CH_UNKNOWN 99

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* ---- A plain HTTP client on its own thread ----------------------------- */

typedef struct http_req {
  uint16_t port;
  const char *data; /* sent as is */
  size_t len;
  int half_close; /* shut the sending side after the request */
  char *resp;     /* what came back before the server closed, NUL-terminated */
  size_t resp_len;
  int closed; /* the server closed the connection (EOF) */
  int reset;  /* the connection was reset */
  int done;
} http_req;

static int tcp_connect(uint16_t port) {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return -1;
  struct timeval tv = {10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(port)};
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0) {
    close(fd);
    return -1;
  }
  return fd;
}

/* Reads until EOF, an error or the 10 s receive timeout. */
static void read_all(int fd, http_req *r) {
  size_t cap = 1 << 16;
  r->resp = malloc(cap + 1);
  for (;;) {
    if (r->resp_len == cap) {
      cap *= 2;
      r->resp = realloc(r->resp, cap + 1);
    }
    ssize_t n = recv(fd, r->resp + r->resp_len, cap - r->resp_len, 0);
    if (n == 0) r->closed = 1;
    if (n < 0 && errno == ECONNRESET) r->reset = 1;
    if (n <= 0) break;
    r->resp_len += (size_t)n;
  }
  r->resp[r->resp_len] = '\0';
}

static void *http_thread(void *arg) {
  http_req *r = arg;
  int fd = tcp_connect(r->port);
  if (fd >= 0) {
    size_t off = 0;
    while (off < r->len) {
      ssize_t n = send(fd, r->data + off, r->len - off, MSG_NOSIGNAL);
      if (n <= 0) break;
      off += (size_t)n;
    }
    if (r->half_close) shutdown(fd, SHUT_WR);
    read_all(fd, r);
    close(fd);
  }
  __atomic_store_n(&r->done, 1, __ATOMIC_RELEASE);
  return NULL;
}

static int http_done(void *arg) {
  return __atomic_load_n(&((http_req *)arg)->done, __ATOMIC_ACQUIRE);
}

/* Sends data to the endpoint and returns the answer (the caller frees
 * r->resp), running the loop meanwhile. */
static void http_raw(http_req *r, uint16_t port, const char *data, size_t len) {
  memset(r, 0, sizeof(*r));
  r->port = port;
  r->data = data;
  r->len = len;
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, http_thread, r), 0);
  int ok = qt_run_until(loop, http_done, r, 3 * QT_WAIT_MS);
  pthread_join(t, NULL);
  ck_assert_msg(ok, "the HTTP exchange did not finish");
  ck_assert_ptr_nonnull(r->resp);
}

static char *scrape(uint16_t port) {
  static const char get[] =
      "GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\n\r\n";
  http_req r;
  http_raw(&r, port, get, strlen(get));
  ck_assert_msg(strncmp(r.resp, "HTTP/1.1 200 ", 13) == 0, "answer: %.200s",
                r.resp);
  ck_assert_ptr_nonnull(
      strstr(r.resp, "Content-Type: text/plain; version=0.0.4"));
  char *body = strstr(r.resp, "\r\n\r\n");
  ck_assert_ptr_nonnull(body);
  char *copy = strdup(body + 4);
  free(r.resp);
  return copy;
}

/* The value of series (name and labels exactly as rendered), which must
 * be present once. */
static double value(const char *text, const char *series) {
  size_t n = strlen(series);
  const char *found = NULL;
  for (const char *p = text; p && *p;
       p = strchr(p, '\n') ? strchr(p, '\n') + 1 : NULL) {
    if (strncmp(p, series, n) == 0 && p[n] == ' ') {
      ck_assert_msg(!found, "%s appears twice", series);
      found = p + n + 1;
    }
  }
  ck_assert_msg(found != NULL, "%s is missing", series);
  return strtod(found, NULL);
}

/* Runs promtool check metrics on text where promtool is installed. */
static void promtool_check(const char *text) {
  if (system("command -v promtool >/dev/null 2>&1") != 0) {
    fprintf(stderr, "test_metrics: promtool is not installed; skipping the "
                    "format check (Debian package prometheus)\n");
    return;
  }
  char path[] = "/tmp/qrpc-metrics-XXXXXX";
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  size_t len = strlen(text);
  ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
  close(fd);
  char cmd[128];
  snprintf(cmd, sizeof(cmd), "promtool check metrics < %s", path);
  int rv = system(cmd);
  unlink(path);
  ck_assert_msg(rv == 0, "promtool check metrics failed:\n%s", text);
}

/* ---- Server traffic ---------------------------------------------------- */

static void fail_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                         void *ud) {
  (void)payload;
  (void)len;
  (*(int *)ud)++;
  qrpc_req_error(req, QRPC_STATUS_NOT_FOUND, "no such thing");
}

static void dgram_count(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                        const uint8_t *data, size_t len, void *ud) {
  (void)peer;
  (void)channel;
  (void)seq;
  (void)data;
  (void)len;
  (*(int *)ud)++;
}

typedef struct unknown_wait {
  qrpc_server *srv;
  uint64_t want;
} unknown_wait;

static int unknown_arrived(void *arg) {
  unknown_wait *w = arg;
  qrpc_dgram_stats ds;
  qrpc_server_dgram_stats(w->srv, &ds);
  return ds.dropped_unknown >= w->want;
}

#define ECHOES 40
#define FAILS 7
#define DGRAMS 20
#define UNKNOWN_DGRAMS 6

START_TEST(test_server_scrape) {
  qrpc_server *srv;
  char addr[64];
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &so, &srv,
                                       addr, sizeof(addr)),
                   0);
  int echoes = 0, fails = 0, dgrams = 0;
  ck_assert_int_eq(
      qrpc_server_register(srv, M_ECHO, QRPC_SHAPE_UNARY, qt_rpc_echo, &echoes),
      0);
  ck_assert_int_eq(
      qrpc_server_register(srv, M_FAIL, QRPC_SHAPE_UNARY, fail_handler, &fails),
      0);
  ck_assert_int_eq(
      qrpc_server_register_dgram(srv, CH_STATE, NULL, dgram_count, &dgrams), 0);
  qrpc_metrics *m;
  ck_assert_int_eq(qrpc_metrics_serve(loop, "127.0.0.1:0", NULL, &m), 0);
  ck_assert_uint_ne(qrpc_metrics_port(m), 0);
  ck_assert_int_eq(qrpc_metrics_add_server(m, srv), 0);
  ck_assert_int_eq(qrpc_metrics_add_server(m, srv), QRPC_ESTATE);
  ck_assert_int_eq(qrpc_metrics_name_method(m, M_ECHO, "test.Echo/Echo"), 0);
  ck_assert_int_eq(qrpc_metrics_name_method(m, M_FAIL, "bad\"name"),
                   QRPC_EINVAL);

  qt_rpc_client cl;
  ck_assert_int_eq(qt_rpc_client_start(&cl, loop, addr, ctls, NULL), 0);
  ck_assert(qt_rpc_client_wait_connects(&cl, 1, QT_WAIT_MS));

  qt_call_tally tally = {0};
  static qt_call_rec recs[ECHOES + FAILS];
  uint64_t payload_bytes = 0;
  for (int i = 0; i < ECHOES + FAILS; i++) {
    char msg[32];
    int n = snprintf(msg, sizeof(msg), "call %d", i);
    payload_bytes += (uint64_t)n;
    ck_assert_int_eq(qt_call_rec_start(&recs[i], &tally, cl.cli,
                                       i < ECHOES ? M_ECHO : M_FAIL, msg,
                                       (size_t)n, NULL),
                     0);
  }
  ck_assert(qt_run_until_count(loop, &tally.done, ECHOES + FAILS, QT_WAIT_MS));
  ck_assert_int_eq(tally.ok, ECHOES);
  ck_assert_int_eq(tally.by_status[QRPC_STATUS_NOT_FOUND], FAILS);

  qrpc_peer *peer = qrpc_client_peer(cl.cli);
  ck_assert_ptr_nonnull(peer);
  uint8_t d[16] = {1, 2, 3};
  for (int i = 0; i < DGRAMS; i++)
    ck_assert_int_eq(qrpc_peer_send_dgram(peer, CH_STATE, d, sizeof(d)), 0);
  for (int i = 0; i < UNKNOWN_DGRAMS; i++)
    ck_assert_int_eq(qrpc_peer_send_dgram(peer, CH_UNKNOWN, d, sizeof(d)), 0);
  /* Loopback does not lose them; the wait is bounded all the same. */
  ck_assert(qt_run_until_count(loop, &dgrams, DGRAMS, QT_WAIT_MS));
  unknown_wait uw = {srv, UNKNOWN_DGRAMS};
  ck_assert(qt_run_until(loop, unknown_arrived, &uw, QT_WAIT_MS));

  /* The client's counters before and after the scrape bound the server's
   * at the moment it rendered them. */
  qrpc_conn_stats before, after;
  qrpc_conn_get_stats(qrpc_peer_conn(peer), &before);
  char *text = scrape(qrpc_metrics_port(m));
  qrpc_conn_get_stats(qrpc_peer_conn(peer), &after);
  ck_assert_double_eq(
      value(text, "qrpc_calls_total{method=\"test.Echo/Echo\",code=\"OK\"}"),
      ECHOES);
  ck_assert_double_eq(
      value(text, "qrpc_calls_total{method=\"7\",code=\"NOT_FOUND\"}"), FAILS);
  ck_assert_ptr_null(strstr(text, "method=\"7\",code=\"OK\""));
  ck_assert_double_eq(
      value(text,
            "qrpc_call_duration_seconds_count{method=\"test.Echo/Echo\"}"),
      ECHOES);
  ck_assert_double_eq(
      value(text, "qrpc_call_duration_seconds_bucket{method=\"test.Echo/"
                  "Echo\",le=\"+Inf\"}"),
      ECHOES);
  ck_assert_double_eq(
      value(text, "qrpc_call_duration_seconds_count{method=\"7\"}"), FAILS);
  ck_assert(value(text, "qrpc_call_duration_seconds_sum{method=\"7\"}") > 0);
  ck_assert_double_eq(value(text, "qrpc_connections"), 1);
  ck_assert_double_eq(value(text, "qrpc_handshakes_total{result=\"ok\"}"), 1);
  ck_assert_double_eq(value(text, "qrpc_handshakes_total{result=\"failed\"}"),
                      0);
  /* A quiet loopback server drops nothing: the counter is there, at 0. */
  ck_assert_double_eq(value(text, "qrpc_socket_drops_total"), 0);
  ck_assert_double_eq(
      value(text, "qrpc_datagrams_dropped_total{reason=\"unknown_channel\"}"),
      UNKNOWN_DGRAMS);
  ck_assert_double_eq(
      value(text, "qrpc_datagrams_dropped_total{reason=\"stale\"}"), 0);
  ck_assert(value(text, "qrpc_datagrams_received_total") >=
            DGRAMS + UNKNOWN_DGRAMS);
  /* The server received at least the payloads and at most what the
   * client sent; it sent at least what the client had received. */
  double rx = value(text, "qrpc_received_bytes_total");
  ck_assert(rx >= (double)payload_bytes);
  ck_assert(rx <= (double)after.bytes_sent);
  ck_assert(value(text, "qrpc_received_packets_total") <=
            (double)after.pkts_sent);
  ck_assert(value(text, "qrpc_sent_bytes_total") >= (double)before.bytes_recv);
  ck_assert(value(text, "qrpc_sent_packets_total") >= (double)before.pkts_recv);
  promtool_check(text);
  free(text);

  /* After the client leaves the connection is gone from the gauge, and
   * its traffic stays in the counters. */
  double sent_before =
      value(text = scrape(qrpc_metrics_port(m)), "qrpc_sent_bytes_total");
  free(text);
  qt_rpc_client_free(&cl);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
  text = scrape(qrpc_metrics_port(m));
  ck_assert_double_eq(value(text, "qrpc_connections"), 0);
  ck_assert(value(text, "qrpc_sent_bytes_total") >= sent_before);
  free(text);

  qrpc_metrics_free(m);
  ck_assert(qt_rpc_close_all(loop, &srv, NULL, 0));
}
END_TEST

/* ---- Bad requests ------------------------------------------------------ */

#define WORKER_CLIENTS 16
#define WORKER_CALLS 2

/* A server on two workers: the scrape sums every worker's connections and
 * calls, not worker 0's alone. */
START_TEST(test_server_workers_scrape) {
  qrpc_server *srv;
  char addr[64];
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  so.workers = 2;
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &so, &srv,
                                       addr, sizeof(addr)),
                   0);
  ck_assert_int_eq(
      qrpc_server_register(srv, M_ECHO, QRPC_SHAPE_UNARY, qt_rpc_echo, NULL),
      0);
  qrpc_metrics *m;
  ck_assert_int_eq(qrpc_metrics_serve(loop, "127.0.0.1:0", NULL, &m), 0);
  ck_assert_int_eq(qrpc_metrics_add_server(m, srv), 0);
  static qt_rpc_client cl[WORKER_CLIENTS];
  static qt_call_rec recs[WORKER_CLIENTS * WORKER_CALLS];
  qt_call_tally tally = {0};
  for (int i = 0; i < WORKER_CLIENTS; i++)
    ck_assert_int_eq(qt_rpc_client_start(&cl[i], loop, addr, ctls, NULL), 0);
  for (int i = 0; i < WORKER_CLIENTS; i++)
    ck_assert(qt_rpc_client_wait_connects(&cl[i], 1, QT_WAIT_MS));
  for (int i = 0; i < WORKER_CLIENTS * WORKER_CALLS; i++)
    ck_assert_int_eq(qt_call_rec_start(&recs[i], &tally,
                                       cl[i % WORKER_CLIENTS].cli, M_ECHO, "w",
                                       1, NULL),
                     0);
  ck_assert(qt_run_until_count(loop, &tally.done, WORKER_CLIENTS * WORKER_CALLS,
                               QT_WAIT_MS));
  ck_assert_int_eq(tally.ok, WORKER_CLIENTS * WORKER_CALLS);
  /* Both workers serve some of the clients (all 16 on one: 2^-15). */
  qrpc_server_worker_stats per[2];
  ck_assert_int_eq(qrpc_server_get_stats(srv, NULL, per, 2), 0);
  ck_assert_uint_gt(per[0].peers_opened, 0);
  ck_assert_uint_gt(per[1].peers_opened, 0);
  char *text = scrape(qrpc_metrics_port(m));
  ck_assert_double_eq(value(text, "qrpc_calls_total{method=\"1\",code=\"OK\"}"),
                      WORKER_CLIENTS * WORKER_CALLS);
  ck_assert_double_eq(value(text, "qrpc_call_duration_seconds_count{method="
                                  "\"1\"}"),
                      WORKER_CLIENTS * WORKER_CALLS);
  ck_assert_double_eq(value(text, "qrpc_connections"), WORKER_CLIENTS);
  ck_assert_double_eq(value(text, "qrpc_handshakes_total{result=\"ok\"}"),
                      WORKER_CLIENTS);
  free(text);
  for (int i = 0; i < WORKER_CLIENTS; i++) qt_rpc_client_free(&cl[i]);
  qrpc_metrics_free(m);
  qrpc_server_free(srv);
  ck_assert(qt_run_until_released(loop, 4 * QT_WAIT_MS));
}
END_TEST

static int status_of(const http_req *r) {
  int code = 0;
  if (sscanf(r->resp, "HTTP/1.1 %d ", &code) != 1) return -1;
  return code;
}

START_TEST(test_bad_requests) {
  qrpc_metrics_opts o;
  qrpc_metrics_opts_default(&o);
  o.max_connections = 3;
  o.max_request_bytes = 1024;
  o.timeout_ms = 300;
  qrpc_metrics *m;
  ck_assert_int_eq(qrpc_metrics_serve(loop, "127.0.0.1:0", &o, &m), 0);
  uint16_t port = qrpc_metrics_port(m);
  http_req r;

  static const char other[] = "GET /other HTTP/1.1\r\n\r\n";
  http_raw(&r, port, other, strlen(other));
  ck_assert_int_eq(status_of(&r), 404);
  ck_assert(r.closed);
  free(r.resp);

  static const char prefix[] = "GET /metricsX HTTP/1.1\r\n\r\n";
  http_raw(&r, port, prefix, strlen(prefix));
  ck_assert_int_eq(status_of(&r), 404);
  free(r.resp);

  static const char post[] =
      "POST /metrics HTTP/1.1\r\nContent-Length: 3\r\n\r\nabc";
  http_raw(&r, port, post, strlen(post));
  ck_assert_int_eq(status_of(&r), 405);
  free(r.resp);

  static const char junk[] = "\x01\x02garbage\r\n\r\n";
  http_raw(&r, port, junk, strlen(junk));
  ck_assert_int_eq(status_of(&r), 400);
  free(r.resp);

  /* Headers past the limit, never ending. */
  size_t big_len = 4 * 1024;
  char *big = malloc(big_len);
  memcpy(big, "GET /metrics HTTP/1.1\r\nX: ", 26);
  memset(big + 26, 'a', big_len - 26);
  http_raw(&r, port, big, big_len);
  ck_assert_int_eq(status_of(&r), 431);
  free(r.resp);
  free(big);

  /* An idle connection is closed after the timeout, with no answer. */
  http_raw(&r, port, "", 0);
  ck_assert(r.closed);
  ck_assert_uint_eq(r.resp_len, 0);
  free(r.resp);

  /* A client that half-closes after its request still gets the answer. */
  static const char get_hc[] = "GET /metrics HTTP/1.1\r\n\r\n";
  memset(&r, 0, sizeof(r));
  r.port = port;
  r.data = get_hc;
  r.len = strlen(get_hc);
  r.half_close = 1;
  pthread_t t;
  ck_assert_int_eq(pthread_create(&t, NULL, http_thread, &r), 0);
  ck_assert(qt_run_until(loop, http_done, &r, 3 * QT_WAIT_MS));
  pthread_join(t, NULL);
  ck_assert_int_eq(status_of(&r), 200);
  ck_assert(r.closed);
  free(r.resp);

  /* HEAD: headers only; no server was added, so the body is empty. */
  static const char head[] = "HEAD /metrics HTTP/1.0\r\n\r\n";
  http_raw(&r, port, head, strlen(head));
  ck_assert_int_eq(status_of(&r), 200);
  free(r.resp);

  /* The cap: three idle connections are held, a fourth is closed at once
   * without an answer; once they are gone, scrapes work again. */
  int idle[3];
  for (int i = 0; i < 3; i++) ck_assert_int_ge(idle[i] = tcp_connect(port), 0);
  qt_run_for(loop, 50);
  static const char get[] = "GET /metrics HTTP/1.1\r\n\r\n";
  http_raw(&r, port, get, strlen(get));
  ck_assert(r.closed || r.reset);
  ck_assert_uint_eq(r.resp_len, 0);
  free(r.resp);
  for (int i = 0; i < 3; i++) close(idle[i]);
  qt_run_for(loop, 50);
  http_raw(&r, port, get, strlen(get));
  ck_assert_int_eq(status_of(&r), 200);
  free(r.resp);

  qrpc_metrics_opts bad = o;
  bad.max_connections = 0;
  qrpc_metrics *m2 = NULL;
  ck_assert_int_eq(qrpc_metrics_serve(loop, "127.0.0.1:0", &bad, &m2),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_metrics_serve(loop, "nonsense", NULL, &m2),
                   QRPC_EINVAL);
  char taken[32];
  snprintf(taken, sizeof(taken), "127.0.0.1:%u", (unsigned)port);
  ck_assert_int_eq(qrpc_metrics_serve(loop, taken, NULL, &m2), QRPC_EADDRINUSE);
  ck_assert_ptr_null(m2);
  qrpc_metrics_free(m);
}
END_TEST

/* ---- Broker ------------------------------------------------------------ */

typedef struct bsub_rec {
  int messages;
  int subscribed;
} bsub_rec;

static void on_msg(qrpc_broker_sub *sub, const qrpc_broker_msg *msg, void *ud) {
  (void)sub;
  (void)msg;
  ((bsub_rec *)ud)->messages++;
}

static void on_subscribed(qrpc_broker_sub *sub, uint64_t id, void *ud) {
  (void)sub;
  (void)id;
  ((bsub_rec *)ud)->subscribed++;
}

static void on_published(qrpc_broker_client *bc, int status,
                         uint32_t subscribers, const char *detail, void *ud) {
  (void)bc;
  (void)subscribers;
  (void)detail;
  if (status == 0) (*(int *)ud)++;
}

#define PUBLISHES 12

START_TEST(test_broker_scrape) {
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  qrpc_broker *b = NULL;
  char err[256];
  ck_assert_int_eq(
      qrpc_broker_new(loop, "127.0.0.1:0", stls, &bo, &b, err, sizeof(err)), 0);
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u",
           (unsigned)qrpc_server_port(qrpc_broker_server(b)));
  qrpc_metrics *m;
  ck_assert_int_eq(qrpc_metrics_serve(loop, "127.0.0.1:0", NULL, &m), 0);
  ck_assert_int_eq(qrpc_metrics_add_broker(m, b), 0);

  qrpc_broker_client_opts co;
  qrpc_broker_client_opts_default(&co);
  co.client.server_name = "localhost";
  qrpc_broker_client *bc;
  ck_assert_int_eq(qrpc_broker_client_new(loop, addr, ctls, &co, &bc), 0);
  bsub_rec rec = {0};
  qrpc_broker_sub_callbacks cbs = {.on_message = on_msg,
                                   .on_subscribed = on_subscribed};
  ck_assert_int_eq(qrpc_broker_subscribe(bc, "room.>", NULL, &cbs, &rec, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &rec.subscribed, 1, QT_WAIT_MS));
  int published = 0;
  for (int i = 0; i < PUBLISHES; i++)
    ck_assert_int_eq(qrpc_broker_publish(bc, i % 2 ? "room.a" : "other.b", "x",
                                         1, i == 1 ? QRPC_BROKER_RETAIN : 0,
                                         on_published, &published),
                     0);
  ck_assert(qt_run_until_count(loop, &published, PUBLISHES, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &rec.messages, PUBLISHES / 2, QT_WAIT_MS));

  char *text = scrape(qrpc_metrics_port(m));
  ck_assert_double_eq(value(text, "qrpc_broker_subscriptions"), 1);
  ck_assert_double_eq(value(text, "qrpc_broker_connections"), 1);
  ck_assert_double_eq(value(text, "qrpc_broker_published_total"), PUBLISHES);
  ck_assert_double_eq(value(text, "qrpc_broker_delivered_total"),
                      PUBLISHES / 2);
  ck_assert_double_eq(value(text, "qrpc_broker_retained_topics"), 1);
  ck_assert_double_eq(
      value(text, "qrpc_broker_dropped_total{policy=\"drop_oldest\"}"), 0);
  ck_assert_double_eq(
      value(text, "qrpc_broker_slow_consumer_disconnects_total"), 0);
  /* The broker's server is reported too, its calls by method. */
  ck_assert_double_eq(value(text, "qrpc_connections"), 1);
  ck_assert_double_eq(value(text, "qrpc_calls_total{method=\"qrpc.broker."
                                  "Broker/Publish\",code=\"OK\"}"),
                      PUBLISHES);
  /* The subscription is a call still open: it is counted when it ends. */
  ck_assert_ptr_null(strstr(text, "qrpc_calls_total{method=\"qrpc.broker."
                                  "Broker/Subscribe\""));
  promtool_check(text);
  free(text);

  qrpc_broker_client_free(bc);
  qrpc_metrics_free(m);
  qrpc_broker_free(b);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

int main(void) {
  Suite *s = suite_create("metrics");
  TCase *tc = tcase_create("metrics");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_server_scrape);
  tcase_add_test(tc, test_server_workers_scrape);
  tcase_add_test(tc, test_bad_requests);
  tcase_add_test(tc, test_broker_scrape);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
