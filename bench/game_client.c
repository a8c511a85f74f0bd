/*
 * qrpc-bench client game: --clients simulated players in one process,
 * each on its own connection, sending a --size byte state every 1/--hz s
 * on channel Up (--hz 0: as fast as the datagram queue takes them) and
 * receiving the server's ticks on channel Down. Layouts: game_wire.h.
 *
 * Measured in the window, summed over the clients:
 * - recv_per_s: states delivered (a tick datagram with 11 states is 11);
 * - sent_per_s: states the Up queue accepted;
 * - down_loss_pct: states of the ticks the client saw begin in the window
 *   that never arrived (a tick missing altogether counts with the size
 *   of the next one);
 * - down_p50_us, down_p99_us: tick datagram arrival minus the tick's
 *   start on the server;
 * - up_p50_us, up_p99_us: for the client's own states coming back in a
 *   tick, the server's arrival stamp minus the send time (each state
 *   counts once, the first time it comes back).
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "client_common.h"
#include "game_wire.h"
#include "hist.h"
#include "runner.h"
#include "world.h"

#define MAX_CLIENTS 10000
#define MAX_HZ 10000
/* --hz 0: datagrams each client queues per loop turn at most, so every
 * client gets its turn and the loop still reads. */
#define FLOOD_BURST 16
#define SETUP_BASE_S 20.0
#define SETUP_PER_CLIENT_S 0.01

typedef struct game_opts {
  bench_client_common c;
  uint64_t clients;
  uint64_t size;
  uint64_t hz;
} game_opts;

typedef struct game_bench game_bench;

typedef struct sim {
  game_bench *g;
  size_t idx;
  qrpc_client *cli;
  int connected;
  uint32_t id;
  uint64_t seq;
  uint64_t last_own_seq; /* the newest own state seen in a tick */
  /* The newest tick seen, for loss. */
  int have_tick;
  int tick_counted; /* it began in the window */
  uint64_t tick;
  uint32_t tick_total, tick_got;
  uint8_t state[GAME_STATE_MAX];
} sim;

struct game_bench {
  const char *prog;
  game_opts o;
  bench_client_env env;
  bench_runner run;
  sim *sims;
  size_t nsims, connected;
  int started, stopping;
  struct event *send_ev;

  uint64_t delivered_total, sent_total, refused_total;
  uint64_t delivered, sent, expected, received, malformed;
  bench_hist up, down;
  bench_rate rate;
  char first_error[200];
  uint64_t errors;
};

static void count_error(game_bench *g, const char *what) {
  g->errors++;
  if (g->first_error[0] == '\0')
    snprintf(g->first_error, sizeof(g->first_error), "%s", what);
}

/* ---- Sending ------------------------------------------------------------- */

/* Queues one state of c. Returns the send's result. */
static int send_state(game_bench *g, sim *c, qrpc_peer *peer, uint64_t now) {
  uint32_t flags = bench_runner_measuring(&g->run) ? GAME_FLAG_MEASURING : 0;
  game_put32(c->state + GAME_ST_FLAGS, flags);
  game_put64(c->state + GAME_ST_SEQ, c->seq + 1);
  game_put64(c->state + GAME_ST_SEND_NS, now);
  int rc =
      qrpc_peer_send_dgram(peer, GAME_UP_CHANNEL, c->state, (size_t)g->o.size);
  if (rc == 0) {
    c->seq++;
    g->sent_total++;
    if (flags) g->sent++;
  } else {
    g->refused_total++;
  }
  return rc;
}

static void on_send(evutil_socket_t fd, short what, void *arg) {
  game_bench *g = arg;
  (void)fd, (void)what;
  uint64_t now = bench_now_ns();
  for (size_t i = 0; i < g->nsims; i++) {
    sim *c = &g->sims[i];
    qrpc_peer *peer = qrpc_client_peer(c->cli);
    if (peer == NULL) continue;
    if (g->o.hz > 0) {
      send_state(g, c, peer, now);
      continue;
    }
    for (int k = 0; k < FLOOD_BURST; k++)
      if (send_state(g, c, peer, bench_now_ns()) != 0) break;
  }
  if (g->o.hz == 0) {
    /* A zero timeout runs again after the loop has polled its sockets. */
    struct timeval zero = {0, 0};
    evtimer_add(g->send_ev, &zero);
  }
}

