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
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "game_wire.h"
#include "report.h"
#include "server_common.h"
#include "world.h"

#define MAX_TICK_HZ 10000
#define WORLD_MAX_WORKERS 256
#define WORLD_CHANNEL qrpc_bench_Game_World_METHOD_ID

typedef struct world_peer {
  qrpc_peer *peer;
  size_t idx;
} world_peer;

typedef struct world_server world_server;

/* One worker's share (--workers): its peers, its tick timer and its own
 * snapshots, all used on its thread only. Each worker ticks the same
 * world (world.h computes it from the tick), for its own connections. */
typedef struct world_worker {
  world_server *s;
  size_t idx;
  qrpc_loop *loop;
  qrpc_timer *timer;
  world_peer **peers;
  size_t npeers, cap_peers;
  uint8_t *buf;
  uint64_t ticks, conns, encodings, sends, deferred, refused_full;
  uint64_t refused_other;
  uint64_t first_tick_ns, last_tick_ns;
  qrpc_dgram_stats st; /* of peers gone, then of all when stopped */
  int stopped;
} world_worker;

struct world_server {
  const char *prog;
  bench_world w;
  uint64_t tick_hz;
  int delta;
  qrpc_server *srv;
  world_worker *wk;
  size_t nworkers;
  pthread_mutex_t mu; /* stopping: workers report in */
  pthread_cond_t cv;
  size_t stopped;
};

static void add_stats(qrpc_dgram_stats *a, const qrpc_dgram_stats *b) {
  a->bytes_sent += b->bytes_sent;
  a->snap_full_sent += b->snap_full_sent;
  a->snap_delta_sent += b->snap_delta_sent;
  a->lost += b->lost;
  a->dropped_aged += b->dropped_aged;
}

/* The worker whose thread runs peer's handlers. */
static world_worker *worker_of(world_server *s, qrpc_peer *peer) {
  qrpc_loop *l = qrpc_peer_loop(peer);
  for (size_t i = 0; i < s->nworkers; i++)
    if (s->wk[i].loop == l) return &s->wk[i];
  return NULL;
}

static void on_peer_open(qrpc_peer *peer, void *user_data) {
  world_worker *ww = worker_of(user_data, peer);
  if (ww == NULL) return;
  if (ww->npeers == ww->cap_peers) {
    size_t cap = ww->cap_peers ? ww->cap_peers * 2 : 64;
    world_peer **v = realloc(ww->peers, cap * sizeof(*v));
    if (v == NULL) return; /* this client gets no ticks */
    ww->peers = v;
    ww->cap_peers = cap;
  }
  world_peer *wp = calloc(1, sizeof(*wp));
  if (wp == NULL) return;
  wp->peer = peer;
  wp->idx = ww->npeers;
  ww->peers[ww->npeers++] = wp;
  qrpc_peer_set_user_data(peer, wp);
  ww->conns++;
}

static void on_peer_close(qrpc_peer *peer, void *user_data) {
  world_worker *ww = worker_of(user_data, peer);
  world_peer *wp = qrpc_peer_user_data(peer);
  if (ww == NULL || wp == NULL) return;
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(peer, WORLD_CHANNEL, &st);
  add_stats(&ww->st, &st);
  qrpc_peer_set_user_data(peer, NULL);
  world_peer *last = ww->peers[--ww->npeers];
  ww->peers[wp->idx] = last;
  last->idx = wp->idx;
  free(wp);
}

static void on_tick(qrpc_timer *timer, void *arg) {
  world_worker *ww = arg;
  world_server *s = ww->s;
  (void)timer;
  uint64_t now = bench_now_ns();
  uint64_t tick = ++ww->ticks;
  if (tick == 1) ww->first_tick_ns = now;
  ww->last_tick_ns = now;
  if (ww->npeers == 0) return;
  size_t len = bench_world_encode(&s->w, tick, ww->buf);
  qrpc_snapshot *snap;
  int rc = qrpc_server_snapshot_new(s->srv, WORLD_CHANNEL, tick, ww->buf, len,
                                    &snap);
  if (rc != 0) {
    ww->refused_other += ww->npeers;
    return;
  }
  for (size_t i = 0; i < ww->npeers; i++) {
    rc = qrpc_peer_send_snapshot(ww->peers[i]->peer, snap);
    if (rc == 0)
      ww->sends++;
    else if (rc == QRPC_EAGAIN)
      ww->deferred++;
    else if (rc == QRPC_ENOBUFS)
      ww->refused_full++;
    else
      ww->refused_other++;
  }
  ww->encodings += qrpc_snapshot_encodings(snap);
  qrpc_snapshot_free(snap);
}

