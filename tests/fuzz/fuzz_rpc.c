/*
 * Fuzz target: the RPC engine's handling of incoming frames, through the
 * whole stack. A hostile client, a raw QUIC connection made in this
 * process, writes the fuzz input as the bytes of RPC streams to a real
 * qrpc_server on the same loop. The loop, the server and the certificates
 * live for the whole run; each input gets a fresh connection, so every run
 * of an input starts from the same engine state and a crash reproduces.
 *
 * Input: a flags byte, a stream selector, a 16-bit split point, then the
 * stream bytes (frames as docs/protocol.md section 3 lays them out; the
 * stream's kind byte 0x00 is written by the transport).
 *   flags bit 0: the server first calls the client (unary, server, client
 *                and bidi streaming; MsgIds 1 to 4) and the bytes go to the
 *                streams it opened, so they answer those calls; otherwise
 *                they go to streams the client opens, as calls to the
 *                server's methods (ids 1 to 6, the id of the worked
 *                example's hello.Greeter/SayHello, and
 *                qrpc.examples.hello.Greeter/SayHello served by stubs
 *                that protoc-gen-qrpc generated, so request decoding and
 *                dispatch of generated code are fuzzed too);
 *   flags bit 1: split the bytes over two streams at the split point;
 *   flags bit 2: finish (FIN) the streams after the bytes;
 *   flags bit 3: the server cancels its calls that are still running;
 *   flags bit 4: the bytes are QUIC datagrams instead, each one a length
 *                byte and that many bytes, for the server's datagram
 *                channels (docs/protocol.md section 4: Channel, Seq,
 *                Payload; channels 1 (latest-only), 2 and the hello id).
 *
 * Once a barrier call on a stream of its own has been answered (or the
 * server closed the connection), the held requests are answered and the
 * connection is closed.
 *
 * Properties, besides no crash, leak or undefined behaviour anywhere in
 * the stack: the server accepts every new connection, whatever earlier
 * inputs did; it releases each connection's RPC state once the connection
 * is closed; every call it made completes exactly once and nothing arrives
 * for a call after its completion; every request it held is answered or
 * cancelled by then; each datagram channel's counters add up (received ==
 * delivered + dropped as stale) and a latest-only channel delivers
 * strictly growing Seqs.
 */
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "certs.h"
#include "fuzz.h"
#include "hello.qrpc.h"
#include "qrpc/qrpc.h"
#include "quic/rpcstream.h"
#include "util/varint.h"
#include "wire/frame.h"

#define M_ECHO 1
#define M_FAIL 2
#define M_SERVER_STREAM 3
#define M_CLIENT_STREAM 4
#define M_BIDI 5
#define M_HOLD 6
#define M_BARRIER 63
#define M_HELLO 0x393c3e51u /* docs/protocol.md, worked examples */

/* Methods the server calls on the client (which serves none of them). */
#define M_CLIENT_BASE 100

#define F_SERVER_CALLS 1
#define F_TWO_STREAMS 2
#define F_FIN 4
#define F_CANCEL 8
#define F_DATAGRAMS 16

#define DG_LATEST 1
#define DG_PLAIN 2

#define HOLD_MAX 16
#define SERVER_CALLS 4
#define ACCEPT_MAX 8

/* Bounds on the waits of one input; a well-formed exchange takes a few
 * loop turns on loopback. */
#define CONNECT_MS 5000
#define SETTLE_MS 2000
/* Longest a single loop turn may block while something is awaited. */
#define TICK_US 2000

typedef struct srv_call {
  qrpc_call *call; /* NULL once done */
  int done;
  int after_done;
} srv_call;

typedef struct hostile {
  qrpc_conn *c;
  int established;
  int closed;
  qrpc_stream *own[2];
  qrpc_stream *barrier;
  int barrier_answered;
  qrpc_stream *accepted[ACCEPT_MAX];
  int naccepted;
} hostile;

