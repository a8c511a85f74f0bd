/*
 * Fuzz target: snapshot deltas (dgram/delta.h), what a receiver applies to
 * its baselines and what a sender computes from two states.
 *
 * Input: one byte picks the keys (bits 0-1 the entity field, 0 for none;
 * bits 2-3 the key field, 1 to 3), one byte the limit apply is given (0:
 * none), two bytes (big endian) the length of the first part; the first
 * part and the rest are, for apply, the baseline and the delta, and for
 * diff, the two states.
 *
 * Properties: apply never reads outside its inputs, never leaks, and
 * fails only as delta.h says; when it succeeds, the keys the delta names
 * are ones base holds at most once, those it deletes ones base holds;
 * what it builds is within the limit, is what it builds without a limit,
 * and is itself a baseline an empty delta gives back. Whenever diff(a, b)
 * gives a delta, the delta is smaller than b and applying it to a gives b
 * exactly, within a limit of b's size and not within one byte less.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dgram/delta.h"
#include "fuzz.h"
#include "qrpc/error.h"
#include "util/pbwire.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

static const size_t limits[] = {SIZE_MAX, 0, 1, 7, 16, 64, 256, 4096};

/* An exactly sized copy, so ASan sees a read one byte too far. */
static uint8_t *copy(const uint8_t *p, size_t n) {
  uint8_t *c = malloc(n ? n : 1);
  FZ_CHECK(c != NULL);
  if (n) memcpy(c, p, n);
  return c;
}

static int same(const qrpci_delta_buf *b, const uint8_t *p, size_t n) {
  return b->len == n && (n == 0 || memcmp(b->data, p, n) == 0);
}

/* How many entities of msg have key. */
static size_t count_key(const qrpci_delta_keys *k, const uint8_t *msg,
                        size_t len, uint64_t key) {
  size_t n = 0;
  for (size_t i = 0; i < len;) {
    uint32_t f;
    unsigned wt;
    size_t body, m = qrpci_pb_field_next(msg + i, len - i, &f, &wt, &body);
    FZ_CHECK(m != 0);
    uint64_t v;
    if (f == k->entities && wt == QRPCI_PB_LEN &&
        qrpci_pb_field_varint(msg + i + body, m - body, k->key, &v) == 0 &&
        v == key)
      n++;
    i += m;
  }
  return n;
}

/* A delta that applied names only keys base holds at most once, and
 * deletes only keys base holds. */
static void check_named_keys(const qrpci_delta_keys *k, const uint8_t *base,
                             size_t blen, const uint8_t *d, size_t dlen) {
  for (size_t i = 0; i < dlen;) {
    uint64_t op, a, b, key;
    size_t n = qrpci_pb_varint(d + i, dlen - i, &op);
    FZ_CHECK(n != 0);
    i += n;
    FZ_CHECK((n = qrpci_pb_varint(d + i, dlen - i, &a)) != 0);
    i += n;
    if (op == 1) {
      FZ_CHECK((n = qrpci_pb_varint(d + i, dlen - i, &b)) != 0);
      i += n + (size_t)b;
    } else if (op == 2) {
      FZ_CHECK(k->entities != 0);
      FZ_CHECK(qrpci_pb_field_varint(d + i, (size_t)a, k->key, &key) == 0);
      FZ_CHECK(count_key(k, base, blen, key) <= 1);
      i += (size_t)a;
    } else {
      FZ_CHECK(op == 3 && k->entities != 0);
      FZ_CHECK(count_key(k, base, blen, a) == 1);
    }
  }
}

static void check_apply(const qrpci_delta_keys *k, const uint8_t *base,
                        size_t blen, const uint8_t *d, size_t dlen,
                        size_t max) {
  qrpci_delta_buf out = {0}, whole = {0}, again = {0};
  int rv = qrpci_delta_apply(k, base, blen, d, dlen, max, &out);
  FZ_CHECK(rv == 0 || rv == QRPC_EINVAL || rv == QRPC_EMSGSIZE);
  if (rv == 0) FZ_CHECK(out.len <= max);
  if (max != SIZE_MAX && rv != QRPC_EINVAL) {
    /* The limit decides only whether the result is taken. */
    int rw = qrpci_delta_apply(k, base, blen, d, dlen, SIZE_MAX, &whole);
    FZ_CHECK(rw == 0);
    if (rv == 0)
      FZ_CHECK(same(&whole, out.data, out.len));
    else
      FZ_CHECK(whole.len > max);
  }
  if (rv == 0) {
    check_named_keys(k, base, blen, d, dlen);
    uint8_t *o = copy(out.data, out.len);
    FZ_CHECK(qrpci_delta_apply(k, o, out.len, NULL, 0, out.len, &again) == 0);
    FZ_CHECK(same(&again, o, out.len));
    free(o);
  }
  qrpci_delta_buf_free(&out);
  qrpci_delta_buf_free(&whole);
  qrpci_delta_buf_free(&again);
}

static void check_diff(const qrpci_delta_keys *k, const uint8_t *a, size_t alen,
                       const uint8_t *b, size_t blen) {
  qrpci_delta_buf delta = {0}, out = {0};
  int rv = qrpci_delta_diff(k, a, alen, b, blen, &delta);
  FZ_CHECK(rv == 0 || rv == 1);
  if (rv == 0) {
    FZ_CHECK(delta.len < blen);
    uint8_t *d = copy(delta.data, delta.len);
    FZ_CHECK(qrpci_delta_apply(k, a, alen, d, delta.len, blen, &out) == 0);
    FZ_CHECK(same(&out, b, blen));
    FZ_CHECK(qrpci_delta_apply(k, a, alen, d, delta.len, blen - 1, &out) ==
             QRPC_EMSGSIZE);
    free(d);
  }
  qrpci_delta_buf_free(&delta);
  qrpci_delta_buf_free(&out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_input in = {data, size};
  uint8_t kb = fz_u8(&in);
  qrpci_delta_keys k = {kb & 3u, 1u + (kb >> 2 & 3u) % 3u};
  size_t max = limits[fz_u8(&in) % (sizeof(limits) / sizeof(limits[0]))];
  const uint8_t *p;
  size_t n1 = fz_take(&in, fz_u16(&in), &p);
  uint8_t *first = copy(p, n1);
  size_t n2 = fz_take(&in, in.len, &p);
  uint8_t *rest = copy(p, n2);

  check_apply(&k, first, n1, rest, n2, max);
  check_diff(&k, first, n1, rest, n2);

  free(first);
  free(rest);
  return 0;
}
