/*
 * The world workload's state: computed from the tick alone (world.h).
 */
#include "world.h"

#include <string.h>

#include "args.h"
#include "qrpc/dgram.h"

static size_t put_varint(uint8_t *p, uint64_t v) {
  size_t n = 0;
  do {
    p[n] = (uint8_t)(v & 0x7f);
    v >>= 7;
    if (v) p[n] |= 0x80;
    n++;
  } while (v);
  return n;
}

static uint64_t splitmix(uint64_t *x) {
  uint64_t z = (*x += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

static uint64_t period_of(const bench_world *w) {
  if (w->change_pct == 0) return 0;
  uint64_t p = (100 + w->change_pct / 2) / w->change_pct;
  return p ? p : 1;
}

/* Entity field: key, id, key, length, bytes; each key is one byte. */
static size_t entity_max(const bench_world *w) {
  return 1 + 10 + 1 + 10 + (size_t)w->entity_bytes;
}

size_t bench_world_max_len(const bench_world *w) {
  return 1 + 10 + (size_t)w->entities * (1 + 10 + entity_max(w));
}

size_t bench_world_encode(const bench_world *w, uint64_t tick, uint8_t *buf) {
  uint64_t period = period_of(w);
  uint8_t *p = buf;
  p += put_varint(p, (1 << 3) | 0);
  p += put_varint(p, tick);
  for (uint64_t id = 1; id <= w->entities; id++) {
    uint64_t since = period ? (tick + id) % period : 0;
    uint64_t changed = period && since <= tick ? tick - since : 0;
    uint8_t body[1 + 10 + 1 + 10];
    size_t n = put_varint(body, (1 << 3) | 0);
    n += put_varint(body + n, id);
    n += put_varint(body + n, (2 << 3) | 2);
    n += put_varint(body + n, w->entity_bytes);
    p += put_varint(p, (2 << 3) | 2);
    p += put_varint(p, n + w->entity_bytes);
    memcpy(p, body, n);
    p += n;
    uint64_t seed = id * UINT64_C(0x2545f4914f6cdd1d) ^ changed;
    for (size_t i = 0; i < w->entity_bytes; i += 8) {
      uint64_t r = splitmix(&seed);
      size_t k = w->entity_bytes - i < 8 ? w->entity_bytes - i : 8;
      memcpy(p + i, &r, k);
    }
    p += w->entity_bytes;
  }
  return (size_t)(p - buf);
}

void bench_world_dgram_opts(const bench_world *w, size_t ring,
                            qrpc_dgram_opts *o) {
  qrpc_dgram_opts_default(o);
  o->max_message = bench_world_max_len(w);
  o->max_age_ms = WORLD_MAX_AGE_MS;
  o->snapshot_ring = ring;
  o->snapshot_entities = 2;
  o->snapshot_key = 1;
  /* Room for a few whole worlds in flight per client. */
  o->reassembly_bytes = 4 * (o->max_message + o->max_message / 8 + 64);
}

size_t bench_world_flags(bench_flag *flags, size_t n, bench_world *w) {
  w->entities = 0;
  w->entity_bytes = 32;
  w->change_pct = 5;
  const bench_flag own[] = {
      {"--entities", BENCH_FLAG_UINT, &w->entities, 1, WORLD_MAX_ENTITIES, NULL,
       "N", "entities in the world (the world workload)", 1, 0},
      {"--entity-bytes", BENCH_FLAG_UINT, &w->entity_bytes, 1,
       WORLD_MAX_ENTITY_BYTES, NULL, "B", "bytes of state per entity", 0, 0},
      {"--change-pct", BENCH_FLAG_UINT, &w->change_pct, 0, 100, NULL, "P",
       "entities that change each tick, in percent", 0, 0},
  };
  for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) flags[n++] = own[i];
  return n;
}

int bench_world_wanted(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (!strcmp(argv[i], "--entities") || !strncmp(argv[i], "--entities=", 11))
      return 1;
  return 0;
}
