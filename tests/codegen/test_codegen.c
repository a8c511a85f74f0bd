/*
 * End-to-end tests of the code generator's output: stubs generated at build
 * time from tests/codegen/proto, used by a real server and client over
 * loopback QUIC in one process. Typed unary calls (asynchronous, blocking,
 * from the server to its client), each streaming shape, NOTIFY, pinned ids,
 * keyword and case-colliding names, services across imported files, the
 * flags of idempotent methods and their calls in 0-RTT, and
 * what happens to bytes that do not decode: INVALID_ARGUMENT for requests
 * and items before any handler sees them, INTERNAL for replies and items a
 * caller receives.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "cg/imports.qrpc.h"
#include "cg/names.qrpc.h"
#include "cg/shapes.qrpc.h"
#include "harness.h"
#include "qrpc/qrpc.h"

typedef Qrpc__Test__Common__Num Num;
typedef Qrpc__Test__Common__Empty Empty;
typedef Qrpc__Test__Shapes__AddRequest AddRequest;
typedef Qrpc__Test__Shapes__CountRequest CountRequest;
typedef Qrpc__Test__Common__Outer__Inner Inner;
typedef Qrpc__Test__Common__Outer__Inner__Deep Deep;

#define ITEMS 200
#define APP_STATUS (QRPC_STATUS_APP_MIN + 7)

static const uint8_t garbage[] = {0xff, 0xff, 0xff};

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;
static qrpc_server *srv;
static qrpc_client *cli;
static qrpc_peer *server_peer; /* the server's side of the connection */
static int client_connected;

/* ---- Server side ---------------------------------------------------- */

/* What the server's handlers saw. */
typedef struct served {
  int add, count, nest, pinned, notes, forwards, lookups, scans;
  int early_adds, early_lookups, early_scans; /* qrpc_req_is_early() */
  int64_t note_sum;
  int streams_started, streams_freed;
  int sum_items, echo_items;
  int cancels;
  int last_cancel_status;
  int answer_errors;
  int names[16];
} served;

static served sv;

static void on_add(qrpc_req *req, const AddRequest *request, void *ud) {
  served *s = ud;
  s->add++;
  s->early_adds += qrpc_req_is_early(req);
  if (request->b < 0) {
    if (qrpc_test_shapes_Calc_Add_error(req, APP_STATUS, "b is negative"))
      s->answer_errors++;
    return;
  }
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = request->a + request->b;
  n.text = "sum";
  if (qrpc_test_shapes_Calc_Add_reply(req, &n) != 0) s->answer_errors++;
}

static void on_count(qrpc_req *req, const CountRequest *request, void *ud) {
  served *s = ud;
  s->count++;
  for (uint32_t i = 0; i < request->n; i++) {
    if (request->fail_after != 0 && i == request->fail_after) {
      if (qrpc_test_shapes_Calc_Count_error(req, APP_STATUS, "enough"))
        s->answer_errors++;
      return;
    }
    Num n = QRPC__TEST__COMMON__NUM__INIT;
    n.value = i;
    if (qrpc_test_shapes_Calc_Count_item(req, &n) != 0) s->answer_errors++;
  }
  if (qrpc_test_shapes_Calc_Count_end(req) != 0) s->answer_errors++;
}

/* Per call of Sum and Echo: what on_start returns. */
typedef struct stream_state {
  served *s;
  int64_t total;
  int items;
} stream_state;

static void *on_stream_start(qrpc_req *req, void *ud) {
  served *s = ud;
  stream_state *st = calloc(1, sizeof(*st));
  s->streams_started++;
  if (st == NULL) return NULL;
  st->s = s;
  return st;
}

static void stream_state_free(stream_state *st) {
  st->s->streams_freed++;
  free(st);
}

static void on_stream_cancel(qrpc_req *req, int status, void *ud) {
  stream_state *st = ud;
  st->s->cancels++;
  st->s->last_cancel_status = status;
  stream_state_free(st);
}

static void on_sum_item(qrpc_req *req, const Num *item, void *ud) {
  stream_state *st = ud;
  st->s->sum_items++;
  st->total += item->value;
  st->items++;
}

static void on_sum_end(qrpc_req *req, void *ud) {
  stream_state *st = ud;
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = st->total;
  n.text = "total";
  if (qrpc_test_shapes_Calc_Sum_reply(req, &n) != 0) st->s->answer_errors++;
  stream_state_free(st);
}

static void on_echo_item(qrpc_req *req, const Num *item, void *ud) {
  stream_state *st = ud;
  st->s->echo_items++;
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = item->value * 10;
  if (qrpc_test_shapes_Calc_Echo_item(req, &n) != 0) st->s->answer_errors++;
}

static void on_echo_end(qrpc_req *req, void *ud) {
  stream_state *st = ud;
  if (qrpc_test_shapes_Calc_Echo_end(req) != 0) st->s->answer_errors++;
  stream_state_free(st);
}

static void on_note(qrpc_req *req, const Num *request, void *ud) {
  served *s = ud;
  s->notes++;
  s->note_sum += request->value;
}

static void on_pinned(qrpc_req *req, const Num *request, void *ud) {
  served *s = ud;
  s->pinned++;
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = request->value * 2;
  if (qrpc_test_shapes_Calc_Pinned_reply(req, &n) != 0) s->answer_errors++;
}

static void on_nest(qrpc_req *req, const Inner *request, void *ud) {
  served *s = ud;
  char text[32];
  s->nest++;
  snprintf(text, sizeof(text), "x=%d", (int)request->x);
  Deep d = QRPC__TEST__COMMON__OUTER__INNER__DEEP__INIT;
  d.s = text;
  if (qrpc_test_shapes_Calc_Nest_reply(req, &d) != 0) s->answer_errors++;
}

/* Lookup and Scan are idempotent in the IDL. */
static void on_lookup(qrpc_req *req, const Num *request, void *ud) {
  served *s = ud;
  s->lookups++;
  s->early_lookups += qrpc_req_is_early(req);
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = request->value + 1;
  if (qrpc_test_shapes_Calc_Lookup_reply(req, &n) != 0) s->answer_errors++;
}

/* Three items: 0, value and 2 * value. */
static void on_scan(qrpc_req *req, const Num *request, void *ud) {
  served *s = ud;
  s->scans++;
  s->early_scans += qrpc_req_is_early(req);
  for (int64_t i = 0; i < 3; i++) {
    Num n = QRPC__TEST__COMMON__NUM__INIT;
    n.value = i * request->value;
    if (qrpc_test_shapes_Calc_Scan_item(req, &n) != 0) s->answer_errors++;
  }
  if (qrpc_test_shapes_Calc_Scan_end(req) != 0) s->answer_errors++;
}