/* On the worker's thread: starts its ticks. */
static void worker_start(qrpc_loop *loop, void *arg) {
  world_worker *ww = arg;
  uint64_t period_ns = UINT64_C(1000000000) / ww->s->tick_hz;
  if (qrpc_timer_new(loop, on_tick, ww, &ww->timer) != 0 ||
      qrpc_timer_start(ww->timer, period_ns, period_ns) != 0)
    fprintf(stderr, "%s: worker %zu cannot start its tick timer\n", ww->s->prog,
            ww->idx);
}

/* On the worker's thread: stops its ticks and takes its peers' figures,
 * so the report reads nothing a running worker writes. */
static void worker_stop(qrpc_loop *loop, void *arg) {
  world_worker *ww = arg;
  (void)loop;
  qrpc_timer_free(ww->timer);
  ww->timer = NULL;
  for (size_t i = 0; i < ww->npeers; i++) {
    qrpc_dgram_stats p;
    qrpc_peer_dgram_stats(ww->peers[i]->peer, WORLD_CHANNEL, &p);
    add_stats(&ww->st, &p);
  }
  world_server *s = ww->s;
  pthread_mutex_lock(&s->mu);
  ww->stopped = 1;
  s->stopped++;
  pthread_cond_signal(&s->cv);
  pthread_mutex_unlock(&s->mu);
}

static void stop_workers(world_server *s) {
  size_t posted = 0;
  for (size_t i = 0; i < s->nworkers; i++) {
    if (i == 0)
      worker_stop(s->wk[0].loop, &s->wk[0]);
    else if (qrpc_loop_post(s->wk[i].loop, worker_stop, &s->wk[i]) == 0)
      posted++;
  }
  pthread_mutex_lock(&s->mu);
  while (s->stopped < 1 + posted) pthread_cond_wait(&s->cv, &s->mu);
  pthread_mutex_unlock(&s->mu);
}

static void report(const world_server *s, double cpu) {
  qrpc_dgram_stats st = {0};
  uint64_t ticks = 0, conns = 0, encodings = 0, sends = 0, deferred = 0;
  uint64_t full = 0, other = 0;
  double hz = 0;
  for (size_t i = 0; i < s->nworkers; i++) {
    const world_worker *ww = &s->wk[i];
    add_stats(&st, &ww->st);
    if (ww->ticks > ticks) ticks = ww->ticks;
    conns += ww->conns;
    encodings += ww->encodings;
    sends += ww->sends;
    deferred += ww->deferred;
    full += ww->refused_full;
    other += ww->refused_other;
    double span = (double)(ww->last_tick_ns - ww->first_tick_ns) / 1e9;
    if (i == 0 && span > 0) hz = (double)(ww->ticks - 1) / span;
  }
  bench_report r;
  bench_report_init(&r);
  bench_report_uint(&r, "server_ticks", ticks);
  bench_report_num(&r, "server_tick_hz", hz, 1);
  bench_report_uint(&r, "server_workers", s->nworkers);
  bench_report_uint(&r, "server_world_bytes",
                    bench_world_encode(&s->w, 1, s->wk[0].buf));
  bench_report_uint(&r, "server_sends", sends);
  bench_report_uint(&r, "server_snap_full", st.snap_full_sent);
  bench_report_uint(&r, "server_snap_delta", st.snap_delta_sent);
  bench_report_uint(&r, "server_snap_deferred", deferred);
  bench_report_num(&r, "server_encodings_per_tick",
                   ticks ? (double)encodings / (double)ticks : 0, 2);
  bench_report_uint(&r, "server_bytes_sent", st.bytes_sent);
  bench_report_uint(&r, "server_dgrams_lost", st.lost);
  bench_report_uint(&r, "server_dgrams_aged", st.dropped_aged);
  bench_report_uint(&r, "server_refused_full", full);
  bench_report_uint(&r, "server_refused_other", other);
  bench_report_uint(&r, "server_conns", conns);
  bench_report_num(&r, "server_cpu_s", cpu, 2);
  bench_report_num(&r, "server_cpu_us_per_tick",
                   ticks ? cpu * 1e6 / (double)ticks : 0, 1);
  bench_report_print_result(&r);
}

