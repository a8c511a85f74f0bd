/*
 * Client-side balancing over real loopback UDP: targets that list several
 * servers or name them in DNS (answered by a name server this test runs on
 * loopback with libevent's evdns server API), the pick_first, round_robin
 * and least_outstanding policies, failover when a server dies or sends
 * GOAWAY, and targets and policies that are wrong.
 */
#include <arpa/inet.h>
#include <check.h>
#include <event2/dns.h>
#include <event2/dns_struct.h>
#include <event2/util.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "rpc_harness.h"

#define M_ECHO 1  /* idempotent on every server */
#define M_WORK 2  /* echo or hold, depending on the server; idempotent */
#define M_PLAIN 3 /* echo or hold; not idempotent */
#define NSRV 3
#define MAX_BACKENDS 8

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* ---- Servers ---------------------------------------------------------- */

typedef struct srv {
  qrpc_server *srv;
  char addr[64];
  int served;      /* echo invocations */
  qt_holder *hold; /* M_WORK and M_PLAIN are held when set */
  int shut_down;   /* qrpc_server_shutdown()'s on_done ran */
  qrpc_health *health; /* the health service, when it serves one */
} srv;

/* Starts s on bind; M_WORK and M_PLAIN hold their requests when hold. */
static void srv_start(srv *s, const char *bind, int hold) {
  s->served = 0;
  s->shut_down = 0;
  if (hold && !s->hold) {
    s->hold = malloc(sizeof(*s->hold));
    ck_assert_ptr_nonnull(s->hold);
  }
  if (s->hold) qt_holder_init(s->hold);
  if (!hold) {
    free(s->hold);
    s->hold = NULL;
  }
  ck_assert_int_eq(qt_rpc_server_start(loop, bind, stls, NULL, &s->srv, s->addr,
                                       sizeof(s->addr)),
                   0);
  ck_assert_int_eq(qrpc_server_register_flags(s->srv, M_ECHO, QRPC_SHAPE_UNARY,
                                              QRPC_METHOD_IDEMPOTENT,
                                              qt_rpc_echo, &s->served),
                   0);
  qrpc_handler_fn fn = hold ? qt_holder_handler : qt_rpc_echo;
  void *ud = hold ? (void *)s->hold : (void *)&s->served;
  ck_assert_int_eq(qrpc_server_register_flags(s->srv, M_WORK, QRPC_SHAPE_UNARY,
                                              QRPC_METHOD_IDEMPOTENT, fn, ud),
                   0);
  ck_assert_int_eq(
      qrpc_server_register(s->srv, M_PLAIN, QRPC_SHAPE_UNARY, fn, ud), 0);
}

/* Adds the health service to s, "" SERVING. */
static void srv_add_health(srv *s) {
  ck_assert_int_eq(qrpc_health_new(s->srv, &s->health), 0);
}

static void srv_stop(srv *s) {
  qrpc_server_free(s->srv);
  s->srv = NULL;
  qrpc_health_free(s->health); /* after its server */
  s->health = NULL;
}

static void srv_free(srv *s) {
  if (s->srv) srv_stop(s);
  free(s->hold);
  s->hold = NULL;
}

/* "a,b,c" of the servers' addresses. */
static void target_of(char *out, size_t cap, srv *v, int n) {
  out[0] = 0;
  for (int i = 0; i < n; i++) {
    size_t len = strlen(out);
    snprintf(out + len, cap - len, "%s%s", i ? "," : "", v[i].addr);
  }
}

/* ---- Client ----------------------------------------------------------- */

typedef struct states {
  int ready;
  int failed;
  int resolve_failed;     /* FAILED without a backend: the name */
  int null_backend_other; /* a transition without a backend that is not one */
} states;

static void on_state(qrpc_client *cli, const qrpc_client_state_info *info,
                     void *ud) {
  (void)cli;
  states *s = ud;
  if (!info->backend) {
    if (info->state == QRPC_CLIENT_FAILED && info->error == QRPC_ERESOLVE)
      s->resolve_failed++;
    else
      s->null_backend_other++;
    return;
  }
  if (info->state == QRPC_CLIENT_READY) s->ready++;
  if (info->state == QRPC_CLIENT_FAILED) s->failed++;
}

/* A client of target with policy (NULL: the default) watching health's
 * service when health is not NULL. */
static qrpc_client *client_new_health(const char *target, const char *policy,
                                      const char *health, states *st) {
  qrpc_client_opts o;
  qrpc_client_opts_default(&o);
  o.backoff_initial_ms = 20;
  o.backoff_max_ms = 200;
  o.lb_policy = policy;
  o.health_service = health;
  o.on_state = on_state;
  o.user_data = st;
  memset(st, 0, sizeof(*st));
  qrpc_client *cli = NULL;
  ck_assert_int_eq(qrpc_client_new(loop, target, ctls, &o, &cli), 0);
  return cli;
}

static qrpc_client *client_new(const char *target, const char *policy,
                               states *st) {
  return client_new_health(target, policy, NULL, st);
}

