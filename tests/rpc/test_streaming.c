/*
 * End-to-end streaming calls and notifications: server streaming, client
 * streaming and bidi streaming with 10,000 items each under flow control
 * (QRPC_EAGAIN and on_writable on both ends), a stream that fails midway,
 * cancelling a stream, the argument checks of the streaming API, and
 * NOTIFY in both directions (unknown methods dropped).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"
#include "rpc_harness.h"

#define M_ECHO 1
#define M_SERVER_STREAM 20
#define M_CLIENT_STREAM 21
#define M_BIDI 22
#define M_NOTE 23
#define M_FAIL_STREAM 24
#define M_REJECT_STREAM 25
#define M_EARLY_END 26
#define M_SLOW_STREAM 27
#define M_HOLD_BIDI 28
#define M_CLIENT_NOTE 30
#define M_UNKNOWN 0x2badbeefu

#define ITEMS 10000
#define ITEM_LEN 200
/* Small send buffers, so 10,000 items of 200 bytes (2 MB) must wait for
 * acknowledgements many times on each side. */
#define SEND_BUFFER (16u * 1024u)
#define STREAM_WAIT_MS 30000

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* Item i: its index, then bytes determined by it. */
static void item_fill(uint64_t i, uint8_t *buf) {
  qt_put_be64(buf, i);
  qt_pattern_fill(i, 8, buf + 8, ITEM_LEN - 8);
}

/* 1 if data is exactly item i. */
static int item_is(uint64_t i, const uint8_t *data, size_t len) {
  return len == ITEM_LEN && qt_get_be64(data) == i &&
         qt_pattern_check(i, 8, data + 8, ITEM_LEN - 8);
}

/* ---- Server side ----------------------------------------------------- */

/* Counters the server's handlers share with the test. */
typedef struct srv_stats {
  int calls;
  int send_eagain;
  int send_errors;
  int first_send_error;
  int writables;
  int item_errors; /* out of order or corrupted */
  int items_in;
  int ends_in;
  int cancels;
  int cancel_status;
  int answers;
  int answer_errors;
  int bad_shape;
  int freed; /* per-call states released */
} srv_stats;

/* A server-streaming or bidi call being served. */
typedef struct srv_call {
  srv_stats *st;
  qrpc_req *req;
  uint64_t total;    /* items to send (server streaming) */
  uint64_t next_out; /* next item to send */
  uint64_t next_in;  /* next item expected from the caller */
  uint64_t sum_in;
  uint64_t queued; /* bidi: items received and not yet echoed */
  int fail_after;  /* send this many items, then fail the call */
  int caller_ended;
  int ended;
} srv_call;

static void srv_call_free(srv_call *sc) {
  sc->st->freed++;
  free(sc);
}

static int srv_send(srv_call *sc) {
  uint8_t buf[ITEM_LEN];
  int rv;
  item_fill(sc->next_out, buf);
  rv = qrpc_req_send(sc->req, buf, sizeof(buf));
  if (rv == QRPC_EAGAIN) {
    sc->st->send_eagain++;
  } else if (rv != 0) {
    if (!sc->st->send_errors) sc->st->first_send_error = rv;
    sc->st->send_errors++;
  } else {
    sc->next_out++;
  }
  return rv;
}

/* Server streaming: sends until done or told to wait, then ends. Returns
 * 1 when the request is over (sc freed). */
static int ss_pump(srv_call *sc) {
  while (sc->next_out < sc->total) {
    if (sc->fail_after >= 0 && sc->next_out == (uint64_t)sc->fail_after) {
      if (qrpc_req_error(sc->req, QRPC_STATUS_APP_MIN + 1, "stream broke"))
        sc->st->answer_errors++;
      sc->st->answers++;
      srv_call_free(sc);
      return 1;
    }
    if (srv_send(sc) != 0) return 0;
  }
  if (qrpc_req_end(sc->req) != 0) sc->st->answer_errors++;
  sc->st->answers++;
  srv_call_free(sc);
  return 1;
}

static void srv_on_writable(qrpc_req *req, void *ud);
static void srv_on_cancel(qrpc_req *req, int status, void *ud) {
  (void)req;
  srv_call *sc = ud;
  sc->st->cancels++;
  sc->st->cancel_status = status;
  srv_call_free(sc);
}

/* Bidi: echoes every item received, in order, as send room allows; ends
 * once the caller has ended and everything is echoed. Returns 1 when the
 * request is over (sc freed). */
static int bidi_flush(srv_call *sc) {
  while (sc->next_out < sc->next_in)
    if (srv_send(sc) != 0) return 0;
  if (sc->caller_ended && !sc->ended) {
    sc->ended = 1;
    if (qrpc_req_end(sc->req) != 0) sc->st->answer_errors++;
    sc->st->answers++;
    /* The caller's END is in, so req is released with ours. */
    srv_call_free(sc);
    return 1;
  }
  return 0;
}