static int start_sending(game_bench *g) {
  struct event_base *base = qrpc_loop_base(g->env.loop);
  if (g->o.hz == 0) {
    g->send_ev = evtimer_new(base, on_send, g);
    struct timeval zero = {0, 0};
    return g->send_ev == NULL || evtimer_add(g->send_ev, &zero) != 0 ? -1 : 0;
  }
  uint64_t period_us = 1000000 / g->o.hz;
  struct timeval tv = {(time_t)(period_us / 1000000),
                       (suseconds_t)(period_us % 1000000)};
  g->send_ev = event_new(base, -1, EV_PERSIST, on_send, g);
  return g->send_ev == NULL || event_add(g->send_ev, &tv) != 0 ? -1 : 0;
}

/* ---- Receiving ----------------------------------------------------------- */

/* Loss accounting: a tick's states are settled when a newer tick shows
 * up; the ticks skipped in between count as wholly lost. */
static void track_tick(game_bench *g, sim *c, uint64_t tick, uint32_t total,
                       uint32_t count) {
  if (c->have_tick && tick == c->tick) {
    c->tick_got += count;
    return;
  }
  if (c->have_tick && tick < c->tick) return; /* late: counted as lost */
  if (c->have_tick && c->tick_counted && bench_runner_measuring(&g->run)) {
    g->expected += c->tick_total;
    g->received += c->tick_got < c->tick_total ? c->tick_got : c->tick_total;
    g->expected += (tick - c->tick - 1) * (uint64_t)total;
  }
  c->have_tick = 1;
  c->tick_counted = bench_runner_measuring(&g->run);
  c->tick = tick;
  c->tick_total = total;
  c->tick_got = count;
}

/* Walks the states of a tick: checks their lengths, and takes the uplink
 * delay of the client's own state. Returns -1 when malformed. */
static int scan_states(game_bench *g, sim *c, const uint8_t *p, size_t len,
                       uint32_t count) {
  size_t off = GAME_TICK_HEADER;
  for (uint32_t i = 0; i < count; i++) {
    if (off + GAME_TICK_STATE_PREFIX > len) return -1;
    size_t n = game_get16(p + off);
    off += GAME_TICK_STATE_PREFIX;
    if (n < GAME_STATE_MIN || off + n > len) return -1;
    const uint8_t *st = p + off;
    off += n;
    if (game_get32(st + GAME_ST_ID) != c->id) continue;
    uint64_t seq = game_get64(st + GAME_ST_SEQ);
    if (seq <= c->last_own_seq) continue;
    c->last_own_seq = seq;
    uint64_t sent = game_get64(st + GAME_ST_SEND_NS);
    uint64_t arrived = game_get64(st + GAME_ST_RECV_NS);
    if ((game_get32(st + GAME_ST_FLAGS) & GAME_FLAG_MEASURING) &&
        bench_runner_measuring(&g->run) && arrived >= sent)
      bench_hist_add(&g->up, arrived - sent);
  }
  return 0;
}

static void on_down(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                    const uint8_t *p, size_t len, void *ud) {
  sim *c = ud;
  game_bench *g = c->g;
  (void)peer, (void)channel, (void)seq;
  if (g->stopping) return;
  uint64_t now = bench_now_ns();
  if (len < GAME_TICK_HEADER) {
    g->malformed++;
    return;
  }
  uint32_t count = game_get16(p + GAME_TK_COUNT);
  if (scan_states(g, c, p, len, count) != 0) {
    g->malformed++;
    return;
  }
  uint64_t tick_ns = game_get64(p + GAME_TK_TICK_NS);
  g->delivered_total += count;
  track_tick(g, c, game_get64(p + GAME_TK_TICK), game_get32(p + GAME_TK_TOTAL),
             count);
  if (!bench_runner_measuring(&g->run)) return;
  g->delivered += count;
  if (tick_ns <= now) bench_hist_add(&g->down, now - tick_ns);
}

/* ---- Connections --------------------------------------------------------- */

static void on_connect(qrpc_client *cli, qrpc_peer *peer, void *ud) {
  sim *c = ud;
  game_bench *g = c->g;
  (void)cli, (void)peer;
  if (c->connected) return;
  c->connected = 1;
  g->connected++;
  if (g->started || g->connected < g->nsims) return;
  g->started = 1;
  if (start_sending(g) != 0) {
    bench_runner_fail(&g->run, "cannot start the send timer");
    return;
  }
  bench_runner_ready(&g->run);
  bench_rate_next(&g->rate, 0);
}

