/*
 * The broker on several workers (qrpc_broker_opts.server.workers) end to
 * end over loopback: connections spread over the workers, a publish on
 * any worker reaching every matching subscriber on every worker (the
 * Publish reply counting them all, a queue group once), each publisher's
 * messages in order at every subscriber whichever workers they are on,
 * retained messages set and cleared across workers, a queue group whose
 * members sit on both workers, counters summed over the workers, graceful
 * shutdown of every worker, and the options refused with workers.
 *
 * The test's loop is worker 0 and runs every client; the other worker
 * runs on the broker's own thread. Which worker a client's connection
 * landed on is read from the server's per-worker figures
 * (qrpc_server_get_stats): clients are opened one at a time and each goes
 * to the worker whose count of opened peers grew.
 */
#include <check.h>
#include <dirent.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "qrpc/broker.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"
#include "quic/workers.h"

/* Workers of the brokers under test. 1 checks the tests' own logic on a
 * broker without workers: every "worker" below is then worker 0. */
#define NWORKERS 2
#define MAXW 4
/* Tests place clients on two logical workers, 0 and 1: with NWORKERS 2
 * they are the two workers, with 1 both are worker 0. */
#define LW 2

static qt_certs certs;
static qrpc_loop *loop;
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;
static const int nworkers = NWORKERS;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
}

static void teardown(void) { qt_env_teardown(&certs, &loop, &stls, &ctls); }

/* ---- The broker -------------------------------------------------------- */

static qrpc_broker *broker_start(qrpc_broker_opts *bo, char *addr, size_t cap) {
  qrpc_broker_opts def;
  if (!bo) {
    qrpc_broker_opts_default(&def);
    bo = &def;
  }
  bo->server.workers = (size_t)nworkers;
  qrpc_broker *b = NULL;
  char err[256] = "";
  int rv = qrpc_broker_new(loop, "127.0.0.1:0", stls, bo, &b, err, sizeof(err));
  ck_assert_msg(rv == 0, "qrpc_broker_new: %s (%s)", qrpc_strerror(rv), err);
  ck_assert_uint_eq(qrpc_broker_workers(b), (size_t)nworkers);
  ck_assert_uint_eq(qrpc_server_workers(qrpc_broker_server(b)),
                    (size_t)nworkers);
  snprintf(addr, cap, "127.0.0.1:%u",
           (unsigned)qrpc_server_port(qrpc_broker_server(b)));
  return b;
}

/* Each worker's figures now (zeros past the last worker). */
static void worker_stats(qrpc_broker *b, qrpc_server_worker_stats *per) {
  ck_assert_int_eq(
      qrpc_server_get_stats(qrpc_broker_server(b), NULL, per, MAXW), 0);
}

static uint64_t opened_total(const qrpc_server_worker_stats *per) {
  uint64_t n = 0;
  for (int w = 0; w < MAXW; w++) n += per[w].peers_opened;
  return n;
}

/* ---- Clients ----------------------------------------------------------- */

typedef struct client {
  qrpc_broker_client *bc;
  int ready;
  int refused;
  int disconnects;
  int worker; /* where its connection landed; -1 unknown */
  int nsubs;  /* subscriptions the test made on it */
  int freed;
} client;

static void c_on_ready(qrpc_broker_client *bc, int status, const char *detail,
                       void *ud) {
  client *c = ud;
  if (status == 0)
    c->ready++;
  else
    c->refused = status;
}

static void c_on_disconnect(qrpc_broker_client *bc, const qrpc_close_info *info,
                            void *ud) {
  ((client *)ud)->disconnects++;
}

/* Starts connecting c to addr, without waiting. */
static void client_open(client *c, const char *addr) {
  memset(c, 0, sizeof(*c));
  c->worker = -1;
  qrpc_broker_client_opts o;
  qrpc_broker_client_opts_default(&o);
  o.client_name = "workers-test";
  o.client.backoff_initial_ms = 50;
  o.client.backoff_max_ms = 200;
  o.on_ready = c_on_ready;
  o.on_disconnect = c_on_disconnect;
  o.user_data = c;
  ck_assert_int_eq(qrpc_broker_client_new(loop, addr, ctls, &o, &c->bc), 0);
}

static void client_free(client *c) {
  if (c->freed) return;
  qrpc_broker_client_free(c->bc);
  c->bc = NULL;
  c->freed = 1;
}

/* Clients of one broker with the worker of each. */
#define POOL_MAX 64

typedef struct pool {
  qrpc_broker *b;
  client c[POOL_MAX];
  int n;
  int on[MAXW]; /* clients per worker */
  int each;     /* clients asked for per logical worker */
} pool;

typedef struct opened_wait {
  qrpc_broker *b;
  uint64_t target;
  qrpc_server_worker_stats per[MAXW];
} opened_wait;

static int opened_reached(void *arg) {
  opened_wait *w = arg;
  worker_stats(w->b, w->per);
  return opened_total(w->per) >= w->target;
}

/* Opens one more client, waits until it is ready and the server counts
 * its connection, and notes the worker whose count grew. */
