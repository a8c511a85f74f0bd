/*
 * The broker end to end over loopback: qrpc_broker and
 * qrpc_broker_client with real handshakes. Fan-out to 100 reliable
 * subscribers in order, realtime subscribers under overload, each
 * slow-consumer policy with a subscriber whose loop is not run (its
 * socket is not read, as for a stalled process), ACLs, retained messages,
 * unsubscribe and statistics, a broker restart with the clients
 * reconnecting and resubscribing, and topics, patterns and tokens holding
 * NUL bytes, sent as raw requests.
 */
#include <check.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "qrpc/broker.h"
#include "qrpc/broker.qrpc.h"
#include "qrpc/qrpc.h"
#include "quic/testing.h"

static qt_certs certs;
static qrpc_loop *loop;  /* broker and most clients */
static qrpc_loop *loop2; /* a subscriber that can be stalled */
static qrpc_tls_config *stls;
static qrpc_tls_config *ctls;

static void setup(void) {
  ck_assert_int_eq(qt_env_setup(&certs, &loop, &stls, &ctls), 0);
  ck_assert_int_eq(qrpc_loop_new(NULL, &loop2), 0);
}

static void teardown(void) {
  qrpc_loop_free(loop2);
  loop2 = NULL;
  qt_env_teardown(&certs, &loop, &stls, &ctls);
}

/* ---- Fixtures ---------------------------------------------------------- */

static qrpc_broker *broker_start(qrpc_broker_opts *bo, char *addr, size_t cap,
                                 const char *bind) {
  qrpc_broker_opts def;
  if (!bo) {
    qrpc_broker_opts_default(&def);
    bo = &def;
  }
  qrpc_broker *b = NULL;
  char err[256] = "";
  int rv = qrpc_broker_new(loop, bind ? bind : "127.0.0.1:0", stls, bo, &b, err,
                           sizeof(err));
  ck_assert_msg(rv == 0, "qrpc_broker_new: %s (%s)", qrpc_strerror(rv), err);
  snprintf(addr, cap, "127.0.0.1:%u",
           (unsigned)qrpc_server_port(qrpc_broker_server(b)));
  return b;
}

typedef struct client {
  qrpc_broker_client *bc;
  int ready;
  int refused; /* on_ready with a status */
  int disconnects;
  qt_close_rec close;
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
  client *c = ud;
  c->disconnects++;
  qt_close_rec_set(&c->close, info);
}

static void client_start_on(client *c, qrpc_loop *l, const char *addr,
                            const char *token, size_t stream_window) {
  memset(c, 0, sizeof(*c));
  qrpc_broker_client_opts o;
  qrpc_broker_client_opts_default(&o);
  o.token = token;
  o.client_name = "test";
  o.client.backoff_initial_ms = 50;
  o.client.backoff_max_ms = 200;
  if (stream_window) o.client.conn.stream_window = stream_window;
  o.on_ready = c_on_ready;
  o.on_disconnect = c_on_disconnect;
  o.user_data = c;
  ck_assert_int_eq(qrpc_broker_client_new(l, addr, ctls, &o, &c->bc), 0);
}

static void client_start(client *c, const char *addr, const char *token) {
  client_start_on(c, loop, addr, token, 0);
  ck_assert(qt_run_until_count(loop, &c->ready, 1, QT_WAIT_MS));
}

/* A subscriber that records what it gets. */
typedef struct sub {
  qrpc_broker_sub *h;
  int subscribed; /* on_subscribed calls */
  int ended;
  int end_status;
  uint64_t received;
  uint64_t out_of_order;
  uint64_t last_seq; /* from the payload: 8 bytes big-endian */
  uint64_t dropped;  /* as reported by on_dropped */
  int retained;
  char last_topic[64];
  uint64_t per_topic[16]; /* latest value seen per topic index */
  uint64_t first_seq;
} sub;

static void s_on_message(qrpc_broker_sub *h, const qrpc_broker_msg *m,
                         void *ud) {
  sub *s = ud;
  if (m->retained) s->retained++;
  size_t n = m->topic_len < sizeof(s->last_topic) - 1
                 ? m->topic_len
                 : sizeof(s->last_topic) - 1;
  memcpy(s->last_topic, m->topic, n);
  s->last_topic[n] = '\0';
  if (m->len < 8) {
    s->received++;
    return;
  }
  uint64_t seq = qt_get_be64(m->payload);
  if (s->received == 0) s->first_seq = seq;
  if (seq <= s->last_seq && s->received) s->out_of_order++;
  s->last_seq = seq;
  s->received++;
  /* Topics "t.<k>" record their latest value per k. */
  if (m->topic_len == 3 && m->topic[0] == 't' && m->topic[2] >= 'a' &&
      m->topic[2] < 'a' + 16)
    s->per_topic[m->topic[2] - 'a'] = seq;
}

static void s_on_subscribed(qrpc_broker_sub *h, uint64_t id, void *ud) {
  ((sub *)ud)->subscribed++;
}

static void s_on_dropped(qrpc_broker_sub *h, uint64_t n, void *ud) {
  ((sub *)ud)->dropped += n;
}

static void s_on_end(qrpc_broker_sub *h, int status, const char *d, void *ud) {
  sub *s = ud;
  s->ended++;
  s->end_status = status;
  s->h = NULL;
}

static const qrpc_broker_sub_callbacks sub_cbs = {
    .on_message = s_on_message,
    .on_subscribed = s_on_subscribed,
    .on_dropped = s_on_dropped,
    .on_end = s_on_end,
};

static void subscribe(client *c, sub *s, const char *pattern,
                      const qrpc_broker_sub_opts *o) {
  memset(s, 0, sizeof(*s));
  ck_assert_int_eq(qrpc_broker_subscribe(c->bc, pattern, o, &sub_cbs, s, &s->h),
                   0);
}

/* Publishes with an answer, counting them. */
typedef struct pubs {
  int sent, acked, failed;
  int last_status;
  uint32_t last_subscribers;
} pubs;

static void p_done(qrpc_broker_client *bc, int status, uint32_t n,
                   const char *detail, void *ud) {
  pubs *p = ud;
  if (status == 0)
    p->acked++;
  else
    p->failed++;
  p->last_status = status;
  p->last_subscribers = n;
}

static void publish_seq(client *c, pubs *p, const char *topic, uint64_t seq,
                        size_t len, int flags) {
  uint8_t buf[2048];
  ck_assert(len >= 8 && len <= sizeof(buf));
  memset(buf, 0x5a, len);
  qt_put_be64(buf, seq);
  ck_assert_int_eq(
      qrpc_broker_publish(c->bc, topic, buf, len, flags, p_done, p), 0);
  p->sent++;
}

/* Runs the loop until s has received n messages, or QT_WAIT_MS passed
 * (the assertions that follow say which). */
static void wait_received(const sub *s, uint64_t n) {
  uint64_t end = qt_now_ms() + QT_WAIT_MS;
  while (s->received < n && qt_now_ms() < end) qrpc_loop_run_for(loop, 5);
}

/* Runs loop and loop2 in turns for ms milliseconds. */
static void run_both_for(uint64_t ms) {
  uint64_t end = qt_now_ms() + ms;
  while (qt_now_ms() < end) {
    qrpc_loop_run_for(loop, 2);
    qrpc_loop_run_for(loop2, 2);
  }
}

/* ---- Fan-out ---------------------------------------------------------- */

#define FAN_SUBS 100
#define FAN_MSGS 10000
#define FAN_WINDOW 500

typedef struct fan {
  sub subs[FAN_SUBS];
  uint64_t slowest;
} fan;

static uint64_t slowest(const fan *f) {
  uint64_t m = UINT64_MAX;
  for (int i = 0; i < FAN_SUBS; i++)
    if (f->subs[i].received < m) m = f->subs[i].received;
  return m;
}

