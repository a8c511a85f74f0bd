/*
 * End-to-end messages without copies: payload bytes given away in a
 * qrpc_msg (pack NULL, release set), which qrpc owns from a return of 0
 * and gives back with exactly one release call, and received payloads
 * taken over with qrpc_call_take() and qrpc_req_take().
 *
 * Covered: a bidi echo whose server sends back the very buffers it took
 * (sizes on both sides of the 16 KiB threshold, up to 3 MiB, under flow
 * control on both ends); the bytes staying the caller's on every error
 * return; small messages, and calls that wait for a connection, copied
 * and released before the function returns; the misuses of the take
 * functions; a unary echo of taken 200,000-byte requests; and given bytes
 * still unacknowledged when a connection closes, from either side.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"
#include "rpc_harness.h"

#define M_ECHO_BIDI 40
#define M_TAKE_UNARY 41
#define M_HOLD_BIDI 42
#define M_MISUSE_BIDI 43
#define M_MISUSE_UNARY 44
#define M_REPLY_TWICE 45
#define M_END_FIRST 46

#define KIB 1024u
#define MIB (1024u * 1024u)
/* rpc.h: given bytes a stream send takes from this size on are linked
 * into the send buffer and kept until acknowledged; smaller ones are
 * copied and released before the function returns. */
#define GIVE_MIN (16u * KIB)
/* The largest message sent: the default max_frame (16 MiB) must allow it. */
#define LARGEST (4u * MIB)
/* Send buffers well under the large messages, so both ends of the echo
 * meet QRPC_EAGAIN and wait for on_writable. */
#define ECHO_SEND_BUFFER (256u * KIB)
#define SMALL_SEND_BUFFER (64u * KIB)
/* Megabytes each way: generous, under valgrind too. */
#define XFER_WAIT_MS (20000 * qt_wait_scale())

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* ---- Given bytes ------------------------------------------------------ */

/* Release calls over a set of gifts. */
typedef struct gift_tally {
  int released;
} gift_tally;

/* Heap bytes handed to qrpc with release = gift_release. Each gift counts
 * its own release calls, so one released twice and another never cannot
 * cancel out in a total. */
typedef struct gift {
  gift_tally *tally;
  uint8_t *bytes; /* NULL once released or reclaimed */
  size_t len;
  uint64_t seed; /* the bytes are qt_pattern_fill(seed, 0, ...) */
  int given;     /* a _msg function returned 0 for it: qrpc owns it */
  int releases;  /* gift_release calls */
} gift;

static void gift_release(void *owner) {
  gift *g = owner;
  g->releases++;
  if (g->tally) g->tally->released++;
  /* A second call finds NULL here: counted, not a double free. */
  free(g->bytes);
  g->bytes = NULL;
}

/* len pattern bytes of seed on the heap (len > 0). Returns 0 or -1. */
static int gift_make(gift *g, gift_tally *t, uint64_t seed, size_t len) {
  memset(g, 0, sizeof(*g));
  g->tally = t;
  g->len = len;
  g->seed = seed;
  g->bytes = malloc(len);
  if (!g->bytes) return -1;
  qt_pattern_fill(seed, 0, g->bytes, len);
  return 0;
}

static qrpc_msg gift_msg(gift *g) {
  qrpc_msg m = {
      .msg = g->bytes, .size = g->len, .release = gift_release, .owner = g};
  return m;
}

/* Frees a gift qrpc never took (refused, or never offered): it is still
 * the caller's. A given one is qrpc's to release. */
static void gift_reclaim(gift *g) {
  if (g->given) return;
  free(g->bytes);
  g->bytes = NULL;
}

static int gift_send(qrpc_call *call, gift *g) {
  qrpc_msg m = gift_msg(g);
  int rv = qrpc_call_send_msg(call, &m);
  if (rv == 0) g->given = 1;
  return rv;
}

/* ---- Server side ------------------------------------------------------ */

/* Counters the taking handlers share with the test. */
typedef struct srv_stats {
  int calls;
  int items_in;
  int takes;         /* qrpc_req_take() returned 0 */
  int take_errors;   /* ... or not */
  int take_mismatch; /* the taken message is not the payload delivered */
  int in_place;      /* taken without a copy: out->msg is the data given */
  int sends;         /* taken messages qrpc accepted to send back */
  int send_eagain;
  int send_errors;
  int small_kept; /* a message under GIVE_MIN accepted but not released
                     before the send returned */
  int released;   /* taken buffers given back (wrap_release) */
  int queue_full; /* more waiting echoes than the queue holds */
  int writables;
  int ends_in;
  int answers;
  int answer_errors;
  int cancels;
  int freed; /* per-call states released */
} srv_stats;

/* A taken message sent on under the server's own release, which counts
 * and then calls the release qrpc_req_take() set. */
typedef struct wrap {
  srv_stats *st;
  void (*release)(void *owner);
  void *owner;
} wrap;

static void wrap_release(void *owner) {
  wrap *w = owner;
  w->st->released++;
  if (w->release) w->release(w->owner);
  free(w);
}

/* Takes the payload being delivered to req (data and len as the callback
 * got them) into *out, under wrap_release. Returns 0 or an error, after
 * which nothing is owed. */
static int take_wrapped(qrpc_req *req, srv_stats *st, const uint8_t *data,
                        size_t len, qrpc_msg *out) {
  qrpc_msg m;
  wrap *w;
  int rv = qrpc_req_take(req, &m);
  if (rv != 0) {
    st->take_errors++;
    return rv;
  }
  st->takes++;
  /* rpc.h: an owned message of the bytes delivered (pack NULL, release
   * set), in place when they were reassembled, else a copy. */
  if (m.size != len || m.pack || !m.release || !m.msg ||
      (len && memcmp(m.msg, data, len) != 0))
    st->take_mismatch++;
  if (len && m.msg == (const void *)data) st->in_place++;
  w = malloc(sizeof(*w));
  if (!w) {
    if (m.release) m.release(m.owner);
    return QRPC_ENOMEM;
  }
  w->st = st;
  w->release = m.release;
  w->owner = m.owner;
  memset(out, 0, sizeof(*out));
  out->msg = m.msg;
  out->size = m.size;
  out->release = wrap_release;
  out->owner = w;
  return 0;
}

/* Sends a taken message as an ITEM of req. On an error other than
 * QRPC_EAGAIN the message is released here: it is still ours. */
static int echo_send(qrpc_req *req, srv_stats *st, qrpc_msg *m) {
  int before = st->released;
  int rv = qrpc_req_send_msg(req, m);
  if (rv == 0) {
    st->sends++;
    if (m->size < GIVE_MIN && st->released == before) st->small_kept++;
  } else if (rv == QRPC_EAGAIN) {
    st->send_eagain++;
  } else {
    st->send_errors++;
    m->release(m->owner);
  }
  return rv;
}

