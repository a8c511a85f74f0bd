/*
 * The call engine shared by servers and clients: RPC streams, frame
 * dispatch, outgoing calls, incoming requests, deadlines and GOAWAY.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "quic/close.h"
#include "quic/rpcstream.h"
#include "rpc/callstats.h"
#include "rpc/engine.h"
#include "util/clock.h"
#include "util/log.h"
#include "wire/frame.h"
#include "wire/metadata.h"
#include "wire/protocol.h"
#include "wire/stream_header.h"

/* How long answers already queued get to reach the peer once a drained
 * connection closes with GOING_AWAY. */
#define GOAWAY_FLUSH_MS 2000
#define MAX_UNARY_STREAMS 64

/* ---- Options and names ------------------------------------------------ */

void qrpci_rpc_opts_default(qrpc_rpc_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  o->max_frame = QRPCI_DEFAULT_FRAME_LIMIT;
  o->max_calls_in_flight = 4096;
  o->unary_streams = 4;
  o->max_buffered = 64u << 20;
  o->max_metadata = QRPCI_MD_DEFAULT_LIMIT;
}

int qrpci_rpc_opts_valid(const qrpc_rpc_opts *o) {
  return o->size == sizeof(*o) && o->max_frame >= QRPCI_MIN_FRAME_LIMIT &&
         o->max_calls_in_flight > 0 && o->unary_streams > 0 &&
         o->unary_streams <= MAX_UNARY_STREAMS &&
         o->max_buffered >= o->max_frame && o->max_metadata > 0 &&
         o->max_metadata <= o->max_frame / 2;
}

void qrpc_call_opts_default(qrpc_call_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  o->fail_fast = -1;
}

/* Where a field of qrpc_call_opts ends: a caller's size covers the field
 * when it reaches this far. */
#define OPTS_END(field)                                                        \
  (offsetof(qrpc_call_opts, field) + sizeof(((qrpc_call_opts *)0)->field))

/* The ends of the fields after size, in order: one entry per version of
 * the struct adds its fields here. The first version ends with fail_fast.
 * (On LP64 hosts idempotent sits in what was that version's tail padding,
 * which qrpc_call_opts_default() cleared.) */
static const size_t call_opts_ends[] = {
    OPTS_END(timeout_ms),           OPTS_END(fail_fast),
    OPTS_END(idempotent),           OPTS_END(metadata_count),
    OPTS_END(on_headers_user_data),
};
#define CALL_OPTS_MIN OPTS_END(fail_fast)

int qrpc_call_opts_copy(qrpc_call_opts *out, const qrpc_call_opts *in) {
  if (!out) return QRPC_EINVAL;
  qrpc_call_opts_default(out);
  if (!in) return 0;
  if (in->size < CALL_OPTS_MIN || in->size > sizeof(*in)) return QRPC_EINVAL;
  /* Whole fields only: the bytes past the last one covered stay default. */
  size_t n = 0;
  for (size_t i = 0; i < sizeof(call_opts_ends) / sizeof(call_opts_ends[0]);
       i++)
    if (call_opts_ends[i] <= in->size) n = call_opts_ends[i];
  memcpy(out, in, n);
  out->size = sizeof(*out);
  return 0;
}

const char *qrpc_status_name(int status) {
  static const char *const names[] = {
      "OK",           "CANCELLED",          "UNKNOWN",
      "INVALID_ARGUMENT", "DEADLINE_EXCEEDED", "NOT_FOUND",
      "ALREADY_EXISTS", "PERMISSION_DENIED", "RESOURCE_EXHAUSTED",
      "FAILED_PRECONDITION", "ABORTED",      "OUT_OF_RANGE",
      "UNIMPLEMENTED", "INTERNAL",          "UNAVAILABLE",
      "DATA_LOSS",    "UNAUTHENTICATED"};
  if (status >= 0 && (size_t)status < sizeof(names) / sizeof(names[0]))
    return names[status];
  if (status == QRPC_STATUS_TOO_EARLY) return "TOO_EARLY";
  return status >= QRPC_STATUS_APP_MIN ? "APPLICATION" : "UNKNOWN_STATUS";
}

/* ---- Core ------------------------------------------------------------- */

static void call_finish(qrpc_call *call, int status, const char *detail,
                        size_t detail_len, const uint8_t *payload, size_t len,
                        int local);
static void call_fail_local(qrpc_call *call, int status, const char *detail);
static int call_offer(qrpc_call *call, int ran, const char **detail);

static void done_cb(evutil_socket_t fd, short what, void *arg) {
  qrpci_core *core = arg;
  while (!qrpci_list_empty(&core->done)) {
    qrpc_call *call = QRPCI_CONTAINER_OF(core->done.next, qrpc_call, node);
    qrpci_list_remove(&call->node);
    call_fail_local(call, call->res_status,
                    call->res_detail ? call->res_detail : "");
  }
}

int qrpci_core_init(qrpci_core *core, qrpc_loop *loop,
                    const qrpc_rpc_opts *opts, const qrpci_core_ops *ops) {
  memset(core, 0, sizeof(*core));
  core->ops = ops;
  core->loop = loop;
  if (opts)
    core->opts = *opts;
  else
    qrpci_rpc_opts_default(&core->opts);
  if (!qrpci_rpc_opts_valid(&core->opts)) return QRPC_EINVAL;
  qrpci_u64map_init(&core->methods);
  qrpci_list_init(&core->done);
  core->done_ev = event_new(qrpc_loop_base(loop), -1, 0, done_cb, core);
  return core->done_ev ? 0 : QRPC_ENOMEM;
}

void qrpci_core_cleanup(qrpci_core *core) {
  /* Deferred completions still owe their callback. */
  if (core->done_ev) done_cb(-1, 0, core);
  void *m;
  while ((m = qrpci_u64map_pop(&core->methods))) free(m);
  qrpci_u64map_free(&core->methods);
  while (core->free_calls) {
    qrpc_call *n = core->free_calls->next_free;
    free(core->free_calls);
    core->free_calls = n;
  }
  while (core->free_reqs) {
    qrpc_req *n = core->free_reqs->next_free;
    free(core->free_reqs);
    core->free_reqs = n;
  }
  if (core->done_ev) event_free(core->done_ev);
  core->done_ev = NULL;
  qrpci_callstats_free(core->callstats);
  core->callstats = NULL;
  for (size_t i = 0; i < core->nkept; i++) free(core->kept[i]);
  free(core->kept);
  core->kept = NULL;
  core->nkept = 0;
}

qrpci_callstats *qrpci_core_callstats(qrpci_core *core) {
  if (!core->callstats) core->callstats = qrpci_callstats_new();
  return core->callstats;
}

int qrpci_core_keep(qrpci_core *core, const void *data, size_t len,
                    void **out) {
  if (!data || !len || !out) return QRPC_EINVAL;
  void **kept = realloc(core->kept, (core->nkept + 1) * sizeof(*kept));
  if (!kept) return QRPC_ENOMEM;
  core->kept = kept;
  void *copy = malloc(len);
  if (!copy) return QRPC_ENOMEM;
  memcpy(copy, data, len);
  kept[core->nkept++] = copy;
  *out = copy;
  return 0;
}

int qrpci_core_register(qrpci_core *core, uint32_t method, qrpc_shape shape,
                        unsigned flags, qrpc_handler_fn fn, void *ud) {
  if (!fn || shape < QRPC_SHAPE_UNARY || shape > QRPC_SHAPE_BIDI_STREAM ||
      (flags & ~(unsigned)QRPC_METHOD_IDEMPOTENT))
    return QRPC_EINVAL;
  /* Keys must be non-zero; method 0 is a valid id. */
  uint64_t key = (uint64_t)method + 1;
  qrpci_method *m = qrpci_u64map_get(&core->methods, key);
  if (!m) {
    if (!(m = malloc(sizeof(*m)))) return QRPC_ENOMEM;
    if (qrpci_u64map_put(&core->methods, key, m) != 0) {
      free(m);
      return QRPC_ENOMEM;
    }
  }
  m->shape = shape;
  m->flags = flags;
  m->fn = fn;
  m->ud = ud;
  return 0;
}

/* Equal timeouts share one libevent queue (O(1) each) instead of the heap;
 * a handful of distinct values covers what applications use. */
static void arm_timer(qrpci_core *core, struct event *ev, uint64_t ms) {
  const struct timeval *tv = NULL;
  for (size_t i = 0; i < core->ntimeouts; i++)
    if (core->timeouts[i].ms == ms) tv = core->timeouts[i].tv;
  struct timeval plain = {.tv_sec = (time_t)(ms / 1000),
                          .tv_usec = (suseconds_t)(ms % 1000) * 1000};
  if (!tv && core->ntimeouts < QRPCI_COMMON_TIMEOUTS) {
    tv = event_base_init_common_timeout(qrpc_loop_base(core->loop), &plain);
    if (tv) {
      core->timeouts[core->ntimeouts].ms = ms;
      core->timeouts[core->ntimeouts].tv = tv;
      core->ntimeouts++;
    }
  }
  evtimer_add(ev, tv ? tv : &plain);
}

/* ---- Writing frames --------------------------------------------------- */

static int stream_ok(const qrpci_rstream *rs) { return rs && !rs->gone; }

/* REQUEST, NOTIFY, REPLY and ITEM: header, then the payload in place,
 * after pre (HEADERS or TRAILERS, may be NULL) in the same write, so the
 * two frames go out together or not at all. */
