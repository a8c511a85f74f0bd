/*
 * qrpc-bench server game: keeps the latest state of every client (channel
 * Up) and, every tick, sends all of them to every client (channel Down),
 * packed into as few datagrams as fit the smallest room among the
 * clients; each datagram is encoded once and the same bytes are queued
 * to every client. Layouts: game_wire.h.
 *
 * It measures the uplink itself (arrival of states sent in the clients'
 * measured window: their rate and delay) and reports it in its RESULT
 * line on SIGTERM; it also stamps each state's arrival time into it, so
 * clients can measure the uplink delay of their own states.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "game_wire.h"
#include "hist.h"
#include "report.h"
#include "server_common.h"
#include "world.h"

#define MAX_TICK_HZ 10000
/* A tick older than this waits no longer in a client's queue: state that
 * late is worth less than the next tick. */
#define DOWN_MAX_AGE_MS 100
/* The largest datagram payload QUIC can carry bounds the tick buffer. */
#define TICK_BUF_MAX 65535

typedef struct game_peer {
  qrpc_peer *peer;
  size_t idx; /* in the server's array */
  uint16_t len;
  uint8_t state[GAME_STATE_MAX];
} game_peer;

typedef struct game_server {
  const char *prog;
  uint64_t tick_hz;
  qrpc_server *srv;
  struct event *tick_ev;
  game_peer **peers;
  size_t npeers, cap_peers;
  qrpc_peer **receivers;
  size_t cap_receivers;
  uint8_t buf[TICK_BUF_MAX];

  uint64_t recv, malformed, conns;
  uint64_t recv_measured, first_measured_ns, last_measured_ns;
  bench_hist up;
  uint64_t ticks, first_tick_ns, last_tick_ns;
  uint64_t dgrams, sends, refused_full, refused_other, too_large;
} game_server;

/* ---- Clients ------------------------------------------------------------- */

static void on_peer_open(qrpc_peer *peer, void *user_data) {
  game_server *s = user_data;
  if (s->npeers == s->cap_peers) {
    size_t cap = s->cap_peers ? s->cap_peers * 2 : 64;
    game_peer **v = realloc(s->peers, cap * sizeof(*v));
    qrpc_peer **r = realloc(s->receivers, cap * sizeof(*r));
    if (v != NULL) s->peers = v;
    if (r != NULL) s->receivers = r;
    if (v == NULL || r == NULL) return; /* this client gets no ticks */
    s->cap_peers = s->cap_receivers = cap;
  }
  game_peer *gp = calloc(1, sizeof(*gp));
  if (gp == NULL) return;
  gp->peer = peer;
  gp->idx = s->npeers;
  s->peers[s->npeers++] = gp;
  qrpc_peer_set_user_data(peer, gp);
  s->conns++;
}

static void on_peer_close(qrpc_peer *peer, void *user_data) {
  game_server *s = user_data;
  game_peer *gp = qrpc_peer_user_data(peer);
  if (gp == NULL) return;
  qrpc_peer_set_user_data(peer, NULL);
  game_peer *last = s->peers[--s->npeers];
  s->peers[gp->idx] = last;
  last->idx = gp->idx;
  free(gp);
}

static void on_up(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                  const uint8_t *payload, size_t len, void *user_data) {
  game_server *s = user_data;
  game_peer *gp = qrpc_peer_user_data(peer);
  (void)channel, (void)seq;
  if (gp == NULL || len < GAME_STATE_MIN || len > GAME_STATE_MAX) {
    s->malformed++;
    return;
  }
  uint64_t now = bench_now_ns();
  memcpy(gp->state, payload, len);
  gp->len = (uint16_t)len;
  game_put64(gp->state + GAME_ST_RECV_NS, now);
  s->recv++;
  if (!(game_get32(payload + GAME_ST_FLAGS) & GAME_FLAG_MEASURING)) return;
  uint64_t sent = game_get64(payload + GAME_ST_SEND_NS);
  if (sent <= now) bench_hist_add(&s->up, now - sent);
  if (s->recv_measured++ == 0) s->first_measured_ns = now;
  s->last_measured_ns = now;
}

/* ---- Ticks --------------------------------------------------------------- */

