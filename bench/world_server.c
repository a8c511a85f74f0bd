/*
 * qrpc-bench server game --entities N: every tick, the world (world.h) as
 * one snapshot for all clients on channel World; with --delta each client
 * gets the difference from the last state it acknowledged, without it
 * every client gets the whole world (one encoding for all, in fragments).
 *
 * RESULT on SIGTERM: the ticks, the snapshots sent whole and as deltas,
 * the encodings made per tick (clients that acknowledged the same tick
 * share one), the bytes queued, and the server's CPU per tick.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "game_wire.h"
#include "report.h"
#include "server_common.h"
#include "world.h"

#define MAX_TICK_HZ 10000
#define WORLD_CHANNEL qrpc_bench_Game_World_METHOD_ID

typedef struct world_peer {
  qrpc_peer *peer;
  size_t idx;
} world_peer;

typedef struct world_server {
  const char *prog;
  bench_world w;
  uint64_t tick_hz;
  int delta;
  qrpc_server *srv;
  struct event *tick_ev;
  world_peer **peers;
  size_t npeers, cap_peers;
  uint8_t *buf;
  uint64_t ticks, conns, encodings, sends, deferred, refused_full;
  uint64_t refused_other;
  uint64_t first_tick_ns, last_tick_ns;
  qrpc_dgram_stats closed; /* what peers that are gone sent */
} world_server;

static void add_stats(qrpc_dgram_stats *a, const qrpc_dgram_stats *b) {
  a->bytes_sent += b->bytes_sent;
  a->snap_full_sent += b->snap_full_sent;
  a->snap_delta_sent += b->snap_delta_sent;
  a->lost += b->lost;
  a->dropped_aged += b->dropped_aged;
}

static void on_peer_open(qrpc_peer *peer, void *user_data) {
  world_server *s = user_data;
  if (s->npeers == s->cap_peers) {
    size_t cap = s->cap_peers ? s->cap_peers * 2 : 64;
    world_peer **v = realloc(s->peers, cap * sizeof(*v));
    if (v == NULL) return; /* this client gets no ticks */
    s->peers = v;
    s->cap_peers = cap;
  }
  world_peer *wp = calloc(1, sizeof(*wp));
  if (wp == NULL) return;
  wp->peer = peer;
  wp->idx = s->npeers;
  s->peers[s->npeers++] = wp;
  qrpc_peer_set_user_data(peer, wp);
  s->conns++;
}

static void on_peer_close(qrpc_peer *peer, void *user_data) {
  world_server *s = user_data;
  world_peer *wp = qrpc_peer_user_data(peer);
  if (wp == NULL) return;
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(peer, WORLD_CHANNEL, &st);
  add_stats(&s->closed, &st);
  qrpc_peer_set_user_data(peer, NULL);
  world_peer *last = s->peers[--s->npeers];
  s->peers[wp->idx] = last;
  last->idx = wp->idx;
  free(wp);
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  world_server *s = arg;
  (void)fd, (void)what;
  uint64_t now = bench_now_ns();
  uint64_t tick = ++s->ticks;
  if (tick == 1) s->first_tick_ns = now;
  s->last_tick_ns = now;
  size_t len = bench_world_encode(&s->w, tick, s->buf);
  qrpc_snapshot *snap;
  int rc =
      qrpc_server_snapshot_new(s->srv, WORLD_CHANNEL, tick, s->buf, len, &snap);
  if (rc != 0) {
    s->refused_other += s->npeers;
    return;
  }
  for (size_t i = 0; i < s->npeers; i++) {
    rc = qrpc_peer_send_snapshot(s->peers[i]->peer, snap);
    if (rc == 0)
      s->sends++;
    else if (rc == QRPC_EAGAIN)
      s->deferred++;
    else if (rc == QRPC_ENOBUFS)
      s->refused_full++;
    else
      s->refused_other++;
  }
  s->encodings += qrpc_snapshot_encodings(snap);
  qrpc_snapshot_free(snap);
}

