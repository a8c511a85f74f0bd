/*
 * Call metadata (docs/protocol.md, "Call metadata"): the key/value pairs
 * that HEADERS and TRAILERS frames carry after their MsgId. Pure functions
 * over byte slices: nothing is allocated, every length is checked, no byte
 * past the given length is read. Every function here is thread-safe.
 *
 * Wire layout of the pairs, repeated to the end of the frame:
 *
 *   Pair { Key Length (i), Key (..), Value Length (i), Value (..) }
 *
 * Keys are 1..QRPCI_MD_KEY_MAX bytes of lowercase ASCII letters, digits,
 * '-', '_' and '.'; values are any bytes, possibly none.
 */
#ifndef QRPCI_WIRE_METADATA_H
#define QRPCI_WIRE_METADATA_H

#include <stddef.h>
#include <stdint.h>

#define QRPCI_MD_KEY_MAX 255
/* Default of the per-call limit on the sum of key and value sizes. */
#define QRPCI_MD_DEFAULT_LIMIT (16u << 10)

/* Why a run of pairs is malformed; QRPCI_MD_OK when it is not. */
typedef enum qrpci_md_err {
  QRPCI_MD_OK = 0,
  QRPCI_MD_KEY_LEN_TRUNC, /* Key Length cut off */
  QRPCI_MD_KEY_LEN_BAD,   /* Key Length 0 or above QRPCI_MD_KEY_MAX */
  QRPCI_MD_KEY_PAST,      /* Key runs past the end */
  QRPCI_MD_KEY_CHAR,      /* a Key byte that is not allowed */
  QRPCI_MD_VALUE_LEN_TRUNC,
  QRPCI_MD_VALUE_PAST,
} qrpci_md_err;

/* One pair; pointers borrowed from the bytes it was read from. */
typedef struct qrpci_md_pair {
  const uint8_t *key;
  size_t key_len;
  const uint8_t *value;
  size_t value_len;
} qrpci_md_pair;

/* 1 if key[0..len) is a valid key. */
int qrpci_md_key_valid(const uint8_t *key, size_t len);

/* Checks that p[0..len) is a whole number of well-formed pairs. On success
 * returns QRPCI_MD_OK and sets *count (may be NULL) to the number of pairs
 * and *total (may be NULL) to the sum of their key and value sizes, the
 * figure the per-call limit applies to. */
qrpci_md_err qrpci_md_check(const uint8_t *p, size_t len, size_t *count,
                            size_t *total);

/* Reads the pair at the front of p[0..len) into *out and returns the bytes
 * it takes, or 0 if no well-formed pair starts there (len 0 included). */
size_t qrpci_md_next(const uint8_t *p, size_t len, qrpci_md_pair *out);

/* Encoded size of one pair, or 0 if the key is invalid or a size does not
 * fit a varint. */
size_t qrpci_md_pair_len(size_t key_len, size_t value_len);

/* Writes one pair at out, which has room for qrpci_md_pair_len() bytes,
 * and returns the bytes written (0 as qrpci_md_pair_len()). */
size_t qrpci_md_put(uint8_t *out, const uint8_t *key, size_t key_len,
                    const uint8_t *value, size_t value_len);

#endif
