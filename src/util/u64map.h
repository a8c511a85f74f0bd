/*
 * Open-addressing hash map from non-zero uint64_t keys to pointers, with
 * linear probing and backward-shift deletion (no tombstones), used for the
 * MsgId tables and the method registry. Grows at 50% load.
 */
#ifndef QRPCI_UTIL_U64MAP_H
#define QRPCI_UTIL_U64MAP_H

#include <stddef.h>
#include <stdint.h>

typedef struct qrpci_u64map {
  uint64_t *keys; /* 0 marks an empty slot */
  void **vals;
  size_t cap;     /* a power of two, or 0 before the first insert */
  size_t size;
} qrpci_u64map;

void qrpci_u64map_init(qrpci_u64map *m);
void qrpci_u64map_free(qrpci_u64map *m);
/* Inserts or replaces key (non-zero). Errors: QRPC_ENOMEM. */
int qrpci_u64map_put(qrpci_u64map *m, uint64_t key, void *val);
void *qrpci_u64map_get(const qrpci_u64map *m, uint64_t key);
/* Removes key; returns its value or NULL. */
void *qrpci_u64map_del(qrpci_u64map *m, uint64_t key);
/* Removes and returns any one value, or NULL when empty: for draining. */
void *qrpci_u64map_pop(qrpci_u64map *m);

#endif
