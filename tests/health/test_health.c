/*
 * The health service (qrpc/health.h) over loopback, called through stubs
 * generated from idl/qrpc/health.proto: Check of the whole server, of a
 * service set later and of an unknown one; Watch streaming the current
 * status and then each change exactly once; shutdown; watches ended by
 * qrpc_health_free() and by the server going away; malformed and
 * over-long requests; and the broker's built-in health service.
 */
#include <check.h>
#include <protobuf-c/protobuf-c.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/health.pb-c.h"
#include "qrpc/health.qrpc.h"
#include "qrpc/qrpc.h"
#include "rpc_harness.h"

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

typedef struct env {
  qrpc_server *srv;
  char addr[64];
  qrpc_health *h;
  qt_rpc_client cl;
} env;

static void env_start(env *e) {
  memset(e, 0, sizeof(*e));
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, NULL, &e->srv,
                                       e->addr, sizeof(e->addr)),
                   0);
  ck_assert_int_eq(qrpc_health_new(e->srv, &e->h), 0);
  ck_assert_int_eq(qt_rpc_client_start(&e->cl, loop, e->addr, ctls, NULL), 0);
  ck_assert(qt_rpc_client_wait_connects(&e->cl, 1, QT_WAIT_MS));
}

static void env_finish(env *e) {
  ck_assert(qt_rpc_close_all(loop, &e->srv, &e->cl, 1));
  qrpc_health_free(e->h);
}

/* Check through the generated stub: the call's status, and the serving
 * status when it is OK (-1 otherwise). */
static int check(env *e, const char *service, int *serving) {
  Qrpc__Health__V1__HealthCheckRequest rq =
      QRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  rq.service = (char *)service;
  Qrpc__Health__V1__HealthCheckResponse *rep = NULL;
  int status = -1;
  ck_assert_int_eq(qrpc_health_v1_Health_Check_sync(loop, e->cl.cli, &rq,
                                                    QT_WAIT_MS, &rep, &status),
                   0);
  *serving = rep ? (int)rep->status : -1;
  if (rep) qrpc_stub_free(&rep->base);
  return status;
}

START_TEST(test_ids_match_generated) {
  ck_assert_uint_eq(QRPC_HEALTH_CHECK_METHOD_ID,
                    qrpc_health_v1_Health_Check_METHOD_ID);
  ck_assert_uint_eq(QRPC_HEALTH_WATCH_METHOD_ID,
                    qrpc_health_v1_Health_Watch_METHOD_ID);
}
END_TEST

