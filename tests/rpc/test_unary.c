/*
 * End-to-end unary calls over loopback: a long run of pipelined calls
 * checked one by one, errors and status details, unknown methods, the
 * per-connection limit of calls in flight, payload limits, calls from the
 * server to its client, and calls started from another thread through
 * qrpc_loop_post().
 */
#include <check.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"
#include "rpc_harness.h"

#define M_ECHO 1
#define M_HOLD 2
#define M_FAIL 3
#define M_TRIGGER 4
#define M_CLIENT_ECHO 10
#define M_UNKNOWN 0x2badbeefu

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* A server with the echo and holding handlers, and one connected client. */
typedef struct pair {
  qrpc_server *srv;
  char addr[64];
  qt_rpc_peers peers;
  qt_holder holder;
  int echoes;
  qt_rpc_client cl;
} pair;

static void pair_start(pair *p, const qrpc_server_opts *sopts,
                       const qrpc_client_opts *copts) {
  qrpc_server_opts o;
  memset(p, 0, sizeof(*p));
  qt_holder_init(&p->holder);
  if (sopts)
    o = *sopts;
  else
    qrpc_server_opts_default(&o);
  qt_rpc_peers_install(&o, &p->peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &o, &p->srv,
                                       p->addr, sizeof(p->addr)),
                   0);
  ck_assert_int_eq(qrpc_server_register(p->srv, M_ECHO, QRPC_SHAPE_UNARY,
                                        qt_rpc_echo, &p->echoes),
                   0);
  ck_assert_int_eq(qrpc_server_register(p->srv, M_HOLD, QRPC_SHAPE_UNARY,
                                        qt_holder_handler, &p->holder),
                   0);
  ck_assert_int_eq(qt_rpc_client_start(&p->cl, loop, p->addr, ctls, copts), 0);
  ck_assert_msg(qt_rpc_client_wait_connects(&p->cl, 1, QT_WAIT_MS),
                "client did not connect");
}

static void pair_finish(pair *p) {
  ck_assert(qt_rpc_close_all(loop, &p->srv, &p->cl, 1));
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
}

/* ---- 100,000 pipelined calls ----------------------------------------- */

#define MANY_CALLS 100000
#define MANY_WINDOW 128
#define MANY_MAX_PAYLOAD 64
#define MANY_WAIT_MS 90000

typedef struct many many;

typedef struct many_slot {
  many *m;
  uint32_t seq;
} many_slot;

struct many {
  qrpc_client *cli;
  many_slot *slots;
  uint8_t *seen; /* on_done calls per sequence number */
  int started;
  int done;
  int ok;
  int bad_reply;
  int bad_status;
  int first_bad_status;
  int start_error;
  int in_flight;
  int max_in_flight;
};

/* Payloads differ in length and content per call, so a reply that went to
 * the wrong caller cannot pass the check. */
static size_t many_payload(uint32_t seq, uint8_t *buf) {
  size_t len = 8 + seq % (MANY_MAX_PAYLOAD - 8 + 1);
  qt_put_be64(buf, seq);
  qt_pattern_fill(seq, 8, buf + 8, len - 8);
  return len;
}

static void many_fill(many *m);

static void many_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  many_slot *slot = ud;
  many *m = slot->m;
  uint8_t want[MANY_MAX_PAYLOAD];
  size_t want_len = many_payload(slot->seq, want);

  m->in_flight--;
  m->done++;
  m->seen[slot->seq]++;
  if (res->status != QRPC_STATUS_OK) {
    if (!m->bad_status) m->first_bad_status = res->status;
    m->bad_status++;
  } else if (res->len != want_len || !res->payload ||
             memcmp(res->payload, want, want_len) != 0) {
    m->bad_reply++;
  } else {
    m->ok++;
  }
  /* Refilling from inside on_done keeps the window full without waiting
   * for a loop slice to end. */
  many_fill(m);
  if (m->done == MANY_CALLS) qrpc_loop_stop(loop);
}