static struct {
  qt_certs certs;
  qrpc_loop *loop;
  qrpc_tls_config *ctls;
  qrpc_server *srv;
  char addr[64];
  int peers_opened;
  int peers_closed;
  qrpc_peer *peer; /* the current input's connection on the server */
  qrpc_req *held[HOLD_MAX];
  int nheld;
  srv_call calls[SERVER_CALLS];
  hostile *h;
  struct event *tick;
  uint64_t latest_seq; /* last Seq delivered on DG_LATEST this input */
} G;

/* ---- Server handlers ---------------------------------------------------- */

static void h_echo(qrpc_req *req, const uint8_t *p, size_t len, void *ud) {
  (void)ud;
  qrpc_req_reply(req, p, len);
}

static void h_fail(qrpc_req *req, const uint8_t *p, size_t len, void *ud) {
  (void)p;
  (void)len;
  (void)ud;
  qrpc_req_error(req, QRPC_STATUS_INVALID_ARGUMENT, "refused");
}

static void h_server_stream(qrpc_req *req, const uint8_t *p, size_t len,
                            void *ud) {
  (void)ud;
  if (qrpc_req_is_notify(req)) return;
  qrpc_req_send(req, p, len);
  qrpc_req_send(req, p, len / 2);
  qrpc_req_end(req);
}

static void held_remove(qrpc_req *req) {
  for (int i = 0; i < G.nheld; i++) {
    if (G.held[i] == req) {
      G.held[i] = G.held[--G.nheld];
      return;
    }
  }
}

static void on_held_cancel(qrpc_req *req, int status, void *ud) {
  (void)status;
  (void)ud;
  held_remove(req);
}

static void cs_on_item(qrpc_req *req, const uint8_t *p, size_t len, void *ud) {
  (void)req;
  (void)p;
  (void)len;
  (*(int *)ud)++;
}

static int items_seen;

static void cs_on_end(qrpc_req *req, void *ud) {
  (void)ud;
  uint8_t n = (uint8_t)items_seen;
  qrpc_req_reply(req, &n, 1);
}

static void on_stream_cancel(qrpc_req *req, int status, void *ud) {
  (void)req;
  (void)status;
  (void)ud;
}

static void h_client_stream(qrpc_req *req, const uint8_t *p, size_t len,
                            void *ud) {
  (void)p;
  (void)len;
  (void)ud;
  static const qrpc_req_callbacks cbs = {.on_item = cs_on_item,
                                         .on_end = cs_on_end,
                                         .on_cancel = on_stream_cancel};
  if (qrpc_req_is_notify(req)) return;
  qrpc_req_set_callbacks(req, &cbs, &items_seen);
}

static void bidi_on_item(qrpc_req *req, const uint8_t *p, size_t len,
                         void *ud) {
  (void)ud;
  qrpc_req_send(req, p, len);
}

static void bidi_on_end(qrpc_req *req, void *ud) {
  (void)ud;
  qrpc_req_end(req);
}

static void h_bidi(qrpc_req *req, const uint8_t *p, size_t len, void *ud) {
  (void)ud;
  static const qrpc_req_callbacks cbs = {.on_item = bidi_on_item,
                                         .on_end = bidi_on_end,
                                         .on_cancel = on_stream_cancel};
  if (qrpc_req_is_notify(req)) return;
  qrpc_req_set_callbacks(req, &cbs, NULL);
  qrpc_req_send(req, p, len);
}

static void h_hold(qrpc_req *req, const uint8_t *p, size_t len, void *ud) {
  (void)ud;
  static const qrpc_req_callbacks cbs = {.on_cancel = on_held_cancel};
  if (qrpc_req_is_notify(req)) return;
  if (G.nheld == HOLD_MAX) {
    qrpc_req_reply(req, p, len);
    return;
  }
  qrpc_req_set_callbacks(req, &cbs, NULL);
  G.held[G.nheld++] = req;
}