static void on_disconnect(qrpc_client *cli, const qrpc_close_info *info,
                          void *ud) {
  sim *c = ud;
  game_bench *g = c->g;
  (void)cli;
  c->connected = 0;
  g->connected--;
  if (g->stopping) return;
  char what[200];
  snprintf(what, sizeof(what), "client %zu lost its connection: %s", c->idx + 1,
           bench_close_reason(info));
  count_error(g, what);
}

static int open_clients(game_bench *g) {
  qrpc_client_opts co;
  bench_client_opts(&g->o.c, &co);
  co.conn.via = g->env.shared;
  co.on_connect = on_connect;
  co.on_disconnect = on_disconnect;
  qrpc_dgram_opts down;
  qrpc_dgram_opts_default(&down);
  /* Every part of a tick counts; loopback hardly reorders anyway. */
  down.latest_only = 0;
  uint32_t base = ((uint32_t)getpid() << 16) ^ (uint32_t)bench_now_ns();
  for (size_t i = 0; i < g->nsims; i++) {
    sim *c = &g->sims[i];
    c->g = g;
    c->idx = i;
    c->id = base + (uint32_t)i;
    game_put32(c->state + GAME_ST_ID, c->id);
    co.user_data = c;
    int rc =
        qrpc_client_new(g->env.loop, g->env.addr, g->env.tls, &co, &c->cli);
    if (rc == 0)
      rc = qrpc_client_register_dgram(c->cli, GAME_DOWN_CHANNEL, &down, on_down,
                                      c);
    if (rc != 0) {
      fprintf(stderr, "%s: cannot create client %zu for %s: %s\n", g->prog,
              i + 1, g->env.addr, qrpc_strerror(rc));
      return 1;
    }
  }
  return 0;
}

/* ---- The run ------------------------------------------------------------- */

static void on_measure(bench_runner *r, void *ud) {
  game_bench *g = ud;
  (void)r;
  g->delivered = g->sent = g->expected = g->received = 0;
  bench_hist_reset(&g->up);
  bench_hist_reset(&g->down);
}

static void on_progress(bench_runner *r, double t, void *ud) {
  game_bench *g = ud;
  double rate = bench_rate_next(&g->rate, g->delivered_total);
  fprintf(stderr,
          "%s: %5.1f s %-7s %12.0f states/s received, %llu sent, %llu "
          "refused, errors %llu\n",
          g->prog, t, bench_runner_measuring(r) ? "measure" : "warmup", rate,
          (unsigned long long)g->sent_total,
          (unsigned long long)g->refused_total, (unsigned long long)g->errors);
}

static void report(game_bench *g) {
  const game_opts *o = &g->o;
  double secs = bench_runner_measured_s(&g->run);
  double recv = secs > 0 ? (double)g->delivered / secs : 0;
  double sent = secs > 0 ? (double)g->sent / secs : 0;
  double loss = g->expected > 0 ? 100.0 * (double)(g->expected - g->received) /
                                      (double)g->expected
                                : 0;
  double up50 = bench_hist_quantile(&g->up, 0.50) / 1e3;
  double up99 = bench_hist_quantile(&g->up, 0.99) / 1e3;
  double dn50 = bench_hist_quantile(&g->down, 0.50) / 1e3;
  double dn99 = bench_hist_quantile(&g->down, 0.99) / 1e3;
  bench_report r;
  bench_report_init(&r);
  bench_report_common(&r, "game", &o->c);
  bench_report_param_uint(&r, "clients", o->clients);
  bench_report_param_uint(&r, "size", o->size);
  bench_report_param_uint(&r, "hz", o->hz);
  bench_report_param_uint(&r, "states_delivered", g->delivered);
  bench_report_param_uint(&r, "malformed", g->malformed);
  bench_report_param_uint(&r, "errors", g->errors);
  bench_report_param_num(&r, "measured_s", secs);
  bench_report_param_num(&r, "client_cpu_s", bench_cpu_s());
  bench_report_num(&r, "recv_per_s", recv, 1);
  bench_report_num(&r, "sent_per_s", sent, 1);
  bench_report_num(&r, "down_loss_pct", loss, 3);
  bench_report_num(&r, "up_p50_us", up50, 1);
  bench_report_num(&r, "up_p99_us", up99, 1);
  bench_report_num(&r, "down_p50_us", dn50, 1);
  bench_report_num(&r, "down_p99_us", dn99, 1);
  fprintf(stderr,
          "%s: %llu clients, %llu B states at %llu Hz%s: %.1f states/s "
          "received, %.1f sent, down loss %.3f %%, up p50 %.1f us p99 %.1f "
          "us, down p50 %.1f us p99 %.1f us over %.2f s\n",
          g->prog, (unsigned long long)o->clients, (unsigned long long)o->size,
          (unsigned long long)o->hz, o->hz == 0 ? " (flood)" : "", recv, sent,
          loss, up50, up99, dn50, dn99, secs);
  if (g->errors > 0)
    fprintf(stderr, "%s: %llu errors; the first: %s\n", g->prog,
            (unsigned long long)g->errors, g->first_error);
  bench_report_print(&r, o->c.json);
}

