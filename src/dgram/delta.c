/*
 * Snapshot deltas: top-level fields compared whole, entities matched by
 * key (src/dgram/delta.h has the format).
 */
#include "dgram/delta.h"

#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "util/pbwire.h"
#include "util/u64map.h"

enum { OP_FIELD = 1, OP_UPSERT = 2, OP_DELETE = 3 };

/* One top-level field: msg[off, off + len), its value's bytes from
 * off + body. */
typedef struct span {
  uint32_t field;
  unsigned wt;
  size_t off, len, body;
} span;

typedef struct fields {
  span *f;
  size_t n;
} fields;

/* An entity of the new state: its key and body. */
typedef struct entity {
  uint64_t key;
  const uint8_t *body;
  size_t len;
  size_t used; /* apply: its base entity took it */
} entity;

void qrpci_delta_buf_free(qrpci_delta_buf *b) {
  free(b->data);
  memset(b, 0, sizeof(*b));
}

static int reserve(qrpci_delta_buf *b, size_t more) {
  if (more <= b->cap - b->len) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap - b->len < more) {
    if (cap > SIZE_MAX / 2) return QRPC_ENOMEM;
    cap *= 2;
  }
  uint8_t *d = realloc(b->data, cap);
  if (!d) return QRPC_ENOMEM;
  b->data = d;
  b->cap = cap;
  return 0;
}

static int put(qrpci_delta_buf *b, const void *p, size_t n) {
  if (reserve(b, n) != 0) return QRPC_ENOMEM;
  if (n) memcpy(b->data + b->len, p, n);
  b->len += n;
  return 0;
}

static int put_varint(qrpci_delta_buf *b, uint64_t v) {
  uint8_t tmp[QRPCI_PB_VARINT_MAXLEN];
  size_t n = 0;
  do {
    tmp[n] = (uint8_t)(v & 0x7f);
    v >>= 7;
    if (v) tmp[n] |= 0x80;
    n++;
  } while (v);
  return put(b, tmp, n);
}

/* Splits msg into its top-level fields. Returns 0, 1 when it does not
 * parse or its fields are not in ascending number order, QRPC_ENOMEM. */
static int parse(const uint8_t *msg, size_t len, fields *out) {
  size_t n = 0;
  for (size_t i = 0; i < len;) {
    uint32_t f;
    unsigned wt;
    size_t body, k = qrpci_pb_field_next(msg + i, len - i, &f, &wt, &body);
    if (!k) return 1;
    i += k;
    n++;
  }
  out->n = 0;
  out->f = malloc((n ? n : 1) * sizeof(*out->f));
  if (!out->f) return QRPC_ENOMEM;
  for (size_t i = 0; i < len;) {
    span *s = &out->f[out->n];
    s->off = i;
    s->len = qrpci_pb_field_next(msg + i, len - i, &s->field, &s->wt, &s->body);
    if (out->n && s->field < out->f[out->n - 1].field) return 1;
    out->n++;
    i += s->len;
  }
  return 0;
}

/* The key of an entity body, as the map stores it (key + 1, so never 0).
 * Returns 0, or 1 when the body does not parse, its key is not a varint
 * or is the largest uint64_t. */
static int entity_key(const qrpci_delta_keys *k, const uint8_t *body,
                      size_t len, uint64_t *key) {
  uint64_t v;
  if (qrpci_pb_field_varint(body, len, k->key, &v) != 0 || v == UINT64_MAX)
    return 1;
  *key = v + 1;
  return 0;
}

/* Fills m with the keys of the entity spans [from, to) of base (key + 1 ->
 * index + 1). Returns 0, 1 on an entity that is not a message, has no
 * valid key or repeats one, QRPC_ENOMEM. */
static int index_entities(const qrpci_delta_keys *k, const uint8_t *msg,
                          const fields *fs, size_t from, size_t to,
                          qrpci_u64map *m) {
  for (size_t i = from; i < to; i++) {
    const span *s = &fs->f[i];
    uint64_t key = 0;
    if (s->wt != QRPCI_PB_LEN ||
        entity_key(k, msg + s->off + s->body, s->len - s->body, &key) != 0 ||
        qrpci_u64map_get(m, key))
      return 1;
    if (qrpci_u64map_put(m, key, (void *)(uintptr_t)(i + 1)) != 0)
      return QRPC_ENOMEM;
  }
  return 0;
}

