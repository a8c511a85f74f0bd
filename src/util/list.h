/*
 * Intrusive circular doubly-linked lists: the node lives inside the object,
 * so linking and unlinking never allocate.
 */
#ifndef QRPCI_UTIL_LIST_H
#define QRPCI_UTIL_LIST_H

#include <stddef.h>

typedef struct qrpci_list {
  struct qrpci_list *prev, *next;
} qrpci_list;

static inline void qrpci_list_init(qrpci_list *l) { l->prev = l->next = l; }
static inline int qrpci_list_empty(const qrpci_list *l) { return l->next == l; }
/* A node that was initialised and removed, or never linked, is unlinked. */
static inline int qrpci_list_linked(const qrpci_list *n) {
  return n->next != n && n->next != NULL;
}

static inline void qrpci_list_push_back(qrpci_list *l, qrpci_list *n) {
  n->prev = l->prev;
  n->next = l;
  l->prev->next = n;
  l->prev = n;
}

static inline void qrpci_list_remove(qrpci_list *n) {
  n->prev->next = n->next;
  n->next->prev = n->prev;
  n->prev = n->next = n;
}

#define QRPCI_CONTAINER_OF(ptr, type, member)                                  \
  ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

#endif
