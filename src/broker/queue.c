/* Shared broker messages and the per-subscription bounded queue. */
#include "broker/queue.h"

#include <stdlib.h>
#include <string.h>

qrpci_bmsg *qrpci_bmsg_new(const char *topic, size_t topic_len, size_t len) {
  qrpci_bmsg *m = malloc(sizeof(*m) + len + topic_len);
  if (!m) return NULL;
  m->refs = 1;
  m->len = len;
  m->bytes = (uint8_t *)(m + 1);
  m->topic_len = (uint32_t)topic_len;
  m->topic = (const char *)m->bytes + len;
  memcpy((char *)m->bytes + len, topic, topic_len);
  m->topic_hash = qrpci_topic_hash(topic, topic_len);
  return m;
}

void qrpci_bmsg_unref(qrpci_bmsg *m) {
  if (m && --m->refs == 0) free(m);
}

uint64_t qrpci_topic_hash(const char *topic, size_t len) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < len; i++) {
    h ^= (uint8_t)topic[i];
    h *= 0x100000001b3ull;
  }
  return h ? h : 1;
}

void qrpci_bqueue_init(qrpci_bqueue *q, uint32_t max_msgs, size_t max_bytes,
                       _Atomic size_t *total, size_t total_max) {
  memset(q, 0, sizeof(*q));
  q->max_msgs = max_msgs ? max_msgs : 1;
  q->max_bytes = max_bytes;
  q->total = total;
  q->total_max = total_max;
}

static qrpci_bmsg **slot(const qrpci_bqueue *q, uint32_t i) {
  return &q->ring[(q->head + i) & (q->cap - 1)];
}

static void account(qrpci_bqueue *q, size_t add, size_t sub) {
  q->bytes = q->bytes + add - sub;
  if (q->total)
    atomic_store_explicit(q->total,
                          atomic_load_explicit(q->total, memory_order_relaxed) +
                              add - sub,
                          memory_order_relaxed);
}

/* An empty queue always takes one message, so that a message larger than
 * the byte bound is delayed, not lost; the bounds still cap memory at one
 * such message per subscription. */
static int fits(const qrpci_bqueue *q, size_t len) {
  if (q->count == 0) return 1;
  if (q->count >= q->max_msgs || q->bytes + len > q->max_bytes) return 0;
  return !q->total ||
         atomic_load_explicit(q->total, memory_order_relaxed) + len <=
             q->total_max;
}

static int grow(qrpci_bqueue *q) {
  uint32_t cap = q->cap ? q->cap * 2 : 16;
  qrpci_bmsg **ring = malloc(sizeof(*ring) * cap);
  if (!ring) return -1;
  for (uint32_t i = 0; i < q->count; i++) ring[i] = *slot(q, i);
  free(q->ring);
  q->ring = ring;
  q->cap = cap;
  q->head = 0;
  return 0;
}

static int append(qrpci_bqueue *q, qrpci_bmsg *m) {
  if (q->count == q->cap && grow(q) != 0) return -1;
  *slot(q, q->count++) = qrpci_bmsg_ref(m);
  account(q, m->len, 0);
  return 0;
}

static qrpci_bmsg **find_topic(const qrpci_bqueue *q, const qrpci_bmsg *m) {
  for (uint32_t i = 0; i < q->count; i++) {
    qrpci_bmsg *o = *slot(q, i);
    if (o->topic_hash == m->topic_hash && o->topic_len == m->topic_len &&
        memcmp(o->topic, m->topic, m->topic_len) == 0)
      return slot(q, i);
  }
  return NULL;
}

qrpci_bpush qrpci_bqueue_push(qrpci_bqueue *q, qrpci_bmsg *m,
                              qrpci_bpolicy policy, uint64_t *dropped) {
  *dropped = 0;
  if (policy == QRPCI_BPOLICY_CONFLATE) {
    qrpci_bmsg **old = find_topic(q, m);
    if (old) {
      account(q, m->len, (*old)->len);
      qrpci_bmsg_unref(*old);
      *old = qrpci_bmsg_ref(m);
      return QRPCI_BPUSH_CONFLATED;
    }
  }
  if (!fits(q, m->len)) {
    switch (policy) {
    case QRPCI_BPOLICY_DISCONNECT: return QRPCI_BPUSH_OVERFLOW;
    case QRPCI_BPOLICY_DROP_NEWEST: *dropped = 1; return QRPCI_BPUSH_DROPPED;
    case QRPCI_BPOLICY_DROP_OLDEST:
    case QRPCI_BPOLICY_CONFLATE:
      while (!fits(q, m->len)) {
        qrpci_bqueue_pop(q);
        ++*dropped;
      }
      break;
    }
  }
  if (append(q, m) != 0) return QRPCI_BPUSH_NOMEM;
  return *dropped ? QRPCI_BPUSH_DROPPED : QRPCI_BPUSH_QUEUED;
}

qrpci_bmsg *qrpci_bqueue_peek(const qrpci_bqueue *q) {
  return q->count ? *slot(q, 0) : NULL;
}

void qrpci_bqueue_pop(qrpci_bqueue *q) {
  if (!q->count) return;
  qrpci_bmsg *m = *slot(q, 0);
  q->head = (q->head + 1) & (q->cap - 1);
  q->count--;
  account(q, 0, m->len);
  qrpci_bmsg_unref(m);
}

void qrpci_bqueue_clear(qrpci_bqueue *q) {
  while (q->count) qrpci_bqueue_pop(q);
  free(q->ring);
  q->ring = NULL;
  q->cap = 0;
  q->head = 0;
}