START_TEST(test_fanout_100_reliable_in_order) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr), NULL);
  static client subs_c[FAN_SUBS];
  static fan f;
  for (int i = 0; i < FAN_SUBS; i++) {
    client_start_on(&subs_c[i], loop, addr, NULL, 0);
    subscribe(&subs_c[i], &f.subs[i], "game.lobby.*", NULL);
  }
  int confirmed = 0;
  uint64_t end = qt_now_ms() + 10000;
  while (confirmed < FAN_SUBS && qt_now_ms() < end) {
    qrpc_loop_run_for(loop, 5);
    confirmed = 0;
    for (int i = 0; i < FAN_SUBS; i++) confirmed += f.subs[i].subscribed;
  }
  ck_assert_int_eq(confirmed, FAN_SUBS);
  client pub;
  client_start(&pub, addr, NULL);
  pubs p = {0};
  uint64_t seq = 0;
  end = qt_now_ms() + 120000;
  /* The publisher stays at most FAN_WINDOW messages ahead of the slowest
   * subscriber, like qrpc-bench's --window. */
  while ((f.slowest = slowest(&f)) < FAN_MSGS && qt_now_ms() < end) {
    while (seq < FAN_MSGS && seq < f.slowest + FAN_WINDOW)
      publish_seq(&pub, &p, "game.lobby.42", ++seq, 64, 0);
    qrpc_loop_run_for(loop, 1);
  }
  for (int i = 0; i < FAN_SUBS; i++) {
    ck_assert_uint_eq(f.subs[i].received, FAN_MSGS);
    ck_assert_uint_eq(f.subs[i].out_of_order, 0);
    ck_assert_uint_eq(f.subs[i].first_seq, 1);
    ck_assert_uint_eq(f.subs[i].last_seq, FAN_MSGS);
    ck_assert_uint_eq(f.subs[i].dropped, 0);
  }
  ck_assert(qt_run_until_count(loop, &p.acked, FAN_MSGS, QT_WAIT_MS));
  ck_assert_int_eq(p.failed, 0);
  ck_assert_uint_eq(p.last_subscribers, FAN_SUBS);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.published, FAN_MSGS);
  ck_assert_uint_eq(st.delivered, (uint64_t)FAN_MSGS * FAN_SUBS);
  ck_assert_uint_eq(st.dropped, 0);
  ck_assert_uint_eq(st.queued_bytes, 0);
  qrpc_broker_client_free(pub.bc);
  for (int i = 0; i < FAN_SUBS; i++) qrpc_broker_client_free(subs_c[i].bc);
  qrpc_broker_free(b);
}
END_TEST

/* Publishes that reach the broker together are fanned out together
 * (subscription by subscription at the end of its loop turn). Topics
 * interleaved in one burst still reach each subscriber in order, once; a
 * subscription confirmed between two bursts gets all of the second and
 * nothing out of order; one cancelled meanwhile keeps an unbroken prefix. */
START_TEST(test_batched_fanout_order) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr), NULL);
  client ca, cb, cw, cn, cu, pub;
  sub sa, sb, sw, sn, su;
  client_start(&ca, addr, NULL);
  client_start(&cb, addr, NULL);
  client_start(&cw, addr, NULL);
  client_start(&cu, addr, NULL);
  client_start(&cn, addr, NULL);
  subscribe(&ca, &sa, "t.a", NULL);
  subscribe(&cb, &sb, "t.b", NULL);
  subscribe(&cw, &sw, "t.*", NULL);
  subscribe(&cu, &su, "t.a", NULL);
  ck_assert(qt_run_until_count(loop, &sa.subscribed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &sb.subscribed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &sw.subscribed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &su.subscribed, 1, QT_WAIT_MS));
  client_start(&pub, addr, NULL);
  pubs p = {0};
  /* One burst, no loop turn in between: a, a, b, a, a, b, ... */
  uint64_t na = 0, nb = 0;
  for (uint64_t k = 1; k <= 300; k++) {
    int to_b = k % 3 == 0;
    publish_seq(&pub, &p, to_b ? "t.b" : "t.a", k, 32, 0);
    to_b ? nb++ : na++;
  }
  wait_received(&sw, 300);
  wait_received(&sa, na);
  wait_received(&sb, nb);
  ck_assert_uint_eq(sw.received, 300);
  ck_assert_uint_eq(sw.out_of_order, 0);
  ck_assert_uint_eq(sw.last_seq, 300);
  ck_assert_uint_eq(sa.received, na);
  ck_assert_uint_eq(sa.out_of_order, 0);
  ck_assert_uint_eq(sb.received, nb);
  ck_assert_uint_eq(sb.out_of_order, 0);
  ck_assert_uint_eq(sb.last_seq, 300);

  /* A second burst to t.a, with one subscriber cancelling in the middle
   * of it; then a new subscriber, confirmed, and a third burst. */
  for (uint64_t k = 301; k <= 400; k++) {
    publish_seq(&pub, &p, "t.a", k, 32, 0);
    if (k == 350) qrpc_broker_unsubscribe(su.h);
  }
  subscribe(&cn, &sn, "t.a", NULL);
  ck_assert(qt_run_until_count(loop, &sn.subscribed, 1, QT_WAIT_MS));
  for (uint64_t k = 401; k <= 500; k++) publish_seq(&pub, &p, "t.a", k, 32, 0);
  wait_received(&sa, na + 200);
  ck_assert_uint_eq(sa.received, na + 200);
  ck_assert_uint_eq(sa.out_of_order, 0);
  ck_assert_uint_eq(sa.last_seq, 500);
  /* The newcomer: everything from its first message on, at least the
   * whole third burst. */
  wait_received(&sn, 100);
  ck_assert_uint_eq(sn.out_of_order, 0);
  ck_assert_uint_eq(sn.last_seq, 500);
  ck_assert_uint_le(sn.first_seq, 401);
  ck_assert_uint_eq(sn.received, 500 - sn.first_seq + 1);
  /* The one that left: an unbroken prefix of what t.a carried. */
  ck_assert_uint_eq(su.out_of_order, 0);
  ck_assert_uint_le(su.received, na + 100);
  ck_assert(qt_run_until_count(loop, &p.acked, 500, QT_WAIT_MS));
  ck_assert_int_eq(p.failed, 0);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.published, 500);
  ck_assert_uint_eq(st.dropped, 0);
  client *all[] = {&ca, &cb, &cw, &cn, &cu, &pub};
  for (size_t i = 0; i < sizeof(all) / sizeof(all[0]); i++)
    qrpc_broker_client_free(all[i]->bc);
  qrpc_broker_free(b);
}
END_TEST

/* ---- Realtime --------------------------------------------------------- */

START_TEST(test_realtime_delivery_and_overload) {
  char addr[64];
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  /* A short datagram queue, so that a batch of publishes read in one loop
   * turn overflows it whatever the speed of the build. */
  bo.server.endpoint.conn.datagram_queue_len = 16;
  qrpc_broker *b = broker_start(&bo, addr, sizeof(addr), NULL);
  client sc, pc;
  client_start(&sc, addr, NULL);
  client_start(&pc, addr, NULL);
  qrpc_broker_sub_opts so;
  qrpc_broker_sub_opts_default(&so);
  so.mode = QRPC_BROKER_REALTIME;
  so.latest_only = 1;
  sub s;
  subscribe(&sc, &s, "state.>", &so);
  ck_assert(qt_run_until_count(loop, &s.subscribed, 1, QT_WAIT_MS));
  ck_assert_uint_ne(qrpc_broker_sub_id(s.h), 0);

  /* A trickle arrives (datagrams on loopback are rarely lost). */
  pubs p = {0};
  for (int i = 1; i <= 20; i++) {
    publish_seq(&pc, &p, "state.player.1", (uint64_t)i, 100, 0);
    qt_run_for(loop, 2);
  }
  ck_assert(qt_run_until_count(loop, &p.acked, 20, QT_WAIT_MS));
  wait_received(&s, 15);
  ck_assert_uint_ge(s.received, 15);
  ck_assert_uint_eq(s.out_of_order, 0); /* latest-only */
  ck_assert_str_eq(s.last_topic, "state.player.1");

  /* Overload: far more than the subscriber's datagram queue takes in one
   * loop turn. The broker drops, queues nothing of its own, and the heap
   * does not follow the flood. */
  size_t heap0 = qt_heap_in_use();
  const int flood = 20000;
  uint8_t big[1000];
  memset(big, 1, sizeof(big));
  for (int round = 0; round < 10; round++) {
    for (int i = 0; i < flood / 10; i++) {
      qt_put_be64(big, (uint64_t)(100 + round * flood + i));
      ck_assert_int_eq(qrpc_broker_publish(pc.bc, "state.player.2", big,
                                           sizeof(big), 0, NULL, NULL),
                       0);
    }
    qt_run_for(loop, 20);
  }
  qrpc_broker_stats st;
  uint64_t end = qt_now_ms() + 60000;
  do {
    qrpc_loop_run_for(loop, 20);
    qrpc_broker_get_stats(b, &st);
  } while (st.published < 20 + (uint64_t)flood && qt_now_ms() < end);
  qt_run_for(loop, 100);
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.published, 20 + (uint64_t)flood);
  ck_assert_uint_gt(st.dropped, 0);
  ck_assert_uint_eq(st.delivered + st.dropped, 20 + (uint64_t)flood);
  ck_assert_uint_eq(st.queued_bytes, 0);
  size_t heap1 = qt_heap_in_use();
  if (!qt_asan_enabled())
    ck_assert_msg(heap1 < heap0 + (8u << 20), "heap grew %zu -> %zu", heap0,
                  heap1);
  ck_assert_uint_lt(s.received, 20 + (uint64_t)flood);
  ck_assert_uint_eq(s.out_of_order, 0);
  qrpc_broker_client_free(sc.bc);
  qrpc_broker_client_free(pc.bc);
  qrpc_broker_free(b);
}
END_TEST

