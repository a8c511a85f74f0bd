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
  const qrpc_msg *msg; /* is_msg == 1: packed on write, or msg->msg bytes */
  int is_msg;
  int taken; /* given bytes now belong to a stream's send buffer */
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
 * a message with a pack function, or a message of bytes. */
static inline int qrpci_payload_valid(const qrpci_payload *p) {
  if (!p->is_msg) return p->bytes || !p->len;
  return p->msg && (p->msg->pack || p->msg->msg || !p->msg->size);
}

/* The release function of bytes given away (qrpc_msg with pack NULL), or
 * NULL. Only for a valid payload. */
static inline void (*qrpci_payload_release(const qrpci_payload *p))(void *) {
  return p->is_msg && !p->msg->pack ? p->msg->release : NULL;
}

/* Ends a public _msg function: on success, bytes given away that no
 * stream took are given back now (they were copied). Returns rv. */
static inline int qrpci_payload_settle(const qrpci_payload *p, int rv) {
  void (*release)(void *) = rv == 0 && !p->taken && qrpci_payload_valid(p)
                                ? qrpci_payload_release(p)
                                : NULL;
  if (release) release(p->msg->owner);
  return rv;
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