typedef struct ready_wait {
  qrpc_client *cli;
  size_t n;     /* backends that take calls */
  size_t total; /* backends in all; 0: any */
} ready_wait;

static int ready_pred(void *arg) {
  ready_wait *w = arg;
  qrpc_backend_info info[MAX_BACKENDS];
  size_t n = qrpc_client_backends(w->cli, info, MAX_BACKENDS);
  size_t ready = 0;
  for (size_t i = 0; i < n && i < MAX_BACKENDS; i++)
    ready += info[i].takes_calls != 0;
  return ready == w->n && (w->total == 0 || n == w->total);
}

static int wait_ready(qrpc_client *cli, size_t n, size_t total) {
  ready_wait w = {cli, n, total};
  return qt_run_until(loop, ready_pred, &w, QT_WAIT_MS);
}

/* Starts n calls of method, recorded in r[0..n), and waits for them. */
static int run_calls(qrpc_client *cli, uint32_t method, int idempotent,
                     qt_call_rec *r, qt_call_tally *t, int n, int wait) {
  qrpc_call_opts o = qt_call_opts(QT_WAIT_MS, 0);
  o.idempotent = idempotent;
  for (int i = 0; i < n; i++) {
    char p[16];
    int len = snprintf(p, sizeof(p), "c%d", i);
    ck_assert_int_eq(
        qt_call_rec_start(&r[i], t, cli, method, p, (size_t)len, &o), 0);
  }
  if (!wait) return 1;
  int target = t->done + n;
  return qt_run_until_count(loop, &t->done, target, QT_WAIT_MS);
}

static void check_spread(const int *counts, int n, int total) {
  int want = total / n;
  for (int i = 0; i < n; i++)
    ck_assert_msg(counts[i] >= want - want / 10 &&
                      counts[i] <= want + want / 10,
                  "backend %d served %d of %d", i, counts[i], total);
}

/* ---- Targets and policies --------------------------------------------- */

START_TEST(test_round_robin_spread) {
  srv s[NSRV] = {0};
  for (int i = 0; i < NSRV; i++) srv_start(&s[i], "127.0.0.1:0", 0);
  char target[256];
  target_of(target, sizeof(target), s, NSRV);
  states st;
  qrpc_client *cli = client_new(target, NULL, &st); /* round_robin */
  ck_assert(wait_ready(cli, NSRV, NSRV));
  enum { ROUNDS = 10, BATCH = 30 };
  static qt_call_rec r[BATCH];
  qt_call_tally t = {0};
  for (int k = 0; k < ROUNDS; k++)
    ck_assert(run_calls(cli, M_ECHO, 1, r, &t, BATCH, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], ROUNDS * BATCH);
  int counts[NSRV];
  for (int i = 0; i < NSRV; i++) counts[i] = s[i].served;
  check_spread(counts, NSRV, ROUNDS * BATCH);
  /* The client counts the same. */
  qrpc_backend_info info[NSRV];
  ck_assert_uint_eq(qrpc_client_backends(cli, info, NSRV), NSRV);
  for (int i = 0; i < NSRV; i++) {
    ck_assert_str_eq(info[i].addr, s[i].addr);
    ck_assert_uint_eq(info[i].calls, (uint64_t)s[i].served);
    ck_assert_int_eq(info[i].state, QRPC_CLIENT_READY);
    ck_assert_uint_eq(info[i].in_flight, 0);
  }
  ck_assert_int_eq(st.ready, NSRV);
  /* The metrics endpoint reports the same, labelled by backend. */
  qrpc_metrics *m = NULL;
  ck_assert_int_eq(qrpc_metrics_serve(loop, "127.0.0.1:0", NULL, &m), 0);
  ck_assert_int_eq(qrpc_metrics_add_client(m, cli), 0);
  ck_assert_int_eq(qrpc_metrics_add_client(m, cli), QRPC_ESTATE);
  char *text = NULL;
  ck_assert_int_eq(qrpc_metrics_render(m, &text, NULL), 0);
  for (int i = 0; i < NSRV; i++) {
    char line[160];
    snprintf(line, sizeof(line),
             "qrpc_client_backend_calls_total{backend=\"%s\"} %d\n", s[i].addr,
             s[i].served);
    ck_assert_msg(strstr(text, line) != NULL, "%s not in\n%s", line, text);
    snprintf(line, sizeof(line), "qrpc_client_backend_up{backend=\"%s\"} 1\n",
             s[i].addr);
    ck_assert_msg(strstr(text, line) != NULL, "%s not in\n%s", line, text);
  }
  ck_assert_ptr_nonnull(strstr(text, "qrpc_client_resolve_failing 0\n"));
  free(text);
  qrpc_metrics_free(m);
  qrpc_client_free(cli);
  for (int i = 0; i < NSRV; i++) srv_free(&s[i]);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

START_TEST(test_pick_first) {
  srv s[2] = {0};
  for (int i = 0; i < 2; i++) srv_start(&s[i], "127.0.0.1:0", 0);
  char target[256];
  target_of(target, sizeof(target), s, 2);
  states st;
  qrpc_client *cli = client_new(target, "pick_first", &st);
  ck_assert(wait_ready(cli, 2, 2));
  static qt_call_rec r[40];
  qt_call_tally t = {0};
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 40, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 40);
  ck_assert_int_eq(s[0].served, 40);
  ck_assert_int_eq(s[1].served, 0);
  /* The first goes away: the second takes over. */
  srv_stop(&s[0]);
  ck_assert(wait_ready(cli, 1, 2));
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 40, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 80);
  ck_assert_int_eq(s[1].served, 40);
  qrpc_client_free(cli);
  for (int i = 0; i < 2; i++) srv_free(&s[i]);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* One server holds its calls: least_outstanding sends the rest to the
 * other. */