/* A bidi echo being served: each ITEM is taken and sent back as it is,
 * in order; what flow control holds back waits in a queue. */
#define ECHO_QUEUE 32

typedef struct echo_call {
  srv_stats *st;
  qrpc_req *req;
  qrpc_msg queue[ECHO_QUEUE];
  size_t head, count;
  int caller_ended;
} echo_call;

static void echo_call_free(echo_call *ec) {
  /* Messages still waiting are ours: the stream is gone. */
  while (ec->count) {
    qrpc_msg *m = &ec->queue[ec->head];
    m->release(m->owner);
    ec->head = (ec->head + 1) % ECHO_QUEUE;
    ec->count--;
  }
  ec->st->freed++;
  free(ec);
}

/* Sends what waits, as room allows; ends once the caller has ended and
 * everything went back. Returns 1 when the request is over (ec freed). */
static int echo_flush(echo_call *ec) {
  while (ec->count) {
    int rv = echo_send(ec->req, ec->st, &ec->queue[ec->head]);
    if (rv == QRPC_EAGAIN) return 0;
    /* Sent, or failed and released by echo_send(). */
    ec->head = (ec->head + 1) % ECHO_QUEUE;
    ec->count--;
  }
  if (!ec->caller_ended) return 0;
  if (qrpc_req_end(ec->req) != 0) ec->st->answer_errors++;
  ec->st->answers++;
  /* The caller's END is in, so req is released with ours. */
  echo_call_free(ec);
  return 1;
}

static void echo_on_item(qrpc_req *req, const uint8_t *data, size_t len,
                         void *ud) {
  echo_call *ec = ud;
  qrpc_msg m;
  ec->st->items_in++;
  if (take_wrapped(req, ec->st, data, len, &m) != 0) return;
  if (ec->count == ECHO_QUEUE) {
    ec->st->queue_full++;
    m.release(m.owner);
    return;
  }
  /* Behind others that wait, or held back now: queued, in order. */
  if (ec->count == 0 && echo_send(req, ec->st, &m) != QRPC_EAGAIN) return;
  ec->queue[(ec->head + ec->count) % ECHO_QUEUE] = m;
  ec->count++;
}

static void echo_on_end(qrpc_req *req, void *ud) {
  (void)req;
  echo_call *ec = ud;
  ec->st->ends_in++;
  ec->caller_ended = 1;
  echo_flush(ec);
}

static void echo_on_writable(qrpc_req *req, void *ud) {
  (void)req;
  echo_call *ec = ud;
  ec->st->writables++;
  echo_flush(ec);
}

static void echo_on_cancel(qrpc_req *req, int status, void *ud) {
  (void)req;
  (void)status;
  echo_call *ec = ud;
  ec->st->cancels++;
  echo_call_free(ec);
}

static const qrpc_req_callbacks echo_cbs = {
    .on_item = echo_on_item,
    .on_end = echo_on_end,
    .on_cancel = echo_on_cancel,
    .on_writable = echo_on_writable,
};

static void echo_bidi_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                              void *ud) {
  (void)payload;
  (void)len;
  srv_stats *st = ud;
  echo_call *ec = calloc(1, sizeof(*ec));
  st->calls++;
  if (!ec) {
    qrpc_req_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED, "test out of memory");
    return;
  }
  ec->st = st;
  ec->req = req;
  qrpc_req_set_callbacks(req, &echo_cbs, ec);
}

/* Unary (and NOTIFY): the request payload is taken and is the reply. */
static void take_unary_handler(qrpc_req *req, const uint8_t *payload,
                               size_t len, void *ud) {
  srv_stats *st = ud;
  qrpc_msg m;
  int before, rv;
  st->calls++;
  if (take_wrapped(req, st, payload, len, &m) != 0) {
    qrpc_req_error(req, QRPC_STATUS_INTERNAL, "take failed");
    return;
  }
  before = st->released;
  rv = qrpc_req_reply_msg(req, &m);
  if (rv != 0) {
    st->answer_errors++;
    m.release(m.owner);
  } else if (m.size < GIVE_MIN && st->released == before) {
    st->small_kept++;
  }
  st->answers++;
}

/* The take functions used wrongly, on the serving side. */
typedef struct misuse {
  qrpc_req *req; /* the bidi request, until the caller's END */
  int bidi_calls;
  int items;
  int item_null_out_rv; /* qrpc_req_take(req, NULL) */
  int item_null_req_rv; /* qrpc_req_take(NULL, &m) */
  int item_take_rv;     /* the first take */
  int item_second_rv;   /* a second take in the same on_item */
  int item_send_rv;     /* the taken message sent back */
  int ends;
  int end_take_rv; /* in on_end: nothing being delivered */
  int end_rv;
  int cancels;
  int unary_calls;
  int unary_take_rv;
  int unary_second_rv;
  int unary_bytes_ok;
  int unary_reply_rv;
} misuse;

static void misuse_reset(misuse *ms) {
  memset(ms, 0, sizeof(*ms));
  /* 1: not called. */
  ms->item_null_out_rv = ms->item_null_req_rv = ms->item_take_rv = 1;
  ms->item_second_rv = ms->item_send_rv = ms->end_take_rv = ms->end_rv = 1;
  ms->unary_take_rv = ms->unary_second_rv = ms->unary_reply_rv = 1;
}

static void misuse_on_item(qrpc_req *req, const uint8_t *data, size_t len,
                           void *ud) {
  (void)data;
  (void)len;
  misuse *ms = ud;
  qrpc_msg m, again;
  ms->items++;
  ms->item_null_out_rv = qrpc_req_take(req, NULL);
  ms->item_null_req_rv = qrpc_req_take(NULL, &m);
  ms->item_take_rv = qrpc_req_take(req, &m);
  if (ms->item_take_rv != 0) return;
  /* The delivery was taken: it cannot be taken twice. */
  ms->item_second_rv = qrpc_req_take(req, &again);
  if (ms->item_second_rv == 0) again.release(again.owner);
  ms->item_send_rv = qrpc_req_send_msg(req, &m);
  if (ms->item_send_rv != 0) m.release(m.owner);
}

static void misuse_on_end(qrpc_req *req, void *ud) {
  misuse *ms = ud;
  qrpc_msg m;
  ms->ends++;
  /* END carries no payload: there is nothing to take. */
  ms->end_take_rv = qrpc_req_take(req, &m);
  if (ms->end_take_rv == 0) m.release(m.owner);
  ms->req = NULL;
  ms->end_rv = qrpc_req_end(req);
}

static void misuse_on_cancel(qrpc_req *req, int status, void *ud) {
  (void)req;
  (void)status;
  misuse *ms = ud;
  ms->cancels++;
  ms->req = NULL;
}

static const qrpc_req_callbacks misuse_cbs = {
    .on_item = misuse_on_item,
    .on_end = misuse_on_end,
    .on_cancel = misuse_on_cancel,
};