static void many_fill(many *m) {
  static const qrpc_call_callbacks cbs = {.on_done = many_on_done};
  while (!m->start_error && m->in_flight < MANY_WINDOW &&
         m->started < MANY_CALLS) {
    many_slot *slot = &m->slots[m->started];
    uint8_t buf[MANY_MAX_PAYLOAD];
    size_t len;
    int rv;
    slot->m = m;
    slot->seq = (uint32_t)m->started;
    len = many_payload(slot->seq, buf);
    rv = qrpc_client_call(m->cli, M_ECHO, buf, len, NULL, &cbs, slot, NULL);
    if (rv != 0) {
      m->start_error = rv;
      return;
    }
    m->started++;
    if (++m->in_flight > m->max_in_flight) m->max_in_flight = m->in_flight;
  }
}

START_TEST(test_many_calls_pipelined) {
  pair p;
  many m;
  qrpc_conn_stats cs;
  uint64_t t0, elapsed;
  int i, once = 0;

  pair_start(&p, NULL, NULL);
  memset(&m, 0, sizeof(m));
  m.cli = p.cl.cli;
  m.slots = calloc(MANY_CALLS, sizeof(*m.slots));
  m.seen = calloc(MANY_CALLS, 1);
  ck_assert_ptr_nonnull(m.slots);
  ck_assert_ptr_nonnull(m.seen);

  t0 = qt_now_ms();
  many_fill(&m);
  ck_assert_int_eq(m.start_error, 0);
  qt_run_until_count(loop, &m.done, MANY_CALLS, MANY_WAIT_MS);
  elapsed = qt_now_ms() - t0;
  fprintf(stderr, "rpc_unary: %d calls, %d in flight: %llu ms%s\n", MANY_CALLS,
          MANY_WINDOW, (unsigned long long)elapsed,
          qt_asan_enabled() ? " (sanitizers)" : "");
  /* A late extra callback would show up here. */
  qt_run_for(loop, 100);

  for (i = 0; i < MANY_CALLS; i++) once += m.seen[i] == 1;
  ck_assert_int_eq(m.start_error, 0);
  ck_assert_msg(m.done == MANY_CALLS, "only %d of %d calls completed", m.done,
                MANY_CALLS);
  ck_assert_int_eq(once, MANY_CALLS);
  ck_assert_msg(m.bad_status == 0, "%d calls failed, first with %s",
                m.bad_status, qrpc_status_name(m.first_bad_status));
  ck_assert_int_eq(m.bad_reply, 0);
  ck_assert_int_eq(m.ok, MANY_CALLS);
  ck_assert_int_eq(m.max_in_flight, MANY_WINDOW);
  ck_assert_int_eq(p.echoes, MANY_CALLS);
  ck_assert_int_eq(p.cl.disconnects, 0);
  /* Every call crossed the connection: at least its 8-byte sequence
   * number went out and came back. */
  ck_assert_ptr_nonnull(qrpc_client_peer(p.cl.cli));
  qrpc_conn_get_stats(qrpc_peer_conn(qrpc_client_peer(p.cl.cli)), &cs);
  ck_assert_uint_ge(cs.bytes_sent, (uint64_t)MANY_CALLS * 8);
  ck_assert_uint_ge(cs.bytes_recv, (uint64_t)MANY_CALLS * 8);
  free(m.slots);
  free(m.seen);
  pair_finish(&p);
}
END_TEST

/* ---- Errors and unknown methods -------------------------------------- */