/* ---- Slow consumers --------------------------------------------------- */

#define SLOW_QUEUE 50
#define SLOW_MSGS 3000
#define SLOW_LEN 1000

/* A stalled subscriber on loop2 with a small receive window, and a fast
 * one on loop; the publisher floods while loop2 is not run. */
typedef struct slow_env {
  qrpc_broker *b;
  char addr[64];
  client slow_c, fast_c, pub;
  sub slow, fast;
  pubs p;
} slow_env;

static void slow_setup(slow_env *e, qrpc_broker_policy policy,
                       const char *pattern) {
  memset(e, 0, sizeof(*e));
  /* The slow subscriber's loop is stalled on purpose, under valgrind for
   * longer than the server's dead-peer timeout: that would end its
   * connection for another reason than the one under test. */
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  bo.server.endpoint.conn.dead_peer_timeout_ms = 0;
  e->b = broker_start(&bo, e->addr, sizeof(e->addr), NULL);
  client_start_on(&e->slow_c, loop2, e->addr, NULL, 64 * 1024);
  qrpc_broker_sub_opts so;
  qrpc_broker_sub_opts_default(&so);
  so.policy = policy;
  so.queue_messages = SLOW_QUEUE;
  subscribe(&e->slow_c, &e->slow, pattern, &so);
  client_start(&e->fast_c, e->addr, NULL);
  subscribe(&e->fast_c, &e->fast, pattern, NULL);
  client_start(&e->pub, e->addr, NULL);
  uint64_t end = qt_now_ms() + QT_WAIT_MS;
  while ((!e->slow.subscribed || !e->fast.subscribed) && qt_now_ms() < end)
    run_both_for(10);
  ck_assert(e->slow.subscribed && e->fast.subscribed);
}

static void slow_flood(slow_env *e, int ntopics) {
  for (uint64_t i = 1; i <= SLOW_MSGS; i++) {
    char topic[8] = "t.a";
    topic[2] = (char)('a' + (int)(i % (uint64_t)ntopics));
    publish_seq(&e->pub, &e->p, topic, i, SLOW_LEN, 0);
    if (i % 100 == 0) qrpc_loop_run_for(loop, 1);
  }
  /* The fast subscriber gets everything while the slow one is stalled. */
  uint64_t end = qt_now_ms() + 20000;
  while (e->fast.received < SLOW_MSGS && qt_now_ms() < end)
    qrpc_loop_run_for(loop, 5);
  ck_assert_uint_eq(e->fast.received, SLOW_MSGS);
  ck_assert_uint_eq(e->fast.out_of_order, 0);
  ck_assert(qt_run_until_count(loop, &e->p.acked, SLOW_MSGS, QT_WAIT_MS));
}

static void slow_teardown(slow_env *e) {
  qrpc_broker_client_free(e->pub.bc);
  qrpc_broker_client_free(e->fast_c.bc);
  qrpc_broker_client_free(e->slow_c.bc);
  qrpc_broker_free(e->b);
}

START_TEST(test_slow_disconnect) {
  static slow_env e;
  slow_setup(&e, QRPC_BROKER_POLICY_DEFAULT, "t.*");
  slow_flood(&e, 1);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(e.b, &st);
  ck_assert_uint_eq(st.slow_disconnects, 1);
  ck_assert_uint_eq(st.queued_bytes, 0);
  /* The stalled client learns why once it runs again, and comes back. */
  uint64_t end = qt_now_ms() + 10000;
  while (e.slow_c.disconnects == 0 && qt_now_ms() < end) run_both_for(10);
  ck_assert_int_eq(e.slow_c.disconnects, 1);
  ck_assert_msg(e.slow_c.close.code == 0x5, /* RESOURCE_LIMIT */
                "closed by kind %d, local %d, code %llu: %s",
                (int)e.slow_c.close.kind, e.slow_c.close.local,
                (unsigned long long)e.slow_c.close.code, e.slow_c.close.reason);
  ck_assert_msg(strstr(e.slow_c.close.reason, "slow consumer") &&
                    strstr(e.slow_c.close.reason, "'t.*'"),
                "reason: %s", e.slow_c.close.reason);
  ck_assert_uint_lt(e.slow.received, SLOW_MSGS);
  end = qt_now_ms() + 10000;
  while (e.slow.subscribed < 2 && qt_now_ms() < end) run_both_for(10);
  ck_assert_int_eq(e.slow.subscribed, 2);
  slow_teardown(&e);
}
END_TEST

/* Lets the stalled subscriber catch up, then checks the tail. */
static void slow_catch_up(slow_env *e) {
  uint64_t before = ~(uint64_t)0;
  uint64_t end = qt_now_ms() + 20000;
  /* Until nothing more arrives for a while. */
  while (qt_now_ms() < end) {
    before = e->slow.received;
    run_both_for(200);
    if (e->slow.received == before && e->slow.last_seq != 0) break;
  }
}

START_TEST(test_slow_drop_oldest) {
  static slow_env e;
  slow_setup(&e, QRPC_BROKER_DROP_OLDEST, "t.*");
  slow_flood(&e, 1);
  slow_catch_up(&e);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(e.b, &st);
  ck_assert_uint_gt(st.dropped, 0);
  ck_assert_uint_eq(st.slow_disconnects, 0);
  /* The newest messages survive: the last one arrives, in order, and the
   * drops were reported exactly. */
  ck_assert_uint_eq(e.slow.last_seq, SLOW_MSGS);
  ck_assert_uint_eq(e.slow.out_of_order, 0);
  ck_assert_uint_eq(e.slow.received + e.slow.dropped, SLOW_MSGS);
  ck_assert_uint_eq(e.slow.dropped, st.dropped);
  ck_assert_int_eq(e.slow_c.disconnects, 0);
  slow_teardown(&e);
}
END_TEST

START_TEST(test_slow_drop_newest) {
  static slow_env e;
  slow_setup(&e, QRPC_BROKER_DROP_NEWEST, "t.*");
  slow_flood(&e, 1);
  slow_catch_up(&e);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(e.b, &st);
  ck_assert_uint_gt(st.dropped, 0);
  /* The oldest survive: a run from 1 with no gap before the drops, and
   * the last message is lost. */
  ck_assert_uint_eq(e.slow.first_seq, 1);
  ck_assert_uint_lt(e.slow.last_seq, SLOW_MSGS);
  ck_assert_uint_eq(e.slow.received + e.slow.dropped, SLOW_MSGS);
  ck_assert_uint_eq(e.slow.out_of_order, 0);
  slow_teardown(&e);
}
END_TEST

START_TEST(test_slow_conflate_latest_per_topic) {
  static slow_env e;
  const int ntopics = 10;
  slow_setup(&e, QRPC_BROKER_CONFLATE, "t.*");
  slow_flood(&e, ntopics);
  slow_catch_up(&e);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(e.b, &st);
  ck_assert_uint_gt(st.conflated, 0);
  ck_assert_uint_eq(st.slow_disconnects, 0);
  /* Once caught up, the subscriber holds the latest value of every topic:
   * message i went to topic i % ntopics. */
  for (int k = 0; k < ntopics; k++) {
    uint64_t last = SLOW_MSGS - ((SLOW_MSGS - (uint64_t)k) % ntopics);
    ck_assert_msg(
        e.slow.per_topic[k] == last, "topic %d: latest %llu, expected %llu", k,
        (unsigned long long)e.slow.per_topic[k], (unsigned long long)last);
  }
  ck_assert_uint_lt(e.slow.received, SLOW_MSGS);
  slow_teardown(&e);
}
END_TEST

/* ---- ACL -------------------------------------------------------------- */

static char acl_path[64];