static const qrpc_test_shapes_Calc_handlers calc_handlers = {
    .user_data = &sv,
    .Add = on_add,
    .Count = on_count,
    .Sum = {.on_start = on_stream_start,
            .on_item = on_sum_item,
            .on_end = on_sum_end,
            .on_cancel = on_stream_cancel},
    .Echo = {.on_start = on_stream_start,
             .on_item = on_echo_item,
             .on_end = on_echo_end,
             .on_cancel = on_stream_cancel},
    .Note = on_note,
    .Pinned = on_pinned,
    .Nest = on_nest,
    .Lookup = on_lookup,
    .Scan = on_scan,
};

static void on_forward(qrpc_req *req, const AddRequest *request, void *ud) {
  served *s = ud;
  s->forwards++;
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = request->a * request->b;
  qrpc_test_imports_Relay_Forward_reply(req, &n);
}

static const qrpc_test_imports_Relay_handlers relay_handlers = {
    .user_data = &sv,
    .Forward = on_forward,
};

/* Every method of the names file answers with its own code, so a call
 * that reaches the wrong handler shows. */
enum {
  N_INT = 1,
  N_REGISTER,
  N_GET_UPPER,
  N_GET_LOWER,
  N_GET_ALL,
  N_HANDLERS,
  N_USER_DATA,
  N_NULL,
  N_DEFAULT,
  N_CASE_UPPER,
  N_CASE_LOWER,
  N_CLASS,
};

static void answer_int(qrpc_req *req, int code) {
  Int r = INT__INIT;
  r.int_ = code;
  sv.names[code]++;
  struct_int__reply(req, &r); /* Int replies share the type of int */
}

static void h_int(qrpc_req *r, const Int *q, void *u) { answer_int(r, N_INT); }
static void h_register(qrpc_req *r, const Int *q, void *u) {
  answer_int(r, N_REGISTER);
}
static void h_Get(qrpc_req *r, const Int *q, void *u) {
  answer_int(r, N_GET_UPPER);
}
static void h_get(qrpc_req *r, const Int *q, void *u) {
  answer_int(r, N_GET_LOWER);
}
static void h_GET(qrpc_req *r, const Int *q, void *u) {
  answer_int(r, N_GET_ALL);
}
static void h_handlers(qrpc_req *r, const Int *q, void *u) {
  answer_int(r, N_HANDLERS);
}
static void h_user_data(qrpc_req *r, const Int *q, void *u) {
  answer_int(r, N_USER_DATA);
}
static void h_NULL(qrpc_req *r, const Int *q, void *u) {
  answer_int(r, N_NULL);
}
static void h_default(qrpc_req *r, const Int *q, void *u) {
  answer_int(r, N_DEFAULT);
}
static void h_Case(qrpc_req *r, const Int *q, void *u) {
  answer_int(r, N_CASE_UPPER);
}
static void h_case(qrpc_req *r, const Int *q, void *u) {
  answer_int(r, N_CASE_LOWER);
}
static void h_class_item(qrpc_req *r, const Int *q, void *u) {
  Int a = INT__INIT;
  a.int_ = q->int_ + N_CLASS;
  sv.names[N_CLASS]++;
  struct_class__item(r, &a);
}
static void h_class_end(qrpc_req *r, void *u) { struct_class__end(r); }

static const struct_handlers struct_h = {
    .int_ = h_int,
    .register_ = h_register,
    .Get = h_Get,
    .get = h_get,
    .GET = h_GET,
    .handlers_ = h_handlers,
    .user_data_ = h_user_data,
    .NULL_ = h_NULL,
    .class_ = {.on_item = h_class_item, .on_end = h_class_end},
};
static const switch_handlers switch_h = {.default_ = h_default};
static const Case_handlers Case_h = {.Which = h_Case};
static const case_handlers case_h = {.Which = h_case};

/* ---- Client side: methods the server calls -------------------------- */

typedef struct client_served {
  int asks, ticks;
  int64_t last_tick;
} client_served;

static client_served cs;

static void on_ask(qrpc_req *req, const Num *request, void *ud) {
  client_served *c = ud;
  c->asks++;
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = request->value + 1000;
  n.text = "from the client";
  qrpc_test_shapes_Callback_Ask_reply(req, &n);
}

static void on_tick(qrpc_req *req, const Num *request, void *ud) {
  client_served *c = ud;
  c->ticks++;
  c->last_tick = request->value;
}

static const qrpc_test_shapes_Callback_handlers callback_handlers = {
    .user_data = &cs,
    .Ask = on_ask,
    .Tick = on_tick,
};

/* ---- Fixture --------------------------------------------------------- */

static void on_peer_open(qrpc_peer *peer, void *ud) { server_peer = peer; }
static void on_peer_close(qrpc_peer *peer, void *ud) {
  if (server_peer == peer) server_peer = NULL;
}
static void on_connect(qrpc_client *c, qrpc_peer *peer, void *ud) {
  client_connected = 1;
}
static void on_disconnect(qrpc_client *c, const qrpc_close_info *info,
                          void *ud) {
  client_connected = 0;
}

static int both_connected(void *arg) {
  return client_connected && server_peer != NULL;
}

static void setup(void) {
  memset(&sv, 0, sizeof(sv));
  memset(&cs, 0, sizeof(cs));
  server_peer = NULL;
  client_connected = 0;
  ck_assert_int_eq(qt_certs_generate(&certs), 0);
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop), 0);
  stls = qt_server_tls(&certs);
  ctls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(stls);
  ck_assert_ptr_nonnull(ctls);

  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  so.on_peer_open = on_peer_open;
  so.on_peer_close = on_peer_close;
  ck_assert_int_eq(qrpc_server_new(loop, "127.0.0.1:0", stls, &so, &srv), 0);
  ck_assert_int_eq(qrpc_test_shapes_Calc_register(srv, &calc_handlers), 0);
  ck_assert_int_eq(qrpc_test_imports_Relay_register(srv, &relay_handlers), 0);
  ck_assert_int_eq(struct_register(srv, &struct_h), 0);
  ck_assert_int_eq(switch_register(srv, &switch_h), 0);
  ck_assert_int_eq(Case_register(srv, &Case_h), 0);
  ck_assert_int_eq(case_register(srv, &case_h), 0);

  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)qrpc_server_port(srv));
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.server_name = "localhost";
  co.on_connect = on_connect;
  co.on_disconnect = on_disconnect;
  ck_assert_int_eq(qrpc_client_new(loop, addr, ctls, &co, &cli), 0);
  ck_assert_int_eq(
      qrpc_test_shapes_Callback_register_client(cli, &callback_handlers), 0);
  ck_assert(qt_run_until(loop, both_connected, NULL, QT_WAIT_MS));
}

static void teardown(void) {
  qrpc_client_free(cli);
  qrpc_server_free(srv);
  cli = NULL;
  srv = NULL;
  qt_run_until_released(loop, QT_WAIT_MS);
  qrpc_tls_config_free(stls);
  qrpc_tls_config_free(ctls);
  qrpc_loop_free(loop);
  loop = NULL;
  qt_certs_free(&certs);
}

/* ---- Call records ----------------------------------------------------- */