START_TEST(test_least_outstanding) {
  srv s[2] = {0};
  srv_start(&s[0], "127.0.0.1:0", 1);
  srv_start(&s[1], "127.0.0.1:0", 0);
  char target[256];
  target_of(target, sizeof(target), s, 2);
  states st;
  qrpc_client *cli = client_new(target, "least_outstanding", &st);
  ck_assert(wait_ready(cli, 2, 2));
  static qt_call_rec r[20];
  qt_call_tally t = {0};
  /* One at a time: the first may go to either; once one is held, the
   * others go to the server with none in flight. */
  int held_total = 0;
  for (int i = 0; i < 20; i++) {
    int before = t.done + s[0].hold->received;
    ck_assert(run_calls(cli, M_WORK, 1, &r[i], &t, 1, 0));
    int want = before + 1;
    int got = 0;
    uint64_t until = qt_now_ms() + QT_WAIT_MS;
    while (!got && qt_now_ms() < until) {
      qt_run_for(loop, 5);
      got = t.done + s[0].hold->received >= want;
    }
    ck_assert(got);
    held_total = s[0].hold->received;
  }
  ck_assert_int_le(held_total, 1);
  ck_assert_int_ge(s[1].served, 19);
  ck_assert_int_eq(qt_holder_reply_all(s[0].hold), held_total);
  ck_assert(qt_run_until_count(loop, &t.done, 20, QT_WAIT_MS));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 20);
  qrpc_client_free(cli);
  for (int i = 0; i < 2; i++) srv_free(&s[i]);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* No backend ready: calls wait within their deadline, fail-fast ones are
 * refused. */
