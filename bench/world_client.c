/*
 * qrpc-bench client game --entities N: --clients players in one process,
 * each on its own connection, receiving the world (world.h) on channel
 * World and checking every state against the world of its tick.
 *
 * Measured in the window, per client (averaged over the clients):
 * - down_bytes_per_s: datagram bytes that arrived on the channel;
 * - down_loss_pct: the share of ticks, from the first to the last that
 *   client got in the window, whose state never arrived whole;
 * - diverged_pct: the share of those ticks at which the client's world
 *   differed from the server's once the tick's update was due: every lost
 *   tick (the client still shows an older world), and every state that
 *   arrived but differs from the truth (wrong_states);
 * - down_p50_us, down_p99_us: a state's arrival minus the server's clock
 *   when it made the snapshot (one machine, one clock);
 * - clock_err_p50_us, clock_err_p99_us: how far the client's estimate of
 *   the server's clock (qrpc_peer_snapshot_clock()) is from the truth,
 *   which on one machine is an offset of 0.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_common.h"
#include "game_wire.h"
#include "hist.h"
#include "runner.h"
#include "world.h"

#define MAX_CLIENTS 10000
#define WORLD_CHANNEL qrpc_bench_Game_World_METHOD_ID
/* Ticks whose true world is kept for checking: more than a state can lag. */
#define TRUTH_SLOTS 128
#define SETUP_BASE_S 20.0
#define SETUP_PER_CLIENT_S 0.01

typedef struct world_bench world_bench;

typedef struct wsim {
  world_bench *g;
  size_t idx;
  qrpc_client *cli;
  qrpc_peer *peer;
  int connected;
  uint64_t tick;             /* the newest state handed over */
  uint64_t first, last, got; /* ticks in the window */
  uint64_t bytes_at_measure; /* channel bytes when the window opened */
} wsim;

typedef struct truth {
  uint64_t tick;
  size_t len;
  uint8_t *buf;
} truth;

struct world_bench {
  const char *prog;
  bench_client_common c;
  bench_world w;
  uint64_t clients;
  bench_client_env env;
  bench_runner run;
  wsim *sims;
  size_t nsims, connected;
  int started, stopping;
  truth truths[TRUTH_SLOTS];
  uint64_t delivered_total, wrong, wrong_total, diverged_gap;
  bench_hist down, clock_err;
  bench_rate rate;
  char first_error[200];
  uint64_t errors;
};

static void count_error(world_bench *g, const char *what) {
  g->errors++;
  if (g->first_error[0] == '\0')
    snprintf(g->first_error, sizeof(g->first_error), "%s", what);
}

/* The true world at tick, computed once for all clients. */
static const truth *truth_at(world_bench *g, uint64_t tick) {
  truth *t = &g->truths[tick % TRUTH_SLOTS];
  if (t->tick != tick) {
    t->len = bench_world_encode(&g->w, tick, t->buf);
    t->tick = tick;
  }
  return t;
}

static void on_world(qrpc_peer *peer, uint32_t channel, uint64_t tick,
                     const uint8_t *p, size_t len, void *ud) {
  wsim *c = ud;
  world_bench *g = c->g;
  (void)channel;
  if (g->stopping) return;
  uint64_t now_us = bench_now_ns() / 1000;
  const truth *t = truth_at(g, tick);
  int wrong = len != t->len || memcmp(p, t->buf, len) != 0;
  g->delivered_total++;
  g->wrong_total += wrong;
  uint64_t prev = c->tick;
  c->tick = tick;
  if (!bench_runner_measuring(&g->run)) return;
  g->wrong += wrong;
  if (c->got++ == 0) {
    c->first = tick;
  } else if (tick > prev + 1) {
    /* Until this state came, the client showed the world of prev. */
    g->diverged_gap += tick - prev - 1;
  }
  c->last = tick;
  qrpc_snapshot_clock clk;
  if (qrpc_peer_snapshot_clock(peer, WORLD_CHANNEL, &clk) == 0) {
    if (now_us >= clk.tick_server_us)
      bench_hist_add(&g->down, (now_us - clk.tick_server_us) * 1000);
    int64_t off = clk.offset_us < 0 ? -clk.offset_us : clk.offset_us;
    bench_hist_add(&g->clock_err, (uint64_t)off * 1000);
  }
}

