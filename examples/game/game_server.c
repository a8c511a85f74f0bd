/*
 * game_server: the authoritative server of game.proto. Players join with
 * a reliable call, then send their inputs as datagrams; the server moves
 * everyone (players and wandering bots) once per tick and sends the world
 * to every player as a snapshot: the difference from the last state that
 * player acknowledged, encoded once for all the players that acknowledged
 * the same one, in as many datagrams as it takes.
 *
 *   game_server [--listen HOST:PORT] [--cert PEM] [--key PEM]
 *               [--client-ca PEM] [--tick-hz N] [--bots N] [--workers N]
 *               [--verbose]
 *
 * With --workers N it serves on N threads (qrpc_server_opts.workers), each
 * holding the connections it accepted. The world is one, under a mutex:
 * worker 0's timer moves it, then every worker snapshots it and sends the
 * snapshot to its own players, so each tick is encoded once per worker
 * and baseline, on that worker's thread.
 *
 * With --client-ca PEM the server requires mutual TLS: a player must
 * present a certificate that verifies against that CA (game_client --cert
 * and --key), or its handshake fails; with --verbose each join names the
 * subject of the player's certificate.
 *
 * Once listening it prints "READY <port>". SIGTERM or SIGINT stops it: the
 * ticking stops, connections are closed (within a second), and it prints
 * what it saw (inputs, their loss and one-way delay, state datagrams) and
 * exits with status 0.
 */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qrpc/qrpc.h>

#include "game.qrpc.h"
#include "game_common.h"

#define PROG "game_server"
#define DRAIN_MS 1000
#define MAX_PLAYERS 4096
#define MAX_NAME 64
/* World units a player moves per tick. */
#define SPEED 2
/* Bots pick a new direction about this many times per 1000 ticks. */
#define BOT_TURNS 20

typedef Qrpc__Examples__Game__JoinRequest JoinRequest;
typedef Qrpc__Examples__Game__JoinReply JoinReply;
typedef Qrpc__Examples__Game__PlayerInput PlayerInput;
typedef Qrpc__Examples__Game__Player Player;
typedef Qrpc__Examples__Game__WorldState WorldState;

#define STATE_CH qrpc_examples_game_Game_State_METHOD_ID

typedef struct options {
  const char *listen;
  const char *cert;
  const char *key;
  const char *client_ca;
  const char *server_key;
  const char *metrics;
  unsigned long tick_hz;
  unsigned long bots;
  unsigned long loss_pct, delay_ms; /* link conditioner; 0: off */
  unsigned long workers;            /* 0: one per CPU */
  int verbose;
} options;

/* A player or a bot (peer NULL). */
typedef struct entity {
  uint32_t id;
  int32_t x, y;
  int32_t mx, my; /* direction, each -1, 0 or 1 */
  qrpc_peer *peer;
  char name[MAX_NAME + 1];
  uint32_t first_input; /* input_seq of the first input, 0: none yet */
  uint32_t last_input;  /* the newest input_seq applied */
  uint64_t inputs;      /* inputs received */
} entity;

typedef struct server server;

/* One worker's share of a tick: its copy of the world's messages and its
 * players, reused (no allocation per tick once grown), and what its sends
 * did. Its own thread alone touches it while the server runs. */
typedef struct worker {
  server *s;
  qrpc_loop *loop;
  uint64_t last_tick; /* the newest tick sent */
  Player *msgs;
  Player **msg_ptrs;
  size_t cap_msgs;
  qrpc_peer **peers;
  size_t cap_peers;
  uint64_t encodings;    /* of the ticks' snapshots */
  uint64_t state_sends;  /* queued to a peer */
  uint64_t deferred;     /* QRPC_EAGAIN: the last state still on its way */
  uint64_t refused_full; /* QRPC_ENOBUFS: a slow client's queue */
  uint64_t send_errors;  /* anything else */
} worker;

struct server {
  options opt;
  qrpc_loop *loop;
  qrpc_server *srv;
  qrpc_health *health;
  qrpc_metrics *metrics;
  qrpc_timer *ticker; /* the world's clock, tick_hz times a second */
  worker *workers;
  size_t n_workers;

