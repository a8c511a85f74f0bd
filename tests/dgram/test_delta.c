/*
 * Snapshot deltas (dgram/delta.h), the pure layer under snapshot channels:
 * messages are written here in the protobuf wire format by hand, as
 *   World  { uint32 tick = 1; repeated Entity entities = 2; string name = 3; }
 *   Entity { uint32 id = 1; bytes data = 2; }
 * with the entities keyed by id. What a sender relies on: a delta is small
 * when little changed and always gives the new state back byte for byte,
 * and diff says "send it whole" whenever a delta cannot do that. What a
 * receiver relies on: a delta that is malformed or does not fit its
 * baseline is refused, never half applied.
 */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "dgram/delta.h"
#include "qrpc/error.h"

enum { F_TICK = 1, F_ENTITIES = 2, F_NAME = 3 };
enum { E_ID = 1, E_DATA = 2 };
enum { OP_FIELD = 1, OP_UPSERT = 2, OP_DELETE = 3 };
enum { WT_VARINT = 0, WT_LEN = 2 };

/* An entity's data length: with its key and tags, about 32 bytes. */
#define DATA_LEN 26

static const qrpci_delta_keys world_keys = {F_ENTITIES, E_ID};
static const qrpci_delta_keys no_entities = {0, E_ID};

typedef qrpci_delta_buf buf;