START_TEST(test_none_ready) {
  qt_udp_sink a, b;
  ck_assert_int_eq(qt_udp_sink_open(&a, loop), 0);
  ck_assert_int_eq(qt_udp_sink_open(&b, loop), 0);
  char target[160];
  snprintf(target, sizeof(target), "%s,%s", a.addr, b.addr);
  qt_udp_sink_close(&a);
  qt_udp_sink_close(&b);
  states st;
  qrpc_client *cli = client_new(target, NULL, &st);
  qt_call_rec r;
  qrpc_call_opts o = qt_call_opts(0, 1);
  ck_assert_int_eq(qt_call_rec_start(&r, NULL, cli, M_ECHO, "x", 1, &o),
                   QRPC_ECLOSED);
  o = qt_call_opts(300, 0);
  uint64_t t0 = qt_now_ms();
  ck_assert_int_eq(qt_call_rec_start(&r, NULL, cli, M_ECHO, "x", 1, &o), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_uint_ge(qt_now_ms() - t0, 290);
  ck_assert_int_ge(st.failed, 2); /* both backends tried */
  qrpc_client_free(cli);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

START_TEST(test_bad_targets) {
  static const char *const bad[] = {
      "",
      ",",
      "127.0.0.1:1,",
      ",127.0.0.1:1",
      "127.0.0.1:1,,127.0.0.1:2",
      "127.0.0.1:1,nonsense",
      "127.0.0.1:1,127.0.0.1:99999",
      "127.0.0.1:1,[::1]",
      "dns:",
      "dns:name",
      "dns:name:port",
      "dns:a:b:1",
  };
  qrpc_client_opts o;
  qrpc_client_opts_default(&o);
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    qrpc_client *cli = NULL;
    ck_assert_msg(qrpc_client_target_problem(bad[i], NULL) != NULL, "%s",
                  bad[i]);
    ck_assert_msg(qrpc_client_new(loop, bad[i], ctls, &o, &cli) == QRPC_EINVAL,
                  "%s", bad[i]);
    ck_assert_ptr_null(cli);
  }
  ck_assert_ptr_null(
      qrpc_client_target_problem("127.0.0.1:1,[::1]:2,localhost:3", NULL));
  ck_assert_ptr_null(qrpc_client_target_problem("dns:localhost:443", NULL));
  ck_assert_ptr_null(
      qrpc_client_target_problem("127.0.0.1:1", "least_outstanding"));
  const char *why = qrpc_client_target_problem("127.0.0.1:1", "random");
  ck_assert_ptr_nonnull(why);
  ck_assert_ptr_nonnull(strstr(why, "policy"));
  why = qrpc_client_target_problem("127.0.0.1:1,", NULL);
  ck_assert_ptr_nonnull(strstr(why, "empty"));
  qrpc_client *cli = NULL;
  o.lb_policy = "random";
  ck_assert_int_eq(qrpc_client_new(loop, "127.0.0.1:1", ctls, &o, &cli),
                   QRPC_EINVAL);
  o.lb_policy = NULL;
  o.dns_refresh_ms = 0;
  ck_assert_int_eq(qrpc_client_new(loop, "dns:localhost:1", ctls, &o, &cli),
                   QRPC_EINVAL);
  ck_assert_ptr_null(cli);
  /* A caller built before the balancing options: its size is accepted. */
  qrpc_client_opts_default(&o);
  o.size = offsetof(qrpc_client_opts, lb_policy);
  ck_assert_int_eq(qrpc_client_new(loop, "127.0.0.1:1", ctls, &o, &cli), 0);
  qrpc_client_free(cli);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* ---- Failover --------------------------------------------------------- */

enum { LOAD = 60 };

/* Three servers, the first holding M_WORK and M_PLAIN; LOAD calls of
 * method over them, a third of them held by the first. */
typedef struct fleet {
  srv s[NSRV];
  qrpc_client *cli;
  states st;
  qt_call_rec r[2 * LOAD];
  qt_call_tally t;
} fleet;

static fleet *fleet_start(void) {
  fleet *f = calloc(1, sizeof(*f));
  ck_assert_ptr_nonnull(f);
  srv_start(&f->s[0], "127.0.0.1:0", 1);
  for (int i = 1; i < NSRV; i++) srv_start(&f->s[i], "127.0.0.1:0", 0);
  char target[256];
  target_of(target, sizeof(target), f->s, NSRV);
  f->cli = client_new(target, "round_robin", &f->st);
  ck_assert(wait_ready(f->cli, NSRV, NSRV));
  return f;
}

static void fleet_load(fleet *f, uint32_t method, int idempotent) {
  ck_assert(run_calls(f->cli, method, idempotent, f->r, &f->t, LOAD, 0));
  ck_assert(
      qt_run_until_count(loop, &f->t.done, LOAD - LOAD / NSRV, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &f->s[0].hold->received, LOAD / NSRV,
                               QT_WAIT_MS));
  ck_assert_int_eq(f->s[0].hold->held, LOAD / NSRV);
}

static void fleet_free(fleet *f) {
  qrpc_client_free(f->cli);
  for (int i = 0; i < NSRV; i++) srv_free(&f->s[i]);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
  free(f);
}

/* The server holding a third of the idempotent calls dies: they run again
 * on the others, and every call succeeds. It comes back on its port and
 * takes calls again. */
START_TEST(test_kill_idempotent) {
  fleet *f = fleet_start();
  fleet_load(f, M_WORK, 1);
  char bind[64];
  snprintf(bind, sizeof(bind), "%s", f->s[0].addr);
  srv_stop(&f->s[0]);
  ck_assert(qt_run_until_count(loop, &f->t.done, LOAD, QT_WAIT_MS));
  for (int i = 0; i < LOAD; i++)
    ck_assert_msg(f->r[i].status == QRPC_STATUS_OK, "call %d: %s %.*s", i,
                  qrpc_status_name(f->r[i].status), (int)f->r[i].detail_len,
                  f->r[i].detail);
  ck_assert_int_eq(f->s[1].served + f->s[2].served, LOAD);
  ck_assert_int_ge(f->st.failed, 1);
  /* Restart: it rejoins. */
  srv_start(&f->s[0], bind, 0);
  ck_assert(wait_ready(f->cli, NSRV, NSRV));
  ck_assert(run_calls(f->cli, M_WORK, 1, f->r, &f->t, LOAD, 1));
  ck_assert_int_eq(f->t.by_status[QRPC_STATUS_OK], 2 * LOAD);
  ck_assert_int_ge(f->s[0].served, LOAD / NSRV - LOAD / 30);
  fleet_free(f);
}
END_TEST

/* The same with calls that are not idempotent: those on the dead server
 * fail with UNAVAILABLE saying they may have run; none is lost. */
START_TEST(test_kill_not_idempotent) {
  fleet *f = fleet_start();
  fleet_load(f, M_PLAIN, 0);
  srv_stop(&f->s[0]);
  ck_assert(qt_run_until_count(loop, &f->t.done, LOAD, QT_WAIT_MS));
  ck_assert_int_eq(f->t.by_status[QRPC_STATUS_OK], LOAD - LOAD / NSRV);
  ck_assert_int_eq(f->t.by_status[QRPC_STATUS_UNAVAILABLE], LOAD / NSRV);
  int may_have_run = 0;
  for (int i = 0; i < LOAD; i++)
    if (f->r[i].status == QRPC_STATUS_UNAVAILABLE &&
        strstr(f->r[i].detail, "may have run"))
      may_have_run++;
  ck_assert_int_eq(may_have_run, LOAD / NSRV);
  /* New calls go to the survivors. */
  ck_assert(run_calls(f->cli, M_PLAIN, 0, f->r, &f->t, LOAD, 1));
  ck_assert_int_eq(f->t.by_status[QRPC_STATUS_OK], 2 * LOAD - LOAD / NSRV);
  fleet_free(f);
}
END_TEST

static void on_shutdown(qrpc_server *s, void *ud) {
  (void)s;
  ((srv *)ud)->shut_down = 1;
}

/* GOAWAY: the draining server finishes what it has, new calls go to the
 * others, and no call fails. */
START_TEST(test_goaway_drains) {
  fleet *f = fleet_start();
  fleet_load(f, M_PLAIN, 0);
  ck_assert_int_eq(
      qrpc_server_shutdown(f->s[0].srv, QT_WAIT_MS, on_shutdown, &f->s[0]), 0);
  /* More calls while it drains, sent at once: some may cross its GOAWAY,
   * which sends them elsewhere. */
  ck_assert(run_calls(f->cli, M_PLAIN, 0, f->r + LOAD, &f->t, LOAD, 0));
  ck_assert(
      qt_run_until_count(loop, &f->t.done, 2 * LOAD - LOAD / NSRV, QT_WAIT_MS));
  ck_assert_int_eq(f->s[0].hold->received, LOAD / NSRV);
  ck_assert_int_eq(qt_holder_reply_all(f->s[0].hold), LOAD / NSRV);
  ck_assert(qt_run_until_count(loop, &f->t.done, 2 * LOAD, QT_WAIT_MS));
  for (int i = 0; i < 2 * LOAD; i++)
    ck_assert_msg(f->r[i].status == QRPC_STATUS_OK, "call %d: %s %.*s", i,
                  qrpc_status_name(f->r[i].status), (int)f->r[i].detail_len,
                  f->r[i].detail);
  ck_assert(qt_run_until_count(loop, &f->s[0].shut_down, 1, QT_WAIT_MS));
  fleet_free(f);
}
END_TEST

/* ---- Health ----------------------------------------------------------- */

typedef struct health_wait {
  qrpc_client *cli;
  size_t i;
  int health;
} health_wait;

static int health_pred(void *arg) {
  health_wait *w = arg;
  qrpc_backend_info info[MAX_BACKENDS];
  size_t n = qrpc_client_backends(w->cli, info, MAX_BACKENDS);
  return w->i < n && info[w->i].health == w->health;
}

/* Waits until backend i of cli reports health. */
static int wait_health(qrpc_client *cli, size_t i, int health) {
  health_wait w = {cli, i, health};
  return qt_run_until(loop, health_pred, &w, QT_WAIT_MS);
}

/* A backend whose health service says NOT_SERVING leaves the rotation,
 * and comes back when it says SERVING again; the watches are not calls in
 * flight. */
START_TEST(test_health_rotation) {
  srv s[NSRV] = {0};
  for (int i = 0; i < NSRV; i++) {
    srv_start(&s[i], "127.0.0.1:0", 0);
    srv_add_health(&s[i]);
  }
  char target[256];
  target_of(target, sizeof(target), s, NSRV);
  states st;
  qrpc_client *cli = client_new_health(target, NULL, "", &st);
  ck_assert(wait_ready(cli, NSRV, NSRV));
  qrpc_backend_info info[NSRV];
  ck_assert_uint_eq(qrpc_client_backends(cli, info, NSRV), NSRV);
  for (int i = 0; i < NSRV; i++) {
    ck_assert_int_eq(info[i].health, QRPC_HEALTH_SERVING);
    ck_assert_uint_eq(info[i].in_flight, 0); /* the watch is not counted */
  }
  static qt_call_rec r[90];
  qt_call_tally t = {0};
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 90, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 90);
  ck_assert_int_gt(s[1].served, 0);
  /* Server 1 says it is not serving: no call goes to it. */
  ck_assert_int_eq(qrpc_health_set(s[1].health, "", QRPC_HEALTH_NOT_SERVING),
                   0);
  ck_assert(wait_health(cli, 1, QRPC_HEALTH_NOT_SERVING));
  ck_assert(wait_ready(cli, NSRV - 1, NSRV));
  int before = s[1].served;
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 90, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 180);
  ck_assert_int_eq(s[1].served, before);
  int counts[2] = {s[0].served, s[2].served};
  check_spread(counts, 2, 180 - before);
  /* Its connection stayed up all along. */
  ck_assert_int_eq(st.failed, 0);
  /* Serving again: back in rotation. */
  ck_assert_int_eq(qrpc_health_set(s[1].health, "", QRPC_HEALTH_SERVING), 0);
  ck_assert(wait_ready(cli, NSRV, NSRV));
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 90, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 270);
  ck_assert_int_ge(s[1].served, before + 30 - 3);
  /* Every server NOT_SERVING: calls wait within their deadline. */
  for (int i = 0; i < NSRV; i++)
    ck_assert_int_eq(qrpc_health_set(s[i].health, "", QRPC_HEALTH_NOT_SERVING),
                     0);
  ck_assert(wait_ready(cli, 0, NSRV));
  qrpc_call_opts o = qt_call_opts(200, 0);
  ck_assert_int_eq(qt_call_rec_start(&r[0], &t, cli, M_ECHO, "x", 1, &o), 0);
  ck_assert(qt_run_until_count(loop, &t.done, 271, QT_WAIT_MS));
  ck_assert_int_eq(r[0].status, QRPC_STATUS_DEADLINE_EXCEEDED);
  /* A call waiting when one comes back goes to it. */
  o = qt_call_opts(QT_WAIT_MS, 0);
  ck_assert_int_eq(qt_call_rec_start(&r[0], &t, cli, M_ECHO, "y", 1, &o), 0);
  qt_run_for(loop, 20);
  ck_assert_int_eq(t.done, 271);
  ck_assert_int_eq(qrpc_health_set(s[2].health, "", QRPC_HEALTH_SERVING), 0);
  ck_assert(qt_run_until_count(loop, &t.done, 272, QT_WAIT_MS));
  ck_assert_int_eq(r[0].status, QRPC_STATUS_OK);
  ck_assert_int_eq(st.failed, 0);
  qrpc_client_free(cli);
  for (int i = 0; i < NSRV; i++) srv_free(&s[i]);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* A named service: a server that never set it answers SERVICE_UNKNOWN
 * and is left out; a server without the health service is judged by its
 * connection alone. */