static void srv_on_writable(qrpc_req *req, void *ud) {
  srv_call *sc = ud;
  sc->st->writables++;
  if (qrpc_req_shape(req) == QRPC_SHAPE_BIDI_STREAM)
    bidi_flush(sc);
  else
    ss_pump(sc);
}

static void srv_on_item(qrpc_req *req, const uint8_t *data, size_t len,
                        void *ud) {
  srv_call *sc = ud;
  sc->st->items_in++;
  if (!item_is(sc->next_in, data, len)) sc->st->item_errors++;
  sc->sum_in += sc->next_in;
  sc->next_in++;
  if (qrpc_req_shape(req) == QRPC_SHAPE_BIDI_STREAM) bidi_flush(sc);
}

static void srv_on_end(qrpc_req *req, void *ud) {
  srv_call *sc = ud;
  sc->st->ends_in++;
  sc->caller_ended = 1;
  if (qrpc_req_shape(req) == QRPC_SHAPE_BIDI_STREAM) {
    bidi_flush(sc);
    return;
  }
  /* Client streaming: the REPLY carries the count and the sum. */
  {
    uint8_t out[16];
    qt_put_be64(out, sc->next_in);
    qt_put_be64(out + 8, sc->sum_in);
    if (qrpc_req_reply(req, out, sizeof(out)) != 0) sc->st->answer_errors++;
    sc->st->answers++;
    srv_call_free(sc);
  }
}

static const qrpc_req_callbacks srv_req_cbs = {
    .on_item = srv_on_item,
    .on_end = srv_on_end,
    .on_cancel = srv_on_cancel,
    .on_writable = srv_on_writable,
};

static srv_call *srv_call_new(qrpc_req *req, srv_stats *st) {
  srv_call *sc = calloc(1, sizeof(*sc));
  if (!sc) {
    qrpc_req_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED, "test out of memory");
    return NULL;
  }
  sc->st = st;
  sc->req = req;
  sc->fail_after = -1;
  qrpc_req_set_callbacks(req, &srv_req_cbs, sc);
  return sc;
}

/* The request is the number of items to send (big-endian 64). */
static void server_stream_handler(qrpc_req *req, const uint8_t *payload,
                                  size_t len, void *ud) {
  srv_stats *st = ud;
  srv_call *sc;
  st->calls++;
  if (qrpc_req_shape(req) != QRPC_SHAPE_SERVER_STREAM) st->bad_shape++;
  if (len != 8) {
    qrpc_req_error(req, QRPC_STATUS_INVALID_ARGUMENT, "want a count");
    return;
  }
  sc = srv_call_new(req, st);
  if (!sc) return;
  sc->total = qt_get_be64(payload);
  if (qrpc_req_method(req) == M_FAIL_STREAM) sc->fail_after = 10;
  ss_pump(sc);
}

static void client_stream_handler(qrpc_req *req, const uint8_t *payload,
                                  size_t len, void *ud) {
  (void)payload;
  srv_stats *st = ud;
  st->calls++;
  if (qrpc_req_shape(req) != QRPC_SHAPE_CLIENT_STREAM || len != 0)
    st->bad_shape++;
  srv_call_new(req, st);
}

static void bidi_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                         void *ud) {
  (void)payload;
  srv_stats *st = ud;
  st->calls++;
  if (qrpc_req_shape(req) != QRPC_SHAPE_BIDI_STREAM || len != 0)
    st->bad_shape++;
  srv_call_new(req, st);
}

/* Refuses at once, before the caller has sent anything. */
static void reject_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                           void *ud) {
  (void)payload;
  (void)len;
  srv_stats *st = ud;
  st->calls++;
  if (qrpc_req_error(req, QRPC_STATUS_INVALID_ARGUMENT, "no, thanks") != 0)
    st->answer_errors++;
  st->answers++;
}

/* Bidi, the callee's side ends first: two items and END at once, then it
 * only counts what the caller still sends. */
static void early_on_item(qrpc_req *req, const uint8_t *data, size_t len,
                          void *ud) {
  (void)req;
  srv_call *sc = ud;
  sc->st->items_in++;
  if (!item_is(sc->next_in, data, len)) sc->st->item_errors++;
  sc->next_in++;
}

static void early_on_end(qrpc_req *req, void *ud) {
  (void)req;
  srv_call *sc = ud;
  sc->st->ends_in++;
  /* rpc.h: req stayed valid until the caller's END; it is released now. */
  srv_call_free(sc);
}

