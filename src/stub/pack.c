/*
 * The stubs' messages: typed messages checked and described for the _msg
 * functions, payloads decoded with protobuf-c, and the results callers see
 * when a reply does not decode.
 */
#include <protobuf-c/protobuf-c.h>
#include <string.h>

#include "qrpc/error.h"
#include "qrpc/stub.h"

/* An empty payload may come as NULL; protobuf-c is given a valid pointer
 * all the same. */
static const uint8_t no_bytes[1];

static size_t pack(const void *msg, uint8_t *out) {
  return protobuf_c_message_pack(msg, out);
}

int qrpc_stub_msg(qrpc_msg *m, const ProtobufCMessage *msg,
                  const ProtobufCMessageDescriptor *desc) {
  if (m == NULL || msg == NULL || desc == NULL || msg->descriptor != desc)
    return QRPC_EINVAL;
  m->msg = msg;
  m->size = protobuf_c_message_get_packed_size(msg);
  m->pack = pack;
  return 0;
}

int qrpc_stub_unpack(const ProtobufCMessageDescriptor *desc,
                     const uint8_t *data, size_t len, ProtobufCMessage **out) {
  if (out != NULL) *out = NULL;
  if (desc == NULL || out == NULL || (data == NULL && len > 0))
    return QRPC_EINVAL;
  *out = protobuf_c_message_unpack(desc, NULL, len,
                                   data != NULL ? data : no_bytes);
  return *out != NULL ? 0 : QRPC_EPROTO;
}

void qrpc_stub_free(ProtobufCMessage *msg) {
  if (msg != NULL) protobuf_c_message_free_unpacked(msg, NULL);
}

void qrpc_stub_result_fail(qrpc_result *r, const char *detail) {
  r->status = QRPC_STATUS_INTERNAL;
  r->detail = detail;
  r->detail_len = strlen(detail);
  r->payload = NULL;
  r->len = 0;
  r->local = 1;
}

int qrpc_stub_result_reply(qrpc_result *r,
                           const ProtobufCMessageDescriptor *desc,
                           const char *detail, ProtobufCMessage **reply) {
  if (reply != NULL) *reply = NULL;
  if (r == NULL || desc == NULL || detail == NULL || reply == NULL)
    return QRPC_EINVAL;
  if (r->status != QRPC_STATUS_OK) return 0;
  int rc = qrpc_stub_unpack(desc, r->payload, r->len, reply);
  if (rc != 0) {
    qrpc_stub_result_fail(r, detail);
    return QRPC_EPROTO;
  }
  return 0;
}
