/*
 * Call metadata end to end over loopback (docs/protocol.md, "Call
 * metadata"): request metadata and trailers on every call shape in both
 * directions, response headers of streaming calls (on_headers before the
 * first item), the per-call limit on both sides, bad keys, and a caller
 * that sends no metadata seeing no metadata frames at all.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "quic/rpcstream.h"
#include "quic/testing.h"
#include "rpc_harness.h"
#include "wire/protocol.h"

#define M_UNARY 1
#define M_SSTREAM 2
#define M_CSTREAM 3
#define M_BIDI 4
#define M_RELAY 5
#define M_CLIENT_UNARY 10
#define M_CLIENT_PEEK 11
#define ITEMS 3

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* A binary value with a NUL byte inside: values are bytes, not strings. */
static const uint8_t bin_value[] = {0x00, 0xff, 0x10, 0x00, 0x7f};

/* ---- Handlers --------------------------------------------------------- */

/* What the handlers saw. */
typedef struct served {
  int runs;
  int md_ok;      /* the request carried auth=tok and bin=bin_value */
  size_t nmd;     /* pairs of the last request */
  int items;      /* items from the caller */
  int bad_header; /* qrpc_req_set_header() did not behave */
} served;

static int md_is_expected(qrpc_req *req, size_t *n) {
  const qrpc_md *md;
  *n = qrpc_req_metadata(req, &md);
  const qrpc_md *a = qrpc_md_find(md, *n, "auth");
  const qrpc_md *b = qrpc_md_find(md, *n, "bin");
  return a && a->key_len == 4 && a->value_len == 3 &&
         memcmp(a->value, "tok", 3) == 0 && b &&
         b->value_len == sizeof(bin_value) &&
         memcmp(b->value, bin_value, sizeof(bin_value)) == 0;
}

static void note_request(qrpc_req *req, served *sv) {
  sv->runs++;
  if (md_is_expected(req, &sv->nmd)) sv->md_ok++;
}

/* Unary: answers with the payload and the trailer srv=done. */
static void unary_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                          void *ud) {
  note_request(req, ud);
  qrpc_req_set_trailer(req, "srv", "done", 4);
  qrpc_req_reply(req, payload, len);
}

/* Server streaming: the header accepted=yes, ITEMS items, then END with
 * the trailer srv=done, all from inside the handler. */
static void sstream_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                            void *ud) {
  served *sv = ud;
  note_request(req, sv);
  if (qrpc_req_set_header(req, "accepted", "yes", 3) != 0) sv->bad_header++;
  for (int i = 0; i < ITEMS; i++) qrpc_req_send(req, payload, len);
  if (qrpc_req_set_header(req, "late", "x", 1) != QRPC_ESTATE) sv->bad_header++;
  qrpc_req_set_trailer(req, "srv", "done", 4);
  qrpc_req_end(req);
}

static void cs_on_item(qrpc_req *req, const uint8_t *d, size_t n, void *ud) {
  served *sv = ud;
  sv->items++;
  if (qrpc_req_shape(req) == QRPC_SHAPE_BIDI_STREAM) qrpc_req_send(req, d, n);
}

static void cs_on_end(qrpc_req *req, void *ud) {
  served *sv = ud;
  char count[16];
  int n = snprintf(count, sizeof(count), "%d", sv->items);
  qrpc_req_set_trailer(req, "srv", "done", 4);
  if (qrpc_req_shape(req) == QRPC_SHAPE_BIDI_STREAM)
    qrpc_req_end(req);
  else
    qrpc_req_reply(req, count, (size_t)n);
}

static void cs_on_cancel(qrpc_req *req, int status, void *ud) {
  (void)req;
  (void)status;
  (void)ud;
}

static const qrpc_req_callbacks cs_cbs = {
    .on_item = cs_on_item, .on_end = cs_on_end, .on_cancel = cs_on_cancel};

/* Client and bidi streaming: items counted (and echoed on bidi); the
 * trailer and the answer when the caller ends. */
static void cstream_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                            void *ud) {
  (void)payload;
  (void)len;
  served *sv = ud;
  note_request(req, sv);
  if (qrpc_req_set_header(req, "accepted", "yes", 3) != 0) sv->bad_header++;
  qrpc_req_set_callbacks(req, &cs_cbs, sv);
}