static void misuse_bidi_handler(qrpc_req *req, const uint8_t *payload,
                                size_t len, void *ud) {
  (void)payload;
  (void)len;
  misuse *ms = ud;
  ms->bidi_calls++;
  ms->req = req;
  qrpc_req_set_callbacks(req, &misuse_cbs, ms);
}

/* Unary: takes twice, then replies with what the first take gave. */
static void misuse_unary_handler(qrpc_req *req, const uint8_t *payload,
                                 size_t len, void *ud) {
  misuse *ms = ud;
  qrpc_msg m, again;
  ms->unary_calls++;
  ms->unary_take_rv = qrpc_req_take(req, &m);
  if (ms->unary_take_rv != 0) {
    qrpc_req_error(req, QRPC_STATUS_INTERNAL, "take failed");
    return;
  }
  ms->unary_bytes_ok =
      m.size == len && (len == 0 || memcmp(m.msg, payload, len) == 0);
  ms->unary_second_rv = qrpc_req_take(req, &again);
  if (ms->unary_second_rv == 0) again.release(again.owner);
  ms->unary_reply_rv = qrpc_req_reply_msg(req, &m);
  if (ms->unary_reply_rv != 0) m.release(m.owner);
}

/* Answers refused on the serving side leave the bytes with the server. */
typedef struct srv_errs {
  gift_tally tally;
  /* Unary, answered twice from the handler. */
  gift first, second;
  int twice_calls;
  int first_rv;
  int first_releases; /* at the return of the first reply (small) */
  int second_rv;
  int second_releases;
  /* Bidi, the callee ends first, then still tries to send. */
  gift late_big, late_small;
  int end_first_calls;
  int end_rv;
  int late_big_rv, late_small_rv;
  int late_releases; /* of both, after the refused sends */
  int ends_in;
  int cancels;
} srv_errs;

#define FIRST_SEED 0xa1
#define FIRST_LEN 100

static void reply_twice_handler(qrpc_req *req, const uint8_t *payload,
                                size_t len, void *ud) {
  (void)payload;
  (void)len;
  srv_errs *se = ud;
  qrpc_msg m;
  se->twice_calls++;
  if (gift_make(&se->first, &se->tally, FIRST_SEED, FIRST_LEN) != 0 ||
      gift_make(&se->second, &se->tally, 0xa2, 64 * KIB) != 0) {
    gift_reclaim(&se->first);
    qrpc_req_error(req, QRPC_STATUS_INTERNAL, "test out of memory");
    return;
  }
  m = gift_msg(&se->first);
  se->first_rv = qrpc_req_reply_msg(req, &m);
  if (se->first_rv == 0) se->first.given = 1;
  se->first_releases = se->first.releases;
  /* Already answered: refused, and the bytes stay ours. */
  m = gift_msg(&se->second);
  se->second_rv = qrpc_req_reply_msg(req, &m);
  if (se->second_rv == 0) se->second.given = 1;
  se->second_releases = se->second.releases;
  gift_reclaim(&se->second);
}

static void end_first_on_end(qrpc_req *req, void *ud) {
  (void)req;
  srv_errs *se = ud;
  /* rpc.h: req stayed valid until the caller's END; it is released now. */
  se->ends_in++;
}

static void end_first_on_cancel(qrpc_req *req, int status, void *ud) {
  (void)req;
  (void)status;
  srv_errs *se = ud;
  se->cancels++;
}

static void end_first_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                              void *ud) {
  (void)payload;
  (void)len;
  static const qrpc_req_callbacks cbs = {
      .on_end = end_first_on_end,
      .on_cancel = end_first_on_cancel,
  };
  srv_errs *se = ud;
  qrpc_msg m;
  se->end_first_calls++;
  qrpc_req_set_callbacks(req, &cbs, se);
  se->end_rv = qrpc_req_end(req);
  if (gift_make(&se->late_big, &se->tally, 0xb1, 64 * KIB) != 0 ||
      gift_make(&se->late_small, &se->tally, 0xb2, 100) != 0) {
    gift_reclaim(&se->late_big);
    return;
  }
  /* Ended: both refused, large and small, and neither released. */
  m = gift_msg(&se->late_big);
  se->late_big_rv = qrpc_req_send_msg(req, &m);
  if (se->late_big_rv == 0) se->late_big.given = 1;
  m = gift_msg(&se->late_small);
  se->late_small_rv = qrpc_req_send_msg(req, &m);
  if (se->late_small_rv == 0) se->late_small.given = 1;
  se->late_releases = se->late_big.releases + se->late_small.releases;
  gift_reclaim(&se->late_big);
  gift_reclaim(&se->late_small);
}

/* ---- Fixture ---------------------------------------------------------- */

typedef struct env {
  qrpc_server *srv;
  char addr[64];
  srv_stats st;
  misuse ms;
  srv_errs se;
  qt_holder holder;
  qt_rpc_client cl;
} env;

/* A server with every method and one connected client. send_buffer
 * (both ends' stream_send_buffer) and cli_max_frame: 0 for defaults. */
static void env_start(env *e, size_t send_buffer, size_t cli_max_frame) {
  qrpc_server_opts so;
  qrpc_client_opts co;
  memset(e, 0, sizeof(*e));
  misuse_reset(&e->ms);
  qt_holder_init(&e->holder);
  qrpc_server_opts_default(&so);
  /* The default frame limit takes the largest message of these tests. */
  ck_assert_uint_ge(so.rpc.max_frame, LARGEST + 64);
  if (send_buffer) so.endpoint.conn.stream_send_buffer = send_buffer;
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &so, &e->srv,
                                       e->addr, sizeof(e->addr)),
                   0);
  const struct {
    uint32_t id;
    qrpc_shape shape;
    qrpc_handler_fn fn;
    void *ud;
  } methods[] = {
      {M_ECHO_BIDI, QRPC_SHAPE_BIDI_STREAM, echo_bidi_handler, &e->st},
      {M_TAKE_UNARY, QRPC_SHAPE_UNARY, take_unary_handler, &e->st},
      {M_HOLD_BIDI, QRPC_SHAPE_BIDI_STREAM, qt_holder_handler, &e->holder},
      {M_MISUSE_BIDI, QRPC_SHAPE_BIDI_STREAM, misuse_bidi_handler, &e->ms},
      {M_MISUSE_UNARY, QRPC_SHAPE_UNARY, misuse_unary_handler, &e->ms},
      {M_REPLY_TWICE, QRPC_SHAPE_UNARY, reply_twice_handler, &e->se},
      {M_END_FIRST, QRPC_SHAPE_BIDI_STREAM, end_first_handler, &e->se},
  };
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
    ck_assert_int_eq(qrpc_server_register(e->srv, methods[i].id,
                                          methods[i].shape, methods[i].fn,
                                          methods[i].ud),
                     0);
  qrpc_client_opts_default(&co);
  ck_assert_uint_ge(co.rpc.max_frame, LARGEST + 64);
  if (send_buffer) co.conn.stream_send_buffer = send_buffer;
  if (cli_max_frame) co.rpc.max_frame = cli_max_frame;
  ck_assert_int_eq(qt_rpc_client_start(&e->cl, loop, e->addr, ctls, &co), 0);
  ck_assert(qt_rpc_client_wait_connects(&e->cl, 1, QT_WAIT_MS));
}

