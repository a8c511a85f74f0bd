/*
 * Frames on RPC streams (docs/protocol.md section 3): decoding one frame body
 * and encoding whole frames or just their headers. Pure functions over byte
 * slices: nothing is allocated, every length is checked, no input byte past
 * the given length is ever read. Every function here is thread-safe.
 *
 * Wire layout, for reference:
 *
 *   Frame { Length (i), Type (8), Type-specific fields (..), Payload (..) }
 *
 * Length counts the bytes after itself. A "body" below is exactly those
 * Length bytes: Type, fields and payload, without the Length prefix. The
 * reassembler (wire/reassembler.h) cuts a stream into bodies; this module
 * gives them meaning.
 */
#ifndef QRPCI_WIRE_FRAME_H
#define QRPCI_WIRE_FRAME_H

#include <stddef.h>
#include <stdint.h>

#include "wire/protocol.h"

/* One frame, decoded or to be encoded. Only the fields of its type are
 * meaningful; the decoder sets the others to zero and the encoder ignores
 * them. The pointers are borrowed: after decoding they point into the body
 * that was decoded and stay valid only as long as it does. */
typedef struct qrpci_frame {
  uint8_t type;          /* QRPCI_FRAME_* */
  uint64_t msgid;        /* REQUEST, REPLY, ERROR, CANCEL, ITEM, END */
  uint64_t method;       /* REQUEST, NOTIFY */
  uint64_t timeout_ms;   /* REQUEST; 0 means no timeout */
  uint64_t status;       /* ERROR (never 0), END (0 means OK) */
  uint64_t last_msgid;   /* GOAWAY; 0 means no call will be answered */
  const uint8_t *detail; /* ERROR, END: UTF-8, not NUL-terminated */
  size_t detail_len;
  const uint8_t *payload; /* REQUEST, NOTIFY, REPLY, ITEM, ERROR, END */
  size_t payload_len;
} qrpci_frame;

/* Decodes one frame body: the len bytes that followed a Length field of
 * value len. On success fills *f (pointers into body) and returns 0.
 *
 * Returns QRPC_EPROTO for anything docs/protocol.md calls a protocol violation
 * that can be seen in one frame alone: an empty body (Length 0), an unknown
 * Type, a truncated field, MsgId 0, ERROR with status 0, a Detail Length
 * running past the frame, a Detail that is not UTF-8, or bytes left over
 * after CANCEL or GOAWAY. Rules that need call state (MsgId ordering, answers
 * to calls never made) belong to the RPC engine. On failure *f is
 * unspecified and, if why is not NULL, *why is set to a static reason phrase
 * naming the frame and the problem, e.g. "ERROR: status 0", suitable for the
 * connection close. */
int qrpci_frame_decode(const uint8_t *body, size_t len, qrpci_frame *f,
                       const char **why);

/* Returns the size of f fully encoded, Length prefix included, or 0 if f
 * cannot be sent: an unknown type, MsgId 0 where the type has one, ERROR
 * with status 0, a Detail that is not UTF-8, a payload on CANCEL or GOAWAY,
 * or a value too large for a varint. Whatever the encoder accepts, the
 * decoder accepts too. */
size_t qrpci_frame_encoded_len(const qrpci_frame *f);

/* Writes f as one complete frame into out[0..cap) and returns the bytes
 * written, or 0 if f cannot be sent (see qrpci_frame_encoded_len()) or cap
 * is smaller than its encoded size; nothing is written past cap. The payload
 * and detail are copied from f; out must not overlap them. */
size_t qrpci_frame_encode(uint8_t *out, size_t cap, const qrpci_frame *f);

/* The pack-in-place path: for the frame types that carry a payload after
 * plain varint fields (REQUEST, NOTIFY, REPLY, ITEM), the header is Length,
 * Type and those fields. A sender reserves header_len + payload_len bytes,
 * writes the header, then packs the protobuf message straight after it, so
 * the message is never copied.
 *
 * Arguments a type does not use are ignored (method and timeout_ms for REPLY
 * and ITEM, msgid and timeout_ms for NOTIFY). Both functions return 0 for
 * other types, for a frame that cannot be sent (MsgId 0, a value too large
 * for a varint) and, for qrpci_frame_encode_header(), when cap is smaller
 * than the header. cap bounds the header only: the payload goes after it. */
size_t qrpci_frame_header_len(uint8_t type, uint64_t msgid, uint64_t method,
                              uint64_t timeout_ms, size_t payload_len);
size_t qrpci_frame_encode_header(uint8_t *out, size_t cap, uint8_t type,
                                 uint64_t msgid, uint64_t method,
                                 uint64_t timeout_ms, size_t payload_len);

/* Returns the protocol name of a frame type ("REQUEST", ...) or "unknown"
 * for a value that is not one. Useful in logs and reason phrases. */
const char *qrpci_frame_type_name(uint8_t type);

#endif