  /* The world and the counters below, touched by every worker's thread. */
  pthread_mutex_t mu;
  uint32_t rng;
  uint64_t tick;
  entity **ents; /* players and bots */
  size_t n_ents, cap_ents;
  size_t n_players;
  uint32_t next_id;

  /* What happened, for the report at exit. */
  unsigned long joined;
  uint64_t inputs, inputs_unjoined, inputs_expected;
  game_hist input_delay_us;
  uint64_t full, delta; /* of closed connections: states sent whole */
  uint64_t lost, aged;  /* ... and their state datagrams */
};

static server S;

/* ---- Command line -------------------------------------------------------- */

static void usage(FILE *f) {
  fprintf(f,
          "usage: " PROG " [--listen HOST:PORT] [--cert PEM] [--key PEM]\n"
          "                   [--client-ca PEM] [--tick-hz N] [--bots N]\n"
          "                   [--metrics HOST:PORT] [--loss PCT] [--delay MS]\n"
          "                   [--workers N] [--verbose]\n"
          "\n"
          "  --listen HOST:PORT  address (default 127.0.0.1:4433; port 0\n"
          "                      picks a free port)\n"
          "  --cert PEM          certificate chain (default\n"
          "                      build/certs/server.pem)\n"
          "  --key PEM           its private key (default\n"
          "                      build/certs/server-key.pem)\n"
          "  --client-ca PEM     require a client certificate verified\n"
          "                      against this CA (mutual TLS)\n"
          "  --server-key FILE   server key (made there if missing): a\n"
          "                      restart resets old connections at once\n"
          "  --tick-hz N         world updates per second, 1..1000 (default "
          "60)\n"
          "  --bots N            wandering bots besides the players, 0..%d\n"
          "                      (default 200: a whole world then takes\n"
          "                      three datagrams, a tick's changes one)\n"
          "  --metrics HOST:PORT serve Prometheus metrics at /metrics\n"
          "  --loss PCT          drop PCT%% of the packets sent, 0..100, and\n"
          "  --delay MS          hold them MS ms, 0..10000: the link\n"
          "                      conditioner, for trying the game on a bad\n"
          "                      network (development only)\n"
          "  --workers N         threads serving, 0..256 (0: one per CPU;\n"
          "                      default 1)\n"
          "  --verbose           log joins and qrpc debug messages\n"
          "\n"
          "Serves qrpc.examples.game.Game and the health service. Prints\n"
          "READY <port> once\n"
          "listening; stops on SIGTERM or SIGINT.\n",
          MAX_PLAYERS);
}

/* The health service (Game SERVING) and, with --metrics, the metrics
 * endpoint. */
static int serve_extras(server *s) {
  int rc = qrpc_health_new(s->srv, &s->health);
  if (rc == 0)
    rc = qrpc_health_set(s->health, "qrpc.examples.game.Game",
                         QRPC_HEALTH_SERVING);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot serve health: %s\n", qrpc_strerror(rc));
    return rc;
  }
  const char *addr = s->opt.metrics;
  if (!addr) return 0;
  if ((rc = qrpc_metrics_serve(s->loop, addr, NULL, &s->metrics)) == 0 &&
      (rc = qrpc_metrics_add_server(s->metrics, s->srv)) == 0 &&
      (rc = qrpc_metrics_name_method(
           s->metrics, qrpc_examples_game_Game_Join_METHOD_ID,
           qrpc_examples_game_Game_Join_METHOD_NAME)) == 0)
    rc = qrpc_metrics_name_method(s->metrics,
                                  qrpc_examples_game_Game_Input_METHOD_ID,
                                  qrpc_examples_game_Game_Input_METHOD_NAME);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot serve --metrics %s: %s\n", addr,
            qrpc_strerror(rc));
    return rc;
  }
  printf(PROG ": metrics on %s, tcp port %u, path /metrics\n", addr,
         (unsigned)qrpc_metrics_port(s->metrics));
  return 0;
}