/* The end of a call with a Num reply (or none), copied out. */
typedef struct num_rec {
  int done;
  int status;
  int local;
  int has_reply;
  int64_t value;
  char text[64];
  char detail[128];
  int items;
  int64_t item_sum;
  int item_order_bad;
  int writables;
} num_rec;

static void rec_result(num_rec *r, const qrpc_result *res) {
  r->done++;
  r->status = res->status;
  r->local = res->local;
  snprintf(r->detail, sizeof(r->detail), "%.*s", (int)res->detail_len,
           res->detail ? res->detail : "");
}

static void num_done(qrpc_call *call, const Num *reply, const qrpc_result *res,
                     void *ud) {
  num_rec *r = ud;
  rec_result(r, res);
  if (reply != NULL) {
    r->has_reply = 1;
    r->value = reply->value;
    snprintf(r->text, sizeof(r->text), "%s", reply->text);
  }
}

static void items_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  rec_result(ud, res);
}

static void num_item(qrpc_call *call, const Num *item, void *ud) {
  num_rec *r = ud;
  if (item->value != (int64_t)r->items * r->value) r->item_order_bad++;
  r->items++;
  r->item_sum += item->value;
}

static int rec_done(void *arg) { return ((num_rec *)arg)->done > 0; }

static void wait_done(num_rec *r) {
  ck_assert_msg(qt_run_until(loop, rec_done, r, QT_WAIT_MS),
                "the call did not end within %d ms", QT_WAIT_MS);
  ck_assert_int_eq(r->done, 1);
}

static qrpc_call_opts opts_ms(uint64_t ms) {
  qrpc_call_opts o;
  qrpc_call_opts_default(&o);
  o.timeout_ms = ms;
  return o;
}

/* A raw (untyped) call's end. */
typedef struct raw_rec {
  int done;
  int status;
  char detail[128];
} raw_rec;

static void raw_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  raw_rec *r = ud;
  r->done++;
  r->status = res->status;
  snprintf(r->detail, sizeof(r->detail), "%.*s", (int)res->detail_len,
           res->detail ? res->detail : "");
}

static int raw_done_pred(void *arg) { return ((raw_rec *)arg)->done > 0; }

static const qrpc_call_callbacks raw_cbs = {.on_done = raw_done};

/* ---- Method ids ------------------------------------------------------- */

static uint32_t fnv_id(const char *s) {
  uint32_t h = 2166136261u;
  for (; *s; s++) {
    h ^= (uint8_t)*s;
    h *= 16777619u;
  }
  return h & 0x3fffffffu;
}

START_TEST(test_method_ids) {
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Add_METHOD_ID,
                    fnv_id("qrpc.test.shapes.Calc/Add"));
  ck_assert_str_eq(qrpc_test_shapes_Calc_Add_METHOD_NAME,
                   "qrpc.test.shapes.Calc/Add");
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Sum_METHOD_ID,
                    fnv_id("qrpc.test.shapes.Calc/Sum"));
  ck_assert_uint_eq(qrpc_test_imports_Relay_Forward_METHOD_ID,
                    fnv_id("qrpc.test.imports.Relay/Forward"));
  /* No package: the name starts with the service. */
  ck_assert_uint_eq(struct_int__METHOD_ID, fnv_id("struct/int"));
  ck_assert_uint_eq(struct_Get_METHOD_ID, fnv_id("struct/Get"));
  ck_assert_uint_ne(struct_Get_METHOD_ID, struct_get_METHOD_ID);
  /* Pinned ids, and the datagram method's id (its channel). */
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Pinned_METHOD_ID, 5);
  ck_assert_uint_eq(qrpc_test_shapes_Callback_Ask_METHOD_ID, 40);
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Position_METHOD_ID,
                    fnv_id("qrpc.test.shapes.Calc/Position"));
  /* Every hashed id fits 30 bits. */
  ck_assert_uint_lt(qrpc_test_shapes_Calc_Echo_METHOD_ID, 1u << 30);
}
END_TEST

/* protobuf's idempotency_level: IDEMPOTENT and NO_SIDE_EFFECTS mark a
 * method idempotent, nothing else does. */
START_TEST(test_method_flags) {
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Lookup_FLAGS, QRPC_METHOD_IDEMPOTENT);
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Scan_FLAGS, QRPC_METHOD_IDEMPOTENT);
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Add_FLAGS, 0);
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Count_FLAGS, 0);
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Sum_FLAGS, 0);
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Echo_FLAGS, 0);
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Note_FLAGS, 0);
  ck_assert_uint_eq(qrpc_test_shapes_Calc_Pinned_FLAGS, 0);
  ck_assert_uint_eq(qrpc_test_shapes_Callback_Ask_FLAGS, 0);
}
END_TEST

/* ---- Unary ------------------------------------------------------------ */

START_TEST(test_unary) {
  AddRequest q = QRPC__TEST__SHAPES__ADD_REQUEST__INIT;
  q.a = 40;
  q.b = 2;
  num_rec r;
  memset(&r, 0, sizeof(r));
  qrpc_call_opts o = opts_ms(QT_WAIT_MS);
  qrpc_call *call = NULL;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Add(cli, &q, &o, num_done, &r, &call),
                   0);
  ck_assert_ptr_nonnull(call);
  wait_done(&r);
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert(r.has_reply);
  ck_assert_int_eq(r.value, 42);
  ck_assert_str_eq(r.text, "sum");
  ck_assert_int_eq(sv.add, 1);

  /* An error answer: no reply, the status and detail. */
  q.b = -1;
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(qrpc_test_shapes_Calc_Add(cli, &q, &o, num_done, &r, NULL),
                   0);
  wait_done(&r);
  ck_assert_int_eq(r.status, APP_STATUS);
  ck_assert(!r.has_reply);
  ck_assert(!r.local);
  ck_assert_str_eq(r.detail, "b is negative");

  /* Nested message types as request and reply. */
  Inner in = QRPC__TEST__COMMON__OUTER__INNER__INIT;
  in.x = 7;
  Deep *deep = NULL;
  int status = -1;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Nest_sync(loop, cli, &in, QT_WAIT_MS,
                                                   &deep, &status),
                   0);
  ck_assert_int_eq(status, QRPC_STATUS_OK);
  ck_assert_ptr_nonnull(deep);
  ck_assert_str_eq(deep->s, "x=7");
  protobuf_c_message_free_unpacked(&deep->base, NULL);
  ck_assert_int_eq(sv.answer_errors, 0);
}
END_TEST