static void write_acl(void) {
  snprintf(acl_path, sizeof(acl_path), "/tmp/qrpc-acl-XXXXXX");
  int fd = mkstemp(acl_path);
  ck_assert_int_ge(fd, 0);
  const char *text = "# test ACL\n"
                     "token alice-secret\n"
                     "  publish chat.> news.sport\n"
                     "  subscribe chat.>\n"
                     "token bob-secret\n"
                     "  subscribe news.*\n"
                     "anonymous\n"
                     "  subscribe public.>\n";
  ck_assert_int_eq(write(fd, text, strlen(text)), (ssize_t)strlen(text));
  close(fd);
}

START_TEST(test_acl_allow_deny) {
  write_acl();
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  bo.acl_path = acl_path;
  char addr[64];
  qrpc_broker *b = broker_start(&bo, addr, sizeof(addr), NULL);
  unlink(acl_path);
  client alice, bob, anon, bad;
  client_start(&alice, addr, "alice-secret");
  client_start(&bob, addr, "bob-secret");
  client_start(&anon, addr, NULL);
  client_start_on(&bad, loop, addr, "wrong-token", 0);

  sub a_chat, b_news, b_chat, n_pub, n_chat;
  subscribe(&alice, &a_chat, "chat.room.*", NULL); /* covered by chat.> */
  subscribe(&bob, &b_news, "news.sport", NULL);    /* covered by news.* */
  subscribe(&bob, &b_chat, "chat.>", NULL);        /* denied */
  subscribe(&anon, &n_pub, "public.>", NULL);
  subscribe(&anon, &n_chat, ">", NULL); /* wider than allowed: denied */
  ck_assert(qt_run_until_count(loop, &b_chat.ended, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &n_chat.ended, 1, QT_WAIT_MS));
  ck_assert_int_eq(b_chat.end_status, QRPC_STATUS_PERMISSION_DENIED);
  ck_assert_int_eq(n_chat.end_status, QRPC_STATUS_PERMISSION_DENIED);
  ck_assert(qt_run_until_count(loop, &a_chat.subscribed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &b_news.subscribed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &n_pub.subscribed, 1, QT_WAIT_MS));

  /* The unknown token is refused on Hello. */
  uint64_t end = qt_now_ms() + QT_WAIT_MS;
  while (!bad.refused && qt_now_ms() < end) qrpc_loop_run_for(loop, 5);
  ck_assert_int_eq(bad.refused, QRPC_STATUS_UNAUTHENTICATED);
  ck_assert(!qrpc_broker_client_ready(bad.bc));

  pubs ok = {0}, denied = {0};
  publish_seq(&alice, &ok, "chat.room.1", 1, 16, 0);
  publish_seq(&alice, &ok, "news.sport", 2, 16, 0);
  publish_seq(&alice, &denied, "news.weather", 3, 16, 0);
  publish_seq(&bob, &denied, "news.sport", 4, 16, 0);
  publish_seq(&anon, &denied, "public.x", 5, 16, 0);
  ck_assert(qt_run_until_count(loop, &ok.acked, 2, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &denied.failed, 3, QT_WAIT_MS));
  ck_assert_int_eq(ok.failed, 0);
  ck_assert_int_eq(denied.acked, 0);
  ck_assert_int_eq(denied.last_status, QRPC_STATUS_PERMISSION_DENIED);
  wait_received(&a_chat, 1);
  wait_received(&b_news, 1);
  qt_run_for(loop, 50); /* nothing more may come */
  ck_assert_uint_eq(a_chat.received, 1);
  ck_assert_uint_eq(b_news.received, 1);
  ck_assert_uint_eq(n_pub.received, 0);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.denied, 6); /* 2 subscribes, 1 token, 3 publishes */
  qrpc_broker_client_free(alice.bc);
  qrpc_broker_client_free(bob.bc);
  qrpc_broker_client_free(anon.bc);
  qrpc_broker_client_free(bad.bc);
  qrpc_broker_free(b);
}
END_TEST

START_TEST(test_acl_bad_file) {
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  bo.acl_path = "/nonexistent/qrpc-acl";
  qrpc_broker *b = NULL;
  char err[256] = "";
  ck_assert_int_ne(
      qrpc_broker_new(loop, "127.0.0.1:0", stls, &bo, &b, err, sizeof(err)), 0);
  ck_assert_ptr_null(b);
  ck_assert_msg(strstr(err, "/nonexistent/qrpc-acl"), "err: %s", err);
}
END_TEST

/* ---- Retained, unsubscribe, stats, refusals --------------------------- */

START_TEST(test_retained_message) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr), NULL);
  client pc, sc;
  client_start(&pc, addr, NULL);
  client_start(&sc, addr, NULL);
  pubs p = {0};
  publish_seq(&pc, &p, "score.match.1", 1, 16, QRPC_BROKER_RETAIN);
  publish_seq(&pc, &p, "score.match.1", 2, 16, QRPC_BROKER_RETAIN);
  publish_seq(&pc, &p, "score.match.2", 7, 16, QRPC_BROKER_RETAIN);
  publish_seq(&pc, &p, "score.match.3", 9, 16, 0); /* not retained */
  ck_assert(qt_run_until_count(loop, &p.acked, 4, QT_WAIT_MS));
  sub s;
  subscribe(&sc, &s, "score.match.1", NULL);
  ck_assert(qt_run_until_count(loop, &s.retained, 1, QT_WAIT_MS));
  ck_assert_uint_eq(s.last_seq, 2); /* the latest retained value */
  ck_assert_uint_eq(s.received, 1);
  /* Live messages follow the retained one. */
  publish_seq(&pc, &p, "score.match.1", 3, 16, 0);
  uint64_t three = 2;
  (void)three;
  ck_assert(qt_run_until_count(loop, &p.acked, 5, QT_WAIT_MS));
  wait_received(&s, 2);
  ck_assert_uint_eq(s.received, 2);
  ck_assert_uint_eq(s.last_seq, 3);
  /* A wildcard gets every retained topic; an empty retained publish clears
   * one. */
  publish_seq(&pc, &p, "score.match.2", 8, 8, 0);
  ck_assert_int_eq(qrpc_broker_publish(pc.bc, "score.match.1", NULL, 0,
                                       QRPC_BROKER_RETAIN, p_done, &p),
                   0);
  ck_assert(qt_run_until_count(loop, &p.acked, 7, QT_WAIT_MS));
  sub w;
  subscribe(&sc, &w, "score.>", NULL);
  ck_assert(qt_run_until_count(loop, &w.retained, 1, QT_WAIT_MS));
  qt_run_for(loop, 50);
  ck_assert_int_eq(w.retained, 1);
  ck_assert_str_eq(w.last_topic, "score.match.2");
  ck_assert_uint_eq(w.last_seq, 7);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.retained, 1);
  qrpc_broker_client_free(pc.bc);
  qrpc_broker_client_free(sc.bc);
  qrpc_broker_free(b);
}
END_TEST

typedef struct stats_rec {
  int calls;
  int status;
  qrpc_broker_stats broker;
  size_t n;
  uint64_t delivered0;
} stats_rec;

static void on_stats(qrpc_broker_client *bc, int status,
                     const qrpc_broker_stats *b,
                     const qrpc_broker_sub_stats *subs, size_t n, void *ud) {
  stats_rec *r = ud;
  r->calls++;
  r->status = status;
  if (b) r->broker = *b;
  r->n = n;
  r->delivered0 = n ? subs[0].delivered : 0;
}