/* The end of the run of fields numbered like fs->f[i]. */
static size_t run_end(const fields *fs, size_t i) {
  size_t j = i;
  while (j < fs->n && fs->f[j].field == fs->f[i].field) j++;
  return j;
}

/* The bytes of the fields [i, j) of msg, contiguous since fields come in
 * order. */
static size_t run_bytes(const fields *fs, size_t i, size_t j) {
  return i < j ? fs->f[j - 1].off + fs->f[j - 1].len - fs->f[i].off : 0;
}

/* Entity records for base's entities [bi, bj) against cur's [ci, cj).
 * Returns 0, 1 (send whole), QRPC_ENOMEM. */
static int diff_entities(const qrpci_delta_keys *k, const uint8_t *base,
                         const fields *pb, size_t bi, size_t bj,
                         const uint8_t *cur, const fields *pc, size_t ci,
                         size_t cj, qrpci_delta_buf *out) {
  qrpci_u64map bm, cm;
  qrpci_u64map_init(&bm);
  qrpci_u64map_init(&cm);
  int rv = index_entities(k, base, pb, bi, bj, &bm);
  if (rv == 0) rv = index_entities(k, cur, pc, ci, cj, &cm);
  for (size_t i = ci; rv == 0 && i < cj; i++) {
    const span *s = &pc->f[i];
    uint64_t key = 0;
    entity_key(k, cur + s->off + s->body, s->len - s->body, &key);
    uintptr_t b = (uintptr_t)qrpci_u64map_get(&bm, key);
    const span *o = b ? &pb->f[b - 1] : NULL;
    if (o && o->len == s->len && !memcmp(base + o->off, cur + s->off, s->len))
      continue;
    if ((rv = put_varint(out, OP_UPSERT)) == 0 &&
        (rv = put_varint(out, s->len - s->body)) == 0)
      rv = put(out, cur + s->off + s->body, s->len - s->body);
  }
  for (size_t i = bi; rv == 0 && i < bj; i++) {
    const span *s = &pb->f[i];
    uint64_t key = 0;
    entity_key(k, base + s->off + s->body, s->len - s->body, &key);
    if (qrpci_u64map_get(&cm, key)) continue;
    if ((rv = put_varint(out, OP_DELETE)) == 0) rv = put_varint(out, key - 1);
  }
  qrpci_u64map_free(&bm);
  qrpci_u64map_free(&cm);
  return rv;
}

/* The records of the delta from base to cur, without the final check. */
static int diff_records(const qrpci_delta_keys *k, const uint8_t *base,
                        const fields *pb, const uint8_t *cur, const fields *pc,
                        qrpci_delta_buf *out) {
  size_t bi = 0, ci = 0;
  int rv = 0;
  while (rv == 0 && (bi < pb->n || ci < pc->n)) {
    uint32_t f = bi == pb->n                         ? pc->f[ci].field
                 : ci == pc->n                       ? pb->f[bi].field
                 : pb->f[bi].field < pc->f[ci].field ? pb->f[bi].field
                                                     : pc->f[ci].field;
    size_t bj = bi < pb->n && pb->f[bi].field == f ? run_end(pb, bi) : bi;
    size_t cj = ci < pc->n && pc->f[ci].field == f ? run_end(pc, ci) : ci;
    if (k->entities && f == k->entities) {
      rv = diff_entities(k, base, pb, bi, bj, cur, pc, ci, cj, out);
    } else {
      size_t bn = run_bytes(pb, bi, bj), cn = run_bytes(pc, ci, cj);
      const uint8_t *bp = bn ? base + pb->f[bi].off : NULL;
      const uint8_t *cp = cn ? cur + pc->f[ci].off : NULL;
      if (bn != cn || (cn && memcmp(bp, cp, cn))) {
        if ((rv = put_varint(out, OP_FIELD)) == 0 &&
            (rv = put_varint(out, f)) == 0 && (rv = put_varint(out, cn)) == 0)
          rv = put(out, cp, cn);
      }
    }
    bi = bj;
    ci = cj;
  }
  return rv;
}

