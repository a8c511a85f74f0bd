#include "util/u64map.h"

#include <stdlib.h>

#include "qrpc/error.h"

static size_t slot(uint64_t key, size_t cap) {
  key ^= key >> 33;
  key *= 0xff51afd7ed558ccdULL;
  key ^= key >> 33;
  return (size_t)key & (cap - 1);
}

void qrpci_u64map_init(qrpci_u64map *m) {
  m->keys = NULL;
  m->vals = NULL;
  m->cap = 0;
  m->size = 0;
}

void qrpci_u64map_free(qrpci_u64map *m) {
  free(m->keys);
  free(m->vals);
  qrpci_u64map_init(m);
}

static int grow(qrpci_u64map *m) {
  size_t cap = m->cap ? m->cap * 2 : 16;
  uint64_t *keys = calloc(cap, sizeof(*keys));
  void **vals = calloc(cap, sizeof(*vals));
  if (!keys || !vals) {
    free(keys);
    free(vals);
    return QRPC_ENOMEM;
  }
  for (size_t i = 0; i < m->cap; i++) {
    if (!m->keys[i]) continue;
    size_t j = slot(m->keys[i], cap);
    while (keys[j]) j = (j + 1) & (cap - 1);
    keys[j] = m->keys[i];
    vals[j] = m->vals[i];
  }
  free(m->keys);
  free(m->vals);
  m->keys = keys;
  m->vals = vals;
  m->cap = cap;
  return 0;
}

int qrpci_u64map_put(qrpci_u64map *m, uint64_t key, void *val) {
  if (key == 0) return QRPC_EINVAL;
  if ((m->size + 1) * 2 > m->cap && grow(m) != 0) return QRPC_ENOMEM;
  size_t i = slot(key, m->cap);
  while (m->keys[i] && m->keys[i] != key) i = (i + 1) & (m->cap - 1);
  if (!m->keys[i]) m->size++;
  m->keys[i] = key;
  m->vals[i] = val;
  return 0;
}

void *qrpci_u64map_get(const qrpci_u64map *m, uint64_t key) {
  if (!m->cap || key == 0) return NULL;
  size_t i = slot(key, m->cap);
  while (m->keys[i]) {
    if (m->keys[i] == key) return m->vals[i];
    i = (i + 1) & (m->cap - 1);
  }
  return NULL;
}

static void remove_at(qrpci_u64map *m, size_t i) {
  size_t mask = m->cap - 1;
  m->keys[i] = 0;
  m->vals[i] = NULL;
  m->size--;
  /* Shift later members of the probe run back, so lookups never stop at
   * the hole. */
  for (size_t j = (i + 1) & mask; m->keys[j]; j = (j + 1) & mask) {
    size_t home = slot(m->keys[j], m->cap);
    if (((j - home) & mask) >= ((j - i) & mask)) {
      m->keys[i] = m->keys[j];
      m->vals[i] = m->vals[j];
      m->keys[j] = 0;
      m->vals[j] = NULL;
      i = j;
    }
  }
}

void *qrpci_u64map_del(qrpci_u64map *m, uint64_t key) {
  if (!m->cap || key == 0) return NULL;
  size_t i = slot(key, m->cap);
  while (m->keys[i]) {
    if (m->keys[i] == key) {
      void *v = m->vals[i];
      remove_at(m, i);
      return v;
    }
    i = (i + 1) & (m->cap - 1);
  }
  return NULL;
}

void *qrpci_u64map_pop(qrpci_u64map *m) {
  for (size_t i = 0; m->size && i < m->cap; i++) {
    if (m->keys[i]) {
      void *v = m->vals[i];
      remove_at(m, i);
      return v;
    }
  }
  return NULL;
}