static client *pool_open_one(pool *p, const char *addr) {
  ck_assert_int_lt(p->n, POOL_MAX);
  qrpc_server_worker_stats before[MAXW];
  worker_stats(p->b, before);
  client *c = &p->c[p->n];
  client_open(c, addr);
  ck_assert_msg(qt_run_until_count(loop, &c->ready, 1, QT_WAIT_MS),
                "client %d not ready", p->n);
  opened_wait ow = {.b = p->b, .target = opened_total(before) + 1};
  ck_assert(qt_run_until(loop, opened_reached, &ow, QT_WAIT_MS));
  ck_assert_uint_eq(opened_total(ow.per), opened_total(before) + 1);
  for (int w = 0; w < MAXW; w++)
    if (ow.per[w].peers_opened != before[w].peers_opened) c->worker = w;
  ck_assert_int_ge(c->worker, 0);
  ck_assert_int_lt(c->worker, nworkers);
  p->on[c->worker]++;
  p->n++;
  return c;
}

/* Clients needed on worker w for `each` per logical worker. */
static int pool_needed(const pool *p) {
  return p->each * ((LW + nworkers - 1) / nworkers);
}

static int pool_full(const pool *p) {
  for (int w = 0; w < nworkers; w++)
    if (p->on[w] < pool_needed(p)) return 0;
  return 1;
}

/* Opens clients of b one at a time until every logical worker has at
 * least `each` of them (the kernel picks the worker of each connection:
 * a handful of clients lands on both). */
static void pool_fill(pool *p, qrpc_broker *b, const char *addr, int each) {
  memset(p, 0, sizeof(*p));
  p->b = b;
  p->each = each;
  while (!pool_full(p) && p->n < POOL_MAX) pool_open_one(p, addr);
  ck_assert_msg(pool_full(p),
                "%d clients, %d on worker 0 and %d on worker 1: not %d on each",
                p->n, p->on[0], p->on[1], pool_needed(p));
}

/* The k-th client (0 <= k < each) placed on logical worker lw: on worker
 * lw % nworkers, distinct from every other (lw, k). */
static client *pool_get(pool *p, int lw, int k) {
  ck_assert_int_lt(lw, LW);
  ck_assert_int_lt(k, p->each);
  int w = lw % nworkers;
  int rank = (lw / nworkers) * p->each + k;
  for (int i = 0; i < p->n; i++)
    if (p->c[i].worker == w && rank-- == 0) return &p->c[i];
  ck_abort_msg("no client %d on worker %d", k, w);
  return NULL;
}

/* Frees the pool's clients, then the broker, and waits until the loop
 * holds no connection. */
static void pool_finish(pool *p) {
  for (int i = 0; i < p->n; i++) client_free(&p->c[i]);
  qrpc_broker_free(p->b);
  p->b = NULL;
  int released = qt_run_until_released(loop, 4 * QT_WAIT_MS);
  ck_assert_msg(released, "%zu connections left", qrpci_loop_conn_count(loop));
}

/* ---- Messages and subscriptions --------------------------------------- */

/* A payload is 16 bytes: the publisher's id and its sequence number, both
 * big-endian; a message's index in count tables is pid * STRIDE + seq. */
#define PAYLOAD 16
#define NPUB 4
#define STRIDE 1000

/* What one subscription received. */
typedef struct rec {
  qrpc_broker_sub *h;
  int subscribed;
  int ended;
  int end_status;
  int strict;          /* each publisher's sequence without a gap */
  uint64_t got;        /* messages of PAYLOAD bytes */
  uint64_t empty;      /* messages of other lengths */
  uint64_t retained;   /* with the retained flag */
  uint64_t bad;        /* out of order, gap, duplicate, unknown publisher */
  char first_bad[128]; /* the first of them */
  uint64_t next[NPUB]; /* the sequence number expected next per publisher */
  uint8_t *counts;     /* may be NULL: per message, shared by a group */
  uint64_t last_seq;
  char last_topic[64];
  uint64_t retained_a, retained_b; /* retained values of ret.a, ret.b */
  int retained_other;              /* retained messages of other topics */
} rec;

static void note_bad(rec *r, const char *what, uint64_t pid, uint64_t seq) {
  if (r->bad++ == 0)
    snprintf(r->first_bad, sizeof(r->first_bad),
             "%s: publisher %llu seq %llu (expected %llu)", what,
             (unsigned long long)pid, (unsigned long long)seq,
             pid < NPUB ? (unsigned long long)r->next[pid] : 0ULL);
}

static void r_on_message(qrpc_broker_sub *h, const qrpc_broker_msg *m,
                         void *ud) {
  rec *r = ud;
  size_t n = m->topic_len < sizeof(r->last_topic) - 1
                 ? m->topic_len
                 : sizeof(r->last_topic) - 1;
  memcpy(r->last_topic, m->topic, n);
  r->last_topic[n] = '\0';
  if (m->len != PAYLOAD) {
    r->empty++;
    return;
  }
  uint64_t pid = qt_get_be64(m->payload);
  uint64_t seq = qt_get_be64(m->payload + 8);
  r->got++;
  r->last_seq = seq;
  if (m->retained) {
    r->retained++;
    if (strcmp(r->last_topic, "ret.a") == 0)
      r->retained_a = seq;
    else if (strcmp(r->last_topic, "ret.b") == 0)
      r->retained_b = seq;
    else
      r->retained_other++;
    return;
  }
  if (pid >= NPUB || seq >= STRIDE) {
    note_bad(r, "unknown", pid, seq);
    return;
  }
  if (r->strict ? seq != r->next[pid] : seq < r->next[pid])
    note_bad(r, seq < r->next[pid] ? "again or out of order" : "gap", pid, seq);
  if (seq >= r->next[pid]) r->next[pid] = seq + 1;
  if (r->counts) r->counts[pid * STRIDE + seq]++;
}