int qrpci_delta_diff(const qrpci_delta_keys *k, const uint8_t *base,
                     size_t blen, const uint8_t *cur, size_t clen,
                     qrpci_delta_buf *out) {
  fields pb = {0}, pc = {0};
  out->len = 0;
  int rv = parse(base, blen, &pb);
  if (rv == 0) rv = parse(cur, clen, &pc);
  if (rv == 0) rv = diff_records(k, base, &pb, cur, &pc, out);
  free(pb.f);
  free(pc.f);
  if (rv == 0 && out->len >= clen) rv = 1;
  if (rv != 0) return rv;
  /* What the receiver will build must be cur itself: entities that moved,
   * or fields whose order the format does not keep, go whole. */
  qrpci_delta_buf check = {0};
  rv = qrpci_delta_apply(k, base, blen, out->data, out->len, clen, &check);
  if (rv == 0 && (check.len != clen || memcmp(check.data, cur, clen)))
    rv = 1;
  else if (rv == QRPC_EINVAL || rv == QRPC_EMSGSIZE)
    rv = 1;
  qrpci_delta_buf_free(&check);
  return rv;
}

/* A delta's records, read and checked against k. */
typedef struct records {
  const uint8_t **fbytes; /* FIELD: bytes and lengths, by position */
  size_t *flen;
  uint32_t *fnum;
  size_t nf;
  entity *ups;
  size_t nups;
  qrpci_u64map upkeys;  /* key + 1 -> upsert index + 1 */
  qrpci_u64map delkeys; /* key + 1 -> 1 */
} records;

static void records_free(records *r) {
  free(r->fbytes);
  free(r->flen);
  free(r->fnum);
  free(r->ups);
  qrpci_u64map_free(&r->upkeys);
  qrpci_u64map_free(&r->delkeys);
}

/* Checks that p[0..n) holds only occurrences of field f. */
static int only_field(const uint8_t *p, size_t n, uint32_t f) {
  for (size_t i = 0; i < n;) {
    uint32_t g;
    unsigned wt;
    size_t body, k = qrpci_pb_field_next(p + i, n - i, &g, &wt, &body);
    if (!k || g != f) return 0;
    i += k;
  }
  return 1;
}

static int read_records(const qrpci_delta_keys *k, const uint8_t *d,
                        size_t dlen, records *r) {
  /* Each record takes two bytes at least, which bounds the arrays. */
  size_t cap = dlen / 2 + 1;
  r->fbytes = malloc(cap * sizeof(*r->fbytes));
  r->flen = malloc(cap * sizeof(*r->flen));
  r->fnum = malloc(cap * sizeof(*r->fnum));
  r->ups = malloc(cap * sizeof(*r->ups));
  if (!r->fbytes || !r->flen || !r->fnum || !r->ups) return QRPC_ENOMEM;
  size_t i = 0;
  while (i < dlen) {
    uint64_t op, a, b = 0;
    size_t n = qrpci_pb_varint(d + i, dlen - i, &op);
    if (!n) return QRPC_EINVAL;
    i += n;
    if (!(n = qrpci_pb_varint(d + i, dlen - i, &a))) return QRPC_EINVAL;
    i += n;
    if (op == OP_FIELD) {
      if (!(n = qrpci_pb_varint(d + i, dlen - i, &b)) || b > dlen - i - n ||
          a == 0 || a > 0x1fffffff || (k->entities && a == k->entities) ||
          (r->nf && a <= r->fnum[r->nf - 1]) ||
          !only_field(d + i + n, b, (uint32_t)a))
        return QRPC_EINVAL;
      r->fnum[r->nf] = (uint32_t)a;
      r->fbytes[r->nf] = d + i + n;
      r->flen[r->nf++] = (size_t)b;
      i += n + (size_t)b;
    } else if (op == OP_UPSERT) {
      entity *e = &r->ups[r->nups];
      if (!k->entities || a > dlen - i) return QRPC_EINVAL;
      e->body = d + i;
      e->len = (size_t)a;
      e->used = 0;
      i += (size_t)a;
      if (entity_key(k, e->body, e->len, &e->key) != 0 ||
          qrpci_u64map_get(&r->upkeys, e->key))
        return QRPC_EINVAL;
      if (qrpci_u64map_put(&r->upkeys, e->key,
                           (void *)(uintptr_t)(++r->nups)) != 0)
        return QRPC_ENOMEM;
    } else if (op == OP_DELETE) {
      if (!k->entities || a == UINT64_MAX ||
          qrpci_u64map_get(&r->delkeys, a + 1) ||
          qrpci_u64map_get(&r->upkeys, a + 1))
        return QRPC_EINVAL;
      if (qrpci_u64map_put(&r->delkeys, a + 1, (void *)(uintptr_t)1) != 0)
        return QRPC_ENOMEM;
    } else {
      return QRPC_EINVAL;
    }
  }
  /* An upsert after a delete of the same key was caught above; the other
   * order is caught here. */
  for (size_t j = 0; j < r->nups; j++)
    if (qrpci_u64map_get(&r->delkeys, r->ups[j].key)) return QRPC_EINVAL;
  return 0;
}

