#include "fault_fixtures.h"

#include <malloc.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"

size_t qf_heap_in_use(void) {
  struct mallinfo2 mi = mallinfo2();
  return mi.uordblks + mi.hblkhd;
}

void qf_put_be32(uint8_t *p, uint32_t v) {
  p[0] = (uint8_t)(v >> 24);
  p[1] = (uint8_t)(v >> 16);
  p[2] = (uint8_t)(v >> 8);
  p[3] = (uint8_t)v;
}

uint32_t qf_get_be32(const uint8_t *p) {
  return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 |
         p[3];
}

/* ---- Server methods -------------------------------------------------------
 */

static void m_echo(qrpc_req *req, const uint8_t *p, size_t len, void *ud) {
  (void)ud;
  if (!qrpc_req_is_notify(req)) qrpc_req_reply(req, p, len);
}

static uint64_t item_seed(uint32_t i) { return UINT64_C(0x17e5) + i; }

void qf_item_fill(uint32_t i, uint8_t out[QF_ITEM_LEN]) {
  qf_put_be32(out, i);
  qt_pattern_fill(item_seed(i), 0, out + 4, QF_ITEM_LEN - 4);
}

typedef struct items_state {
  qrpc_req *req;
  uint32_t n;
  uint32_t next;
} items_state;

static int items_open;

int qf_items_streams_open(void) { return items_open; }

static void items_release(items_state *st) {
  items_open--;
  free(st);
}

static void items_pump(items_state *st) {
  uint8_t item[QF_ITEM_LEN];
  while (st->next < st->n) {
    qf_item_fill(st->next, item);
    int rv = qrpc_req_send(st->req, item, sizeof(item));
    if (rv == QRPC_EAGAIN) return; /* on_writable continues */
    if (rv != 0) {
      qrpc_req_error(st->req, QRPC_STATUS_INTERNAL, "send failed");
      items_release(st);
      return;
    }
    st->next++;
  }
  qrpc_req_end(st->req);
  items_release(st);
}

static void items_on_writable(qrpc_req *req, void *ud) {
  (void)req;
  items_pump(ud);
}

static void items_on_cancel(qrpc_req *req, int status, void *ud) {
  (void)req;
  (void)status;
  items_release(ud);
}

static void m_items(qrpc_req *req, const uint8_t *p, size_t len, void *ud) {
  (void)ud;
  static const qrpc_req_callbacks cbs = {.on_writable = items_on_writable,
                                         .on_cancel = items_on_cancel};
  if (qrpc_req_is_notify(req)) return;
  if (len != 4) {
    qrpc_req_error(req, QRPC_STATUS_INVALID_ARGUMENT, "want a 4-byte count");
    return;
  }
  items_state *st = calloc(1, sizeof(*st));
  if (!st) {
    qrpc_req_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED, "no memory");
    return;
  }
  items_open++;
  st->req = req;
  st->n = qf_get_be32(p);
  qrpc_req_set_callbacks(req, &cbs, st);
  items_pump(st);
}

static void m_big(qrpc_req *req, const uint8_t *p, size_t len, void *ud) {
  (void)ud;
  if (qrpc_req_is_notify(req)) return;
  uint32_t n = len == 4 ? qf_get_be32(p) : 0;
  if (n > QF_BIG_MAX) n = QF_BIG_MAX;
  uint8_t *buf = malloc(n ? n : 1);
  if (!buf) {
    qrpc_req_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED, "no memory");
    return;
  }
  qt_pattern_fill(n, 0, buf, n);
  qrpc_req_reply(req, buf, n);
  free(buf);
}

int qf_register_methods(qrpc_server *srv) {
  int rv = qrpc_server_register(srv, QF_M_ECHO, QRPC_SHAPE_UNARY, m_echo, NULL);
  if (rv == 0)
    rv = qrpc_server_register(srv, QF_M_ITEMS, QRPC_SHAPE_SERVER_STREAM,
                              m_items, NULL);
  if (rv == 0)
    rv = qrpc_server_register(srv, QF_M_BIG, QRPC_SHAPE_UNARY, m_big, NULL);
  return rv;
}

/* ---- Unary window ----------------------------------------------------------
 */

/* A call's user data: which pump and which call, so on_done checks the
 * reply against the payload of the call it completes. */