START_TEST(test_unary_sync) {
  AddRequest q = QRPC__TEST__SHAPES__ADD_REQUEST__INIT;
  q.a = 1;
  q.b = 2;
  Num *reply = NULL;
  int status = -1;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Add_sync(loop, cli, &q, QT_WAIT_MS,
                                                  &reply, &status),
                   0);
  ck_assert_int_eq(status, QRPC_STATUS_OK);
  ck_assert_ptr_nonnull(reply);
  ck_assert_int_eq(reply->value, 3);
  protobuf_c_message_free_unpacked(&reply->base, NULL);

  /* A failed call: 0 (it ran), its status, no reply. */
  q.b = -5;
  reply = (Num *)&q; /* must be overwritten */
  ck_assert_int_eq(qrpc_test_shapes_Calc_Add_sync(loop, cli, &q, QT_WAIT_MS,
                                                  &reply, &status),
                   0);
  ck_assert_int_eq(status, APP_STATUS);
  ck_assert_ptr_null(reply);

  /* The reply may be discarded. */
  q.b = 5;
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Add_sync(loop, cli, &q, QT_WAIT_MS, NULL, &status),
      0);
  ck_assert_int_eq(status, QRPC_STATUS_OK);
  ck_assert_int_eq(sv.add, 3);
}
END_TEST

START_TEST(test_argument_checks) {
  AddRequest q = QRPC__TEST__SHAPES__ADD_REQUEST__INIT;
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  num_rec r;
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Add(NULL, &q, NULL, num_done, &r, NULL),
      QRPC_EINVAL);
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Add(cli, NULL, NULL, num_done, &r, NULL),
      QRPC_EINVAL);
  /* A message of another type is refused, not sent. */
  ck_assert_int_eq(qrpc_test_shapes_Calc_Add(cli, (const AddRequest *)&n, NULL,
                                             num_done, &r, NULL),
                   QRPC_EINVAL);
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Add_peer(NULL, &q, NULL, num_done, &r, NULL),
      QRPC_EINVAL);
  qrpc_test_shapes_Calc_Sum_callbacks cbs = {.on_done = num_done};
  ck_assert_int_eq(qrpc_test_shapes_Calc_Sum(cli, NULL, &cbs, &r, NULL),
                   QRPC_EINVAL); /* client streaming needs out */
  ck_assert_int_eq(qrpc_test_shapes_Calc_Note(cli, NULL), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_test_shapes_Calc_register(NULL, &calc_handlers),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_test_shapes_Calc_register(srv, NULL), QRPC_EINVAL);
  Num *reply = &n;
  int status = -1;
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Add_sync(loop, NULL, &q, 100, &reply, &status),
      QRPC_EINVAL);
  ck_assert_ptr_null(reply);
  ck_assert_int_eq(status, QRPC_STATUS_UNKNOWN);
  qt_run_for(loop, 50);
  ck_assert_int_eq(r.done, 0);
  ck_assert_int_eq(sv.add, 0);
}
END_TEST

/* ---- Streaming -------------------------------------------------------- */

START_TEST(test_server_streaming) {
  CountRequest q = QRPC__TEST__SHAPES__COUNT_REQUEST__INIT;
  q.n = ITEMS;
  num_rec r;
  memset(&r, 0, sizeof(r));
  r.value = 1; /* item i carries i * 1 */
  qrpc_test_shapes_Calc_Count_callbacks cbs = {.on_item = num_item,
                                               .on_done = items_done};
  qrpc_call_opts o = opts_ms(QT_WAIT_MS);
  ck_assert_int_eq(qrpc_test_shapes_Calc_Count(cli, &q, &o, &cbs, &r, NULL), 0);
  wait_done(&r);
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert_int_eq(r.items, ITEMS);
  ck_assert_int_eq(r.item_order_bad, 0);

  /* A stream that fails midway: the items so far, then the error. */
  q.fail_after = 10;
  memset(&r, 0, sizeof(r));
  r.value = 1;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Count(cli, &q, &o, &cbs, &r, NULL), 0);
  wait_done(&r);
  ck_assert_int_eq(r.items, 10);
  ck_assert_int_eq(r.status, APP_STATUS);
  ck_assert_str_eq(r.detail, "enough");
  ck_assert_int_eq(sv.answer_errors, 0);
}
END_TEST

/* Idempotent methods on an established connection: ordinary calls, never
 * early. */
START_TEST(test_idempotent_methods) {
  Num q = QRPC__TEST__COMMON__NUM__INIT;
  q.value = 41;
  num_rec r;
  memset(&r, 0, sizeof(r));
  qrpc_call_opts o = opts_ms(QT_WAIT_MS);
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Lookup(cli, &q, &o, num_done, &r, NULL), 0);
  wait_done(&r);
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert_int_eq(r.value, 42);

  Num *reply = NULL;
  int status = -1;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Lookup_sync(loop, cli, &q, QT_WAIT_MS,
                                                     &reply, &status),
                   0);
  ck_assert_int_eq(status, QRPC_STATUS_OK);
  ck_assert_ptr_nonnull(reply);
  ck_assert_int_eq(reply->value, 42);
  protobuf_c_message_free_unpacked(&reply->base, NULL);

  memset(&r, 0, sizeof(r));
  r.value = 5; /* item i carries i * 5 */
  q.value = 5;
  qrpc_test_shapes_Calc_Scan_callbacks cbs = {.on_item = num_item,
                                              .on_done = items_done};
  ck_assert_int_eq(qrpc_test_shapes_Calc_Scan(cli, &q, &o, &cbs, &r, NULL), 0);
  wait_done(&r);
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert_int_eq(r.items, 3);
  ck_assert_int_eq(r.item_order_bad, 0);

  ck_assert_int_eq(sv.lookups, 2);
  ck_assert_int_eq(sv.scans, 1);
  ck_assert_int_eq(sv.early_lookups + sv.early_scans, 0);
  ck_assert_uint_eq(qrpc_client_early_calls(cli), 0);
  ck_assert_int_eq(sv.answer_errors, 0);
}
END_TEST

static int has_ticket(void *arg) { return qrpc_tls_config_tickets(arg) > 0; }

/* A new client on tls, connected for one call and closed once a session
 * ticket has arrived. */
static void leave_ticket(const char *addr, qrpc_tls_config *tls) {
  qrpc_client_opts co;
  qrpc_client *c = NULL;
  Num q = QRPC__TEST__COMMON__NUM__INIT;
  int status = -1;
  qrpc_client_opts_default(&co);
  co.server_name = "localhost";
  ck_assert_int_eq(qrpc_client_new(loop, addr, tls, &co, &c), 0);
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Lookup_sync(loop, c, &q, QT_WAIT_MS, NULL, &status),
      0);
  int ticket = qt_run_until(loop, has_ticket, tls, QT_WAIT_MS);
  qrpc_client_free(c);
  ck_assert_int_eq(status, QRPC_STATUS_OK);
  ck_assert(ticket);
}

/* A client on the same TLS config as an earlier one resumes with the
 * ticket it left, and the generated stubs of idempotent methods send their
 * calls in 0-RTT: the handlers see them early. Add, not idempotent, waits
 * for the handshake. */