static int put_frame_after(qrpci_rstream *rs, const qrpci_frame *pre,
                           uint8_t type, uint64_t msgid, uint64_t method,
                           uint64_t timeout_ms, qrpci_payload *pl) {
  if (!stream_ok(rs)) return QRPC_ECLOSED;
  size_t len = qrpci_payload_len(pl);
  size_t hl = qrpci_frame_header_len(type, msgid, method, timeout_ms, len);
  if (hl == 0) return QRPC_EINVAL;
  if (len > rs->peer->core->opts.max_frame ||
      hl + len - 1 > rs->peer->core->opts.max_frame)
    return QRPC_EMSGSIZE;
  size_t pre_len = pre ? qrpci_frame_encoded_len(pre) : 0;
  if (pre && pre_len == 0) return QRPC_EINVAL;
  /* Large bytes given away go into the send buffer as they are; only the
   * headers are written there. */
  void (*release)(void *) = qrpci_payload_release(pl);
  int give = release && len >= QRPCI_GIVE_MIN;
  uint8_t *p = qrpci_stream_reserve(rs->s, pre_len + hl + (give ? 0 : len));
  if (!p) return QRPC_ENOMEM;
  if (pre) qrpci_frame_encode(p, pre_len, pre);
  qrpci_frame_encode_header(p + pre_len, hl, type, msgid, method, timeout_ms,
                            len);
  if (give) {
    int rc = qrpci_stream_commit_given(rs->s, pre_len + hl, pl->msg->msg, len,
                                       release, pl->msg->owner);
    if (rc == 0) pl->taken = 1;
    return rc;
  }
  /* Nothing is committed unless the whole frame was written. */
  int rv = qrpci_payload_write(pl, p + pre_len + hl);
  if (rv != 0) return rv;
  qrpci_stream_commit(rs->s, pre_len + hl + len);
  return 0;
}

static int put_frame(qrpci_rstream *rs, uint8_t type, uint64_t msgid,
                     uint64_t method, uint64_t timeout_ms,
                     qrpci_payload *pl) {
  return put_frame_after(rs, NULL, type, msgid, method, timeout_ms, pl);
}

/* A HEADERS or TRAILERS frame carrying b's pairs, for pre above. */
static qrpci_frame md_frame(uint8_t type, uint64_t msgid,
                            const qrpci_mdbuf *b) {
  qrpci_frame f;
  memset(&f, 0, sizeof(f));
  f.type = type;
  f.msgid = msgid;
  f.payload = b->p;
  f.payload_len = b->len;
  return f;
}

/* f after pre (may be NULL), in one write. */
static int put_encoded_after(qrpci_rstream *rs, const qrpci_frame *pre,
                             const qrpci_frame *f) {
  if (!stream_ok(rs)) return QRPC_ECLOSED;
  size_t pre_len = pre ? qrpci_frame_encoded_len(pre) : 0;
  size_t n = qrpci_frame_encoded_len(f);
  if (n == 0 || (pre && pre_len == 0)) return QRPC_EINVAL;
  uint8_t *p = qrpci_stream_reserve(rs->s, pre_len + n);
  if (!p) return QRPC_ENOMEM;
  if (pre) qrpci_frame_encode(p, pre_len, pre);
  qrpci_frame_encode(p + pre_len, n, f);
  qrpci_stream_commit(rs->s, pre_len + n);
  return 0;
}

static int put_encoded(qrpci_rstream *rs, const qrpci_frame *f) {
  return put_encoded_after(rs, NULL, f);
}

/* ERROR or END with a status and a detail (dropped if not UTF-8), after
 * pre (may be NULL). */
static int put_status_after(qrpci_rstream *rs, const qrpci_frame *pre,
                            uint8_t type, uint64_t msgid, int status,
                            const char *detail) {
  qrpci_frame f;
  memset(&f, 0, sizeof(f));
  f.type = type;
  f.msgid = msgid;
  f.status = (uint64_t)status;
  if (detail) {
    f.detail = (const uint8_t *)detail;
    f.detail_len = strlen(detail);
    if (!qrpci_utf8_valid(f.detail, f.detail_len)) f.detail_len = 0;
  }
  return put_encoded_after(rs, pre, &f);
}

static int put_status(qrpci_rstream *rs, uint8_t type, uint64_t msgid,
                      int status, const char *detail) {
  return put_status_after(rs, NULL, type, msgid, status, detail);
}

static int put_id_frame(qrpci_rstream *rs, uint8_t type, uint64_t id) {
  qrpci_frame f;
  memset(&f, 0, sizeof(f));
  f.type = type;
  if (type == QRPCI_FRAME_GOAWAY)
    f.last_msgid = id;
  else
    f.msgid = id;
  return put_encoded(rs, &f);
}

/* ---- RPC streams ------------------------------------------------------ */

static void rs_on_read(qrpc_stream *s, const uint8_t *data, size_t len,
                       int fin, void *ud);
static void rs_on_writable(qrpc_stream *s, void *ud);
static void rs_on_closed(qrpc_stream *s, int error, void *ud);

static const qrpc_stream_callbacks rs_callbacks = {
    .on_read = rs_on_read,
    .on_writable = rs_on_writable,
    .on_closed = rs_on_closed,
};

static qrpci_rstream *rs_new(qrpc_peer *peer, int local) {
  qrpci_rstream *rs = calloc(1, sizeof(*rs));
  if (!rs) return NULL;
  rs->peer = peer;
  rs->local = local;
  rs->pool_slot = -1;
  qrpci_reasm_init(&rs->reasm, peer->core->opts.max_frame);
  qrpci_list_push_back(&peer->streams, &rs->node);
  return rs;
}

static void rs_free(qrpci_rstream *rs) {
  rs->peer->rx_buffered -= rs->rx_buffered;
  qrpci_list_remove(&rs->node);
  qrpci_reasm_free(&rs->reasm);
  free(rs->hdr_pairs);
  free(rs);
}

/* Streams are freed once the transport is done with them and nothing of
 * ours points at them, unless a dispatch on the peer is unwinding. */
static void rs_maybe_free(qrpci_rstream *rs) {
  if (rs->gone && rs->pending == 0 && rs->ncalls == 0 && !rs->call &&
      !rs->req && !rs->peer->busy)
    rs_free(rs);
}

static void rs_finish(qrpci_rstream *rs) {
  if (rs->finished || !stream_ok(rs)) return;
  rs->finished = 1;
  qrpc_stream_finish(rs->s);
}

/* Our FIN: on a stream the peer opened, once it has finished and we have
 * answered everything it carried (docs/protocol.md section 2); on a
 * dedicated stream of ours, once its call is over. */
static void rs_maybe_finish(qrpci_rstream *rs) {
  if (rs->call || rs->req) return;
  if (!rs->local && rs->fin_received && rs->pending == 0) rs_finish(rs);
  if (rs->local && rs->pool_slot < 0) rs_finish(rs);
}

static int rs_open(qrpc_peer *peer, qrpci_rstream **out) {
  qrpci_rstream *rs = rs_new(peer, 1);
  if (!rs) return QRPC_ENOMEM;
  int rv = qrpci_stream_open_rpc(peer->conn, &rs_callbacks, rs, &rs->s);
  if (rv != 0) {
    rs_free(rs);
    return rv;
  }
  *out = rs;
  return 0;
}

/* One of the long-lived streams for unary calls, round robin. */
static int pool_stream(qrpc_peer *peer, qrpci_rstream **out) {
  size_t n = peer->core->opts.unary_streams;
  if (!peer->pool && !(peer->pool = calloc(n, sizeof(*peer->pool))))
    return QRPC_ENOMEM;
  size_t i = peer->rr++ % n;
  if (peer->pool[i]) {
    *out = peer->pool[i];
    return 0;
  }
  qrpci_rstream *rs;
  int rv = rs_open(peer, &rs);
  if (rv == 0) {
    rs->pool_slot = (int)i;
    peer->pool[i] = rs;
    *out = rs;
    return 0;
  }
  /* At the peer's stream limit: share a pool stream that is open. */
  for (size_t k = 0; k < n; k++) {
    if (peer->pool[k]) {
      *out = peer->pool[k];
      return 0;
    }
  }
  return rv;
}

static void accept_rpc_stream(qrpc_conn *c, qrpc_stream *s, void *ud) {
  qrpc_peer *peer = ud;
  if (peer->closed) return;
  qrpci_rstream *rs = rs_new(peer, 0);
  if (!rs) return; /* refused by the transport */
  rs->s = s;
  qrpc_stream_set_callbacks(s, &rs_callbacks, rs);
}

/* ---- Peers ------------------------------------------------------------ */

qrpc_peer *qrpci_peer_new(qrpci_core *core, qrpc_conn *conn) {
  qrpc_peer *peer = calloc(1, sizeof(*peer));
  if (!peer) return NULL;
  peer->core = core;
  peer->conn = conn;
  qrpci_u64map_init(&peer->calls);
  qrpci_u64map_init(&peer->reqs);
  qrpci_list_init(&peer->streams);
  qrpci_list_init(&peer->node);
  qrpci_conn_set_rpc_acceptor(conn, accept_rpc_stream, peer);
  return peer;
}

void qrpci_peer_early(qrpc_peer *peer) {
  if (!peer->ready) peer->early = 1;
}

static void peer_send_goaway(qrpc_peer *peer);

void qrpci_peer_ready(qrpc_peer *peer) {
  peer->ready = 1;
  peer->early = 0;
  /* A server that began draining during the 0-RTT phase could not send
   * its GOAWAY yet. */
  if (peer->goaway_sent) peer_send_goaway(peer);
}

int qrpci_peer_takes(const qrpc_peer *peer, int idempotent) {
  if (peer->closed || peer->goaway_received) return 0;
  return peer->ready || (peer->early && idempotent);
}

