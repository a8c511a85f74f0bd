/*
 * The protobuf wire format read in place: base-128 varints, and the bytes
 * of one length-delimited field found without decoding the message. Pure.
 *
 * protobuf-c hands every string field over as a NUL-terminated copy, which
 * ends at the first NUL byte whatever length the wire gave the string, so
 * "a\0b" and "a" look the same once decoded. Code that must see a string
 * whole (a topic, a token) takes its bytes and length from the message as
 * it was received, with qrpci_pb_field_bytes().
 */
#ifndef QRPCI_UTIL_PBWIRE_H
#define QRPCI_UTIL_PBWIRE_H

#include <stddef.h>
#include <stdint.h>

/* The longest varint: 64 bits, 7 to a byte. */
#define QRPCI_PB_VARINT_MAXLEN 10

/* Wire types (the low 3 bits of a field's key). 3 and 4 are the groups of
 * proto2, which protobuf-c does not decode: they are not read here either. */
enum {
  QRPCI_PB_VARINT = 0,
  QRPCI_PB_I64 = 1,
  QRPCI_PB_LEN = 2,
  QRPCI_PB_I32 = 5,
};

/* Reads one varint from p[0..n) into *v. Returns the bytes it took
 * (1..QRPCI_PB_VARINT_MAXLEN), or 0 when p ends inside it or it runs past
 * QRPCI_PB_VARINT_MAXLEN bytes. Never reads past n. */
size_t qrpci_pb_varint(const uint8_t *p, size_t n, uint64_t *v);

/* Finds field number field, length-delimited (a string, bytes or an
 * embedded message), at the top level of the message msg[0..len), and
 * points *val at its value inside msg, *val_len bytes long. A decoder keeps
 * the last value of a field that is not repeated, so this gives the last
 * one; a message without the field gives 0 bytes (a non-NULL *val), the
 * value proto3 gives an absent string. msg may be NULL when len is 0.
 * Every field is walked on the way, so for a message a decoder accepted
 * the answer is the value that decoder kept. Returns 0 with *val and
 * *val_len set, or QRPC_EINVAL (leaving them alone) when msg cannot be
 * walked: a key, length or value cut short, a group or an unknown wire
 * type, or field itself not length-delimited. */
int qrpci_pb_field_bytes(const uint8_t *msg, size_t len, uint32_t field,
                         const uint8_t **val, size_t *val_len);

/* Finds field number field, a varint, at the top level of msg[0..len), as
 * qrpci_pb_field_bytes() finds a length-delimited one: the last value, or
 * 0 (proto3's default) when the message lacks the field. Returns 0 with
 * *val set, or QRPC_EINVAL when msg cannot be walked or the field is not
 * a varint. */
/* One field at the start of p[0..n): *field its number, *wt its wire
 * type, *body where its value's bytes start (past the key, and past the
 * length prefix of a length-delimited value). Returns the bytes the whole
 * field takes, key included, or 0 when it is cut short, its wire type is a
 * group or unknown, or its number is 0 or over 2^29 - 1. */
size_t qrpci_pb_field_next(const uint8_t *p, size_t n, uint32_t *field,
                           unsigned *wt, size_t *body);

int qrpci_pb_field_varint(const uint8_t *msg, size_t len, uint32_t field,
                          uint64_t *val);

#endif