static void early_end_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                              void *ud) {
  (void)payload;
  (void)len;
  static const qrpc_req_callbacks cbs = {
      .on_item = early_on_item,
      .on_end = early_on_end,
      .on_cancel = srv_on_cancel,
  };
  srv_stats *st = ud;
  srv_call *sc = srv_call_new(req, st);
  st->calls++;
  if (!sc) return;
  qrpc_req_set_callbacks(req, &cbs, sc);
  while (sc->next_out < 2)
    if (srv_send(sc) != 0) break;
  if (qrpc_req_end(req) != 0) st->answer_errors++;
  st->answers++;
}

/* Server streaming that sends three items and then nothing, until the
 * call's deadline takes it away. */
static void slow_stream_handler(qrpc_req *req, const uint8_t *payload,
                                size_t len, void *ud) {
  (void)payload;
  (void)len;
  srv_stats *st = ud;
  srv_call *sc = srv_call_new(req, st);
  st->calls++;
  if (!sc) return;
  while (sc->next_out < 3)
    if (srv_send(sc) != 0) break;
}

typedef struct env {
  qrpc_server *srv;
  char addr[64];
  srv_stats st;
  qt_rpc_peers peers;
  int echoes;
  qt_holder holder;
  qt_rpc_client cl;
} env;

static void env_start(env *e) {
  qrpc_server_opts so;
  qrpc_client_opts co;
  memset(e, 0, sizeof(*e));
  qt_holder_init(&e->holder);
  qrpc_server_opts_default(&so);
  so.endpoint.conn.stream_send_buffer = SEND_BUFFER;
  qt_rpc_peers_install(&so, &e->peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &so, &e->srv,
                                       e->addr, sizeof(e->addr)),
                   0);
  const struct {
    uint32_t id;
    qrpc_shape shape;
    qrpc_handler_fn fn;
    void *ud;
  } methods[] = {
      {M_ECHO, QRPC_SHAPE_UNARY, qt_rpc_echo, &e->echoes},
      {M_SERVER_STREAM, QRPC_SHAPE_SERVER_STREAM, server_stream_handler, &e->st},
      {M_FAIL_STREAM, QRPC_SHAPE_SERVER_STREAM, server_stream_handler, &e->st},
      {M_CLIENT_STREAM, QRPC_SHAPE_CLIENT_STREAM, client_stream_handler, &e->st},
      {M_REJECT_STREAM, QRPC_SHAPE_CLIENT_STREAM, reject_handler, &e->st},
      {M_BIDI, QRPC_SHAPE_BIDI_STREAM, bidi_handler, &e->st},
      {M_EARLY_END, QRPC_SHAPE_BIDI_STREAM, early_end_handler, &e->st},
      {M_HOLD_BIDI, QRPC_SHAPE_BIDI_STREAM, qt_holder_handler, &e->holder},
      {M_SLOW_STREAM, QRPC_SHAPE_SERVER_STREAM, slow_stream_handler, &e->st},
  };
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
    ck_assert_int_eq(qrpc_server_register(e->srv, methods[i].id,
                                          methods[i].shape, methods[i].fn,
                                          methods[i].ud),
                     0);
  qrpc_client_opts_default(&co);
  co.conn.stream_send_buffer = SEND_BUFFER;
  ck_assert_int_eq(qt_rpc_client_start(&e->cl, loop, e->addr, ctls, &co), 0);
  ck_assert(qt_rpc_client_wait_connects(&e->cl, 1, QT_WAIT_MS));
}

static void env_finish(env *e) {
  ck_assert(qt_rpc_close_all(loop, &e->srv, &e->cl, 1));
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
}

/* ---- Client side ----------------------------------------------------- */

typedef struct cli_call {
  qrpc_call *call;
  uint64_t total; /* items to send */
  uint64_t next_out;
  uint64_t next_in; /* next item expected from the callee */
  int item_errors;
  int eagain;
  int writables;
  int send_errors;
  int first_send_error;
  int end_rv;
  int ended;
  int cancel_after; /* cancel from on_item after this many; -1: never */
  int cancel_rv;
  int done;
  int after_done;
  int status;
  int local;
  char detail[64];
  size_t detail_len;
  uint8_t reply[16];
  size_t reply_len;
} cli_call;

static void cli_init(cli_call *c, uint64_t total) {
  memset(c, 0, sizeof(*c));
  c->total = total;
  c->cancel_after = -1;
  c->end_rv = 1; /* not called yet */
}

/* Sends until done or told to wait; ends the sending side after the last
 * item. */