/* Frees the client and the server (either may be gone already) and runs
 * the loop until no connection is left: every stream, and so every
 * given buffer, is released by then. */
static void env_finish(env *e) {
  ck_assert(qt_rpc_close_all(loop, &e->srv, &e->cl, 1));
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
}

/* ---- Client side: a bidi echo of gifts -------------------------------- */

#define ECHO_MAX 16

typedef struct cli_echo {
  qrpc_call *call;
  gift_tally tally;
  gift gifts[ECHO_MAX];
  size_t n;        /* gifts to send, in order */
  size_t next_out; /* next gift to send */
  size_t next_in;  /* next echo expected */
  int item_errors; /* an echo out of order, of the wrong length, or
                      corrupted */
  int extra_items; /* more echoes than sends */
  int eagain;
  int writables;
  int send_errors;
  int first_send_error;
  int ended;
  int end_rv;
  int takes; /* echoes read through qrpc_call_take() */
  int take_errors;
  int take_mismatch;
  int in_place;
  int done;
  int after_done;
  int status;
} cli_echo;

/* Gifts of sizes[0..n), each with a seed of its own. */
static void cli_echo_init(cli_echo *c, const size_t *sizes, size_t n,
                          uint64_t seed) {
  memset(c, 0, sizeof(*c));
  ck_assert_uint_le(n, ECHO_MAX);
  c->n = n;
  c->end_rv = 1; /* not called yet */
  for (size_t i = 0; i < n; i++)
    ck_assert_int_eq(gift_make(&c->gifts[i], &c->tally, seed + i, sizes[i]), 0);
}

/* Frees the gifts that were never given. */
static void cli_echo_cleanup(cli_echo *c) {
  for (size_t i = 0; i < c->n; i++) gift_reclaim(&c->gifts[i]);
}

/* Sends gifts until done or told to wait (a gift refused is still ours
 * and goes again later); ends the sending side after the last. */
static void cli_echo_pump(cli_echo *c) {
  while (c->next_out < c->n) {
    int rv = gift_send(c->call, &c->gifts[c->next_out]);
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

static void cli_echo_on_item(qrpc_call *call, const uint8_t *data, size_t len,
                             void *ud) {
  cli_echo *c = ud;
  const gift *g;
  qrpc_msg m;
  int taken = 0;
  if (c->done) c->after_done++;
  if (c->next_in >= c->n) {
    c->extra_items++;
    return;
  }
  g = &c->gifts[c->next_in];
  /* Every other echo is taken over and checked in the taken message. */
  if (c->next_in % 2 == 1) {
    if (qrpc_call_take(call, &m) != 0) {
      c->take_errors++;
    } else {
      taken = 1;
      c->takes++;
      if (m.size != len || m.pack || !m.release || !m.msg) c->take_mismatch++;
      if (m.msg == (const void *)data) c->in_place++;
      data = m.msg;
      len = m.size;
    }
  }
  if (len != g->len || !data || !qt_pattern_check(g->seed, 0, data, len))
    c->item_errors++;
  if (taken) m.release(m.owner);
  c->next_in++;
}

static void cli_echo_on_writable(qrpc_call *call, void *ud) {
  (void)call;
  cli_echo *c = ud;
  if (c->done) c->after_done++;
  c->writables++;
  cli_echo_pump(c);
}

static void cli_echo_on_done(qrpc_call *call, const qrpc_result *res,
                             void *ud) {
  (void)call;
  cli_echo *c = ud;
  if (c->done) c->after_done++;
  c->done++;
  c->call = NULL;
  c->status = res->status;
}

static const qrpc_call_callbacks cli_echo_cbs = {
    .on_done = cli_echo_on_done,
    .on_item = cli_echo_on_item,
    .on_writable = cli_echo_on_writable,
};

static int all_released_once(const gift *g, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (g[i].releases != 1) return 0;
  return 1;
}

/* ---- Client side: unary calls with a large reply ---------------------- */

typedef struct big_rec {
  qrpc_call *call;
  uint64_t seed; /* the reply expected: len pattern bytes of seed */
  size_t len;
  int done;
  int status;
  int reply_ok;
} big_rec;

static void big_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  big_rec *r = ud;
  r->done++;
  r->call = NULL;
  r->status = res->status;
  r->reply_ok = res->len == r->len && res->payload &&
                qt_pattern_check(r->seed, 0, res->payload, res->len);
}

static const qrpc_call_callbacks big_cbs = {.on_done = big_on_done};

/* ---- 1. Bidi echo of taken buffers ------------------------------------ */

START_TEST(test_bidi_echo_taken) {
  /* Both sides of the threshold, large ones reassembled from hundreds of
   * packets, and small ones behind large ones, where the server's send
   * buffer is full and its echoes must wait in order. */
  static const size_t sizes[] = {100, 16383,   16384, 16385, 70000,  1 * MIB,
                                 100, 3 * MIB, 100,   20000, 250000, 7};
  const size_t n = sizeof(sizes) / sizeof(sizes[0]);
  env e;
  cli_echo c;

  env_start(&e, ECHO_SEND_BUFFER, 0);
  cli_echo_init(&c, sizes, n, 0x1000);
  ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_ECHO_BIDI,
                                      QRPC_SHAPE_BIDI_STREAM, NULL, 0, NULL,
                                      &cli_echo_cbs, &c, &c.call),
                   0);
  cli_echo_pump(&c);
  ck_assert(qt_run_until_count(loop, &c.done, 1, XFER_WAIT_MS));
  ck_assert_msg(c.status == QRPC_STATUS_OK, "status %s after %zu echoes",
                qrpc_status_name(c.status), c.next_in);
  ck_assert_int_eq(c.send_errors, 0);
  ck_assert_int_eq(c.end_rv, 0);
  ck_assert_uint_eq(c.next_out, n);
  /* Every echo arrived, in order, byte for byte, and nothing more. */
  ck_assert_uint_eq(c.next_in, n);
  ck_assert_int_eq(c.item_errors, 0);
  ck_assert_int_eq(c.extra_items, 0);
  ck_assert_int_eq(c.after_done, 0);
  /* The client waited for room and was told when there was some. */
  ck_assert_int_gt(c.eagain, 0);
  ck_assert_int_gt(c.writables, 0);
  /* Half the echoes were taken; the 3 MiB one (an odd index) came in
   * hundreds of packets and changed hands without a copy. */
  ck_assert_int_eq(c.takes, (int)(n / 2));
  ck_assert_int_eq(c.take_errors, 0);
  ck_assert_int_eq(c.take_mismatch, 0);
  ck_assert_int_ge(c.in_place, 1);

  /* Every gift goes back exactly once, the large ones when the server
   * has acknowledged them. */
  ck_assert(qt_run_until_count(loop, &c.tally.released, (int)n, QT_WAIT_MS));
  ck_assert(all_released_once(c.gifts, n));

  /* The server took every item, sent each back as it was, and got every
   * taken buffer back from qrpc (its echoes acknowledged in turn). */
  ck_assert(qt_run_until_count(loop, &e.st.freed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &e.st.released, (int)n, QT_WAIT_MS));
  ck_assert_int_eq(e.st.calls, 1);
  ck_assert_int_eq(e.st.items_in, (int)n);
  ck_assert_int_eq(e.st.takes, (int)n);
  ck_assert_int_eq(e.st.take_errors, 0);
  ck_assert_int_eq(e.st.take_mismatch, 0);
  ck_assert_int_ge(e.st.in_place, 1);
  ck_assert_int_eq(e.st.sends, (int)n);
  ck_assert_int_eq(e.st.send_errors, 0);
  /* Its echoes waited for room too, queued in order. */
  ck_assert_int_gt(e.st.send_eagain, 0);
  ck_assert_int_gt(e.st.writables, 0);
  ck_assert_int_eq(e.st.queue_full, 0);
  /* Echoes under 16 KiB were copied and released at once. */
  ck_assert_int_eq(e.st.small_kept, 0);
  ck_assert_int_eq(e.st.ends_in, 1);
  ck_assert_int_eq(e.st.answers, 1);
  ck_assert_int_eq(e.st.answer_errors, 0);
  ck_assert_int_eq(e.st.cancels, 0);
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
  /* Closing released nothing a second time. */
  ck_assert_int_eq(c.tally.released, (int)n);
  ck_assert(all_released_once(c.gifts, n));
  ck_assert_int_eq(e.st.released, (int)n);
  cli_echo_cleanup(&c);
}
END_TEST