START_TEST(test_unsubscribe_stats_refusals) {
  char addr[64];
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  bo.max_payload = 1000;
  bo.max_subscriptions = 2;
  qrpc_broker *b = broker_start(&bo, addr, sizeof(addr), NULL);
  client c;
  client_start(&c, addr, NULL);
  sub s1, s2, s3;
  subscribe(&c, &s1, "a.b", NULL);
  subscribe(&c, &s2, "a.*", NULL);
  ck_assert(qt_run_until_count(loop, &s2.subscribed, 1, QT_WAIT_MS));
  subscribe(&c, &s3, "a.>", NULL); /* one too many */
  ck_assert(qt_run_until_count(loop, &s3.ended, 1, QT_WAIT_MS));
  ck_assert_int_eq(s3.end_status, QRPC_STATUS_RESOURCE_EXHAUSTED);

  pubs p = {0};
  publish_seq(&c, &p, "a.b", 1, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 1, QT_WAIT_MS));
  ck_assert_uint_eq(p.last_subscribers, 2);
  wait_received(&s1, 1);
  wait_received(&s2, 1);
  ck_assert_uint_eq(s1.received, 1);
  ck_assert_uint_eq(s2.received, 1);

  /* Invalid topics are refused locally; payload limits by the broker
   * (the client learned max_payload on Hello). */
  uint8_t big[1001] = {0};
  ck_assert_int_eq(qrpc_broker_publish(c.bc, "a..b", "x", 1, 0, p_done, &p),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_broker_publish(c.bc, "a.*", "x", 1, 0, p_done, &p),
                   QRPC_EINVAL);
  ck_assert_int_eq(
      qrpc_broker_publish(c.bc, "a.b", big, sizeof(big), 0, p_done, &p),
      QRPC_EMSGSIZE);

  stats_rec r = {0};
  ck_assert_int_eq(qrpc_broker_client_stats(c.bc, on_stats, &r), 0);
  ck_assert(qt_run_until_count(loop, &r.calls, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, 0);
  ck_assert_uint_eq(r.n, 2);
  ck_assert_uint_eq(r.delivered0, 1);
  ck_assert_uint_eq(r.broker.published, 1);
  ck_assert_uint_eq(r.broker.subscriptions, 2);

  /* After unsubscribing nothing more arrives for it. */
  qrpc_broker_unsubscribe(s1.h);
  qt_run_for(loop, 30);
  publish_seq(&c, &p, "a.b", 2, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 2, QT_WAIT_MS));
  ck_assert_uint_eq(p.last_subscribers, 1);
  wait_received(&s2, 2);
  qt_run_for(loop, 20); /* nothing may come for s1 meanwhile */
  ck_assert_uint_eq(s1.received, 1);
  ck_assert_uint_eq(s2.received, 2);
  ck_assert_int_eq(s1.ended, 0); /* no callback after unsubscribe */
  qrpc_broker_client_free(c.bc);
  qrpc_broker_free(b);
}
END_TEST

/* Every subscription is a stream: a connection may hold as many as
 * max_subscriptions, far past QUIC's default stream limit. */
START_TEST(test_many_subscriptions_one_connection) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr), NULL);
  client c;
  client_start(&c, addr, NULL);
  enum { N = 300 };
  static sub s[N];
  char pat[32];
  for (int i = 0; i < N; i++) {
    snprintf(pat, sizeof(pat), "many.%d", i);
    subscribe(&c, &s[i], pat, NULL);
  }
  int confirmed = 0;
  uint64_t end = qt_now_ms() + 10000;
  while (confirmed < N && qt_now_ms() < end) {
    qrpc_loop_run_for(loop, 5);
    confirmed = 0;
    for (int i = 0; i < N; i++) confirmed += s[i].subscribed;
  }
  ck_assert_int_eq(confirmed, N);
  pubs p = {0};
  publish_seq(&c, &p, "many.299", 1, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 1, QT_WAIT_MS));
  ck_assert_uint_eq(p.last_subscribers, 1);
  qrpc_broker_client_free(c.bc);
  qrpc_broker_free(b);
}
END_TEST

/* ---- Strings holding NUL bytes ----------------------------------------- */

/* Requests encoded by hand: the client library and protobuf-c both end a
 * string at its first NUL byte, so neither can send one. */
typedef struct pbuf {
  uint8_t b[512];
  size_t n;
} pbuf;

static void pb_varint(pbuf *m, uint64_t v) {
  for (; v >= 0x80; v >>= 7) m->b[m->n++] = (uint8_t)(v | 0x80);
  m->b[m->n++] = (uint8_t)v;
}

/* The field of the IDL's message desc named name. */
static uint32_t field_id(const ProtobufCMessageDescriptor *desc,
                         const char *name) {
  const ProtobufCFieldDescriptor *f =
      protobuf_c_message_descriptor_get_field_by_name(desc, name);
  ck_assert_ptr_nonnull(f);
  return f->id;
}

static void pb_bytes(pbuf *m, const ProtobufCMessageDescriptor *desc,
                     const char *name, const void *p, size_t len) {
  ck_assert_uint_lt(m->n + len + 16, sizeof(m->b));
  pb_varint(m, (uint64_t)field_id(desc, name) << 3 | 2);
  pb_varint(m, len);
  memcpy(m->b + m->n, p, len);
  m->n += len;
}

/* A PublishRequest on topic[0..len) with a 16-byte payload. */
static pbuf publish_req(const char *topic, size_t len, int retain) {
  const ProtobufCMessageDescriptor *d =
      &qrpc__broker__publish_request__descriptor;
  pbuf m = {.n = 0};
  pb_bytes(&m, d, "topic", topic, len);
  pb_bytes(&m, d, "payload", "0123456789abcdef", 16);
  if (retain) {
    pb_varint(&m, (uint64_t)field_id(d, "retain") << 3);
    pb_varint(&m, 1);
  }
  return m;
}

static pbuf subscribe_req(const char *pattern, size_t len) {
  pbuf m = {.n = 0};
  pb_bytes(&m, &qrpc__broker__subscribe_request__descriptor, "pattern", pattern,
           len);
  return m;
}

static pbuf hello_req(const char *token, size_t tlen, const char *name) {
  pbuf m = {.n = 0};
  pb_bytes(&m, &qrpc__broker__hello_request__descriptor, "token", token, tlen);
  pb_bytes(&m, &qrpc__broker__hello_request__descriptor, "client_name", name,
           strlen(name));
  return m;
}

/* One raw call and what came back. */
typedef struct raw_call {
  int done;
  int status;
  int items;
} raw_call;

static void raw_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  raw_call *r = ud;
  r->done++;
  r->status = res->status;
}

static void raw_on_item(qrpc_call *call, const uint8_t *data, size_t len,
                        void *ud) {
  ((raw_call *)ud)->items++;
}

static const qrpc_call_callbacks raw_cbs = {.on_done = raw_on_done,
                                            .on_item = raw_on_item};

/* A plain qrpc client: unary calls on one stream, so they reach the
 * broker in the order they are made. */
static qrpc_client *raw_client(const char *addr) {
  qrpc_client_opts o;
  qrpc_client_opts_default(&o);
  o.rpc.unary_streams = 1;
  qrpc_client *cli = NULL;
  ck_assert_int_eq(qrpc_client_new(loop, addr, ctls, &o, &cli), 0);
  return cli;
}

/* Makes a unary call and waits for its answer; returns its status. */
static int raw_unary(qrpc_client *cli, uint32_t method, const pbuf *m) {
  raw_call r = {0};
  ck_assert_int_eq(
      qrpc_client_call(cli, method, m->b, m->n, NULL, &raw_cbs, &r, NULL), 0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  return r.status;
}

/* A topic with a NUL byte is invalid whatever precedes the NUL: refused
 * with INVALID_ARGUMENT (one-way: dropped), neither delivered nor
 * retained, while the topic before the NUL still works. */
START_TEST(test_nul_in_topic_refused) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr), NULL);
  client sc;
  client_start(&sc, addr, NULL);
  sub exact, all;
  subscribe(&sc, &exact, "a", NULL);
  subscribe(&sc, &all, ">", NULL);
  ck_assert(qt_run_until_count(loop, &exact.subscribed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &all.subscribed, 1, QT_WAIT_MS));

  qrpc_client *cli = raw_client(addr);
  const uint32_t pub = qrpc_broker_Broker_Publish_METHOD_ID;
  pbuf nul = publish_req("a\0b", 3, 0);
  pbuf nul_end = publish_req("a\0", 2, 0);
  pbuf nul_retained = publish_req("a\0b", 3, 1);
  ck_assert_int_eq(raw_unary(cli, pub, &nul), QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert_int_eq(raw_unary(cli, pub, &nul_end), QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert_int_eq(raw_unary(cli, pub, &nul_retained),
                   QRPC_STATUS_INVALID_ARGUMENT);
  ck_assert_int_eq(
      qrpc_client_notify(cli, qrpc_broker_Broker_PublishOneway_METHOD_ID, nul.b,
                         nul.n),
      0);
  /* The same encoding without the NUL goes through, after the others on
   * the same stream. */
  pbuf ok = publish_req("a", 1, 0);
  ck_assert_int_eq(raw_unary(cli, pub, &ok), QRPC_STATUS_OK);

  wait_received(&all, 1);
  wait_received(&exact, 1);
  /* The one-way publish may travel apart from the calls. */
  qrpc_broker_stats st;
  uint64_t end = qt_now_ms() + QT_WAIT_MS;
  do {
    qrpc_loop_run_for(loop, 5);
    qrpc_broker_get_stats(b, &st);
  } while (st.refused < 4 && qt_now_ms() < end);
  qt_run_for(loop, 50); /* nothing more may come */
  ck_assert_uint_eq(exact.received, 1);
  ck_assert_uint_eq(all.received, 1);
  ck_assert_str_eq(all.last_topic, "a");
  ck_assert_int_eq(all.retained, 0);
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.published, 1);
  ck_assert_uint_eq(st.refused, 4);
  ck_assert_uint_eq(st.delivered, 2);
  ck_assert_uint_eq(st.retained, 0);
  qrpc_client_free(cli);
  qrpc_broker_client_free(sc.bc);
  qrpc_broker_free(b);
}
END_TEST

