/*
 * The stubs' messages: typed messages checked and described for the _msg
 * functions, payloads decoded with protobuf-c, and the results callers see
 * when a reply does not decode.
 */
#include <protobuf-c/protobuf-c.h>
#include <string.h>

#include "qrpc/error.h"
#include "qrpc/stub.h"
#include "util/pbwire.h"

/* Nesting deeper than this is refused rather than walked. */
#define MAX_DEPTH 64

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
  m->release = NULL;
  m->owner = NULL;
  return 0;
}

/* 1 if no string field of desc in msg[0..len), in it or in any message
 * nested in it, holds a NUL byte. protobuf-c hands strings over as
 * NUL-terminated copies, so such a string would reach a handler cut
 * short: "a\0b" would look like "a". Anything that cannot be walked
 * counts as a NUL (the caller refuses it). */
static int strings_whole(const ProtobufCMessageDescriptor *desc,
                         const uint8_t *p, size_t n, int depth) {
  if (depth > MAX_DEPTH) return 0;
  while (n > 0) {
    uint64_t key, vlen;
    size_t k = qrpci_pb_varint(p, n, &key);
    if (k == 0) return 0;
    p += k;
    n -= k;
    switch (key & 7) {
    case QRPCI_PB_VARINT:
      if ((k = qrpci_pb_varint(p, n, &vlen)) == 0) return 0;
      break;
    case QRPCI_PB_I64: k = 8; break;
    case QRPCI_PB_I32: k = 4; break;
    case QRPCI_PB_LEN: {
      size_t h = qrpci_pb_varint(p, n, &vlen);
      if (h == 0 || vlen > n - h) return 0;
      const uint8_t *v = p + h;
      const ProtobufCFieldDescriptor *f =
          key >> 3 <= UINT32_MAX
              ? protobuf_c_message_descriptor_get_field(desc,
                                                        (unsigned)(key >> 3))
              : NULL;
      if (f && f->type == PROTOBUF_C_TYPE_STRING && memchr(v, 0, vlen))
        return 0;
      if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
          !strings_whole(f->descriptor, v, vlen, depth + 1))
        return 0;
      k = h + vlen;
      break;
    }
    default: return 0;
    }
    if (k > n) return 0;
    p += k;
    n -= k;
  }
  return 1;
}

int qrpc_stub_unpack(const ProtobufCMessageDescriptor *desc,
                     const uint8_t *data, size_t len, ProtobufCMessage **out) {
  if (out != NULL) *out = NULL;
  if (desc == NULL || out == NULL || (data == NULL && len > 0))
    return QRPC_EINVAL;
  *out = protobuf_c_message_unpack(desc, NULL, len,
                                   data != NULL ? data : no_bytes);
  if (*out != NULL && !strings_whole(desc, data, len, 0)) {
    qrpc_stub_free(*out);
    *out = NULL;
  }
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