static int start_ticks(world_server *s) {
  qrpc_dgram_opts o;
  bench_world_dgram_opts(&s->w, s->delta ? WORLD_RING : 1, &o);
  int rc = qrpc_server_register_dgram(s->srv, WORLD_CHANNEL, &o, NULL, NULL);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot register the world channel: %s\n", s->prog,
            qrpc_strerror(rc));
    return -1;
  }
  s->nworkers = qrpc_server_workers(s->srv);
  for (size_t i = 0; i < s->nworkers; i++) {
    world_worker *ww = &s->wk[i];
    ww->s = s;
    ww->idx = i;
    ww->loop = qrpc_server_worker_loop(s->srv, i);
    if (!(ww->buf = malloc(bench_world_max_len(&s->w)))) {
      fprintf(stderr, "%s: out of memory for the world\n", s->prog);
      return -1;
    }
    /* Worker 0 is this thread; the others start with worker 0's loop. */
    if (i == 0)
      worker_start(ww->loop, ww);
    else if (qrpc_loop_post(ww->loop, worker_start, ww) != 0)
      rc = -1;
    if (ww->timer == NULL && i == 0) rc = -1;
  }
  if (rc != 0) fprintf(stderr, "%s: cannot start the ticks\n", s->prog);
  return rc;
}

static void free_workers(world_server *s) {
  for (size_t i = 0; s->wk && i < WORLD_MAX_WORKERS; i++) {
    world_worker *ww = &s->wk[i];
    while (ww->npeers > 0) free(ww->peers[--ww->npeers]);
    free(ww->peers);
    free(ww->buf);
  }
  free(s->wk);
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
  uint64_t workers = 1;
  flags[n++] = (bench_flag){"--workers",
                            BENCH_FLAG_UINT,
                            &workers,
                            0,
                            WORLD_MAX_WORKERS,
                            NULL,
                            "N",
                            "worker threads serving the port, each ticking "
                            "for its own clients (qrpc_server_opts.workers; "
                            "0: one per CPU)",
                            0,
                            0};
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
  s->wk = calloc(WORLD_MAX_WORKERS, sizeof(*s->wk));
  if (s->wk == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    free(s);
    return 1;
  }
  pthread_mutex_init(&s->mu, NULL);
  pthread_cond_init(&s->cv, NULL);
  c.precise_timers = 1;
  qrpc_server_opts o;
  bench_server_opts(&c, &o);
  o.on_peer_open = on_peer_open;
  o.on_peer_close = on_peer_close;
  o.user_data = s;
  o.workers = (size_t)workers;
  /* A whole world in fragments, and a few more, per client. */
  size_t frags = bench_world_max_len(&s->w) / QRPC_DGRAM_FRAGMENT_SIZE + 1;
  if (o.endpoint.conn.datagram_queue_len < 4 * frags)
    o.endpoint.conn.datagram_queue_len = 4 * frags;
  qrpc_loop *loop;
  int status = 1;
  if (bench_server_start(prog, &c, &o, &loop, &s->srv) == 0) {
    if (start_ticks(s) == 0)
      status = bench_server_serve(prog, loop, s->srv, &c);
    stop_workers(s);
    double cpu = bench_cpu_s();
    if (status == 0) report(s, cpu);
    bench_server_stop(&c, loop, s->srv);
  }
  pthread_cond_destroy(&s->cv);
  pthread_mutex_destroy(&s->mu);
  free_workers(s);
  free(s);
  return status;
}