static void r_on_subscribed(qrpc_broker_sub *h, uint64_t id, void *ud) {
  ((rec *)ud)->subscribed++;
}

static void r_on_end(qrpc_broker_sub *h, int status, const char *d, void *ud) {
  rec *r = ud;
  r->ended++;
  r->end_status = status;
  r->h = NULL;
}

static const qrpc_broker_sub_callbacks rec_cbs = {
    .on_message = r_on_message,
    .on_subscribed = r_on_subscribed,
    .on_end = r_on_end,
};

/* Subscribes c to pattern (in queue group `group` unless NULL) and waits
 * for the broker's confirmation. */
static void subscribe(client *c, rec *r, const char *pattern, const char *group,
                      int strict, uint8_t *counts) {
  memset(r, 0, sizeof(*r));
  r->strict = strict;
  r->counts = counts;
  qrpc_broker_sub_opts o;
  qrpc_broker_sub_opts_default(&o);
  o.group = group;
  ck_assert_int_eq(
      qrpc_broker_subscribe(c->bc, pattern, &o, &rec_cbs, r, &r->h), 0);
  ck_assert_msg(qt_run_until_count(loop, &r->subscribed, 1, QT_WAIT_MS),
                "'%s' not confirmed", pattern);
  ck_assert_int_eq(r->ended, 0);
  c->nsubs++;
}

/* Publishes with an answer, counting them and the subscribers reported. */
typedef struct pubs {
  int sent, acked, failed;
  int last_status;
  uint32_t min_subscribers, max_subscribers;
} pubs;

static void p_done(qrpc_broker_client *bc, int status, uint32_t n,
                   const char *detail, void *ud) {
  pubs *p = ud;
  if (status != 0) {
    p->failed++;
    p->last_status = status;
    return;
  }
  if (p->acked++ == 0 || n < p->min_subscribers) p->min_subscribers = n;
  if (n > p->max_subscribers) p->max_subscribers = n;
}

/* Publishes pid's message seq on topic: answered (p) or one-way (p
 * NULL). */
static void publish(client *c, pubs *p, const char *topic, uint64_t pid,
                    uint64_t seq, int flags) {
  uint8_t buf[PAYLOAD];
  qt_put_be64(buf, pid);
  qt_put_be64(buf + 8, seq);
  ck_assert_int_eq(qrpc_broker_publish(c->bc, topic, buf, sizeof(buf), flags,
                                       p ? p_done : NULL, p),
                   0);
  if (p) p->sent++;
}

/* Waits until the broker counts `target` published messages. */
typedef struct stats_wait {
  qrpc_broker *b;
  uint64_t published;
  uint64_t connections;
  uint64_t subscriptions;
  qrpc_broker_stats st;
} stats_wait;

static int published_reached(void *arg) {
  stats_wait *w = arg;
  qrpc_broker_get_stats(w->b, &w->st);
  return w->st.published >= w->published;
}

static int conns_subs_reached(void *arg) {
  stats_wait *w = arg;
  qrpc_broker_get_stats(w->b, &w->st);
  return w->st.connections == w->connections &&
         w->st.subscriptions == w->subscriptions;
}

/* Waits until every one of n subscriptions got `want` messages. */
typedef struct recs_wait {
  rec *const *r;
  int n;
  uint64_t want;
} recs_wait;

static int recs_got(void *arg) {
  const recs_wait *w = arg;
  for (int i = 0; i < w->n; i++)
    if (w->r[i]->got < w->want) return 0;
  return 1;
}

static uint64_t recs_sum(rec *const *r, int n) {
  uint64_t t = 0;
  for (int i = 0; i < n; i++) t += r[i]->got;
  return t;
}

typedef struct sum_wait {
  rec *const *r;
  int n;
  uint64_t want;
} sum_wait;

static int sum_reached(void *arg) {
  const sum_wait *w = arg;
  return recs_sum(w->r, w->n) >= w->want;
}

/* ---- 1. Connections spread -------------------------------------------- */

#define SPREAD_CLIENTS 32

/* Many clients connecting at once land on every worker; the broker counts
 * them all, and counts them out again when they leave. */
START_TEST(test_connections_spread_over_workers) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr));
  static client c[SPREAD_CLIENTS];
  for (int i = 0; i < SPREAD_CLIENTS; i++) client_open(&c[i], addr);
  for (int i = 0; i < SPREAD_CLIENTS; i++)
    ck_assert_msg(qt_run_until_count(loop, &c[i].ready, 1, QT_WAIT_MS),
                  "client %d not ready", i);
  opened_wait ow = {.b = b, .target = SPREAD_CLIENTS};
  ck_assert(qt_run_until(loop, opened_reached, &ow, QT_WAIT_MS));
  uint64_t peers = 0;
  for (int w = 0; w < MAXW; w++) peers += ow.per[w].peers;
  ck_assert_uint_eq(peers, SPREAD_CLIENTS);
  ck_assert_uint_eq(opened_total(ow.per), SPREAD_CLIENTS);
  /* The kernel's hash over 32 client ports: all on one of two workers has
   * a chance of 2^-31. */
  for (int w = 0; w < nworkers; w++)
    ck_assert_msg(ow.per[w].peers >= 1, "no connection on worker %d", w);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.connections, SPREAD_CLIENTS);
  for (int i = 0; i < SPREAD_CLIENTS; i++) {
    ck_assert_int_eq(c[i].refused, 0);
    ck_assert_int_eq(c[i].disconnects, 0);
  }

  for (int i = 0; i < SPREAD_CLIENTS; i++) client_free(&c[i]);
  stats_wait sw = {.b = b, .connections = 0, .subscriptions = 0};
  ck_assert_msg(qt_run_until(loop, conns_subs_reached, &sw, QT_WAIT_MS),
                "%llu connections left", (unsigned long long)sw.st.connections);
  qrpc_broker_free(b);
  ck_assert(qt_run_until_released(loop, 4 * QT_WAIT_MS));
}
END_TEST