static void peer_maybe_release(qrpc_peer *peer) {
  if (!peer->closed || peer->busy) return;
  while (!qrpci_list_empty(&peer->streams))
    rs_free(QRPCI_CONTAINER_OF(peer->streams.next, qrpci_rstream, node));
  qrpci_u64map_free(&peer->calls);
  qrpci_u64map_free(&peer->reqs);
  free(peer->pool);
  peer->core->ops->peer_freed(peer->core, peer);
  free(peer);
}

static void req_cancel(qrpc_req *req, int status);

void qrpci_peer_closed(qrpc_peer *peer) {
  if (peer->closed) return;
  peer->closed = 1;
  peer->busy++;
  qrpc_call *call;
  peer->bg_calls = 0;
  while ((call = qrpci_u64map_pop(&peer->calls))) {
    call->msgid = 0; /* already out of the table */
    const char *detail = "connection lost";
    if (call_offer(call, 1, &detail)) continue;
    call_fail_local(call, QRPC_STATUS_UNAVAILABLE, detail);
  }
  qrpc_req *req;
  while ((req = qrpci_u64map_pop(&peer->reqs))) {
    req->msgid = 0;
    req_cancel(req, QRPC_STATUS_UNAVAILABLE);
  }
  peer->core->ops->peer_released(peer->core, peer);
  peer->busy--;
  peer_maybe_release(peer);
}

int qrpci_peer_idle(qrpc_peer *peer) {
  return peer->reqs.size == 0 && peer->calls.size == peer->bg_calls;
}

static void peer_check_drained(qrpc_peer *peer) {
  if (peer->close_when_idle && !peer->closed && qrpci_peer_idle(peer))
    qrpci_conn_close_after_flush(peer->conn, QRPCI_ERR_GOING_AWAY,
                                 "going away", GOAWAY_FLUSH_MS);
}

void qrpci_peer_goaway(qrpc_peer *peer) {
  if (peer->goaway_sent || peer->closed) return;
  peer->goaway_sent = 1;
  peer->goaway_last = peer->peer_max_msgid;
  peer->close_when_idle = 1;
  if (peer->ready) peer_send_goaway(peer);
  peer_check_drained(peer);
}

static void peer_send_goaway(qrpc_peer *peer) {
  qrpci_rstream *rs;
  if (pool_stream(peer, &rs) == 0)
    put_id_frame(rs, QRPCI_FRAME_GOAWAY, peer->goaway_last);
}

qrpc_conn *qrpc_peer_conn(qrpc_peer *peer) { return peer->conn; }
void qrpc_peer_set_user_data(qrpc_peer *peer, void *ud) {
  peer->user_data = ud;
}
void *qrpc_peer_user_data(qrpc_peer *peer) { return peer->user_data; }

static void fail_proto(qrpc_peer *peer, const char *why) {
  qrpci_conn_fail(peer->conn, QRPCI_ERR_PROTOCOL_ERROR, why);
}

/* ---- Outgoing calls --------------------------------------------------- */

static void call_timer_cb(evutil_socket_t fd, short what, void *arg);

/* ---- Interceptors ----------------------------------------------------- */

struct qrpc_icx {
  qrpci_core *core;
  qrpci_mdbuf *md; /* NULL for a served call */
};

int qrpc_icx_add_metadata(qrpc_icx *cx, const char *key, const void *value,
                          size_t len) {
  if (!cx || !cx->md) return QRPC_EINVAL;
  return qrpci_mdbuf_add(cx->md, key, 0, value, len,
                         cx->core->opts.max_metadata);
}

int qrpci_core_add_interceptor(qrpci_core *core, const qrpc_interceptor *icpt) {
  if (!icpt) return QRPC_EINVAL;
  if (core->nicpt >= QRPCI_MAX_INTERCEPTORS) return QRPC_ELIMIT;
  core->icpt[core->nicpt++] = *icpt;
  return 0;
}

/* Runs before hooks in order until one refuses; *ran counts those that
 * ran (the refusing one included, so its after runs too). */
static int run_before(qrpci_core *core, qrpc_icx *cx,
                      const qrpc_call_info *info, size_t *ran,
                      const char **detail) {
  *ran = 0;
  for (size_t i = 0; i < core->nicpt; i++) {
    const qrpc_interceptor *ic = &core->icpt[i];
    *ran = i + 1;
    if (!ic->before) continue;
    const char *d = NULL;
    int st = ic->before(cx, info, &d, ic->user_data);
    if (st != 0) {
      *detail = d && qrpci_utf8_valid((const uint8_t *)d, strlen(d))
                    ? d
                    : "refused by an interceptor";
      return st > 0 ? st : QRPC_STATUS_INTERNAL;
    }
  }
  return 0;
}

static void run_after(qrpci_core *core, size_t n, qrpc_call_info *info,
                      uint64_t duration_ns) {
  info->duration_ns = duration_ns;
  for (size_t i = n; i-- > 0;)
    if (core->icpt[i].after) core->icpt[i].after(info, core->icpt[i].user_data);
}

int qrpci_call_intercept(qrpc_call *call, qrpc_peer *peer,
                         const qrpc_call_opts *opts, const char **detail) {
  qrpci_core *core = call->core;
  if (core->nicpt == 0) return 0;
  qrpc_icx cx = {core, &call->hdr};
  qrpc_call_info info = {.method = call->method,
                         .shape = call->shape,
                         .outgoing = 1,
                         .peer = peer,
                         .metadata = opts->metadata,
                         .metadata_count = opts->metadata_count};
  call->start_ns = qrpci_now_ns();
  call->icpt_peer = peer;
  int st = run_before(core, &cx, &info, &call->nicpt, detail);
  /* Pairs a hook added make the call one that sends HEADERS. */
  if (call->hdr.len != 0) call->send_hdr = 1;
  return st;
}

int qrpci_call_opts_check(qrpci_core *core, const qrpc_call_opts *opts) {
  if (opts->metadata_count != 0 && opts->metadata == NULL) return QRPC_EINVAL;
  size_t total = 0;
  for (size_t i = 0; i < opts->metadata_count; i++) {
    const qrpc_md *m = &opts->metadata[i];
    if (!m->key) return QRPC_EINVAL;
    size_t kl = m->key_len ? m->key_len : strlen(m->key);
    if (!qrpci_md_key_valid((const uint8_t *)m->key, kl) ||
        (m->value_len != 0 && m->value == NULL))
      return QRPC_EINVAL;
    if (m->value_len > core->opts.max_metadata ||
        kl + m->value_len > core->opts.max_metadata - total)
      return QRPC_EMSGSIZE;
    total += kl + m->value_len;
  }
  return 0;
}

qrpc_call *qrpci_call_new(qrpci_core *core, uint32_t method, qrpc_shape shape,
                          const qrpc_call_opts *opts, uint64_t default_timeout,
                          const qrpc_call_callbacks *cbs, void *ud) {
  qrpc_call *call = core->free_calls;
  if (call) {
    core->free_calls = call->next_free;
    core->nfree_calls--;
  } else if (!(call = malloc(sizeof(*call)))) {
    return NULL;
  }
  memset(call, 0, sizeof(*call));
  call->core = core;
  call->method = method;
  call->shape = shape;
  if (cbs) call->cbs = *cbs;
  call->ud = ud;
  call->idempotent = opts->idempotent != 0;
  call->on_headers = opts->on_headers;
  call->on_headers_ud = opts->on_headers_user_data;
  call->send_hdr = opts->metadata_count != 0 || opts->on_headers != NULL;
  if (qrpci_mdbuf_add_list(&call->hdr, opts->metadata, opts->metadata_count,
                           core->opts.max_metadata) != 0) {
    qrpci_call_release(call);
    return NULL;
  }
  qrpci_list_init(&call->node);
  uint64_t timeout = opts->timeout_ms ? opts->timeout_ms : default_timeout;
  evtimer_assign(&call->timer, qrpc_loop_base(core->loop), call_timer_cb, call);
  if (timeout) {
    call->deadline_ns = qrpci_now_ns() + timeout * QRPCI_NS_PER_MS;
    arm_timer(core, &call->timer, timeout);
    call->timer_set = 1;
  }
  return call;
}

void qrpci_call_release(qrpc_call *call) {
  qrpci_core *core = call->core;
  if (call->timer_set) evtimer_del(&call->timer);
  free(call->payload);
  qrpci_mdbuf_free(&call->hdr);
  free(call->trailers);
  call->trailers = NULL;
  if (core->nfree_calls < QRPCI_FREELIST_MAX) {
    call->next_free = core->free_calls;
    core->free_calls = call;
    core->nfree_calls++;
  } else {
    free(call);
  }
}

/* Takes the call off the wire: out of the MsgId table, its dedicated
 * stream finished; its deadline runs on. */
static void call_unwire(qrpc_call *call) {
  qrpc_peer *peer = call->peer;
  if (peer && call->msgid) {
    qrpci_u64map_del(&peer->calls, call->msgid);
    if (call->background) peer->bg_calls--;
    if (peer->calls.size == peer->bg_calls && !peer->closed &&
        !call->background)
      qrpci_conn_set_awaiting(peer->conn, 0);
  }
  call->msgid = 0;
  qrpci_rstream *rs = call->rs;
  call->rs = NULL;
  if (rs) {
    rs->ncalls--;
    if (rs->call == call) rs->call = NULL;
    rs_maybe_finish(rs);
    rs_maybe_free(rs);
  }
  call->peer = NULL;
  if (peer) peer_check_drained(peer);
}

static void call_detach(qrpc_call *call) {
  if (call->timer_set) {
    evtimer_del(&call->timer);
    call->timer_set = 0;
  }
  call_unwire(call);
}

/* Offers a call that is off its peer without an answer to the owner
 * (qrpci_core_ops.call_lost); 1 if the owner took it. */
static int call_offer(qrpc_call *call, int ran, const char **detail) {
  qrpci_core *core = call->core;
  if (!core->ops->call_lost) return 0;
  call_unwire(call);
  return core->ops->call_lost(core, call, ran, detail);
}