START_TEST(test_unknown_method) {
  pair p;
  qt_call_rec r, e;
  qrpc_call_opts o = qt_call_opts(0, -1);

  pair_start(&p, NULL, NULL);
  ck_assert_int_eq(qt_call_rec_start(&r, NULL, p.cl.cli, M_UNKNOWN, "x", 1, &o),
                   0);
  ck_assert_ptr_nonnull(r.call);
  /* rpc.h: on_done never runs inside the function that started the call. */
  ck_assert_int_eq(r.done, 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_UNIMPLEMENTED);
  ck_assert_int_eq(r.local, 0);
  ck_assert_uint_eq(r.reply_len, 0);
  ck_assert_int_eq(r.user_data_wrong, 0);

  /* The connection stays up and serves the next call. */
  ck_assert_int_eq(
      qt_call_rec_start(&e, NULL, p.cl.cli, M_ECHO, "again", 5, &o), 0);
  ck_assert(qt_run_until_count(loop, &e.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&e, "again", 5));
  qt_run_for(loop, 100);
  ck_assert_int_eq(r.done, 1);
  ck_assert_int_eq(r.after_done, 0);
  ck_assert_int_eq(p.cl.disconnects, 0);
  ck_assert_int_eq(p.cl.connects, 1);
  pair_finish(&p);
}
END_TEST

typedef struct fail_rec {
  int calls;
  int status0_rv; /* qrpc_req_error() with status 0 */
  int error_rv;
} fail_rec;

static void fail_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                         void *ud) {
  (void)payload;
  (void)len;
  fail_rec *f = ud;
  f->calls++;
  f->status0_rv = qrpc_req_error(req, QRPC_STATUS_OK, "not an error");
  f->error_rv = qrpc_req_error(req, QRPC_STATUS_APP_MIN + 7,
                               "application detail \xc3\xa9");
}

