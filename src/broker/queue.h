/*
 * Messages shared by every subscriber of a publish, and the bounded queue
 * each reliable subscription keeps while its stream cannot take more.
 *
 * A qrpci_bmsg is one published message encoded once (a Delivery of the
 * broker's IDL) with a reference count: the publish holds one reference
 * while it fans out, and every queue holding the message one more. The
 * topic is kept beside the bytes so that a conflating queue can find the
 * message it replaces.
 *
 * A queue is a ring of message references bounded in messages and bytes;
 * what happens to a message that does not fit is the subscription's policy.
 * Pure: no I/O, loop thread only like the rest of the broker.
 */
#ifndef QRPCI_BROKER_QUEUE_H
#define QRPCI_BROKER_QUEUE_H

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

typedef struct qrpci_bmsg {
  uint32_t refs;
  uint32_t topic_len;
  uint64_t topic_hash;
  const char *topic; /* topic_len bytes inside this allocation */
  size_t len;        /* encoded bytes */
  uint8_t *bytes;
} qrpci_bmsg;

/* A message of len encoded bytes, to be filled by the caller, with a copy
 * of topic; one reference. NULL when out of memory. */
qrpci_bmsg *qrpci_bmsg_new(const char *topic, size_t topic_len, size_t len);
static inline qrpci_bmsg *qrpci_bmsg_ref(qrpci_bmsg *m) {
  m->refs++;
  return m;
}
void qrpci_bmsg_unref(qrpci_bmsg *m);
/* FNV-1a of a topic, never 0 (0 marks empty slots in maps). */
uint64_t qrpci_topic_hash(const char *topic, size_t len);

/* The policies of the IDL's SlowConsumerPolicy, resolved (no DEFAULT). */
typedef enum qrpci_bpolicy {
  QRPCI_BPOLICY_DISCONNECT = 1,
  QRPCI_BPOLICY_DROP_OLDEST = 2,
  QRPCI_BPOLICY_DROP_NEWEST = 3,
  QRPCI_BPOLICY_CONFLATE = 4,
} qrpci_bpolicy;

typedef struct qrpci_bqueue {
  qrpci_bmsg **ring;
  uint32_t cap; /* a power of two, grown on demand up to max_msgs */
  uint32_t head;
  uint32_t count;
  size_t bytes;
  uint32_t max_msgs;
  size_t max_bytes;
  /* Bytes in all queues of the broker's worker, or NULL: written by that
   * worker's thread alone, read by any (qrpc_broker_get_stats()). */
  _Atomic size_t *total;
  size_t total_max; /* bound of *total */
} qrpci_bqueue;

/* What qrpci_bqueue_push() did with the message. */
typedef enum qrpci_bpush {
  QRPCI_BPUSH_QUEUED = 0,
  QRPCI_BPUSH_CONFLATED, /* replaced the queued message of its topic */
  QRPCI_BPUSH_DROPPED,   /* queued after dropping *dropped older ones, or
                            not queued (drop-newest, or it alone is over
                            the bound): *dropped counts what was lost */
  QRPCI_BPUSH_OVERFLOW,  /* DISCONNECT: the queue is full; not queued */
  QRPCI_BPUSH_NOMEM,
} qrpci_bpush;

void qrpci_bqueue_init(qrpci_bqueue *q, uint32_t max_msgs, size_t max_bytes,
                       _Atomic size_t *total, size_t total_max);
/* Offers m (the queue takes its own reference when it keeps it) under
 * policy; *dropped is set to the number of messages lost by this push. */
qrpci_bpush qrpci_bqueue_push(qrpci_bqueue *q, qrpci_bmsg *m,
                              qrpci_bpolicy policy, uint64_t *dropped);
/* The oldest message, or NULL; pop releases it. */
qrpci_bmsg *qrpci_bqueue_peek(const qrpci_bqueue *q);
void qrpci_bqueue_pop(qrpci_bqueue *q);
/* Releases everything and the ring. */
void qrpci_bqueue_clear(qrpci_bqueue *q);

#endif
