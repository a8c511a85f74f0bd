/*
 * game_client: plays game.proto against game_server. Each client joins
 * with a reliable call, sends its inputs as datagrams at a fixed rate and
 * receives the world the server sends every tick (a snapshot channel: the
 * library rebuilds the whole world from the difference the server sent),
 * measuring the state rate, its loss (ticks that never arrived whole) and
 * its one-way delay (the server's CLOCK_MONOTONIC stamp against ours: both
 * programs must run on one machine for that number to mean anything).
 * The status line also shows the library's estimate of the server's
 * clock, which on one machine should be the same as ours.
 *
 *   game_client [--connect HOST:PORT] [--ca PEM] [--servername NAME]
 *               [--cert PEM --key PEM] [--hz N] [--clients N] [--seconds S]
 *               [--timeout S] [--verbose]
 *
 * --cert and --key (both or neither) give the client certificate every
 * simulated player presents to a server that requires one (game_server
 * --client-ca); a server that refuses it, or the lack of one, ends the
 * run at once with that reason.
 *
 * Without --clients it is one player printing a status line per second
 * until SIGINT or SIGTERM (or --seconds). With --clients N it is headless:
 * N simulated players in one process, measured for --seconds (default 5)
 * once all have joined, then a summary per client and in total.
 *
 * Exit status: 0 when every client joined and received state, 1 when one
 * could not connect or join within --timeout, lost its connection or got
 * no state (the reason on stderr), 2 on a bad command line.
 */
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qrpc/qrpc.h>

#include "game.qrpc.h"
#include "game_common.h"

#define PROG "game_client"
#define MAX_CLIENTS 1000
/* How often the client checks its phase (joined, window over). */
#define CHECK_MS 50

typedef Qrpc__Examples__Game__JoinRequest JoinRequest;
typedef Qrpc__Examples__Game__JoinReply JoinReply;
typedef Qrpc__Examples__Game__PlayerInput PlayerInput;
typedef Qrpc__Examples__Game__WorldState WorldState;

#define STATE_CH qrpc_examples_game_Game_State_METHOD_ID

typedef struct options {
  const char *connect;
  const char *ca;
  const char *servername;
  const char *cert;
  const char *key;
  unsigned long hz;
  unsigned long clients; /* 0: interactive, one client */
  unsigned long seconds; /* 0: until a signal (interactive only) */
  unsigned long timeout_s;
  unsigned long loss_pct, delay_ms; /* link conditioner; 0: off */
  int verbose;
} options;

typedef struct game game;

/* One simulated player. */
typedef struct sim {
  game *g;
  int idx;
  qrpc_client *cli;
  qrpc_examples_game_Game_handlers h; /* borrowed by cli until it is freed */
  int joined;
  int join_lost; /* the Join call failed with its connection */
  uint32_t player_id;
  uint32_t input_seq;
  int32_t mx, my;
  int32_t x, y; /* our player, as the server last told us */

  /* Measured while the window is open. */
  uint64_t first_seq, last_seq;
  uint64_t dgrams, ticks, last_tick;
  game_hist delay_us;
  uint64_t inputs_sent, inputs_refused;
} sim;

struct game {
  options opt;
  qrpc_loop *loop;
  sim *sims;
  int n;
  int joined;
  uint32_t server_hz;
  uint32_t rng;
  int failed; /* the reason is printed already */
  int interrupted;
  int measuring;
  int closing; /* the clients are being freed: callbacks do nothing */
  uint64_t start_ns, window_start_ns, window_end_ns, next_status_ns;
  uint64_t status_ticks; /* client 0's ticks at the last status line */
  qrpc_timer *input_timer, *check_timer;
  qrpc_signal *sigterm, *sigint;
  char last_failure[256]; /* why the last connection attempt failed */
};

static game G;