/* A pattern with a NUL byte is refused with INVALID_ARGUMENT, ">\0x" (">"
 * once cut at the NUL, which would match every topic) included. */
START_TEST(test_nul_in_pattern_refused) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr), NULL);
  qrpc_client *cli = raw_client(addr);
  static const struct {
    const char *p;
    size_t len;
  } bad[] = {{"a\0b", 3}, {">\0x", 3}, {"a.*\0", 4}};
  raw_call r[3] = {{0}};
  for (size_t i = 0; i < 3; i++) {
    pbuf m = subscribe_req(bad[i].p, bad[i].len);
    ck_assert_int_eq(qrpc_client_stream(cli,
                                        qrpc_broker_Broker_Subscribe_METHOD_ID,
                                        QRPC_SHAPE_SERVER_STREAM, m.b, m.n,
                                        NULL, &raw_cbs, &r[i], NULL),
                     0);
  }
  for (size_t i = 0; i < 3; i++) {
    ck_assert_msg(qt_run_until_count(loop, &r[i].done, 1, QT_WAIT_MS),
                  "subscription %zu was not refused", i);
    ck_assert_int_eq(r[i].status, QRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_int_eq(r[i].items, 0); /* never confirmed */
  }
  pbuf ok = publish_req("a", 1, 0);
  ck_assert_int_eq(raw_unary(cli, qrpc_broker_Broker_Publish_METHOD_ID, &ok),
                   QRPC_STATUS_OK);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.subscriptions, 0);
  ck_assert_uint_eq(st.delivered, 0);
  qrpc_client_free(cli);
  qrpc_broker_free(b);
}
END_TEST

/* ---- Failover between brokers ----------------------------------------- */

/* A client given two brokers ("A,B") connects to A; when A goes away it
 * moves to B by itself, says hello, renews its subscription there, and
 * receives what is published on B. Its held publishes wait for B. */
START_TEST(test_failover_to_next_broker) {
  char addr_a[64], addr_b[64], both[160];
  qrpc_broker *ba = broker_start(NULL, addr_a, sizeof(addr_a), NULL);
  qrpc_broker *bb = broker_start(NULL, addr_b, sizeof(addr_b), NULL);
  snprintf(both, sizeof(both), "%s,%s", addr_a, addr_b);
  client c, pb;
  client_start(&c, both, NULL);
  client_start(&pb, addr_b, NULL);
  sub s;
  subscribe(&c, &s, "f.>", NULL);
  ck_assert(qt_run_until_count(loop, &s.subscribed, 1, QT_WAIT_MS));
  pubs p = {0};
  publish_seq(&c, &p, "f.a", 1, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 1, QT_WAIT_MS));
  ck_assert_uint_eq(p.last_subscribers, 1); /* on A: its own subscription */
  wait_received(&s, 1);
  qrpc_broker_stats st;
  qrpc_broker_get_stats(ba, &st);
  ck_assert_uint_eq(st.subscriptions, 1);

  qrpc_broker_free(ba);
  ck_assert(qt_run_until_count(loop, &c.ready, 2, QT_WAIT_MS));
  ck_assert_int_eq(c.disconnects, 1);
  ck_assert(qt_run_until_count(loop, &s.subscribed, 2, QT_WAIT_MS));
  ck_assert_int_eq(s.ended, 0);
  publish_seq(&pb, &p, "f.b", 2, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 2, QT_WAIT_MS));
  ck_assert_uint_eq(p.last_subscribers, 1);
  wait_received(&s, 2);
  ck_assert_uint_eq(s.received, 2);
  ck_assert_uint_eq(s.last_seq, 2);
  /* The client's own publishes now go to B. */
  publish_seq(&c, &p, "f.c", 3, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 3, QT_WAIT_MS));
  wait_received(&s, 3);
  ck_assert_uint_eq(s.last_seq, 3);
  qrpc_broker_get_stats(bb, &st);
  ck_assert_uint_eq(st.subscriptions, 1);
  ck_assert_uint_eq(st.published, 2);
  qrpc_broker_client_free(c.bc);
  qrpc_broker_client_free(pb.bc);
  qrpc_broker_free(bb);
}
END_TEST

/* An address list with an empty entry is refused. */
START_TEST(test_failover_list_checked) {
  qrpc_broker_client *bc = NULL;
  ck_assert_int_eq(
      qrpc_broker_client_new(loop, "127.0.0.1:1,,127.0.0.1:2", ctls, NULL, &bc),
      QRPC_EINVAL);
  ck_assert_int_eq(
      qrpc_broker_client_new(loop, "127.0.0.1:1,", ctls, NULL, &bc),
      QRPC_EINVAL);
  ck_assert_ptr_null(bc);
}
END_TEST

/* ---- Queue groups ------------------------------------------------------ */

#define GROUP_MSGS 300

/* One member of a queue group; counts[] is shared by all members. */
typedef struct member {
  sub s;
  uint8_t *counts; /* per sequence number */
  uint64_t got;
} member;

static void m_on_message(qrpc_broker_sub *h, const qrpc_broker_msg *m,
                         void *ud) {
  member *mb = ud;
  ck_assert_uint_eq(m->len, 16);
  uint64_t seq = qt_get_be64(m->payload);
  ck_assert_uint_lt(seq, GROUP_MSGS + 100);
  mb->counts[seq]++;
  mb->got++;
  s_on_message(h, m, &mb->s);
}

static void m_on_subscribed(qrpc_broker_sub *h, uint64_t id, void *ud) {
  ((member *)ud)->s.subscribed++;
}

static const qrpc_broker_sub_callbacks member_cbs = {
    .on_message = m_on_message,
    .on_subscribed = m_on_subscribed,
};

static void join(client *c, member *mb, const char *pattern, const char *group,
                 uint8_t *counts) {
  qrpc_broker_sub_opts o;
  qrpc_broker_sub_opts_default(&o);
  o.group = group;
  memset(mb, 0, sizeof(*mb));
  mb->counts = counts;
  ck_assert_int_eq(
      qrpc_broker_subscribe(c->bc, pattern, &o, &member_cbs, mb, &mb->s.h), 0);
  ck_assert(qt_run_until_count(loop, &mb->s.subscribed, 1, QT_WAIT_MS));
}

static uint64_t members_got(const member *m, int n) {
  uint64_t t = 0;
  for (int i = 0; i < n; i++) t += m[i].got;
  return t;
}

/* Runs the loop until the n members together got total messages. */
static void wait_members(const member *m, int n, uint64_t total) {
  uint64_t end = qt_now_ms() + QT_WAIT_MS;
  while (members_got(m, n) < total && qt_now_ms() < end)
    qrpc_loop_run_for(loop, 5);
}

/* Three members of group "w" on "jobs.*", each on its own connection,
 * share the messages: each message reaches exactly one of them, in turns,
 * while an ordinary subscriber of the pattern and a group of the same name
 * on another pattern get every message. Members get no retained message.
 * When one member leaves, the other two share what follows. */