static void put(buf *b, const void *p, size_t n) {
  if (n > b->cap - b->len) {
    size_t cap = b->cap ? b->cap : 64;
    while (cap - b->len < n) cap *= 2;
    b->data = realloc(b->data, cap);
    ck_assert_ptr_nonnull(b->data);
    b->cap = cap;
  }
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void put_varint(buf *b, uint64_t v) {
  for (; v >= 0x80; v >>= 7) {
    uint8_t c = (uint8_t)(v | 0x80);
    put(b, &c, 1);
  }
  uint8_t c = (uint8_t)v;
  put(b, &c, 1);
}

static void put_uint(buf *b, uint32_t field, uint64_t v) {
  put_varint(b, (uint64_t)field << 3 | WT_VARINT);
  put_varint(b, v);
}

static void put_bytes(buf *b, uint32_t field, const void *p, size_t n) {
  put_varint(b, (uint64_t)field << 3 | WT_LEN);
  put_varint(b, n);
  put(b, p, n);
}

/* An entity: id 0 leaves the key field out, as proto3 encodes 0; salt
 * changes its data. */
typedef struct ent {
  uint32_t id;
  uint8_t salt;
} ent;

static void entity_body(buf *b, ent e) {
  uint8_t data[DATA_LEN];
  for (size_t i = 0; i < DATA_LEN; i++)
    data[i] = (uint8_t)(e.id * 31 + i + e.salt * 101);
  if (e.id) put_uint(b, E_ID, e.id);
  put_bytes(b, E_DATA, data, sizeof(data));
}

static void put_entity(buf *b, ent e) {
  buf body = {0};
  entity_body(&body, e);
  put_bytes(b, F_ENTITIES, body.data, body.len);
  qrpci_delta_buf_free(&body);
}

/* A World; tick 0 and name NULL leave those fields out. */
static void world(buf *b, uint64_t tick, const ent *e, size_t n,
                  const char *name) {
  b->len = 0;
  if (tick) put_uint(b, F_TICK, tick);
  for (size_t i = 0; i < n; i++) put_entity(b, e[i]);
  if (name) put_bytes(b, F_NAME, name, strlen(name));
}

static void rec_field(buf *d, uint32_t num, const void *p, size_t n) {
  put_varint(d, OP_FIELD);
  put_varint(d, num);
  put_varint(d, n);
  put(d, p, n);
}

static void rec_upsert(buf *d, ent e) {
  buf body = {0};
  entity_body(&body, e);
  put_varint(d, OP_UPSERT);
  put_varint(d, body.len);
  put(d, body.data, body.len);
  qrpci_delta_buf_free(&body);
}

static void rec_delete(buf *d, uint64_t key) {
  put_varint(d, OP_DELETE);
  put_varint(d, key);
}

/* Exactly sized heap copies, so a sanitizer build catches a read past the
 * end of an input. */
static uint8_t *copy(const uint8_t *p, size_t n) {
  uint8_t *c = malloc(n ? n : 1);
  ck_assert_ptr_nonnull(c);
  if (n) memcpy(c, p, n);
  return c;
}

static int diff(const qrpci_delta_keys *k, const uint8_t *base, size_t blen,
                const uint8_t *cur, size_t clen, buf *out) {
  uint8_t *b = copy(base, blen), *c = copy(cur, clen);
  int rv = qrpci_delta_diff(k, b, blen, c, clen, out);
  free(b);
  free(c);
  return rv;
}

static int apply(const qrpci_delta_keys *k, const uint8_t *base, size_t blen,
                 const uint8_t *d, size_t dlen, size_t max, buf *out) {
  uint8_t *b = copy(base, blen), *dc = copy(d, dlen);
  int rv = qrpci_delta_apply(k, b, blen, dc, dlen, max, out);
  free(b);
  free(dc);
  return rv;
}

static void assert_same(const buf *got, const buf *want) {
  ck_assert_uint_eq(got->len, want->len);
  ck_assert(want->len == 0 || memcmp(got->data, want->data, want->len) == 0);
}

/* diff gives a delta, and the delta turns base into cur exactly, with cur's
 * size as the limit. */
static void round_trip(const qrpci_delta_keys *k, const buf *base,
                       const buf *cur, buf *delta) {
  ck_assert_int_eq(diff(k, base->data, base->len, cur->data, cur->len, delta),
                   0);
  ck_assert_uint_lt(delta->len, cur->len);
  buf out = {0};
  ck_assert_int_eq(
      apply(k, base->data, base->len, delta->data, delta->len, cur->len, &out),
      0);
  assert_same(&out, cur);
  qrpci_delta_buf_free(&out);
}

static void free_all(buf *a, buf *b, buf *c, buf *d) {
  qrpci_delta_buf_free(a);
  qrpci_delta_buf_free(b);
  qrpci_delta_buf_free(c);
  qrpci_delta_buf_free(d);
}

START_TEST(test_large_world_few_changes) {
  enum { N = 1000 };
  static ent be[N], ce[N];
  for (size_t i = 0; i < N; i++) {
    be[i] = (ent){(uint32_t)i + 1, 0};
    ce[i] = be[i];
    if (i % 20 == 7) ce[i].salt = 1; /* 5% */
  }
  buf base = {0}, cur = {0}, delta = {0}, out = {0};
  world(&base, 100, be, N, "arena");
  world(&cur, 101, ce, N, "arena");
  round_trip(&world_keys, &base, &cur, &delta);
  ck_assert_uint_lt(delta.len * 10, cur.len);
  free_all(&base, &cur, &delta, &out);
}
END_TEST

START_TEST(test_entities_added_removed_changed) {
  const ent be[] = {{1, 0}, {2, 0}, {3, 0}, {4, 0}, {5, 0}, {6, 0}};
  buf base = {0}, cur = {0}, delta = {0}, out = {0};
  world(&base, 7, be, 6, "w");

  /* Appended at the end, as a new key always is. */
  const ent added[] = {{1, 0}, {2, 0}, {3, 0},  {4, 0},
                       {5, 0}, {6, 0}, {40, 0}, {9, 0}};
  world(&cur, 7, added, 8, "w");
  round_trip(&world_keys, &base, &cur, &delta);

  const ent removed[] = {{1, 0}, {3, 0}, {4, 0}, {6, 0}};
  world(&cur, 7, removed, 4, "w");
  round_trip(&world_keys, &base, &cur, &delta);

  const ent changed[] = {{1, 0}, {2, 3}, {3, 0}, {4, 0}, {5, 0}, {6, 9}};
  world(&cur, 7, changed, 6, "w");
  round_trip(&world_keys, &base, &cur, &delta);
  /* Two upserts, not the whole entity list. */
  ck_assert_uint_lt(delta.len, 3 * (DATA_LEN + 8));

  /* All three at once, with the scalar changed too. */
  const ent mixed[] = {{2, 0}, {3, 5}, {5, 0}, {6, 0}, {77, 1}};
  world(&cur, 8, mixed, 5, "w");
  round_trip(&world_keys, &base, &cur, &delta);

  /* Every entity gone: the field disappears from the message. Six
   * DELETEs cost more than a short name, so this one is long. */
  const char *name = "a name long enough to be worth a delta";
  world(&base, 7, be, 6, name);
  world(&cur, 7, NULL, 0, name);
  round_trip(&world_keys, &base, &cur, &delta);
  free_all(&base, &cur, &delta, &out);
}
END_TEST

START_TEST(test_scalar_fields) {
  const ent e[] = {{1, 0}, {2, 0}, {3, 0}, {4, 0}};
  buf base = {0}, cur = {0}, delta = {0}, out = {0};
  world(&base, 7, e, 4, "the-name");

  world(&cur, 300, e, 4, "the-name"); /* changed */
  round_trip(&world_keys, &base, &cur, &delta);
  world(&cur, 0, e, 4, "the-name"); /* removed */
  round_trip(&world_keys, &base, &cur, &delta);
  world(&cur, 7, e, 4, NULL); /* removed, after the entities */
  round_trip(&world_keys, &base, &cur, &delta);
  world(&cur, 7, e, 4, "another-name"); /* changed */
  round_trip(&world_keys, &base, &cur, &delta);

  /* Added, from a baseline without them. */
  world(&base, 0, e, 4, NULL);
  world(&cur, 9, e, 4, "n");
  round_trip(&world_keys, &base, &cur, &delta);

  /* A field repeated outside the entities goes whole, every occurrence
   * in its order. */
  world(&base, 7, e, 4, "n");
  cur.len = 0;
  put_uint(&cur, F_TICK, 7);
  for (size_t i = 0; i < 4; i++) put_entity(&cur, e[i]);
  put_bytes(&cur, F_NAME, "b", 1);
  put_bytes(&cur, F_NAME, "a", 1);
  round_trip(&world_keys, &base, &cur, &delta);
  free_all(&base, &cur, &delta, &out);
}
END_TEST

/* A delta written by hand, to pin the format of delta.h: FIELD replaces
 * every occurrence of its field, UPSERT replaces in place or appends after
 * the baseline's entities, DELETE drops. */
START_TEST(test_apply_hand_written) {
  const ent be[] = {{1, 0}, {2, 0}, {3, 0}};
  buf base = {0}, d = {0}, want = {0}, out = {0};
  world(&base, 1, be, 3, "w");

  buf tick = {0};
  put_uint(&tick, F_TICK, 5);
  rec_field(&d, F_TICK, tick.data, tick.len);
  rec_upsert(&d, (ent){9, 0});
  rec_upsert(&d, (ent){2, 4});
  rec_delete(&d, 1);
  rec_field(&d, F_NAME, NULL, 0);
  const ent we[] = {{2, 4}, {3, 0}, {9, 0}};
  world(&want, 5, we, 3, NULL);
  ck_assert_int_eq(
      apply(&world_keys, base.data, base.len, d.data, d.len, SIZE_MAX, &out),
      0);
  assert_same(&out, &want);

  /* out is emptied first: applying again gives the same, not twice. */
  ck_assert_int_eq(
      apply(&world_keys, base.data, base.len, d.data, d.len, SIZE_MAX, &out),
      0);
  assert_same(&out, &want);
  qrpci_delta_buf_free(&tick);
  free_all(&base, &d, &want, &out);
}
END_TEST

/* cur has the same entities in another order: a delta cannot say so. */
START_TEST(test_diff_send_whole_on_reorder) {
  const ent be[] = {{1, 0}, {2, 0}, {3, 0}, {4, 0}, {5, 0}};
  const ent ce[] = {{1, 0}, {3, 0}, {2, 0}, {4, 0}, {5, 0}};
  buf base = {0}, cur = {0}, delta = {0}, out = {0};
  world(&base, 7, be, 5, "w");
  world(&cur, 7, ce, 5, "w");
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, cur.data, cur.len, &delta), 1);
  /* Moved and changed. */
  const ent ce2[] = {{5, 1}, {1, 0}, {2, 0}, {3, 0}, {4, 0}};
  world(&cur, 7, ce2, 5, "w");
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, cur.data, cur.len, &delta), 1);
  /* Deleting one and appending it again under the same key is a move. */
  const ent ce3[] = {{2, 0}, {3, 0}, {4, 0}, {5, 0}, {1, 0}};
  world(&cur, 7, ce3, 5, "w");
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, cur.data, cur.len, &delta), 1);
  free_all(&base, &cur, &delta, &out);
}
END_TEST

