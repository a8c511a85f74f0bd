/*
 * Per-method call counters (callstats.h).
 */
#include "rpc/callstats.h"

#include <stdlib.h>

#include "qrpc/error.h"
#include "qrpc/rpc.h"

/* 100 us to 10 s: a unary call on loopback is tens of microseconds, a
 * slow handler or a long stream seconds. */
const uint64_t qrpci_latency_bounds_ns[QRPCI_LATENCY_BUCKETS] = {
    100000,    250000,    500000,     1000000,        2500000,
    5000000,   10000000,  25000000,   50000000,       100000000,
    250000000, 500000000, 1000000000, 10000000000ull,
};

#define SLOT_TOO_EARLY 17
#define SLOT_APP 18
#define SLOT_OTHER 19

size_t qrpci_status_slot(int status) {
  if (status >= 0 && status <= QRPC_STATUS_UNAUTHENTICATED)
    return (size_t)status;
  if (status == QRPC_STATUS_TOO_EARLY) return SLOT_TOO_EARLY;
  if (status >= QRPC_STATUS_APP_MIN) return SLOT_APP;
  return SLOT_OTHER;
}

int qrpci_slot_status(size_t slot) {
  if (slot <= QRPC_STATUS_UNAUTHENTICATED) return (int)slot;
  if (slot == SLOT_TOO_EARLY) return QRPC_STATUS_TOO_EARLY;
  if (slot == SLOT_APP) return QRPC_STATUS_APP_MIN;
  return -1;
}

qrpci_callstats *qrpci_callstats_new(void) {
  qrpci_callstats *cs = calloc(1, sizeof(*cs));
  if (cs) qrpci_u64map_init(&cs->index);
  return cs;
}

void qrpci_callstats_free(qrpci_callstats *cs) {
  if (!cs) return;
  for (size_t i = 0; i < cs->n; i++) free(cs->methods[i]);
  free(cs->methods);
  qrpci_u64map_free(&cs->index);
  free(cs);
}

static qrpci_method_stats *method_get(qrpci_callstats *cs, uint32_t method) {
  qrpci_method_stats *ms = qrpci_u64map_get(&cs->index, (uint64_t)method + 1);
  if (ms) return ms;
  if (cs->n == cs->cap) {
    size_t cap = cs->cap ? cs->cap * 2 : 8;
    qrpci_method_stats **v = realloc(cs->methods, cap * sizeof(*v));
    if (!v) return NULL;
    cs->methods = v;
    cs->cap = cap;
  }
  if (!(ms = calloc(1, sizeof(*ms)))) return NULL;
  ms->method = method;
  if (qrpci_u64map_put(&cs->index, (uint64_t)method + 1, ms) != 0) {
    free(ms);
    return NULL;
  }
  cs->methods[cs->n++] = ms;
  return ms;
}

int qrpci_callstats_add(qrpci_callstats *dst, const qrpci_callstats *src) {
  for (size_t i = 0; i < src->n; i++) {
    const qrpci_method_stats *s = src->methods[i];
    qrpci_method_stats *d = method_get(dst, s->method);
    if (!d) return QRPC_ENOMEM;
    for (size_t k = 0; k < QRPCI_STATUS_SLOTS; k++) d->calls[k] += s->calls[k];
    for (size_t k = 0; k <= QRPCI_LATENCY_BUCKETS; k++)
      d->buckets[k] += s->buckets[k];
    d->count += s->count;
    d->sum_ns += s->sum_ns;
  }
  return 0;
}

void qrpci_callstats_record(qrpci_callstats *cs, uint32_t method, int status,
                            uint64_t ns) {
  qrpci_method_stats *ms = method_get(cs, method);
  if (!ms) return;
  ms->calls[qrpci_status_slot(status)]++;
  size_t b = 0;
  while (b < QRPCI_LATENCY_BUCKETS && ns > qrpci_latency_bounds_ns[b]) b++;
  ms->buckets[b]++;
  ms->count++;
  ms->sum_ns += ns;
}