/* The clients that take datagrams now, and the smallest room among them:
 * one encoding goes to all, so it must fit every one. */
static size_t gather_receivers(game_server *s, size_t *room) {
  size_t n = 0;
  *room = sizeof(s->buf);
  for (size_t i = 0; i < s->npeers; i++) {
    size_t r =
        qrpc_peer_max_dgram_payload(s->peers[i]->peer, GAME_DOWN_CHANNEL);
    if (r == 0) continue;
    s->receivers[n++] = s->peers[i]->peer;
    if (r < *room) *room = r;
  }
  return n;
}

/* Whether state i goes out this tick: it has arrived and fits a datagram
 * on its own. */
static int sendable(game_server *s, const game_peer *gp, size_t room) {
  (void)s;
  return gp->len > 0 &&
         (size_t)GAME_TICK_HEADER + GAME_TICK_STATE_PREFIX + gp->len <= room;
}

static void send_part(game_server *s, size_t len, size_t nrecv) {
  qrpc_dgram *d = NULL;
  int rc = qrpc_server_dgram_encode(s->srv, GAME_DOWN_CHANNEL, s->buf, len, &d);
  if (rc != 0) {
    s->refused_other += nrecv;
    return;
  }
  s->dgrams++;
  for (size_t i = 0; i < nrecv; i++) {
    rc = qrpc_peer_send_encoded(s->receivers[i], d);
    if (rc == 0)
      s->sends++;
    else if (rc == QRPC_ENOBUFS)
      s->refused_full++;
    else
      s->refused_other++;
  }
  qrpc_dgram_free(d);
}

static void broadcast(game_server *s, uint64_t tick_ns) {
  size_t room;
  size_t nrecv = gather_receivers(s, &room);
  if (nrecv == 0) return;
  /* Count the states and the parts first: every part carries both. */
  uint32_t total = 0;
  uint16_t parts = 1;
  size_t used = GAME_TICK_HEADER;
  for (size_t i = 0; i < s->npeers; i++) {
    const game_peer *gp = s->peers[i];
    if (!sendable(s, gp, room)) {
      if (gp->len > 0) s->too_large++;
      continue;
    }
    size_t need = GAME_TICK_STATE_PREFIX + gp->len;
    if (used + need > room) {
      parts++;
      used = GAME_TICK_HEADER;
    }
    used += need;
    total++;
  }
  game_put64(s->buf + GAME_TK_TICK, s->ticks);
  game_put64(s->buf + GAME_TK_TICK_NS, tick_ns);
  game_put32(s->buf + GAME_TK_TOTAL, total);
  game_put16(s->buf + GAME_TK_PARTS, parts);
  uint16_t part = 0, count = 0;
  used = GAME_TICK_HEADER;
  for (size_t i = 0; i < s->npeers; i++) {
    const game_peer *gp = s->peers[i];
    if (!sendable(s, gp, room)) continue;
    size_t need = GAME_TICK_STATE_PREFIX + gp->len;
    if (used + need > room) {
      game_put16(s->buf + GAME_TK_PART, part++);
      game_put16(s->buf + GAME_TK_COUNT, count);
      send_part(s, used, nrecv);
      used = GAME_TICK_HEADER;
      count = 0;
    }
    game_put16(s->buf + used, gp->len);
    memcpy(s->buf + used + GAME_TICK_STATE_PREFIX, gp->state, gp->len);
    used += need;
    count++;
  }
  game_put16(s->buf + GAME_TK_PART, part);
  game_put16(s->buf + GAME_TK_COUNT, count);
  send_part(s, used, nrecv);
}

static void on_tick(evutil_socket_t fd, short what, void *arg) {
  game_server *s = arg;
  (void)fd, (void)what;
  uint64_t now = bench_now_ns();
  if (s->ticks++ == 0) s->first_tick_ns = now;
  s->last_tick_ns = now;
  broadcast(s, now);
}

/* ---- Main ---------------------------------------------------------------- */