START_TEST(test_diff_send_whole_on_repeated_keys) {
  const ent ok[] = {{1, 0}, {2, 0}, {3, 0}, {4, 0}, {5, 0}};
  const ent dup[] = {{1, 0}, {2, 0}, {3, 0}, {2, 1}, {5, 0}};
  buf base = {0}, cur = {0}, delta = {0}, out = {0};
  world(&base, 7, ok, 5, "w");
  world(&cur, 8, dup, 5, "w");
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, cur.data, cur.len, &delta), 1);
  /* In the baseline. */
  ck_assert_int_eq(
      diff(&world_keys, cur.data, cur.len, base.data, base.len, &delta), 1);
  /* Two entities without a key both have key 0. */
  const ent zeros[] = {{0, 0}, {2, 0}, {3, 0}, {4, 0}, {0, 1}};
  world(&cur, 7, zeros, 5, "w");
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, cur.data, cur.len, &delta), 1);
  free_all(&base, &cur, &delta, &out);
}
END_TEST

START_TEST(test_diff_send_whole_when_unparsable) {
  const ent e[] = {{1, 0}, {2, 0}, {3, 0}, {4, 0}};
  const ent e2[] = {{1, 0}, {2, 1}, {3, 0}, {4, 0}};
  buf base = {0}, cur = {0}, delta = {0}, bad = {0};
  world(&base, 7, e, 4, "w");
  world(&cur, 7, e2, 4, "w");
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, cur.data, cur.len, &delta), 0);

  /* Cut short, in cur and in the baseline. */
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, cur.data, cur.len - 1, &delta), 1);
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len - 1, cur.data, cur.len, &delta), 1);
  /* A group (wire type 3), which the format does not read. */
  put(&bad, cur.data, cur.len);
  put_varint(&bad, 4 << 3 | 3);
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, bad.data, bad.len, &delta), 1);
  /* Fields out of order: name before tick. */
  bad.len = 0;
  put_bytes(&bad, F_NAME, "w", 1);
  put(&bad, cur.data, cur.len - 3);
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, bad.data, bad.len, &delta), 1);
  /* An entity that is not a message. */
  bad.len = 0;
  put(&bad, cur.data, cur.len - 3);
  put_uint(&bad, F_ENTITIES, 5);
  put_bytes(&bad, F_NAME, "w", 1);
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, bad.data, bad.len, &delta), 1);
  /* An entity whose key is not a varint. */
  bad.len = 0;
  put(&bad, cur.data, cur.len - 3);
  put_bytes(&bad, F_ENTITIES, "\x0a\x01x", 3);
  put_bytes(&bad, F_NAME, "w", 1);
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, bad.data, bad.len, &delta), 1);
  free_all(&base, &cur, &delta, &bad);
}
END_TEST

