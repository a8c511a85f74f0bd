/*
 * Fuzz target: the frame decoder (wire/frame.h). The input is one frame
 * body, the bytes a Length field announced.
 *
 * Properties: the decoder never reads outside the body; an accepted frame
 * has only fields its type carries, points into the body, and has a Detail
 * that is UTF-8; whatever it accepts the encoder can send again, in at
 * most as many bytes, and decoding that gives the same frame; the
 * header-only encoder agrees with the full one; a refusal always names a
 * reason.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "qrpc/error.h"
#include "util/varint.h"
#include "wire/frame.h"
#include "wire/stream_header.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

static int inside(const uint8_t *p, size_t n, const uint8_t *body, size_t len) {
  if (n == 0) return 1;
  return p >= body && p <= body + len && n <= (size_t)(body + len - p);
}

static int carries_payload(uint8_t type) {
  return type != QRPCI_FRAME_CANCEL && type != QRPCI_FRAME_GOAWAY;
}

static void check_same(const qrpci_frame *a, const qrpci_frame *b) {
  FZ_CHECK(a->type == b->type);
  FZ_CHECK(a->msgid == b->msgid);
  FZ_CHECK(a->method == b->method);
  FZ_CHECK(a->timeout_ms == b->timeout_ms);
  FZ_CHECK(a->status == b->status);
  FZ_CHECK(a->last_msgid == b->last_msgid);
  FZ_CHECK(a->detail_len == b->detail_len);
  FZ_CHECK(a->payload_len == b->payload_len);
  FZ_CHECK(a->detail_len == 0 ||
           memcmp(a->detail, b->detail, a->detail_len) == 0);
  FZ_CHECK(a->payload_len == 0 ||
           memcmp(a->payload, b->payload, a->payload_len) == 0);
}

/* The pack-in-place path must write exactly the first bytes of the full
 * encoding for the types that have it. */
static void check_header_path(const qrpci_frame *f, const uint8_t *full,
                              size_t full_len) {
  uint8_t hdr[64];
  size_t hl = qrpci_frame_header_len(f->type, f->msgid, f->method,
                                     f->timeout_ms, f->payload_len);
  int plain = f->type == QRPCI_FRAME_REQUEST || f->type == QRPCI_FRAME_NOTIFY ||
              f->type == QRPCI_FRAME_REPLY || f->type == QRPCI_FRAME_ITEM;
  if (!plain) {
    FZ_CHECK(hl == 0);
    return;
  }
  FZ_CHECK(hl > 0 && hl <= sizeof(hdr));
  FZ_CHECK(hl + f->payload_len == full_len);
  FZ_CHECK(qrpci_frame_encode_header(hdr, hl - 1, f->type, f->msgid, f->method,
                                     f->timeout_ms, f->payload_len) == 0);
  FZ_CHECK(qrpci_frame_encode_header(hdr, sizeof(hdr), f->type, f->msgid,
                                     f->method, f->timeout_ms,
                                     f->payload_len) == hl);
  FZ_CHECK(memcmp(hdr, full, hl) == 0);
}

static void check_accepted(const qrpci_frame *f, const uint8_t *body,
                           size_t len) {
  FZ_CHECK(strcmp(qrpci_frame_type_name(f->type), "unknown") != 0);
  FZ_CHECK(inside(f->payload, f->payload_len, body, len));
  FZ_CHECK(inside(f->detail, f->detail_len, body, len));
  FZ_CHECK(qrpci_utf8_valid(f->detail, f->detail_len));
  if (!carries_payload(f->type)) FZ_CHECK(f->payload_len == 0);
  if (f->type != QRPCI_FRAME_NOTIFY && f->type != QRPCI_FRAME_GOAWAY)
    FZ_CHECK(f->msgid != 0);
  if (f->type == QRPCI_FRAME_ERROR) FZ_CHECK(f->status != 0);

  /* Senders use the shortest varints, so the frame can only shrink. */
  size_t n = qrpci_frame_encoded_len(f);
  FZ_CHECK(n > 0);
  FZ_CHECK(n <= len + qrpci_varint_len(len));
  uint8_t *out = malloc(n);
  FZ_CHECK(out != NULL);
  FZ_CHECK(qrpci_frame_encode(out, n - 1, f) == 0);
  FZ_CHECK(qrpci_frame_encode(out, n, f) == n);

  uint64_t blen;
  size_t vl = qrpci_varint_get(out, n, &blen);
  FZ_CHECK(vl > 0 && vl + blen == n);
  FZ_CHECK(blen <= len);
  qrpci_frame again;
  const char *why = NULL;
  FZ_CHECK(qrpci_frame_decode(out + vl, (size_t)blen, &again, &why) == 0);
  check_same(f, &again);
  check_header_path(f, out, n);
  free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  qrpci_frame f;
  const char *why = NULL;
  int rv = qrpci_frame_decode(data, size, &f, &why);
  if (rv == 0) {
    check_accepted(&f, data, size);
  } else {
    FZ_CHECK(rv == QRPC_EPROTO);
    FZ_CHECK(why != NULL && why[0] != '\0');
    /* The same refusal without a place for the reason. */
    FZ_CHECK(qrpci_frame_decode(data, size, &f, NULL) == QRPC_EPROTO);
  }
  return 0;
}
