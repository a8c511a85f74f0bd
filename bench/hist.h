/*
 * A latency histogram with log-linear buckets: values below 2^SUB_BITS
 * each have a bucket, and every power of two above is split into
 * 2^SUB_BITS equal buckets, so a percentile is within 1/64 (1.6 %) of
 * the truth over the whole range. Fixed size, no allocation per sample.
 */
#ifndef BENCH_HIST_H
#define BENCH_HIST_H

#include <stddef.h>
#include <stdint.h>

#define BENCH_HIST_SUB_BITS 6
#define BENCH_HIST_SUB (1u << BENCH_HIST_SUB_BITS)
/* Enough powers of two for any uint64_t value. */
#define BENCH_HIST_BUCKETS (BENCH_HIST_SUB * (64 - BENCH_HIST_SUB_BITS + 1))

typedef struct bench_hist {
  uint64_t count;
  uint64_t min, max;
  uint64_t bucket[BENCH_HIST_BUCKETS];
} bench_hist;

void bench_hist_reset(bench_hist *h);
void bench_hist_add(bench_hist *h, uint64_t v);
/* Adds every value of src to dst. */
void bench_hist_merge(bench_hist *dst, const bench_hist *src);
/* The value below which a fraction q (0..1) of the values lie: the middle
 * of its bucket, clamped to the smallest and largest value seen; 0 when
 * the histogram is empty. */
double bench_hist_quantile(const bench_hist *h, double q);

#endif