START_TEST(test_idempotent_in_0rtt) {
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)qrpc_server_port(srv));
  /* Servers take no early data with tickets issued in the second their TLS
   * config was made, as those of the fixture's client were: a client
   * config of its own, and a ticket got in the next second. */
  qrpc_tls_config *tls = qt_client_tls(certs.ca_pem);
  ck_assert_ptr_nonnull(tls);
  time_t t0 = time(NULL);
  uint64_t start = qt_now_ms();
  while (time(NULL) <= t0 && qt_now_ms() - start < 2000) qt_run_for(loop, 20);
  leave_ticket(addr, tls);
  sv.lookups = sv.early_lookups = 0;

  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.server_name = "localhost";
  qrpc_client *cli2 = NULL;
  ck_assert_int_eq(qrpc_client_new(loop, addr, tls, &co, &cli2), 0);
  qrpc_tls_config_free(tls); /* the client keeps its reference */

  /* Made before the first packet: they wait for the 0-RTT phase, or for
   * the handshake. */
  Num q = QRPC__TEST__COMMON__NUM__INIT;
  num_rec lookup, scan, add;
  memset(&lookup, 0, sizeof(lookup));
  memset(&scan, 0, sizeof(scan));
  memset(&add, 0, sizeof(add));
  qrpc_call_opts o = opts_ms(QT_WAIT_MS);
  q.value = 9;
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Lookup(cli2, &q, &o, num_done, &lookup, NULL), 0);
  scan.value = 9;
  qrpc_test_shapes_Calc_Scan_callbacks cbs = {.on_item = num_item,
                                              .on_done = items_done};
  ck_assert_int_eq(qrpc_test_shapes_Calc_Scan(cli2, &q, &o, &cbs, &scan, NULL),
                   0);
  AddRequest a = QRPC__TEST__SHAPES__ADD_REQUEST__INIT;
  a.a = 2;
  a.b = 3;
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Add(cli2, &a, &o, num_done, &add, NULL), 0);
  wait_done(&lookup);
  wait_done(&scan);
  wait_done(&add);
  ck_assert_int_eq(lookup.status, QRPC_STATUS_OK);
  ck_assert_int_eq(lookup.value, 10);
  ck_assert_int_eq(scan.status, QRPC_STATUS_OK);
  ck_assert_int_eq(scan.items, 3);
  ck_assert_int_eq(add.status, QRPC_STATUS_OK);
  ck_assert_int_eq(add.value, 5);
  uint64_t early = qrpc_client_early_calls(cli2);
  qrpc_client_free(cli2);
  ck_assert_msg(early == 2, "%llu calls went out in 0-RTT, expected 2",
                (unsigned long long)early);
  ck_assert_int_eq(sv.early_lookups, 1);
  ck_assert_int_eq(sv.early_scans, 1);
  ck_assert_int_eq(sv.early_adds, 0);
  ck_assert_int_eq(sv.answer_errors, 0);
}
END_TEST

START_TEST(test_client_streaming) {
  num_rec r;
  memset(&r, 0, sizeof(r));
  qrpc_test_shapes_Calc_Sum_callbacks cbs = {.on_done = num_done};
  qrpc_call_opts o = opts_ms(QT_WAIT_MS);
  qrpc_call *call = NULL;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Sum(cli, &o, &cbs, &r, &call), 0);
  ck_assert_ptr_nonnull(call);
  int64_t want = 0;
  for (int i = 1; i <= ITEMS; i++) {
    Num n = QRPC__TEST__COMMON__NUM__INIT;
    n.value = i;
    want += i;
    ck_assert_int_eq(qrpc_test_shapes_Calc_Sum_send(call, &n), 0);
  }
  ck_assert_int_eq(qrpc_call_end(call), 0);
  wait_done(&r);
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert(r.has_reply);
  ck_assert_int_eq(r.value, want);
  ck_assert_str_eq(r.text, "total");
  ck_assert_int_eq(sv.sum_items, ITEMS);
  ck_assert_int_eq(sv.streams_started, 1);
  ck_assert_int_eq(sv.streams_freed, 1);
}
END_TEST

/* A client streaming call that sends more than the stream takes at once,
 * so sends return QRPC_EAGAIN and the typed on_writable resumes them. */
typedef struct pump {
  qrpc_call *call;
  int next, total;
  int eagains, writables, send_errors, ended;
  num_rec rec;
} pump;

static void pump_items(pump *p) {
  while (p->next < p->total) {
    Num n = QRPC__TEST__COMMON__NUM__INIT;
    n.value = p->next + 1;
    int rc = qrpc_test_shapes_Calc_Sum_send(p->call, &n);
    if (rc == QRPC_EAGAIN) {
      p->eagains++;
      return;
    }
    if (rc != 0) {
      p->send_errors++;
      return;
    }
    p->next++;
  }
  if (!p->ended && qrpc_call_end(p->call) == 0) p->ended = 1;
}

static void pump_writable(qrpc_call *call, void *ud) {
  pump *p = ud;
  p->writables++;
  pump_items(p);
}

static void pump_done(qrpc_call *call, const Num *reply, const qrpc_result *res,
                      void *ud) {
  pump *p = ud;
  num_done(call, reply, res, &p->rec);
}

static int client_up(void *arg) { return *(int *)arg; }
static void flag_connect(qrpc_client *c, qrpc_peer *peer, void *ud) {
  *(int *)ud = 1;
}

START_TEST(test_client_streaming_flow_control) {
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.server_name = "localhost";
  co.conn.stream_send_buffer = 4096;
  int up = 0;
  co.on_connect = flag_connect;
  co.user_data = &up;
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", (unsigned)qrpc_server_port(srv));
  qrpc_client *small = NULL;
  ck_assert_int_eq(qrpc_client_new(loop, addr, ctls, &co, &small), 0);
  ck_assert(qt_run_until(loop, client_up, &up, QT_WAIT_MS));

  static pump p; /* outlives the call's callbacks */
  memset(&p, 0, sizeof(p));
  p.total = 20000;
  qrpc_test_shapes_Calc_Sum_callbacks cbs = {.on_done = pump_done,
                                             .on_writable = pump_writable};
  qrpc_call_opts o = opts_ms(30000);
  ck_assert_int_eq(qrpc_test_shapes_Calc_Sum(small, &o, &cbs, &p, &p.call), 0);
  pump_items(&p);
  ck_assert_msg(qt_run_until(loop, rec_done, &p.rec, 30000),
                "the call did not end");
  ck_assert_int_eq(p.send_errors, 0);
  ck_assert_int_gt(p.eagains, 0);
  ck_assert_int_gt(p.writables, 0);
  ck_assert_int_eq(p.rec.status, QRPC_STATUS_OK);
  ck_assert_int_eq(p.rec.value, (int64_t)p.total * (p.total + 1) / 2);
  ck_assert_int_eq(sv.sum_items, p.total);
  qrpc_client_free(small);
}
END_TEST

static int cancel_seen(void *arg) { return sv.cancels > 0; }