/* Returns 0 and fills o, 1 when help was printed, -1 on a bad command line
 * (after saying which flag was wrong). */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  o->listen = "127.0.0.1:4433";
  o->cert = "build/certs/server.pem";
  o->key = "build/certs/server-key.pem";
  o->tick_hz = 60;
  o->bots = 200;
  o->workers = 1;
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
    unsigned long *num = NULL, min = 0, max = 0;
    if (strcmp(a, "--listen") == 0) {
      str = &o->listen;
    } else if (strcmp(a, "--cert") == 0) {
      str = &o->cert;
    } else if (strcmp(a, "--key") == 0) {
      str = &o->key;
    } else if (strcmp(a, "--client-ca") == 0) {
      str = &o->client_ca;
    } else if (strcmp(a, "--server-key") == 0) {
      str = &o->server_key;
    } else if (strcmp(a, "--metrics") == 0) {
      str = &o->metrics;
    } else if (strcmp(a, "--tick-hz") == 0) {
      num = &o->tick_hz;
      min = 1;
      max = 1000;
    } else if (strcmp(a, "--bots") == 0) {
      num = &o->bots;
      max = MAX_PLAYERS;
    } else if (strcmp(a, "--loss") == 0) {
      num = &o->loss_pct;
      max = 100;
    } else if (strcmp(a, "--delay") == 0) {
      num = &o->delay_ms;
      max = 10000;
    } else if (strcmp(a, "--workers") == 0) {
      num = &o->workers;
      max = 256;
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
  return 0;
}

/* ---- The world ----------------------------------------------------------- */

static uint32_t rnd(server *s) {
  /* xorshift32: reproducible wandering, no global state shared. */
  uint32_t x = s->rng;
  x ^= x << 13;
  x ^= x >> 17;
  x ^= x << 5;
  return s->rng = x;
}

static int32_t clamp(int32_t v, int32_t lo, int32_t hi) {
  return v < lo ? lo : v > hi ? hi : v;
}

static entity *entity_add(server *s, qrpc_peer *peer, const char *name) {
  if (s->n_ents == s->cap_ents) {
    size_t cap = s->cap_ents ? s->cap_ents * 2 : 64;
    entity **v = realloc(s->ents, cap * sizeof(*v));
    if (v == NULL) return NULL;
    s->ents = v;
    s->cap_ents = cap;
  }
  entity *e = calloc(1, sizeof(*e));
  if (e == NULL) return NULL;
  e->id = ++s->next_id;
  e->x = (int32_t)(rnd(s) % GAME_WORLD_SIZE);
  e->y = (int32_t)(rnd(s) % GAME_WORLD_SIZE);
  e->peer = peer;
  snprintf(e->name, sizeof(e->name), "%s", name);
  s->ents[s->n_ents++] = e;
  if (peer != NULL) s->n_players++;
  return e;
}

static void entity_remove(server *s, entity *e) {
  for (size_t i = 0; i < s->n_ents; i++) {
    if (s->ents[i] != e) continue;
    s->ents[i] = s->ents[--s->n_ents];
    break;
  }
  if (e->peer != NULL) {
    s->n_players--;
    if (e->inputs > 0) s->inputs_expected += e->last_input - e->first_input + 1;
  }
  free(e);
}

static void move_all(server *s) {
  for (size_t i = 0; i < s->n_ents; i++) {
    entity *e = s->ents[i];
    if (e->peer == NULL && rnd(s) % 1000 < BOT_TURNS) {
      e->mx = (int32_t)(rnd(s) % 3) - 1;
      e->my = (int32_t)(rnd(s) % 3) - 1;
    }
    e->x = clamp(e->x + e->mx * SPEED, 0, GAME_WORLD_SIZE - 1);
    e->y = clamp(e->y + e->my * SPEED, 0, GAME_WORLD_SIZE - 1);
  }
}

/* ---- Broadcasting the world ---------------------------------------------- */

/* Makes room for n player messages and n peers in w. */
static int reserve(worker *w, size_t n) {
  if (n > w->cap_msgs) {
    Player *m = realloc(w->msgs, n * sizeof(*m));
    if (m != NULL) w->msgs = m;
    Player **p = realloc(w->msg_ptrs, n * sizeof(*p));
    if (p != NULL) w->msg_ptrs = p;
    if (m == NULL || p == NULL) return -1;
    w->cap_msgs = n;
  }
  if (n > w->cap_peers) {
    qrpc_peer **p = realloc(w->peers, n * sizeof(*p));
    if (p == NULL) return -1;
    w->peers = p;
    w->cap_peers = n;
  }
  return 0;
}

