/*
 * qrpc-bench server rpc: the Echo service of bench.proto. Echo answers
 * each request with its own bytes; EchoStream sends every item back as it
 * arrives. Both work on the encoded Msg directly (an echoed Msg is a Msg),
 * so no message is decoded or allocated per call. Echo is registered
 * idempotent, so it also serves calls that arrive in 0-RTT.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench.h"
#include "bench.qrpc.h"
#include "report.h"
#include "server_common.h"

#define ECHO_ID qrpc_bench_Echo_Echo_METHOD_ID
#define ECHO_STREAM_ID qrpc_bench_Echo_EchoStream_METHOD_ID

/* Items of one stream waiting for room to be echoed. qrpc stops reading
 * a stream whose send buffer is full, so only what was read before it
 * noticed waits here (about a stream window); past this bound the stream
 * is failed instead. */
#define STREAM_QUEUE_MAX ((size_t)BENCH_MAX_FRAME * 4)

/* Counters shared by the server's workers (--workers), so atomic. */
typedef struct rpc_server {
  atomic_uint_fast64_t calls;
  atomic_uint_fast64_t early_calls; /* Echo calls that arrived in 0-RTT */
  atomic_uint_fast64_t streams;
  atomic_uint_fast64_t stream_items;
  atomic_uint_fast64_t stream_failed;
  atomic_uint_fast64_t queued_max; /* bytes, the most one stream held back */
  atomic_uint_fast64_t conns;
  int copy; /* --copy: echo items by copying them (set before serving) */
} rpc_server;

#define COUNT(x) atomic_fetch_add_explicit(&(x), 1, memory_order_relaxed)
#define LOAD(x) atomic_load_explicit(&(x), memory_order_relaxed)

/* ---- Unary --------------------------------------------------------------- */

static void on_echo(qrpc_req *req, const uint8_t *payload, size_t len,
                    void *user_data) {
  rpc_server *s = user_data;
  COUNT(s->calls);
  if (qrpc_req_is_early(req)) COUNT(s->early_calls);
  int rc = qrpc_req_reply(req, payload, len);
  if (rc != 0 && rc != QRPC_ENOMEM) /* ENOMEM answered INTERNAL already */
    qrpc_req_error(req, QRPC_STATUS_INTERNAL, qrpc_strerror(rc));
}

/* ---- Bidi streaming ------------------------------------------------------ */

/* An echo waiting for room, as a message that owns its bytes. */
typedef struct queued_item {
  struct queued_item *next;
  qrpc_msg m;
} queued_item;

typedef struct echo_stream {
  rpc_server *srv;
  queued_item *head, *tail;
  size_t queued;
  int caller_ended;
} echo_stream;

/* Gives back what a message owns, if anything. */
static void msg_drop(qrpc_msg *m) {
  if (m->release) m->release(m->owner);
}

static void stream_free(echo_stream *es) {
  while (es->head != NULL) {
    queued_item *q = es->head;
    es->head = q->next;
    msg_drop(&q->m);
    free(q);
  }
  free(es);
}

/* The caller has ended and every item is echoed: END ours too, which
 * releases the request. */
static void stream_finish(qrpc_req *req, echo_stream *es) {
  stream_free(es);
  qrpc_req_end(req);
}

static void stream_fail(qrpc_req *req, echo_stream *es, const char *why) {
  COUNT(es->srv->stream_failed);
  stream_free(es);
  qrpc_req_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED, why);
}

/* Sends what waits, in order, while the stream takes it; qrpc owns each
 * one it took. Returns 0, or -1 after failing the stream. */
static int stream_flush(qrpc_req *req, echo_stream *es) {
  while (es->head != NULL) {
    queued_item *q = es->head;
    int rc = qrpc_req_send_msg(req, &q->m);
    if (rc == QRPC_EAGAIN) return 0;
    if (rc != 0) {
      stream_fail(req, es, qrpc_strerror(rc));
      return -1;
    }
    es->head = q->next;
    if (es->head == NULL) es->tail = NULL;
    es->queued -= q->m.size;
    free(q);
  }
  return 0;
}

