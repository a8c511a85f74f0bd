#include "quic/cidmap.h"

#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "quic/tls.h"

typedef struct entry {
  struct entry *next;
  struct qrpc_conn *conn;
  size_t len;
  uint8_t cid[NGTCP2_MAX_CIDLEN];
} entry;

struct qrpci_cidmap {
  entry **buckets;
  size_t nbuckets; /* a power of two */
  size_t size;
  uint64_t seed;
};

static uint64_t hash(const qrpci_cidmap *m, const uint8_t *p, size_t len) {
  uint64_t h = 0xcbf29ce484222325ULL ^ m->seed;
  for (size_t i = 0; i < len; i++) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
  return h ^ (h >> 29);
}

qrpci_cidmap *qrpci_cidmap_new(void) {
  qrpci_cidmap *m = calloc(1, sizeof(*m));
  if (!m) return NULL;
  m->nbuckets = 64;
  m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
  if (!m->buckets || qrpci_tls_rand(&m->seed, sizeof(m->seed)) != 0) {
    free(m->buckets);
    free(m);
    return NULL;
  }
  return m;
}

void qrpci_cidmap_free(qrpci_cidmap *m) {
  if (!m) return;
  for (size_t i = 0; i < m->nbuckets; i++) {
    entry *e = m->buckets[i];
    while (e) {
      entry *n = e->next;
      free(e);
      e = n;
    }
  }
  free(m->buckets);
  free(m);
}

static entry **find(qrpci_cidmap *m, const uint8_t *cid, size_t len) {
  entry **pp = &m->buckets[hash(m, cid, len) & (m->nbuckets - 1)];
  for (; *pp; pp = &(*pp)->next)
    if ((*pp)->len == len && memcmp((*pp)->cid, cid, len) == 0) break;
  return pp;
}

static void grow(qrpci_cidmap *m) {
  size_t nb = m->nbuckets * 2;
  entry **b = calloc(nb, sizeof(*b));
  if (!b) return; /* stays correct, only slower */
  for (size_t i = 0; i < m->nbuckets; i++) {
    entry *e = m->buckets[i];
    while (e) {
      entry *n = e->next;
      size_t k = hash(m, e->cid, e->len) & (nb - 1);
      e->next = b[k];
      b[k] = e;
      e = n;
    }
  }
  free(m->buckets);
  m->buckets = b;
  m->nbuckets = nb;
}

int qrpci_cidmap_put(qrpci_cidmap *m, const uint8_t *cid, size_t len,
                     struct qrpc_conn *c) {
  if (len > NGTCP2_MAX_CIDLEN) return QRPC_EINVAL;
  entry **pp = find(m, cid, len);
  if (*pp) {
    (*pp)->conn = c;
    return 0;
  }
  entry *e = malloc(sizeof(*e));
  if (!e) return QRPC_ENOMEM;
  e->next = NULL;
  e->conn = c;
  e->len = len;
  memcpy(e->cid, cid, len);
  *pp = e;
  if (++m->size > m->nbuckets) grow(m);
  return 0;
}

struct qrpc_conn *qrpci_cidmap_get(qrpci_cidmap *m, const uint8_t *cid,
                                   size_t len) {
  if (len > NGTCP2_MAX_CIDLEN) return NULL;
  entry *e = *find(m, cid, len);
  return e ? e->conn : NULL;
}

void qrpci_cidmap_del(qrpci_cidmap *m, const uint8_t *cid, size_t len,
                      struct qrpc_conn *c) {
  if (len > NGTCP2_MAX_CIDLEN) return;
  entry **pp = find(m, cid, len);
  if (!*pp || (*pp)->conn != c) return;
  entry *e = *pp;
  *pp = e->next;
  free(e);
  m->size--;
}

size_t qrpci_cidmap_size(qrpci_cidmap *m) { return m->size; }