/* ---- 2. Fan-out across workers ---------------------------------------- */

/* Every client subscribes to "fan.*" (and to "nofan.*", which nothing
 * matches); a queue group "g" on "fan.*" has a member on each worker. A
 * publish from either worker, answered or one-way, reaches every plain
 * subscription on both workers and one member of the group, and its
 * answer counts them all, the group once. */
START_TEST(test_publish_reaches_every_worker) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr));
  static pool p;
  pool_fill(&p, b, addr, 2);
  static rec plain[POOL_MAX], none[POOL_MAX], member[LW];
  static uint8_t counts[LW * STRIDE];
  memset(counts, 0, sizeof(counts));
  rec *plain_r[POOL_MAX];
  for (int i = 0; i < p.n; i++) {
    subscribe(&p.c[i], &plain[i], "fan.*", NULL, 1, NULL);
    subscribe(&p.c[i], &none[i], "nofan.*", NULL, 1, NULL);
    plain_r[i] = &plain[i];
  }
  rec *member_r[LW];
  for (int lw = 0; lw < LW; lw++) {
    subscribe(pool_get(&p, lw, 1), &member[lw], "fan.*", "g", 0, counts);
    member_r[lw] = &member[lw];
  }

  /* From each worker: message 0 answered, message 1 one-way. */
  pubs pb = {0};
  for (int lw = 0; lw < LW; lw++) {
    publish(pool_get(&p, lw, 0), &pb, "fan.x", (uint64_t)lw, 0, 0);
    publish(pool_get(&p, lw, 0), NULL, "fan.y", (uint64_t)lw, 1, 0);
  }
  ck_assert(qt_run_until_count(loop, &pb.acked, LW, QT_WAIT_MS));
  ck_assert_int_eq(pb.failed, 0);
  ck_assert_uint_eq(pb.min_subscribers, (uint32_t)p.n + 1);
  ck_assert_uint_eq(pb.max_subscribers, (uint32_t)p.n + 1);
  recs_wait rw = {plain_r, p.n, 2 * LW};
  ck_assert(qt_run_until(loop, recs_got, &rw, QT_WAIT_MS));
  sum_wait gw = {member_r, LW, 2 * LW};
  ck_assert(qt_run_until(loop, sum_reached, &gw, QT_WAIT_MS));
  qt_run_for(loop, 50); /* nothing more may come */

  for (int i = 0; i < p.n; i++) {
    ck_assert_msg(plain[i].got == 2 * LW,
                  "client %d on worker %d: %llu messages", i, p.c[i].worker,
                  (unsigned long long)plain[i].got);
    ck_assert_msg(plain[i].bad == 0, "client %d: %s", i, plain[i].first_bad);
    for (int lw = 0; lw < LW; lw++) ck_assert_uint_eq(plain[i].next[lw], 2);
    ck_assert_uint_eq(none[i].got + none[i].empty, 0);
    ck_assert_uint_eq(plain[i].empty, 0);
  }
  ck_assert_uint_eq(recs_sum(member_r, LW), 2 * LW);
  for (int lw = 0; lw < LW; lw++) {
    ck_assert_msg(member[lw].bad == 0, "%s", member[lw].first_bad);
    for (int s = 0; s < 2; s++)
      ck_assert_msg(counts[lw * STRIDE + s] == 1,
                    "message %d of worker %d reached the group %d times", s, lw,
                    counts[lw * STRIDE + s]);
  }
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.published, 2 * LW);
  ck_assert_uint_eq(st.refused, 0);
  ck_assert_uint_eq(st.dropped, 0);
  pool_finish(&p);
}
END_TEST

/* ---- 3. Order per publisher ------------------------------------------- */

#define ORDER_MSGS 200
#define ORDER_EACH 6 /* clients per logical worker: 4 publish, 8+ subscribe */

/* Four publishers, two on each worker, each send 200 messages to topics
 * under "ord.", alternately answered and one-way; every other client
 * (four or more on each worker) subscribes to "ord.>" and receives all
 * 800, each publisher's in increasing sequence, none missing or twice. */