START_TEST(test_diff_send_whole_when_nothing_gained) {
  buf base = {0}, cur = {0}, delta = {0}, out = {0};
  world(&base, 1, NULL, 0, "a");
  world(&cur, 2, NULL, 0, "a");
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, cur.data, cur.len, &delta), 1);
  /* Everything changed. */
  const ent be[] = {{1, 0}, {2, 0}};
  const ent ce[] = {{3, 0}, {4, 0}};
  world(&base, 1, be, 2, "a");
  world(&cur, 2, ce, 2, "b");
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, cur.data, cur.len, &delta), 1);
  /* An empty cur has nothing to gain. */
  ck_assert_int_eq(diff(&world_keys, base.data, base.len, NULL, 0, &delta), 1);
  free_all(&base, &cur, &delta, &out);
}
END_TEST

typedef struct bad_delta {
  const char *why;
  uint8_t b[16];
  size_t n;
} bad_delta;

START_TEST(test_apply_rejects_malformed) {
  static const bad_delta cases[] = {
      {"op alone", {OP_FIELD}, 1},
      {"FIELD without length", {OP_FIELD, 1}, 2},
      {"FIELD bytes cut", {OP_FIELD, 1, 3, 0x08, 0x05}, 5},
      {"UPSERT body cut", {OP_UPSERT, 5, 0x08, 0x01}, 4},
      {"DELETE without key", {OP_DELETE}, 1},
      {"op varint cut", {0x81}, 1},
      {"operand varint cut", {OP_DELETE, 0x81}, 2},
      {"unknown op 4", {4, 1}, 2},
      {"unknown op 0", {0, 1}, 2},
      {"FIELD out of order", {OP_FIELD, 3, 0, OP_FIELD, 1, 2, 0x08, 0x05}, 8},
      {"FIELD repeated",
       {OP_FIELD, 1, 2, 0x08, 0x05, OP_FIELD, 1, 2, 0x08, 0x06},
       10},
      {"FIELD bytes of another field", {OP_FIELD, 1, 2, 0x18, 0x01}, 5},
      {"FIELD bytes partly another field",
       {OP_FIELD, 1, 4, 0x08, 0x01, 0x18, 0x01},
       7},
      {"FIELD bytes that do not parse", {OP_FIELD, 1, 1, 0x08}, 4},
      {"FIELD number 0", {OP_FIELD, 0, 0}, 3},
      {"FIELD of the entities", {OP_FIELD, F_ENTITIES, 0}, 3},
      {"UPSERT key not a varint", {OP_UPSERT, 3, 0x0a, 0x01, 'x'}, 5},
      {"UPSERT body cut inside", {OP_UPSERT, 1, 0x08}, 3},
      {"UPSERT key twice",
       {OP_UPSERT, 2, 0x08, 0x09, OP_UPSERT, 2, 0x08, 0x09},
       8},
      {"UPSERT keys 0 twice", {OP_UPSERT, 0, OP_UPSERT, 2, 0x08, 0x00}, 6},
      {"DELETE of a key base lacks", {OP_DELETE, 9}, 2},
      {"DELETE twice", {OP_DELETE, 1, OP_DELETE, 1}, 4},
      {"DELETE then UPSERT", {OP_DELETE, 1, OP_UPSERT, 2, 0x08, 0x01}, 6},
      {"UPSERT then DELETE", {OP_UPSERT, 2, 0x08, 0x01, OP_DELETE, 1}, 6},
      {"DELETE of the largest key",
       {OP_DELETE, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
       11},
  };
  const ent be[] = {{1, 0}, {2, 0}, {3, 0}};
  buf base = {0}, out = {0};
  world(&base, 1, be, 3, "w");
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    int rv = apply(&world_keys, base.data, base.len, cases[i].b, cases[i].n,
                   SIZE_MAX, &out);
    ck_assert_msg(rv == QRPC_EINVAL, "%s: %d", cases[i].why, rv);
  }
  /* A valid prefix does not make a bad record acceptable. */
  buf d = {0};
  rec_upsert(&d, (ent){2, 1});
  put_varint(&d, 7);
  ck_assert_int_eq(
      apply(&world_keys, base.data, base.len, d.data, d.len, SIZE_MAX, &out),
      QRPC_EINVAL);
  qrpci_delta_buf_free(&d);
  qrpci_delta_buf_free(&base);
  qrpci_delta_buf_free(&out);
}
END_TEST