static void on_connect(qrpc_client *cli, qrpc_peer *peer, void *ud) {
  wsim *c = ud;
  world_bench *g = c->g;
  (void)cli;
  c->peer = peer;
  if (c->connected) return;
  c->connected = 1;
  g->connected++;
  if (g->started || g->connected < g->nsims) return;
  g->started = 1;
  bench_runner_ready(&g->run);
  bench_rate_next(&g->rate, 0);
}

static void on_disconnect(qrpc_client *cli, const qrpc_close_info *info,
                          void *ud) {
  wsim *c = ud;
  world_bench *g = c->g;
  (void)cli;
  c->connected = 0;
  c->peer = NULL;
  g->connected--;
  if (g->stopping) return;
  char what[200];
  snprintf(what, sizeof(what), "client %zu lost its connection: %s", c->idx + 1,
           bench_close_reason(info));
  count_error(g, what);
}

static int open_clients(world_bench *g) {
  qrpc_client_opts co;
  bench_client_opts(&g->c, &co);
  co.conn.via = g->env.shared;
  co.on_connect = on_connect;
  co.on_disconnect = on_disconnect;
  qrpc_dgram_opts o;
  /* The client keeps as many baselines as the server can use. */
  bench_world_dgram_opts(&g->w, WORLD_RING, &o);
  for (size_t i = 0; i < g->nsims; i++) {
    wsim *c = &g->sims[i];
    c->g = g;
    c->idx = i;
    co.user_data = c;
    int rc =
        qrpc_client_new(g->env.loop, g->env.addr, g->env.tls, &co, &c->cli);
    if (rc == 0)
      rc = qrpc_client_register_dgram(c->cli, WORLD_CHANNEL, &o, on_world, c);
    if (rc != 0) {
      fprintf(stderr, "%s: cannot create client %zu for %s: %s\n", g->prog,
              i + 1, g->env.addr, qrpc_strerror(rc));
      return 1;
    }
  }
  return 0;
}

static uint64_t channel_bytes(const wsim *c) {
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(c->peer, WORLD_CHANNEL, &st);
  return st.bytes_received;
}

static void on_measure(bench_runner *r, void *ud) {
  world_bench *g = ud;
  (void)r;
  g->wrong = g->diverged_gap = 0;
  bench_hist_reset(&g->down);
  bench_hist_reset(&g->clock_err);
  for (size_t i = 0; i < g->nsims; i++) {
    wsim *c = &g->sims[i];
    c->got = c->first = c->last = 0;
    c->bytes_at_measure = channel_bytes(c);
  }
}

static void on_progress(bench_runner *r, double t, void *ud) {
  world_bench *g = ud;
  double rate = bench_rate_next(&g->rate, g->delivered_total);
  fprintf(stderr,
          "%s: %5.1f s %-7s %10.0f states/s rebuilt, %llu wrong, errors "
          "%llu\n",
          g->prog, t, bench_runner_measuring(r) ? "measure" : "warmup", rate,
          (unsigned long long)g->wrong_total, (unsigned long long)g->errors);
}