START_TEST(test_order_per_publisher_across_workers) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr));
  static pool p;
  pool_fill(&p, b, addr, ORDER_EACH);
  client *pub[NPUB];
  for (int i = 0; i < NPUB; i++) pub[i] = pool_get(&p, i % LW, i / LW);
  static rec subs[POOL_MAX];
  rec *subs_r[POOL_MAX];
  int nsubs = 0, subs_on[MAXW] = {0};
  for (int i = 0; i < p.n; i++) {
    int is_pub = 0;
    for (int k = 0; k < NPUB; k++) is_pub |= pub[k] == &p.c[i];
    if (is_pub) continue;
    subscribe(&p.c[i], &subs[nsubs], "ord.>", NULL, 1, NULL);
    subs_r[nsubs] = &subs[nsubs];
    nsubs++;
    subs_on[p.c[i].worker]++;
  }
  ck_assert_int_ge(nsubs, 8);
  for (int w = 0; w < nworkers; w++) ck_assert_int_ge(subs_on[w], 1);

  /* The publishers take turns, a few topics each, with the loop run now
   * and then so that both workers handle publishes while others arrive. */
  pubs pb[NPUB];
  memset(pb, 0, sizeof(pb));
  for (uint64_t seq = 0; seq < ORDER_MSGS; seq++) {
    for (int i = 0; i < NPUB; i++) {
      char topic[32];
      snprintf(topic, sizeof(topic), "ord.p%d.t%d", i, (int)(seq % 3));
      publish(pub[i], seq % 2 ? NULL : &pb[i], topic, (uint64_t)i, seq, 0);
    }
    if (seq % 20 == 19) qrpc_loop_run_for(loop, 1);
  }
  recs_wait rw = {subs_r, nsubs, NPUB * ORDER_MSGS};
  ck_assert_msg(qt_run_until(loop, recs_got, &rw, 6 * QT_WAIT_MS),
                "subscribers short of %d messages", NPUB * ORDER_MSGS);
  for (int i = 0; i < NPUB; i++)
    ck_assert(
        qt_run_until_count(loop, &pb[i].acked, ORDER_MSGS / 2, QT_WAIT_MS));
  qt_run_for(loop, 50); /* nothing more may come */

  for (int s = 0; s < nsubs; s++) {
    ck_assert_msg(subs[s].bad == 0, "subscriber %d: %llu wrong, first %s", s,
                  (unsigned long long)subs[s].bad, subs[s].first_bad);
    ck_assert_uint_eq(subs[s].got, NPUB * ORDER_MSGS);
    ck_assert_uint_eq(subs[s].empty, 0);
    for (int i = 0; i < NPUB; i++)
      ck_assert_uint_eq(subs[s].next[i], ORDER_MSGS);
  }
  for (int i = 0; i < NPUB; i++) {
    ck_assert_int_eq(pb[i].failed, 0);
    ck_assert_int_eq(pb[i].acked, ORDER_MSGS / 2);
    ck_assert_uint_eq(pb[i].min_subscribers, (uint32_t)nsubs);
    ck_assert_uint_eq(pb[i].max_subscribers, (uint32_t)nsubs);
  }
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.published, NPUB * ORDER_MSGS);
  ck_assert_uint_eq(st.delivered, (uint64_t)NPUB * ORDER_MSGS * nsubs);
  ck_assert_uint_eq(st.refused, 0);
  ck_assert_uint_eq(st.dropped, 0);
  pool_finish(&p);
}
END_TEST

/* ---- 4. Retained messages --------------------------------------------- */

static void wait_retained(rec *r, uint64_t n) {
  recs_wait rw = {(rec *const[]){r}, 1, n};
  ck_assert(qt_run_until(loop, recs_got, &rw, QT_WAIT_MS));
}

/* A retained message published on one worker reaches a later subscriber
 * on the other, flagged retained, in both directions; an empty retained
 * publish on the other worker clears it for subscribers on both. */
START_TEST(test_retained_across_workers) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr));
  static pool p;
  pool_fill(&p, b, addr, 2);
  client *p0 = pool_get(&p, 0, 0), *s0 = pool_get(&p, 0, 1);
  client *p1 = pool_get(&p, 1, 0), *s1 = pool_get(&p, 1, 1);
  pubs pb = {0};
  publish(p0, &pb, "ret.a", 0, 1, QRPC_BROKER_RETAIN);
  publish(p0, &pb, "ret.a", 0, 2, QRPC_BROKER_RETAIN);
  ck_assert(qt_run_until_count(loop, &pb.acked, 2, QT_WAIT_MS));

  /* Worker 0's retained message on worker 1, and on worker 0. */
  static rec r1a, r0a, r0all, r1all, r0star;
  subscribe(s1, &r1a, "ret.a", NULL, 0, NULL);
  wait_retained(&r1a, 1);
  subscribe(s0, &r0a, "ret.a", NULL, 0, NULL);
  wait_retained(&r0a, 1);
  ck_assert_uint_eq(r1a.retained, 1);
  ck_assert_uint_eq(r1a.retained_a, 2); /* the latest value */
  ck_assert_uint_eq(r0a.retained, 1);
  ck_assert_uint_eq(r0a.retained_a, 2);

  /* Worker 1's retained message on worker 0, with worker 0's. */
  publish(p1, &pb, "ret.b", 1, 7, QRPC_BROKER_RETAIN);
  ck_assert(qt_run_until_count(loop, &pb.acked, 3, QT_WAIT_MS));
  subscribe(s0, &r0all, "ret.>", NULL, 0, NULL);
  wait_retained(&r0all, 2);
  qt_run_for(loop, 50);
  ck_assert_uint_eq(r0all.retained, 2);
  ck_assert_uint_eq(r0all.retained_a, 2);
  ck_assert_uint_eq(r0all.retained_b, 7);
  ck_assert_int_eq(r0all.retained_other, 0);
  ck_assert_uint_eq(r1a.retained, 1);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.retained, 2);

  /* Cleared from worker 1: later subscribers on either worker get ret.b
   * alone. */
  ck_assert_int_eq(qrpc_broker_publish(p1->bc, "ret.a", NULL, 0,
                                       QRPC_BROKER_RETAIN, p_done, &pb),
                   0);
  ck_assert(qt_run_until_count(loop, &pb.acked, 4, QT_WAIT_MS));
  ck_assert_int_eq(pb.failed, 0);
  subscribe(s1, &r1all, "ret.>", NULL, 0, NULL);
  subscribe(s0, &r0star, "ret.*", NULL, 0, NULL);
  wait_retained(&r1all, 1);
  wait_retained(&r0star, 1);
  qt_run_for(loop, 50); /* nothing more may come */
  ck_assert_uint_eq(r1all.retained, 1);
  ck_assert_uint_eq(r1all.retained_b, 7);
  ck_assert_uint_eq(r1all.retained_a, 0);
  ck_assert_uint_eq(r0star.retained, 1);
  ck_assert_uint_eq(r0star.retained_b, 7);
  ck_assert_uint_eq(r0star.retained_a, 0);
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.retained, 1);
  pool_finish(&p);
}
END_TEST

