/*
 * Per-method call counters of a server (callstats.c): calls by method and
 * final status, and a latency histogram per method, for the metrics
 * endpoint (docs/api.md, "Metrics"). The engine records into it only once
 * something asked for it (qrpci_core_callstats()), so a server without
 * metrics pays one pointer test per call.
 *
 * Only methods the application registered are counted, so what a peer
 * sends cannot grow the table. Internal; not installed. Loop thread only.
 */
#ifndef QRPCI_RPC_CALLSTATS_H
#define QRPCI_RPC_CALLSTATS_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/rpc.h"
#include "util/u64map.h"

/* Upper bounds of the latency buckets, in nanoseconds; the last bucket
 * (+Inf) is implied. */
#define QRPCI_LATENCY_BUCKETS 14
extern const uint64_t qrpci_latency_bounds_ns[QRPCI_LATENCY_BUCKETS];

/* Status slots: 0..16 are the canonical codes, then TOO_EARLY, then every
 * application code (1000 and up), then anything else. */
#define QRPCI_STATUS_SLOTS 20

typedef struct qrpci_method_stats {
  uint32_t method;
  uint64_t calls[QRPCI_STATUS_SLOTS];
  uint64_t buckets[QRPCI_LATENCY_BUCKETS + 1]; /* not cumulative */
  uint64_t count;
  uint64_t sum_ns;
} qrpci_method_stats;

typedef struct qrpci_callstats {
  qrpci_u64map index;           /* method + 1 -> qrpci_method_stats */
  qrpci_method_stats **methods; /* in the order first seen */
  size_t n, cap;
} qrpci_callstats;

/* NULL when out of memory. */
qrpci_callstats *qrpci_callstats_new(void);
void qrpci_callstats_free(qrpci_callstats *cs);

/* Starts counting calls on every worker of srv (nothing is counted
 * before the first call). Worker 0's thread. Errors: QRPC_ENOMEM. */
int qrpci_server_callstats_enable(qrpc_server *srv);

/* Adds the counters of every worker of srv into sum, asking each worker
 * on its own thread (see qrpc_server_get_stats()). Worker 0's thread.
 * Errors: QRPC_ENOMEM. */
int qrpci_server_callstats_sum(qrpc_server *srv, qrpci_callstats *sum);

/* The endpoint of the worker whose thread calls (worker 0's from a thread
 * that is none of srv's workers). */
qrpc_endpoint *qrpci_server_own_endpoint(qrpc_server *srv);

/* Adds src's counters into dst. Errors: QRPC_ENOMEM (dst then holds part
 * of them). */
int qrpci_callstats_add(qrpci_callstats *dst, const qrpci_callstats *src);

/* Counts one call of method that ended with status after ns nanoseconds.
 * Out of memory loses the sample, nothing else. */
void qrpci_callstats_record(qrpci_callstats *cs, uint32_t method, int status,
                            uint64_t ns);

/* The slot of status, and the status a slot stands for (the first
 * application code for the application slot, -1 for "other"). */
size_t qrpci_status_slot(int status);
int qrpci_slot_status(size_t slot);

#endif
