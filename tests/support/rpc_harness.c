#include "rpc_harness.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "quic/rpcstream.h"

/* ---- Servers ---------------------------------------------------------- */

int qt_rpc_server_start(qrpc_loop *loop, const char *bind, qrpc_tls_config *tls,
                        const qrpc_server_opts *opts, qrpc_server **out,
                        char *addr, size_t addr_cap) {
  int rv = qrpc_server_new(loop, bind, tls, opts, out);
  if (rv != 0) {
    *out = NULL;
    return rv;
  }
  snprintf(addr, addr_cap, bind[0] == '[' ? "[::1]:%u" : "127.0.0.1:%u",
           (unsigned)qrpc_server_port(*out));
  return 0;
}

static void peers_on_open(qrpc_peer *peer, void *ud) {
  qt_rpc_peers *p = ud;
  p->opened++;
  p->live++;
  p->last = peer;
}

static void peers_on_close(qrpc_peer *peer, void *ud) {
  qt_rpc_peers *p = ud;
  p->closed++;
  p->live--;
  if (p->last == peer) p->last = NULL;
}

void qt_rpc_peers_install(qrpc_server_opts *opts, qt_rpc_peers *p) {
  memset(p, 0, sizeof(*p));
  opts->on_peer_open = peers_on_open;
  opts->on_peer_close = peers_on_close;
  opts->user_data = p;
}

/* ---- Handlers --------------------------------------------------------- */

void qt_rpc_echo(qrpc_req *req, const uint8_t *payload, size_t len,
                 void *user_data) {
  int *count = user_data;
  if (count) ++*count;
  if (qrpc_req_is_notify(req)) return;
  qrpc_req_reply(req, payload, len);
}

static void holder_on_cancel(qrpc_req *req, int status, void *ud) {
  qt_hold_slot *slot = ud;
  qt_holder *h = slot->h;
  h->cancels++;
  if (status >= 0 && status < QT_STATUS_SLOTS)
    h->cancel_by_status[status]++;
  else
    h->cancel_other++;
  if (slot->req == req) {
    slot->req = NULL;
    h->held--;
  }
}

void qt_holder_init(qt_holder *h) {
  int i;
  memset(h, 0, sizeof(*h));
  for (i = 0; i < QT_HOLD_MAX; i++) h->slots[i].h = h;
}

void qt_holder_handler(qrpc_req *req, const uint8_t *payload, size_t len,
                       void *user_data) {
  static const qrpc_req_callbacks cbs = {.on_cancel = holder_on_cancel};
  qt_holder *h = user_data;
  int i;
  h->received++;
  h->last_remaining_ms = qrpc_req_remaining_ms(req);
  if (qrpc_req_is_notify(req)) {
    h->notifies++;
    return;
  }
  if (len > QT_HOLD_PAYLOAD) {
    h->overflow++;
    qrpc_req_error(req, QRPC_STATUS_INTERNAL, "payload too long to hold");
    return;
  }
  for (i = 0; i < QT_HOLD_MAX; i++) {
    qt_hold_slot *slot = &h->slots[i];
    if (slot->req) continue;
    slot->req = req;
    memcpy(slot->payload, payload, len);
    slot->len = len;
    h->held++;
    qrpc_req_set_callbacks(req, &cbs, slot);
    return;
  }
  h->overflow++;
  qrpc_req_error(req, QRPC_STATUS_INTERNAL, "holder full");
}

int qt_holder_reply_all(qt_holder *h) {
  int i, n = 0;
  for (i = 0; i < QT_HOLD_MAX; i++) {
    qt_hold_slot *slot = &h->slots[i];
    qrpc_req *req = slot->req;
    if (!req) continue;
    slot->req = NULL;
    h->held--;
    if (qrpc_req_reply(req, slot->payload, slot->len) != 0) h->answer_errors++;
    h->answered++;
    n++;
  }
  return n;
}

/* ---- Client fixture --------------------------------------------------- */

static void client_event(qt_rpc_client *c, char ev) {
  if (c->nevents < QT_RPC_EVENTS) c->events[c->nevents++] = ev;
  c->events[c->nevents] = '\0';
}

