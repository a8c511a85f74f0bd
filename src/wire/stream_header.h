/*
 * The header every qrpc bidirectional stream starts with (docs/protocol.md
 * section 2): a kind byte, and for RAW streams a varint name length and the
 * name. Pure functions over byte slices; nothing is allocated.
 */
#ifndef QRPCI_WIRE_STREAM_HEADER_H
#define QRPCI_WIRE_STREAM_HEADER_H

#include <stddef.h>
#include <stdint.h>

#include "wire/protocol.h"
#include "util/varint.h"

/* The longest header: kind, a 2-byte length, a 255-byte name. */
#define QRPCI_STREAM_HEADER_MAX (1 + 2 + QRPCI_RAW_NAME_MAX)

typedef struct qrpci_stream_header {
  uint8_t kind;
  const uint8_t *name; /* RAW only; points into the decoded input */
  size_t name_len;
} qrpci_stream_header;

/* Result of qrpci_stream_header_decode(). */
typedef enum qrpci_hdr_result {
  QRPCI_HDR_OK = 0,         /* *h and *consumed are set */
  QRPCI_HDR_NEED_MORE = 1,  /* the input ends inside the header */
  QRPCI_HDR_UNKNOWN_KIND = 2, /* h->kind is set; no other field */
  QRPCI_HDR_BAD_NAME = 3,   /* RAW name length out of 1..255 or not UTF-8 */
} qrpci_hdr_result;

qrpci_hdr_result qrpci_stream_header_decode(const uint8_t *p, size_t len,
                                            qrpci_stream_header *h,
                                            size_t *consumed);

/* Writes a RAW header for name into out (QRPCI_STREAM_HEADER_MAX bytes of
 * room) and returns its length, or 0 if name is not 1..255 bytes of UTF-8. */
size_t qrpci_stream_header_encode_raw(uint8_t *out, const char *name,
                                      size_t name_len);

/* Returns 1 if p[0..len) is well-formed UTF-8. */
int qrpci_utf8_valid(const uint8_t *p, size_t len);

#endif
