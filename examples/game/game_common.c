#include "game_common.h"

#include <errno.h>
#include <stdlib.h>
#include <time.h>

uint64_t game_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

/* Bucket of v: values under 64 have one each; above, the top 7 bits of v
 * (its power of two and 6 bits below it) pick the bucket. */
static size_t bucket_of(uint64_t v) {
  if (v < GAME_HIST_SUB) return (size_t)v;
  int e = 63;
  while (!(v >> e)) e--;
  size_t b = (size_t)(e - 5) * GAME_HIST_SUB + (size_t)((v >> (e - 6)) & 63);
  return b < GAME_HIST_BUCKETS ? b : GAME_HIST_BUCKETS - 1;
}

static uint64_t bucket_floor(size_t b) {
  if (b < GAME_HIST_SUB) return b;
  int e = (int)(b / GAME_HIST_SUB) + 5;
  return ((uint64_t)(GAME_HIST_SUB + b % GAME_HIST_SUB)) << (e - 6);
}

void game_hist_add(game_hist *h, uint64_t v) {
  h->bucket[bucket_of(v)]++;
  h->count++;
  if (v > h->max) h->max = v;
}

void game_hist_merge(game_hist *dst, const game_hist *src) {
  for (size_t i = 0; i < GAME_HIST_BUCKETS; i++)
    dst->bucket[i] += src->bucket[i];
  dst->count += src->count;
  if (src->max > dst->max) dst->max = src->max;
}

uint64_t game_hist_percentile(const game_hist *h, double q) {
  if (h->count == 0) return 0;
  uint64_t rank = (uint64_t)(q * (double)h->count);
  if (rank >= h->count) rank = h->count - 1;
  uint64_t seen = 0;
  for (size_t i = 0; i < GAME_HIST_BUCKETS; i++) {
    seen += h->bucket[i];
    if (seen > rank) return bucket_floor(i);
  }
  return h->max;
}

int game_parse_ulong(const char *s, unsigned long min, unsigned long max,
                     unsigned long *out) {
  char *end = NULL;
  if (s == NULL || *s < '0' || *s > '9') return -1;
  errno = 0;
  unsigned long v = strtoul(s, &end, 10);
  if (errno != 0 || *end != '\0' || v < min || v > max) return -1;
  *out = v;
  return 0;
}