START_TEST(test_error_status_and_detail) {
  pair p;
  fail_rec f;
  qt_call_rec r;
  static const char detail[] = "application detail \xc3\xa9";

  memset(&f, 0, sizeof(f));
  pair_start(&p, NULL, NULL);
  ck_assert_int_eq(
      qrpc_server_register(p.srv, M_FAIL, QRPC_SHAPE_UNARY, fail_handler, &f),
      0);
  ck_assert_int_eq(qt_call_rec_start(&r, NULL, p.cl.cli, M_FAIL, NULL, 0, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  qt_run_for(loop, 50);
  ck_assert_int_eq(f.calls, 1);
  ck_assert_int_eq(f.status0_rv, QRPC_EINVAL);
  ck_assert_int_eq(f.error_rv, 0);
  ck_assert_int_eq(r.done, 1);
  ck_assert_int_eq(r.status, QRPC_STATUS_APP_MIN + 7);
  ck_assert_int_eq(r.local, 0);
  ck_assert_uint_eq(r.detail_len, strlen(detail));
  ck_assert_mem_eq(r.detail, detail, strlen(detail));

  ck_assert_str_eq(qrpc_status_name(QRPC_STATUS_OK), "OK");
  ck_assert_str_eq(qrpc_status_name(QRPC_STATUS_DEADLINE_EXCEEDED),
                   "DEADLINE_EXCEEDED");
  ck_assert_str_eq(qrpc_status_name(QRPC_STATUS_UNIMPLEMENTED),
                   "UNIMPLEMENTED");
  ck_assert_str_eq(qrpc_status_name(QRPC_STATUS_APP_MIN + 7), "APPLICATION");
  ck_assert_str_eq(qrpc_status_name(-1), "UNKNOWN_STATUS");
  ck_assert_str_eq(qrpc_status_name(999), "UNKNOWN_STATUS");
  pair_finish(&p);
}
END_TEST

/* ---- Limits ---------------------------------------------------------- */

#define LIMIT_CALLS 8
#define LIMIT_EXTRA 4

START_TEST(test_resource_exhausted) {
  pair p;
  qrpc_server_opts so;
  qt_call_rec r[LIMIT_CALLS + LIMIT_EXTRA], more[LIMIT_CALLS];
  qt_call_tally t, t2;
  uint8_t tag;
  int i;

  qrpc_server_opts_default(&so);
  so.rpc.max_calls_in_flight = LIMIT_CALLS;
  pair_start(&p, &so, NULL);
  memset(&t, 0, sizeof(t));
  for (i = 0; i < LIMIT_CALLS + LIMIT_EXTRA; i++) {
    tag = (uint8_t)i;
    ck_assert_int_eq(
        qt_call_rec_start(&r[i], &t, p.cl.cli, M_HOLD, &tag, 1, NULL), 0);
  }
  /* The excess is refused by the server while the others are held. */
  ck_assert(qt_run_until_count(loop, &t.done, LIMIT_EXTRA, QT_WAIT_MS));
  qt_run_for(loop, 100);
  ck_assert_int_eq(t.done, LIMIT_EXTRA);
  ck_assert_int_eq(t.by_status[QRPC_STATUS_RESOURCE_EXHAUSTED], LIMIT_EXTRA);
  ck_assert_int_eq(t.local, 0);
  ck_assert_int_eq(p.holder.received, LIMIT_CALLS);
  ck_assert_int_eq(p.holder.held, LIMIT_CALLS);

  /* Answering frees the slots: all held calls succeed, with their own
   * payloads, and new calls are accepted again. */
  ck_assert_int_eq(qt_holder_reply_all(&p.holder), LIMIT_CALLS);
  ck_assert(
      qt_run_until_count(loop, &t.done, LIMIT_CALLS + LIMIT_EXTRA, QT_WAIT_MS));
  ck_assert_int_eq(t.ok, LIMIT_CALLS);
  for (i = 0; i < LIMIT_CALLS + LIMIT_EXTRA; i++) {
    ck_assert_int_eq(r[i].done, 1);
    tag = (uint8_t)i;
    if (r[i].status == QRPC_STATUS_OK)
      ck_assert(qt_call_rec_replied(&r[i], &tag, 1));
  }
  memset(&t2, 0, sizeof(t2));
  for (i = 0; i < LIMIT_CALLS; i++) {
    tag = (uint8_t)(100 + i);
    ck_assert_int_eq(
        qt_call_rec_start(&more[i], &t2, p.cl.cli, M_HOLD, &tag, 1, NULL), 0);
  }
  ck_assert(qt_run_until_count(loop, &p.holder.received, 2 * LIMIT_CALLS,
                               QT_WAIT_MS));
  ck_assert_int_eq(t2.done, 0);
  ck_assert_int_eq(qt_holder_reply_all(&p.holder), LIMIT_CALLS);
  ck_assert(qt_run_until_count(loop, &t2.done, LIMIT_CALLS, QT_WAIT_MS));
  ck_assert_int_eq(t2.ok, LIMIT_CALLS);
  ck_assert_int_eq(p.holder.answer_errors, 0);
  ck_assert_int_eq(p.cl.disconnects, 0);
  pair_finish(&p);
}
END_TEST

#define BIG_LEN (1024u * 1024u)
#define TOO_BIG_LEN (17u * 1024u * 1024u)

typedef struct big_rec {
  int done;
  int status;
  size_t len;
  int match;
} big_rec;

static void big_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  big_rec *b = ud;
  b->done++;
  b->status = res->status;
  b->len = res->len;
  b->match = res->len == BIG_LEN && res->payload &&
             qt_pattern_check(77, 0, res->payload, res->len);
}

START_TEST(test_payload_sizes) {
  static const qrpc_call_callbacks cbs = {.on_done = big_on_done};
  pair p;
  big_rec b;
  qt_call_rec empty, r;
  uint8_t *buf = malloc(TOO_BIG_LEN);
  qrpc_call *call = NULL;

  ck_assert_ptr_nonnull(buf);
  pair_start(&p, NULL, NULL);
  /* 1 MiB: every endpoint must accept frames this large. */
  memset(&b, 0, sizeof(b));
  qt_pattern_fill(77, 0, buf, BIG_LEN);
  ck_assert_int_eq(
      qrpc_client_call(p.cl.cli, M_ECHO, buf, BIG_LEN, NULL, &cbs, &b, NULL),
      0);
  /* The payload was copied: scribbling over it changes nothing. */
  memset(buf, 0xa5, BIG_LEN);
  ck_assert(qt_run_until_count(loop, &b.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(b.status, QRPC_STATUS_OK);
  ck_assert_uint_eq(b.len, BIG_LEN);
  ck_assert(b.match);

  /* An empty payload is a valid message. */
  ck_assert_int_eq(
      qt_call_rec_start(&empty, NULL, p.cl.cli, M_ECHO, NULL, 0, NULL), 0);
  ck_assert(qt_run_until_count(loop, &empty.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&empty, NULL, 0));

  /* Over the default 16 MiB frame limit: refused locally, nothing fires. */
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, p.cl.cli, M_ECHO, buf, TOO_BIG_LEN, NULL),
      QRPC_EMSGSIZE);
  ck_assert_int_eq(
      qrpc_client_call(NULL, M_ECHO, "x", 1, NULL, &qt_call_rec_cbs, &r, &call),
      QRPC_EINVAL);
  ck_assert_int_eq(
      qrpc_server_register(p.srv, 99, (qrpc_shape)7, qt_rpc_echo, NULL),
      QRPC_EINVAL);
  qt_run_for(loop, 100);
  ck_assert_int_eq(r.done, 0);
  ck_assert_int_eq(b.done, 1);
  ck_assert_int_eq(p.cl.disconnects, 0);
  free(buf);
  pair_finish(&p);
}
END_TEST

/* ---- Messages packed in place ---------------------------------------- */

#define M_MSG_ECHO 5

/* A message whose packed form is its bytes; packs are counted. */
typedef struct msg_src {
  uint8_t bytes[64];
  size_t len;
} msg_src;

static int msg_packs;

static size_t msg_pack(const void *msg, uint8_t *out) {
  const msg_src *m = msg;
  msg_packs++;
  memcpy(out, m->bytes, m->len);
  return m->len;
}

static qrpc_msg msg_of(const msg_src *m) {
  qrpc_msg q = {.msg = m, .size = m->len, .pack = msg_pack};
  return q;
}

typedef struct msg_srv {
  int calls;
  int notifies;
  int reply_rv;
} msg_srv;

/* Answers with "srv:" and the request, packed in place. */
static void msg_echo(qrpc_req *req, const uint8_t *payload, size_t len,
                     void *ud) {
  msg_srv *ms = ud;
  msg_src out;
  qrpc_msg q;
  ms->calls++;
  if (qrpc_req_is_notify(req)) {
    ms->notifies++;
    return;
  }
  if (len + 4 > sizeof(out.bytes)) {
    qrpc_req_error(req, QRPC_STATUS_INTERNAL, "too long");
    return;
  }
  memcpy(out.bytes, "srv:", 4);
  memcpy(out.bytes + 4, payload, len);
  out.len = len + 4;
  q = msg_of(&out);
  ms->reply_rv = qrpc_req_reply_msg(req, &q);
}

START_TEST(test_msg_variants) {
  pair p;
  msg_srv ms;
  msg_src src = {"packed in place", 15};
  qrpc_msg q = msg_of(&src);
  qt_rpc_client late;
  qt_call_rec r, w;
  qrpc_call_opts patient = qt_call_opts(0, 0);

  memset(&ms, 0, sizeof(ms));
  pair_start(&p, NULL, NULL);
  ck_assert_int_eq(
      qrpc_server_register(p.srv, M_MSG_ECHO, QRPC_SHAPE_UNARY, msg_echo, &ms),
      0);
  qt_call_rec_init(&r, NULL);
  ck_assert_int_eq(qrpc_client_call_msg(p.cl.cli, M_MSG_ECHO, &q, NULL,
                                        &qt_call_rec_cbs, &r, &r.call),
                   0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&r, "srv:packed in place", 19));
  ck_assert_int_eq(ms.reply_rv, 0);
  ck_assert_int_eq(qrpc_client_notify_msg(p.cl.cli, M_MSG_ECHO, &q), 0);
  ck_assert(qt_run_until_count(loop, &ms.notifies, 1, QT_WAIT_MS));

  /* A call made before the connection exists waits with its own copy:
   * the message was only borrowed for the duration of the call. */
  ck_assert_int_eq(qt_rpc_client_start(&late, loop, p.addr, ctls, NULL), 0);
  qt_call_rec_init(&w, NULL);
  ck_assert_int_eq(qrpc_client_call_msg(late.cli, M_MSG_ECHO, &q, &patient,
                                        &qt_call_rec_cbs, &w, &w.call),
                   0);
  memset(&src, 0, sizeof(src));
  ck_assert(qt_run_until_count(loop, &w.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&w, "srv:packed in place", 19));
  ck_assert_int_ge(msg_packs, 5);
  ck_assert_int_eq(ms.calls, 3);
  qt_rpc_client_free(&late);
  pair_finish(&p);
}
END_TEST