START_TEST(test_apply_rejects_bad_base) {
  const ent e[] = {{1, 0}, {2, 0}, {3, 0}};
  const ent dup[] = {{1, 0}, {2, 0}, {1, 1}};
  buf base = {0}, d = {0}, out = {0}, tick = {0};
  put_uint(&tick, F_TICK, 2);
  rec_field(&d, F_TICK, tick.data, tick.len);

  world(&base, 1, e, 3, "w");
  ck_assert_int_eq(apply(&world_keys, base.data, base.len - 1, d.data, d.len,
                         SIZE_MAX, &out),
                   QRPC_EINVAL);
  ck_assert_int_eq(
      apply(&world_keys, base.data, base.len - 1, NULL, 0, SIZE_MAX, &out),
      QRPC_EINVAL);
  /* Fields out of order. */
  buf bad = {0};
  put_bytes(&bad, F_NAME, "w", 1);
  put(&bad, base.data, base.len - 3);
  ck_assert_int_eq(
      apply(&world_keys, bad.data, bad.len, d.data, d.len, SIZE_MAX, &out),
      QRPC_EINVAL);
  /* Entities that repeat a key: a delta may not name that key, whatever
   * it does with the others. */
  world(&base, 1, dup, 3, "w");
  buf want = {0};
  world(&want, 2, dup, 3, "w");
  ck_assert_int_eq(
      apply(&world_keys, base.data, base.len, d.data, d.len, SIZE_MAX, &out),
      0);
  assert_same(&out, &want);
  ck_assert_int_eq(
      apply(&world_keys, base.data, base.len, NULL, 0, SIZE_MAX, &out), 0);
  assert_same(&out, &base);
  buf named = {0};
  rec_upsert(&named, (ent){1, 7});
  ck_assert_int_eq(apply(&world_keys, base.data, base.len, named.data,
                         named.len, SIZE_MAX, &out),
                   QRPC_EINVAL);
  named.len = 0;
  rec_delete(&named, 1);
  ck_assert_int_eq(apply(&world_keys, base.data, base.len, named.data,
                         named.len, SIZE_MAX, &out),
                   QRPC_EINVAL);
  /* Two entities deleted for one DELETE must not stand in for a DELETE of
   * a key base lacks. */
  rec_delete(&named, 9);
  ck_assert_int_eq(apply(&world_keys, base.data, base.len, named.data,
                         named.len, SIZE_MAX, &out),
                   QRPC_EINVAL);
  qrpci_delta_buf_free(&named);
  qrpci_delta_buf_free(&want);
  /* An entity that is not a message. */
  bad.len = 0;
  put_uint(&bad, F_TICK, 1);
  put_uint(&bad, F_ENTITIES, 1);
  ck_assert_int_eq(
      apply(&world_keys, bad.data, bad.len, d.data, d.len, SIZE_MAX, &out),
      QRPC_EINVAL);
  free_all(&base, &d, &out, &tick);
  qrpci_delta_buf_free(&bad);
}
END_TEST