START_TEST(test_queue_group_shares_messages) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr), NULL);
  client pc, mc[3], oc;
  client_start(&pc, addr, NULL);
  for (int i = 0; i < 3; i++) client_start(&mc[i], addr, NULL);
  client_start(&oc, addr, NULL);
  pubs p = {0};
  publish_seq(&pc, &p, "jobs.r", GROUP_MSGS + 99, 16, QRPC_BROKER_RETAIN);
  ck_assert(qt_run_until_count(loop, &p.acked, 1, QT_WAIT_MS));

  static uint8_t counts[GROUP_MSGS + 100], other_counts[GROUP_MSGS + 100];
  memset(counts, 0, sizeof(counts));
  memset(other_counts, 0, sizeof(other_counts));
  member m[3], other;
  for (int i = 0; i < 3; i++) join(&mc[i], &m[i], "jobs.*", "w", counts);
  join(&oc, &other, "jobs.>", "w", other_counts);
  sub plain;
  subscribe(&oc, &plain, "jobs.*", NULL);
  ck_assert(qt_run_until_count(loop, &plain.retained, 1, QT_WAIT_MS));

  for (uint64_t i = 0; i < GROUP_MSGS; i++)
    publish_seq(&pc, &p, "jobs.a", i, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 1 + GROUP_MSGS, QT_WAIT_MS));
  /* The plain subscriber and the two groups. */
  ck_assert_uint_eq(p.last_subscribers, 3);
  wait_members(m, 3, GROUP_MSGS);
  wait_members(&other, 1, GROUP_MSGS);
  wait_received(&plain, 1 + GROUP_MSGS);
  qt_run_for(loop, 50); /* nothing more may come */
  ck_assert_uint_eq(members_got(m, 3), GROUP_MSGS);
  ck_assert_uint_eq(other.got, GROUP_MSGS);
  ck_assert_uint_eq(plain.received, 1 + GROUP_MSGS);
  for (int i = 0; i < GROUP_MSGS; i++) {
    ck_assert_msg(counts[i] == 1, "message %d reached the group %d times", i,
                  counts[i]);
    ck_assert_uint_eq(other_counts[i], 1);
  }
  /* In turns: with every member keeping up, each takes a third. */
  for (int i = 0; i < 3; i++) {
    ck_assert_uint_eq(m[i].got, GROUP_MSGS / 3);
    ck_assert_int_eq(m[i].s.retained, 0);
    ck_assert_uint_eq(m[i].s.out_of_order, 0);
  }

  /* One member leaves; the other two share the next 60. */
  qrpc_broker_unsubscribe(m[2].s.h);
  qrpc_broker_stats st;
  uint64_t end = qt_now_ms() + QT_WAIT_MS;
  do {
    qrpc_loop_run_for(loop, 5);
    qrpc_broker_get_stats(b, &st);
  } while (st.subscriptions > 4 && qt_now_ms() < end);
  ck_assert_uint_eq(st.subscriptions, 4);
  uint64_t before[2] = {m[0].got, m[1].got};
  for (uint64_t i = GROUP_MSGS; i < GROUP_MSGS + 60; i++)
    publish_seq(&pc, &p, "jobs.a", i, 16, 0);
  wait_members(m, 2, GROUP_MSGS + 60 - m[2].got);
  qt_run_for(loop, 50);
  ck_assert_uint_eq(m[0].got - before[0], 30);
  ck_assert_uint_eq(m[1].got - before[1], 30);
  for (int i = GROUP_MSGS; i < GROUP_MSGS + 60; i++)
    ck_assert_uint_eq(counts[i], 1);

  for (int i = 0; i < 3; i++) qrpc_broker_client_free(mc[i].bc);
  qrpc_broker_client_free(oc.bc);
  qrpc_broker_client_free(pc.bc);
  qrpc_broker_free(b);
}
END_TEST

/* A queue group's name is checked by the client library and by the
 * broker: a raw Subscribe with a bad one is refused with INVALID_ARGUMENT
 * and never confirmed. */
START_TEST(test_queue_group_bad_names) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr), NULL);
  client c;
  client_start(&c, addr, NULL);
  qrpc_broker_sub_opts o;
  qrpc_broker_sub_opts_default(&o);
  sub s;
  static const char *const bad[] = {
      "",
      "a b",
      "a.b",
      "w*",
      "\xc3\xa9",
      "a123456789b123456789c123456789d123456789e123456789f123456789g1234"};
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    o.group = bad[i];
    ck_assert_int_eq(qrpc_broker_subscribe(c.bc, "a", &o, &sub_cbs, &s, NULL),
                     QRPC_EINVAL);
    ck_assert_ptr_nonnull(qrpc_broker_group_problem(bad[i]));
  }
  ck_assert_ptr_null(qrpc_broker_group_problem("workers_2-b"));
  /* Options of the size before the group field mean no group. */
  o.group = "not read";
  o.size = offsetof(qrpc_broker_sub_opts, group);
  subscribe(&c, &s, "a", &o);
  ck_assert(qt_run_until_count(loop, &s.subscribed, 1, QT_WAIT_MS));

  qrpc_client *cli = raw_client(addr);
  static const struct {
    const char *g;
    size_t len;
  } raw_bad[] = {{"a\0b", 3},
                 {"a b", 3},
                 {"x.y", 3},
                 {"a123456789b123456789c123456789d123456789e123456789f1234567"
                  "89g1234",
                  65}};
  raw_call r[4] = {{0}};
  for (size_t i = 0; i < 4; i++) {
    pbuf m = subscribe_req("a", 1);
    pb_bytes(&m, &qrpc__broker__subscribe_request__descriptor, "group",
             raw_bad[i].g, raw_bad[i].len);
    ck_assert_int_eq(qrpc_client_stream(cli,
                                        qrpc_broker_Broker_Subscribe_METHOD_ID,
                                        QRPC_SHAPE_SERVER_STREAM, m.b, m.n,
                                        NULL, &raw_cbs, &r[i], NULL),
                     0);
  }
  for (size_t i = 0; i < 4; i++) {
    ck_assert_msg(qt_run_until_count(loop, &r[i].done, 1, QT_WAIT_MS),
                  "subscription %zu was not refused", i);
    ck_assert_int_eq(r[i].status, QRPC_STATUS_INVALID_ARGUMENT);
    ck_assert_int_eq(r[i].items, 0);
  }
  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.subscriptions, 1);
  qrpc_client_free(cli);
  qrpc_broker_client_free(c.bc);
  qrpc_broker_free(b);
}
END_TEST

typedef struct log_rec {
  int unknown_token;
  char line[512];
} log_rec;

static void on_log(qrpc_log_level level, const char *msg, void *ud) {
  log_rec *l = ud;
  if (!strstr(msg, "unknown token")) return;
  if (l->unknown_token++ == 0) snprintf(l->line, sizeof(l->line), "%s", msg);
}

/* A Hello with a valid token followed by a NUL and more is an unknown
 * token: UNAUTHENTICATED, and the connection keeps the anonymous rights. A
 * token of one NUL byte is not an empty one. The client's name reaches the
 * log escaped, so it cannot break the line. */
START_TEST(test_nul_in_token_unauthenticated) {
  write_acl();
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  bo.acl_path = acl_path;
  char addr[64];
  qrpc_broker *b = broker_start(&bo, addr, sizeof(addr), NULL);
  unlink(acl_path);
  log_rec lr = {0};
  qrpc_log_set_handler(on_log, &lr);
  qrpc_log_set_level(QRPC_LOG_INFO);

  const uint32_t hello = qrpc_broker_Broker_Hello_METHOD_ID;
  const uint32_t pub = qrpc_broker_Broker_Publish_METHOD_ID;
  static const char tok[] = "alice-secret\0junk";
  qrpc_client *cli = raw_client(addr);
  pbuf h = hello_req(tok, sizeof(tok) - 1, "evil\nqrpc: forged");
  ck_assert_int_eq(raw_unary(cli, hello, &h), QRPC_STATUS_UNAUTHENTICATED);
  pbuf one_nul = hello_req("\0", 1, "x");
  ck_assert_int_eq(raw_unary(cli, hello, &one_nul),
                   QRPC_STATUS_UNAUTHENTICATED);
  /* alice may publish here and subscribe there; anonymous may not. */
  pbuf p = publish_req("chat.room.1", 11, 0);
  ck_assert_int_eq(raw_unary(cli, pub, &p), QRPC_STATUS_PERMISSION_DENIED);
  pbuf s = subscribe_req("chat.>", 6);
  raw_call r = {0};
  ck_assert_int_eq(qrpc_client_stream(cli,
                                      qrpc_broker_Broker_Subscribe_METHOD_ID,
                                      QRPC_SHAPE_SERVER_STREAM, s.b, s.n, NULL,
                                      &raw_cbs, &r, NULL),
                   0);
  ck_assert(qt_run_until_count(loop, &r.done, 1, QT_WAIT_MS));
  ck_assert_int_eq(r.status, QRPC_STATUS_PERMISSION_DENIED);
  ck_assert_int_eq(r.items, 0);

  /* The same requests with the token alone are alice's. */
  qrpc_client *alice = raw_client(addr);
  pbuf ha = hello_req(tok, strlen(tok), "alice");
  ck_assert_int_eq(raw_unary(alice, hello, &ha), QRPC_STATUS_OK);
  ck_assert_int_eq(raw_unary(alice, pub, &p), QRPC_STATUS_OK);

  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.denied, 4); /* 2 tokens, 1 publish, 1 subscribe */
  ck_assert_uint_eq(st.published, 1);
  ck_assert_int_eq(lr.unknown_token, 2);
  qrpc_log_set_handler(NULL, NULL);
  qrpc_log_set_level(QRPC_LOG_WARN);
  ck_assert_msg(strstr(lr.line, "client 'evil\\x0aqrpc: forged'") != NULL,
                "log: %s", lr.line);
  qrpc_client_free(alice);
  qrpc_client_free(cli);
  qrpc_broker_free(b);
}
END_TEST

