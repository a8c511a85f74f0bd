/*
 * Where a stub's call or registration goes: the client or one of its
 * peers, the server or a client serving its server; and the refusal of
 * requests that do not decode.
 */
#include <string.h>

#include "qrpc/error.h"
#include "qrpc/stub.h"

static int start_unary(qrpc_client *cli, qrpc_peer *peer, uint32_t method,
                       const qrpc_msg *m, const qrpc_call_opts *opts,
                       const qrpc_call_callbacks *cbs, void *user_data,
                       qrpc_call **out) {
  if (m == NULL) return QRPC_EINVAL;
  if (cli != NULL)
    return qrpc_client_call_msg(cli, method, m, opts, cbs, user_data, out);
  return qrpc_peer_call_msg(peer, method, m, opts, cbs, user_data, out);
}

/* A server streaming call carries its request; the others send items
 * after the start. */
static int start_stream(qrpc_client *cli, qrpc_peer *peer, uint32_t method,
                        qrpc_shape shape, const qrpc_msg *m,
                        const qrpc_call_opts *opts,
                        const qrpc_call_callbacks *cbs, void *user_data,
                        qrpc_call **out) {
  if ((shape == QRPC_SHAPE_SERVER_STREAM) != (m != NULL)) return QRPC_EINVAL;
  if (m != NULL)
    return cli != NULL ? qrpc_client_stream_msg(cli, method, shape, m, opts,
                                                cbs, user_data, out)
                       : qrpc_peer_stream_msg(peer, method, shape, m, opts, cbs,
                                              user_data, out);
  return cli != NULL ? qrpc_client_stream(cli, method, shape, NULL, 0, opts,
                                          cbs, user_data, out)
                     : qrpc_peer_stream(peer, method, shape, NULL, 0, opts, cbs,
                                        user_data, out);
}

int qrpc_stub_call_start(qrpc_client *cli, qrpc_peer *peer, uint32_t method,
                         qrpc_shape shape, unsigned flags, const qrpc_msg *m,
                         const qrpc_call_opts *opts,
                         const qrpc_call_callbacks *cbs, void *user_data,
                         qrpc_call **out) {
  qrpc_call_opts o;
  if (cli == NULL && peer == NULL) return QRPC_EINVAL;
  if (flags & QRPC_METHOD_IDEMPOTENT) {
    /* The IDL's mark is added to the caller's options, which are copied
     * whatever qrpc version the caller was built against. */
    int rc = qrpc_call_opts_copy(&o, opts);
    if (rc != 0) return rc;
    o.idempotent = 1;
    opts = &o;
  }
  if (shape == QRPC_SHAPE_UNARY)
    return start_unary(cli, peer, method, m, opts, cbs, user_data, out);
  return start_stream(cli, peer, method, shape, m, opts, cbs, user_data, out);
}

/* The engine only hands user_data back to the handler, so the stubs'
 * handlers struct stays const on their side. */
int qrpc_stub_register(qrpc_server *srv, qrpc_client *cli, uint32_t method,
                       qrpc_shape shape, unsigned flags,
                       qrpc_handler_fn handler, const void *handlers) {
  if (srv != NULL)
    return qrpc_server_register_flags(srv, method, shape, flags, handler,
                                      (void *)handlers);
  if (cli != NULL)
    return qrpc_client_register(cli, method, shape, handler, (void *)handlers);
  return QRPC_EINVAL;
}

int qrpc_stub_handlers_copy(qrpc_server *srv, qrpc_client *cli, const void *h,
                            size_t size, size_t user_data_offset,
                            int set_user_data, void *user_data,
                            const void **out) {
  if ((srv == NULL && cli == NULL) || h == NULL || out == NULL ||
      size < user_data_offset + sizeof(void *))
    return QRPC_EINVAL;
  void *copy = NULL;
  int rc = srv != NULL ? qrpc_server_keep(srv, h, size, &copy)
                       : qrpc_client_keep(cli, h, size, &copy);
  if (rc != 0) return rc;
  if (set_user_data)
    memcpy((unsigned char *)copy + user_data_offset, &user_data,
           sizeof(user_data));
  *out = copy;
  return 0;
}

int qrpc_stub_register_dgram(qrpc_server *srv, qrpc_client *cli,
                             uint32_t channel, int latest_only,
                             uint64_t max_age_ms, qrpc_dgram_fn fn,
                             const void *handlers) {
  return qrpc_stub_register_dgram_frag(srv, cli, channel, latest_only,
                                       max_age_ms, 0, fn, handlers);
}

int qrpc_stub_register_dgram_frag(qrpc_server *srv, qrpc_client *cli,
                                  uint32_t channel, int latest_only,
                                  uint64_t max_age_ms, size_t max_message,
                                  qrpc_dgram_fn fn, const void *handlers) {
  return qrpc_stub_register_dgram_snapshot(srv, cli, channel, latest_only,
                                           max_age_ms, max_message, 0, 0, 0, fn,
                                           handlers);
}

int qrpc_stub_register_dgram_snapshot(qrpc_server *srv, qrpc_client *cli,
                                      uint32_t channel, int latest_only,
                                      uint64_t max_age_ms, size_t max_message,
                                      size_t snapshot_ring,
                                      uint32_t snapshot_entities,
                                      uint32_t snapshot_key, qrpc_dgram_fn fn,
                                      const void *handlers) {
  qrpc_dgram_opts o;
  qrpc_dgram_opts_default(&o);
  o.latest_only = latest_only;
  o.max_age_ms = max_age_ms;
  o.max_message = max_message;
  o.snapshot_ring = snapshot_ring;
  o.snapshot_entities = snapshot_entities;
  o.snapshot_key = snapshot_key;
  if (srv != NULL)
    return qrpc_server_register_dgram(srv, channel, &o, fn, (void *)handlers);
  if (cli != NULL)
    return qrpc_client_register_dgram(cli, channel, &o, fn, (void *)handlers);
  return QRPC_EINVAL;
}

int qrpc_stub_refuse(qrpc_req *req, const char *detail) {
  if (req == NULL) return QRPC_EINVAL;
  if (qrpc_req_is_notify(req)) return 0;
  return qrpc_req_error(req, QRPC_STATUS_INVALID_ARGUMENT, detail);
}