START_TEST(test_apply_max) {
  const ent be[] = {{1, 0}, {2, 0}, {3, 0}};
  const ent ce[] = {{1, 0}, {2, 0}, {3, 0}, {4, 0}};
  buf base = {0}, cur = {0}, delta = {0}, out = {0};
  world(&base, 1, be, 3, "w");
  world(&cur, 1, ce, 4, "w");
  round_trip(&world_keys, &base, &cur, &delta);
  ck_assert_int_eq(apply(&world_keys, base.data, base.len, delta.data,
                         delta.len, cur.len - 1, &out),
                   QRPC_EMSGSIZE);
  ck_assert_int_eq(apply(&world_keys, base.data, base.len, delta.data,
                         delta.len, cur.len, &out),
                   0);
  assert_same(&out, &cur);
  /* An empty delta is held to the limit too. */
  ck_assert_int_eq(
      apply(&world_keys, base.data, base.len, NULL, 0, base.len - 1, &out),
      QRPC_EMSGSIZE);
  free_all(&base, &cur, &delta, &out);
}
END_TEST

START_TEST(test_without_entities) {
  const ent be[] = {{1, 0}, {2, 0}, {3, 0}};
  const ent ce[] = {{1, 0}, {2, 1}, {3, 0}};
  const char *name = "a name long enough to be worth a delta";
  buf base = {0}, cur = {0}, delta = {0}, out = {0};
  world(&base, 1, be, 3, name);
  world(&cur, 2, ce, 3, name);
  round_trip(&no_entities, &base, &cur, &delta);
  /* The entity field went whole, unchanged entities and all. */
  ck_assert_uint_gt(delta.len, 3 * (DATA_LEN + 4));

  /* Compared whole, a new order is just a new value. */
  const ent moved[] = {{3, 0}, {1, 0}, {2, 0}};
  world(&cur, 1, moved, 3, name);
  round_trip(&no_entities, &base, &cur, &delta);
  /* Repeated keys mean nothing either. */
  const ent dup[] = {{1, 0}, {1, 0}, {2, 0}};
  world(&cur, 1, dup, 3, name);
  round_trip(&no_entities, &base, &cur, &delta);

  /* A FIELD of the entity field applies; entity records do not. */
  buf d = {0}, field = {0};
  put_entity(&field, (ent){8, 0});
  rec_field(&d, F_ENTITIES, field.data, field.len);
  const ent we[] = {{8, 0}};
  world(&cur, 1, we, 1, name);
  ck_assert_int_eq(
      apply(&no_entities, base.data, base.len, d.data, d.len, SIZE_MAX, &out),
      0);
  assert_same(&out, &cur);
  d.len = 0;
  rec_upsert(&d, (ent){2, 1});
  ck_assert_int_eq(
      apply(&no_entities, base.data, base.len, d.data, d.len, SIZE_MAX, &out),
      QRPC_EINVAL);
  d.len = 0;
  rec_delete(&d, 2);
  ck_assert_int_eq(
      apply(&no_entities, base.data, base.len, d.data, d.len, SIZE_MAX, &out),
      QRPC_EINVAL);
  qrpci_delta_buf_free(&d);
  qrpci_delta_buf_free(&field);
  free_all(&base, &cur, &delta, &out);
}
END_TEST