/* ---- Restart ---------------------------------------------------------- */

START_TEST(test_broker_restart_resubscribe) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr), NULL);
  client sc, pc;
  client_start(&sc, addr, NULL);
  client_start(&pc, addr, NULL);
  sub s, rt;
  subscribe(&sc, &s, "news.>", NULL);
  qrpc_broker_sub_opts so;
  qrpc_broker_sub_opts_default(&so);
  so.mode = QRPC_BROKER_REALTIME;
  subscribe(&sc, &rt, "news.>", &so);
  ck_assert(qt_run_until_count(loop, &s.subscribed, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &rt.subscribed, 1, QT_WAIT_MS));
  pubs p = {0};
  publish_seq(&pc, &p, "news.a", 1, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 1, QT_WAIT_MS));
  wait_received(&s, 1);
  ck_assert_uint_eq(s.received, 1);

  /* The broker goes away and comes back on the same port. */
  char bind[64];
  snprintf(bind, sizeof(bind), "%s", addr);
  qrpc_broker_free(b);
  ck_assert(qt_run_until_count(loop, &sc.disconnects, 1, QT_WAIT_MS));
  ck_assert(qt_run_until_count(loop, &pc.disconnects, 1, QT_WAIT_MS));
  qt_run_for(loop, 100);
  b = broker_start(NULL, addr, sizeof(addr), bind);
  ck_assert(qt_run_until_count(loop, &s.subscribed, 2, 10000));
  ck_assert(qt_run_until_count(loop, &rt.subscribed, 2, 10000));
  ck_assert(qt_run_until_count(loop, &pc.ready, 2, 10000));
  publish_seq(&pc, &p, "news.b", 2, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 2, QT_WAIT_MS));
  ck_assert_uint_eq(p.last_subscribers, 2);
  wait_received(&s, 2);
  wait_received(&rt, 1);
  ck_assert_uint_eq(s.received, 2);
  ck_assert_uint_eq(s.last_seq, 2);
  ck_assert_uint_ge(rt.received, 1);
  qrpc_broker_client_free(sc.bc);
  qrpc_broker_client_free(pc.bc);
  qrpc_broker_free(b);
}
END_TEST

/* A subscriber whose machine vanished (it neither reads nor sends) is
 * found by the broker's keepalive PINGs: its connection, subscription and
 * queue are freed and counted, long before the idle timeout. */
typedef struct vanish_wait {
  qrpc_broker *b;
} vanish_wait;

static int dead_peer_freed(void *arg) {
  qrpc_broker_stats st;
  qrpc_broker_get_stats(((vanish_wait *)arg)->b, &st);
  return st.dead_peers >= 1;
}

START_TEST(test_vanished_subscriber_freed) {
  char addr[64];
  qrpc_broker_opts bo;
  qrpc_broker_opts_default(&bo);
  ck_assert_uint_eq(bo.server.endpoint.conn.keepalive_ms, 10000);
  bo.server.endpoint.conn.keepalive_ms = 200;
  bo.server.endpoint.conn.dead_peer_timeout_ms = 300;
  qrpc_broker *b = broker_start(&bo, addr, sizeof(addr), NULL);
  client sc, pc;
  client_start(&sc, addr, NULL);
  client_start(&pc, addr, NULL);
  sub s;
  subscribe(&sc, &s, "news.>", NULL);
  ck_assert(qt_run_until_count(loop, &s.subscribed, 1, QT_WAIT_MS));
  /* Something queued for it, so its queue is released too. */
  pubs p = {0};
  publish_seq(&pc, &p, "news.a", 1, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 1, QT_WAIT_MS));
  wait_received(&s, 1);

  qrpc_broker_stats st;
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.subscriptions, 1);
  ck_assert_uint_eq(st.connections, 2);
  qrpc_peer *peer = qrpc_client_peer(qrpc_broker_client_rpc(sc.bc));
  ck_assert_ptr_nonnull(peer);
  qrpci_conn_vanish(qrpc_peer_conn(peer));
  publish_seq(&pc, &p, "news.b", 2, 16, 0);

  vanish_wait w = {b};
  ck_assert(qt_run_until(loop, dead_peer_freed, &w, 10000));
  qrpc_broker_get_stats(b, &st);
  ck_assert_uint_eq(st.dead_peers, 1);
  ck_assert_uint_eq(st.subscriptions, 0);
  ck_assert_uint_eq(st.connections, 1);
  ck_assert_uint_eq(st.queued_bytes, 0);
  ck_assert_int_eq(pc.disconnects, 0);
  qrpc_broker_client_free(sc.bc);
  qrpc_broker_client_free(pc.bc);
  qrpc_broker_free(b);
}
END_TEST

/* Publishes made before the client is ready are held and sent in order;
 * a graceful shutdown drains the subscribers. */
START_TEST(test_held_publishes_and_shutdown) {
  char addr[64];
  qrpc_broker *b = broker_start(NULL, addr, sizeof(addr), NULL);
  client sc, pc;
  client_start(&sc, addr, NULL);
  sub s;
  subscribe(&sc, &s, "x", NULL);
  ck_assert(qt_run_until_count(loop, &s.subscribed, 1, QT_WAIT_MS));
  client_start_on(&pc, loop, addr, NULL, 0);
  pubs p = {0};
  for (uint64_t i = 1; i <= 100; i++) publish_seq(&pc, &p, "x", i, 16, 0);
  ck_assert(qt_run_until_count(loop, &p.acked, 100, QT_WAIT_MS));
  wait_received(&s, 100);
  ck_assert_uint_eq(s.received, 100);
  ck_assert_uint_eq(s.out_of_order, 0);
  int drained = 0;
  ck_assert_int_eq(qrpc_broker_shutdown(b, 1000, NULL, NULL), 0);
  uint64_t end = qt_now_ms() + 3000;
  while (qt_now_ms() < end && !drained) {
    qrpc_loop_run_for(loop, 10);
    qrpc_broker_stats st;
    qrpc_broker_get_stats(b, &st);
    drained = st.connections == 0;
  }
  ck_assert(drained);
  qrpc_broker_client_free(sc.bc);
  qrpc_broker_client_free(pc.bc);
  qrpc_broker_free(b);
}
END_TEST

static Suite *suite(void) {
  Suite *s = suite_create("broker");
  TCase *t = tcase_create("e2e");
  tcase_add_checked_fixture(t, setup, teardown);
  tcase_set_timeout(t, 180);
  tcase_add_test(t, test_fanout_100_reliable_in_order);
  tcase_add_test(t, test_batched_fanout_order);
  tcase_add_test(t, test_realtime_delivery_and_overload);
  tcase_add_test(t, test_slow_disconnect);
  tcase_add_test(t, test_slow_drop_oldest);
  tcase_add_test(t, test_slow_drop_newest);
  tcase_add_test(t, test_slow_conflate_latest_per_topic);
  tcase_add_test(t, test_acl_allow_deny);
  tcase_add_test(t, test_acl_bad_file);
  tcase_add_test(t, test_retained_message);
  tcase_add_test(t, test_unsubscribe_stats_refusals);
  tcase_add_test(t, test_many_subscriptions_one_connection);
  tcase_add_test(t, test_broker_restart_resubscribe);
  tcase_add_test(t, test_vanished_subscriber_freed);
  tcase_add_test(t, test_held_publishes_and_shutdown);
  tcase_add_test(t, test_nul_in_topic_refused);
  tcase_add_test(t, test_nul_in_pattern_refused);
  tcase_add_test(t, test_queue_group_shares_messages);
  tcase_add_test(t, test_failover_to_next_broker);
  tcase_add_test(t, test_failover_list_checked);
  tcase_add_test(t, test_queue_group_bad_names);
  tcase_add_test(t, test_nul_in_token_unauthenticated);
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