START_TEST(test_check) {
  env e;
  env_start(&e);
  int st;
  ck_assert_int_eq(check(&e, "", &st), QRPC_STATUS_OK);
  ck_assert_int_eq(st, QRPC_HEALTH_SERVING);
  ck_assert_int_eq(check(&e, "hello.Greeter", &st), QRPC_STATUS_NOT_FOUND);
  ck_assert_int_eq(qrpc_health_get(e.h, "hello.Greeter"),
                   QRPC_HEALTH_SERVICE_UNKNOWN);
  ck_assert_int_eq(
      qrpc_health_set(e.h, "hello.Greeter", QRPC_HEALTH_NOT_SERVING), 0);
  ck_assert_int_eq(check(&e, "hello.Greeter", &st), QRPC_STATUS_OK);
  ck_assert_int_eq(st, QRPC_HEALTH_NOT_SERVING);
  ck_assert_int_eq(qrpc_health_set(e.h, "hello.Greeter", QRPC_HEALTH_SERVING),
                   0);
  ck_assert_int_eq(check(&e, "hello.Greeter", &st), QRPC_STATUS_OK);
  ck_assert_int_eq(st, QRPC_HEALTH_SERVING);
  ck_assert_int_eq(qrpc_health_set(e.h, "", QRPC_HEALTH_UNKNOWN), 0);
  ck_assert_int_eq(check(&e, "", &st), QRPC_STATUS_OK);
  ck_assert_int_eq(st, QRPC_HEALTH_UNKNOWN);

  /* Refused settings. */
  ck_assert_int_eq(qrpc_health_set(e.h, "x", QRPC_HEALTH_SERVICE_UNKNOWN),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_health_set(e.h, NULL, QRPC_HEALTH_SERVING),
                   QRPC_EINVAL);
  char long_name[QRPC_HEALTH_NAME_MAX + 2];
  memset(long_name, 'a', sizeof(long_name) - 1);
  long_name[sizeof(long_name) - 1] = '\0';
  ck_assert_int_eq(qrpc_health_set(e.h, long_name, QRPC_HEALTH_SERVING),
                   QRPC_EINVAL);
  /* An over-long name on the wire is refused. */
  ck_assert_int_eq(check(&e, long_name, &st), QRPC_STATUS_INVALID_ARGUMENT);
  /* So are bytes that are no HealthCheckRequest. */
  static const uint8_t junk[] = {0x0a, 0x7f, 'x'};
  qt_call_rec rec;
  ck_assert_int_eq(qt_call_rec_start(&rec, NULL, e.cl.cli,
                                     QRPC_HEALTH_CHECK_METHOD_ID, junk,
                                     sizeof(junk), NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &rec.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(rec.status, QRPC_STATUS_INVALID_ARGUMENT);

  qrpc_health_shutdown(e.h);
  ck_assert_int_eq(check(&e, "hello.Greeter", &st), QRPC_STATUS_OK);
  ck_assert_int_eq(st, QRPC_HEALTH_NOT_SERVING);
  ck_assert_int_eq(qrpc_health_set(e.h, "hello.Greeter", QRPC_HEALTH_SERVING),
                   0);
  ck_assert_int_eq(check(&e, "hello.Greeter", &st), QRPC_STATUS_OK);
  ck_assert_int_eq(st, QRPC_HEALTH_NOT_SERVING);
  env_finish(&e);
}
END_TEST

/* ---- Watch ------------------------------------------------------------- */

#define WATCH_MAX 16

typedef struct watch {
  qrpc_call *call;
  int items[WATCH_MAX];
  int nitems;
  int done;
  int status;
  int local;
} watch;

static void w_item(qrpc_call *call,
                   const Qrpc__Health__V1__HealthCheckResponse *r, void *ud) {
  watch *w = ud;
  if (w->nitems < WATCH_MAX) w->items[w->nitems] = (int)r->status;
  w->nitems++;
}

static void w_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  watch *w = ud;
  w->done++;
  w->status = res->status;
  w->local = res->local;
  w->call = NULL;
}

static void watch_start(env *e, watch *w, const char *service) {
  memset(w, 0, sizeof(*w));
  Qrpc__Health__V1__HealthCheckRequest rq =
      QRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
  rq.service = (char *)service;
  static const qrpc_health_v1_Health_Watch_callbacks cbs = {w_item, w_done};
  ck_assert_int_eq(
      qrpc_health_v1_Health_Watch(e->cl.cli, &rq, NULL, &cbs, w, &w->call), 0);
}

START_TEST(test_watch) {
  env e;
  env_start(&e);
  watch w, all;
  watch_start(&e, &w, "chat.Room");
  watch_start(&e, &all, "");
  ck_assert(qt_run_until_count(loop, &w.nitems, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &all.nitems, 1, QT_WAIT_MS));
  ck_assert_int_eq(w.items[0], QRPC_HEALTH_SERVICE_UNKNOWN);
  ck_assert_int_eq(all.items[0], QRPC_HEALTH_SERVING);

  ck_assert_int_eq(qrpc_health_set(e.h, "chat.Room", QRPC_HEALTH_SERVING), 0);
  /* The same status again, and another service: nothing for w. */
  ck_assert_int_eq(qrpc_health_set(e.h, "chat.Room", QRPC_HEALTH_SERVING), 0);
  ck_assert_int_eq(qrpc_health_set(e.h, "other", QRPC_HEALTH_NOT_SERVING), 0);
  ck_assert_int_eq(qrpc_health_set(e.h, "chat.Room", QRPC_HEALTH_NOT_SERVING),
                   0);
  ck_assert(qt_run_until_count(loop, &w.nitems, 3, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(w.nitems, 3);
  ck_assert_int_eq(w.items[1], QRPC_HEALTH_SERVING);
  ck_assert_int_eq(w.items[2], QRPC_HEALTH_NOT_SERVING);
  ck_assert_int_eq(all.nitems, 1);

  /* Shutdown: the whole server becomes NOT_SERVING; chat.Room already
   * is, so w gets nothing more. */
  qrpc_health_shutdown(e.h);
  ck_assert(qt_run_until_count(loop, &all.nitems, 2, QT_WAIT_MS));
  ck_assert_int_eq(all.items[1], QRPC_HEALTH_NOT_SERVING);

  /* A cancelled watch ends once, and the server forgets it. */
  ck_assert_int_eq(qrpc_call_cancel(w.call), 0);
  ck_assert(qt_run_until_count(loop, &w.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(w.status, QRPC_STATUS_CANCELLED);
  qt_run_for(loop, 50);

  /* Freeing the health service ends the watches still open. */
  qrpc_health_free(e.h);
  e.h = NULL;
  ck_assert(qt_run_until_count(loop, &all.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(all.status, QRPC_STATUS_UNAVAILABLE);
  ck_assert_int_eq(all.local, 0);
  ck_assert_int_eq(w.done, 1);
  env_finish(&e);
}
END_TEST

/* Watches open when the server is freed end with the connection; the
 * health service is freed after, with nothing left to end. */
START_TEST(test_watch_server_gone) {
  env e;
  env_start(&e);
  watch w[3];
  for (int i = 0; i < 3; i++) watch_start(&e, &w[i], i ? "a" : "");
  for (int i = 0; i < 3; i++)
    ck_assert(qt_run_until_count(loop, &w[i].nitems, 1, QT_WAIT_MS));
  qrpc_server_free(e.srv);
  e.srv = NULL;
  qrpc_health_free(e.h);
  e.h = NULL;
  for (int i = 0; i < 3; i++) {
    ck_assert(qt_run_until_count(loop, &w[i].done, 1, QT_WAIT_MS));
    ck_assert_int_ne(w[i].status, QRPC_STATUS_OK);
  }
  env_finish(&e);
}
END_TEST

/* ---- The broker -------------------------------------------------------- */

START_TEST(test_broker_health) {
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  qrpc_broker *b;
  char err[256];
  ck_assert_int_eq(
      qrpc_broker_new(loop, "127.0.0.1:0", stls, &bo, &b, err, sizeof(err)), 0);
  env e;
  memset(&e, 0, sizeof(e));
  snprintf(e.addr, sizeof(e.addr), "127.0.0.1:%u",
           (unsigned)qrpc_server_port(qrpc_broker_server(b)));
  ck_assert_int_eq(qt_rpc_client_start(&e.cl, loop, e.addr, ctls, NULL), 0);
  ck_assert(qt_rpc_client_wait_connects(&e.cl, 1, QT_WAIT_MS));
  int st;
  ck_assert_int_eq(check(&e, "qrpc.broker.Broker", &st), QRPC_STATUS_OK);
  ck_assert_int_eq(st, QRPC_HEALTH_SERVING);
  ck_assert_int_eq(check(&e, "", &st), QRPC_STATUS_OK);
  ck_assert_int_eq(st, QRPC_HEALTH_SERVING);
  watch w;
  watch_start(&e, &w, "qrpc.broker.Broker");
  ck_assert(qt_run_until_count(loop, &w.nitems, 1, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_broker_shutdown(b, 2000, NULL, NULL), 0);
  ck_assert(qt_run_until_count(loop, &w.nitems, 2, QT_WAIT_MS));
  ck_assert_int_eq(w.items[0], QRPC_HEALTH_SERVING);
  ck_assert_int_eq(w.items[1], QRPC_HEALTH_NOT_SERVING);
  ck_assert_int_eq(qrpc_health_get(qrpc_broker_health(b), ""),
                   QRPC_HEALTH_NOT_SERVING);
  qt_rpc_client_free(&e.cl);
  qrpc_broker_free(b);
  ck_assert(qt_run_until_released(loop, QT_WAIT_MS));
}
END_TEST

int main(void) {
  Suite *s = suite_create("health");
  TCase *tc = tcase_create("health");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_ids_match_generated);
  tcase_add_test(tc, test_check);
  tcase_add_test(tc, test_watch);
  tcase_add_test(tc, test_watch_server_gone);
  tcase_add_test(tc, test_broker_health);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