/* ---- Command line -------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: " PROG " [--connect HOST:PORT] [--ca PEM] [--servername "
          "NAME]\n"
          "                   [--cert PEM --key PEM] [--hz N] [--clients N]\n"
          "                   [--seconds S] [--timeout S] [--loss PCT]\n"
          "                   [--delay MS] [--verbose]\n"
          "\n"
          "  --connect HOST:PORT  the server (default 127.0.0.1:4433)\n"
          "  --ca PEM             CA to trust (default build/certs/ca.pem)\n"
          "  --servername NAME    name to verify (default localhost)\n"
          "  --cert PEM           client certificate, for servers that\n"
          "                       require one (with --key)\n"
          "  --key PEM            its private key (with --cert)\n"
          "  --hz N               inputs per second per client, 1..1000\n"
          "                       (default 60)\n"
          "  --clients N          headless: N simulated clients, 1..%d,\n"
          "                       then a summary\n"
          "  --seconds S          measure for S seconds once all joined,\n"
          "                       1..3600 (headless default 5; otherwise\n"
          "                       until SIGINT)\n"
          "  --timeout S          give up when not all joined within S\n"
          "                       seconds, 1..3600 (default 5)\n"
          "  --loss PCT           drop PCT%% of the packets sent, 0..100, and\n"
          "  --delay MS           hold them MS ms, 0..10000: the link\n"
          "                       conditioner, for trying the game on a bad\n"
          "                       network (development only)\n"
          "  --verbose            log qrpc debug messages to stderr\n",
          MAX_CLIENTS);
}

/* Returns 0 and fills o, 1 when help was printed, -1 on a bad command line
 * (after saying which flag was wrong). */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  o->connect = "127.0.0.1:4433";
  o->ca = "build/certs/ca.pem";
  o->servername = "localhost";
  o->hz = 60;
  o->timeout_s = 5;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 1;
    }
    if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
      o->verbose = 1;
      continue;
    }
    const char **str = NULL;
    unsigned long *num = NULL, min = 1, max = 3600;
    if (strcmp(a, "--connect") == 0) {
      str = &o->connect;
    } else if (strcmp(a, "--ca") == 0) {
      str = &o->ca;
    } else if (strcmp(a, "--servername") == 0) {
      str = &o->servername;
    } else if (strcmp(a, "--cert") == 0) {
      str = &o->cert;
    } else if (strcmp(a, "--key") == 0) {
      str = &o->key;
    } else if (strcmp(a, "--hz") == 0) {
      num = &o->hz;
      max = 1000;
    } else if (strcmp(a, "--clients") == 0) {
      num = &o->clients;
      max = MAX_CLIENTS;
    } else if (strcmp(a, "--seconds") == 0) {
      num = &o->seconds;
    } else if (strcmp(a, "--timeout") == 0) {
      num = &o->timeout_s;
    } else if (strcmp(a, "--loss") == 0) {
      num = &o->loss_pct;
      min = 0;
      max = 100;
    } else if (strcmp(a, "--delay") == 0) {
      num = &o->delay_ms;
      min = 0;
      max = 10000;
    } else {
      fprintf(stderr, PROG ": unknown argument '%s'\n", a);
      usage(stderr);
      return -1;
    }
    if (i + 1 >= argc || argv[i + 1][0] == '\0') {
      fprintf(stderr, PROG ": %s expects a value\n", a);
      return -1;
    }
    const char *v = argv[++i];
    if (str != NULL) {
      *str = v;
    } else if (game_parse_ulong(v, min, max, num) != 0) {
      fprintf(stderr,
              PROG ": %s expects a whole number from %lu to %lu, not "
                   "'%s'\n",
              a, min, max, v);
      return -1;
    }
  }
  if ((o->cert == NULL) != (o->key == NULL)) {
    fprintf(stderr,
            PROG ": %s needs %s as well (the client certificate and its key "
                 "go together)\n",
            o->cert ? "--cert" : "--key", o->cert ? "--key" : "--cert");
    return -1;
  }
  if (o->clients > 0 && o->seconds == 0) o->seconds = 5;
  return 0;
}

/* ---- Failing clearly ----------------------------------------------------- */