static void stream_on_item(qrpc_req *req, const uint8_t *data, size_t len,
                           void *user_data) {
  echo_stream *es = user_data;
  COUNT(es->srv->stream_items);
  /* Keep qrpc's send buffer full while items wait: qrpc stops reading the
   * stream only while that buffer is full, so this is what bounds the
   * queue below. */
  if (stream_flush(req, es) != 0) return;
  /* The item is echoed as it came: taken from qrpc (a large one's
   * reassembled buffer changes hands, and the send links it into the
   * stream), or with --copy borrowed, so that sending copies it. */
  qrpc_msg m = {.msg = data, .size = len};
  int rc = es->srv->copy ? 0 : qrpc_req_take(req, &m);
  if (rc == 0 && es->head == NULL) {
    rc = qrpc_req_send_msg(req, &m);
    if (rc == 0) return;
  }
  if (rc != 0 && rc != QRPC_EAGAIN) {
    msg_drop(&m);
    stream_fail(req, es, qrpc_strerror(rc));
    return;
  }
  if (es->queued + len > STREAM_QUEUE_MAX) {
    msg_drop(&m);
    stream_fail(req, es, "echoes are not being read");
    return;
  }
  queued_item *q = malloc(sizeof(*q));
  uint8_t *copy = m.release || len == 0 ? NULL : malloc(len);
  if (q == NULL || (!m.release && len && copy == NULL)) {
    free(q);
    msg_drop(&m);
    stream_fail(req, es, "out of memory");
    return;
  }
  if (copy != NULL) {
    /* Borrowed bytes: the queue keeps a copy. */
    memcpy(copy, data, len);
    m = (qrpc_msg){.msg = copy, .size = len, .release = free, .owner = copy};
  }
  q->next = NULL;
  q->m = m;
  if (es->tail != NULL)
    es->tail->next = q;
  else
    es->head = q;
  es->tail = q;
  es->queued += len;
  if (es->queued > LOAD(es->srv->queued_max))
    atomic_store_explicit(&es->srv->queued_max, es->queued,
                          memory_order_relaxed);
}

static void stream_on_writable(qrpc_req *req, void *user_data) {
  echo_stream *es = user_data;
  if (stream_flush(req, es) != 0) return;
  if (es->head == NULL && es->caller_ended) stream_finish(req, es);
}

static void stream_on_end(qrpc_req *req, void *user_data) {
  echo_stream *es = user_data;
  es->caller_ended = 1;
  if (es->head == NULL) stream_finish(req, es);
}

static void stream_on_cancel(qrpc_req *req, int status, void *user_data) {
  (void)req, (void)status;
  stream_free(user_data);
}

static const qrpc_req_callbacks stream_cbs = {
    .on_item = stream_on_item,
    .on_end = stream_on_end,
    .on_cancel = stream_on_cancel,
    .on_writable = stream_on_writable,
};

static void on_echo_stream(qrpc_req *req, const uint8_t *payload, size_t len,
                           void *user_data) {
  rpc_server *s = user_data;
  (void)payload, (void)len;
  echo_stream *es = calloc(1, sizeof(*es));
  if (es == NULL) {
    qrpc_req_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return;
  }
  es->srv = s;
  COUNT(s->streams);
  qrpc_req_set_callbacks(req, &stream_cbs, es);
}

/* ---- Main ---------------------------------------------------------------- */

static void on_peer_open(qrpc_peer *peer, void *user_data) {
  rpc_server *s = user_data;
  (void)peer;
  COUNT(s->conns);
}