/* ---- The server calls its client ------------------------------------- */

static const char cli_prefix[] = "client:";

typedef struct cli_echo {
  int calls;
  int notifies;
  int wrong_peer; /* qrpc_req_peer() was not the client's current peer */
  qrpc_client *cli;
} cli_echo;

/* Registered on the client: answers with a prefix, so the reply shows it
 * came from here. */
static void client_echo(qrpc_req *req, const uint8_t *payload, size_t len,
                        void *ud) {
  cli_echo *ce = ud;
  uint8_t out[QT_REPLY_CAP];
  size_t n = strlen(cli_prefix);
  ce->calls++;
  if (qrpc_req_peer(req) != qrpc_client_peer(ce->cli)) ce->wrong_peer++;
  if (qrpc_req_is_notify(req)) {
    ce->notifies++;
    return;
  }
  if (n + len > sizeof(out)) {
    qrpc_req_error(req, QRPC_STATUS_INTERNAL, "too long");
    return;
  }
  memcpy(out, cli_prefix, n);
  memcpy(out + n, payload, len);
  qrpc_req_reply(req, out, n + len);
}

/* The server's side: a call from on_peer_open, and a handler that calls
 * back into the client before answering its own caller. */
typedef struct srv_calls {
  qt_call_rec from_open;
  int open_rv;
  int peer_opens;
  qt_call_rec unknown;
  int unknown_rv;
  qrpc_req *pending; /* the trigger request, answered when the inner call
                        completes */
  int trigger_calls;
  int inner_rv;
  int inner_done;
  int inner_status;
  int trigger_cancels;
} srv_calls;