static void client_on_connect(qrpc_client *cli, qrpc_peer *peer, void *ud) {
  qt_rpc_client *c = ud;
  c->connects++;
  c->connected = 1;
  c->peer = peer;
  if (qrpc_client_peer(cli) != peer) c->peer_mismatch++;
  client_event(c, 'C');
  qrpc_loop_stop(c->loop);
}

static void client_on_disconnect(qrpc_client *cli, const qrpc_close_info *info,
                                 void *ud) {
  (void)cli;
  qt_rpc_client *c = ud;
  c->disconnects++;
  c->peer = NULL;
  qt_close_rec_set(&c->last_disconnect, info);
  if (c->connected) {
    c->connected = 0;
    c->lost++;
    qt_close_rec_set(&c->last_lost, info);
    client_event(c, 'D');
  } else {
    c->unpaired++;
    client_event(c, 'd');
  }
  qrpc_loop_stop(c->loop);
}

int qt_rpc_client_start(qt_rpc_client *c, qrpc_loop *loop, const char *addr,
                        qrpc_tls_config *tls, const qrpc_client_opts *opts) {
  qrpc_client_opts o;
  int rv;
  memset(c, 0, sizeof(*c));
  c->loop = loop;
  if (opts)
    o = *opts;
  else
    qrpc_client_opts_default(&o);
  o.on_connect = client_on_connect;
  o.on_disconnect = client_on_disconnect;
  o.user_data = c;
  rv = qrpc_client_new(loop, addr, tls, &o, &c->cli);
  if (rv != 0) c->cli = NULL;
  return rv;
}

int qt_rpc_client_wait_connects(qt_rpc_client *c, int n, uint64_t timeout_ms) {
  return qt_run_until_count(c->loop, &c->connects, n, timeout_ms);
}

void qt_rpc_client_free(qt_rpc_client *c) {
  qrpc_client *cli = c->cli;
  c->cli = NULL;
  qrpc_client_free(cli);
}

/* ---- Call records ----------------------------------------------------- */

static void rec_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  qt_call_rec *r = ud;
  qt_call_tally *t = r->tally;
  if (qrpc_call_user_data(call) != r) r->user_data_wrong++;
  if (r->done) r->after_done++;
  r->done++;
  r->call = NULL;
  r->status = res->status;
  r->local = res->local;
  r->detail_len = res->detail_len;
  if (res->detail_len > 0 && res->detail)
    memcpy(r->detail, res->detail,
           res->detail_len < sizeof(r->detail) - 1 ? res->detail_len
                                                   : sizeof(r->detail) - 1);
  r->reply_len = res->len;
  if (res->len > QT_REPLY_CAP)
    r->reply_overflow = 1;
  else if (res->len > 0 && !res->payload)
    r->reply_null = 1;
  else if (res->len > 0)
    memcpy(r->reply, res->payload, res->len);
  if (!t) return;
  t->done++;
  if (res->status == QRPC_STATUS_OK) t->ok++;
  if (res->local) t->local++;
  if (res->status >= 0 && res->status < QT_STATUS_SLOTS)
    t->by_status[res->status]++;
  else if (res->status >= QRPC_STATUS_APP_MIN)
    t->app_status++;
  else
    t->odd_status++;
}

static void rec_on_item(qrpc_call *call, const uint8_t *data, size_t len,
                        void *ud) {
  (void)call;
  (void)data;
  (void)len;
  qt_call_rec *r = ud;
  if (r->done) r->after_done++;
  r->items++;
}

static void rec_on_writable(qrpc_call *call, void *ud) {
  (void)call;
  qt_call_rec *r = ud;
  if (r->done) r->after_done++;
  r->writables++;
}

const qrpc_call_callbacks qt_call_rec_cbs = {
    .on_done = rec_on_done,
    .on_item = rec_on_item,
    .on_writable = rec_on_writable,
};

void qt_call_rec_init(qt_call_rec *r, qt_call_tally *tally) {
  memset(r, 0, sizeof(*r));
  r->tally = tally;
}

