/*
 * Snapshot deltas (docs/protocol.md, "Snapshot channels"): the difference
 * between two encodings of one protobuf message, at the level of its
 * top-level fields, with the entities of one repeated message field keyed
 * by a varint field inside them. Pure: bytes in, bytes out.
 *
 * A delta is a sequence of records, each an Op and its operands, every
 * integer a protobuf varint:
 *   1 FIELD  Number, Length, bytes: every occurrence of top-level field
 *            Number in the new state, tagged as on the wire (Length 0:
 *            the field is gone);
 *   2 UPSERT Length, bytes: one entity's body (untagged); it replaces the
 *            baseline's entity of the same key in place, or, when the key
 *            is new, is appended after the baseline's entities;
 *   3 DELETE Key: the baseline's entity of that key is gone.
 * FIELD records come in ascending Number order. Applying a delta writes
 * the fields in ascending number order, each number's
 * occurrences in their order. The sender checks that applying the delta
 * gives exactly the new state and sends the full state otherwise, so a
 * receiver's reconstruction is byte for byte what the sender encoded.
 */
#ifndef QRPCI_DGRAM_DELTA_H
#define QRPCI_DGRAM_DELTA_H

#include <stddef.h>
#include <stdint.h>

/* How a message's entities are found: the number of the repeated message
 * field that holds them (0: the message has none, every field is compared
 * whole), and the number of the varint field inside an entity that keys
 * it (an entity without it has key 0, as proto3 encodes 0). */
typedef struct qrpci_delta_keys {
  uint32_t entities;
  uint32_t key;
} qrpci_delta_keys;

/* A growable byte buffer; zero-initialise it, free data when done. */
typedef struct qrpci_delta_buf {
  uint8_t *data;
  size_t len, cap;
} qrpci_delta_buf;

/* Writes into out (emptied first) the delta that turns base into cur.
 * Returns 0; 1 when cur is better sent whole: the delta is not smaller, a
 * message does not parse as the protobuf wire format, cur's fields are not
 * in ascending order, entities repeat a key or are not messages, or the
 * delta would not give cur back exactly; QRPC_ENOMEM. */
int qrpci_delta_diff(const qrpci_delta_keys *k, const uint8_t *base,
                     size_t blen, const uint8_t *cur, size_t clen,
                     qrpci_delta_buf *out);

/* Writes into out (emptied first) base with delta d applied, at most max
 * bytes. Returns 0; QRPC_EINVAL when base does not parse, or d is
 * malformed or does not apply to base (a record cut short, an unknown Op,
 * a field listed twice or whose bytes are not that field, an entity
 * without a key, a key upserted twice, a DELETE of a key base lacks, an
 * entity of base that is not a message with a key, a key the delta names
 * that base repeats); QRPC_EMSGSIZE when the result would
 * exceed max; QRPC_ENOMEM. */
int qrpci_delta_apply(const qrpci_delta_keys *k, const uint8_t *base,
                      size_t blen, const uint8_t *d, size_t dlen, size_t max,
                      qrpci_delta_buf *out);

void qrpci_delta_buf_free(qrpci_delta_buf *b);

#endif