static int parse(game_bench *g, int argc, char **argv) {
  game_opts *o = &g->o;
  bench_flag flags[BENCH_MAX_FLAGS];
  size_t n = bench_client_common_flags(flags, 0, &o->c);
  o->clients = 100;
  o->size = 100;
  o->hz = 60;
  const bench_flag own[] = {
      {"--clients", BENCH_FLAG_UINT, &o->clients, 1, MAX_CLIENTS, NULL, "N",
       "simulated players, one connection each", 0, 0},
      {"--size", BENCH_FLAG_UINT, &o->size, GAME_STATE_MIN, GAME_STATE_MAX,
       NULL, "BYTES", "bytes of each state", 0, 0},
      {"--hz", BENCH_FLAG_UINT, &o->hz, 0, MAX_HZ, NULL, "HZ",
       "states each client sends per second (0: as fast as it can)", 0, 0},
  };
  for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) flags[n++] = own[i];
  return bench_args_parse(
      g->prog, "--port P [--clients N] [--size BYTES] [--hz HZ] [flags]",
      "Plays against 'qrpc-bench server game'. Prints a summary on stderr\n"
      "and, as its last line on stdout, RESULT with recv_per_s, sent_per_s,\n"
      "down_loss_pct, up_p50_us, up_p99_us, down_p50_us, down_p99_us.",
      flags, n, argc, argv);
}

static void teardown(game_bench *g) {
  g->stopping = 1;
  for (size_t i = 0; g->sims && i < g->nsims; i++)
    qrpc_client_free(g->sims[i].cli);
  if (g->send_ev != NULL) event_free(g->send_ev);
  bench_runner_cleanup(&g->run);
  bench_client_env_cleanup(&g->env);
  free(g->sims);
}

int bench_client_game(const char *prog, int argc, char **argv) {
  if (bench_world_wanted(argc, argv))
    return bench_client_world(prog, argc, argv);
  game_bench *g = calloc(1, sizeof(*g));
  if (g == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return 1;
  }
  g->prog = prog;
  int rc = parse(g, argc, argv);
  if (rc != 0) {
    free(g);
    return rc == 1 ? 0 : 2;
  }
  bench_log_init(prog);
  bench_hist_reset(&g->up);
  bench_hist_reset(&g->down);
  int status = 1;
  g->nsims = (size_t)g->o.clients;
  if (bench_client_env_init(&g->env, prog, &g->o.c, g->o.clients + 64, 1) != 0)
    goto out;
  bench_runner_callbacks cbs = {.on_measure = on_measure,
                                .on_progress = on_progress};
  double setup = SETUP_BASE_S + SETUP_PER_CLIENT_S * (double)g->o.clients;
  if (bench_runner_init(&g->run, prog, g->env.loop, g->o.c.warmup_s,
                        g->o.c.duration_s, setup, &cbs, g) != 0)
    goto out;
  g->sims = calloc(g->nsims, sizeof(*g->sims));
  if (g->sims == NULL) {
    fprintf(stderr, "%s: out of memory for %zu clients\n", prog, g->nsims);
    goto out;
  }
  if (open_clients(g) != 0) goto out;
  if (bench_runner_run(&g->run) != 0) goto out;
  g->stopping = 1;
  report(g);
  status = 0;
out:
  teardown(g);
  free(g);
  return status;
}