static void call_finish(qrpc_call *call, int status, const char *detail,
                        size_t detail_len, const uint8_t *payload, size_t len,
                        int local) {
  call_detach(call);
  if (call->nicpt) {
    qrpc_call_info info = {.method = call->method,
                           .shape = call->shape,
                           .outgoing = 1,
                           .peer = call->icpt_peer,
                           .status = status};
    run_after(call->core, call->nicpt, &info, qrpci_now_ns() - call->start_ns);
    call->nicpt = 0;
  }
  qrpc_result res = {.status = status,
                     .detail = detail,
                     .detail_len = detail_len,
                     .payload = payload,
                     .len = len,
                     .local = local,
                     .trailers = call->trailers,
                     .ntrailers = call->ntrailers};
  if (call->cbs.on_done) call->cbs.on_done(call, &res, call->ud);
  qrpci_call_release(call);
}

/* A completion decided on this side, with a detail of our own. */
static void call_fail_local(qrpc_call *call, int status, const char *detail) {
  call_finish(call, status, detail, strlen(detail), NULL, 0, 1);
}

/* Takes a call that waits for a connection off its owner's queue. */
static void call_unqueue(qrpc_call *call) {
  qrpci_core *core = call->core;
  if (core->ops->call_unqueued) core->ops->call_unqueued(core, call);
}

void qrpci_call_defer_done(qrpc_call *call, int status, const char *detail) {
  call_detach(call);
  call->state = QRPCI_CALL_DONE;
  call->res_status = status;
  call->res_detail = detail;
  qrpci_list_push_back(&call->core->done, &call->node);
  event_active(call->core->done_ev, 0, 0);
}

static void call_timer_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_call *call = arg;
  call->timer_set = 0;
  if (call->state == QRPCI_CALL_QUEUED) {
    call_unqueue(call);
  } else if (call->rs && call->msgid) {
    /* Tell the callee to stop working for nobody. */
    put_id_frame(call->rs, QRPCI_FRAME_CANCEL, call->msgid);
  }
  call_fail_local(call, QRPC_STATUS_DEADLINE_EXCEEDED, "deadline exceeded");
}

int qrpci_call_start(qrpc_call *call, qrpc_peer *peer, qrpci_payload *pl) {
  if (!qrpci_peer_takes(peer, call->idempotent)) return QRPC_ECLOSED;
  qrpci_rstream *rs;
  int rv = call->shape == QRPC_SHAPE_UNARY ? pool_stream(peer, &rs)
                                           : rs_open(peer, &rs);
  if (rv != 0) return rv;
  uint64_t timeout_ms = 0;
  if (call->deadline_ns) {
    uint64_t now = qrpci_now_ns();
    /* The callee gets what is left of the budget, at least 1 ms, since 0
     * would mean no deadline at all. */
    timeout_ms = call->deadline_ns > now
                     ? (call->deadline_ns - now) / QRPCI_NS_PER_MS
                     : 0;
    if (timeout_ms == 0) timeout_ms = 1;
  }
  uint64_t msgid = peer->last_msgid + 1;
  qrpci_frame hdr = md_frame(QRPCI_FRAME_HEADERS, msgid, &call->hdr);
  if ((rv = qrpci_u64map_put(&peer->calls, msgid, call)) == 0)
    rv = put_frame_after(rs, call->send_hdr ? &hdr : NULL, QRPCI_FRAME_REQUEST,
                         msgid, call->method, timeout_ms, pl);
  if (rv != 0) {
    qrpci_u64map_del(&peer->calls, msgid);
    if (rs->pool_slot < 0) {
      qrpc_stream_reset(rs->s, QRPCI_ERR_INTERNAL_ERROR);
      rs_maybe_free(rs);
    }
    return rv;
  }
  if (call->background)
    peer->bg_calls++;
  else if (peer->calls.size - peer->bg_calls == 1)
    qrpci_conn_set_awaiting(peer->conn, 1);
  peer->last_msgid = msgid;
  call->msgid = msgid;
  call->peer = peer;
  call->rs = rs;
  rs->ncalls++;
  if (rs->pool_slot < 0) rs->call = call;
  call->state = QRPCI_CALL_ACTIVE;
  if (!peer->ready) call->core->early_calls++;
  if (!call->kept) {
    free(call->payload);
    call->payload = NULL;
    qrpci_mdbuf_free(&call->hdr);
  }
  return 0;
}

static int shape_valid(qrpc_shape shape) {
  return shape >= QRPC_SHAPE_UNARY && shape <= QRPC_SHAPE_BIDI_STREAM;
}

static int peer_start(qrpc_peer *peer, uint32_t method, qrpc_shape shape,
                      qrpci_payload *pl, const qrpc_call_opts *opts,
                      const qrpc_call_callbacks *cbs, void *ud,
                      qrpc_call **out) {
  qrpc_call_opts o;
  if (!peer || !shape_valid(shape) || !qrpci_payload_valid(pl) ||
      qrpc_call_opts_copy(&o, opts) != 0)
    return QRPC_EINVAL;
  if ((shape == QRPC_SHAPE_CLIENT_STREAM || shape == QRPC_SHAPE_BIDI_STREAM) &&
      qrpci_payload_len(pl))
    return QRPC_EINVAL;
  int rc = qrpci_call_opts_check(peer->core, &o);
  if (rc != 0) return rc;
  qrpc_call *call = qrpci_call_new(peer->core, method, shape, &o, 0, cbs, ud);
  if (!call) return QRPC_ENOMEM;
  const char *why = NULL;
  int st = qrpci_call_intercept(call, peer, &o, &why);
  if (st != 0) {
    qrpci_call_defer_done(call, st, why);
    if (out) *out = call;
    return 0;
  }
  int rv = qrpci_call_start(call, peer, pl);
  if (rv != 0) {
    qrpci_call_release(call);
    return rv;
  }
  if (out) *out = call;
  return 0;
}

int qrpc_peer_call(qrpc_peer *peer, uint32_t method, const void *payload,
                   size_t len, const qrpc_call_opts *opts,
                   const qrpc_call_callbacks *cbs, void *ud, qrpc_call **out) {
  qrpci_payload pl = qrpci_bytes(payload, len);
  return peer_start(peer, method, QRPC_SHAPE_UNARY, &pl, opts, cbs, ud, out);
}

int qrpc_peer_call_msg(qrpc_peer *peer, uint32_t method, const qrpc_msg *m,
                       const qrpc_call_opts *opts,
                       const qrpc_call_callbacks *cbs, void *ud,
                       qrpc_call **out) {
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(
      &pl, peer_start(peer, method, QRPC_SHAPE_UNARY, &pl, opts, cbs, ud, out));
}

/* A streaming shape: unary calls go through qrpc_peer_call(). */
static int peer_stream(qrpc_peer *peer, uint32_t method, qrpc_shape shape,
                       qrpci_payload *pl, const qrpc_call_opts *opts,
                       const qrpc_call_callbacks *cbs, void *ud,
                       qrpc_call **out) {
  if (shape == QRPC_SHAPE_UNARY) return QRPC_EINVAL;
  return peer_start(peer, method, shape, pl, opts, cbs, ud, out);
}

int qrpc_peer_stream(qrpc_peer *peer, uint32_t method, qrpc_shape shape,
                     const void *payload, size_t len,
                     const qrpc_call_opts *opts,
                     const qrpc_call_callbacks *cbs, void *ud,
                     qrpc_call **out) {
  qrpci_payload pl = qrpci_bytes(payload, len);
  return peer_stream(peer, method, shape, &pl, opts, cbs, ud, out);
}

int qrpc_peer_stream_msg(qrpc_peer *peer, uint32_t method, qrpc_shape shape,
                         const qrpc_msg *m, const qrpc_call_opts *opts,
                         const qrpc_call_callbacks *cbs, void *ud,
                         qrpc_call **out) {
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(
      &pl, peer_stream(peer, method, shape, &pl, opts, cbs, ud, out));
}

int qrpci_peer_notify(qrpc_peer *peer, uint32_t method, qrpci_payload *pl) {
  if (!peer || !qrpci_payload_valid(pl)) return QRPC_EINVAL;
  if (peer->closed || !peer->ready || peer->goaway_received)
    return QRPC_ECLOSED;
  qrpci_rstream *rs;
  int rv = pool_stream(peer, &rs);
  if (rv != 0) return rv;
  return put_frame(rs, QRPCI_FRAME_NOTIFY, 0, method, 0, pl);
}

int qrpc_peer_notify(qrpc_peer *peer, uint32_t method, const void *payload,
                     size_t len) {
  qrpci_payload pl = qrpci_bytes(payload, len);
  return qrpci_peer_notify(peer, method, &pl);
}

int qrpc_peer_notify_msg(qrpc_peer *peer, uint32_t method, const qrpc_msg *m) {
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(&pl, qrpci_peer_notify(peer, method, &pl));
}

static int call_sends_items(const qrpc_call *call) {
  return call->shape == QRPC_SHAPE_CLIENT_STREAM ||
         call->shape == QRPC_SHAPE_BIDI_STREAM;
}

static int call_send(qrpc_call *call, qrpci_payload *pl) {
  if (!call || !call_sends_items(call) || !qrpci_payload_valid(pl))
    return QRPC_EINVAL;
  if (call->state != QRPCI_CALL_ACTIVE || !call->msgid) return QRPC_ECLOSED;
  if (call->sent_end) return QRPC_ESTATE;
  if (!stream_ok(call->rs)) return QRPC_ECLOSED;
  if (qrpci_stream_congested(call->rs->s)) return QRPC_EAGAIN;
  return put_frame(call->rs, QRPCI_FRAME_ITEM, call->msgid, 0, 0, pl);
}