static void report(const game_server *s, double cpu) {
  double span = (double)(s->last_measured_ns - s->first_measured_ns) / 1e9;
  double tspan = (double)(s->last_tick_ns - s->first_tick_ns) / 1e9;
  bench_report r;
  bench_report_init(&r);
  bench_report_num(&r, "server_recv_per_s",
                   span > 0 ? (double)s->recv_measured / span : 0, 1);
  bench_report_num(&r, "server_up_p50_us",
                   bench_hist_quantile(&s->up, 0.50) / 1e3, 1);
  bench_report_num(&r, "server_up_p99_us",
                   bench_hist_quantile(&s->up, 0.99) / 1e3, 1);
  bench_report_uint(&r, "server_recv", s->recv);
  bench_report_uint(&r, "server_recv_measured", s->recv_measured);
  bench_report_uint(&r, "server_malformed", s->malformed);
  bench_report_uint(&r, "server_ticks", s->ticks);
  bench_report_num(&r, "server_tick_hz",
                   tspan > 0 ? (double)(s->ticks - 1) / tspan : 0, 1);
  bench_report_uint(&r, "server_dgrams", s->dgrams);
  bench_report_uint(&r, "server_sends", s->sends);
  bench_report_uint(&r, "server_refused_full", s->refused_full);
  bench_report_uint(&r, "server_refused_other", s->refused_other);
  bench_report_uint(&r, "server_too_large", s->too_large);
  bench_report_uint(&r, "server_conns", s->conns);
  bench_report_num(&r, "server_cpu_s", cpu, 2);
  bench_report_print_result(&r);
}

static int start_ticks(game_server *s, qrpc_loop *loop) {
  qrpc_dgram_opts up, down;
  qrpc_dgram_opts_default(&up);
  qrpc_dgram_opts_default(&down);
  down.max_age_ms = DOWN_MAX_AGE_MS;
  int rc = qrpc_server_register_dgram(s->srv, GAME_UP_CHANNEL, &up, on_up, s);
  if (rc == 0)
    rc = qrpc_server_register_dgram(s->srv, GAME_DOWN_CHANNEL, &down, NULL,
                                    NULL);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot register the game channels: %s\n", s->prog,
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

int bench_server_game(const char *prog, int argc, char **argv) {
  if (bench_world_wanted(argc, argv))
    return bench_server_world(prog, argc, argv);
  game_server *s = calloc(1, sizeof(*s));
  if (s == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return 1;
  }
  s->prog = prog;
  s->tick_hz = 60;
  bench_hist_reset(&s->up);
  bench_server_common c;
  bench_flag flags[BENCH_MAX_FLAGS];
  size_t n = bench_server_common_flags(flags, 0, &c);
  flags[n++] = (bench_flag){
      "--tick-hz", BENCH_FLAG_UINT,    &s->tick_hz, 1, MAX_TICK_HZ, NULL,
      "HZ",        "ticks per second", 1,           0};
  int rc = bench_args_parse(
      prog, "--port P --tick-hz HZ [--tls-cert PEM --tls-key PEM] [flags]",
      "Every tick sends every client the latest state of all clients (as\n"
      "few datagrams as fit, each encoded once for all). Prints READY on\n"
      "stdout once it accepts connections; on SIGTERM or SIGINT it prints\n"
      "RESULT with server_recv_per_s (states from the clients' measured\n"
      "windows per second) and its other counters, and exits.",
      flags, n, argc, argv);
  if (rc != 0) {
    free(s);
    return rc == 1 ? 0 : 2;
  }
  c.precise_timers = 1;
  qrpc_server_opts o;
  bench_server_opts(&c, &o);
  o.on_peer_open = on_peer_open;
  o.on_peer_close = on_peer_close;
  o.user_data = s;
  qrpc_loop *loop;
  int status = 1;
  if (bench_server_start(prog, &c, &o, &loop, &s->srv) != 0) {
    free(s);
    return 1;
  }
  if (start_ticks(s, loop) == 0)
    status = bench_server_serve(prog, loop, s->srv, &c);
  double cpu = bench_cpu_s();
  if (s->tick_ev != NULL) event_free(s->tick_ev);
  bench_server_stop(&c, loop, s->srv);
  if (status == 0) report(s, cpu);
  /* Whoever the free closed without on_peer_close. */
  while (s->npeers > 0) free(s->peers[--s->npeers]);
  free(s->peers);
  free(s->receivers);
  free(s);
  return status;
}
