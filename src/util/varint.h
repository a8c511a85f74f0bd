/*
 * QUIC variable-length integers (RFC 9000 section 16): 1, 2, 4 or 8 bytes,
 * the two high bits of the first byte give the length. Pure functions.
 */
#ifndef QRPCI_UTIL_VARINT_H
#define QRPCI_UTIL_VARINT_H

#include <stddef.h>
#include <stdint.h>

#define QRPCI_VARINT_MAX ((UINT64_C(1) << 62) - 1)
#define QRPCI_VARINT_MAXLEN 8

/* Bytes needed to encode v (v must be <= QRPCI_VARINT_MAX). */
size_t qrpci_varint_len(uint64_t v);

/* Writes v to out (which has room for qrpci_varint_len(v) bytes) in its
 * shortest form and returns the number of bytes written. */
size_t qrpci_varint_put(uint8_t *out, uint64_t v);

/* Reads one varint from p[0..len). Returns the bytes consumed (1..8), or 0
 * if len is too short to hold the whole varint. Never reads past len. */
size_t qrpci_varint_get(const uint8_t *p, size_t len, uint64_t *v);

#endif