static void on_peer_open(qrpc_peer *peer, void *ud) {
  (void)ud;
  G.peers_opened++;
  G.peer = peer;
}

static void on_peer_close(qrpc_peer *peer, void *ud) {
  (void)ud;
  G.peers_closed++;
  if (G.peer == peer) G.peer = NULL;
}

static void on_dgram(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                     const uint8_t *payload, size_t len, void *ud) {
  (void)peer;
  (void)payload;
  (void)len;
  (void)ud;
  FZ_CHECK(seq != 0);
  if (channel == DG_LATEST) {
    FZ_CHECK(seq > G.latest_seq);
    G.latest_seq = seq;
  }
}

static void check_dgram_counters(qrpc_peer *peer) {
  static const uint32_t channels[] = {DG_LATEST, DG_PLAIN, M_HELLO};
  for (size_t i = 0; i < sizeof(channels) / sizeof(channels[0]); i++) {
    qrpc_dgram_stats st;
    qrpc_peer_dgram_stats(peer, channels[i], &st);
    FZ_CHECK(st.received == st.delivered + st.dropped_stale);
    if (channels[i] != DG_LATEST) FZ_CHECK(st.dropped_stale == 0);
  }
}

/* ---- The server's calls to the client ------------------------------------ */

static void sc_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  (void)res;
  srv_call *c = ud;
  c->done++;
  c->call = NULL;
}

static void sc_on_item(qrpc_call *call, const uint8_t *p, size_t len,
                       void *ud) {
  (void)call;
  (void)p;
  (void)len;
  srv_call *c = ud;
  if (c->done) c->after_done++;
}

static const qrpc_call_callbacks sc_cbs = {.on_done = sc_on_done,
                                           .on_item = sc_on_item};

static void server_calls_client(qrpc_peer *peer) {
  static const qrpc_shape shapes[SERVER_CALLS] = {
      QRPC_SHAPE_UNARY, QRPC_SHAPE_SERVER_STREAM, QRPC_SHAPE_CLIENT_STREAM,
      QRPC_SHAPE_BIDI_STREAM};
  for (int i = 0; i < SERVER_CALLS; i++) {
    srv_call *c = &G.calls[i];
    int rv;
    if (shapes[i] == QRPC_SHAPE_UNARY)
      rv = qrpc_peer_call(peer, M_CLIENT_BASE, "u", 1, NULL, &sc_cbs, c,
                          &c->call);
    else if (shapes[i] == QRPC_SHAPE_SERVER_STREAM)
      rv = qrpc_peer_stream(peer, M_CLIENT_BASE + 1, shapes[i], "s", 1, NULL,
                            &sc_cbs, c, &c->call);
    else
      rv = qrpc_peer_stream(peer, M_CLIENT_BASE + (uint32_t)i, shapes[i], NULL,
                            0, NULL, &sc_cbs, c, &c->call);
    FZ_CHECK(rv == 0);
    if (shapes[i] == QRPC_SHAPE_CLIENT_STREAM ||
        shapes[i] == QRPC_SHAPE_BIDI_STREAM)
      qrpc_call_send(c->call, "i", 1);
  }
}

/* ---- The hostile client -------------------------------------------------- */

static void hs_on_read(qrpc_stream *s, const uint8_t *data, size_t len, int fin,
                       void *ud) {
  (void)data;
  (void)fin;
  hostile *h = ud;
  if (s == h->barrier && len > 0) h->barrier_answered = 1;
}

static void forget_stream(hostile *h, qrpc_stream *s) {
  for (int i = 0; i < 2; i++)
    if (h->own[i] == s) h->own[i] = NULL;
  if (h->barrier == s) h->barrier = NULL;
  for (int i = 0; i < h->naccepted; i++)
    if (h->accepted[i] == s) h->accepted[i] = NULL;
}

