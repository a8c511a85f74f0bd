/*
 * A message payload as the layers above the transport pass it down: bytes
 * to copy, or a protobuf-c message packed straight into send memory. Pure;
 * no allocation.
 *
 * A public function builds one with qrpci_bytes() or qrpci_msg() and hands
 * it on by value; the function that finally writes it checks it once with
 * qrpci_payload_valid(), so every bytes/_msg pair of the API shares one
 * body and one argument check.
 */
#ifndef QRPCI_WIRE_PAYLOAD_H
#define QRPCI_WIRE_PAYLOAD_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/rpc.h"

typedef struct qrpci_payload {
  const void *bytes; /* is_msg == 0: len bytes, NULL only when len == 0 */
  size_t len;
  const qrpc_msg *msg; /* is_msg == 1: packed on write */
  int is_msg;
} qrpci_payload;

static inline qrpci_payload qrpci_bytes(const void *bytes, size_t len) {
  qrpci_payload p = {.bytes = bytes, .len = len};
  return p;
}

static inline qrpci_payload qrpci_msg(const qrpc_msg *m) {
  qrpci_payload p = {.msg = m, .is_msg = 1};
  return p;
}

/* 1 if the payload can be written: bytes with a pointer (or none at all),
 * or a message with a pack function. */
static inline int qrpci_payload_valid(const qrpci_payload *p) {
  return p->is_msg ? p->msg && p->msg->pack : p->bytes || !p->len;
}

/* Bytes the payload takes on the wire. Only for a valid payload. */
static inline size_t qrpci_payload_len(const qrpci_payload *p) {
  return p->is_msg ? p->msg->size : p->len;
}

/* Writes a valid payload to out, which has qrpci_payload_len() bytes.
 * Errors: QRPC_EINVAL when a pack function wrote another size than the
 * message declared. */
int qrpci_payload_write(const qrpci_payload *p, uint8_t *out);

#endif