/* ---- 5. Queue group on both workers ----------------------------------- */

#define GROUP_MSGS 150 /* per publisher */
#define GROUP_MEMBERS 4

/* Four members of group "w" on "jobs.*", two on each worker, each on its
 * own connection, and a plain subscriber on each worker; a publisher on
 * each worker. Every message reaches exactly one member and both plain
 * subscribers, and its answer counts three subscribers. */
START_TEST(test_queue_group_across_workers) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr));
  static pool p;
  pool_fill(&p, b, addr, 3);
  static uint8_t counts[LW * STRIDE];
  memset(counts, 0, sizeof(counts));
  static rec member[GROUP_MEMBERS], plain[LW];
  rec *member_r[GROUP_MEMBERS], *plain_r[LW];
  for (int i = 0; i < GROUP_MEMBERS; i++) {
    subscribe(pool_get(&p, i % LW, i / LW), &member[i], "jobs.*", "w", 0,
              counts);
    member_r[i] = &member[i];
  }
  for (int lw = 0; lw < LW; lw++) {
    subscribe(pool_get(&p, lw, 2), &plain[lw], "jobs.*", NULL, 1, NULL);
    plain_r[lw] = &plain[lw];
  }

  pubs pb = {0};
  for (uint64_t seq = 0; seq < GROUP_MSGS; seq++) {
    for (int lw = 0; lw < LW; lw++)
      publish(pool_get(&p, lw, 2), &pb, "jobs.a", (uint64_t)lw, seq, 0);
    if (seq % 20 == 19) qrpc_loop_run_for(loop, 1);
  }
  ck_assert(
      qt_run_until_count(loop, &pb.acked, LW * GROUP_MSGS, 2 * QT_WAIT_MS));
  ck_assert_int_eq(pb.failed, 0);
  ck_assert_uint_eq(pb.min_subscribers, LW + 1);
  ck_assert_uint_eq(pb.max_subscribers, LW + 1);
  sum_wait gw = {member_r, GROUP_MEMBERS, LW * GROUP_MSGS};
  ck_assert(qt_run_until(loop, sum_reached, &gw, QT_WAIT_MS));
  recs_wait rw = {plain_r, LW, LW * GROUP_MSGS};
  ck_assert(qt_run_until(loop, recs_got, &rw, QT_WAIT_MS));
  qt_run_for(loop, 50); /* nothing more may come */

  ck_assert_uint_eq(recs_sum(member_r, GROUP_MEMBERS), LW * GROUP_MSGS);
  for (int lw = 0; lw < LW; lw++)
    for (int s = 0; s < GROUP_MSGS; s++)
      ck_assert_msg(counts[lw * STRIDE + s] == 1,
                    "message %d of publisher %d reached the group %d times", s,
                    lw, counts[lw * STRIDE + s]);
  for (int i = 0; i < GROUP_MEMBERS; i++) {
    ck_assert_msg(member[i].bad == 0, "member %d: %s", i, member[i].first_bad);
    ck_assert_uint_eq(member[i].retained, 0);
    /* The members take turns, whichever worker they are on. */
    ck_assert_msg(member[i].got > 0, "member %d got no message", i);
  }
  for (int lw = 0; lw < LW; lw++) {
    ck_assert_msg(plain[lw].bad == 0, "plain %d: %s", lw, plain[lw].first_bad);
    ck_assert_uint_eq(plain[lw].got, LW * GROUP_MSGS);
  }
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.published, LW * GROUP_MSGS);
  ck_assert_uint_eq(st.delivered, (uint64_t)LW * GROUP_MSGS * (LW + 1));
  pool_finish(&p);
}
END_TEST

/* ---- 6. Counters summed over the workers ------------------------------ */

#define STATS_MSGS 50 /* per publisher */

typedef struct stats_rec {
  int calls;
  int status;
  qrpc_broker_stats broker;
  size_t n;
} stats_rec;

static void on_stats(qrpc_broker_client *bc, int status,
                     const qrpc_broker_stats *bst,
                     const qrpc_broker_sub_stats *subs, size_t n, void *ud) {
  stats_rec *r = ud;
  r->calls++;
  r->status = status;
  if (bst) r->broker = *bst;
  r->n = n;
}