static void count_send(worker *w, int rc) {
  if (rc == 0)
    w->state_sends++;
  else if (rc == QRPC_EAGAIN)
    w->deferred++;
  else if (rc == QRPC_ENOBUFS)
    w->refused_full++;
  else
    w->send_errors++;
}

/* The tick's world as one snapshot for w's players: each gets the
 * difference from the last state it acknowledged, players that
 * acknowledged the same one share the bytes. The world is copied under
 * the mutex; the encoding and the sends run outside it, on w's thread,
 * which alone closes w's peers. */
static void broadcast(worker *w) {
  server *s = w->s;
  size_t n_players = 0;
  pthread_mutex_lock(&s->mu);
  uint64_t tick = s->tick;
  size_t n = s->n_ents;
  int ok = tick > w->last_tick && reserve(w, n) == 0;
  for (size_t i = 0; ok && i < n; i++) {
    const entity *e = s->ents[i];
    Player *p = &w->msgs[i];
    *p = (Player)QRPC__EXAMPLES__GAME__PLAYER__INIT;
    p->id = e->id;
    p->x = e->x;
    p->y = e->y;
    p->last_input = e->last_input;
    w->msg_ptrs[i] = p;
    if (e->peer != NULL && qrpc_peer_loop(e->peer) == w->loop)
      w->peers[n_players++] = e->peer;
  }
  pthread_mutex_unlock(&s->mu);
  if (!ok) {
    if (tick > w->last_tick)
      fprintf(stderr, PROG ": out of memory for the world state\n");
    return; /* or this tick went already */
  }
  w->last_tick = tick;
  WorldState ws = QRPC__EXAMPLES__GAME__WORLD_STATE__INIT;
  ws.tick = tick;
  ws.sent_ns = game_now_ns();
  ws.players = w->msg_ptrs;
  ws.n_players = n;
  qrpc_snapshot *snap = NULL;
  int rc = qrpc_examples_game_Game_State_snapshot_new(s->srv, tick, &ws, &snap);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot make the world's snapshot: %s\n",
            qrpc_strerror(rc));
    return;
  }
  for (size_t i = 0; i < n_players; i++)
    count_send(w, qrpc_peer_send_snapshot(w->peers[i], snap));
  w->encodings += qrpc_snapshot_encodings(snap);
  qrpc_snapshot_free(snap);
}

static void broadcast_posted(qrpc_loop *loop, void *arg) {
  (void)loop;
  broadcast(arg);
}

/* Worker 0's timer: moves the world, then has every worker send it. */
static void on_tick(qrpc_timer *timer, void *arg) {
  server *s = arg;
  (void)timer;
  pthread_mutex_lock(&s->mu);
  s->tick++;
  move_all(s);
  pthread_mutex_unlock(&s->mu);
  for (size_t i = 1; i < s->n_workers; i++)
    if (qrpc_loop_post(s->workers[i].loop, broadcast_posted, &s->workers[i]) !=
        0)
      fprintf(stderr, PROG ": cannot reach worker %zu: out of memory\n", i);
  broadcast(&s->workers[0]);
}

/* ---- The service --------------------------------------------------------- */

