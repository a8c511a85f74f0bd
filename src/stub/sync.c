/*
 * Blocking calls: a unary call started on the caller's loop, which is run
 * until the call's on_done has fired.
 */
#include <protobuf-c/protobuf-c.h>
#include <stdlib.h>

#include "qrpc/error.h"
#include "qrpc/stub.h"

/* How long past its own deadline a blocking call waits before it cancels
 * the call: the engine's deadline normally ends it first, and a loop
 * stopped early by other callbacks is run again meanwhile. */
#define SYNC_GRACE_MS 1000u

#define NS_PER_MS UINT64_C(1000000)

/* One blocking call. It outlives its caller when the loop fails: on_done
 * then frees it. */
typedef struct sync_call {
  qrpc_loop *loop;
  const ProtobufCMessageDescriptor *desc;
  ProtobufCMessage *reply;
  int status;
  int done;
  int abandoned;
} sync_call;

static void sync_on_done(qrpc_call *call, const qrpc_result *res,
                         void *user_data) {
  sync_call *s = user_data;
  (void)call;
  if (s->abandoned) {
    free(s);
    return;
  }
  s->status = res->status;
  if (res->status == QRPC_STATUS_OK &&
      qrpc_stub_unpack(s->desc, res->payload, res->len, &s->reply) != 0)
    s->status = QRPC_STATUS_INTERNAL;
  s->done = 1;
  qrpc_loop_stop(s->loop);
}

/* Runs the loop until s is done. On failure the call is cancelled and s
 * left to sync_on_done. */
static int sync_wait(sync_call *s, qrpc_call *call, uint64_t timeout_ms) {
  uint64_t limit_ns = 0;
  int cancelled = 0;
  if (timeout_ms > 0)
    limit_ns =
        qrpc_loop_now_ns(s->loop) + (timeout_ms + SYNC_GRACE_MS) * NS_PER_MS;
  while (!s->done) {
    int rc = qrpc_loop_run(s->loop);
    if (rc != 0) {
      s->abandoned = 1;
      qrpc_call_cancel(call);
      return rc;
    }
    if (!s->done && !cancelled && limit_ns != 0 &&
        qrpc_loop_now_ns(s->loop) > limit_ns) {
      cancelled = 1;
      qrpc_call_cancel(call);
    }
  }
  return 0;
}

int qrpc_stub_call_sync(qrpc_loop *loop, qrpc_client *cli, uint32_t method,
                        unsigned flags, const ProtobufCMessage *request,
                        const ProtobufCMessageDescriptor *in,
                        const ProtobufCMessageDescriptor *out,
                        uint64_t timeout_ms, ProtobufCMessage **reply,
                        int *status) {
  static const qrpc_call_callbacks cbs = {sync_on_done, NULL, NULL};
  qrpc_call_opts opts;
  qrpc_call *call = NULL;
  qrpc_msg m;
  if (reply != NULL) *reply = NULL;
  if (status != NULL) *status = QRPC_STATUS_UNKNOWN;
  if (loop == NULL || cli == NULL || out == NULL) return QRPC_EINVAL;
  int rc = qrpc_stub_msg(&m, request, in);
  if (rc != 0) return rc;
  sync_call *s = calloc(1, sizeof(*s));
  if (s == NULL) return QRPC_ENOMEM;
  s->loop = loop;
  s->desc = out;
  qrpc_call_opts_default(&opts);
  opts.timeout_ms = timeout_ms;
  opts.idempotent = (flags & QRPC_METHOD_IDEMPOTENT) != 0;
  rc = qrpc_client_call_msg(cli, method, &m, &opts, &cbs, s, &call);
  if (rc != 0) {
    free(s);
    return rc;
  }
  if ((rc = sync_wait(s, call, timeout_ms)) != 0) return rc;
  if (status != NULL) *status = s->status;
  if (reply != NULL)
    *reply = s->reply;
  else
    qrpc_stub_free(s->reply);
  free(s);
  return 0;
}