static void cli_pump(cli_call *c) {
  uint8_t buf[ITEM_LEN];
  while (c->next_out < c->total) {
    int rv;
    item_fill(c->next_out, buf);
    rv = qrpc_call_send(c->call, buf, sizeof(buf));
    if (rv == QRPC_EAGAIN) {
      c->eagain++;
      return;
    }
    if (rv != 0) {
      if (!c->send_errors) c->first_send_error = rv;
      c->send_errors++;
      return;
    }
    c->next_out++;
  }
  if (!c->ended) {
    c->ended = 1;
    c->end_rv = qrpc_call_end(c->call);
  }
}

static void cli_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  cli_call *c = ud;
  if (c->done) c->after_done++;
  c->done++;
  c->call = NULL;
  c->status = res->status;
  c->local = res->local;
  c->detail_len =
      res->detail_len < sizeof(c->detail) ? res->detail_len : sizeof(c->detail);
  if (res->detail && c->detail_len)
    memcpy(c->detail, res->detail, c->detail_len);
  c->reply_len = res->len;
  if (res->payload && res->len <= sizeof(c->reply))
    memcpy(c->reply, res->payload, res->len);
}

static void cli_on_item(qrpc_call *call, const uint8_t *data, size_t len,
                        void *ud) {
  cli_call *c = ud;
  if (c->done) c->after_done++;
  if (!item_is(c->next_in, data, len)) c->item_errors++;
  c->next_in++;
  if (c->cancel_after >= 0 && c->next_in == (uint64_t)c->cancel_after)
    c->cancel_rv = qrpc_call_cancel(call);
}

static void cli_on_writable(qrpc_call *call, void *ud) {
  (void)call;
  cli_call *c = ud;
  if (c->done) c->after_done++;
  c->writables++;
  cli_pump(c);
}

static const qrpc_call_callbacks cli_cbs = {
    .on_done = cli_on_done,
    .on_item = cli_on_item,
    .on_writable = cli_on_writable,
};

static int start_stream(env *e, cli_call *c, uint32_t method, qrpc_shape shape,
                        const void *payload, size_t len) {
  return qrpc_client_stream(e->cl.cli, method, shape, payload, len, NULL,
                            &cli_cbs, c, &c->call);
}

/* ---- The four shapes ------------------------------------------------- */