qrpc_call_opts qt_call_opts(uint64_t timeout_ms, int fail_fast) {
  qrpc_call_opts o;
  qrpc_call_opts_default(&o);
  o.timeout_ms = timeout_ms;
  o.fail_fast = fail_fast;
  return o;
}

int qt_call_rec_start(qt_call_rec *r, qt_call_tally *tally, qrpc_client *cli,
                      uint32_t method, const void *payload, size_t len,
                      const qrpc_call_opts *opts) {
  qt_call_rec_init(r, tally);
  return qrpc_client_call(cli, method, payload, len, opts, &qt_call_rec_cbs, r,
                          &r->call);
}

int qt_call_rec_start_peer(qt_call_rec *r, qt_call_tally *tally,
                           qrpc_peer *peer, uint32_t method,
                           const void *payload, size_t len,
                           const qrpc_call_opts *opts) {
  qt_call_rec_init(r, tally);
  return qrpc_peer_call(peer, method, payload, len, opts, &qt_call_rec_cbs, r,
                        &r->call);
}

int qt_call_rec_replied(const qt_call_rec *r, const void *payload, size_t len) {
  return r->done == 1 && r->status == QRPC_STATUS_OK && !r->reply_overflow &&
         !r->reply_null && r->reply_len == len &&
         (len == 0 || memcmp(r->reply, payload, len) == 0);
}

/* ---- Hand-built RPC peer ---------------------------------------------- */

static int raw_on_body(void *ctx, const uint8_t *body, size_t len) {
  qt_raw_rpc *r = ctx;
  qrpci_frame f;
  const char *why = NULL;
  if (qrpci_frame_decode(body, len, &f, &why) != 0) {
    r->undecodable++;
    if (!r->why) r->why = why;
    if (r->acceptor) r->acceptor->undecodable++;
    return QRPC_EPROTO;
  }
  r->frames++;
  if (f.type < QT_RAW_TYPES) r->by_type[f.type]++;
  if (r->acceptor) {
    r->acceptor->frames++;
    if (f.type < QT_RAW_TYPES) r->acceptor->by_type[f.type]++;
  }
  r->last = f;
  r->last.payload = NULL;
  r->last.detail = NULL;
  r->last_payload_len =
      f.payload_len < QT_REPLY_CAP ? f.payload_len : QT_REPLY_CAP;
  if (r->last_payload_len)
    memcpy(r->last_payload, f.payload, r->last_payload_len);
  if (r->on_frame) r->on_frame(r, &f, r->user_data);
  return 0;
}

static void raw_on_read(qrpc_stream *s, const uint8_t *data, size_t len,
                        int fin, void *ud) {
  qt_raw_rpc *r = ud;
  const char *why = NULL;
  /* A frame that failed to decode was counted by raw_on_body(); anything
   * else that stops the reassembler is counted here, once. */
  if (len > 0 &&
      qrpci_reasm_feed(&r->reasm, data, len, raw_on_body, r, &why) != 0 &&
      !r->why) {
    r->undecodable++;
    r->why = why ? why : "reassembly failed";
  }
  if (!fin) return;
  r->fins++;
  if (qrpci_reasm_finish(&r->reasm) != 0 && !r->why) {
    r->undecodable++;
    r->why = "frame truncated by end of stream";
  }
  if (r->finish_on_fin && r->s && qrpc_stream_finish(s) != 0) r->write_errors++;
}

static void raw_on_reset(qrpc_stream *s, uint64_t code, void *ud) {
  (void)s;
  qt_raw_rpc *r = ud;
  r->resets++;
  r->reset_code = code;
}

static void raw_on_stop_sending(qrpc_stream *s, uint64_t code, void *ud) {
  (void)s;
  (void)code;
  qt_raw_rpc *r = ud;
  r->stop_sendings++;
}

static void raw_on_closed(qrpc_stream *s, int error, void *ud) {
  (void)s;
  (void)error;
  qt_raw_rpc *r = ud;
  r->closes++;
  r->s = NULL;
  qrpci_reasm_free(&r->reasm);
  if (r->acceptor) {
    if (r->acceptor->last == r) r->acceptor->last = NULL;
    free(r);
  }
}