START_TEST(test_health_named_and_absent) {
  srv s[NSRV] = {0};
  for (int i = 0; i < NSRV; i++) srv_start(&s[i], "127.0.0.1:0", 0);
  srv_add_health(&s[0]);
  srv_add_health(&s[1]);
  ck_assert_int_eq(
      qrpc_health_set(s[0].health, "test.Echo", QRPC_HEALTH_SERVING), 0);
  char target[256];
  target_of(target, sizeof(target), s, NSRV);
  states st;
  qrpc_client *cli = client_new_health(target, NULL, "test.Echo", &st);
  ck_assert(wait_health(cli, 1, QRPC_HEALTH_SERVICE_UNKNOWN));
  ck_assert(wait_health(cli, 2, -1)); /* no health service */
  ck_assert(wait_ready(cli, 2, NSRV));
  qrpc_backend_info info[NSRV];
  ck_assert_uint_eq(qrpc_client_backends(cli, info, NSRV), NSRV);
  ck_assert_int_eq(info[0].health, QRPC_HEALTH_SERVING);
  ck_assert(info[0].takes_calls && !info[1].takes_calls && info[2].takes_calls);
  static qt_call_rec r[60];
  qt_call_tally t = {0};
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 60, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 60);
  ck_assert_int_eq(s[1].served, 0);
  int counts[2] = {s[0].served, s[2].served};
  check_spread(counts, 2, 60);
  /* The service appears on server 1: it joins. */
  ck_assert_int_eq(
      qrpc_health_set(s[1].health, "test.Echo", QRPC_HEALTH_SERVING), 0);
  ck_assert(wait_ready(cli, NSRV, NSRV));
  qrpc_client_free(cli);
  for (int i = 0; i < NSRV; i++) srv_free(&s[i]);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* A server shutting down gracefully: its health watch does not hold the
 * drain open, no call fails, and the calls go to the other server. A
 * client without a health service name takes no part in watching. */