static void hs_on_closed(qrpc_stream *s, int error, void *ud) {
  (void)error;
  forget_stream(ud, s);
}

static const qrpc_stream_callbacks hs_cbs = {.on_read = hs_on_read,
                                             .on_closed = hs_on_closed};

static void hostile_accept(qrpc_conn *c, qrpc_stream *s, void *ud) {
  (void)c;
  hostile *h = ud;
  if (h->naccepted == ACCEPT_MAX) return; /* refused by the transport */
  h->accepted[h->naccepted++] = s;
  qrpc_stream_set_callbacks(s, &hs_cbs, h);
}

static void hc_on_established(qrpc_conn *c, void *ud) {
  hostile *h = ud;
  h->established = 1;
  qrpci_conn_set_rpc_acceptor(c, hostile_accept, h);
}

static void hc_on_closed(qrpc_conn *c, const qrpc_close_info *info, void *ud) {
  (void)c;
  (void)info;
  hostile *h = ud;
  h->closed = 1;
  h->c = NULL;
  h->own[0] = h->own[1] = h->barrier = NULL;
  for (int i = 0; i < h->naccepted; i++) h->accepted[i] = NULL;
}

static const qrpc_conn_callbacks hc_cbs = {
    .on_established = hc_on_established,
    .on_closed = hc_on_closed,
};

/* ---- Running the loop ---------------------------------------------------- */

/* One loop turn: returns as soon as some event was handled, or after a
 * tick. Fixed slices would make every input cost several milliseconds of
 * waiting on a timer; this costs what the exchange itself takes. */
static void turn(void) {
  struct timeval tv = {0, TICK_US};
  evtimer_add(G.tick, &tv);
  event_base_loop(qrpc_loop_base(G.loop), EVLOOP_ONCE);
  evtimer_del(G.tick);
}

/* Handles whatever is ready now without waiting. */
static void drain(void) {
  for (int i = 0; i < 4; i++)
    event_base_loop(qrpc_loop_base(G.loop), EVLOOP_NONBLOCK);
}

typedef int (*pred_fn)(void);

static int run_until(pred_fn pred, uint64_t timeout_ms) {
  uint64_t end = qrpc_loop_now_ns(G.loop) + timeout_ms * 1000000u;
  while (!pred()) {
    if (qrpc_loop_now_ns(G.loop) >= end) return 0;
    turn();
  }
  return 1;
}

static void tick_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  (void)arg;
}

static int connected(void) {
  return G.h->closed || (G.h->established && G.peer != NULL);
}

static int accepted_all(void) {
  return G.h->closed || G.h->naccepted >= SERVER_CALLS;
}

static int settled(void) { return G.h->closed || G.h->barrier_answered; }

static int released(void) { return G.peers_closed == G.peers_opened; }

/* Generated stubs decode the request (an undecodable one is answered with
 * INVALID_ARGUMENT before this runs) and pack the reply in place. */
static void greeter_say_hello(qrpc_req *req,
                              const Qrpc__Examples__Hello__HelloRequest *r,
                              void *ud) {
  (void)ud;
  char text[256];
  snprintf(text, sizeof(text), "Hello, %s", r->name ? r->name : "");
  Qrpc__Examples__Hello__HelloReply reply =
      QRPC__EXAMPLES__HELLO__HELLO_REPLY__INIT;
  reply.message = text;
  qrpc_examples_hello_Greeter_SayHello_reply(req, &reply);
}

static const qrpc_examples_hello_Greeter_handlers greeter = {
    .SayHello = greeter_say_hello,
};

/* ---- Setup --------------------------------------------------------------- */