static void on_join(qrpc_req *req, const JoinRequest *request, void *ud) {
  server *s = ud;
  qrpc_peer *peer = qrpc_req_peer(req);
  if (qrpc_peer_user_data(peer) != NULL) {
    qrpc_examples_game_Game_Join_error(req, QRPC_STATUS_ALREADY_EXISTS,
                                       "this connection has joined already");
    return;
  }
  if (qrpc_peer_max_dgram_payload(peer, STATE_CH) == 0) {
    qrpc_examples_game_Game_Join_error(
        req, QRPC_STATUS_FAILED_PRECONDITION,
        "the world state travels as datagrams: enable them");
    return;
  }
  pthread_mutex_lock(&s->mu);
  const char *why = NULL;
  entity *e = NULL;
  int32_t x = 0, y = 0;
  if (s->n_players >= MAX_PLAYERS) {
    why = "the world is full";
  } else if ((e = entity_add(s, peer, request->name)) == NULL) {
    why = "out of memory";
  } else {
    s->joined++;
    x = e->x;
    y = e->y;
  }
  pthread_mutex_unlock(&s->mu);
  if (why != NULL) {
    qrpc_examples_game_Game_Join_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED,
                                       why);
    return;
  }
  /* e's id, name and peer do not change; its position does, under the
   * mutex (x and y above). */
  qrpc_peer_set_user_data(peer, e);
  JoinReply reply = QRPC__EXAMPLES__GAME__JOIN_REPLY__INIT;
  reply.player_id = e->id;
  reply.tick_hz = (uint32_t)s->opt.tick_hz;
  reply.world_size = GAME_WORLD_SIZE;
  qrpc_examples_game_Game_Join_reply(req, &reply);
  if (!s->opt.verbose) return;
  /* Verified by the handshake when client certificates are required. */
  const qrpc_identity *id = qrpc_conn_peer_identity(qrpc_peer_conn(peer));
  if (id)
    printf(PROG ": player %u \"%s\" joined at (%d, %d), client certificate "
                "\"%.*s\"\n",
           e->id, e->name, x, y, (int)id->subject.len, id->subject.ptr);
  else
    printf(PROG ": player %u \"%s\" joined at (%d, %d)\n", e->id, e->name, x,
           y);
}

/* Inputs only steer the sender's own player; the newest input_seq wins,
 * so a late or repeated input never undoes a newer one. */
static void on_input(qrpc_peer *peer, uint64_t seq, const PlayerInput *in,
                     void *ud) {
  server *s = ud;
  entity *e = qrpc_peer_user_data(peer);
  uint64_t now = game_now_ns();
  (void)seq;
  pthread_mutex_lock(&s->mu);
  if (e == NULL) {
    s->inputs_unjoined++;
    pthread_mutex_unlock(&s->mu);
    return;
  }
  s->inputs++;
  e->inputs++;
  if (in->sent_ns != 0 && in->sent_ns <= now)
    game_hist_add(&s->input_delay_us, (now - in->sent_ns) / 1000);
  if (e->first_input == 0 || in->input_seq < e->first_input)
    e->first_input = in->input_seq;
  if (in->input_seq > e->last_input) {
    e->last_input = in->input_seq;
    e->mx = clamp(in->move_x, -1, 1);
    e->my = clamp(in->move_y, -1, 1);
  }
  pthread_mutex_unlock(&s->mu);
}

static void on_peer_close(qrpc_peer *peer, void *ud) {
  server *s = ud;
  entity *e = qrpc_peer_user_data(peer);
  if (e == NULL) return;
  qrpc_dgram_stats st;
  qrpc_peer_dgram_stats(peer, STATE_CH, &st);
  if (s->opt.verbose) printf(PROG ": player %u \"%s\" left\n", e->id, e->name);
  qrpc_peer_set_user_data(peer, NULL);
  pthread_mutex_lock(&s->mu);
  s->lost += st.lost;
  s->aged += st.dropped_aged;
  s->full += st.snap_full_sent;
  s->delta += st.snap_delta_sent;
  entity_remove(s, e);
  pthread_mutex_unlock(&s->mu);
}

/* ---- Main ---------------------------------------------------------------- */

static void on_shutdown_done(qrpc_server *srv, void *user_data) {
  server *s = user_data;
  (void)srv;
  qrpc_loop_stop(s->loop);
}

static void on_signal(qrpc_loop *loop, int sig, void *arg) {
  server *s = arg;
  (void)loop;
  printf(PROG ": %s received, shutting down\n",
         sig == SIGTERM ? "SIGTERM" : "SIGINT");
  qrpc_timer_stop(s->ticker);
  if (qrpc_server_shutdown(s->srv, DRAIN_MS, on_shutdown_done, s) != 0)
    qrpc_loop_stop(s->loop); /* already shutting down: a second signal */
}

static void log_to_stderr(qrpc_log_level level, const char *msg,
                          void *user_data) {
  (void)user_data;
  fprintf(stderr, PROG ": qrpc %s: %s\n", qrpc_log_level_name(level), msg);
}