int qrpc_call_send(qrpc_call *call, const void *data, size_t len) {
  qrpci_payload pl = qrpci_bytes(data, len);
  return call_send(call, &pl);
}

int qrpc_call_send_msg(qrpc_call *call, const qrpc_msg *m) {
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(&pl, call_send(call, &pl));
}

/* The payload being delivered becomes *out: the reassembly buffer it lies
 * in changes hands, or a payload that lay whole in a packet is copied. */
static int take_payload(qrpci_core *core, qrpc_msg *out) {
  qrpci_delivery *d = &core->dl;
  uint8_t *buf = qrpci_reasm_take(&d->rs->reasm, d->body);
  const uint8_t *p = d->payload;
  if (!buf) {
    if (!(buf = malloc(d->len ? d->len : 1))) return QRPC_ENOMEM;
    if (d->len) memcpy(buf, d->payload, d->len);
    p = buf;
  }
  memset(out, 0, sizeof(*out));
  out->msg = p;
  out->size = d->len;
  out->release = free;
  out->owner = buf;
  d->rs = NULL; /* once */
  return 0;
}

int qrpc_call_take(qrpc_call *call, qrpc_msg *out) {
  if (!call || !out) return QRPC_EINVAL;
  qrpci_delivery *d = &call->core->dl;
  if (!d->rs || d->rs != call->rs || d->type != QRPCI_FRAME_ITEM ||
      d->msgid != call->msgid)
    return QRPC_ESTATE;
  return take_payload(call->core, out);
}

int qrpc_req_take(qrpc_req *req, qrpc_msg *out) {
  if (!req || !out) return QRPC_EINVAL;
  qrpci_delivery *d = &req->peer->core->dl;
  int mine = req->notify ? d->type == QRPCI_FRAME_NOTIFY
                         : d->rs == req->rs && d->msgid == req->msgid &&
                               (d->type == QRPCI_FRAME_REQUEST ||
                                d->type == QRPCI_FRAME_ITEM);
  if (!d->rs || !mine) return QRPC_ESTATE;
  return take_payload(req->peer->core, out);
}

int qrpc_call_end(qrpc_call *call) {
  if (!call || !call_sends_items(call)) return QRPC_EINVAL;
  if (call->state != QRPCI_CALL_ACTIVE || !call->msgid) return QRPC_ECLOSED;
  if (call->sent_end) return QRPC_ESTATE;
  int rv = put_status(call->rs, QRPCI_FRAME_END, call->msgid, 0, NULL);
  if (rv != 0) return rv;
  call->sent_end = 1;
  if (call->shape == QRPC_SHAPE_BIDI_STREAM && call->got_end)
    call_finish(call, QRPC_STATUS_OK, "", 0, NULL, 0, 0);
  return 0;
}

int qrpc_call_cancel(qrpc_call *call) {
  if (!call) return QRPC_EINVAL;
  if (call->state == QRPCI_CALL_DONE) return QRPC_ECLOSED;
  if (call->state == QRPCI_CALL_QUEUED) {
    call_unqueue(call);
  } else if (call->rs && call->msgid) {
    put_id_frame(call->rs, QRPCI_FRAME_CANCEL, call->msgid);
  }
  qrpci_call_defer_done(call, QRPC_STATUS_CANCELLED, "cancelled");
  return 0;
}

void *qrpc_call_user_data(qrpc_call *call) { return call->ud; }

/* ---- Incoming requests ------------------------------------------------ */

static void req_timer_cb(evutil_socket_t fd, short what, void *arg);

static qrpc_req *req_new(qrpc_peer *peer, qrpci_rstream *rs, uint64_t msgid,
                         uint32_t method, qrpc_shape shape) {
  qrpci_core *core = peer->core;
  qrpc_req *req = core->free_reqs;
  if (req) {
    core->free_reqs = req->next_free;
    core->nfree_reqs--;
  } else if (!(req = malloc(sizeof(*req)))) {
    return NULL;
  }
  memset(req, 0, sizeof(*req));
  req->peer = peer;
  req->rs = rs;
  req->msgid = msgid;
  req->method = method;
  req->shape = shape;
  evtimer_assign(&req->timer, qrpc_loop_base(core->loop), req_timer_cb, req);
  return req;
}

static void req_free(qrpc_req *req) {
  qrpci_core *core = req->peer->core;
  free(req->md);
  req->md = NULL;
  qrpci_mdbuf_free(&req->rhdr);
  qrpci_mdbuf_free(&req->trl);
  if (core->nfree_reqs < QRPCI_FREELIST_MAX) {
    req->next_free = core->free_reqs;
    core->free_reqs = req;
    core->nfree_reqs++;
  } else {
    free(req);
  }
}

/* The request is over for us: nothing more is sent for it. Memory goes
 * back once its handler, if running, has returned. */
static void req_release(qrpc_req *req) {
  if (req->released) return;
  req->released = 1;
  qrpc_peer *peer = req->peer;
  uint64_t duration_ns = 0;
  if (req->start_ns && (req->nicpt || peer->core->callstats))
    duration_ns = qrpci_now_ns() - req->start_ns;
  if (req->nicpt) {
    qrpc_call_info info = {.method = req->method,
                           .shape = req->shape,
                           .peer = peer,
                           .metadata = req->md,
                           .metadata_count = req->nmd,
                           .status = req->status};
    run_after(peer->core, req->nicpt, &info, duration_ns);
    req->nicpt = 0;
  }
  if (req->start_ns && peer->core->callstats)
    qrpci_callstats_record(peer->core->callstats, req->method, req->status,
                           duration_ns);
  if (req->timer_set) {
    evtimer_del(&req->timer);
    req->timer_set = 0;
  }
  if (req->msgid) qrpci_u64map_del(&peer->reqs, req->msgid);
  req->msgid = 0;
  qrpci_rstream *rs = req->rs;
  req->rs = NULL;
  if (rs && !req->notify) {
    rs->pending--;
    if (rs->req == req) rs->req = NULL;
    rs_maybe_finish(rs);
    rs_maybe_free(rs);
  }
  if (!req->in_handler) req_free(req);
  peer_check_drained(peer);
}

/* The application's callbacks may answer req, which releases it; its
 * memory stays valid until the outermost code working on it is done. */
static void req_cancel(qrpc_req *req, int status) {
  if (req->released) return;
  int outer = req->in_handler;
  req->in_handler = 1;
  req->status = status;
  if (req->cbs.on_cancel) req->cbs.on_cancel(req, status, req->ud);
  req_release(req);
  req->in_handler = outer;
  if (!outer) req_free(req);
}

static void req_timer_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_req *req = arg;
  req->timer_set = 0;
  /* The caller has given up too; answering now would only be dropped. */
  req_cancel(req, QRPC_STATUS_DEADLINE_EXCEEDED);
}

static int req_sends_items(const qrpc_req *req);
static void req_flush_headers(qrpc_req *req);

static void run_handler(qrpc_req *req, const qrpci_method *m,
                        const uint8_t *payload, size_t len) {
  req->in_handler = 1;
  m->fn(req, payload, len, m->ud);
  /* The handler returned without failing the call: it is accepted. */
  if (!req->released && !req->notify) req_flush_headers(req);
  /* A NOTIFY's req lives for the handler call only. */
  if (req->notify) req_release(req);
  req->in_handler = 0;
  if (req->released) req_free(req);
}

static void answer_refusal(qrpci_rstream *rs, uint64_t msgid, int status,
                           const char *detail) {
  put_status(rs, QRPCI_FRAME_ERROR, msgid, status, detail);
}

/* The caller's HEADERS for this REQUEST, taken off its stream. */
typedef struct req_hdr {
  int present;
  int over;
  uint8_t *pairs;
  size_t len;
} req_hdr;