static void start_server(void) {
  qrpc_tls_config *stls = NULL;
  FZ_CHECK(qrpc_tls_config_new(&stls) == 0);
  FZ_CHECK(qrpc_tls_config_set_cert_pem(stls, G.certs.server_cert_pem,
                                        G.certs.server_key_pem) == 0);
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  /* Small limits, so inputs can reach the paths that enforce them. */
  so.rpc.max_frame = 1u << 20;
  so.rpc.max_calls_in_flight = 32;
  so.rpc.unary_streams = 1;
  so.on_peer_open = on_peer_open;
  so.on_peer_close = on_peer_close;
  FZ_CHECK(qrpc_server_new(G.loop, "127.0.0.1:0", stls, &so, &G.srv) == 0);
  qrpc_tls_config_free(stls);
  snprintf(G.addr, sizeof(G.addr), "127.0.0.1:%u",
           (unsigned)qrpc_server_port(G.srv));

  static const struct {
    uint32_t id;
    qrpc_shape shape;
    qrpc_handler_fn fn;
  } methods[] = {
      {M_ECHO, QRPC_SHAPE_UNARY, h_echo},
      {M_FAIL, QRPC_SHAPE_UNARY, h_fail},
      {M_SERVER_STREAM, QRPC_SHAPE_SERVER_STREAM, h_server_stream},
      {M_CLIENT_STREAM, QRPC_SHAPE_CLIENT_STREAM, h_client_stream},
      {M_BIDI, QRPC_SHAPE_BIDI_STREAM, h_bidi},
      {M_HOLD, QRPC_SHAPE_UNARY, h_hold},
      {M_BARRIER, QRPC_SHAPE_UNARY, h_echo},
      {M_HELLO, QRPC_SHAPE_UNARY, h_echo},
  };
  for (size_t i = 0; i < sizeof(methods) / sizeof(methods[0]); i++)
    FZ_CHECK(qrpc_server_register(G.srv, methods[i].id, methods[i].shape,
                                  methods[i].fn, NULL) == 0);
  qrpc_dgram_opts dopts;
  qrpc_dgram_opts_default(&dopts);
  dopts.latest_only = 1;
  FZ_CHECK(qrpc_server_register_dgram(G.srv, DG_LATEST, &dopts, on_dgram,
                                      NULL) == 0);
  FZ_CHECK(qrpc_server_register_dgram(G.srv, DG_PLAIN, NULL, on_dgram, NULL) ==
           0);
  FZ_CHECK(qrpc_server_register_dgram(G.srv, M_HELLO, NULL, on_dgram, NULL) ==
           0);
  FZ_CHECK(qrpc_examples_hello_Greeter_register(G.srv, &greeter) == 0);
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  qrpc_log_set_level(QRPC_LOG_NONE);
  FZ_CHECK(qt_certs_generate(&G.certs) == 0);
  FZ_CHECK(qrpc_loop_new(NULL, &G.loop) == 0);
  G.tick = evtimer_new(qrpc_loop_base(G.loop), tick_cb, NULL);
  FZ_CHECK(G.tick != NULL);
  FZ_CHECK(qrpc_tls_config_new(&G.ctls) == 0);
  FZ_CHECK(qrpc_tls_config_set_ca_pem(G.ctls, G.certs.ca_pem) == 0);
  start_server();
  return 0;
}

/* ---- One input ----------------------------------------------------------- */

static void write_part(qrpc_stream *s, const uint8_t *p, size_t len, int fin) {
  if (!s) return;
  if (len) qrpc_stream_write(s, p, len);
  if (fin) qrpc_stream_finish(s);
}

/* A REQUEST for the barrier method with the largest MsgId there is, so it
 * is valid on a fresh stream whatever the input did on others. */
static void send_barrier(hostile *h) {
  uint8_t buf[32];
  qrpci_frame f = {.type = QRPCI_FRAME_REQUEST,
                   .msgid = QRPCI_VARINT_MAX,
                   .method = M_BARRIER,
                   .payload = (const uint8_t *)"b",
                   .payload_len = 1};
  size_t n = qrpci_frame_encode(buf, sizeof(buf), &f);
  FZ_CHECK(n > 0);
  if (qrpci_stream_open_rpc(h->c, &hs_cbs, h, &h->barrier) == 0)
    qrpc_stream_write(h->barrier, buf, n);
}