static void report(const world_server *s, double cpu) {
  qrpc_dgram_stats st = s->closed;
  for (size_t i = 0; i < s->npeers; i++) {
    qrpc_dgram_stats p;
    qrpc_peer_dgram_stats(s->peers[i]->peer, WORLD_CHANNEL, &p);
    add_stats(&st, &p);
  }
  double tspan = (double)(s->last_tick_ns - s->first_tick_ns) / 1e9;
  bench_report r;
  bench_report_init(&r);
  bench_report_uint(&r, "server_ticks", s->ticks);
  bench_report_num(&r, "server_tick_hz",
                   tspan > 0 ? (double)(s->ticks - 1) / tspan : 0, 1);
  bench_report_uint(&r, "server_world_bytes",
                    bench_world_encode(&s->w, 1, s->buf));
  bench_report_uint(&r, "server_sends", s->sends);
  bench_report_uint(&r, "server_snap_full", st.snap_full_sent);
  bench_report_uint(&r, "server_snap_delta", st.snap_delta_sent);
  bench_report_uint(&r, "server_snap_deferred", s->deferred);
  bench_report_num(&r, "server_encodings_per_tick",
                   s->ticks ? (double)s->encodings / (double)s->ticks : 0, 2);
  bench_report_uint(&r, "server_bytes_sent", st.bytes_sent);
  bench_report_uint(&r, "server_dgrams_lost", st.lost);
  bench_report_uint(&r, "server_dgrams_aged", st.dropped_aged);
  bench_report_uint(&r, "server_refused_full", s->refused_full);
  bench_report_uint(&r, "server_refused_other", s->refused_other);
  bench_report_uint(&r, "server_conns", s->conns);
  bench_report_num(&r, "server_cpu_s", cpu, 2);
  bench_report_num(&r, "server_cpu_us_per_tick",
                   s->ticks ? cpu * 1e6 / (double)s->ticks : 0, 1);
  bench_report_print_result(&r);
}

static int start_ticks(world_server *s, qrpc_loop *loop) {
  qrpc_dgram_opts o;
  bench_world_dgram_opts(&s->w, s->delta ? WORLD_RING : 1, &o);
  int rc = qrpc_server_register_dgram(s->srv, WORLD_CHANNEL, &o, NULL, NULL);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot register the world channel: %s\n", s->prog,
            qrpc_strerror(rc));
    return -1;
  }
  uint64_t period_us = 1000000 / s->tick_hz;
  struct timeval tv = {(time_t)(period_us / 1000000),
                       (suseconds_t)(period_us % 1000000)};
  s->tick_ev = event_new(qrpc_loop_base(loop), -1, EV_PERSIST, on_tick, s);
  if (s->tick_ev == NULL || event_add(s->tick_ev, &tv) != 0) {
    fprintf(stderr, "%s: cannot start the tick timer\n", s->prog);
    return -1;
  }
  return 0;
}

int bench_server_world(const char *prog, int argc, char **argv) {
  world_server *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return 1;
  }
  s->prog = prog;
  s->tick_hz = 60;
  bench_server_common c;
  bench_flag flags[BENCH_MAX_FLAGS];
  size_t n = bench_server_common_flags(flags, 0, &c);
  flags[n++] = (bench_flag){
      "--tick-hz", BENCH_FLAG_UINT,    &s->tick_hz, 1, MAX_TICK_HZ, NULL,
      "HZ",        "ticks per second", 0,           0};
  n = bench_world_flags(flags, n, &s->w);
  flags[n++] = (bench_flag){"--delta",
                            BENCH_FLAG_BOOL,
                            &s->delta,
                            0,
                            0,
                            NULL,
                            NULL,
                            "send each client the difference from the last "
                            "state it acknowledged",
                            0,
                            0};
  int rc = bench_args_parse(
      prog,
      "--port P --entities N [--entity-bytes B] [--change-pct P] [--delta] "
      "[--tick-hz HZ] [flags]",
      "The world workload: every tick sends every client the world of N\n"
      "entities of B bytes, P% of them changed since the last tick, whole\n"
      "or (--delta) as the difference from the last state the client\n"
      "acknowledged. Prints READY on stdout once it accepts connections; on\n"
      "SIGTERM or SIGINT it prints RESULT with its counters and CPU per\n"
      "tick, and exits.",
      flags, n, argc, argv);
  if (rc != 0) {
    free(s);
    return rc == 1 ? 0 : 2;
  }
  s->buf = malloc(bench_world_max_len(&s->w));
  if (s->buf == NULL) {
    fprintf(stderr, "%s: out of memory for the world\n", prog);
    free(s);
    return 1;
  }
  c.precise_timers = 1;
  qrpc_server_opts o;
  bench_server_opts(&c, &o);
  o.on_peer_open = on_peer_open;
  o.on_peer_close = on_peer_close;
  o.user_data = s;
  /* A whole world in fragments, and a few more, per client. */
  size_t frags = bench_world_max_len(&s->w) / QRPC_DGRAM_FRAGMENT_SIZE + 1;
  if (o.endpoint.conn.datagram_queue_len < 4 * frags)
    o.endpoint.conn.datagram_queue_len = 4 * frags;
  qrpc_loop *loop;
  int status = 1;
  if (bench_server_start(prog, &c, &o, &loop, &s->srv) == 0) {
    if (start_ticks(s, loop) == 0)
      status = bench_server_serve(prog, loop, s->srv, &c);
    double cpu = bench_cpu_s();
    if (s->tick_ev != NULL) event_free(s->tick_ev);
    if (status == 0) report(s, cpu);
    bench_server_stop(&c, loop, s->srv);
  }
  while (s->npeers > 0) free(s->peers[--s->npeers]);
  free(s->peers);
  free(s->buf);
  free(s);
  return status;
}