START_TEST(test_client_streaming_cancel) {
  num_rec r;
  memset(&r, 0, sizeof(r));
  qrpc_test_shapes_Calc_Sum_callbacks cbs = {.on_done = num_done};
  qrpc_call *call = NULL;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Sum(cli, NULL, &cbs, &r, &call), 0);
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = 1;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Sum_send(call, &n), 0);
  ck_assert(qt_run_until_count(loop, &sv.sum_items, 1, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_call_cancel(call), 0);
  wait_done(&r);
  ck_assert_int_eq(r.status, QRPC_STATUS_CANCELLED);
  ck_assert(r.local);
  ck_assert(!r.has_reply);
  /* The server's handler hears of it and frees its state. */
  ck_assert(qt_run_until(loop, cancel_seen, NULL, QT_WAIT_MS));
  ck_assert_int_eq(sv.last_cancel_status, QRPC_STATUS_CANCELLED);
  ck_assert_int_eq(sv.streams_freed, 1);
}
END_TEST

START_TEST(test_bidi_streaming) {
  num_rec r;
  memset(&r, 0, sizeof(r));
  r.value = 10; /* item i comes back as i * 10 */
  qrpc_test_shapes_Calc_Echo_callbacks cbs = {.on_item = num_item,
                                              .on_done = items_done};
  qrpc_call_opts o = opts_ms(QT_WAIT_MS);
  qrpc_call *call = NULL;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Echo(cli, &o, &cbs, &r, &call), 0);
  for (int i = 0; i < ITEMS; i++) {
    Num n = QRPC__TEST__COMMON__NUM__INIT;
    n.value = i;
    ck_assert_int_eq(qrpc_test_shapes_Calc_Echo_send(call, &n), 0);
  }
  ck_assert(qt_run_until_count(loop, &r.items, ITEMS, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_call_end(call), 0);
  wait_done(&r);
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert_int_eq(r.items, ITEMS);
  ck_assert_int_eq(r.item_order_bad, 0);
  ck_assert_int_eq(sv.echo_items, ITEMS);
  ck_assert_int_eq(sv.streams_freed, 1);
  ck_assert_int_eq(sv.answer_errors, 0);
}
END_TEST

/* ---- Notify and server-initiated calls --------------------------------- */

START_TEST(test_notify) {
  for (int i = 1; i <= 3; i++) {
    Num n = QRPC__TEST__COMMON__NUM__INIT;
    n.value = i * 100;
    ck_assert_int_eq(qrpc_test_shapes_Calc_Note(cli, &n), 0);
  }
  ck_assert(qt_run_until_count(loop, &sv.notes, 3, QT_WAIT_MS));
  /* Each NOTIFY arrived once; they travel on different pool streams, so
   * their order is not promised (docs/protocol.md section 3). */
  ck_assert_int_eq(sv.note_sum, 600);

  /* Called as a unary method instead, it is acknowledged with an empty
   * reply after the handler ran. */
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = 7;
  uint8_t buf[32];
  size_t len = protobuf_c_message_pack(&n.base, buf);
  raw_rec r;
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(qrpc_client_call(cli, qrpc_test_shapes_Calc_Note_METHOD_ID,
                                    buf, len, NULL, &raw_cbs, &r, NULL),
                   0);
  ck_assert(qt_run_until(loop, raw_done_pred, &r, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert_int_eq(sv.notes, 4);
}
END_TEST

START_TEST(test_server_calls_client) {
  ck_assert_ptr_nonnull(server_peer);
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = 5;
  num_rec r;
  memset(&r, 0, sizeof(r));
  qrpc_call_opts o = opts_ms(QT_WAIT_MS);
  ck_assert_int_eq(qrpc_test_shapes_Callback_Ask_peer(server_peer, &n, &o,
                                                      num_done, &r, NULL),
                   0);
  wait_done(&r);
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert_int_eq(r.value, 1005);
  ck_assert_str_eq(r.text, "from the client");
  ck_assert_int_eq(cs.asks, 1);

  n.value = 77;
  ck_assert_int_eq(qrpc_test_shapes_Callback_Tick_peer(server_peer, &n), 0);
  ck_assert(qt_run_until_count(loop, &cs.ticks, 1, QT_WAIT_MS));
  ck_assert_int_eq(cs.last_tick, 77);

  /* The client serves only Callback: Calc goes unanswered there. */
  AddRequest q = QRPC__TEST__SHAPES__ADD_REQUEST__INIT;
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Add_peer(server_peer, &q, &o, num_done, &r, NULL),
      0);
  wait_done(&r);
  ck_assert_int_eq(r.status, QRPC_STATUS_UNIMPLEMENTED);
}
END_TEST

/* ---- One handlers table, many servers and clients ------------------- */

/* The table names no user_data: each registration brings its own. */
static const qrpc_test_shapes_Callback_handlers shared_callback = {
    .user_data = NULL,
    .Ask = on_ask,
    .Tick = on_tick,
};

/* A server and a client connected to it, both serving Callback from
 * shared_callback, each with its own counters as user_data. */
typedef struct side {
  qrpc_server *srv;
  qrpc_client *cli;
  qrpc_peer *peer; /* the server's peer of cli */
  client_served at_server, at_client;
} side;

static void side_peer_open(qrpc_peer *peer, void *ud) {
  ((side *)ud)->peer = peer;
}
static void side_peer_close(qrpc_peer *peer, void *ud) {
  side *s = ud;
  if (s->peer == peer) s->peer = NULL;
}
static int side_connected(void *arg) {
  side *s = arg;
  return s->peer != NULL && qrpc_client_peer(s->cli) != NULL;
}

static void side_start(side *s) {
  memset(s, 0, sizeof(*s));
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  so.on_peer_open = side_peer_open;
  so.on_peer_close = side_peer_close;
  so.user_data = s;
  ck_assert_int_eq(qrpc_server_new(loop, "127.0.0.1:0", stls, &so, &s->srv), 0);
  ck_assert_int_eq(qrpc_test_shapes_Callback_register_with(
                       s->srv, &shared_callback, &s->at_server),
                   0);
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u",
           (unsigned)qrpc_server_port(s->srv));
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.server_name = "localhost";
  ck_assert_int_eq(qrpc_client_new(loop, addr, ctls, &co, &s->cli), 0);
  /* Registration copies the table: a temporary one may go at once. */
  qrpc_test_shapes_Callback_handlers tmp = shared_callback;
  ck_assert_int_eq(qrpc_test_shapes_Callback_register_client_with(
                       s->cli, &tmp, &s->at_client),
                   0);
  memset(&tmp, 0, sizeof(tmp));
  ck_assert(qt_run_until(loop, side_connected, s, QT_WAIT_MS));
}

static void ask(num_rec *r, qrpc_client *c, qrpc_peer *peer, int64_t v) {
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = v;
  qrpc_call_opts o = opts_ms(QT_WAIT_MS);
  memset(r, 0, sizeof(*r));
  ck_assert_int_eq(
      c ? qrpc_test_shapes_Callback_Ask(c, &n, &o, num_done, r, NULL)
        : qrpc_test_shapes_Callback_Ask_peer(peer, &n, &o, num_done, r, NULL),
      0);
  wait_done(r);
  ck_assert_int_eq(r->status, QRPC_STATUS_OK);
  ck_assert_int_eq(r->value, v + 1000);
}