/* ---- 2. Errors leave the bytes with the caller ------------------------ */

START_TEST(test_errors_keep_bytes) {
  env e;
  gift_tally t = {0};
  gift small, huge, big, waiting, unused;
  qrpc_msg m;
  qt_call_rec u, a, b, ef, tw;

  /* The client's frame limit at its minimum, 1 MiB. */
  env_start(&e, SMALL_SEND_BUFFER, MIB);
  ck_assert_int_eq(gift_make(&small, &t, 1, 100), 0);
  ck_assert_int_eq(gift_make(&huge, &t, 2, MIB + 1), 0);
  ck_assert_int_eq(gift_make(&big, &t, 3, 128 * KIB), 0);
  ck_assert_int_eq(gift_make(&waiting, &t, 4, 64 * KIB), 0);
  ck_assert_int_eq(gift_make(&unused, &t, 5, 100), 0);

  /* A unary call sends no items. */
  ck_assert_int_eq(
      qt_call_rec_start(&u, NULL, e.cl.cli, M_TAKE_UNARY, "u", 1, NULL), 0);
  ck_assert_int_eq(gift_send(u.call, &small), QRPC_EINVAL);

  qt_call_rec_init(&a, NULL);
  ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_HOLD_BIDI,
                                      QRPC_SHAPE_BIDI_STREAM, NULL, 0, NULL,
                                      &qt_call_rec_cbs, &a, &a.call),
                   0);
  /* Over this side's max_frame. */
  ck_assert_int_eq(gift_send(a.call, &huge), QRPC_EMSGSIZE);
  /* No bytes behind a non-zero size. */
  m = gift_msg(&unused);
  m.msg = NULL;
  ck_assert_int_eq(qrpc_call_send_msg(a.call, &m), QRPC_EINVAL);
  /* Accepted: 128 KiB, kept uncopied (nothing can have been acknowledged
   * yet), and over the 64 KiB send buffer. */
  ck_assert_int_eq(gift_send(a.call, &big), 0);
  ck_assert_int_eq(big.releases, 0);
  /* No room now: QRPC_EAGAIN for large and small alike. */
  ck_assert_int_eq(gift_send(a.call, &waiting), QRPC_EAGAIN);
  ck_assert_int_eq(gift_send(a.call, &small), QRPC_EAGAIN);
  /* After END, sending is refused with QRPC_ESTATE. */
  ck_assert_int_eq(qrpc_call_end(a.call), 0);
  ck_assert_int_eq(gift_send(a.call, &waiting), QRPC_ESTATE);
  ck_assert_int_eq(gift_send(a.call, &small), QRPC_ESTATE);

  /* A cancelled call is over: QRPC_ECLOSED. */
  qt_call_rec_init(&b, NULL);
  ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_HOLD_BIDI,
                                      QRPC_SHAPE_BIDI_STREAM, NULL, 0, NULL,
                                      &qt_call_rec_cbs, &b, &b.call),
                   0);
  ck_assert_int_eq(qrpc_call_cancel(b.call), 0);
  ck_assert_int_eq(gift_send(b.call, &waiting), QRPC_ECLOSED);
  ck_assert_int_eq(gift_send(b.call, &small), QRPC_ECLOSED);

  /* None of the refused ones was released: they are still the caller's
   * (and valid: the pattern is intact). */
  ck_assert_int_eq(t.released, 0);
  ck_assert_int_eq(
      small.releases + huge.releases + waiting.releases + unused.releases, 0);
  ck_assert(qt_pattern_check(waiting.seed, 0, waiting.bytes, waiting.len));
  ck_assert(qt_pattern_check(small.seed, 0, small.bytes, small.len));

  /* The serving side: a second reply and items after END are refused,
   * and the server keeps those bytes too. */
  qt_call_rec_init(&ef, NULL);
  ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_END_FIRST,
                                      QRPC_SHAPE_BIDI_STREAM, NULL, 0, NULL,
                                      &qt_call_rec_cbs, &ef, &ef.call),
                   0);
  ck_assert_int_eq(
      qt_call_rec_start(&tw, NULL, e.cl.cli, M_REPLY_TWICE, "x", 1, NULL), 0);
  ck_assert(qt_run_until_count(loop, &e.se.end_first_calls, 1, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_call_end(ef.call), 0);
  ck_assert(qt_run_until_count(loop, &ef.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &tw.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &u.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &b.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(u.status, QRPC_STATUS_OK);
  ck_assert_int_eq(b.status, QRPC_STATUS_CANCELLED);
  ck_assert_int_eq(ef.status, QRPC_STATUS_OK);
  ck_assert_int_eq(e.se.end_rv, 0);
  ck_assert_int_eq(e.se.late_big_rv, QRPC_ECLOSED);
  ck_assert_int_eq(e.se.late_small_rv, QRPC_ECLOSED);
  ck_assert_int_eq(e.se.late_releases, 0);
  /* The first reply (100 bytes) went out, copied and released before
   * qrpc_req_reply_msg() returned; the second was refused, unreleased. */
  ck_assert_int_eq(e.se.twice_calls, 1);
  ck_assert_int_eq(e.se.first_rv, 0);
  ck_assert_int_eq(e.se.first_releases, 1);
  ck_assert_int_eq(e.se.second_rv, QRPC_ECLOSED);
  ck_assert_int_eq(e.se.second_releases, 0);
  ck_assert_int_eq(tw.status, QRPC_STATUS_OK);
  ck_assert_uint_eq(tw.reply_len, FIRST_LEN);
  ck_assert(qt_pattern_check(FIRST_SEED, 0, tw.reply, FIRST_LEN));

  /* The accepted 128 KiB goes back once the server has acknowledged it. */
  ck_assert(qt_run_until_count(loop, &big.releases, 1, QT_WAIT_MS));
  ck_assert_int_eq(qrpc_call_cancel(a.call), 0);
  ck_assert(qt_run_until_count(loop, &a.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
  ck_assert_int_eq(big.releases, 1);
  ck_assert_int_eq(t.released, 1);
  ck_assert_int_eq(e.se.tally.released, 1);
  ck_assert_int_eq(e.se.first.releases, 1);
  gift_reclaim(&small);
  gift_reclaim(&huge);
  gift_reclaim(&big);
  gift_reclaim(&waiting);
  gift_reclaim(&unused);
}
END_TEST

/* ---- 3. Small messages are copied and released at once ---------------- */

START_TEST(test_small_released_before_return) {
  static const size_t sizes[] = {100, GIVE_MIN - 1, GIVE_MIN};
  env e;
  cli_echo c;
  gift_tally t = {0};
  gift call_small, note, big_note, waits;
  big_rec rs, rw;
  qrpc_msg m;
  qt_rpc_client late;
  qrpc_call_opts patient = qt_call_opts(0, 0);

  env_start(&e, 0, 0);
  cli_echo_init(&c, sizes, 3, 0x3000);
  ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_ECHO_BIDI,
                                      QRPC_SHAPE_BIDI_STREAM, NULL, 0, NULL,
                                      &cli_echo_cbs, &c, &c.call),
                   0);
  /* Under 16 KiB: released before qrpc_call_send_msg() returned. */
  ck_assert_int_eq(gift_send(c.call, &c.gifts[0]), 0);
  ck_assert_int_eq(c.gifts[0].releases, 1);
  ck_assert_int_eq(gift_send(c.call, &c.gifts[1]), 0);
  ck_assert_int_eq(c.gifts[1].releases, 1);
  /* Exactly 16 KiB: kept without a copy until acknowledged, which cannot
   * have happened before the loop ran. */
  ck_assert_int_eq(gift_send(c.call, &c.gifts[2]), 0);
  ck_assert_int_eq(c.gifts[2].releases, 0);
  c.next_out = 3;
  cli_echo_pump(&c);
  ck_assert_int_eq(c.end_rv, 0);

  /* A unary call and a NOTIFY that go out at once, small: copied too. */
  ck_assert_int_eq(gift_make(&call_small, &t, 0x3100, 300), 0);
  memset(&rs, 0, sizeof(rs));
  rs.seed = call_small.seed;
  rs.len = call_small.len;
  m = gift_msg(&call_small);
  ck_assert_int_eq(qrpc_client_call_msg(e.cl.cli, M_TAKE_UNARY, &m, NULL,
                                        &big_cbs, &rs, &rs.call),
                   0);
  call_small.given = 1;
  ck_assert_int_eq(call_small.releases, 1);
  ck_assert_int_eq(gift_make(&note, &t, 0x3200, 200), 0);
  m = gift_msg(&note);
  ck_assert_int_eq(qrpc_client_notify_msg(e.cl.cli, M_TAKE_UNARY, &m), 0);
  note.given = 1;
  ck_assert_int_eq(note.releases, 1);
  /* A large NOTIFY: only that it is released exactly once is checked
   * (at the end), not when. */
  ck_assert_int_eq(gift_make(&big_note, &t, 0x3250, 64 * KIB), 0);
  m = gift_msg(&big_note);
  ck_assert_int_eq(qrpc_client_notify_msg(e.cl.cli, M_TAKE_UNARY, &m), 0);
  big_note.given = 1;

  /* A call made before its client has a connection waits with a copy,
   * so even 64 KiB is released before qrpc_client_call_msg() returns. */
  ck_assert_int_eq(qt_rpc_client_start(&late, loop, e.addr, ctls, NULL), 0);
  ck_assert_int_eq(gift_make(&waits, &t, 0x3300, 64 * KIB), 0);
  memset(&rw, 0, sizeof(rw));
  rw.seed = waits.seed;
  rw.len = waits.len;
  m = gift_msg(&waits);
  ck_assert_int_eq(qrpc_client_call_msg(late.cli, M_TAKE_UNARY, &m, &patient,
                                        &big_cbs, &rw, &rw.call),
                   0);
  waits.given = 1;
  ck_assert_int_eq(waits.releases, 1);

  /* Everything arrives intact all the same. */
  ck_assert(qt_run_until_count(loop, &c.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &rs.done, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &rw.done, 1, QT_WAIT_MS));
  /* The bidi call, the two unary calls and the NOTIFYs were served. */
  ck_assert(qt_run_until_count(loop, &e.st.calls, 5, QT_WAIT_MS));
  ck_assert_int_eq(c.status, QRPC_STATUS_OK);
  ck_assert_uint_eq(c.next_in, 3);
  ck_assert_int_eq(c.item_errors, 0);
  ck_assert_int_eq(c.extra_items, 0);
  ck_assert_int_eq(rs.status, QRPC_STATUS_OK);
  ck_assert(rs.reply_ok);
  ck_assert_int_eq(rw.status, QRPC_STATUS_OK);
  ck_assert(rw.reply_ok);
  ck_assert(qt_run_until_count(loop, &c.gifts[2].releases, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &big_note.releases, 1, QT_WAIT_MS));
  /* Three echoes and four unary requests or NOTIFYs were taken, and
   * every taken buffer went back; the small replies and echoes at once. */
  ck_assert_int_eq(e.st.takes, 3 + 4);
  ck_assert_int_eq(e.st.take_errors, 0);
  ck_assert_int_eq(e.st.take_mismatch, 0);
  ck_assert(qt_run_until_count(loop, &e.st.released, 3 + 4, QT_WAIT_MS));
  ck_assert_int_eq(e.st.small_kept, 0);
  qt_rpc_client_free(&late);
  env_finish(&e);
  ck_assert(all_released_once(c.gifts, 3));
  ck_assert_int_eq(call_small.releases, 1);
  ck_assert_int_eq(note.releases, 1);
  ck_assert_int_eq(big_note.releases, 1);
  ck_assert_int_eq(waits.releases, 1);
  ck_assert_int_eq(e.st.released, e.st.takes);
  cli_echo_cleanup(&c);
}
END_TEST

/* ---- 4. Taking outside its callback, twice, or with NULL -------------- */

typedef struct cli_mis {
  qrpc_call *call;
  qrpc_call *other;  /* another call in flight, not the one delivering */
  qrpc_req *srv_req; /* the server's request, in no callback of its own */
  int items;
  int null_out_rv;  /* qrpc_call_take(call, NULL) */
  int null_call_rv; /* qrpc_call_take(NULL, &m) */
  int other_rv;     /* qrpc_call_take(other, &m) */
  int srv_req_rv;   /* qrpc_req_take(srv_req, &m) */
  int take_rv;
  int second_rv;
  int bytes_ok;
  int done;
  int status;
  int done_take_rv; /* in on_done */
} cli_mis;

#define MIS_LEN 100
#define MIS_SEED 0x4000

static void cli_mis_on_item(qrpc_call *call, const uint8_t *data, size_t len,
                            void *ud) {
  cli_mis *c = ud;
  qrpc_msg m, again;
  c->items++;
  c->null_out_rv = qrpc_call_take(call, NULL);
  c->null_call_rv = qrpc_call_take(NULL, &m);
  c->other_rv = qrpc_call_take(c->other, &m);
  if (c->other_rv == 0) m.release(m.owner);
  c->srv_req_rv = qrpc_req_take(c->srv_req, &m);
  if (c->srv_req_rv == 0) m.release(m.owner);
  c->take_rv = qrpc_call_take(call, &m);
  if (c->take_rv != 0) return;
  c->bytes_ok = m.size == len && len == MIS_LEN &&
                qt_pattern_check(MIS_SEED, 0, m.msg, m.size) &&
                memcmp(m.msg, data, len) == 0;
  c->second_rv = qrpc_call_take(call, &again);
  if (c->second_rv == 0) again.release(again.owner);
  m.release(m.owner);
}

static void cli_mis_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  cli_mis *c = ud;
  qrpc_msg m;
  c->done++;
  c->status = res->status;
  /* Nothing is being delivered to on_done. */
  c->done_take_rv = qrpc_call_take(call, &m);
  if (c->done_take_rv == 0) m.release(m.owner);
  c->call = NULL;
}

static const qrpc_call_callbacks cli_mis_cbs = {
    .on_done = cli_mis_on_done,
    .on_item = cli_mis_on_item,
};

START_TEST(test_take_misuse) {
  env e;
  cli_mis c;
  qt_call_rec other, ur;
  qrpc_msg m;
  uint8_t item[MIS_LEN];

  env_start(&e, 0, 0);
  memset(&c, 0, sizeof(c));
  c.null_out_rv = c.null_call_rv = c.other_rv = c.srv_req_rv = 1;
  c.take_rv = c.second_rv = c.done_take_rv = 1;
  qt_call_rec_init(&other, NULL);
  ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_HOLD_BIDI,
                                      QRPC_SHAPE_BIDI_STREAM, NULL, 0, NULL,
                                      &qt_call_rec_cbs, &other, &other.call),
                   0);
  ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_MISUSE_BIDI,
                                      QRPC_SHAPE_BIDI_STREAM, NULL, 0, NULL,
                                      &cli_mis_cbs, &c, &c.call),
                   0);
  c.other = other.call;
  ck_assert(qt_run_until_count(loop, &e.ms.bidi_calls, 1, QT_WAIT_MS));
  ck_assert_ptr_nonnull(e.ms.req);
  c.srv_req = e.ms.req;
  qt_pattern_fill(MIS_SEED, 0, item, sizeof(item));
  ck_assert_int_eq(qrpc_call_send(c.call, item, sizeof(item)), 0);
  ck_assert(qt_run_until_count(loop, &c.items, 1, QT_WAIT_MS));

  /* Outside any callback: QRPC_ESTATE for a live call and a live request;
   * NULL arguments: QRPC_EINVAL. */
  ck_assert_int_eq(qrpc_call_take(c.call, &m), QRPC_ESTATE);
  ck_assert_int_eq(qrpc_req_take(e.ms.req, &m), QRPC_ESTATE);
  ck_assert_int_eq(qrpc_call_take(c.call, NULL), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_req_take(e.ms.req, NULL), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_call_take(NULL, &m), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_req_take(NULL, &m), QRPC_EINVAL);

  ck_assert_int_eq(qrpc_call_end(c.call), 0);
  ck_assert(qt_run_until_count(loop, &c.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(c.status, QRPC_STATUS_OK);

  /* The server's on_item: NULLs refused, the first take succeeded, the
   * second in the same callback was refused; the taken item went back. */
  ck_assert_int_eq(e.ms.items, 1);
  ck_assert_int_eq(e.ms.item_null_out_rv, QRPC_EINVAL);
  ck_assert_int_eq(e.ms.item_null_req_rv, QRPC_EINVAL);
  ck_assert_int_eq(e.ms.item_take_rv, 0);
  ck_assert_int_eq(e.ms.item_second_rv, QRPC_ESTATE);
  ck_assert_int_eq(e.ms.item_send_rv, 0);
  /* on_end delivers no payload. */
  ck_assert_int_eq(e.ms.ends, 1);
  ck_assert_int_eq(e.ms.end_take_rv, QRPC_ESTATE);
  ck_assert_int_eq(e.ms.end_rv, 0);

  /* The client's on_item: the same on its side; another call in flight,
   * and the server's request, are not being delivered to. */
  ck_assert_int_eq(c.items, 1);
  ck_assert_int_eq(c.null_out_rv, QRPC_EINVAL);
  ck_assert_int_eq(c.null_call_rv, QRPC_EINVAL);
  ck_assert_int_eq(c.other_rv, QRPC_ESTATE);
  ck_assert_int_eq(c.srv_req_rv, QRPC_ESTATE);
  ck_assert_int_eq(c.take_rv, 0);
  ck_assert(c.bytes_ok);
  ck_assert_int_eq(c.second_rv, QRPC_ESTATE);
  ck_assert_int_eq(c.done_take_rv, QRPC_ESTATE);

  /* A unary handler takes its request once; the second take is refused,
   * and the reply made of the first is the request. */
  ck_assert_int_eq(qt_call_rec_start(&ur, NULL, e.cl.cli, M_MISUSE_UNARY, item,
                                     sizeof(item), NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &ur.done, 1, QT_WAIT_MS));
  ck_assert(qt_call_rec_replied(&ur, item, sizeof(item)));
  ck_assert_int_eq(e.ms.unary_calls, 1);
  ck_assert_int_eq(e.ms.unary_take_rv, 0);
  ck_assert(e.ms.unary_bytes_ok);
  ck_assert_int_eq(e.ms.unary_second_rv, QRPC_ESTATE);
  ck_assert_int_eq(e.ms.unary_reply_rv, 0);

  ck_assert_int_eq(qrpc_call_cancel(other.call), 0);
  ck_assert(qt_run_until_count(loop, &other.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
}
END_TEST

/* ---- 5. Unary echo of a taken request --------------------------------- */

START_TEST(test_unary_take_reply) {
  /* 200,000 bytes arrive in many packets; 100 bytes lie whole in one. */
  static const size_t sizes[] = {200000, 200000, 200000, 100};
  enum { N = sizeof(sizes) / sizeof(sizes[0]) };
  env e;
  gift_tally t = {0};
  gift g[N];
  big_rec r[N];
  qrpc_msg m;
  int i, done = 0;

  env_start(&e, 0, 0);
  for (i = 0; i < N; i++) {
    ck_assert_int_eq(gift_make(&g[i], &t, 0x5000 + (uint64_t)i, sizes[i]), 0);
    memset(&r[i], 0, sizeof(r[i]));
    r[i].seed = g[i].seed;
    r[i].len = g[i].len;
  }
  /* All in flight at once, on the client's shared unary streams. */
  for (i = 0; i < N; i++) {
    m = gift_msg(&g[i]);
    ck_assert_int_eq(qrpc_client_call_msg(e.cl.cli, M_TAKE_UNARY, &m, NULL,
                                          &big_cbs, &r[i], &r[i].call),
                     0);
    g[i].given = 1;
    /* A REQUEST that goes out at once keeps 16 KiB and more uncopied. */
    ck_assert_int_eq(g[i].releases, g[i].len < GIVE_MIN ? 1 : 0);
  }
  for (i = 0; i < N; i++) {
    ck_assert(qt_run_until_count(loop, &r[i].done, 1, QT_WAIT_MS));
    done += r[i].done;
    ck_assert_msg(r[i].status == QRPC_STATUS_OK, "call %d: status %s", i,
                  qrpc_status_name(r[i].status));
    /* The reply is the request, byte for byte. */
    ck_assert_msg(r[i].reply_ok, "call %d: reply differs", i);
  }
  ck_assert_int_eq(done, N);
  ck_assert(qt_run_until_count(loop, &t.released, N, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &e.st.released, N, QT_WAIT_MS));
  ck_assert_int_eq(e.st.calls, N);
  ck_assert_int_eq(e.st.takes, N);
  ck_assert_int_eq(e.st.take_errors, 0);
  ck_assert_int_eq(e.st.take_mismatch, 0);
  /* The large requests were reassembled, and handed over as they lay. */
  ck_assert_int_ge(e.st.in_place, 1);
  ck_assert_int_eq(e.st.answers, N);
  ck_assert_int_eq(e.st.answer_errors, 0);
  ck_assert_int_eq(e.st.small_kept, 0);
  ck_assert_int_eq(e.cl.disconnects, 0);
  env_finish(&e);
  ck_assert(all_released_once(g, N));
  ck_assert_int_eq(t.released, N);
  ck_assert_int_eq(e.st.released, N);
}
END_TEST

/* ---- 6. Connections closed under unacknowledged given bytes ----------- */

START_TEST(test_client_freed_with_given_bytes) {
  env e;
  gift_tally t = {0};
  gift g;
  qt_call_rec r;
  int round;

  /* Round 0 frees the client before anything went out; round 1 once the
   * transfer is under way. */
  for (round = 0; round < 2; round++) {
    env_start(&e, 0, 0);
    qt_call_rec_init(&r, NULL);
    ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_HOLD_BIDI,
                                        QRPC_SHAPE_BIDI_STREAM, NULL, 0, NULL,
                                        &qt_call_rec_cbs, &r, &r.call),
                     0);
    ck_assert_int_eq(gift_make(&g, &t, 0x6000 + (uint64_t)round, LARGEST), 0);
    ck_assert_int_eq(gift_send(r.call, &g), 0);
    ck_assert_int_eq(g.releases, 0);
    if (round == 1)
      ck_assert(qt_run_until_count(loop, &e.holder.received, 1, QT_WAIT_MS));
    qt_rpc_client_free(&e.cl);
    /* The call ended inside qrpc_client_free(). */
    ck_assert_int_eq(r.done, 1);
    ck_assert_int_eq(r.status, QRPC_STATUS_CANCELLED);
    env_finish(&e);
    /* Released exactly once, whether at the free or with the connection,
     * and nothing leaks (LeakSanitizer and memcheck check at exit). */
    ck_assert_int_eq(g.releases, 1);
    ck_assert_int_eq(t.released, round + 1);
  }
}
END_TEST

START_TEST(test_closed_under_taken_echo) {
  static const size_t sizes[] = {LARGEST};
  env e;
  cli_echo c;
  int round;

  /* The server took a 4 MiB item and is sending it back: round 0 frees
   * the server, round 1 the client, before that echo is acknowledged. */
  for (round = 0; round < 2; round++) {
    env_start(&e, 0, 0);
    cli_echo_init(&c, sizes, 1, 0x7000 + (uint64_t)round);
    ck_assert_int_eq(qrpc_client_stream(e.cl.cli, M_ECHO_BIDI,
                                        QRPC_SHAPE_BIDI_STREAM, NULL, 0, NULL,
                                        &cli_echo_cbs, &c, &c.call),
                     0);
    /* One item, the sending side left open. */
    ck_assert_int_eq(gift_send(c.call, &c.gifts[0]), 0);
    ck_assert(qt_run_until_count(loop, &e.st.sends, 1, XFER_WAIT_MS));
    ck_assert_int_eq(e.st.takes, 1);
    ck_assert_int_eq(e.st.take_mismatch, 0);
    if (round == 0) {
      qrpc_server_free(e.srv);
      e.srv = NULL;
    } else {
      qt_rpc_client_free(&e.cl);
    }
    env_finish(&e);
    /* The client's call is over, and both the client's gift and the
     * server's taken buffer were released exactly once. */
    ck_assert_int_eq(c.done, 1);
    ck_assert_int_ne(c.status, QRPC_STATUS_OK);
    ck_assert_int_eq(c.gifts[0].releases, 1);
    ck_assert_int_eq(c.tally.released, 1);
    ck_assert_int_eq(e.st.released, 1);
    ck_assert_int_eq(e.st.freed, 1);
    cli_echo_cleanup(&c);
  }
}
END_TEST

static Suite *zero_copy_suite(void) {
  Suite *s = suite_create("rpc_zero_copy");
  TCase *tc = tcase_create("zero_copy");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 90);
  tcase_add_test(tc, test_bidi_echo_taken);
  tcase_add_test(tc, test_errors_keep_bytes);
  tcase_add_test(tc, test_small_released_before_return);
  tcase_add_test(tc, test_take_misuse);
  tcase_add_test(tc, test_unary_take_reply);
  tcase_add_test(tc, test_client_freed_with_given_bytes);
  tcase_add_test(tc, test_closed_under_taken_echo);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(zero_copy_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