static void report(const server *s) {
  worker t = {.s = NULL};
  for (size_t i = 0; i < s->n_workers; i++) {
    const worker *w = &s->workers[i];
    t.encodings += w->encodings;
    t.state_sends += w->state_sends;
    t.deferred += w->deferred;
    t.refused_full += w->refused_full;
    t.send_errors += w->send_errors;
  }
  double ms = 1e-3;
  uint64_t expected = s->inputs_expected;
  double loss = expected > 0 && expected >= s->inputs
                    ? 100.0 * (double)(expected - s->inputs) / (double)expected
                    : 0.0;
  printf(PROG ": %llu ticks at %lu Hz; %lu player%s joined, %lu bots\n",
         (unsigned long long)s->tick, s->opt.tick_hz, s->joined,
         s->joined == 1 ? "" : "s", s->opt.bots);
  printf(PROG ": state: %llu snapshots queued (%llu whole, %llu deltas; "
              "%.2f encodings per tick), %llu held back while the last was "
              "on its way, refused %llu (queue full), %llu datagrams lost, "
              "%llu too old to send\n",
         (unsigned long long)t.state_sends, (unsigned long long)s->full,
         (unsigned long long)s->delta,
         s->tick ? (double)t.encodings / (double)s->tick : 0.0,
         (unsigned long long)t.deferred, (unsigned long long)t.refused_full,
         (unsigned long long)s->lost, (unsigned long long)s->aged);
  printf(PROG ": inputs: %llu received (loss %.2f %%), one-way delay p50 "
              "%.3f ms, p99 %.3f ms\n",
         (unsigned long long)s->inputs, loss,
         (double)game_hist_percentile(&s->input_delay_us, 0.50) * ms,
         (double)game_hist_percentile(&s->input_delay_us, 0.99) * ms);
}

/* Registers the service and the bots; starts ticking. */
static int start_world(server *s) {
  /* Handlers are borrowed until the server is freed: static storage. */
  static qrpc_examples_game_Game_handlers game;
  game.user_data = s;
  game.Join = on_join;
  game.Input = on_input;
  int rc = qrpc_examples_game_Game_register(s->srv, &game);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot register Game: %s\n", qrpc_strerror(rc));
    return -1;
  }
  for (unsigned long i = 0; i < s->opt.bots; i++) {
    char name[32];
    snprintf(name, sizeof(name), "bot-%lu", i + 1);
    if (entity_add(s, NULL, name) == NULL) {
      fprintf(stderr, PROG ": out of memory for the bots\n");
      return -1;
    }
  }
  /* A fixed schedule: tick k is due at start + k / tick_hz, however long
   * a tick takes, so 60 Hz stays 60 Hz. */
  uint64_t period_ns = UINT64_C(1000000000) / s->opt.tick_hz;
  if (qrpc_timer_new(s->loop, on_tick, s, &s->ticker) != 0 ||
      qrpc_timer_start(s->ticker, period_ns, period_ns) != 0) {
    fprintf(stderr, PROG ": cannot start the tick timer\n");
    return -1;
  }
  return 0;
}