static void fail(game *g, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Says why (once) and ends the run with status 1. */
static void fail(game *g, const char *fmt, ...) {
  if (g->failed) return;
  g->failed = 1;
  va_list ap;
  va_start(ap, fmt);
  fputs(PROG ": ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  qrpc_loop_stop(g->loop);
}

/* Why nothing answered: the last failed attempt's reason. */
static const char *connect_reason(const game *g) {
  return g->last_failure[0] ? g->last_failure
                            : "no answer; is game_server running there?";
}

/* The client retries failed attempts on its own: keep the last reason to
 * explain a timeout once. */
static void on_conn_state(qrpc_client *cli, const qrpc_client_state_info *info,
                          void *user_data) {
  game *g = ((sim *)user_data)->g;
  (void)cli;
  if (info->state != QRPC_CLIENT_FAILED) return;
  snprintf(g->last_failure, sizeof(g->last_failure), "%s",
           info->close && info->close->reason[0] ? info->close->reason
                                                 : qrpc_strerror(info->error));
}

static void on_log(qrpc_log_level level, const char *msg, void *user_data) {
  game *g = user_data;
  if (g->opt.verbose || level >= QRPC_LOG_ERROR)
    fprintf(stderr, PROG ": qrpc %s: %s\n", qrpc_log_level_name(level), msg);
}

/* ---- One client ---------------------------------------------------------- */

static void on_join_done(qrpc_call *call, const JoinReply *reply,
                         const qrpc_result *res, void *user_data) {
  sim *c = user_data;
  game *g = c->g;
  (void)call;
  if (g->closing) return;
  if (res->status == QRPC_STATUS_OK) {
    c->joined = 1;
    c->player_id = reply->player_id;
    g->server_hz = reply->tick_hz;
    g->joined++;
    return;
  }
  /* The connection under the call closed: on_disconnect, which comes
   * next, knows why (or the join deadline's check fails the run). */
  if (res->local && res->status == QRPC_STATUS_UNAVAILABLE) {
    c->join_lost = 1;
    return;
  }
  if (res->local && res->status == QRPC_STATUS_DEADLINE_EXCEEDED)
    fail(g, "client %d cannot join %s within %lu s: %s", c->idx + 1,
         g->opt.connect, g->opt.timeout_s, connect_reason(g));
  else
    fail(g, "client %d: Join failed: %s: %.*s", c->idx + 1,
         qrpc_status_name(res->status), (int)res->detail_len,
         res->detail ? res->detail : "");
}

/* seq is the world's tick: a snapshot channel hands over only newer
 * ticks, each the whole world. */
static void on_state(qrpc_peer *peer, uint64_t seq, const WorldState *ws,
                     void *user_data) {
  sim *c = user_data;
  game *g = c->g;
  uint64_t now = game_now_ns();
  (void)peer;
  for (size_t i = 0; c->joined && i < ws->n_players; i++) {
    if (ws->players[i]->id != c->player_id) continue;
    c->x = ws->players[i]->x;
    c->y = ws->players[i]->y;
  }
  if (!g->measuring) return;
  c->dgrams++;
  if (c->first_seq == 0) c->first_seq = seq;
  c->last_seq = seq; /* always greater than the last */
  if (ws->sent_ns != 0 && ws->sent_ns <= now)
    game_hist_add(&c->delay_us, (now - ws->sent_ns) / 1000);
  if (ws->tick != c->last_tick) {
    c->ticks++;
    c->last_tick = ws->tick;
  }
}

static void on_disconnect(qrpc_client *cli, const qrpc_close_info *info,
                          void *user_data) {
  sim *c = user_data;
  game *g = c->g;
  (void)cli;
  if (g->closing) return;
  /* Under TLS 1.3 the server judges a client certificate after this side
   * has finished its handshake: a refusal closes a connection already
   * made, and it will not change on the next attempt. */
  if (info->error == QRPC_ECERT && !info->local) {
    if (g->opt.cert)
      fail(g, "client %d: %s refused the client certificate --cert %s",
           c->idx + 1, g->opt.connect, g->opt.cert);
    else
      fail(g,
           "client %d: %s requires a client certificate: give --cert PEM "
           "and --key PEM",
           c->idx + 1, g->opt.connect);
    return;
  }
  if (!c->joined) {
    if (c->join_lost)
      fail(g, "client %d cannot join %s: the connection closed: %s", c->idx + 1,
           g->opt.connect,
           info->reason && info->reason[0] ? info->reason
           : info->error                   ? qrpc_strerror(info->error)
                                           : "closed");
    return;
  }
  /* The server forgets a player whose connection closed. */
  fail(g, "client %d lost its connection: %s", c->idx + 1,
       info->reason && info->reason[0] ? info->reason : "closed");
}

static int sim_start(game *g, sim *c, qrpc_tls_config *tls) {
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.server_name = g->opt.servername;
  co.on_disconnect = on_disconnect;
  co.on_state = on_conn_state;
  co.user_data = c;
  /* Attempts fail (and say why) well before the overall timeout. */
  co.conn.handshake_timeout_ms = g->opt.timeout_s * 1000 / 2;
  co.conn.sim_loss_pct = (double)g->opt.loss_pct;
  co.conn.sim_delay_ms = (uint32_t)g->opt.delay_ms;
  int rc = qrpc_client_new(g->loop, g->opt.connect, tls, &co, &c->cli);
  if (rc != 0) {
    c->cli = NULL;
    fprintf(stderr, PROG ": cannot connect to --connect %s: %s%s\n",
            g->opt.connect, qrpc_strerror(rc),
            rc == QRPC_EINVAL ? " (expected HOST:PORT)" : "");
    return -1;
  }
  /* Only the state channel is received here; registering the service
   * also gives the input channel its max age from game.proto. */
  c->h.user_data = c;
  c->h.State = on_state;
  if ((rc = qrpc_examples_game_Game_register_client(c->cli, &c->h)) != 0) {
    fprintf(stderr, PROG ": cannot register Game: %s\n", qrpc_strerror(rc));
    return -1;
  }
  /* The call waits for the connection, up to the timeout. */
  char name[32];
  snprintf(name, sizeof(name), "player-%d", c->idx + 1);
  JoinRequest req = QRPC__EXAMPLES__GAME__JOIN_REQUEST__INIT;
  req.name = name;
  qrpc_call_opts opts;
  qrpc_call_opts_default(&opts);
  opts.timeout_ms = g->opt.timeout_s * 1000;
  rc = qrpc_examples_game_Game_Join(c->cli, &req, &opts, on_join_done, c, NULL);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot call Join: %s\n", qrpc_strerror(rc));
    return -1;
  }
  return 0;
}

/* ---- Timers -------------------------------------------------------------- */

static uint32_t rnd(game *g) {
  uint32_t x = g->rng;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return g->rng = x;
}

/* Every client that has joined sends what its player does now, turning
 * about once a second. */
static void on_input_timer(qrpc_timer *timer, void *arg) {
  game *g = arg;
  (void)timer;
  uint64_t now = game_now_ns();
  for (int i = 0; i < g->n; i++) {
    sim *c = &g->sims[i];
    qrpc_peer *peer = c->joined ? qrpc_client_peer(c->cli) : NULL;
    if (peer == NULL) continue;
    if (c->input_seq % g->opt.hz == 0) {
      c->mx = (int32_t)(rnd(g) % 3) - 1;
      c->my = (int32_t)(rnd(g) % 3) - 1;
    }
    PlayerInput in = QRPC__EXAMPLES__GAME__PLAYER_INPUT__INIT;
    in.input_seq = ++c->input_seq;
    in.move_x = c->mx;
    in.move_y = c->my;
    in.sent_ns = now;
    int rc = qrpc_examples_game_Game_Input_send(peer, &in);
    if (!g->measuring) continue;
    if (rc == 0)
      c->inputs_sent++;
    else
      c->inputs_refused++;
  }
}

static void print_status(game *g, uint64_t now) {
  const sim *c = &g->sims[0];
  double secs = (double)(now - g->window_start_ns) / 1e9;
  uint64_t expected = c->last_seq ? c->last_seq - c->first_seq + 1 : 0;
  qrpc_snapshot_clock clk = {0};
  qrpc_peer *peer = qrpc_client_peer(c->cli);
  if (peer != NULL) qrpc_peer_snapshot_clock(peer, STATE_CH, &clk);
  printf(PROG ": %4.0f s  states %3llu/s  loss %5.2f %%  delay p50 %.3f ms "
              "p99 %.3f ms  server clock %+.3f ms (+-%.3f)  player %u at "
              "(%d, %d)\n",
         secs, (unsigned long long)(c->ticks - g->status_ticks),
         expected ? 100.0 * (double)(expected - c->dgrams) / (double)expected
                  : 0.0,
         (double)game_hist_percentile(&c->delay_us, 0.50) / 1e3,
         (double)game_hist_percentile(&c->delay_us, 0.99) / 1e3,
         (double)clk.offset_us / 1e3, (double)clk.error_us / 1e3, c->player_id,
         c->x, c->y);
  g->status_ticks = c->ticks;
}

/* Starts the window once everyone has joined, ends it after --seconds,
 * and gives up after --timeout if joining takes longer. */
static void on_check_timer(qrpc_timer *timer, void *arg) {
  game *g = arg;
  (void)timer;
  uint64_t now = game_now_ns();
  if (!g->measuring) {
    if (g->joined == g->n) {
      g->measuring = 1;
      g->window_start_ns = now;
      g->next_status_ns = now + UINT64_C(1000000000);
      if (g->opt.seconds > 0)
        g->window_end_ns = now + g->opt.seconds * UINT64_C(1000000000);
      printf(PROG ": %d client%s joined in %.0f ms (server ticks at %u Hz); "
                  "measuring%s\n",
             g->n, g->n == 1 ? "" : "s", (double)(now - g->start_ns) / 1e6,
             g->server_hz, g->opt.seconds ? "" : " until SIGINT");
    } else if (now - g->start_ns >
               (g->opt.timeout_s + 1) * UINT64_C(1000000000)) {
      fail(g, "only %d of %d clients joined %s within %lu s: %s", g->joined,
           g->n, g->opt.connect, g->opt.timeout_s, connect_reason(g));
    }
    return;
  }
  if (g->opt.clients == 0 && now >= g->next_status_ns) {
    print_status(g, now);
    g->next_status_ns += UINT64_C(1000000000);
  }
  if (g->window_end_ns != 0 && now >= g->window_end_ns) qrpc_loop_stop(g->loop);
}

static void on_signal(qrpc_loop *loop, int sig, void *arg) {
  game *g = arg;
  (void)loop, (void)sig;
  g->interrupted = 1;
  qrpc_loop_stop(g->loop);
}

/* ---- Summary ------------------------------------------------------------- */

typedef struct row {
  double states_per_s;
  uint64_t dgrams, expected;
  uint64_t p50_us, p99_us;
} row;

static row row_of(const sim *c, double secs) {
  row r;
  r.states_per_s = secs > 0 ? (double)c->ticks / secs : 0;
  r.dgrams = c->dgrams;
  r.expected = c->last_seq ? c->last_seq - c->first_seq + 1 : 0;
  r.p50_us = game_hist_percentile(&c->delay_us, 0.50);
  r.p99_us = game_hist_percentile(&c->delay_us, 0.99);
  return r;
}

static double loss_pct(uint64_t got, uint64_t expected) {
  return expected > got ? 100.0 * (double)(expected - got) / (double)expected
                        : 0.0;
}

static void print_row(const char *label, const row *r) {
  printf("%8s %9.1f %10llu %7.2f %12.3f %8.3f\n", label, r->states_per_s,
         (unsigned long long)r->dgrams, loss_pct(r->dgrams, r->expected),
         (double)r->p50_us / 1e3, (double)r->p99_us / 1e3);
}

/* Prints the table and returns how many clients received no state. */
static int summarize(game *g, uint64_t end_ns) {
  double secs = (double)(end_ns - g->window_start_ns) / 1e9;
  static game_hist all_delay;
  memset(&all_delay, 0, sizeof(all_delay));
  row total = {0, 0, 0, 0, 0};
  uint64_t inputs = 0, refused = 0, stale = 0;
  int starved = 0;
  printf(PROG ": %d client%s for %.2f s, server ticks at %u Hz, inputs at "
              "%lu Hz\n",
         g->n, g->n == 1 ? "" : "s", secs, g->server_hz, g->opt.hz);
  printf("%8s %9s %10s %7s %12s %8s\n", "client", "states/s", "datagrams",
         "loss %", "delay p50 ms", "p99 ms");
  for (int i = 0; i < g->n; i++) {
    sim *c = &g->sims[i];
    row r = row_of(c, secs);
    char label[16];
    snprintf(label, sizeof(label), "%d", i + 1);
    print_row(label, &r);
    total.states_per_s += r.states_per_s;
    total.dgrams += r.dgrams;
    total.expected += r.expected;
    game_hist_merge(&all_delay, &c->delay_us);
    inputs += c->inputs_sent;
    refused += c->inputs_refused;
    qrpc_peer *peer = qrpc_client_peer(c->cli);
    if (peer != NULL) {
      qrpc_dgram_stats st;
      qrpc_peer_dgram_stats(peer, STATE_CH, &st);
      stale += st.dropped_stale;
    }
    if (c->dgrams == 0) starved++;
  }
  total.p50_us = game_hist_percentile(&all_delay, 0.50);
  total.p99_us = game_hist_percentile(&all_delay, 0.99);
  print_row("all", &total);
  printf(PROG ": total %.1f states/s (%.1f per client), loss %.2f %%, delay "
              "p50 %.3f ms p99 %.3f ms; %llu inputs sent, %llu refused; "
              "%llu stale datagrams dropped\n",
         total.states_per_s, total.states_per_s / g->n,
         loss_pct(total.dgrams, total.expected), (double)total.p50_us / 1e3,
         (double)total.p99_us / 1e3, (unsigned long long)inputs,
         (unsigned long long)refused, (unsigned long long)stale);
  return starved;
}

/* ---- Main ---------------------------------------------------------------- */

static int start_timers(game *g) {
  uint64_t input_ns = UINT64_C(1000000000) / g->opt.hz;
  uint64_t check_ns = CHECK_MS * UINT64_C(1000000);
  if (qrpc_timer_new(g->loop, on_input_timer, g, &g->input_timer) != 0 ||
      qrpc_timer_new(g->loop, on_check_timer, g, &g->check_timer) != 0 ||
      qrpc_timer_start(g->input_timer, input_ns, input_ns) != 0 ||
      qrpc_timer_start(g->check_timer, check_ns, check_ns) != 0 ||
      qrpc_loop_on_signal(g->loop, SIGTERM, on_signal, g, &g->sigterm) != 0 ||
      qrpc_loop_on_signal(g->loop, SIGINT, on_signal, g, &g->sigint) != 0) {
    fprintf(stderr, PROG ": cannot start the timers\n");
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  game *g = &G;
  int rc = parse_args(argc, argv, &g->opt);
  if (rc != 0) return rc > 0 ? 0 : 2;

  setvbuf(stdout, NULL, _IOLBF, 0);
  qrpc_log_set_handler(on_log, g);
  qrpc_log_set_level(g->opt.verbose ? QRPC_LOG_DEBUG : QRPC_LOG_INFO);
  g->rng = 0x2545f491u;
  g->n = g->opt.clients > 0 ? (int)g->opt.clients : 1;
  g->start_ns = game_now_ns();

  int status = 1;
  qrpc_tls_config *tls = NULL;
  g->sims = calloc((size_t)g->n, sizeof(*g->sims));
  if (g->sims == NULL) {
    fprintf(stderr, PROG ": out of memory for %d clients\n", g->n);
    return 1;
  }
  if ((rc = qrpc_loop_new(NULL, &g->loop)) != 0) {
    fprintf(stderr, PROG ": cannot create the loop: %s\n", qrpc_strerror(rc));
    free(g->sims);
    return 1;
  }
  if ((rc = qrpc_tls_config_new(&tls)) != 0 ||
      (rc = qrpc_tls_config_set_ca_file(tls, g->opt.ca)) != 0) {
    fprintf(stderr,
            PROG ": cannot load --ca %s: %s (make certs creates the default "
                 "one)\n",
            g->opt.ca, qrpc_strerror(rc));
    goto out;
  }
  if (g->opt.cert && (rc = qrpc_tls_config_set_cert_files(tls, g->opt.cert,
                                                          g->opt.key)) != 0) {
    fprintf(stderr, PROG ": cannot load --cert %s / --key %s: %s\n",
            g->opt.cert, g->opt.key, qrpc_strerror(rc));
    goto out;
  }
  for (int i = 0; i < g->n; i++) {
    g->sims[i].g = g;
    g->sims[i].idx = i;
    if (sim_start(g, &g->sims[i], tls) != 0) goto out;
  }
  if (start_timers(g) != 0) goto out;

  if ((rc = qrpc_loop_run(g->loop)) != 0) {
    fprintf(stderr, PROG ": the loop failed: %s\n", qrpc_strerror(rc));
    goto out;
  }
  uint64_t end_ns = game_now_ns();
  if (!g->measuring) {
    if (!g->failed)
      fprintf(stderr,
              PROG ": interrupted before all clients joined (%d of "
                   "%d)\n",
              g->joined, g->n);
    goto out;
  }
  int starved = summarize(g, end_ns);
  if (g->failed) goto out;
  if (starved > 0) {
    fprintf(stderr, PROG ": %d client%s received no world state\n", starved,
            starved == 1 ? "" : "s");
    goto out;
  }
  status = 0;

out:
  g->closing = 1;
  for (int i = 0; i < g->n; i++) qrpc_client_free(g->sims[i].cli);
  qrpc_timer_free(g->input_timer);
  qrpc_timer_free(g->check_timer);
  qrpc_signal_free(g->sigterm);
  qrpc_signal_free(g->sigint);
  qrpc_tls_config_free(tls);
  /* Let the closes reach the server before the process goes. */
  qrpc_loop_run_for(g->loop, 100);
  qrpc_loop_free(g->loop);
  free(g->sims);
  return status;
}