static void check_counts(const qrpc_broker_stats *st, uint64_t conns,
                         uint64_t subs, uint64_t published,
                         uint64_t delivered) {
  ck_assert_uint_eq(st->connections, conns);
  ck_assert_uint_eq(st->subscriptions, subs);
  ck_assert_uint_eq(st->published, published);
  ck_assert_uint_eq(st->delivered, delivered);
  ck_assert_uint_eq(st->refused, 0);
  ck_assert_uint_eq(st->dropped, 0);
  ck_assert_uint_eq(st->denied, 0);
  ck_assert_uint_eq(st->retained, 0);
}

/* Every client subscribes to "st.>", those on logical worker 1 to "st.a"
 * too; a publisher on each worker sends 50 messages to "st.a", one
 * answered, the other one-way. qrpc_broker_get_stats() and the Stats call
 * from a client on either worker count every worker's connections,
 * subscriptions, publishes and deliveries; when the clients of one worker
 * leave, the counts follow. */
START_TEST(test_stats_sum_over_workers) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr));
  static pool p;
  pool_fill(&p, b, addr, 2);
  static rec all[POOL_MAX], extra[POOL_MAX];
  rec *want_r[2 * POOL_MAX];
  int nrec = 0;
  /* The clients of logical worker 1: every client of worker 1, or with
   * one worker those pool_get() gives for it. */
  int is_w1[POOL_MAX] = {0};
  for (int i = 0; i < p.n; i++) is_w1[i] = nworkers > 1 && p.c[i].worker == 1;
  for (int k = 0; k < p.each; k++) is_w1[pool_get(&p, 1, k) - p.c] = 1;
  for (int i = 0; i < p.n; i++) {
    subscribe(&p.c[i], &all[i], "st.>", NULL, 1, NULL);
    want_r[nrec++] = &all[i];
    if (is_w1[i]) {
      subscribe(&p.c[i], &extra[i], "st.a", NULL, 1, NULL);
      want_r[nrec++] = &extra[i];
    }
  }
  uint64_t subs = (uint64_t)nrec;
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  check_counts(&st, (uint64_t)p.n, subs, 0, 0);

  client *pa = pool_get(&p, 0, 0), *pb1 = pool_get(&p, 1, 0);
  pubs pb = {0};
  for (uint64_t seq = 0; seq < STATS_MSGS; seq++) {
    publish(pa, &pb, "st.a", 0, seq, 0);
    publish(pb1, NULL, "st.a", 1, seq, 0);
  }
  ck_assert(qt_run_until_count(loop, &pb.acked, STATS_MSGS, QT_WAIT_MS));
  ck_assert_uint_eq(pb.min_subscribers, subs);
  ck_assert_uint_eq(pb.max_subscribers, subs);
  recs_wait rw = {want_r, nrec, 2 * STATS_MSGS};
  ck_assert(qt_run_until(loop, recs_got, &rw, 2 * QT_WAIT_MS));
  stats_wait sw = {.b = b, .published = 2 * STATS_MSGS};
  ck_assert(qt_run_until(loop, published_reached, &sw, QT_WAIT_MS));
  qt_run_for(loop, 50);
  for (int i = 0; i < nrec; i++) {
    ck_assert_uint_eq(want_r[i]->got, 2 * STATS_MSGS);
    ck_assert_msg(want_r[i]->bad == 0, "%s", want_r[i]->first_bad);
  }
  uint64_t delivered = 2 * STATS_MSGS * subs;
  qrpc_broker_get_stats(b, &st);
  check_counts(&st, (uint64_t)p.n, subs, 2 * STATS_MSGS, delivered);
  ck_assert_uint_eq(st.queued_bytes, 0);

  /* The Stats call, answered on either worker, says the same. */
  client *ask[LW] = {pa, pb1};
  for (int lw = 0; lw < LW; lw++) {
    stats_rec r = {0};
    ck_assert_int_eq(qrpc_broker_client_stats(ask[lw]->bc, on_stats, &r), 0);
    ck_assert(qt_run_until_count(loop, &r.calls, 1, QT_WAIT_MS));
    ck_assert_int_eq(r.status, 0);
    ck_assert_uint_eq(r.n, (size_t)ask[lw]->nsubs);
    check_counts(&r.broker, (uint64_t)p.n, subs, 2 * STATS_MSGS, delivered);
  }

  /* The clients of logical worker 1 leave, with their subscriptions. */
  uint64_t conns_left = (uint64_t)p.n, subs_left = subs;
  for (int i = 0; i < p.n; i++)
    if (is_w1[i]) {
      conns_left--;
      subs_left -= (uint64_t)p.c[i].nsubs;
      client_free(&p.c[i]);
    }
  stats_wait cw = {
      .b = b, .connections = conns_left, .subscriptions = subs_left};
  ck_assert_msg(qt_run_until(loop, conns_subs_reached, &cw, QT_WAIT_MS),
                "%llu connections and %llu subscriptions, not %llu and %llu",
                (unsigned long long)cw.st.connections,
                (unsigned long long)cw.st.subscriptions,
                (unsigned long long)conns_left, (unsigned long long)subs_left);
  qrpc_broker_get_stats(b, &st);
  check_counts(&st, conns_left, subs_left, 2 * STATS_MSGS, delivered);
  pool_finish(&p);
}
END_TEST

/* ---- 7. Graceful shutdown --------------------------------------------- */

