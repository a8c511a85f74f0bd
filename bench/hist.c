#include "hist.h"

#include <string.h>

void bench_hist_reset(bench_hist *h) {
  memset(h, 0, sizeof(*h));
  h->min = UINT64_MAX;
}

/* Below 2^SUB_BITS the value is the bucket; above, the position of the
 * top bit picks a group of SUB buckets and the SUB_BITS bits below it the
 * bucket inside the group. */
static size_t bucket_of(uint64_t v) {
  if (v < BENCH_HIST_SUB) return (size_t)v;
  unsigned top = 63u - (unsigned)__builtin_clzll(v);
  unsigned shift = top - BENCH_HIST_SUB_BITS;
  size_t group = top - BENCH_HIST_SUB_BITS + 1;
  return group * BENCH_HIST_SUB + (size_t)((v >> shift) & (BENCH_HIST_SUB - 1));
}

/* The smallest value of bucket b and its width. */
static void bucket_range(size_t b, double *lo, double *width) {
  if (b < BENCH_HIST_SUB) {
    *lo = (double)b;
    *width = 1;
    return;
  }
  size_t group = b / BENCH_HIST_SUB;
  unsigned shift = (unsigned)group - 1;
  *lo = (double)((uint64_t)(BENCH_HIST_SUB + b % BENCH_HIST_SUB) << shift);
  *width = (double)(UINT64_C(1) << shift);
}

void bench_hist_add(bench_hist *h, uint64_t v) {
  h->bucket[bucket_of(v)]++;
  h->count++;
  if (v < h->min) h->min = v;
  if (v > h->max) h->max = v;
}

void bench_hist_merge(bench_hist *dst, const bench_hist *src) {
  if (src->count == 0) return;
  for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++)
    dst->bucket[i] += src->bucket[i];
  dst->count += src->count;
  if (src->min < dst->min) dst->min = src->min;
  if (src->max > dst->max) dst->max = src->max;
}

double bench_hist_quantile(const bench_hist *h, double q) {
  if (h->count == 0) return 0;
  if (q < 0) q = 0;
  uint64_t rank = (uint64_t)(q * (double)h->count);
  if (rank >= h->count) rank = h->count - 1;
  uint64_t seen = 0;
  for (size_t i = 0; i < BENCH_HIST_BUCKETS; i++) {
    seen += h->bucket[i];
    if (seen <= rank) continue;
    double lo, width;
    bucket_range(i, &lo, &width);
    double v = lo + (width - 1) / 2;
    if (v < (double)h->min) v = (double)h->min;
    if (v > (double)h->max) v = (double)h->max;
    return v;
  }
  return (double)h->max;
}