static void on_request(qrpci_rstream *rs, const qrpci_frame *f,
                       const req_hdr *hdr) {
  qrpc_peer *peer = rs->peer;
  if (f->msgid <= rs->last_req_msgid) {
    fail_proto(peer, "REQUEST: MsgId not greater than the previous one");
    return;
  }
  if (qrpci_u64map_get(&peer->reqs, f->msgid)) {
    fail_proto(peer, "REQUEST: MsgId of a call still in flight");
    return;
  }
  rs->last_req_msgid = f->msgid;
  if (f->msgid > peer->peer_max_msgid) peer->peer_max_msgid = f->msgid;
  if (peer->goaway_sent && f->msgid > peer->goaway_last) {
    /* GOAWAY again, on this stream: the caller reads it before the
     * refusal, so it knows the call did not run (on another stream the
     * first GOAWAY may reach it later). */
    put_id_frame(rs, QRPCI_FRAME_GOAWAY, peer->goaway_last);
    answer_refusal(rs, f->msgid, QRPC_STATUS_UNAVAILABLE, "going away");
    return;
  }
  const qrpci_method *m =
      f->method <= UINT32_MAX
          ? qrpci_u64map_get(&peer->core->methods, f->method + 1)
          : NULL;
  if (!m) {
    answer_refusal(rs, f->msgid, QRPC_STATUS_UNIMPLEMENTED, "unknown method");
    return;
  }
  if (rs->frame_early && !(m->flags & QRPC_METHOD_IDEMPOTENT)) {
    /* It may be a replay: only the handshake proves it is not. */
    answer_refusal(rs, f->msgid, QRPC_STATUS_TOO_EARLY,
                   "sent in 0-RTT to a method that is not idempotent");
    return;
  }
  if (!rs->local && rs->s && qrpci_stream_congested(rs->s)) {
    /* The caller is not reading our answers: refuse cheaply instead of
     * buffering more, and stop reading this stream until they drain. */
    rs->read_paused = 1;
    qrpc_stream_pause_read(rs->s, 1);
    answer_refusal(rs, f->msgid, QRPC_STATUS_RESOURCE_EXHAUSTED,
                   "answers are not being read");
    return;
  }
  if (peer->reqs.size >= peer->core->opts.max_calls_in_flight) {
    answer_refusal(rs, f->msgid, QRPC_STATUS_RESOURCE_EXHAUSTED,
                   "too many calls in flight");
    return;
  }
  if (hdr->over) {
    answer_refusal(rs, f->msgid, QRPC_STATUS_RESOURCE_EXHAUSTED,
                   "metadata over the limit");
    return;
  }
  qrpc_req *req = req_new(peer, rs, f->msgid, (uint32_t)f->method, m->shape);
  if (req && hdr->present) {
    req->md_peer = 1;
    qrpci_md_check(hdr->pairs, hdr->len, NULL, &req->md_total);
    if (qrpci_md_parse(hdr->pairs, hdr->len, &req->md, &req->nmd) != 0) {
      req_free(req);
      req = NULL;
    }
  }
  if (!req || qrpci_u64map_put(&peer->reqs, f->msgid, req) != 0) {
    if (req) req_free(req);
    answer_refusal(rs, f->msgid, QRPC_STATUS_RESOURCE_EXHAUSTED,
                   "out of memory");
    return;
  }
  req->early = rs->frame_early;
  /* A call's time starts when the packet that completed its REQUEST was
   * read: the deadline, the interceptors and the metrics need no clock
   * read of their own. */
  req->start_ns = rs->rx_ns ? rs->rx_ns : qrpci_now_ns();
  rs->pending++;
  if (m->shape != QRPC_SHAPE_UNARY && !rs->req) rs->req = req;
  if (f->timeout_ms) {
    req->deadline_ns = req->start_ns + f->timeout_ms * QRPCI_NS_PER_MS;
    arm_timer(peer->core, &req->timer, f->timeout_ms);
    req->timer_set = 1;
  }
  if (peer->core->nicpt) {
    qrpc_icx cx = {peer->core, NULL};
    qrpc_call_info info = {.method = req->method,
                           .shape = req->shape,
                           .peer = peer,
                           .metadata = req->md,
                           .metadata_count = req->nmd};
    const char *why = NULL;
    int st = run_before(peer->core, &cx, &info, &req->nicpt, &why);
    if (st != 0) {
      qrpc_req_error(req, st, why);
      return;
    }
  }
  run_handler(req, m, f->payload, f->payload_len);
}

static void on_notify(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_peer *peer = rs->peer;
  const qrpci_method *m =
      f->method <= UINT32_MAX
          ? qrpci_u64map_get(&peer->core->methods, f->method + 1)
          : NULL;
  if (!m) {
    QRPCI_DEBUG("rpc: NOTIFY for unknown method 0x%llx dropped",
                (unsigned long long)f->method);
    return;
  }
  if (rs->frame_early && !(m->flags & QRPC_METHOD_IDEMPOTENT)) {
    /* Nothing could tell the sender to send it again: dropped as a NOTIFY
     * for an unknown method is. */
    QRPCI_DEBUG("rpc: NOTIFY in 0-RTT for method 0x%llx dropped",
                (unsigned long long)f->method);
    return;
  }
  qrpc_req *req = req_new(peer, NULL, 0, (uint32_t)f->method, m->shape);
  if (!req) return;
  req->notify = 1;
  req->early = rs->frame_early;
  run_handler(req, m, f->payload, f->payload_len);
}

/* An answer for one of our calls: the call, NULL to drop it silently (it
 * is no longer in flight), or NULL after closing the connection (a MsgId
 * never issued). */
static qrpc_call *answer_target(qrpci_rstream *rs, const qrpci_frame *f,
                                const char *violation) {
  qrpc_peer *peer = rs->peer;
  qrpc_call *call = qrpci_u64map_get(&peer->calls, f->msgid);
  if (!call && f->msgid > peer->last_msgid) fail_proto(peer, violation);
  return call;
}

static void on_reply(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_call *call =
      answer_target(rs, f, "REPLY: MsgId of a call never made");
  if (!call) return;
  if (call->shape == QRPC_SHAPE_SERVER_STREAM ||
      call->shape == QRPC_SHAPE_BIDI_STREAM) {
    fail_proto(rs->peer, "REPLY: the call is a streaming call");
    return;
  }
  call_finish(call, QRPC_STATUS_OK, "", 0, f->payload, f->payload_len, 0);
}

static void on_error(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_call *call =
      answer_target(rs, f, "ERROR: MsgId of a call never made");
  if (!call) return;
  call_finish(call, (int)(f->status > INT32_MAX ? INT32_MAX : f->status),
              (const char *)f->detail, f->detail_len, NULL, 0, 0);
}

static void on_call_item(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_call *call = answer_target(rs, f, "ITEM: MsgId of a call never made");
  if (!call) return;
  if (call->shape != QRPC_SHAPE_SERVER_STREAM &&
      call->shape != QRPC_SHAPE_BIDI_STREAM) {
    fail_proto(rs->peer, "ITEM: the call takes no items from the callee");
    return;
  }
  if (call->cbs.on_item)
    call->cbs.on_item(call, f->payload, f->payload_len, call->ud);
}

static void on_call_end(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_call *call = answer_target(rs, f, "END: MsgId of a call never made");
  if (!call) return;
  int status = (int)(f->status > INT32_MAX ? INT32_MAX : f->status);
  if (status != QRPC_STATUS_OK) {
    call_finish(call, status, (const char *)f->detail, f->detail_len, NULL, 0,
                0);
  } else if (call->shape == QRPC_SHAPE_SERVER_STREAM) {
    call_finish(call, QRPC_STATUS_OK, "", 0, NULL, 0, 0);
  } else if (call->shape == QRPC_SHAPE_BIDI_STREAM) {
    call->got_end = 1;
    if (call->sent_end) call_finish(call, QRPC_STATUS_OK, "", 0, NULL, 0, 0);
  } else {
    fail_proto(rs->peer, "END: the call expects a REPLY");
  }
}

/* Metadata the callee sent for our call that breaks max_metadata: the
 * frame was well formed, so only the call fails. */
static int md_over_limit(qrpc_call *call, const qrpci_frame *f) {
  size_t total = 0;
  qrpci_md_check(f->payload, f->payload_len, NULL, &total);
  if (total <= call->core->opts.max_metadata) return 0;
  put_id_frame(call->rs, QRPCI_FRAME_CANCEL, call->msgid);
  call_fail_local(call, QRPC_STATUS_RESOURCE_EXHAUSTED,
                  "metadata from the callee over the limit");
  return 1;
}