typedef struct slot {
  qf_pump *p;
  uint32_t index;
} slot;

static void payload_fill(uint32_t i, uint8_t out[QF_PAYLOAD]) {
  qf_put_be32(out, i);
  qt_pattern_fill(UINT64_C(0xca11) + i, 0, out + 4, QF_PAYLOAD - 4);
}

static void pump_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  slot *s = ud;
  qf_pump *p = s->p;
  uint32_t i = s->index;
  free(s);
  p->in_flight--;
  p->completed++;
  if (p->done) {
    if (p->done[i] != 0) p->done_twice++;
    if (p->done[i] < 255) p->done[i]++;
  }
  if (res->status == QRPC_STATUS_OK) {
    uint8_t want[QF_PAYLOAD];
    payload_fill(i, want);
    if (res->len == QF_PAYLOAD && memcmp(res->payload, want, QF_PAYLOAD) == 0) {
      p->ok++;
      p->last_ok_ms = qt_now_ms();
    } else {
      p->wrong_payload++;
    }
  } else {
    if (p->failed == 0) p->first_failure = res->status;
    p->failed++;
  }
  if (res->status >= 0 && res->status < 17) p->by_status[res->status]++;
  if (!p->paced) qf_pump_fill(p);
}

static const qrpc_call_callbacks pump_cbs = {.on_done = pump_on_done};

void qf_pump_fill(qf_pump *p) {
  while (!p->stopped && p->in_flight < p->window &&
         (p->total == 0 || p->started < p->total)) {
    uint8_t payload[QF_PAYLOAD];
    slot *s = malloc(sizeof(*s));
    if (!s) {
      p->start_errors++;
      return;
    }
    s->p = p;
    s->index = p->started;
    payload_fill(s->index, payload);
    qrpc_call_opts o;
    qrpc_call_opts_default(&o);
    o.timeout_ms = p->timeout_ms;
    int rv = qrpc_client_call(p->cli, QF_M_ECHO, payload, sizeof(payload), &o,
                              &pump_cbs, s, NULL);
    if (rv != 0) {
      /* Refused now (queue full, closed): retried on the next fill. */
      free(s);
      p->start_errors++;
      p->last_start_error = rv;
      return;
    }
    p->started++;
    p->in_flight++;
  }
}

int qf_pump_start(qf_pump *p, qrpc_client *cli, uint32_t total, int window,
                  uint64_t timeout_ms) {
  memset(p, 0, sizeof(*p));
  p->cli = cli;
  p->total = total;
  p->window = window;
  p->timeout_ms = timeout_ms;
  if (total > 0 && !(p->done = calloc(total, 1))) return -1;
  qf_pump_fill(p);
  return 0;
}

void qf_pump_stop(qf_pump *p) { p->stopped = 1; }

int qf_pump_finished(const qf_pump *p) {
  return p->total > 0 && p->started == p->total && p->in_flight == 0;
}

uint32_t qf_pump_not_once(const qf_pump *p) {
  uint32_t n = 0;
  for (uint32_t i = 0; p->done && i < p->total; i++) n += p->done[i] != 1;
  return n;
}

void qf_pump_free(qf_pump *p) {
  free(p->done);
  p->done = NULL;
}

/* ---- Server-streamed items --------------------------------------------------
 */

static void items_on_item(qrpc_call *call, const uint8_t *data, size_t len,
                          void *ud) {
  (void)call;
  qf_items *it = ud;
  uint8_t want[QF_ITEM_LEN];
  if (it->done) it->after_done++;
  qf_item_fill(it->next, want);
  if (len != QF_ITEM_LEN || memcmp(data, want, QF_ITEM_LEN) != 0) it->bad++;
  it->next++;
}

static void items_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  (void)call;
  qf_items *it = ud;
  it->done++;
  it->status = res->status;
}

static const qrpc_call_callbacks items_cbs = {.on_done = items_on_done,
                                              .on_item = items_on_item};

int qf_items_start(qf_items *it, qrpc_client *cli, uint32_t n,
                   qrpc_call **out) {
  uint8_t req[4];
  memset(it, 0, sizeof(*it));
  it->n = n;
  qf_put_be32(req, n);
  return qrpc_client_stream(cli, QF_M_ITEMS, QRPC_SHAPE_SERVER_STREAM, req,
                            sizeof(req), NULL, &items_cbs, it, out);
}
