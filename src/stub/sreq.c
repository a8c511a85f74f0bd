/*
 * The server side of client and bidi streaming calls served through the
 * stubs: the per-call state between the engine's request callbacks and the
 * method's typed handlers.
 *
 * The state lives until the engine releases the request: after an answer
 * that ends it (a reply or an error), after on_cancel, or once both sides
 * of a bidi call have ended. A user callback may answer the call while it
 * runs, so the state counts the callbacks running (busy) and a release
 * during one frees it only when the last returns.
 */
#include <protobuf-c/protobuf-c.h>
#include <stdlib.h>

#include "qrpc/error.h"
#include "qrpc/stub.h"

typedef struct sreq {
  const ProtobufCMessageDescriptor *item_desc;
  const char *bad_item;
  qrpc_stub_item_fn item;
  const void *handlers;
  qrpc_stub_stream_handlers cbs;
  void *user_data;
  int busy;
  int released;
  int caller_ended;
  int ended;
} sreq;

static void enter(sreq *s) { s->busy++; }

/* Frees s if it was released during the callback just left. */
static void leave(sreq *s) {
  if (--s->busy == 0 && s->released) free(s);
}

static void release(sreq *s) {
  s->released = 1;
  if (s->busy == 0) free(s);
}

/* Fails a call whose item did not decode, telling its handler first. */
static void refuse(qrpc_req *req, sreq *s) {
  enter(s);
  if (s->cbs.on_cancel != NULL)
    s->cbs.on_cancel(req, QRPC_STATUS_INVALID_ARGUMENT, s->user_data);
  if (!s->released) {
    qrpc_req_error(req, QRPC_STATUS_INVALID_ARGUMENT, s->bad_item);
    s->released = 1;
  }
  leave(s);
}

static void on_item(qrpc_req *req, const uint8_t *data, size_t len,
                    void *user_data) {
  sreq *s = user_data;
  ProtobufCMessage *item;
  if (qrpc_stub_unpack(s->item_desc, data, len, &item) != 0) {
    refuse(req, s);
    return;
  }
  enter(s);
  s->item(req, item, s->handlers, s->user_data);
  leave(s);
  qrpc_stub_free(item);
}

static void on_end(qrpc_req *req, void *user_data) {
  sreq *s = user_data;
  enter(s);
  s->caller_ended = 1;
  if (s->cbs.on_end != NULL) s->cbs.on_end(req, s->user_data);
  /* Both sides of a bidi call ended: the engine releases req now. */
  if (s->ended) s->released = 1;
  leave(s);
}

static void on_cancel(qrpc_req *req, int status, void *user_data) {
  sreq *s = user_data;
  enter(s);
  if (s->cbs.on_cancel != NULL) s->cbs.on_cancel(req, status, s->user_data);
  s->released = 1;
  leave(s);
}

static void on_writable(qrpc_req *req, void *user_data) {
  sreq *s = user_data;
  enter(s);
  if (s->cbs.on_writable != NULL) s->cbs.on_writable(req, s->user_data);
  leave(s);
}

static const qrpc_req_callbacks req_cbs = {on_item, on_end, on_cancel,
                                           on_writable};

int qrpc_stub_sreq_start(qrpc_req *req,
                         const ProtobufCMessageDescriptor *item_desc,
                         const char *bad_item, qrpc_stub_item_fn item,
                         const void *handlers,
                         const qrpc_stub_stream_handlers *cbs,
                         void *user_data) {
  if (req == NULL || item_desc == NULL || bad_item == NULL || item == NULL ||
      handlers == NULL || cbs == NULL)
    return QRPC_EINVAL;
  if (qrpc_req_is_notify(req)) return 0;
  sreq *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    qrpc_req_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED, "out of memory");
    return QRPC_ENOMEM;
  }
  s->item_desc = item_desc;
  s->bad_item = bad_item;
  s->item = item;
  s->handlers = handlers;
  s->cbs = *cbs;
  s->user_data = user_data;
  qrpc_req_set_callbacks(req, &req_cbs, s);
  if (s->cbs.on_start != NULL) {
    enter(s);
    s->user_data = s->cbs.on_start(req, user_data);
    leave(s);
  }
  return 0;
}

/* The state is read before answering: an answer may free req. An answer
 * the engine refused with QRPC_EINVAL left req as it was. */
static int answered(sreq *s, int rc) {
  if (s != NULL && rc != QRPC_EINVAL) release(s);
  return rc;
}

int qrpc_stub_sreq_reply(qrpc_req *req, const qrpc_msg *m) {
  if (req == NULL || m == NULL) return QRPC_EINVAL;
  sreq *s = qrpc_req_user_data(req);
  return answered(s, qrpc_req_reply_msg(req, m));
}

int qrpc_stub_sreq_error(qrpc_req *req, int status, const char *detail) {
  if (req == NULL || status <= 0) return QRPC_EINVAL;
  sreq *s = qrpc_req_user_data(req);
  return answered(s, qrpc_req_error(req, status, detail));
}

/* After the server's END of a bidi call the request is over once the
 * caller has ended too. */
int qrpc_stub_sreq_end(qrpc_req *req) {
  if (req == NULL) return QRPC_EINVAL;
  sreq *s = qrpc_req_user_data(req);
  int rc = qrpc_req_end(req);
  if (rc != 0 || s == NULL) return rc;
  s->ended = 1;
  if (s->caller_ended) release(s);
  return 0;
}