static void on_call_headers(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_call *call = answer_target(rs, f, "HEADERS: MsgId of a call never made");
  if (!call) return;
  if (call->got_headers) {
    fail_proto(rs->peer, "HEADERS: second for the call");
    return;
  }
  call->got_headers = 1;
  if (md_over_limit(call, f)) return;
  qrpc_md *md;
  size_t n;
  if (qrpci_md_parse(f->payload, f->payload_len, &md, &n) != 0) {
    put_id_frame(call->rs, QRPCI_FRAME_CANCEL, call->msgid);
    call_fail_local(call, QRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  if (call->on_headers) call->on_headers(call, md, n, call->on_headers_ud);
  free(md);
}

static void on_call_trailers(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_call *call =
      answer_target(rs, f, "TRAILERS: MsgId of a call never made");
  if (!call) return;
  if (call->trailers) {
    fail_proto(rs->peer, "TRAILERS: second for the call");
    return;
  }
  if (md_over_limit(call, f)) return;
  if (qrpci_md_parse(f->payload, f->payload_len, &call->trailers,
                     &call->ntrailers) != 0) {
    put_id_frame(call->rs, QRPCI_FRAME_CANCEL, call->msgid);
    call_fail_local(call, QRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
  }
}

/* A caller's HEADERS: kept on the stream until its REQUEST, next. */
static void on_req_headers(qrpci_rstream *rs, const qrpci_frame *f) {
  if (rs->hdr_pending) {
    fail_proto(rs->peer, "HEADERS: not followed by its REQUEST");
    return;
  }
  if (f->msgid <= rs->last_req_msgid) {
    fail_proto(rs->peer, "HEADERS: MsgId not greater than the previous one");
    return;
  }
  size_t total = 0;
  qrpci_md_check(f->payload, f->payload_len, NULL, &total);
  rs->hdr_pending = 1;
  rs->hdr_msgid = f->msgid;
  rs->hdr_over = total > rs->peer->core->opts.max_metadata;
  rs->hdr_len = 0;
  if (rs->hdr_over || f->payload_len == 0) return;
  if (!(rs->hdr_pairs = malloc(f->payload_len))) {
    /* Refused like an over-limit call, when its REQUEST comes. */
    rs->hdr_over = 1;
    return;
  }
  memcpy(rs->hdr_pairs, f->payload, f->payload_len);
  rs->hdr_len = f->payload_len;
}

/* ITEM or END from a caller, for a request we serve. */
static qrpc_req *req_target(qrpci_rstream *rs, const qrpci_frame *f,
                            const char *violation) {
  qrpc_peer *peer = rs->peer;
  qrpc_req *req = qrpci_u64map_get(&peer->reqs, f->msgid);
  if (!req && f->msgid > peer->peer_max_msgid) fail_proto(peer, violation);
  return req;
}

static int req_takes_items(const qrpc_req *req) {
  return req->shape == QRPC_SHAPE_CLIENT_STREAM ||
         req->shape == QRPC_SHAPE_BIDI_STREAM;
}

static void on_req_item(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_req *req = req_target(rs, f, "ITEM: MsgId of a call never made");
  if (!req) return;
  if (!req_takes_items(req) || req->caller_ended) {
    fail_proto(rs->peer, "ITEM: the call takes no more items");
    return;
  }
  if (req->cbs.on_item) req->cbs.on_item(req, f->payload, f->payload_len, req->ud);
}

static void on_req_end(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_req *req = req_target(rs, f, "END: MsgId of a call never made");
  if (!req) return;
  if (!req_takes_items(req) || req->caller_ended) {
    fail_proto(rs->peer, "END: the caller already ended or sends no items");
    return;
  }
  req->caller_ended = 1;
  if (f->status != QRPC_STATUS_OK) {
    req_cancel(req, QRPC_STATUS_CANCELLED);
    return;
  }
  int outer = req->in_handler;
  req->in_handler = 1;
  if (req->cbs.on_end) req->cbs.on_end(req, req->ud);
  if (req->shape == QRPC_SHAPE_BIDI_STREAM && req->answered) req_release(req);
  req->in_handler = outer;
  if (!outer && req->released) req_free(req);
}

static void on_cancel_frame(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_req *req = qrpci_u64map_get(&rs->peer->reqs, f->msgid);
  if (req) req_cancel(req, QRPC_STATUS_CANCELLED);
}

static void on_goaway(qrpci_rstream *rs, const qrpci_frame *f) {
  qrpc_peer *peer = rs->peer;
  /* The connection finishes the calls it has; a client sends new calls
   * on its next connection. */
  peer->goaway_received = 1;
  if (peer->core->ops->peer_goaway)
    peer->core->ops->peer_goaway(peer->core, peer);
  if (peer->closed) return;
  /* Unary calls it will not serve (MsgIds above the one it names) may go
   * elsewhere now rather than wait for their refusal; the refusal, when
   * it comes, finds no call. */
  if (!peer->core->ops->call_lost || f->last_msgid >= peer->last_msgid) return;
  for (uint64_t id = f->last_msgid + 1; id <= peer->last_msgid && !peer->closed;
       id++) {
    qrpc_call *call = qrpci_u64map_get(&peer->calls, id);
    if (!call || call->shape != QRPC_SHAPE_UNARY) continue;
    const char *detail = NULL;
    if (!call_offer(call, 0, &detail))
      call_fail_local(call, QRPC_STATUS_UNAVAILABLE,
                      "the server is going away; the call did not run");
  }
}

static int on_frame(void *ctx, const uint8_t *body, size_t len) {
  qrpci_rstream *rs = ctx;
  qrpc_peer *peer = rs->peer;
  qrpci_frame f;
  const char *why = NULL;
  if (qrpci_frame_decode(body, len, &f, &why) != 0) {
    fail_proto(peer, why ? why : "malformed frame");
    return 1;
  }
  req_hdr hdr = {0};
  if (rs->hdr_pending) {
    if (f.type != QRPCI_FRAME_REQUEST || f.msgid != rs->hdr_msgid) {
      fail_proto(peer, "HEADERS: not followed by its REQUEST");
      return 1;
    }
    hdr.present = 1;
    hdr.over = rs->hdr_over;
    hdr.pairs = rs->hdr_pairs;
    hdr.len = rs->hdr_len;
    rs->hdr_pending = 0;
    rs->hdr_pairs = NULL;
    rs->hdr_len = 0;
  }
  qrpci_core *core = peer->core;
  qrpci_delivery outer = core->dl;
  core->dl.rs = rs;
  core->dl.body = body;
  core->dl.payload = f.payload;
  core->dl.len = f.payload_len;
  core->dl.msgid = f.msgid;
  core->dl.type = f.type;
  switch (f.type) {
  case QRPCI_FRAME_REQUEST:
    on_request(rs, &f, &hdr);
    free(hdr.pairs);
    break;
  case QRPCI_FRAME_HEADERS:
    if (rs->local)
      on_call_headers(rs, &f);
    else
      on_req_headers(rs, &f);
    break;
  case QRPCI_FRAME_TRAILERS:
    if (rs->local)
      on_call_trailers(rs, &f);
    else
      fail_proto(peer, "TRAILERS: sent by the caller");
    break;
  case QRPCI_FRAME_NOTIFY: on_notify(rs, &f); break;
  case QRPCI_FRAME_REPLY: on_reply(rs, &f); break;
  case QRPCI_FRAME_ERROR: on_error(rs, &f); break;
  case QRPCI_FRAME_CANCEL: on_cancel_frame(rs, &f); break;
  case QRPCI_FRAME_ITEM:
    if (rs->local)
      on_call_item(rs, &f);
    else
      on_req_item(rs, &f);
    break;
  case QRPCI_FRAME_END:
    if (rs->local)
      on_call_end(rs, &f);
    else
      on_req_end(rs, &f);
    break;
  case QRPCI_FRAME_GOAWAY: on_goaway(rs, &f); break;
  default: break;
  }
  core->dl = outer;
  /* The next frame starts in the read being fed. */
  rs->frame_early = rs->rx_early;
  return peer->closed || rs->gone ? 1 : 0;
}

static void rs_on_read(qrpc_stream *s, const uint8_t *data, size_t len,
                       int fin, void *ud) {
  qrpci_rstream *rs = ud;
  qrpc_peer *peer = rs->peer;
  if (peer->closed) return;
  peer->busy++;
  rs->rx_early = qrpci_stream_rx_early(s);
  rs->rx_ns = qrpci_stream_rx_ns(s);
  if (!qrpci_reasm_in_frame(&rs->reasm)) rs->frame_early = rs->rx_early;
  const char *why = NULL;
  size_t use = len;
  if (rs->read_paused && rs->s) {
    /* Answers back up (below): only the body of the frame in progress is
     * taken, short of its last byte, straight into the reassembly buffer;
     * the stream keeps the rest, and with it that frame's completion,
     * until the answers drain. (Holding all of it would copy every byte
     * twice.) */
    size_t missing = qrpci_reasm_missing(&rs->reasm);
    use = fin || missing < 2 ? 0 : missing - 1 < len ? missing - 1 : len;
    if (use < len) qrpci_stream_hold_rest(s, len - use);
  }
  int rv = use ? qrpci_reasm_feed(&rs->reasm, data, use, on_frame, rs, &why)
               : 0;
  if (rv == QRPC_EMSGSIZE) {
    qrpci_conn_fail(peer->conn, QRPCI_ERR_FRAME_TOO_LARGE,
                    "frame Length over the receiver's limit");
  } else if (rv < 0) {
    fail_proto(peer, why ? why : "malformed frame");
  } else if (fin && use == len && !peer->closed && !rs->gone) {
    if (qrpci_reasm_finish(&rs->reasm) != 0) {
      fail_proto(peer, "frame truncated by end of stream");
    } else {
      rs->fin_received = 1;
      rs_maybe_finish(rs);
    }
  }
  /* A peer that sends requests but does not read the answers fills our
   * send buffer; stop reading its requests until the answers drain, so
   * flow control holds it back instead of our memory growing. */
  if (!rs->local && !rs->gone && !peer->closed && rs->s && !rs->read_paused &&
      qrpci_stream_congested(rs->s)) {
    rs->read_paused = 1;
    /* In the middle of a frame's body the stream goes on delivering that
     * body (above) and pauses at its end. */
    if (qrpci_reasm_missing(&rs->reasm) < 2) qrpc_stream_pause_read(rs->s, 1);
  }
  /* Credit goes back for bytes held in partial frames (a frame may be
   * larger than the stream window), so memory is bounded here instead. */
  qrpci_reasm_trim(&rs->reasm);
  size_t held = qrpci_reasm_buffered(&rs->reasm);
  peer->rx_buffered = peer->rx_buffered - rs->rx_buffered + held;
  rs->rx_buffered = held;
  if (peer->rx_buffered > peer->core->opts.max_buffered && !peer->closed)
    qrpci_conn_fail(peer->conn, QRPCI_ERR_RESOURCE_LIMIT,
                    "partly received frames exceed the connection's limit");
  peer->busy--;
  if (rs->gone) rs_maybe_free(rs);
  peer_maybe_release(peer);
}

static void rs_on_writable(qrpc_stream *s, void *ud) {
  qrpci_rstream *rs = ud;
  if (rs->read_paused) {
    rs->read_paused = 0;
    qrpc_stream_pause_read(s, 0);
  }
  if (rs->call && rs->call->cbs.on_writable)
    rs->call->cbs.on_writable(rs->call, rs->call->ud);
  else if (rs->req && rs->req->cbs.on_writable)
    rs->req->cbs.on_writable(rs->req, rs->req->ud);
}

/* Everything in a MsgId table whose frames travel on rs, up to max:
 * collected first, because ending them edits the table. */
static size_t collect_on(const qrpci_u64map *m, const qrpci_rstream *rs,
                         int calls, void **out, size_t max) {
  size_t n = 0;
  for (size_t i = 0; i < m->cap && n < max; i++) {
    if (!m->keys[i]) continue;
    qrpci_rstream *on = calls ? ((qrpc_call *)m->vals[i])->rs
                              : ((qrpc_req *)m->vals[i])->rs;
    if (on == rs) out[n++] = m->vals[i];
  }
  return n;
}

/* Calls and requests whose stream is gone can never be answered. They are
 * ended in batches, each leaving its table, so no allocation can fail
 * here and leave them waiting for their deadline. */
static void end_work_on(qrpci_rstream *rs, int req_status) {
  void *v[64];
  size_t n;
  while ((n = collect_on(&rs->peer->calls, rs, 1, v, 64)) > 0)
    for (size_t i = 0; i < n; i++) {
      const char *detail = "stream closed";
      if (!call_offer(v[i], 1, &detail))
        call_fail_local(v[i], QRPC_STATUS_UNAVAILABLE, detail);
    }
  while ((n = collect_on(&rs->peer->reqs, rs, 0, v, 64)) > 0)
    for (size_t i = 0; i < n; i++) req_cancel(v[i], req_status);
}

static void rs_on_closed(qrpc_stream *s, int error, void *ud) {
  qrpci_rstream *rs = ud;
  qrpc_peer *peer = rs->peer;
  rs->gone = 1;
  rs->s = NULL;
  if (rs->pool_slot >= 0 && peer->pool && peer->pool[rs->pool_slot] == rs)
    peer->pool[rs->pool_slot] = NULL;
  rs->pool_slot = -1;
  if (peer->closed) return; /* the peer's release frees everything */
  peer->busy++;
  /* The connection going down reaches requests as UNAVAILABLE, as it does
   * through qrpci_peer_closed(); a reset by the peer is a cancellation. */
  end_work_on(rs, error == QRPC_ECLOSED ? QRPC_STATUS_UNAVAILABLE
                                        : QRPC_STATUS_CANCELLED);
  peer->busy--;
  rs_maybe_free(rs);
  peer_maybe_release(peer);
}

/* ---- Answering -------------------------------------------------------- */

void qrpc_req_set_callbacks(qrpc_req *req, const qrpc_req_callbacks *cbs,
                            void *ud) {
  if (cbs) req->cbs = *cbs;
  req->ud = ud;
}
void *qrpc_req_user_data(qrpc_req *req) { return req->ud; }
qrpc_peer *qrpc_req_peer(qrpc_req *req) { return req->peer; }
uint32_t qrpc_req_method(qrpc_req *req) { return req->method; }
qrpc_shape qrpc_req_shape(qrpc_req *req) { return req->shape; }
int qrpc_req_is_notify(qrpc_req *req) { return req->notify; }
int qrpc_req_is_early(qrpc_req *req) { return req->early; }

uint64_t qrpc_req_remaining_ms(qrpc_req *req) {
  if (!req->deadline_ns) return UINT64_MAX;
  uint64_t now = qrpci_now_ns();
  return req->deadline_ns > now ? (req->deadline_ns - now) / QRPCI_NS_PER_MS
                                : 0;
}

size_t qrpc_req_metadata(qrpc_req *req, const qrpc_md **md) {
  if (md) *md = req ? req->md : NULL;
  return req ? req->nmd : 0;
}

static int key_listed(const qrpc_md *m, const char *const *keys) {
  for (size_t i = 0; keys[i]; i++)
    if (strlen(keys[i]) == m->key_len &&
        memcmp(keys[i], m->key, m->key_len) == 0)
      return 1;
  return 0;
}

int qrpc_req_propagate(qrpc_req *req, const char *const *keys,
                       qrpc_call_opts *opts, qrpc_md *buf, size_t cap) {
  static const char *const trace_only[] = {"traceparent", NULL};
  if (!req || !opts || opts->size != sizeof(*opts) ||
      (opts->metadata_count && !opts->metadata))
    return QRPC_EINVAL;
  if (!keys) keys = trace_only;
  size_t n = opts->metadata_count;
  for (size_t i = 0; i < req->nmd; i++) n += key_listed(&req->md[i], keys);
  if (n > cap || (n && !buf)) return QRPC_ENOBUFS;
  /* Copied first: buf may be what opts->metadata points at already. */
  if (opts->metadata_count && buf != opts->metadata)
    memmove(buf, opts->metadata, opts->metadata_count * sizeof(*buf));
  n = opts->metadata_count;
  for (size_t i = 0; i < req->nmd; i++)
    if (key_listed(&req->md[i], keys)) buf[n++] = req->md[i];
  opts->metadata = n ? buf : NULL;
  opts->metadata_count = n;
  if (req->deadline_ns) {
    uint64_t left = qrpc_req_remaining_ms(req);
    if (left == 0) left = 1;
    if (opts->timeout_ms == 0 || opts->timeout_ms > left)
      opts->timeout_ms = left;
  }
  return 0;
}

static int req_add_md(qrpc_req *req, qrpci_mdbuf *b, const char *key,
                      const void *value, size_t len) {
  if (!req || !key) return QRPC_EINVAL;
  if (req->released || req->notify) return QRPC_ECLOSED;
  /* One limit for everything the call carries in this direction. */
  size_t limit = req->peer->core->opts.max_metadata;
  size_t other = (b == &req->trl ? req->rhdr.total : req->trl.total);
  if (other > limit) return QRPC_EMSGSIZE;
  return qrpci_mdbuf_add(b, key, 0, value, len, limit - other);
}

int qrpc_req_set_trailer(qrpc_req *req, const char *key, const void *value,
                         size_t len) {
  return req_add_md(req, req ? &req->trl : NULL, key, value, len);
}

int qrpc_req_set_header(qrpc_req *req, const char *key, const void *value,
                        size_t len) {
  if (!req) return QRPC_EINVAL;
  if (req->shape == QRPC_SHAPE_UNARY) return QRPC_EINVAL;
  if (req->hdr_sent) return QRPC_ESTATE;
  return req_add_md(req, &req->rhdr, key, value, len);
}

/* The response headers of an accepted streaming call, once, to a caller
 * that sent HEADERS: an old caller would take the frame for a violation. */
static void req_flush_headers(qrpc_req *req) {
  if (req->hdr_sent || !req->md_peer || req->shape == QRPC_SHAPE_UNARY) return;
  req->hdr_sent = 1;
  qrpci_frame f = md_frame(QRPCI_FRAME_HEADERS, req->msgid, &req->rhdr);
  put_encoded(req->rs, &f);
  qrpci_mdbuf_free(&req->rhdr);
}

/* The TRAILERS frame to put before the final answer, or NULL. */
static const qrpci_frame *req_trailers(qrpc_req *req, qrpci_frame *f) {
  if (!req->md_peer || req->trl.len == 0) return NULL;
  *f = md_frame(QRPCI_FRAME_TRAILERS, req->msgid, &req->trl);
  return f;
}

static int req_reply(qrpc_req *req, qrpci_payload *pl) {
  if (!req || !qrpci_payload_valid(pl)) return QRPC_EINVAL;
  if (req->notify) {
    req_release(req);
    return 0;
  }
  if (req->shape != QRPC_SHAPE_UNARY && req->shape != QRPC_SHAPE_CLIENT_STREAM)
    return QRPC_EINVAL;
  if (req->released) return QRPC_ECLOSED;
  req_flush_headers(req);
  qrpci_frame tf;
  int rv = put_frame_after(req->rs, req_trailers(req, &tf), QRPCI_FRAME_REPLY,
                           req->msgid, 0, 0, pl);
  if (rv != 0) req->status = QRPC_STATUS_INTERNAL;
  if (rv != 0 && rv != QRPC_ECLOSED) {
    put_status(req->rs, QRPCI_FRAME_ERROR, req->msgid, QRPC_STATUS_INTERNAL,
               "reply could not be sent");
  }
  req_release(req);
  return rv == QRPC_ECLOSED ? 0 : rv;
}

int qrpc_req_reply(qrpc_req *req, const void *payload, size_t len) {
  qrpci_payload pl = qrpci_bytes(payload, len);
  return req_reply(req, &pl);
}

int qrpc_req_reply_msg(qrpc_req *req, const qrpc_msg *m) {
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(&pl, req_reply(req, &pl));
}

int qrpc_req_error(qrpc_req *req, int status, const char *detail) {
  if (!req || status <= 0) return QRPC_EINVAL;
  if (!req->released) req->status = status;
  if (!req->notify && !req->released) {
    uint8_t type = req->shape == QRPC_SHAPE_SERVER_STREAM ||
                           req->shape == QRPC_SHAPE_BIDI_STREAM
                       ? QRPCI_FRAME_END
                       : QRPCI_FRAME_ERROR;
    qrpci_frame tf;
    put_status_after(req->rs, req_trailers(req, &tf), type, req->msgid, status,
                     detail);
  }
  req_release(req);
  return 0;
}

static int req_sends_items(const qrpc_req *req) {
  return req->shape == QRPC_SHAPE_SERVER_STREAM ||
         req->shape == QRPC_SHAPE_BIDI_STREAM;
}

static int req_send(qrpc_req *req, qrpci_payload *pl) {
  if (!req || req->notify || !req_sends_items(req) ||
      !qrpci_payload_valid(pl))
    return QRPC_EINVAL;
  if (req->released || req->answered) return QRPC_ECLOSED;
  if (!stream_ok(req->rs)) return QRPC_ECLOSED;
  if (qrpci_stream_congested(req->rs->s)) return QRPC_EAGAIN;
  req_flush_headers(req);
  return put_frame(req->rs, QRPCI_FRAME_ITEM, req->msgid, 0, 0, pl);
}

int qrpc_req_send(qrpc_req *req, const void *data, size_t len) {
  qrpci_payload pl = qrpci_bytes(data, len);
  return req_send(req, &pl);
}

int qrpc_req_send_msg(qrpc_req *req, const qrpc_msg *m) {
  qrpci_payload pl = qrpci_msg(m);
  return qrpci_payload_settle(&pl, req_send(req, &pl));
}

int qrpc_req_end(qrpc_req *req) {
  if (!req || req->notify || !req_sends_items(req)) return QRPC_EINVAL;
  if (req->released || req->answered) return QRPC_ECLOSED;
  req_flush_headers(req);
  qrpci_frame tf;
  put_status_after(req->rs, req_trailers(req, &tf), QRPCI_FRAME_END, req->msgid,
                   0, NULL);
  req->answered = 1;
  if (req->shape == QRPC_SHAPE_SERVER_STREAM || req->caller_ended)
    req_release(req);
  return 0;
}