int main(int argc, char **argv) {
  server *s = &S;
  int rc = parse_args(argc, argv, &s->opt);
  if (rc != 0) return rc > 0 ? 0 : 2;

  setvbuf(stdout, NULL, _IOLBF, 0);
  qrpc_log_set_handler(log_to_stderr, NULL);
  qrpc_log_set_level(s->opt.verbose ? QRPC_LOG_DEBUG : QRPC_LOG_WARN);
  s->rng = 0x9e3779b9u;
  pthread_mutex_init(&s->mu, NULL);

  qrpc_tls_config *tls = NULL;
  qrpc_signal *sigterm = NULL, *sigint = NULL;
  int status = 1;

  if ((rc = qrpc_loop_new(NULL, &s->loop)) != 0) {
    fprintf(stderr, PROG ": cannot create the loop: %s\n", qrpc_strerror(rc));
    return 1;
  }
  if ((rc = qrpc_tls_config_new(&tls)) != 0 ||
      (rc = qrpc_tls_config_set_cert_files(tls, s->opt.cert, s->opt.key)) !=
          0) {
    fprintf(stderr,
            PROG ": cannot load --cert %s / --key %s: %s (make certs creates "
                 "the default ones)\n",
            s->opt.cert, s->opt.key, qrpc_strerror(rc));
    goto out;
  }
  if (s->opt.client_ca &&
      ((rc = qrpc_tls_config_set_ca_file(tls, s->opt.client_ca)) != 0 ||
       (rc = qrpc_tls_config_set_client_auth(tls, QRPC_CLIENT_AUTH_REQUIRE)) !=
           0)) {
    fprintf(stderr, PROG ": cannot load --client-ca %s: %s\n", s->opt.client_ca,
            qrpc_strerror(rc));
    goto out;
  }
  if (s->opt.server_key &&
      (rc = qrpc_tls_config_use_server_key_file(tls, s->opt.server_key)) != 0) {
    fprintf(stderr, PROG ": cannot use --server-key %s: %s\n",
            s->opt.server_key, qrpc_strerror(rc));
    goto out;
  }
  qrpc_server_opts so;
  qrpc_server_opts_default(&so);
  /* Development only: the link conditioner on what the server sends. */
  so.endpoint.conn.sim_loss_pct = (double)s->opt.loss_pct;
  so.endpoint.conn.sim_delay_ms = (uint32_t)s->opt.delay_ms;
  so.on_peer_close = on_peer_close;
  so.user_data = s;
  so.workers = (size_t)s->opt.workers;
  rc = qrpc_server_new(s->loop, s->opt.listen, tls, &so, &s->srv);
  qrpc_tls_config_free(tls); /* the server holds its own reference */
  tls = NULL;
  if (rc != 0) {
    s->srv = NULL;
    fprintf(stderr, PROG ": cannot listen on --listen %s: %s%s\n",
            s->opt.listen, qrpc_strerror(rc),
            rc == QRPC_EINVAL ? " (expected HOST:PORT)" : "");
    goto out;
  }
  s->n_workers = qrpc_server_workers(s->srv);
  if ((s->workers = calloc(s->n_workers, sizeof(*s->workers))) == NULL) {
    fprintf(stderr, PROG ": out of memory for the workers\n");
    goto out;
  }
  for (size_t i = 0; i < s->n_workers; i++) {
    s->workers[i].s = s;
    s->workers[i].loop = qrpc_server_worker_loop(s->srv, i);
  }
  if (start_world(s) != 0 || serve_extras(s) != 0) goto out;

  if (qrpc_loop_on_signal(s->loop, SIGTERM, on_signal, s, &sigterm) != 0 ||
      qrpc_loop_on_signal(s->loop, SIGINT, on_signal, s, &sigint) != 0) {
    fprintf(stderr, PROG ": cannot install the signal handlers\n");
    goto out;
  }

  unsigned port = qrpc_server_port(s->srv);
  printf(PROG ": serving qrpc.examples.game.Game on %s, udp port %u, "
              "%lu Hz, %lu bots, %zu worker%s%s\n",
         s->opt.listen, port, s->opt.tick_hz, s->opt.bots, s->n_workers,
         s->n_workers == 1 ? "" : "s",
         s->opt.client_ca ? ", client certificates required" : "");
  printf("READY %u\n", port);

  if ((rc = qrpc_loop_run(s->loop)) != 0) {
    fprintf(stderr, PROG ": the loop failed: %s\n", qrpc_strerror(rc));
    goto out;
  }
  status = 0;

out:
  qrpc_timer_free(s->ticker);
  qrpc_metrics_free(s->metrics);
  /* Closing the remaining connections removes their players. */
  qrpc_server_free(s->srv);
  qrpc_health_free(s->health);
  qrpc_signal_free(sigterm);
  qrpc_signal_free(sigint);
  qrpc_tls_config_free(tls);
  qrpc_loop_free(s->loop);
  /* Whoever is left (bots, players whose close came with the free) adds
   * to the input counts before the report. */
  while (s->n_ents > 0) entity_remove(s, s->ents[s->n_ents - 1]);
  if (status == 0) report(s);
  for (size_t i = 0; i < s->n_workers; i++) {
    free(s->workers[i].msgs);
    free(s->workers[i].msg_ptrs);
    free(s->workers[i].peers);
  }
  free(s->workers);
  free(s->ents);
  pthread_mutex_destroy(&s->mu);
  return status;
}