START_TEST(test_shared_handlers_own_user_data) {
  side a, b;
  num_rec r;
  side_start(&a);
  side_start(&b);
  /* Each server's handler counts in its own user_data. */
  ask(&r, a.cli, NULL, 1);
  ask(&r, b.cli, NULL, 2);
  ask(&r, b.cli, NULL, 3);
  ck_assert_int_eq(a.at_server.asks, 1);
  ck_assert_int_eq(b.at_server.asks, 2);
  /* And each client's, when its server calls it. */
  ask(&r, NULL, a.peer, 4);
  ck_assert_int_eq(a.at_client.asks, 1);
  ck_assert_int_eq(b.at_client.asks, 0);
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = 9;
  ck_assert_int_eq(qrpc_test_shapes_Callback_Tick_peer(b.peer, &n), 0);
  ck_assert(qt_run_until_count(loop, &b.at_client.ticks, 1, QT_WAIT_MS));
  ck_assert_int_eq(b.at_client.last_tick, 9);
  ck_assert_int_eq(a.at_client.ticks, 0);
  ck_assert_int_eq(a.at_server.ticks + b.at_server.ticks, 0);
  /* The fixture's client, registered with the table's own user_data,
   * saw none of it. */
  ck_assert_int_eq(cs.asks, 0);
  ck_assert_int_eq(cs.ticks, 0);
  ck_assert_int_eq(qrpc_test_shapes_Callback_register_with(
                       NULL, &shared_callback, &a.at_server),
                   QRPC_EINVAL);
  ck_assert_int_eq(
      qrpc_test_shapes_Callback_register_client_with(a.cli, NULL, NULL),
      QRPC_EINVAL);
  qrpc_client_free(a.cli);
  qrpc_client_free(b.cli);
  qrpc_server_free(a.srv);
  qrpc_server_free(b.srv);
}
END_TEST

/* ---- Pinned ids --------------------------------------------------------- */

