/*
 * The world workload of the game family (qrpc-bench server|client game
 * --entities N): a world of N entities of B bytes each, of which about P%
 * change every tick, sent on a snapshot channel (docs/datagrams.md,
 * "Snapshots"). Both sides compute the world of any tick from the tick
 * alone, so a client checks every state it rebuilds against the truth.
 *
 * Encoded as bench.proto's WorldState: field 1 the tick, field 2 one
 * Entity per entity (field 1 its id, 1..N; field 2 its B bytes).
 * Entity id changes at the ticks t where (t + id) % period == 0, period =
 * 100 / P rounded, so each tick changes N / period entities.
 */
#ifndef BENCH_WORLD_H
#define BENCH_WORLD_H

#include <stddef.h>
#include <stdint.h>

#define WORLD_MAX_ENTITIES 100000
#define WORLD_MAX_ENTITY_BYTES 1024
/* Baselines each side keeps with --delta. */
#define WORLD_RING 32
/* The state that waited this long is worth less than the next tick. */
#define WORLD_MAX_AGE_MS 100

typedef struct bench_world {
  uint64_t entities;
  uint64_t entity_bytes;
  uint64_t change_pct;
} bench_world;

/* The largest encoding of a world of w's shape. */
size_t bench_world_max_len(const bench_world *w);

/* Encodes the world at tick into buf (bench_world_max_len() bytes);
 * returns its length. */
size_t bench_world_encode(const bench_world *w, uint64_t tick, uint8_t *buf);

/* The snapshot channel's options for w: ring baselines (1: every state
 * goes whole). */
struct qrpc_dgram_opts;
void bench_world_dgram_opts(const bench_world *w, size_t ring,
                            struct qrpc_dgram_opts *o);

/* The --entities, --entity-bytes and --change-pct flags; returns n plus
 * the flags added. */
struct bench_flag;
size_t bench_world_flags(struct bench_flag *flags, size_t n, bench_world *w);

/* Whether argv asks for the world workload (has --entities). */
int bench_world_wanted(int argc, char **argv);

int bench_server_world(const char *prog, int argc, char **argv);
int bench_client_world(const char *prog, int argc, char **argv);

#endif
