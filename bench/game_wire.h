/*
 * The game family's datagrams (channels Up and Down of bench.proto),
 * little-endian, laid out by hand so the server can copy, stamp and pack
 * states without decoding them.
 *
 * state (client -> server on Up, GAME_STATE_MIN..GAME_STATE_MAX bytes):
 *   0  u32 client id          chosen by the client process
 *   4  u32 flags              GAME_FLAG_MEASURING: sent in the window
 *   8  u64 seq                the client's counter, from 1
 *   16 u64 send_ns            CLOCK_MONOTONIC when the client sent it
 *   24 u64 server_recv_ns     0 from the client; the server writes its
 *                             CLOCK_MONOTONIC of arrival before passing
 *                             the state on, so the client learns the
 *                             uplink delay of its own states
 *   32 ...                    padding up to the state's size
 *
 * tick (server -> every client on Down, one or more per tick):
 *   0  u64 tick               the server's tick counter, from 1
 *   8  u64 tick_ns            CLOCK_MONOTONIC when the tick began
 *   16 u32 total              states in the whole tick (all parts)
 *   20 u16 part               0 .. parts - 1
 *   22 u16 parts
 *   24 u16 count              states in this datagram
 *   26 count x (u16 length, length bytes of state)
 *
 * The clocks only compare on one machine, where client and server run.
 */
#ifndef BENCH_GAME_WIRE_H
#define BENCH_GAME_WIRE_H

#include <stddef.h>
#include <stdint.h>

#include "bench.qrpc.h"

#define GAME_UP_CHANNEL qrpc_bench_Game_Up_METHOD_ID
#define GAME_DOWN_CHANNEL qrpc_bench_Game_Down_METHOD_ID

#define GAME_STATE_MIN 32
#define GAME_STATE_MAX 1024
#define GAME_FLAG_MEASURING 1u

#define GAME_ST_ID 0
#define GAME_ST_FLAGS 4
#define GAME_ST_SEQ 8
#define GAME_ST_SEND_NS 16
#define GAME_ST_RECV_NS 24

#define GAME_TK_TICK 0
#define GAME_TK_TICK_NS 8
#define GAME_TK_TOTAL 16
#define GAME_TK_PART 20
#define GAME_TK_PARTS 22
#define GAME_TK_COUNT 24
#define GAME_TICK_HEADER 26
/* Each state in a tick is preceded by its length. */
#define GAME_TICK_STATE_PREFIX 2

static inline void game_put16(uint8_t *p, uint16_t v) {
  p[0] = (uint8_t)v;
  p[1] = (uint8_t)(v >> 8);
}

static inline void game_put32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static inline void game_put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static inline uint16_t game_get16(const uint8_t *p) {
  return (uint16_t)(p[0] | (p[1] << 8));
}

static inline uint32_t game_get32(const uint8_t *p) {
  uint32_t v = 0;
  for (int i = 3; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

static inline uint64_t game_get64(const uint8_t *p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
  return v;
}

#endif