START_TEST(test_empty_delta) {
  const ent e[] = {{1, 0}, {2, 0}, {3, 0}};
  buf base = {0}, delta = {0}, out = {0}, unused = {0};
  world(&base, 1, e, 3, "w");
  ck_assert_int_eq(
      apply(&world_keys, base.data, base.len, NULL, 0, base.len, &out), 0);
  assert_same(&out, &base);
  ck_assert_int_eq(
      apply(&no_entities, base.data, base.len, NULL, 0, base.len, &out), 0);
  assert_same(&out, &base);
  /* Nothing changed: the delta is empty. */
  ck_assert_int_eq(
      diff(&world_keys, base.data, base.len, base.data, base.len, &delta), 0);
  ck_assert_uint_eq(delta.len, 0);
  /* An empty baseline. */
  ck_assert_int_eq(apply(&world_keys, NULL, 0, NULL, 0, 0, &out), 0);
  ck_assert_uint_eq(out.len, 0);
  free_all(&base, &delta, &out, &unused);
}
END_TEST

/* proto3 leaves a key of 0 out: such an entity has key 0, like one that
 * writes 0. */
START_TEST(test_key_zero) {
  const ent be[] = {{0, 0}, {1, 0}, {2, 0}, {3, 0}};
  const ent ce[] = {{0, 2}, {1, 0}, {2, 0}, {3, 0}};
  buf base = {0}, cur = {0}, delta = {0}, out = {0};
  world(&base, 1, be, 4, "w");
  world(&cur, 1, ce, 4, "w");
  round_trip(&world_keys, &base, &cur, &delta);
  /* Removed; and added (at the end, as every new key is) to a baseline
   * without it. */
  world(&cur, 1, be + 1, 3, "w");
  round_trip(&world_keys, &base, &cur, &delta);
  buf added = {0};
  const ent ae[] = {{1, 0}, {2, 0}, {3, 0}, {0, 0}};
  world(&added, 1, ae, 4, "w");
  round_trip(&world_keys, &cur, &added, &delta);
  qrpci_delta_buf_free(&added);

  /* DELETE 0 drops the entity without a key. */
  buf d = {0};
  rec_delete(&d, 0);
  ck_assert_int_eq(
      apply(&world_keys, base.data, base.len, d.data, d.len, SIZE_MAX, &out),
      0);
  assert_same(&out, &cur);

  /* An explicit 0 replaces it in place. */
  buf body = {0}, want = {0};
  put_uint(&body, E_ID, 0);
  put_bytes(&body, E_DATA, "z", 1);
  d.len = 0;
  put_varint(&d, OP_UPSERT);
  put_varint(&d, body.len);
  put(&d, body.data, body.len);
  put_uint(&want, F_TICK, 1);
  put_bytes(&want, F_ENTITIES, body.data, body.len);
  for (size_t i = 1; i < 4; i++) put_entity(&want, be[i]);
  put_bytes(&want, F_NAME, "w", 1);
  ck_assert_int_eq(
      apply(&world_keys, base.data, base.len, d.data, d.len, SIZE_MAX, &out),
      0);
  assert_same(&out, &want);
  qrpci_delta_buf_free(&d);
  qrpci_delta_buf_free(&body);
  qrpci_delta_buf_free(&want);
  free_all(&base, &cur, &delta, &out);
}
END_TEST