/* ---- Calls ------------------------------------------------------------ */

/* One call and the order of its callbacks: 'H' headers, 'I' item, 'D'
 * done. */
typedef struct rec {
  char seq[16];
  size_t nseq;
  int done;
  int status;
  int local;
  int headers;
  int headers_ok; /* on_headers saw accepted=yes */
  int trailer_ok; /* on_done saw srv=done */
  size_t ntrailers;
  char reply[32];
  size_t reply_len;
} rec;

static void seq_add(rec *r, char c) {
  if (r->nseq + 1 < sizeof(r->seq)) r->seq[r->nseq++] = c;
}

static void rec_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  rec *r = ud;
  seq_add(r, 'D');
  r->done++;
  r->status = res->status;
  r->local = res->local;
  r->ntrailers = res->ntrailers;
  const qrpc_md *t = qrpc_md_find(res->trailers, res->ntrailers, "srv");
  r->trailer_ok = t && t->value_len == 4 && memcmp(t->value, "done", 4) == 0;
  if (res->len <= sizeof(r->reply)) {
    if (res->len) memcpy(r->reply, res->payload, res->len);
    r->reply_len = res->len;
  }
}

static void rec_item(qrpc_call *call, const uint8_t *d, size_t n, void *ud) {
  (void)call;
  (void)d;
  (void)n;
  seq_add(ud, 'I');
}

static void rec_headers(qrpc_call *call, const qrpc_md *md, size_t n,
                        void *ud) {
  (void)call;
  rec *r = ud;
  seq_add(r, 'H');
  r->headers++;
  const qrpc_md *a = qrpc_md_find(md, n, "accepted");
  r->headers_ok = a && a->value_len == 3 && memcmp(a->value, "yes", 3) == 0;
}

static const qrpc_call_callbacks rec_cbs = {.on_done = rec_done,
                                            .on_item = rec_item};

static const qrpc_md request_md[] = {
    {.key = "auth", .value = (const uint8_t *)"tok", .value_len = 3},
    {.key = "bin", .value = bin_value, .value_len = sizeof(bin_value)},
};

static qrpc_call_opts md_opts(rec *r, int with_md, int with_headers) {
  qrpc_call_opts o;
  qrpc_call_opts_default(&o);
  o.timeout_ms = QT_WAIT_MS;
  if (with_md) {
    o.metadata = request_md;
    o.metadata_count = 2;
  }
  if (with_headers) {
    o.on_headers = rec_headers;
    o.on_headers_user_data = r;
  }
  return o;
}

/* ---- Fixture ---------------------------------------------------------- */

typedef struct pair {
  qrpc_server *srv;
  char addr[64];
  qt_rpc_peers peers;
  served sv;
  served cv; /* the client's own handler */
  qt_rpc_client cl;
} pair;

static void pair_start(pair *p, size_t srv_max_md) {
  qrpc_server_opts o;
  memset(p, 0, sizeof(*p));
  qrpc_server_opts_default(&o);
  if (srv_max_md) o.rpc.max_metadata = srv_max_md;
  qt_rpc_peers_install(&o, &p->peers);
  ck_assert_int_eq(qt_rpc_server_start(loop, "127.0.0.1:0", stls, &o, &p->srv,
                                       p->addr, sizeof(p->addr)),
                   0);
  ck_assert_int_eq(qrpc_server_register(p->srv, M_UNARY, QRPC_SHAPE_UNARY,
                                        unary_handler, &p->sv),
                   0);
  ck_assert_int_eq(qrpc_server_register(p->srv, M_SSTREAM,
                                        QRPC_SHAPE_SERVER_STREAM,
                                        sstream_handler, &p->sv),
                   0);
  ck_assert_int_eq(qrpc_server_register(p->srv, M_CSTREAM,
                                        QRPC_SHAPE_CLIENT_STREAM,
                                        cstream_handler, &p->sv),
                   0);
  ck_assert_int_eq(qrpc_server_register(p->srv, M_BIDI, QRPC_SHAPE_BIDI_STREAM,
                                        cstream_handler, &p->sv),
                   0);
  ck_assert_int_eq(qt_rpc_client_start(&p->cl, loop, p->addr, ctls, NULL), 0);
  ck_assert_int_eq(qrpc_client_register(p->cl.cli, M_CLIENT_UNARY,
                                        QRPC_SHAPE_UNARY, unary_handler,
                                        &p->cv),
                   0);
  ck_assert(qt_rpc_client_wait_connects(&p->cl, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &p->peers.opened, 1, QT_WAIT_MS));
}