static void srv_on_peer_open(qrpc_peer *peer, void *ud) {
  srv_calls *sc = ud;
  qrpc_call_opts o = qt_call_opts(QT_WAIT_MS, -1);
  sc->peer_opens++;
  sc->open_rv = qt_call_rec_start_peer(&sc->from_open, NULL, peer,
                                       M_CLIENT_ECHO, "hello", 5, &o);
  sc->unknown_rv =
      qt_call_rec_start_peer(&sc->unknown, NULL, peer, M_UNKNOWN, "?", 1, &o);
}

static void trigger_on_cancel(qrpc_req *req, int status, void *ud) {
  (void)req;
  (void)status;
  srv_calls *sc = ud;
  sc->trigger_cancels++;
  sc->pending = NULL;
}

static void inner_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  srv_calls *sc = ud;
  qrpc_req *req = sc->pending;
  sc->inner_done++;
  sc->inner_status = res->status;
  sc->pending = NULL;
  if (!req) return;
  if (res->status == QRPC_STATUS_OK)
    qrpc_req_reply(req, res->payload, res->len);
  else
    qrpc_req_error(req, res->status, "inner call failed");
}

static void trigger_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                            void *ud) {
  static const qrpc_req_callbacks rcbs = {.on_cancel = trigger_on_cancel};
  static const qrpc_call_callbacks ccbs = {.on_done = inner_on_done};
  srv_calls *sc = ud;
  qrpc_call_opts o = qt_call_opts(QT_WAIT_MS, -1);
  sc->trigger_calls++;
  qrpc_req_set_callbacks(req, &rcbs, sc);
  sc->pending = req;
  sc->inner_rv = qrpc_peer_call(qrpc_req_peer(req), M_CLIENT_ECHO, payload, len,
                                &o, &ccbs, sc, NULL);
  if (sc->inner_rv != 0) {
    sc->pending = NULL;
    qrpc_req_error(req, QRPC_STATUS_INTERNAL, "could not call the client");
  }
}