START_TEST(test_server_streaming) {
  env e;
  cli_call c;
  uint8_t req[8];

  env_start(&e);
  cli_init(&c, 0);
  qt_put_be64(req, ITEMS);
  ck_assert_int_eq(start_stream(&e, &c, M_SERVER_STREAM,
                                QRPC_SHAPE_SERVER_STREAM, req, sizeof(req)),
                   0);
  ck_assert(qt_run_until_count(loop, &c.done, 1, STREAM_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_msg(c.status == QRPC_STATUS_OK, "status %s",
                qrpc_status_name(c.status));
  ck_assert_int_eq(c.done, 1);
  ck_assert_int_eq(c.after_done, 0);
  ck_assert_uint_eq(c.next_in, ITEMS);
  ck_assert_int_eq(c.item_errors, 0);
  ck_assert_int_eq(e.st.calls, 1);
  ck_assert_int_eq(e.st.bad_shape, 0);
  ck_assert_int_eq(e.st.send_errors, 0);
  /* The server had to wait for room and was told when there was some. */
  ck_assert_int_gt(e.st.send_eagain, 0);
  ck_assert_int_gt(e.st.writables, 0);
  ck_assert_int_eq(e.st.answers, 1);
  ck_assert_int_eq(e.st.answer_errors, 0);
  ck_assert_int_eq(e.st.cancels, 0);
  ck_assert_int_eq(e.st.freed, 1);
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
}
END_TEST

START_TEST(test_client_streaming) {
  env e;
  cli_call c;
  uint64_t sum = (uint64_t)ITEMS * (ITEMS - 1) / 2;

  env_start(&e);
  cli_init(&c, ITEMS);
  ck_assert_int_eq(
      start_stream(&e, &c, M_CLIENT_STREAM, QRPC_SHAPE_CLIENT_STREAM, NULL, 0),
      0);
  cli_pump(&c);
  ck_assert(qt_run_until_count(loop, &c.done, 1, STREAM_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_msg(c.status == QRPC_STATUS_OK, "status %s",
                qrpc_status_name(c.status));
  ck_assert_int_eq(c.done, 1);
  ck_assert_int_eq(c.after_done, 0);
  ck_assert_int_eq(c.send_errors, 0);
  ck_assert_uint_eq(c.next_out, ITEMS);
  ck_assert_int_eq(c.end_rv, 0);
  /* QRPC_EAGAIN happened, and every one was followed by on_writable. */
  ck_assert_int_gt(c.eagain, 0);
  ck_assert_int_ge(c.writables, c.eagain);
  ck_assert_uint_eq(c.reply_len, 16);
  ck_assert_uint_eq(qt_get_be64(c.reply), ITEMS);
  ck_assert_uint_eq(qt_get_be64(c.reply + 8), sum);
  ck_assert_int_eq(e.st.items_in, ITEMS);
  ck_assert_int_eq(e.st.item_errors, 0);
  ck_assert_int_eq(e.st.ends_in, 1);
  ck_assert_int_eq(e.st.bad_shape, 0);
  ck_assert_int_eq(e.st.freed, 1);
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
}
END_TEST

START_TEST(test_bidi_streaming) {
  env e;
  cli_call c;

  env_start(&e);
  cli_init(&c, ITEMS);
  ck_assert_int_eq(
      start_stream(&e, &c, M_BIDI, QRPC_SHAPE_BIDI_STREAM, NULL, 0), 0);
  cli_pump(&c);
  ck_assert(qt_run_until_count(loop, &c.done, 1, STREAM_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_msg(c.status == QRPC_STATUS_OK, "status %s after %llu items in",
                qrpc_status_name(c.status), (unsigned long long)c.next_in);
  ck_assert_int_eq(c.done, 1);
  ck_assert_int_eq(c.after_done, 0);
  ck_assert_int_eq(c.send_errors, 0);
  ck_assert_int_eq(c.end_rv, 0);
  ck_assert_uint_eq(c.next_out, ITEMS);
  ck_assert_uint_eq(c.next_in, ITEMS);
  ck_assert_int_eq(c.item_errors, 0);
  ck_assert_int_gt(c.eagain, 0);
  ck_assert_int_eq(e.st.items_in, ITEMS);
  ck_assert_int_eq(e.st.item_errors, 0);
  ck_assert_int_eq(e.st.ends_in, 1);
  ck_assert_int_eq(e.st.send_errors, 0);
  ck_assert_int_eq(e.st.answers, 1);
  ck_assert_int_eq(e.st.answer_errors, 0);
  ck_assert_int_eq(e.st.freed, 1);
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
}
END_TEST

/* ---- Streams that end early ------------------------------------------ */

START_TEST(test_server_stream_fails_midway) {
  env e;
  cli_call c;
  uint8_t req[8];
  static const char detail[] = "stream broke";

  env_start(&e);
  cli_init(&c, 0);
  qt_put_be64(req, ITEMS);
  ck_assert_int_eq(start_stream(&e, &c, M_FAIL_STREAM, QRPC_SHAPE_SERVER_STREAM,
                                req, sizeof(req)),
                   0);
  ck_assert(qt_run_until_count(loop, &c.done, 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(c.done, 1);
  ck_assert_int_eq(c.status, QRPC_STATUS_APP_MIN + 1);
  ck_assert_int_eq(c.local, 0);
  ck_assert_uint_eq(c.detail_len, strlen(detail));
  ck_assert_mem_eq(c.detail, detail, strlen(detail));
  /* Items sent before the error arrive first, all of them. */
  ck_assert_uint_eq(c.next_in, 10);
  ck_assert_int_eq(c.item_errors, 0);
  ck_assert_int_eq(c.after_done, 0);
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
}
END_TEST

START_TEST(test_client_stream_rejected_early) {
  env e;
  cli_call c;
  int i;

  env_start(&e);
  cli_init(&c, 0);
  ck_assert_int_eq(
      start_stream(&e, &c, M_REJECT_STREAM, QRPC_SHAPE_CLIENT_STREAM, NULL, 0),
      0);
  for (i = 0; i < 3; i++) {
    uint8_t buf[ITEM_LEN];
    item_fill((uint64_t)i, buf);
    ck_assert_int_eq(qrpc_call_send(c.call, buf, sizeof(buf)), 0);
  }
  ck_assert(qt_run_until_count(loop, &c.done, 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(c.done, 1);
  ck_assert_int_eq(c.status, QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert_int_eq(c.local, 0);
  ck_assert_int_eq(e.st.calls, 1);
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
}
END_TEST

START_TEST(test_cancel_server_stream) {
  env e;
  cli_call c;
  uint8_t req[8];

  env_start(&e);
  cli_init(&c, 0);
  c.cancel_after = 100;
  /* Far more than will ever be sent: only the cancel ends it. */
  qt_put_be64(req, UINT64_C(1) << 40);
  ck_assert_int_eq(start_stream(&e, &c, M_SERVER_STREAM,
                                QRPC_SHAPE_SERVER_STREAM, req, sizeof(req)),
                   0);
  ck_assert(qt_run_until_count(loop, &c.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &e.st.cancels, 1, QT_WAIT_MS));
  qt_run_for(loop, 200);
  ck_assert_int_eq(c.cancel_rv, 0);
  ck_assert_int_eq(c.done, 1);
  ck_assert_int_eq(c.status, QRPC_STATUS_CANCELLED);
  ck_assert_int_eq(c.local, 1);
  ck_assert_int_eq(c.after_done, 0);
  ck_assert_uint_ge(c.next_in, 100);
  ck_assert_int_eq(c.item_errors, 0);
  ck_assert_int_eq(e.st.cancels, 1);
  ck_assert_int_eq(e.st.cancel_status, QRPC_STATUS_CANCELLED);
  ck_assert_int_eq(e.st.freed, 1);
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
}
END_TEST

START_TEST(test_bidi_callee_ends_first) {
  env e;
  cli_call c;

  env_start(&e);
  cli_init(&c, 50);
  ck_assert_int_eq(
      start_stream(&e, &c, M_EARLY_END, QRPC_SHAPE_BIDI_STREAM, NULL, 0), 0);
  /* The callee's items and END arrive; the call is not over while the
   * caller has not ended. */
  ck_assert(qt_run_until_count(loop, &e.st.answers, 1, QT_WAIT_MS));
  qt_run_for(loop, 200);
  ck_assert_uint_eq(c.next_in, 2);
  ck_assert_int_eq(c.done, 0);
  /* The caller still sends, then ends: now it is over, OK. */
  cli_pump(&c);
  ck_assert(qt_run_until_count(loop, &c.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &e.st.freed, 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_msg(c.status == QRPC_STATUS_OK, "status %s",
                qrpc_status_name(c.status));
  ck_assert_int_eq(c.done, 1);
  ck_assert_int_eq(c.after_done, 0);
  ck_assert_int_eq(c.send_errors, 0);
  ck_assert_int_eq(c.end_rv, 0);
  ck_assert_int_eq(c.item_errors, 0);
  ck_assert_int_eq(e.st.items_in, 50);
  ck_assert_int_eq(e.st.item_errors, 0);
  ck_assert_int_eq(e.st.ends_in, 1);
  ck_assert_int_eq(e.st.cancels, 0);
  ck_assert_int_eq(e.st.answer_errors, 0);
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
}
END_TEST

START_TEST(test_stream_deadline) {
  env e;
  cli_call c;
  qrpc_call_opts o = qt_call_opts(200, -1);
  uint64_t t0;

  env_start(&e);
  cli_init(&c, 0);
  t0 = qt_now_ms();
  ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_SLOW_STREAM,
                                      QRPC_SHAPE_SERVER_STREAM, NULL, 0, &o,
                                      &cli_cbs, &c, &c.call),
                   0);
  ck_assert(qt_run_until_count(loop, &c.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &e.st.cancels, 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_uint_ge(qt_now_ms() - t0, 150);
  ck_assert_int_eq(c.done, 1);
  ck_assert_int_eq(c.status, QRPC_STATUS_DEADLINE_EXCEEDED);
  ck_assert_int_eq(c.local, 1);
  ck_assert_uint_eq(c.next_in, 3);
  ck_assert_int_eq(c.item_errors, 0);
  ck_assert_int_eq(c.after_done, 0);
  ck_assert_int_eq(e.st.cancels, 1);
  ck_assert(e.st.cancel_status == QRPC_STATUS_DEADLINE_EXCEEDED ||
            e.st.cancel_status == QRPC_STATUS_CANCELLED);
  ck_assert_int_eq(e.st.freed, 1);
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
}
END_TEST

/* Each streaming call takes a stream of its own: past the server's
 * stream limit a new one is refused with QRPC_ELIMIT, and the credit comes
 * back as calls end. */
#define LIMIT_TRIES 200

typedef struct limit_run {
  qrpc_client *cli;
  qt_call_rec recs[2 * LIMIT_TRIES];
  qt_call_tally tally;
  int started;
  int target;
  int elimit;
  int other_error;
} limit_run;

/* Starts bidi calls until target or the limit; returns 1 at target. */
static int limit_fill(void *arg) {
  limit_run *lr = arg;
  while (lr->started < lr->target && !lr->other_error) {
    qt_call_rec *r = &lr->recs[lr->started];
    int rv;
    qt_call_rec_init(r, &lr->tally);
    rv = qrpc_client_stream(lr->cli, M_HOLD_BIDI, QRPC_SHAPE_BIDI_STREAM, NULL,
                            0, NULL, &qt_call_rec_cbs, r, &r->call);
    if (rv == QRPC_ELIMIT) {
      lr->elimit++;
      return 0;
    }
    if (rv != 0) {
      lr->other_error = rv;
      return 0;
    }
    lr->started++;
  }
  return lr->started >= lr->target;
}

static void limit_cancel(limit_run *lr, int from, int to) {
  int i;
  for (i = from; i < to; i++)
    ck_assert_int_eq(qrpc_call_cancel(lr->recs[i].call), 0);
}

START_TEST(test_stream_limit) {
  env e;
  limit_run *lr = calloc(1, sizeof(*lr));
  int first;

  ck_assert_ptr_nonnull(lr);
  env_start(&e);
  lr->cli = e.cl.cli;
  lr->target = LIMIT_TRIES;
  ck_assert_int_eq(limit_fill(lr), 0);
  ck_assert_int_eq(lr->other_error, 0);
  ck_assert_int_eq(lr->elimit, 1);
  first = lr->started;
  /* The protocol promises at least 100; the default is exactly that. */
  ck_assert_int_ge(first, 90);
  ck_assert_int_le(first, 100);
  ck_assert(qt_run_until_count(loop, &e.holder.received, first, QT_WAIT_MS));

  /* Ending the calls gives the streams back. */
  limit_cancel(lr, 0, first);
  ck_assert(qt_run_until_count(loop, &lr->tally.done, first, QT_WAIT_MS));
  ck_assert_int_eq(lr->tally.by_status[QRPC_STATUS_CANCELLED], first);
  ck_assert(qt_run_until_count(loop, &e.holder.cancels, first, QT_WAIT_MS));
  lr->target = 2 * first;
  ck_assert_msg(qt_run_until(loop, limit_fill, lr, QT_WAIT_MS),
                "only %d of %d more streaming calls started (%d refused)",
                lr->started - first, first, lr->elimit);
  ck_assert_int_eq(lr->other_error, 0);
  ck_assert(
      qt_run_until_count(loop, &e.holder.received, 2 * first, QT_WAIT_MS));
  limit_cancel(lr, first, 2 * first);
  ck_assert(qt_run_until_count(loop, &lr->tally.done, 2 * first, QT_WAIT_MS));
  ck_assert_int_eq(lr->tally.by_status[QRPC_STATUS_CANCELLED], 2 * first);
  ck_assert(qt_run_until_count(loop, &e.holder.cancels, 2 * first, QT_WAIT_MS));
  ck_assert_int_eq(e.holder.held, 0);
  ck_assert_int_eq(e.cl.disconnects, 0);
  free(lr);
  env_finish(&e);
}
END_TEST

START_TEST(test_streaming_api_errors) {
  env e;
  cli_call ss, cs, u;
  uint8_t req[8], buf[ITEM_LEN];
  qt_call_rec r;

  env_start(&e);
  item_fill(0, buf);
  /* Client and bidi streaming start with an empty request. */
  cli_init(&cs, 0);
  ck_assert_int_eq(
      start_stream(&e, &cs, M_CLIENT_STREAM, QRPC_SHAPE_CLIENT_STREAM, "x", 1),
      QRPC_EINVAL);
  ck_assert_int_eq(
      start_stream(&e, &cs, M_BIDI, QRPC_SHAPE_BIDI_STREAM, "x", 1),
      QRPC_EINVAL);

  /* A server-streaming call has nothing to send or end. */
  cli_init(&ss, 0);
  qt_put_be64(req, 5);
  ck_assert_int_eq(start_stream(&e, &ss, M_SERVER_STREAM,
                                QRPC_SHAPE_SERVER_STREAM, req, sizeof(req)),
                   0);
  ck_assert_int_eq(qrpc_call_send(ss.call, buf, sizeof(buf)), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_call_end(ss.call), QRPC_EINVAL);

  /* Nor has a unary call. */
  cli_init(&u, 0);
  ck_assert_int_eq(
      qrpc_client_call(e.cl.cli, M_ECHO, "u", 1, NULL, &cli_cbs, &u, &u.call),
      0);
  ck_assert_int_eq(qrpc_call_send(u.call, buf, sizeof(buf)), QRPC_EINVAL);

  /* After END, neither sending nor ending again. */
  cli_init(&cs, 0);
  ck_assert_int_eq(
      start_stream(&e, &cs, M_CLIENT_STREAM, QRPC_SHAPE_CLIENT_STREAM, NULL, 0),
      0);
  ck_assert_int_eq(qrpc_call_send(cs.call, buf, sizeof(buf)), 0);
  ck_assert_int_eq(qrpc_call_end(cs.call), 0);
  ck_assert_int_eq(qrpc_call_end(cs.call), QRPC_ESTATE);
  ck_assert_int_eq(qrpc_call_send(cs.call, buf, sizeof(buf)), QRPC_ESTATE);

  /* A shape that does not exist. */
  ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_ECHO, (qrpc_shape)9, NULL, 0,
                                      NULL, &cli_cbs, &u, NULL),
                   QRPC_EINVAL);

  ck_assert(qt_run_until_count(loop, &ss.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &u.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &cs.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(ss.status, QRPC_STATUS_OK);
  ck_assert_uint_eq(ss.next_in, 5);
  ck_assert_int_eq(u.status, QRPC_STATUS_OK);
  ck_assert_int_eq(cs.status, QRPC_STATUS_OK);
  ck_assert_uint_eq(qt_get_be64(cs.reply), 1);

  ck_assert_int_eq(qt_call_rec_start(&r, NULL, e.cl.cli, M_ECHO, "ok", 2, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&r, "ok", 2));
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
}
END_TEST

/* ---- NOTIFY ---------------------------------------------------------- */

#define NOTES 10

typedef struct notes {
  int calls;
  int notify_flag; /* qrpc_req_is_notify() was true */
  int bad_payload;
  int replied;
  int reply_rv_bad;
  int wrong_method;
} notes;

static void note_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                         void *ud) {
  notes *n = ud;
  int k = n->calls++;
  if (qrpc_req_is_notify(req)) n->notify_flag++;
  if (qrpc_req_method(req) != M_NOTE && qrpc_req_method(req) != M_CLIENT_NOTE)
    n->wrong_method++;
  if (len < 5 || memcmp(payload, "note-", 5) != 0) n->bad_payload++;
  /* Half of them answer anyway: rpc.h says the answer is discarded. */
  if (k % 2 == 0) {
    n->replied++;
    qrpc_req_reply(req, "ignored", 7);
  }
}

START_TEST(test_notify) {
  env e;
  notes sn, cn;
  qt_call_rec r;
  char buf[32];
  int i;

  memset(&sn, 0, sizeof(sn));
  memset(&cn, 0, sizeof(cn));
  env_start(&e);
  ck_assert_int_eq(
      qrpc_server_register(e.srv, M_NOTE, QRPC_SHAPE_UNARY, note_handler, &sn),
      0);
  ck_assert_int_eq(qrpc_client_register(e.cl.cli, M_CLIENT_NOTE,
                                        QRPC_SHAPE_UNARY, note_handler, &cn),
                   0);
  for (i = 0; i < NOTES; i++) {
    int n = snprintf(buf, sizeof(buf), "note-%d", i);
    ck_assert_int_eq(qrpc_client_notify(e.cl.cli, M_NOTE, buf, (size_t)n), 0);
    /* Nobody serves this one: dropped, not a protocol error. */
    ck_assert_int_eq(qrpc_client_notify(e.cl.cli, M_UNKNOWN, buf, (size_t)n),
                     0);
  }
  ck_assert(qt_run_until_count(loop, &sn.calls, NOTES, QT_WAIT_MS));

  /* The other direction, server to client, through the peer. */
  ck_assert_ptr_nonnull(e.peers.last);
  for (i = 0; i < NOTES; i++) {
    int n = snprintf(buf, sizeof(buf), "note-%d", i);
    ck_assert_int_eq(
        qrpc_peer_notify(e.peers.last, M_CLIENT_NOTE, buf, (size_t)n), 0);
    ck_assert_int_eq(qrpc_peer_notify(e.peers.last, M_UNKNOWN, buf, (size_t)n),
                     0);
  }
  ck_assert(qt_run_until_count(loop, &cn.calls, NOTES, QT_WAIT_MS));

  /* Calls still work afterwards, and nothing else arrived. */
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, e.cl.cli, M_ECHO, "after", 5, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&r, "after", 5));
  qt_run_for(loop, 200);
  ck_assert_int_eq(sn.calls, NOTES);
  ck_assert_int_eq(sn.notify_flag, NOTES);
  ck_assert_int_eq(sn.bad_payload, 0);
  ck_assert_int_eq(sn.wrong_method, 0);
  ck_assert_int_eq(cn.calls, NOTES);
  ck_assert_int_eq(cn.notify_flag, NOTES);
  ck_assert_int_eq(cn.bad_payload, 0);
  ck_assert_int_eq(e.echoes, 1);
  ck_assert_int_eq(e.cl.disconnects, 0);
  ck_assert_int_eq(e.peers.closed, 0);
  env_finish(&e);
}
END_TEST

static Suite *streaming_suite(void) {
  Suite *s = suite_create("rpc_streaming");
  TCase *tc = tcase_create("streaming");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 90);
  tcase_add_test(tc, test_server_streaming);
  tcase_add_test(tc, test_client_streaming);
  tcase_add_test(tc, test_bidi_streaming);
  tcase_add_test(tc, test_server_stream_fails_midway);
  tcase_add_test(tc, test_client_stream_rejected_early);
  tcase_add_test(tc, test_cancel_server_stream);
  tcase_add_test(tc, test_bidi_callee_ends_first);
  tcase_add_test(tc, test_stream_deadline);
  tcase_add_test(tc, test_stream_limit);
  tcase_add_test(tc, test_streaming_api_errors);
  tcase_add_test(tc, test_notify);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(streaming_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