static void pair_finish(pair *p) {
  ck_assert_int_eq(p->cl.disconnects, 0);
  /* The client's connection is released after its closing period, three
   * PTOs; under valgrind the RTT samples of calls in both directions
   * inflate the PTO, so the bound is wider than qt_rpc_close_all()'s. */
  ck_assert(qt_rpc_close_all(loop, &p->srv, &p->cl, 1) ||
            qt_run_until_released(loop, 4 * QT_WAIT_MS));
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
}

/* ---- Tests ------------------------------------------------------------ */

START_TEST(test_metadata_unary_both_directions) {
  pair p;
  rec r, s;
  pair_start(&p, 0);
  memset(&r, 0, sizeof(r));
  qrpc_call_opts o = md_opts(&r, 1, 0);
  ck_assert_int_eq(
      qrpc_client_call(p.cl.cli, M_UNARY, "ping", 4, &o, &rec_cbs, &r, NULL),
      0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, 0);
  ck_assert_int_eq(r.reply_len, 4);
  ck_assert(memcmp(r.reply, "ping", 4) == 0);
  ck_assert_int_eq(p.sv.runs, 1);
  ck_assert_int_eq(p.sv.md_ok, 1);
  ck_assert_int_eq(p.sv.nmd, 2);
  ck_assert(r.trailer_ok);
  ck_assert_int_eq(r.ntrailers, 1);
  ck_assert_str_eq(r.seq, "D");

  /* The server calls its client, with metadata, through the peer. */
  memset(&s, 0, sizeof(s));
  o = md_opts(&s, 1, 0);
  ck_assert_int_eq(qrpc_peer_call(p.peers.last, M_CLIENT_UNARY, "pong", 4, &o,
                                  &rec_cbs, &s, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &s.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(s.status, 0);
  ck_assert_int_eq(p.cv.md_ok, 1);
  ck_assert(s.trailer_ok);
  pair_finish(&p);
}
END_TEST

START_TEST(test_metadata_server_stream_headers) {
  pair p;
  rec r, plain;
  pair_start(&p, 0);
  /* Headers asked for and metadata sent: H before the first item, the
   * trailer with the END. */
  memset(&r, 0, sizeof(r));
  qrpc_call_opts o = md_opts(&r, 1, 1);
  ck_assert_int_eq(qrpc_client_stream(p.cl.cli, M_SSTREAM,
                                      QRPC_SHAPE_SERVER_STREAM, "x", 1, &o,
                                      &rec_cbs, &r, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, 0);
  ck_assert_str_eq(r.seq, "HIIID");
  ck_assert_int_eq(r.headers, 1);
  ck_assert(r.headers_ok);
  ck_assert(r.trailer_ok);
  ck_assert_int_eq(p.sv.md_ok, 1);
  ck_assert_int_eq(p.sv.bad_header, 0);

  /* Only the headers asked for: no metadata, the signal all the same. */
  memset(&r, 0, sizeof(r));
  o = md_opts(&r, 0, 1);
  ck_assert_int_eq(qrpc_client_stream(p.cl.cli, M_SSTREAM,
                                      QRPC_SHAPE_SERVER_STREAM, "x", 1, &o,
                                      &rec_cbs, &r, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_str_eq(r.seq, "HIIID");
  ck_assert_int_eq(p.sv.nmd, 0);

  /* Neither: the caller is sent no headers and no trailers. */
  memset(&plain, 0, sizeof(plain));
  o = md_opts(&plain, 0, 0);
  ck_assert_int_eq(qrpc_client_stream(p.cl.cli, M_SSTREAM,
                                      QRPC_SHAPE_SERVER_STREAM, "x", 1, &o,
                                      &rec_cbs, &plain, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &plain.done, 1, QT_WAIT_MS));
  ck_assert_str_eq(plain.seq, "IIID");
  ck_assert_int_eq(plain.ntrailers, 0);
  pair_finish(&p);
}
END_TEST

/* Client streaming (shape 0) and bidi (shape 1). */
START_TEST(test_metadata_client_and_bidi_streams) {
  pair p;
  rec r;
  qrpc_call *call = NULL;
  qrpc_shape shape =
      _i == 0 ? QRPC_SHAPE_CLIENT_STREAM : QRPC_SHAPE_BIDI_STREAM;
  uint32_t method = _i == 0 ? M_CSTREAM : M_BIDI;
  pair_start(&p, 0);
  memset(&r, 0, sizeof(r));
  qrpc_call_opts o = md_opts(&r, 1, 1);
  ck_assert_int_eq(qrpc_client_stream(p.cl.cli, method, shape, NULL, 0, &o,
                                      &rec_cbs, &r, &call),
                   0);
  ck_assert(qt_run_until_count(loop, &r.headers, 1, QT_WAIT_MS));
  for (int i = 0; i < ITEMS; i++)
    ck_assert_int_eq(qrpc_call_send(call, "it", 2), 0);
  ck_assert_int_eq(qrpc_call_end(call), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, 0);
  ck_assert_int_eq(p.sv.md_ok, 1);
  ck_assert_int_eq(p.sv.items, ITEMS);
  ck_assert(r.headers_ok);
  ck_assert(r.trailer_ok);
  if (shape == QRPC_SHAPE_CLIENT_STREAM) {
    ck_assert_str_eq(r.seq, "HD");
    ck_assert_int_eq(r.reply_len, 1);
    ck_assert_int_eq(r.reply[0], '0' + ITEMS);
  } else {
    ck_assert_str_eq(r.seq, "HIIID");
  }
  pair_finish(&p);
}
END_TEST

/* Over the server's limit: RESOURCE_EXHAUSTED, no handler, the connection
 * serves the next call. Over the client's own limit, or a bad key: refused
 * before anything is sent. */
START_TEST(test_metadata_limits_and_bad_keys) {
  pair p;
  rec r;
  static uint8_t big[200];
  pair_start(&p, 128);
  memset(big, 'v', sizeof(big));
  qrpc_md over[] = {{.key = "big", .value = big, .value_len = sizeof(big)}};
  memset(&r, 0, sizeof(r));
  qrpc_call_opts o = md_opts(&r, 0, 0);
  o.metadata = over;
  o.metadata_count = 1;
  ck_assert_int_eq(
      qrpc_client_call(p.cl.cli, M_UNARY, "a", 1, &o, &rec_cbs, &r, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_RESOURCE_EXHAUSTED);
  ck_assert_int_eq(r.local, 0);
  ck_assert_int_eq(p.sv.runs, 0);

  memset(&r, 0, sizeof(r));
  o = md_opts(&r, 1, 0);
  ck_assert_int_eq(
      qrpc_client_call(p.cl.cli, M_UNARY, "b", 1, &o, &rec_cbs, &r, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, 0);
  ck_assert_int_eq(p.sv.runs, 1);

  /* The client's own limit (16 KiB by default). */
  static uint8_t huge[(16u << 10) + 1];
  over[0].value = huge;
  over[0].value_len = sizeof(huge);
  o.metadata = over;
  o.metadata_count = 1;
  ck_assert_int_eq(
      qrpc_client_call(p.cl.cli, M_UNARY, "c", 1, &o, &rec_cbs, &r, NULL),
      QRPC_EMSGSIZE);
  static const char *const bad_keys[] = {"Auth", "", "a b", "caf\xc3\xa9"};
  for (size_t i = 0; i < sizeof(bad_keys) / sizeof(bad_keys[0]); i++) {
    qrpc_md bad[] = {{.key = bad_keys[i], .value = NULL, .value_len = 0}};
    o.metadata = bad;
    o.metadata_count = 1;
    ck_assert_int_eq(
        qrpc_client_call(p.cl.cli, M_UNARY, "d", 1, &o, &rec_cbs, &r, NULL),
        QRPC_EINVAL);
  }
  qt_run_for(loop, 50);
  ck_assert_int_eq(r.done, 1);
  pair_finish(&p);
}
END_TEST

/* A hand-built caller: one that sends no metadata gets today's frames
 * only, although the handlers set headers and trailers; one that sends a
 * malformed HEADERS loses its connection with PROTOCOL_ERROR. */
typedef struct raw_seen {
  int frames;
} raw_seen;

static void raw_on_frame(qt_raw_rpc *r, const qrpci_frame *f, void *ud) {
  (void)r;
  (void)f;
  ((raw_seen *)ud)->frames++;
}

START_TEST(test_metadata_old_caller_sees_no_new_frames) {
  pair p;
  qt_raw_rpc raw;
  raw_seen seen = {0};
  pair_start(&p, 0);
  qrpc_conn *c = qrpc_peer_conn(qrpc_client_peer(p.cl.cli));
  ck_assert_int_eq(qt_raw_rpc_open(&raw, c, raw_on_frame, &seen), 0);
  qrpci_frame f = qt_frame_request(1000, M_UNARY, 0, "u", 1);
  ck_assert_int_eq(qt_raw_rpc_send(&raw, &f), 0);
  f = qt_frame_request(1001, M_SSTREAM, 0, "s", 1);
  ck_assert_int_eq(qt_raw_rpc_send(&raw, &f), 0);
  /* REPLY, then ITEMS items and END. */
  ck_assert(qt_run_until_count(loop, &seen.frames, 2 + ITEMS, QT_WAIT_MS));
  qt_run_for(loop, 50);
  ck_assert_int_eq(raw.by_type[QRPCI_FRAME_REPLY], 1);
  ck_assert_int_eq(raw.by_type[QRPCI_FRAME_ITEM], ITEMS);
  ck_assert_int_eq(raw.by_type[QRPCI_FRAME_END], 1);
  ck_assert_int_eq(raw.by_type[QRPCI_FRAME_HEADERS], 0);
  ck_assert_int_eq(raw.by_type[QRPCI_FRAME_TRAILERS], 0);
  ck_assert_int_eq(raw.undecodable, 0);
  ck_assert_int_eq(p.sv.runs, 2);

  /* HEADERS with the key "Auth": the connection closes, the server
   * serves on. */
  static const uint8_t bad[] = {
      0x08, QRPCI_FRAME_HEADERS, 0x05, 0x04, 'A', 'u', 't', 'h', 0x00};
  ck_assert_int_eq(qt_raw_rpc_send_bytes(&raw, bad, sizeof(bad)), 0);
  ck_assert(qt_run_until_count(loop, &p.cl.disconnects, 1, QT_WAIT_MS));
  ck_assert_uint_eq(p.cl.last_disconnect.code, QRPCI_ERR_PROTOCOL_ERROR);
  ck_assert(qt_contains_nocase(p.cl.last_disconnect.reason, "lowercase"));
  ck_assert(qt_rpc_client_wait_connects(&p.cl, 2, QT_WAIT_MS));
  rec r;
  memset(&r, 0, sizeof(r));
  qrpc_call_opts o = md_opts(&r, 1, 0);
  ck_assert_int_eq(
      qrpc_client_call(p.cl.cli, M_UNARY, "e", 1, &o, &rec_cbs, &r, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, 0);
  p.cl.disconnects = 0;
  pair_finish(&p);
}
END_TEST

/* HEADERS whose REQUEST does not follow, and TRAILERS from a caller: the
 * connection closes with PROTOCOL_ERROR naming the problem. */
START_TEST(test_metadata_misplaced_frames) {
  static const struct {
    uint8_t bytes[16];
    size_t len;
    const char *reason;
  } cases[] = {
      /* HEADERS for call 9, then REQUEST 10 (method 1, no timeout). */
      {{0x02, QRPCI_FRAME_HEADERS, 0x09, 0x04, QRPCI_FRAME_REQUEST, 0x0a, 0x01,
        0x00},
       8,
       "not followed by its REQUEST"},
      /* TRAILERS from the caller. */
      {{0x05, QRPCI_FRAME_TRAILERS, 0x01, 0x01, 'k', 0x00},
       6,
       "TRAILERS: sent by the caller"},
  };
  pair p;
  /* In place until the loop is freed, as qt_raw_rpc_open() asks. */
  static qt_raw_rpc raws[2];
  static raw_seen seen[2];
  pair_start(&p, 0);
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    qt_raw_rpc *raw = &raws[i];
    int before = p.cl.disconnects;
    qrpc_conn *c = qrpc_peer_conn(qrpc_client_peer(p.cl.cli));
    ck_assert_int_eq(qt_raw_rpc_open(raw, c, raw_on_frame, &seen[i]), 0);
    ck_assert_int_eq(qt_raw_rpc_send_bytes(raw, cases[i].bytes, cases[i].len),
                     0);
    ck_assert(
        qt_run_until_count(loop, &p.cl.disconnects, before + 1, QT_WAIT_MS));
    ck_assert_uint_eq(p.cl.last_disconnect.code, QRPCI_ERR_PROTOCOL_ERROR);
    ck_assert_msg(
        qt_contains_nocase(p.cl.last_disconnect.reason, cases[i].reason),
        "reason: %s", p.cl.last_disconnect.reason);
    ck_assert(qt_rpc_client_wait_connects(&p.cl, (int)i + 2, QT_WAIT_MS));
  }
  ck_assert_int_eq(p.sv.runs, 0);
  p.cl.disconnects = 0;
  pair_finish(&p);
}
END_TEST

/* ---- Interceptors ----------------------------------------------------- */

typedef struct hooks {
  int before;
  int after;
  int after_by_status[QT_STATUS_SLOTS];
  int add_failed;
  int saw_auth;      /* server: the call carried the right authorization */
  int refuse_method; /* client: refuse calls of this method */
  int outgoing_wrong;
} hooks;

static int cli_before(qrpc_icx *cx, const qrpc_call_info *info,
                      const char **detail, void *ud) {
  hooks *h = ud;
  h->before++;
  if (!info->outgoing) h->outgoing_wrong++;
  if ((int)info->method == h->refuse_method) {
    *detail = "not from this client";
    return QRPC_STATUS_PERMISSION_DENIED;
  }
  if (qrpc_icx_add_metadata(cx, "authorization", "Bearer t", 8) != 0)
    h->add_failed++;
  return 0;
}

static int srv_before(qrpc_icx *cx, const qrpc_call_info *info,
                      const char **detail, void *ud) {
  hooks *h = ud;
  h->before++;
  if (info->outgoing) h->outgoing_wrong++;
  /* Served calls cannot add request metadata. */
  if (qrpc_icx_add_metadata(cx, "x", "y", 1) != QRPC_EINVAL) h->add_failed++;
  const qrpc_md *a =
      qrpc_md_find(info->metadata, info->metadata_count, "authorization");
  if (!a || a->value_len != 8 || memcmp(a->value, "Bearer t", 8) != 0) {
    *detail = "no valid authorization";
    return QRPC_STATUS_UNAUTHENTICATED;
  }
  h->saw_auth++;
  return 0;
}

static void count_after(const qrpc_call_info *info, void *ud) {
  hooks *h = ud;
  h->after++;
  if (info->status >= 0 && info->status < QT_STATUS_SLOTS)
    h->after_by_status[info->status]++;
}

START_TEST(test_metadata_interceptors_auth) {
  pair p;
  hooks ch, sh;
  rec r;
  qt_rpc_client other;
  memset(&ch, 0, sizeof(ch));
  memset(&sh, 0, sizeof(sh));
  pair_start(&p, 0);
  qrpc_interceptor ci = {cli_before, count_after, &ch};
  qrpc_interceptor si = {srv_before, count_after, &sh};
  ck_assert_int_eq(qrpc_client_add_interceptor(p.cl.cli, &ci), 0);
  ck_assert_int_eq(qrpc_server_add_interceptor(p.srv, &si), 0);
  ck_assert_int_eq(qrpc_server_add_interceptor(p.srv, NULL), QRPC_EINVAL);

  /* The hook's header goes out on a call that has no metadata of its
   * own, and the server's hook lets it through. */
  memset(&r, 0, sizeof(r));
  qrpc_call_opts o = md_opts(&r, 0, 0);
  ck_assert_int_eq(
      qrpc_client_call(p.cl.cli, M_UNARY, "a", 1, &o, &rec_cbs, &r, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, 0);
  ck_assert_int_eq(p.sv.runs, 1);
  ck_assert_int_eq(p.sv.nmd, 1);
  ck_assert_int_eq(sh.saw_auth, 1);

  /* A streaming call with metadata of its own: both reach the server. */
  memset(&r, 0, sizeof(r));
  o = md_opts(&r, 1, 1);
  ck_assert_int_eq(qrpc_client_stream(p.cl.cli, M_SSTREAM,
                                      QRPC_SHAPE_SERVER_STREAM, "s", 1, &o,
                                      &rec_cbs, &r, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_str_eq(r.seq, "HIIID");
  ck_assert_int_eq(p.sv.nmd, 3);
  ck_assert_int_eq(p.sv.md_ok, 1);

  /* Refused on the client: nothing is sent, on_done reports the status
   * from the loop, and the after hook still runs once. */
  ch.refuse_method = M_BIDI;
  memset(&r, 0, sizeof(r));
  o = md_opts(&r, 0, 0);
  ck_assert_int_eq(qrpc_client_stream(p.cl.cli, M_BIDI, QRPC_SHAPE_BIDI_STREAM,
                                      NULL, 0, &o, &rec_cbs, &r, NULL),
                   0);
  ck_assert_int_eq(r.done, 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_PERMISSION_DENIED);
  ck_assert_int_eq(r.local, 1);

  /* A client without the hook is refused by the server's: no handler. */
  ck_assert_int_eq(qt_rpc_client_start(&other, loop, p.addr, ctls, NULL), 0);
  ck_assert(qt_rpc_client_wait_connects(&other, 1, QT_WAIT_MS));
  for (int shape = 0; shape < 2; shape++) {
    memset(&r, 0, sizeof(r));
    o = md_opts(&r, shape, 0);
    if (shape == 0)
      ck_assert_int_eq(
          qrpc_client_call(other.cli, M_UNARY, "b", 1, &o, &rec_cbs, &r, NULL),
          0);
    else
      ck_assert_int_eq(qrpc_client_stream(other.cli, M_CSTREAM,
                                          QRPC_SHAPE_CLIENT_STREAM, NULL, 0, &o,
                                          &rec_cbs, &r, NULL),
                       0);
    ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
    ck_assert_int_eq(r.status, QRPC_STATUS_UNAUTHENTICATED);
    ck_assert_int_eq(r.local, 0);
  }
  ck_assert_int_eq(p.sv.runs, 2);
  qt_run_for(loop, 50);
  qt_rpc_client_free(&other);

  ck_assert_int_eq(ch.before, 3);
  ck_assert_int_eq(ch.after, 3);
  ck_assert_int_eq(ch.after_by_status[0], 2);
  ck_assert_int_eq(ch.after_by_status[QRPC_STATUS_PERMISSION_DENIED], 1);
  ck_assert_int_eq(sh.before, 4);
  ck_assert_int_eq(sh.after, 4);
  ck_assert_int_eq(sh.after_by_status[0], 2);
  ck_assert_int_eq(sh.after_by_status[QRPC_STATUS_UNAUTHENTICATED], 2);
  ck_assert_int_eq(ch.add_failed + sh.add_failed, 0);
  ck_assert_int_eq(ch.outgoing_wrong + sh.outgoing_wrong, 0);
  pair_finish(&p);
}
END_TEST

/* ---- Propagation ------------------------------------------------------ */

/* The server relays a call to its client, propagating deadline and keys. */
typedef struct relay {
  qrpc_req *req;
  int rv;
  int peeks;
  uint64_t peek_remaining_ms;
  int peek_trace_ok;
  int peek_auth_seen;
  size_t peek_nmd;
} relay;

static void relay_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  relay *rl = ud;
  if (res->status == 0)
    qrpc_req_reply(rl->req, res->payload, res->len);
  else
    qrpc_req_error(rl->req, res->status, "relay failed");
  rl->req = NULL;
}

static void relay_cancel(qrpc_req *req, int status, void *ud) {
  (void)req;
  (void)status;
  ((relay *)ud)->req = NULL;
}

static void relay_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                          void *ud) {
  relay *rl = ud;
  static const qrpc_req_callbacks cbs = {.on_cancel = relay_cancel};
  static const qrpc_call_callbacks ccbs = {.on_done = relay_done};
  static const qrpc_md own[] = {
      {.key = "hop", .value = (const uint8_t *)"1", .value_len = 1}};
  qrpc_md buf[4];
  qrpc_call_opts o;
  qrpc_call_opts_default(&o);
  o.metadata = own;
  o.metadata_count = 1;
  qrpc_req_set_callbacks(req, &cbs, rl);
  rl->req = req;
  ck_assert_int_eq(qrpc_req_propagate(req, NULL, &o, buf, 1), QRPC_ENOBUFS);
  ck_assert_ptr_eq(o.metadata, own);
  rl->rv = qrpc_req_propagate(req, NULL, &o, buf, 4);
  if (rl->rv == 0)
    rl->rv = qrpc_peer_call(qrpc_req_peer(req), M_CLIENT_PEEK, payload, len, &o,
                            &ccbs, rl, NULL);
  if (rl->rv != 0) qrpc_req_error(req, QRPC_STATUS_INTERNAL, "relay");
}

static void peek_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                         void *ud) {
  relay *rl = ud;
  const qrpc_md *md;
  rl->peeks++;
  rl->peek_remaining_ms = qrpc_req_remaining_ms(req);
  rl->peek_nmd = qrpc_req_metadata(req, &md);
  const qrpc_md *t = qrpc_md_find(md, rl->peek_nmd, "traceparent");
  rl->peek_trace_ok =
      t && t->value_len == 5 && memcmp(t->value, "00-ab", 5) == 0;
  rl->peek_auth_seen = qrpc_md_find(md, rl->peek_nmd, "auth") != NULL;
  qrpc_req_reply(req, payload, len);
}

START_TEST(test_metadata_propagation) {
  pair p;
  relay rl;
  rec r;
  memset(&rl, 0, sizeof(rl));
  pair_start(&p, 0);
  ck_assert_int_eq(qrpc_server_register(p.srv, M_RELAY, QRPC_SHAPE_UNARY,
                                        relay_handler, &rl),
                   0);
  ck_assert_int_eq(qrpc_client_register(p.cl.cli, M_CLIENT_PEEK,
                                        QRPC_SHAPE_UNARY, peek_handler, &rl),
                   0);
  static const qrpc_md md[] = {
      {.key = "traceparent", .value = (const uint8_t *)"00-ab", .value_len = 5},
      {.key = "auth", .value = (const uint8_t *)"tok", .value_len = 3},
  };
  memset(&r, 0, sizeof(r));
  qrpc_call_opts o = md_opts(&r, 0, 0);
  o.metadata = md;
  o.metadata_count = 2;
  uint64_t budget = o.timeout_ms;
  ck_assert_int_eq(
      qrpc_client_call(p.cl.cli, M_RELAY, "r", 1, &o, &rec_cbs, &r, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, 0);
  ck_assert_int_eq(rl.rv, 0);
  ck_assert_int_eq(rl.peeks, 1);
  /* The downstream call had a deadline, no longer than the caller's. */
  ck_assert(rl.peek_remaining_ms != UINT64_MAX);
  ck_assert(rl.peek_remaining_ms <= budget);
  ck_assert(rl.peek_trace_ok);
  ck_assert(!rl.peek_auth_seen);
  ck_assert_int_eq(rl.peek_nmd, 2); /* hop, traceparent */
  pair_finish(&p);
}
END_TEST

static Suite *metadata_suite(void) {
  Suite *s = suite_create("rpc_metadata");
  TCase *tc = tcase_create("metadata");
  tcase_add_checked_fixture(tc, setup, teardown);
  tcase_set_timeout(tc, 60);
  tcase_add_test(tc, test_metadata_unary_both_directions);
  tcase_add_test(tc, test_metadata_server_stream_headers);
  tcase_add_loop_test(tc, test_metadata_client_and_bidi_streams, 0, 2);
  tcase_add_test(tc, test_metadata_limits_and_bad_keys);
  tcase_add_test(tc, test_metadata_old_caller_sees_no_new_frames);
  tcase_add_test(tc, test_metadata_misplaced_frames);
  tcase_add_test(tc, test_metadata_interceptors_auth);
  tcase_add_test(tc, test_metadata_propagation);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(metadata_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