static int put_entity(qrpci_delta_buf *out, uint32_t field, const entity *e) {
  int rv = put_varint(out, ((uint64_t)field << 3) | QRPCI_PB_LEN);
  if (rv == 0) rv = put_varint(out, e->len);
  return rv == 0 ? put(out, e->body, e->len) : rv;
}

/* Writes the entity field: base's entities [bi, bj) updated in place or
 * dropped, then the new ones. Only the delta's keys are indexed, so a
 * receiver's work grows with what changed plus one pass over base. */
static int apply_entities(const qrpci_delta_keys *k, const uint8_t *base,
                          const fields *pb, size_t bi, size_t bj, records *r,
                          qrpci_delta_buf *out) {
  int rv = 0;
  size_t deleted = 0;
  for (size_t i = bi; rv == 0 && i < bj; i++) {
    const span *s = &pb->f[i];
    uint64_t key = 0;
    if (s->wt != QRPCI_PB_LEN ||
        entity_key(k, base + s->off + s->body, s->len - s->body, &key) != 0)
      return QRPC_EINVAL;
    uintptr_t u = (uintptr_t)qrpci_u64map_get(&r->upkeys, key);
    /* A key base repeats would take one upsert twice. */
    if (u && r->ups[u - 1].used) return QRPC_EINVAL;
    void *dv = qrpci_u64map_get(&r->delkeys, key);
    if (dv) {
      /* A key base repeats would take one DELETE twice, and stand in for
       * a DELETE of a key base lacks. */
      if ((uintptr_t)dv == 2) return QRPC_EINVAL;
      if (qrpci_u64map_put(&r->delkeys, key, (void *)(uintptr_t)2) != 0)
        return QRPC_ENOMEM;
      deleted++;
    } else if (u) {
      r->ups[u - 1].used = 1;
      rv = put_entity(out, k->entities, &r->ups[u - 1]);
    } else {
      rv = put(out, base + s->off, s->len);
    }
  }
  /* Every DELETE must name an entity of base. */
  if (rv == 0 && deleted != r->delkeys.size) rv = QRPC_EINVAL;
  for (size_t j = 0; rv == 0 && j < r->nups; j++)
    if (!r->ups[j].used) rv = put_entity(out, k->entities, &r->ups[j]);
  return rv;
}

static int apply_records(const qrpci_delta_keys *k, const uint8_t *base,
                         const fields *pb, records *r, qrpci_delta_buf *out) {
  size_t bi = 0, fi = 0;
  int ents = k->entities && (r->nups || r->delkeys.size);
  int rv = 0;
  while (rv == 0 && (bi < pb->n || fi < r->nf || ents)) {
    uint32_t f = UINT32_MAX;
    if (bi < pb->n) f = pb->f[bi].field;
    if (fi < r->nf && r->fnum[fi] < f) f = r->fnum[fi];
    if (ents && k->entities < f) f = k->entities;
    size_t bj = bi < pb->n && pb->f[bi].field == f ? run_end(pb, bi) : bi;
    if (k->entities && f == k->entities) {
      rv = apply_entities(k, base, pb, bi, bj, r, out);
      ents = 0;
    } else if (fi < r->nf && r->fnum[fi] == f) {
      rv = put(out, r->fbytes[fi], r->flen[fi]);
      fi++;
    } else {
      rv = put(out, base + pb->f[bi].off, run_bytes(pb, bi, bj));
    }
    bi = bj;
  }
  return rv;
}

int qrpci_delta_apply(const qrpci_delta_keys *k, const uint8_t *base,
                      size_t blen, const uint8_t *d, size_t dlen, size_t max,
                      qrpci_delta_buf *out) {
  fields pb = {0};
  records r = {0};
  qrpci_u64map_init(&r.upkeys);
  qrpci_u64map_init(&r.delkeys);
  out->len = 0;
  int rv = parse(base, blen, &pb);
  if (rv == 1) rv = QRPC_EINVAL;
  /* Most states keep their size from tick to tick. */
  if (rv == 0 && blen + dlen <= max) rv = reserve(out, blen + dlen);
  if (rv == 0) rv = read_records(k, d, dlen, &r);
  if (rv == 0) rv = apply_records(k, base, &pb, &r, out);
  if (rv == 0 && out->len > max) rv = QRPC_EMSGSIZE;
  free(pb.f);
  records_free(&r);
  return rv;
}