START_TEST(test_server_calls_client) {
  qrpc_server_opts so;
  qrpc_server *srv = NULL;
  char addr[64];
  srv_calls sc;
  cli_echo ce;
  qt_rpc_client cl;
  qt_call_rec r;
  static const char want_open[] = "client:hello";
  static const char want_trigger[] = "client:ping";

  memset(&sc, 0, sizeof(sc));
  memset(&ce, 0, sizeof(ce));
  qrpc_server_opts_default(&so);
  so.on_peer_open = srv_on_peer_open;
  so.user_data = &sc;
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &so, &srv,
                                       addr, sizeof(addr)),
                   0);
  ck_assert_int_eq(qrpc_server_register(srv, M_TRIGGER, QRPC_SHAPE_UNARY,
                                        trigger_handler, &sc),
                   0);
  ck_assert_int_eq(qt_rpc_client_start(&cl, loop, addr, ctls, NULL), 0);
  ce.cli = cl.cli;
  /* Registered before the loop runs, so before the connection exists. */
  ck_assert_int_eq(qrpc_client_register(cl.cli, M_CLIENT_ECHO, QRPC_SHAPE_UNARY,
                                        client_echo, &ce),
                   0);
  ck_assert(qt_rpc_client_wait_connects(&cl, 1, QT_WAIT_MS));

  /* From on_peer_open. */
  ck_assert(qt_run_until_count(loop, &sc.peer_opens, 1, QT_WAIT_MS));
  ck_assert_int_eq(sc.open_rv, 0);
  ck_assert_int_eq(sc.unknown_rv, 0);
  ck_assert(qt_run_until_count(loop, &sc.from_open.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&sc.from_open, want_open, strlen(want_open)));
  ck_assert(qt_run_until_count(loop, &sc.unknown.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(sc.unknown.status, QRPC_STATUS_UNIMPLEMENTED);
  ck_assert_int_eq(sc.unknown.local, 0);

  /* From inside a handler, answering the client's own call. */
  ck_assert_int_eq(
      qt_call_rec_start(&r, NULL, cl.cli, M_TRIGGER, "ping", 4, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_msg(qt_call_rec_replied(&r, want_trigger, strlen(want_trigger)),
                "trigger: status %d, reply %zu bytes", r.status, r.reply_len);
  qt_run_for(loop, 100);
  ck_assert_int_eq(sc.trigger_calls, 1);
  ck_assert_int_eq(sc.inner_rv, 0);
  ck_assert_int_eq(sc.inner_done, 1);
  ck_assert_int_eq(sc.trigger_cancels, 0);
  ck_assert_int_eq(ce.calls, 2);
  ck_assert_int_eq(ce.wrong_peer, 0);
  ck_assert_int_eq(sc.from_open.done, 1);
  ck_assert_int_eq(cl.disconnects, 0);
  ck_assert_int_eq(cl.peer_mismatch, 0);
  ck_assert(qt_rpc_close_all(loop, &srv, &cl, 1));
}
END_TEST

/* ---- Calls started from another thread -------------------------------- */

#define XT_CALLS 1000

typedef struct xt xt;

typedef struct xt_arg {
  xt *x;
  uint32_t index;
} xt_arg;

struct xt {
  qrpc_client *cli;
  pthread_t loop_thread;
  xt_arg args[XT_CALLS];
  qt_call_rec recs[XT_CALLS];
  qt_call_tally tally;
  int runs;
  int off_thread;
  int start_errors;
  int post_errors;
};

static void xt_start(qrpc_loop *l, void *arg) {
  xt_arg *a = arg;
  xt *x = a->x;
  uint8_t buf[4];
  x->runs++;
  if (!pthread_equal(pthread_self(), x->loop_thread) || l != loop)
    x->off_thread++;
  buf[0] = (uint8_t)(a->index >> 24);
  buf[1] = (uint8_t)(a->index >> 16);
  buf[2] = (uint8_t)(a->index >> 8);
  buf[3] = (uint8_t)a->index;
  if (qt_call_rec_start(&x->recs[a->index], &x->tally, x->cli, M_ECHO, buf, 4,
                        NULL) != 0)
    x->start_errors++;
}

static void *xt_poster(void *arg) {
  xt *x = arg;
  int i;
  for (i = 0; i < XT_CALLS; i++)
    if (qrpc_loop_post(loop, xt_start, &x->args[i]) != 0) x->post_errors++;
  return NULL;
}

START_TEST(test_calls_from_other_thread) {
  pair p;
  xt *x = calloc(1, sizeof(*x));
  pthread_t th;
  int i, matched = 0;

  ck_assert_ptr_nonnull(x);
  pair_start(&p, NULL, NULL);
  x->cli = p.cl.cli;
  x->loop_thread = pthread_self();
  for (i = 0; i < XT_CALLS; i++) {
    x->args[i].x = x;
    x->args[i].index = (uint32_t)i;
  }
  /* The loop keeps running while the other thread posts. */
  ck_assert_int_eq(pthread_create(&th, NULL, xt_poster, x), 0);
  qt_run_until_count(loop, &x->tally.done, XT_CALLS, QT_WAIT_MS);
  ck_assert_int_eq(pthread_join(th, NULL), 0);
  qt_run_for(loop, 100);
  for (i = 0; i < XT_CALLS; i++) {
    uint8_t buf[4] = {(uint8_t)(i >> 24), (uint8_t)(i >> 16), (uint8_t)(i >> 8),
                      (uint8_t)i};
    matched += qt_call_rec_replied(&x->recs[i], buf, 4);
  }
  ck_assert_int_eq(x->post_errors, 0);
  ck_assert_int_eq(x->runs, XT_CALLS);
  ck_assert_int_eq(x->off_thread, 0);
  ck_assert_int_eq(x->start_errors, 0);
  ck_assert_int_eq(x->tally.done, XT_CALLS);
  ck_assert_int_eq(x->tally.ok, XT_CALLS);
  ck_assert_int_eq(matched, XT_CALLS);
  ck_assert_int_eq(p.echoes, XT_CALLS);
  free(x);
  pair_finish(&p);
}
END_TEST

static Suite *unary_suite(void) {
  Suite *s = suite_create("rpc_unary");
  TCase *tc = tcase_create("unary");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 120);
  tcase_add_test(tc, test_many_calls_pipelined);
  tcase_add_test(tc, test_unknown_method);
  tcase_add_test(tc, test_error_status_and_detail);
  tcase_add_test(tc, test_resource_exhausted);
  tcase_add_test(tc, test_payload_sizes);
  tcase_add_test(tc, test_msg_variants);
  tcase_add_test(tc, test_server_calls_client);
  tcase_add_test(tc, test_calls_from_other_thread);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(unary_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