int bench_server_rpc(const char *prog, int argc, char **argv) {
  bench_server_common c;
  bench_flag flags[BENCH_MAX_FLAGS];
  size_t n = bench_server_common_flags(flags, 0, &c);
  uint64_t workers = 1;
  const bench_flag wflag = {
      "--workers", BENCH_FLAG_UINT, &workers, 0, 256, NULL, "N",
      "worker threads serving the port (qrpc_server_opts.workers; 0: one "
      "per online CPU)",
      0, 0};
  if (n < BENCH_MAX_FLAGS) flags[n++] = wflag;
  int copy = 0;
  const bench_flag cflag = {
      "--copy", BENCH_FLAG_BOOL, &copy, 0, 0, NULL, NULL,
      "EchoStream: echo each item from a copy instead of taking qrpc's "
      "buffer (qrpc_req_take) and giving it back to the stream",
      0, 0};
  if (n < BENCH_MAX_FLAGS) flags[n++] = cflag;
  int rc = bench_args_parse(
      prog, "--port P [--tls-cert PEM --tls-key PEM] [flags]",
      "Serves qrpc.bench.Echo (bench.proto): unary Echo and bidi streaming\n"
      "EchoStream, both answering with the bytes they get. Prints READY on\n"
      "stdout once it accepts connections; on SIGTERM or SIGINT it prints\n"
      "RESULT with its counters and exits.",
      flags, n, argc, argv);
  if (rc != 0) return rc == 1 ? 0 : 2;

  rpc_server s;
  memset(&s, 0, sizeof(s));
  s.copy = copy;
  qrpc_server_opts o;
  bench_server_opts(&c, &o);
  o.workers = (size_t)workers;
  o.on_peer_open = on_peer_open;
  o.user_data = &s;
  qrpc_loop *loop;
  qrpc_server *srv;
  if (bench_server_start(prog, &c, &o, &loop, &srv) != 0) return 1;
  int status = 1;
  /* Echo may run twice (it answers with its request), so calls to it may
   * come in 0-RTT: the connect workload's --handshake 0rtt needs that. */
  if ((rc = qrpc_server_register_flags(srv, ECHO_ID, QRPC_SHAPE_UNARY,
                                       QRPC_METHOD_IDEMPOTENT, on_echo, &s)) !=
          0 ||
      (rc = qrpc_server_register(srv, ECHO_STREAM_ID, QRPC_SHAPE_BIDI_STREAM,
                                 on_echo_stream, &s)) != 0) {
    fprintf(stderr, "%s: cannot register the Echo service: %s\n", prog,
            qrpc_strerror(rc));
  } else {
    status = bench_server_serve(prog, loop, srv, &c);
  }
  double cpu = bench_cpu_s();
  /* How the connections spread over the workers, asked before the free. */
  size_t nw = qrpc_server_workers(srv);
  uint64_t opened = 0, least = UINT64_MAX;
  qrpc_server_worker_stats *per = calloc(nw ? nw : 1, sizeof(*per));
  qrpc_endpoint_stats total = {0};
  if (per != NULL && qrpc_server_get_stats(srv, &total, per, nw) == 0) {
    for (size_t i = 0; i < nw; i++) {
      opened += per[i].peers_opened;
      if (per[i].peers_opened < least) least = per[i].peers_opened;
    }
  }
  free(per);
  bench_server_stop(&c, loop, srv);
  if (status == 0) {
    bench_report r;
    bench_report_init(&r);
    bench_report_uint(&r, "server_calls", LOAD(s.calls));
    bench_report_uint(&r, "server_early_calls", LOAD(s.early_calls));
    bench_report_uint(&r, "server_streams", LOAD(s.streams));
    bench_report_uint(&r, "server_stream_items", LOAD(s.stream_items));
    bench_report_uint(&r, "server_stream_failed", LOAD(s.stream_failed));
    bench_report_uint(&r, "server_stream_queued_max", LOAD(s.queued_max));
    bench_report_uint(&r, "server_conns", LOAD(s.conns));
    bench_report_uint(&r, "server_workers", nw);
    bench_report_uint(&r, "server_dead_peers", total.dead_peers);
    bench_report_uint(&r, "server_socket_drops", total.socket_drops);
    /* The share of the connections the least loaded worker served. */
    bench_report_num(&r, "server_least_worker_pct",
                     opened ? 100.0 * (double)least / (double)opened : 0, 1);
    bench_report_num(&r, "server_cpu_s", cpu, 2);
    bench_report_print_result(&r);
  }
  return status;
}