START_TEST(test_health_goaway_drains) {
  srv s[2] = {0};
  for (int i = 0; i < 2; i++) {
    srv_start(&s[i], "127.0.0.1:0", 0);
    srv_add_health(&s[i]);
  }
  char target[256];
  target_of(target, sizeof(target), s, 2);
  states st;
  qrpc_client *cli = client_new_health(target, NULL, "", &st);
  ck_assert(wait_ready(cli, 2, 2));
  static qt_call_rec r[40];
  qt_call_tally t = {0};
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 20, 1));
  qrpc_health_shutdown(s[0].health);
  ck_assert_int_eq(qrpc_server_shutdown(s[0].srv, 60000, on_shutdown, &s[0]),
                   0);
  /* Well before the 60 s deadline: the watch was cancelled. */
  ck_assert(qt_run_until_count(loop, &s[0].shut_down, 1, QT_WAIT_MS));
  int before = s[0].served;
  ck_assert(run_calls(cli, M_ECHO, 1, &r[20], &t, 20, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 40);
  ck_assert_int_eq(s[0].served, before);
  qrpc_client_free(cli);
  for (int i = 0; i < 2; i++) srv_free(&s[i]);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* ---- DNS -------------------------------------------------------------- */

#define DNS_NAME "svc.qrpc.test"

typedef struct dns_srv {
  struct evdns_server_port *port;
  char addr[32];
  int n4, n6;
  struct in_addr a4[4];
  struct in6_addr a6[4];
  int queries;
} dns_srv;

static void dns_answer(struct evdns_server_request *req, void *ud) {
  dns_srv *d = ud;
  d->queries++;
  int known = 0;
  for (int i = 0; i < req->nquestions; i++) {
    const struct evdns_server_question *q = req->questions[i];
    if (strcasecmp(q->name, DNS_NAME) != 0 || (d->n4 + d->n6) == 0) continue;
    known = 1;
    if (q->type == EVDNS_TYPE_A && d->n4)
      evdns_server_request_add_a_reply(req, q->name, d->n4, d->a4, 0);
    if (q->type == EVDNS_TYPE_AAAA && d->n6)
      evdns_server_request_add_aaaa_reply(req, q->name, d->n6, d->a6, 0);
  }
  evdns_server_request_respond(req, known ? 0 : DNS_ERR_NOTEXIST);
}

static void dns_start(dns_srv *d) {
  memset(d, 0, sizeof(*d));
  evutil_socket_t fd = socket(AF_INET, SOCK_DGRAM, 0);
  ck_assert_int_ge(fd, 0);
  struct sockaddr_in sin = {.sin_family = AF_INET};
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ck_assert_int_eq(bind(fd, (struct sockaddr *)&sin, sizeof(sin)), 0);
  socklen_t sl = sizeof(sin);
  ck_assert_int_eq(getsockname(fd, (struct sockaddr *)&sin, &sl), 0);
  ck_assert_int_eq(evutil_make_socket_nonblocking(fd), 0);
  d->port = evdns_add_server_port_with_base(qrpc_loop_base(loop), fd, 0,
                                            dns_answer, d);
  ck_assert_ptr_nonnull(d->port);
  snprintf(d->addr, sizeof(d->addr), "127.0.0.1:%u",
           (unsigned)ntohs(sin.sin_port));
}

/* The name's answer: 127.0.0.1 .. 127.0.0.<n4>, and ::1 when v6. */
static void dns_set(dns_srv *d, int n4, int v6) {
  d->n4 = n4;
  d->n6 = v6;
  for (int i = 0; i < n4; i++) {
    char a[16];
    snprintf(a, sizeof(a), "127.0.0.%d", i + 1);
    inet_pton(AF_INET, a, &d->a4[i]);
  }
  if (v6) inet_pton(AF_INET6, "::1", &d->a6[0]);
}

static qrpc_client *dns_client(dns_srv *d, uint16_t port, states *st) {
  char target[96];
  snprintf(target, sizeof(target), "dns:" DNS_NAME ":%u", (unsigned)port);
  qrpc_client_opts o;
  qrpc_client_opts_default(&o);
  o.backoff_initial_ms = 20;
  o.backoff_max_ms = 200;
  o.dns_resolver = d->addr;
  o.dns_refresh_ms = 100;
  o.server_name = "localhost"; /* the test certificate's name */
  o.on_state = on_state;
  o.user_data = st;
  memset(st, 0, sizeof(*st));
  qrpc_client *cli = NULL;
  ck_assert_int_eq(qrpc_client_new(loop, target, ctls, &o, &cli), 0);
  return cli;
}

typedef struct addrs_wait {
  qrpc_client *cli;
  const char *want; /* "a,b,c" in the order of the answer */
} addrs_wait;

static int addrs_pred(void *arg) {
  addrs_wait *w = arg;
  qrpc_backend_info info[MAX_BACKENDS];
  size_t n = qrpc_client_backends(w->cli, info, MAX_BACKENDS);
  char got[512] = "";
  for (size_t i = 0; i < n && i < MAX_BACKENDS; i++) {
    if (!info[i].takes_calls) return 0;
    size_t len = strlen(got);
    snprintf(got + len, sizeof(got) - len, "%s%s", i ? "," : "", info[i].addr);
  }
  return strcmp(got, w->want) == 0;
}

/* Waits until cli's backends are exactly the addresses of the name's
 * answer (127.0.0.1 .. 127.0.0.<n4>, then [::1] when v6), each taking
 * calls. */
static int wait_addrs(qrpc_client *cli, uint16_t port, int n4, int v6) {
  char want[512] = "";
  for (int i = 0; i < n4; i++) {
    size_t len = strlen(want);
    snprintf(want + len, sizeof(want) - len, "%s127.0.0.%d:%u", i ? "," : "",
             i + 1, (unsigned)port);
  }
  if (v6) {
    size_t len = strlen(want);
    snprintf(want + len, sizeof(want) - len, ",[::1]:%u", (unsigned)port);
  }
  addrs_wait w = {cli, want};
  return qt_run_until(loop, addrs_pred, &w, QT_WAIT_MS);
}

/* Servers on 127.0.0.1, .2 and .3 (and ::1), all on one port. */
static uint16_t dns_servers(srv *s4, srv *s6, int v6) {
  srv_start(&s4[0], "127.0.0.1:0", 0);
  uint16_t port = qrpc_server_port(s4[0].srv);
  char bind[32];
  for (int i = 1; i < NSRV; i++) {
    snprintf(bind, sizeof(bind), "127.0.0.%d:%u", i + 1, (unsigned)port);
    srv_start(&s4[i], bind, 0);
  }
  if (v6) {
    snprintf(bind, sizeof(bind), "[::1]:%u", (unsigned)port);
    srv_start(s6, bind, 0);
  }
  return port;
}

/* The name has three addresses (a server on each, one port): calls
 * spread over all three. The answer changes (one address goes, and ::1
 * comes where IPv6 is up) and the client follows; the address comes back
 * and so does its backend. Then the name stops resolving: the client says
 * so, keeps its backends and keeps asking. */
START_TEST(test_dns_follows) {
  int v6 = qt_ipv6_available();
  srv s4[NSRV] = {0}, s6 = {0};
  uint16_t port = dns_servers(s4, &s6, v6);
  dns_srv d;
  dns_start(&d);
  dns_set(&d, NSRV, 0);
  states st;
  qrpc_client *cli = dns_client(&d, port, &st);
  ck_assert(wait_addrs(cli, port, NSRV, 0));
  ck_assert_int_eq(qrpc_client_resolve_error(cli), 0);
  static qt_call_rec r[150];
  qt_call_tally t = {0};
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 150, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 150);
  int counts[NSRV];
  for (int i = 0; i < NSRV; i++) counts[i] = s4[i].served;
  check_spread(counts, NSRV, 150);
  /* 127.0.0.3 goes (its backend drains and goes), ::1 comes. */
  dns_set(&d, NSRV - 1, v6);
  ck_assert(wait_addrs(cli, port, NSRV - 1, v6));
  int gone = s4[NSRV - 1].served;
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 150, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 300);
  ck_assert_int_eq(s4[NSRV - 1].served, gone);
  if (v6) ck_assert_int_gt(s6.served, 0);
  /* It comes back. */
  dns_set(&d, NSRV, v6);
  size_t n = NSRV + (v6 ? 1 : 0);
  ck_assert(wait_ready(cli, n, n));
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 40, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 340);
  ck_assert_int_gt(s4[NSRV - 1].served, gone);
  /* The name stops resolving. */
  dns_set(&d, 0, 0);
  int q = d.queries;
  ck_assert(qt_run_until_count(loop, &st.resolve_failed, 1, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_client_resolve_error(cli), QRPC_ERESOLVE);
  ck_assert(qt_run_until_count(loop, &d.queries, q + 4, QT_WAIT_MS));
  ck_assert_uint_eq(qrpc_client_backends(cli, NULL, 0), n);
  ck_assert(run_calls(cli, M_ECHO, 1, r, &t, 10, 1));
  ck_assert_int_eq(t.by_status[QRPC_STATUS_OK], 350);
  ck_assert_int_eq(st.null_backend_other, 0);
  qrpc_client_free(cli);
  evdns_close_server_port(d.port);
  for (int i = 0; i < NSRV; i++) srv_free(&s4[i]);
  srv_free(&s6);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

/* A name that never resolves: creation works, the client reports it and
 * retries, and calls wait out their deadline. */
START_TEST(test_dns_unknown_name) {
  dns_srv d;
  dns_start(&d);
  states st;
  qrpc_client *cli = dns_client(&d, 443, &st);
  ck_assert(qt_run_until_count(loop, &st.resolve_failed, 2, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_client_resolve_error(cli), QRPC_ERESOLVE);
  ck_assert_uint_eq(qrpc_client_backends(cli, NULL, 0), 0);
  qt_call_rec r;
  qrpc_call_opts o = qt_call_opts(200, 0);
  ck_assert_int_eq(qt_call_rec_start(&r, NULL, cli, M_ECHO, "x", 1, &o), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_DEADLINE_EXCEEDED);
  qrpc_client_free(cli);
  evdns_close_server_port(d.port);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

static Suite *balance_suite(void) {
  Suite *s = suite_create("balance");
  TCase *tc = tcase_create("balance");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_round_robin_spread);
  tcase_add_test(tc, test_pick_first);
  tcase_add_test(tc, test_least_outstanding);
  tcase_add_test(tc, test_none_ready);
  tcase_add_test(tc, test_bad_targets);
  tcase_add_test(tc, test_kill_idempotent);
  tcase_add_test(tc, test_kill_not_idempotent);
  tcase_add_test(tc, test_goaway_drains);
  tcase_add_test(tc, test_health_rotation);
  tcase_add_test(tc, test_health_named_and_absent);
  tcase_add_test(tc, test_health_goaway_drains);
  tcase_add_test(tc, test_dns_follows);
  tcase_add_test(tc, test_dns_unknown_name);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(balance_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