static const qrpc_stream_callbacks raw_cbs = {
    .on_read = raw_on_read,
    .on_reset = raw_on_reset,
    .on_stop_sending = raw_on_stop_sending,
    .on_closed = raw_on_closed,
};

int qt_raw_rpc_open(qt_raw_rpc *r, qrpc_conn *c, qt_raw_frame_fn on_frame,
                    void *user_data) {
  int rv;
  memset(r, 0, sizeof(*r));
  qrpci_reasm_init(&r->reasm, QRPCI_DEFAULT_FRAME_LIMIT);
  r->on_frame = on_frame;
  r->user_data = user_data;
  rv = qrpci_stream_open_rpc(c, &raw_cbs, r, &r->s);
  if (rv != 0) r->s = NULL;
  return rv;
}

int qt_raw_rpc_send(qt_raw_rpc *r, const qrpci_frame *f) {
  size_t n = qrpci_frame_encoded_len(f);
  uint8_t *buf;
  int rv;
  if (n == 0) return QRPC_EINVAL;
  buf = malloc(n);
  if (!buf) return QRPC_ENOMEM;
  if (qrpci_frame_encode(buf, n, f) != n) {
    free(buf);
    return QRPC_EINVAL;
  }
  rv = qt_raw_rpc_send_bytes(r, buf, n);
  free(buf);
  return rv;
}

int qt_raw_rpc_send_bytes(qt_raw_rpc *r, const void *data, size_t len) {
  int rv;
  if (!r->s) return QRPC_ECLOSED;
  rv = qrpc_stream_write(r->s, data, len);
  if (rv != 0) r->write_errors++;
  return rv;
}

void qt_raw_accept_fn(qrpc_conn *c, qrpc_stream *s, void *user_data) {
  (void)c;
  qt_raw_acceptor *acc = user_data;
  qt_raw_rpc *r = calloc(1, sizeof(*r));
  if (!r) {
    acc->alloc_failed++;
    return; /* left without callbacks: the transport refuses it */
  }
  qrpci_reasm_init(&r->reasm, QRPCI_DEFAULT_FRAME_LIMIT);
  r->s = s;
  r->on_frame = acc->on_frame;
  r->user_data = acc->user_data;
  r->acceptor = acc;
  r->finish_on_fin = 1;
  acc->accepted++;
  acc->last = r;
  qrpc_stream_set_callbacks(s, &raw_cbs, r);
}

/* ---- Frames ----------------------------------------------------------- */

qrpci_frame qt_frame_request(uint64_t msgid, uint64_t method,
                             uint64_t timeout_ms, const void *payload,
                             size_t len) {
  qrpci_frame f;
  memset(&f, 0, sizeof(f));
  f.type = QRPCI_FRAME_REQUEST;
  f.msgid = msgid;
  f.method = method;
  f.timeout_ms = timeout_ms;
  f.payload = payload;
  f.payload_len = len;
  return f;
}

qrpci_frame qt_frame_reply(uint64_t msgid, const void *payload, size_t len) {
  qrpci_frame f;
  memset(&f, 0, sizeof(f));
  f.type = QRPCI_FRAME_REPLY;
  f.msgid = msgid;
  f.payload = payload;
  f.payload_len = len;
  return f;
}

/* ---- Teardown --------------------------------------------------------- */

int qt_rpc_close_all(qrpc_loop *loop, qrpc_server **srv, qt_rpc_client *clients,
                     size_t n) {
  size_t i;
  for (i = 0; i < n; i++) qt_rpc_client_free(&clients[i]);
  if (srv) {
    qrpc_server_free(*srv);
    *srv = NULL;
  }
  return qt_run_until_released(loop, QT_WAIT_MS);
}

/* ---- Small utilities -------------------------------------------------- */

int qt_contains_nocase(const char *hay, const char *needle) {
  size_t n = strlen(needle), i, j;
  if (n == 0) return 1;
  for (i = 0; hay[i]; i++) {
    for (j = 0; j < n && hay[i + j]; j++)
      if (tolower((unsigned char)hay[i + j]) !=
          tolower((unsigned char)needle[j]))
        break;
    if (j == n) return 1;
  }
  return 0;
}