/* Datagrams: a length byte, then that many bytes (fewer at the end). */
static void send_datagrams(hostile *h, const uint8_t *data, size_t len) {
  fz_input in = {data, len};
  while (in.len > 0) {
    const uint8_t *p;
    size_t n = fz_take(&in, fz_u8(&in), &p);
    qrpc_conn_send_datagram(h->c, p, n);
  }
}

static void feed(hostile *h, uint8_t flags, uint8_t sel, size_t split,
                 const uint8_t *data, size_t len) {
  qrpc_stream *first = NULL, *second = NULL;
  if (flags & F_DATAGRAMS) {
    send_datagrams(h, data, len);
    return;
  }
  if (flags & F_SERVER_CALLS) {
    int n = h->naccepted;
    if (n > 0) {
      first = h->accepted[sel % n];
      second = h->accepted[(sel + 1) % n];
    }
  } else {
    qrpci_stream_open_rpc(h->c, &hs_cbs, h, &h->own[0]);
    if (flags & F_TWO_STREAMS)
      qrpci_stream_open_rpc(h->c, &hs_cbs, h, &h->own[1]);
    first = h->own[0];
    second = h->own[1];
  }
  if (!(flags & F_TWO_STREAMS) || !second || second == first) split = len;
  if (split > len) split = len;
  write_part(first, data, split, flags & F_FIN);
  write_part(second, data + split, len - split, flags & F_FIN);
}

static void cancel_running_calls(void) {
  for (int i = 0; i < SERVER_CALLS; i++)
    if (G.calls[i].call && !G.calls[i].done) qrpc_call_cancel(G.calls[i].call);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_input in = {data, size};
  uint8_t flags = fz_u8(&in);
  uint8_t sel = fz_u8(&in);
  size_t split = fz_u16(&in);
  hostile h;
  memset(&h, 0, sizeof(h));
  memset(G.calls, 0, sizeof(G.calls));
  G.h = &h;
  G.peer = NULL;
  G.latest_seq = 0;

  /* The server must accept a new connection whatever came before. */
  FZ_CHECK(qrpc_conn_connect(G.loop, G.addr, "localhost", G.ctls, NULL, &hc_cbs,
                             &h, &h.c) == 0);
  FZ_CHECK(run_until(connected, CONNECT_MS));
  FZ_CHECK(h.established && !h.closed && G.peer != NULL);

  if (flags & F_SERVER_CALLS) {
    server_calls_client(G.peer);
    FZ_CHECK(run_until(accepted_all, CONNECT_MS));
  }
  if (!h.closed) {
    feed(&h, flags, sel, split, in.p, in.len);
    send_barrier(&h);
  }
  if ((flags & F_CANCEL) && (flags & F_SERVER_CALLS)) cancel_running_calls();
  run_until(settled, SETTLE_MS);
  drain();
  if (G.peer) check_dgram_counters(G.peer);

  /* Requests still held are answered now, after whatever the input did. */
  while (G.nheld > 0) {
    qrpc_req *req = G.held[--G.nheld];
    qrpc_req_reply(req, "late", 4);
  }
  drain();

  if (!h.closed) qrpc_conn_close(h.c, 0, NULL);
  FZ_CHECK(h.closed);
  /* The server notices the close from the peer's CONNECTION_CLOSE. */
  FZ_CHECK(run_until(released, SETTLE_MS));
  FZ_CHECK(G.nheld == 0);
  if (flags & F_SERVER_CALLS) {
    for (int i = 0; i < SERVER_CALLS; i++) {
      FZ_CHECK(G.calls[i].done == 1);
      FZ_CHECK(G.calls[i].after_done == 0);
    }
  }
  G.h = NULL;
  return 0;
}