static void report(world_bench *g) {
  double secs = bench_runner_measured_s(&g->run);
  uint64_t expected = 0, got = 0, bytes = 0;
  for (size_t i = 0; i < g->nsims; i++) {
    wsim *c = &g->sims[i];
    if (c->got) {
      expected += c->last - c->first + 1;
      got += c->got;
    }
    bytes += channel_bytes(c) - c->bytes_at_measure;
  }
  double n = (double)g->nsims;
  double loss =
      expected ? 100.0 * (double)(expected - got) / (double)expected : 0;
  double div =
      expected ? 100.0 * (double)(g->diverged_gap + g->wrong) / (double)expected
               : 0;
  double bps = secs > 0 ? (double)bytes / secs / n : 0;
  double dn50 = bench_hist_quantile(&g->down, 0.50) / 1e3;
  double dn99 = bench_hist_quantile(&g->down, 0.99) / 1e3;
  double ce50 = bench_hist_quantile(&g->clock_err, 0.50) / 1e3;
  double ce99 = bench_hist_quantile(&g->clock_err, 0.99) / 1e3;
  bench_report r;
  bench_report_init(&r);
  bench_report_common(&r, "game", &g->c);
  bench_report_param_uint(&r, "clients", g->clients);
  bench_report_param_uint(&r, "entities", g->w.entities);
  bench_report_param_uint(&r, "entity_bytes", g->w.entity_bytes);
  bench_report_param_uint(&r, "change_pct", g->w.change_pct);
  bench_report_param_uint(&r, "ticks_expected", expected);
  bench_report_param_uint(&r, "ticks_got", got);
  bench_report_param_uint(&r, "errors", g->errors);
  bench_report_param_num(&r, "measured_s", secs);
  bench_report_param_num(&r, "client_cpu_s", bench_cpu_s());
  bench_report_num(&r, "down_bytes_per_s", bps, 1);
  bench_report_num(&r, "down_loss_pct", loss, 3);
  bench_report_num(&r, "diverged_pct", div, 3);
  bench_report_num(&r, "down_p50_us", dn50, 1);
  bench_report_num(&r, "down_p99_us", dn99, 1);
  bench_report_num(&r, "clock_err_p50_us", ce50, 1);
  bench_report_num(&r, "clock_err_p99_us", ce99, 1);
  bench_report_uint(&r, "wrong_states", g->wrong);
  fprintf(stderr,
          "%s: %llu clients, %llu entities of %llu B, %llu%% changing: %.0f "
          "B/s down per client, loss %.3f %%, diverged %.3f %%, %llu wrong, "
          "down p50 %.1f us p99 %.1f us, clock error p50 %.1f us p99 %.1f "
          "us over %.2f s\n",
          g->prog, (unsigned long long)g->clients,
          (unsigned long long)g->w.entities,
          (unsigned long long)g->w.entity_bytes,
          (unsigned long long)g->w.change_pct, bps, loss, div,
          (unsigned long long)g->wrong, dn50, dn99, ce50, ce99, secs);
  if (g->errors > 0)
    fprintf(stderr, "%s: %llu errors; the first: %s\n", g->prog,
            (unsigned long long)g->errors, g->first_error);
  bench_report_print(&r, g->c.json);
}

static int parse(world_bench *g, int argc, char **argv) {
  bench_flag flags[BENCH_MAX_FLAGS];
  size_t n = bench_client_common_flags(flags, 0, &g->c);
  g->clients = 100;
  flags[n++] =
      (bench_flag){"--clients", BENCH_FLAG_UINT,
                   &g->clients, 1,
                   MAX_CLIENTS, NULL,
                   "N",         "simulated players, one connection each",
                   0,           0};
  n = bench_world_flags(flags, n, &g->w);
  return bench_args_parse(
      g->prog,
      "--port P --entities N [--entity-bytes B] [--change-pct P] "
      "[--clients N] [flags]",
      "The world workload against 'qrpc-bench server game --entities N'\n"
      "(the same --entities, --entity-bytes and --change-pct). Prints a\n"
      "summary on stderr and, as its last line on stdout, RESULT with\n"
      "down_bytes_per_s, down_loss_pct, diverged_pct, down_p50_us,\n"
      "down_p99_us, clock_err_p50_us, clock_err_p99_us and wrong_states.",
      flags, n, argc, argv);
}

static void teardown(world_bench *g) {
  g->stopping = 1;
  for (size_t i = 0; g->sims && i < g->nsims; i++)
    qrpc_client_free(g->sims[i].cli);
  bench_runner_cleanup(&g->run);
  bench_client_env_cleanup(&g->env);
  free(g->sims);
  for (size_t i = 0; i < TRUTH_SLOTS; i++) free(g->truths[i].buf);
}

int bench_client_world(const char *prog, int argc, char **argv) {
  world_bench *g = calloc(1, sizeof(*g));
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
  bench_hist_reset(&g->down);
  bench_hist_reset(&g->clock_err);
  int status = 1;
  g->nsims = (size_t)g->clients;
  for (size_t i = 0; i < TRUTH_SLOTS; i++)
    if (!(g->truths[i].buf = malloc(bench_world_max_len(&g->w)))) {
      fprintf(stderr, "%s: out of memory for the world\n", prog);
      goto out;
    }
  if (bench_client_env_init(&g->env, prog, &g->c, g->clients + 64, 1) != 0)
    goto out;
  bench_runner_callbacks cbs = {.on_measure = on_measure,
                                .on_progress = on_progress};
  double setup = SETUP_BASE_S + SETUP_PER_CLIENT_S * (double)g->clients;
  if (bench_runner_init(&g->run, prog, g->env.loop, g->c.warmup_s,
                        g->c.duration_s, setup, &cbs, g) != 0)
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