START_TEST(test_pinned_id) {
  /* The typed stub and a raw call by the pinned number reach the same
   * handler. */
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = 21;
  Num *reply = NULL;
  int status = -1;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Pinned_sync(loop, cli, &n, QT_WAIT_MS,
                                                     &reply, &status),
                   0);
  ck_assert_int_eq(status, QRPC_STATUS_OK);
  ck_assert_int_eq(reply->value, 42);
  protobuf_c_message_free_unpacked(&reply->base, NULL);

  uint8_t buf[32];
  size_t len = protobuf_c_message_pack(&n.base, buf);
  raw_rec r;
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(qrpc_client_call(cli, 5, buf, len, NULL, &raw_cbs, &r, NULL),
                   0);
  ck_assert(qt_run_until(loop, raw_done_pred, &r, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert_int_eq(sv.pinned, 2);
}
END_TEST

/* ---- Bytes that do not decode ------------------------------------------- */

START_TEST(test_undecodable_request) {
  raw_rec r;
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(qrpc_client_call(cli, qrpc_test_shapes_Calc_Add_METHOD_ID,
                                    garbage, sizeof(garbage), NULL, &raw_cbs,
                                    &r, NULL),
                   0);
  ck_assert(qt_run_until(loop, raw_done_pred, &r, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert(strstr(r.detail, "qrpc.test.shapes.AddRequest") != NULL);
  ck_assert_int_eq(sv.add, 0);

  /* Server streaming: refused the same way, no handler. */
  memset(&r, 0, sizeof(r));
  ck_assert_int_eq(
      qrpc_client_stream(cli, qrpc_test_shapes_Calc_Count_METHOD_ID,
                         QRPC_SHAPE_SERVER_STREAM, garbage, sizeof(garbage),
                         NULL, &raw_cbs, &r, NULL),
      0);
  ck_assert(qt_run_until(loop, raw_done_pred, &r, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert_int_eq(sv.count, 0);

  /* A NOTIFY that does not decode is dropped. */
  ck_assert_int_eq(qrpc_client_notify(cli, qrpc_test_shapes_Calc_Note_METHOD_ID,
                                      garbage, sizeof(garbage)),
                   0);
  qt_run_for(loop, 100);
  ck_assert_int_eq(sv.notes, 0);
}
END_TEST

START_TEST(test_undecodable_item) {
  /* An item of a client streaming call that does not decode: the handler
   * hears INVALID_ARGUMENT through on_cancel, the caller gets it too. */
  raw_rec r;
  memset(&r, 0, sizeof(r));
  qrpc_call *call = NULL;
  ck_assert_int_eq(qrpc_client_stream(cli, qrpc_test_shapes_Calc_Sum_METHOD_ID,
                                      QRPC_SHAPE_CLIENT_STREAM, NULL, 0, NULL,
                                      &raw_cbs, &r, &call),
                   0);
  Num n = QRPC__TEST__COMMON__NUM__INIT;
  n.value = 3;
  uint8_t buf[32];
  size_t len = protobuf_c_message_pack(&n.base, buf);
  ck_assert_int_eq(qrpc_call_send(call, buf, len), 0);
  ck_assert_int_eq(qrpc_call_send(call, garbage, sizeof(garbage)), 0);
  ck_assert(qt_run_until(loop, raw_done_pred, &r, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert(strstr(r.detail, "qrpc.test.common.Num") != NULL);
  ck_assert_int_eq(sv.sum_items, 1);
  ck_assert_int_eq(sv.cancels, 1);
  ck_assert_int_eq(sv.last_cancel_status, QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert_int_eq(sv.streams_freed, 1);
}
END_TEST

/* Raw handlers that answer with bytes no Num or Deep decodes from. */
static void bad_reply(qrpc_req *req, const uint8_t *p, size_t n, void *ud) {
  qrpc_req_reply(req, garbage, sizeof(garbage));
}

static void bad_items(qrpc_req *req, const uint8_t *p, size_t n, void *ud) {
  uint8_t buf[32];
  Num num = QRPC__TEST__COMMON__NUM__INIT;
  size_t len = protobuf_c_message_pack(&num.base, buf);
  qrpc_req_send(req, buf, len);
  qrpc_req_send(req, garbage, sizeof(garbage));
  qrpc_req_send(req, buf, len);
  qrpc_req_end(req);
}

START_TEST(test_undecodable_answers) {
  /* Replace the typed handlers with raw ones answering garbage. */
  ck_assert_int_eq(qrpc_server_register(srv,
                                        qrpc_test_shapes_Calc_Nest_METHOD_ID,
                                        QRPC_SHAPE_UNARY, bad_reply, NULL),
                   0);
  ck_assert_int_eq(
      qrpc_server_register(srv, qrpc_test_shapes_Calc_Count_METHOD_ID,
                           QRPC_SHAPE_SERVER_STREAM, bad_items, NULL),
      0);
  Inner in = QRPC__TEST__COMMON__OUTER__INNER__INIT;
  Deep *deep = (Deep *)&in;
  int status = -1;
  ck_assert_int_eq(qrpc_test_shapes_Calc_Nest_sync(loop, cli, &in, QT_WAIT_MS,
                                                   &deep, &status),
                   0);
  ck_assert_int_eq(status, QRPC_STATUS_INTERNAL);
  ck_assert_ptr_null(deep);

  /* The streaming caller gets the good item before, none after, and
   * INTERNAL naming the type. */
  CountRequest q = QRPC__TEST__SHAPES__COUNT_REQUEST__INIT;
  num_rec r;
  memset(&r, 0, sizeof(r));
  qrpc_test_shapes_Calc_Count_callbacks cbs = {.on_item = num_item,
                                               .on_done = items_done};
  ck_assert_int_eq(qrpc_test_shapes_Calc_Count(cli, &q, NULL, &cbs, &r, NULL),
                   0);
  wait_done(&r);
  ck_assert_int_eq(r.items, 1);
  ck_assert_int_eq(r.status, QRPC_STATUS_INTERNAL);
  ck_assert(r.local);
  ck_assert(strstr(r.detail, "qrpc.test.common.Num") != NULL);
}
END_TEST

/* ---- Names and imports -------------------------------------------------- */

typedef struct int_rec {
  int done;
  int status;
  int32_t code;
} int_rec;

static void int_done(qrpc_call *call, const Int *reply, const qrpc_result *res,
                     void *ud) {
  int_rec *r = ud;
  r->done++;
  r->status = res->status;
  r->code = reply ? reply->int_ : -1;
}

/* Calls one unary method of the names file and returns the code of the
 * handler that answered. */
#define CALL_NAME(fn)                                                          \
  do {                                                                         \
    Int q = INT__INIT;                                                         \
    int_rec r = {0, 0, 0};                                                     \
    ck_assert_int_eq(fn(cli, &q, NULL, int_done, &r, NULL), 0);                \
    ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));               \
    ck_assert_int_eq(r.status, QRPC_STATUS_OK);                                \
    got = r.code;                                                              \
  } while (0)

START_TEST(test_names) {
  int got = 0;
  CALL_NAME(struct_int_);
  ck_assert_int_eq(got, N_INT);
  CALL_NAME(struct_register_);
  ck_assert_int_eq(got, N_REGISTER);
  CALL_NAME(struct_Get);
  ck_assert_int_eq(got, N_GET_UPPER);
  CALL_NAME(struct_get);
  ck_assert_int_eq(got, N_GET_LOWER);
  CALL_NAME(struct_GET);
  ck_assert_int_eq(got, N_GET_ALL);
  CALL_NAME(struct_handlers_);
  ck_assert_int_eq(got, N_HANDLERS);
  CALL_NAME(struct_user_data_);
  ck_assert_int_eq(got, N_USER_DATA);
  CALL_NAME(struct_NULL_);
  ck_assert_int_eq(got, N_NULL);
  CALL_NAME(switch_default_);
  ck_assert_int_eq(got, N_DEFAULT);
  CALL_NAME(Case_Which);
  ck_assert_int_eq(got, N_CASE_UPPER);
  CALL_NAME(case_Which);
  ck_assert_int_eq(got, N_CASE_LOWER);

  /* A bidi method named class. */
  num_rec r;
  memset(&r, 0, sizeof(r));
  struct_class__callbacks cbs = {.on_done = items_done};
  qrpc_call *call = NULL;
  ck_assert_int_eq(struct_class_(cli, NULL, &cbs, &r, &call), 0);
  Int q = INT__INIT;
  q.int_ = 1;
  ck_assert_int_eq(struct_class__send(call, &q), 0);
  ck_assert_int_eq(qrpc_call_end(call), 0);
  wait_done(&r);
  ck_assert_int_eq(r.status, QRPC_STATUS_OK);
  ck_assert_int_eq(sv.names[N_CLASS], 1);
}
END_TEST

START_TEST(test_imports) {
  AddRequest q = QRPC__TEST__SHAPES__ADD_REQUEST__INIT;
  q.a = 6;
  q.b = 7;
  Num *reply = NULL;
  int status = -1;
  ck_assert_int_eq(qrpc_test_imports_Relay_Forward_sync(
                       loop, cli, &q, QT_WAIT_MS, &reply, &status),
                   0);
  ck_assert_int_eq(status, QRPC_STATUS_OK);
  ck_assert_int_eq(reply->value, 42);
  protobuf_c_message_free_unpacked(&reply->base, NULL);
  ck_assert_int_eq(sv.forwards, 1);
}
END_TEST

/* ---- Blocking calls that cannot finish ---------------------------------- */

static void hold_forever(qrpc_req *req, const uint8_t *p, size_t n, void *ud) {
  static const qrpc_req_callbacks cbs = {0};
  qrpc_req_set_callbacks(req, &cbs, NULL); /* keeps it; the engine frees */
}

START_TEST(test_sync_deadline) {
  ck_assert_int_eq(qrpc_server_register(srv,
                                        qrpc_test_shapes_Calc_Add_METHOD_ID,
                                        QRPC_SHAPE_UNARY, hold_forever, NULL),
                   0);
  AddRequest q = QRPC__TEST__SHAPES__ADD_REQUEST__INIT;
  Num *reply = NULL;
  int status = -1;
  uint64_t t0 = qt_now_ms();
  ck_assert_int_eq(
      qrpc_test_shapes_Calc_Add_sync(loop, cli, &q, 200, &reply, &status), 0);
  uint64_t took = qt_now_ms() - t0;
  ck_assert_int_eq(status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_ptr_null(reply);
  ck_assert_uint_ge(took, 150);
  ck_assert_uint_lt(took, 3000);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("codegen");
  TCase *t = tcase_create("e2e");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_add_test(t, test_method_ids);
  tcase_add_test(t, test_method_flags);
  tcase_add_test(t, test_unary);
  tcase_add_test(t, test_unary_sync);
  tcase_add_test(t, test_argument_checks);
  tcase_add_test(t, test_server_streaming);
  tcase_add_test(t, test_idempotent_methods);
  tcase_add_test(t, test_idempotent_in_0rtt);
  tcase_add_test(t, test_client_streaming);
  tcase_add_test(t, test_client_streaming_flow_control);
  tcase_add_test(t, test_client_streaming_cancel);
  tcase_add_test(t, test_bidi_streaming);
  tcase_add_test(t, test_notify);
  tcase_add_test(t, test_server_calls_client);
  tcase_add_test(t, test_shared_handlers_own_user_data);
  tcase_add_test(t, test_pinned_id);
  tcase_add_test(t, test_undecodable_request);
  tcase_add_test(t, test_undecodable_item);
  tcase_add_test(t, test_undecodable_answers);
  tcase_add_test(t, test_names);
  tcase_add_test(t, test_imports);
  tcase_add_test(t, test_sync_deadline);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
