/*
 * Pieces both game programs use: the monotonic clock their messages are
 * stamped with, a latency histogram with percentiles, and strict parsing
 * of numeric flags.
 */
#ifndef GAME_COMMON_H
#define GAME_COMMON_H

#include <stddef.h>
#include <stdint.h>

/* CLOCK_MONOTONIC in nanoseconds: the stamps in PlayerInput.sent_ns and
 * WorldState.sent_ns, comparable between processes of one machine. */
uint64_t game_now_ns(void);

/* Values (microseconds here) in buckets of 1/64 of each power of two, so
 * a percentile is within 1.6 % of the truth whatever the range. */
#define GAME_HIST_SUB 64
#define GAME_HIST_BUCKETS (GAME_HIST_SUB * 59)

typedef struct game_hist {
  uint64_t count;
  uint64_t max;
  uint64_t bucket[GAME_HIST_BUCKETS];
} game_hist;

void game_hist_add(game_hist *h, uint64_t v);
/* Adds every value of src to dst. */
void game_hist_merge(game_hist *dst, const game_hist *src);
/* The value below which a fraction q (0..1) of the values lie: the
 * bucket's lower bound, or 0 when the histogram is empty. */
uint64_t game_hist_percentile(const game_hist *h, double q);

/* Parses s as a whole decimal number from min to max. Returns 0, or -1
 * when it is not one (s empty, trailing characters, out of range). */
int game_parse_ulong(const char *s, unsigned long min, unsigned long max,
                     unsigned long *out);

/* The world, shared by the server's rules and the client's report. */
#define GAME_WORLD_SIZE 1000

#endif