/* Threads of this process now. */
static int count_threads(void) {
  DIR *d = opendir("/proc/self/task");
  if (!d) return -1;
  int n = 0;
  struct dirent *e;
  while ((e = readdir(d)) != NULL)
    if (e->d_name[0] != '.') n++;
  closedir(d);
  return n;
}

typedef struct shutdown_rec {
  int done;
  int off_thread; /* on_done ran on another thread than the test's */
  pthread_t thread;
} shutdown_rec;

static void on_shutdown(qrpc_broker *b, void *ud) {
  shutdown_rec *r = ud;
  if (!pthread_equal(pthread_self(), r->thread)) r->off_thread++;
  r->done++;
}

static int all_disconnected(void *arg) {
  const pool *p = arg;
  for (int i = 0; i < p->n; i++)
    if (p->c[i].disconnects < 1) return 0;
  return 1;
}

/* With subscribers on both workers, qrpc_broker_shutdown() drains every
 * worker and calls on_done once, on the test's thread; qrpc_broker_free()
 * then stops the other worker's thread and closes every descriptor it
 * opened (memory: the sanitizer and valgrind runs). */
START_TEST(test_graceful_shutdown_two_workers) {
  char addr[64];
  /* Descriptors and threads made once per process (the TLS library's,
   * the first handshake's) are not the broker's: one broker first. */
  static pool warm;
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr));
  pool_fill(&warm, b, addr, 1);
  pool_finish(&warm);
  int fds0 = qt_count_fds(), threads0 = count_threads();
  ck_assert_int_gt(fds0, 0);
  ck_assert_int_gt(threads0, 0);

  b = broker_start(NULL, addr, sizeof(addr));
  static pool p;
  pool_fill(&p, b, addr, 2);
  static rec subs[POOL_MAX];
  for (int i = 0; i < p.n; i++)
    subscribe(&p.c[i], &subs[i], "down.>", NULL, 1, NULL);
  pubs pb = {0};
  for (int lw = 0; lw < LW; lw++)
    publish(pool_get(&p, lw, 0), &pb, "down.x", (uint64_t)lw, 0, 0);
  ck_assert(qt_run_until_count(loop, &pb.acked, LW, QT_WAIT_MS));
  qrpc_server_worker_stats per[MAXW];
  worker_stats(b, per);
  for (int w = 0; w < nworkers; w++) ck_assert_uint_gt(per[w].peers, 0);

  shutdown_rec sr = {.thread = pthread_self()};
  ck_assert_int_eq(qrpc_broker_shutdown(b, 2000, on_shutdown, &sr), 0);
  ck_assert_int_eq(qrpc_broker_shutdown(b, 2000, on_shutdown, &sr),
                   QRPC_ESTATE);
  ck_assert(qt_run_until_count(loop, &sr.done, 1, 2 * QT_WAIT_MS));
  ck_assert_int_eq(sr.off_thread, 0);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.connections, 0);
  ck_assert_uint_eq(st.subscriptions, 0);
  ck_assert_uint_eq(st.queued_bytes, 0);
  worker_stats(b, per);
  for (int w = 0; w < MAXW; w++) ck_assert_uint_eq(per[w].peers, 0);
  ck_assert(qt_run_until(loop, all_disconnected, &p, QT_WAIT_MS));
  qt_run_for(loop, 50);
  ck_assert_int_eq(sr.done, 1);

  pool_finish(&p);
  ck_assert_int_eq(count_threads(), threads0);
  ck_assert_int_eq(qt_count_fds(), fds0);
}
END_TEST

/* ---- 8. Options refused ----------------------------------------------- */

/* A clustered broker serves on one worker: with two it is refused, and
 * the reason names the workers. More workers than the maximum are
 * refused. Neither leaves a broker behind. */
START_TEST(test_cluster_and_worker_counts_refused) {
  qrpc_broker_opts bo;
  qrpc_broker *b = NULL;
  char err[256] = "";
  qrpc_broker_opts_default(&bo);
  bo.cluster = "nats://127.0.0.1:1";
  bo.server.workers = 2;
  ck_assert_int_eq(
      qrpc_broker_new(loop, "127.0.0.1:0", stls, &bo, &b, err, sizeof(err)),
      QRPC_EINVAL);
  ck_assert_ptr_null(b);
  ck_assert_msg(strstr(err, "workers") != NULL, "err: %s", err);

  qrpc_broker_opts_default(&bo);
  bo.server.workers = QRPCI_MAX_WORKERS + 1;
  err[0] = '\0';
  ck_assert_int_eq(
      qrpc_broker_new(loop, "127.0.0.1:0", stls, &bo, &b, err, sizeof(err)),
      QRPC_EINVAL);
  ck_assert_ptr_null(b);
  ck_assert_uint_eq(qrpci_loop_conn_count(loop), 0);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("broker_workers");
  TCase *t = tcase_create("workers");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_set_timeout(t, 180);
  tcase_add_test(t, test_connections_spread_over_workers);
  tcase_add_test(t, test_publish_reaches_every_worker);
  tcase_add_test(t, test_order_per_publisher_across_workers);
  tcase_add_test(t, test_retained_across_workers);
  tcase_add_test(t, test_queue_group_across_workers);
  tcase_add_test(t, test_stats_sum_over_workers);
  tcase_add_test(t, test_graceful_shutdown_two_workers);
  tcase_add_test(t, test_cluster_and_worker_counts_refused);
  suite_add_tcase(s, t);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? EXIT_FAILURE : EXIT_SUCCESS;
}