/* The key is whichever varint field the keys name, anywhere in the
 * entity. */
START_TEST(test_other_key_field) {
  const qrpci_delta_keys k = {F_ENTITIES, 3};
  buf base = {0}, cur = {0}, delta = {0}, out = {0};
  for (int pass = 0; pass < 2; pass++) {
    buf *m = pass ? &cur : &base;
    put_uint(m, F_TICK, 1);
    for (uint32_t id = 1; id <= 5; id++) {
      buf body = {0};
      uint8_t data[DATA_LEN];
      memset(data, (int)(id + (pass && id == 4 ? 50 : 0)), sizeof(data));
      put_bytes(&body, E_DATA, data, sizeof(data));
      put_uint(&body, 3, id * 1000);
      put_bytes(m, F_ENTITIES, body.data, body.len);
      qrpci_delta_buf_free(&body);
    }
  }
  round_trip(&k, &base, &cur, &delta);
  /* One entity's worth. */
  ck_assert_uint_lt(delta.len, 2 * (DATA_LEN + 8));
  free_all(&base, &cur, &delta, &out);
}
END_TEST

static Suite *delta_suite(void) {
  Suite *s = suite_create("delta");
  TCase *tc = tcase_create("diff");
  tcase_add_test(tc, test_large_world_few_changes);
  tcase_add_test(tc, test_entities_added_removed_changed);
  tcase_add_test(tc, test_scalar_fields);
  tcase_add_test(tc, test_diff_send_whole_on_reorder);
  tcase_add_test(tc, test_diff_send_whole_on_repeated_keys);
  tcase_add_test(tc, test_diff_send_whole_when_unparsable);
  tcase_add_test(tc, test_diff_send_whole_when_nothing_gained);
  suite_add_tcase(s, tc);
  tc = tcase_create("apply");
  tcase_add_test(tc, test_apply_hand_written);
  tcase_add_test(tc, test_apply_rejects_malformed);
  tcase_add_test(tc, test_apply_rejects_bad_base);
  tcase_add_test(tc, test_apply_max);
  suite_add_tcase(s, tc);
  tc = tcase_create("keys");
  tcase_add_test(tc, test_without_entities);
  tcase_add_test(tc, test_empty_delta);
  tcase_add_test(tc, test_key_zero);
  tcase_add_test(tc, test_other_key_field);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(delta_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
