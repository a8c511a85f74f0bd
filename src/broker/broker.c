/*
 * The broker: the Broker service of idl/qrpc/broker.proto on a qrpc
 * server (docs/broker.md).
 *
 * Every connection has a bconn with its ACL identity and subscriptions.
 * The identity is chosen when the connection opens, by its verified client
 * certificate (a cert section of the ACL) or else the anonymous section,
 * and replaced by a token's section when its Hello presents one.
 * A subscription is linked into the topic tree; a publish matches the
 * tree, encodes its Delivery once into a shared qrpci_bmsg and offers it
 * to every match: reliable subscriptions write it into their stream, or
 * queue it while the stream is full (qrpci_bqueue, bounded, with the
 * subscription's policy); realtime ones send a datagram, encoded once per
 * channel id and shared across connections.
 *
 * Closing a connection runs its callbacks at once (qrpc_conn_close), so a
 * subscriber cut off by the DISCONNECT policy is only marked during a
 * fan-out and closed at the end of the handler that caused it.
 *
 * Workers (qrpc_server_opts.workers > 1). A connection and its
 * subscriptions live on the worker that accepted it (a bworker), and only
 * that worker's thread touches them. The topic tree, the interests and
 * the queue groups' member lists are shared, under tree_lock: subscribe
 * and unsubscribe write, fan-outs read. A publish is matched once on its
 * worker, which offers it to its own subscriptions and picks the queue
 * groups' members; every other worker with a match gets the Delivery
 * bytes (copied once per worker) in its inbox, a bounded FIFO, and offers
 * them to its own subscriptions on its own thread. One FIFO per worker
 * keeps each publisher's messages in order. The retained store is shared
 * under retained_lock. Counters are per worker, written by its thread and
 * summed by any.
 *
 * Topics, patterns and tokens are (pointer, length) pairs taken from the
 * requests as received: protobuf-c's decoded strings end at the first NUL
 * byte, so the requests that carry them are served here rather than
 * through the generated stubs (see "Requests with strings" below).
 */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "qrpc/broker.h"
#include "qrpc/dgram.h"
#include "qrpc/error.h"
#include "qrpc/version.h"

#include "broker/acl.h"
#include "broker/cluster.h"
#include "broker/queue.h"
#include "broker/topic.h"
#include "qrpc/broker.qrpc.h"
#include "rpc/callstats.h"
#include "util/list.h"
#include "util/log.h"
#include "util/pbwire.h"
#include "util/u64map.h"
#include "wire/protocol.h"

/* The Delivery bytes around a payload: field tags, lengths and topic. */
#define DELIVERY_OVERHEAD (QRPCI_TOPIC_MAX + 64)
/* Distinct realtime channel ids a publish encodes once each. */
#define DGRAM_CACHE 16
/* Bytes of a client's string (name, topic, pattern) shown in a log line. */
#define LOG_STR_MAX 64
/* Bytes of a certificate's subject shown in a log line. */
#define LOG_SUBJECT_MAX 256

/* A string from a request: len bytes, not NUL-terminated, and any byte
 * may be a NUL. */
typedef struct wstr {
  const char *p;
  size_t len;
} wstr;

typedef struct bconn bconn;
typedef struct bsub bsub;

/* The local subscriptions of one pattern and queue group (none: an empty
 * group), with the NATS subscription that brings them the other nodes'
 * messages (clustered brokers only). The members of a queue group share
 * its messages: each goes to the one at the front of subs, which then
 * moves to the back. */
typedef struct cpat {
  uint64_t id;   /* in b->cpat_by_id; the NATS messages' key */
  uint64_t hash; /* of pattern and group, in b->cpat_by_hash */
  struct cpat *next_same_hash;
  qrpci_list subs; /* bsub.cnode */
  size_t nsubs;
  qrpci_cluster_sub *ns;
  /* A queue group: the last fan-out of each worker that served it. */
  uint64_t *fanout;
  atomic_uint_fast64_t turn; /* with several workers: the next member */
  size_t len, group_len;
  char pattern[]; /* len bytes, a NUL, then the group and a NUL */
} cpat;

struct bsub {
  qrpci_topic_sub link; /* in the broker's tree */
  qrpci_list node;      /* in the connection's list */
  bconn *conn;
  qrpc_req *req;
  uint64_t id;
  qrpc_broker_mode mode;
  qrpci_bpolicy policy;
  qrpci_bqueue q;
  cpat *cp;         /* its pattern's (and queue group's) interest */
  qrpci_list cnode; /* in cp->subs */
  uint64_t gid;     /* unique in the broker: in its worker's by_gid */
  int blocked;      /* the stream refused a write; on_writable drains */
  uint64_t gap;     /* dropped and not yet reported to the subscriber */
  uint64_t delivered, dropped, conflated;
  size_t pattern_len;
  char pattern[]; /* pattern_len bytes and a NUL for protobuf-c, which packs
                     a char * up to its NUL: a valid pattern holds none */
};

typedef struct bworker bworker;

struct bconn {
  qrpc_broker *b;
  bworker *w; /* the worker it lives on */
  qrpc_peer *peer;
  const qrpci_acl_identity *id;
  qrpci_list subs;
  qrpci_list doomed; /* in b->doomed while marked for closing */
  size_t nsubs;
  uint64_t next_id;
  char reason[160];
};

typedef struct retained_msg {
  qrpci_list node;
  struct retained_msg *next_same_hash;
  qrpci_bmsg *msg; /* a Delivery with retained set */
  size_t payload_len;
} retained_msg;

/* A worker's counters: written by its thread alone (a relaxed load and
 * store, no locked instruction), read by any. */
typedef struct bstats {
  _Atomic uint64_t connections, subscriptions, published, refused, delivered,
      dropped, conflated, slow_disconnects, denied, dropped_oldest,
      dropped_newest;
} bstats;

#define ST_ADD(w, f, n) stat_add(&(w)->st.f, (uint64_t)(n))

static void stat_add(_Atomic uint64_t *c, uint64_t n) {
  atomic_store_explicit(c, atomic_load_explicit(c, memory_order_relaxed) + n,
                        memory_order_relaxed);
}

/* A publish handed to another worker: its own copy of the Delivery, and
 * the members of queue groups picked there (by gid). */
typedef struct bxfer {
  struct bxfer *next;
  qrpci_bmsg *m;
  int all;     /* offer to the worker's matching subscriptions */
  size_t ngid; /* then to these queue group members */
  uint64_t gid[];
} bxfer;

/* What one publish sends to one other worker, gathered under the lock. */
typedef struct btarget {
  int all;
  size_t ngid, gcap;
  uint64_t *gid;
} btarget;

struct bworker {
  qrpc_broker *b;
  size_t idx;
  qrpc_loop *loop;
  qrpci_list conns_doomed;
  bsub **match; /* the subscriptions of the publish being fanned out */
  size_t match_cap, match_len;
  uint64_t fanouts;    /* numbers each fan-out, for queue groups */
  qrpci_u64map by_gid; /* bsub.gid -> bsub, of this worker */
  btarget *tgt;        /* one per worker, for the publish at hand */
  _Atomic size_t queued_bytes;
  bstats st;
  /* Publishes to one topic waiting for the end of the loop turn, and the
   * subscriptions they go to (batch_fanout()). */
  qrpci_bmsg **pend;
  size_t npend, pend_cap;
  bsub **pend_subs;
  size_t npend_subs, pend_subs_cap;
  struct event *pend_ev;
  int pend_flushing;
  /* The inbox: publishes from other workers, oldest first. */
  pthread_mutex_t in_mu;
  bxfer *in_head, **in_tail;
  int in_posted;          /* a drain is posted to the loop */
  atomic_size_t in_bytes; /* reserved by publishers, up to in_max */
};

struct qrpc_broker {
  qrpc_loop *loop;
  qrpc_server *srv;
  qrpc_broker_opts opts;
  size_t nworkers;
  bworker *w;
  /* With several workers: the tree, the interests and their member
   * lists are written under it (subscribe, unsubscribe) and read under it
   * (fan-outs). Not taken with one worker. */
  pthread_rwlock_t tree_lock;
  qrpci_topic_tree *tree;
  qrpci_acl *acl;
  pthread_mutex_t retained_lock; /* the four below */
  qrpci_u64map retained_by_hash; /* topic hash -> chain of retained_msg */
  qrpci_list retained;
  size_t retained_bytes;
  uint64_t nretained;
  atomic_uint_fast64_t next_gid;
  size_t inbox_max; /* bytes of one worker's inbox */
  qrpc_health *health;
  qrpci_cluster *cluster;    /* NULL: alone */
  qrpci_u64map cpat_by_hash; /* pattern and group hash -> chain of cpat */
  qrpci_u64map cpat_by_id;   /* cpat.id -> cpat */
  uint64_t next_cpat_id;
  void (*on_shutdown)(qrpc_broker *b, void *user_data);
  void *shutdown_ud;
};

static void tree_read(qrpc_broker *b) {
  if (b->nworkers > 1) pthread_rwlock_rdlock(&b->tree_lock);
}

static void tree_write(qrpc_broker *b) {
  if (b->nworkers > 1) pthread_rwlock_wrlock(&b->tree_lock);
}

static void tree_done(qrpc_broker *b) {
  if (b->nworkers > 1) pthread_rwlock_unlock(&b->tree_lock);
}

/* ---- Options ---------------------------------------------------------- */

void qrpc_broker_opts_default(qrpc_broker_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  qrpc_server_opts_default(&o->server);
  /* Each subscription stream may hold this much unacknowledged; with the
   * queue bound it makes a subscriber's worst case. */
  o->server.endpoint.conn.stream_send_buffer = 256 * 1024;
  /* Subscribers are often idle for long: PINGs find the vanished ones. */
  o->server.endpoint.conn.keepalive_ms = 10000;
  o->max_payload = 1u << 20;
  o->max_subscriptions = 1000;
  o->queue_messages = 10000;
  o->queue_bytes = 8u << 20;
  o->queue_messages_max = 100000;
  o->queue_bytes_max = 64u << 20;
  o->queued_bytes_total = (size_t)1 << 30;
  o->max_retained = 100000;
  o->max_retained_bytes = 256u << 20;
  o->cluster_buffer_bytes = 8u << 20;
  o->worker_queue_bytes = 64u << 20;
}

static int opts_check(const qrpc_broker_opts *o, char *err, size_t errlen) {
  const char *why = NULL;
  if (o->size != sizeof(*o))
    why = "qrpc_broker_opts not set up with qrpc_broker_opts_default()";
  else if (o->max_payload == 0 || o->max_subscriptions == 0)
    why = "max_payload and max_subscriptions must be positive";
  else if (o->queue_messages == 0 || o->queue_bytes == 0 ||
           o->queue_messages > o->queue_messages_max ||
           o->queue_bytes > o->queue_bytes_max)
    why = "queue defaults must be positive and within their maximums";
  else if (o->queued_bytes_total < o->queue_bytes)
    why = "queued_bytes_total is below the default queue size";
  else if (o->cluster && (o->cluster_buffer_bytes == 0 ||
                          o->cluster_buffer_bytes > INT32_MAX))
    why = "cluster_buffer_bytes must be from 1 to 2147483647";
  else if (o->cluster && o->server.workers != 1)
    why = "a clustered broker serves on one worker: set server.workers "
          "(--workers) to 1";
  else if (o->worker_queue_bytes < o->max_payload + DELIVERY_OVERHEAD)
    why = "worker_queue_bytes must hold at least one message of "
          "max_payload";
  if (!why) return 0;
  if (err && errlen)
    snprintf(err, errlen, "%s", why);
  else
    QRPCI_ERROR("broker: %s", why);
  return QRPC_EINVAL;
}

/* ---- Access ----------------------------------------------------------- */

static int may_publish(const bconn *c, wstr topic) {
  return !c->b->acl || qrpci_acl_may_publish(c->id, topic.p, topic.len);
}

static int may_subscribe(const bconn *c, wstr pat) {
  return !c->b->acl || qrpci_acl_may_subscribe(c->id, pat.p, pat.len);
}

/* ---- Logging what clients send ---------------------------------------- */

typedef struct logstr {
  char s[4 * LOG_SUBJECT_MAX + 1];
} logstr;

/* The first max (at most LOG_SUBJECT_MAX) bytes of w for a log line, with
 * every byte outside printable ASCII, and the backslash, written as \xNN:
 * a client's string can neither end the line nor hide behind a NUL or a
 * terminal escape. */
static const char *log_strn(logstr *o, wstr w, size_t max) {
  static const char hex[] = "0123456789abcdef";
  size_t n = w.len < max ? w.len : max, k = 0;
  for (size_t i = 0; i < n; i++) {
    unsigned char ch = (unsigned char)w.p[i];
    if (ch >= 0x20 && ch < 0x7f && ch != '\\') {
      o->s[k++] = (char)ch;
      continue;
    }
    o->s[k++] = '\\';
    o->s[k++] = 'x';
    o->s[k++] = hex[ch >> 4];
    o->s[k++] = hex[ch & 15];
  }
  o->s[k] = '\0';
  return o->s;
}

static const char *log_str(logstr *o, wstr w) {
  return log_strn(o, w, LOG_STR_MAX);
}

/* ---- Closing slow subscribers ----------------------------------------- */

static void doom(bconn *c, const bsub *s) {
  if (qrpci_list_linked(&c->doomed)) return;
  int plen = (int)(s->pattern_len < LOG_STR_MAX ? s->pattern_len : LOG_STR_MAX);
  snprintf(c->reason, sizeof(c->reason),
           "slow consumer: subscription %llu to '%.*s' exceeded its queue "
           "of %u messages / %zu bytes",
           (unsigned long long)s->id, plen, s->pattern, s->q.max_msgs,
           s->q.max_bytes);
  qrpci_list_push_back(&c->w->conns_doomed, &c->doomed);
}

static void close_doomed(bworker *w) {
  while (!qrpci_list_empty(&w->conns_doomed)) {
    bconn *c = QRPCI_CONTAINER_OF(w->conns_doomed.next, bconn, doomed);
    qrpci_list_remove(&c->doomed);
    ST_ADD(w, slow_disconnects, 1);
    QRPCI_WARN("broker: closing a connection: %s", c->reason);
    /* Runs on_cancel of every subscription and frees c. */
    qrpc_conn_close(qrpc_peer_conn(c->peer), QRPCI_ERR_RESOURCE_LIMIT,
                    c->reason);
  }
}

/* ---- Reliable delivery ------------------------------------------------ */

static int send_gap(bsub *s) {
  Qrpc__Broker__Delivery d = QRPC__BROKER__DELIVERY__INIT;
  d.dropped = s->gap;
  uint8_t buf[16];
  size_t n = qrpc__broker__delivery__pack(&d, buf);
  int rv = qrpc_req_send(s->req, buf, n);
  if (rv == 0) s->gap = 0;
  return rv;
}

/* Writes what the queue holds until the stream refuses. */
static void sub_drain(bsub *s) {
  s->blocked = 0;
  for (;;) {
    int rv = 0;
    if (s->gap) {
      rv = send_gap(s);
    } else {
      qrpci_bmsg *m = qrpci_bqueue_peek(&s->q);
      if (!m) return;
      rv = qrpc_req_send(s->req, m->bytes, m->len);
      if (rv == 0) {
        qrpci_bqueue_pop(&s->q);
        s->delivered++;
        ST_ADD(s->conn->w, delivered, 1);
      }
    }
    if (rv == QRPC_EAGAIN) {
      s->blocked = 1;
      return;
    }
    if (rv != 0) return; /* the call is ending; on_cancel frees s */
  }
}

static void count_drops(bsub *s, uint64_t n, int by_policy) {
  bworker *w = s->conn->w;
  s->dropped += n;
  s->gap += n;
  ST_ADD(w, dropped, n);
  if (by_policy && s->policy == QRPCI_BPOLICY_DROP_OLDEST)
    ST_ADD(w, dropped_oldest, n);
  else if (by_policy && s->policy == QRPCI_BPOLICY_DROP_NEWEST)
    ST_ADD(w, dropped_newest, n);
}

static void sub_offer(bsub *s, qrpci_bmsg *m) {
  bworker *w = s->conn->w;
  if (!s->blocked && s->q.count == 0 && s->gap == 0) {
    int rv = qrpc_req_send(s->req, m->bytes, m->len);
    if (rv == 0) {
      s->delivered++;
      ST_ADD(w, delivered, 1);
      return;
    }
    if (rv != QRPC_EAGAIN) return;
    s->blocked = 1;
  }
  uint64_t dropped;
  switch (qrpci_bqueue_push(&s->q, m, s->policy, &dropped)) {
  case QRPCI_BPUSH_QUEUED: break;
  case QRPCI_BPUSH_CONFLATED:
    s->conflated++;
    ST_ADD(w, conflated, 1);
    break;
  case QRPCI_BPUSH_DROPPED: count_drops(s, dropped, 1); break;
  case QRPCI_BPUSH_OVERFLOW: doom(s->conn, s); return;
  case QRPCI_BPUSH_NOMEM: count_drops(s, 1, 0); break;
  }
  if (!s->blocked) sub_drain(s);
}

/* ---- Realtime delivery ------------------------------------------------ */

typedef struct dgram_cache {
  struct {
    uint64_t channel;
    qrpc_dgram *d;
  } e[DGRAM_CACHE];
  size_t n;
} dgram_cache;

static void realtime_send(bsub *s, qrpci_bmsg *m, dgram_cache *dc) {
  qrpc_broker *b = s->conn->b;
  bworker *w = s->conn->w;
  qrpc_dgram *d = NULL, *own = NULL;
  for (size_t i = 0; i < dc->n && !d; i++)
    if (dc->e[i].channel == s->id) d = dc->e[i].d;
  if (!d && qrpc_server_dgram_encode(b->srv, (uint32_t)s->id, m->bytes, m->len,
                                     &d) == 0) {
    if (dc->n < DGRAM_CACHE) {
      dc->e[dc->n].channel = s->id;
      dc->e[dc->n++].d = d;
    } else {
      own = d;
    }
  }
  /* Out of memory, queue full or too large for the path: realtime drops
   * the newest, and reports drops only in the counters. */
  if (d && qrpc_peer_send_encoded(s->conn->peer, d) == 0) {
    s->delivered++;
    ST_ADD(w, delivered, 1);
  } else {
    s->dropped++;
    ST_ADD(w, dropped, 1);
    ST_ADD(w, dropped_newest, 1);
  }
  qrpc_dgram_free(own);
}

/* ---- Fan-out ---------------------------------------------------------- */

/* Hands m to s by its mode; dc caches realtime encodings for one message. */
static void offer(bsub *s, qrpci_bmsg *m, dgram_cache *dc) {
  if (s->mode == QRPC_BROKER_REALTIME)
    realtime_send(s, m, dc);
  else
    sub_offer(s, m);
}

static void dgram_cache_free(dgram_cache *dc) {
  for (size_t i = 0; i < dc->n; i++) qrpc_dgram_free(dc->e[i].d);
}

/* The member of queue group x that takes the next message, with one
 * worker: the first one in turn whose queue is empty and whose stream
 * takes writes, else the first one in turn; it goes to the back. NULL
 * when every member's connection is closing. */
static bsub *group_pick(cpat *x) {
  bsub *pick = NULL;
  for (qrpci_list *n = x->subs.next; n != &x->subs; n = n->next) {
    bsub *s = QRPCI_CONTAINER_OF(n, bsub, cnode);
    if (qrpci_list_linked(&s->conn->doomed)) continue;
    if (!pick) pick = s;
    if (!s->blocked && s->q.count == 0) {
      pick = s;
      break;
    }
  }
  if (pick) {
    qrpci_list_remove(&pick->cnode);
    qrpci_list_push_back(&x->subs, &pick->cnode);
  }
  return pick;
}

/* The same with several workers, under the tree lock held for reading:
 * the members take turns, whichever worker they are on (the state of
 * another worker's subscription is that worker's to read). */
static bsub *group_pick_shared(cpat *x) {
  if (x->nsubs == 0) return NULL;
  uint64_t k =
      atomic_fetch_add_explicit(&x->turn, 1, memory_order_relaxed) % x->nsubs;
  qrpci_list *n = x->subs.next;
  while (k--) n = n->next;
  return QRPCI_CONTAINER_OF(n, bsub, cnode);
}

static int match_add(bworker *w, bsub *s) {
  if (w->match_len == w->match_cap) {
    size_t cap = w->match_cap ? w->match_cap * 2 : 64;
    bsub **m = realloc(w->match, cap * sizeof(*m));
    if (!m) return -1;
    w->match = m;
    w->match_cap = cap;
  }
  w->match[w->match_len++] = s;
  return 0;
}

static void collect(qrpci_topic_sub *link, void *ctx) {
  /* Out of memory: counted as not delivered by match_topic(). */
  (void)match_add(ctx, QRPCI_CONTAINER_OF(link, bsub, link));
}

/* Matches topic against the tree into w->match; returns the matches,
 * counting those it had no memory for as dropped. Under the tree lock. */
static size_t match_topic(bworker *w, const char *topic, size_t len) {
  w->match_len = 0;
  size_t n = qrpci_topic_tree_match(w->b->tree, topic, len, collect, w);
  if (w->match_len < n) ST_ADD(w, dropped, n - w->match_len);
  return n;
}

static void offer_all(bworker *w, qrpci_bmsg *m, size_t n) {
  dgram_cache dc = {.n = 0};
  for (size_t i = 0; i < n; i++) offer(w->match[i], m, &dc);
  dgram_cache_free(&dc);
}

/* ---- Handing publishes to other workers ------------------------------- */

static int target_gid(btarget *t, uint64_t gid) {
  if (t->ngid == t->gcap) {
    size_t cap = t->gcap ? t->gcap * 2 : 8;
    uint64_t *g = realloc(t->gid, cap * sizeof(*g));
    if (!g) return -1;
    t->gid = g;
    t->gcap = cap;
  }
  t->gid[t->ngid++] = gid;
  return 0;
}

static int target_wanted(const btarget *t) { return t->all || t->ngid; }

static void targets_clear(bworker *w) {
  for (size_t j = 0; j < w->b->nworkers; j++) {
    w->tgt[j].all = 0;
    w->tgt[j].ngid = 0;
  }
}

/* Takes len bytes of worker j's inbox, or fails when it is full. */
static int inbox_reserve(bworker *j, size_t len, size_t max) {
  size_t cur = atomic_load_explicit(&j->in_bytes, memory_order_relaxed);
  do {
    if (cur + len > max) return -1;
  } while (!atomic_compare_exchange_weak_explicit(&j->in_bytes, &cur, cur + len,
                                                  memory_order_relaxed,
                                                  memory_order_relaxed));
  return 0;
}

static void inbox_release(bworker *j, size_t len) {
  atomic_fetch_sub_explicit(&j->in_bytes, len, memory_order_relaxed);
}

static void inbox_drain(qrpc_loop *loop, void *arg);

/* Appends x to worker j's inbox (its bytes reserved), and wakes j when
 * the inbox was idle. Any thread. */
static void inbox_push(bworker *j, bxfer *x) {
  x->next = NULL;
  pthread_mutex_lock(&j->in_mu);
  *j->in_tail = x;
  j->in_tail = &x->next;
  int wake = !j->in_posted;
  j->in_posted = 1;
  pthread_mutex_unlock(&j->in_mu);
  if (wake && qrpc_loop_post(j->loop, inbox_drain, j) != 0) {
    /* Out of memory: the next publish for j tries again. */
    pthread_mutex_lock(&j->in_mu);
    j->in_posted = 0;
    pthread_mutex_unlock(&j->in_mu);
    QRPCI_WARN("broker: cannot wake worker %zu: out of memory", j->idx);
  }
}

/* Hands m to every worker the fan-out named in w->tgt, all or none:
 * QRPC_EAGAIN when one of their inboxes is full. */
static int hand_over(bworker *w, qrpci_bmsg *m) {
  qrpc_broker *b = w->b;
  size_t j, done;
  for (j = 0; j < b->nworkers; j++)
    if (target_wanted(&w->tgt[j]) &&
        inbox_reserve(&b->w[j], m->len, b->inbox_max) != 0)
      break;
  if (j < b->nworkers) {
    for (done = 0; done < j; done++)
      if (target_wanted(&w->tgt[done])) inbox_release(&b->w[done], m->len);
    targets_clear(w);
    return QRPC_EAGAIN;
  }
  for (j = 0; j < b->nworkers; j++) {
    btarget *t = &w->tgt[j];
    if (!target_wanted(t)) continue;
    bxfer *x = malloc(sizeof(*x) + t->ngid * sizeof(uint64_t));
    qrpci_bmsg *c = x ? qrpci_bmsg_new(m->topic, m->topic_len, m->len) : NULL;
    if (!c) {
      free(x);
      inbox_release(&b->w[j], m->len);
      ST_ADD(w, dropped, 1);
      continue;
    }
    memcpy(c->bytes, m->bytes, m->len);
    x->m = c;
    x->all = t->all;
    x->ngid = t->ngid;
    if (t->ngid) memcpy(x->gid, t->gid, t->ngid * sizeof(uint64_t));
    inbox_push(&b->w[j], x);
  }
  targets_clear(w);
  return 0;
}

/* Offers a publish handed over by another worker to this worker's
 * matching subscriptions (queue groups excepted: their member was picked
 * on the publisher's worker and comes by gid). */
static void deliver_handed(bworker *w, const bxfer *x) {
  qrpc_broker *b = w->b;
  size_t n = 0;
  if (x->all) {
    tree_read(b);
    match_topic(w, x->m->topic, x->m->topic_len);
    for (size_t i = 0; i < w->match_len; i++) {
      bsub *s = w->match[i];
      if (s->conn->w == w && !s->cp->group_len &&
          !qrpci_list_linked(&s->conn->doomed))
        w->match[n++] = s;
    }
    tree_done(b);
  }
  w->match_len = n;
  for (size_t i = 0; i < x->ngid; i++) {
    bsub *s = qrpci_u64map_get(&w->by_gid, x->gid[i]);
    /* Gone meanwhile, closing, or no memory: lost for its group. */
    if (!s || qrpci_list_linked(&s->conn->doomed) || match_add(w, s) != 0)
      ST_ADD(w, dropped, 1);
  }
  offer_all(w, x->m, w->match_len);
}

static void inbox_drain(qrpc_loop *loop, void *arg) {
  bworker *w = arg;
  (void)loop;
  pthread_mutex_lock(&w->in_mu);
  bxfer *x = w->in_head;
  w->in_head = NULL;
  w->in_tail = &w->in_head;
  w->in_posted = 0;
  pthread_mutex_unlock(&w->in_mu);
  while (x) {
    bxfer *next = x->next;
    deliver_handed(w, x);
    inbox_release(w, x->m->len);
    qrpci_bmsg_unref(x->m);
    free(x);
    x = next;
  }
  close_doomed(w);
}

static void inbox_free(bworker *w) {
  bxfer *x = w->in_head;
  while (x) {
    bxfer *next = x->next;
    qrpci_bmsg_unref(x->m);
    free(x);
    x = next;
  }
  w->in_head = NULL;
  w->in_tail = &w->in_head;
}

/* ---- Fan-out ---------------------------------------------------------- */

/* topic must be valid (qrpci_topic_check()): protobuf-c packs a char * up
 * to its NUL, so the topic, which then holds no NUL and fits
 * QRPCI_TOPIC_MAX, is handed to it as a copy ending right after it. */
static qrpci_bmsg *encode_delivery(const char *topic, size_t topic_len,
                                   const uint8_t *payload, size_t len,
                                   int retained) {
  char t[QRPCI_TOPIC_MAX + 1];
  if (topic_len > QRPCI_TOPIC_MAX) return NULL;
  memcpy(t, topic, topic_len);
  t[topic_len] = '\0';
  Qrpc__Broker__Delivery d = QRPC__BROKER__DELIVERY__INIT;
  d.topic = t;
  d.payload.data = (uint8_t *)payload;
  d.payload.len = len;
  d.retained = retained != 0;
  qrpci_bmsg *m = qrpci_bmsg_new(topic, topic_len,
                                 qrpc__broker__delivery__get_packed_size(&d));
  if (m) qrpc__broker__delivery__pack(&d, m->bytes);
  return m;
}

/* ---- Batched fan-out --------------------------------------------------- */

/* A publisher that sends many messages to one topic in a loop turn (a
 * packet of publishes) has each of them fanned out to the same
 * subscriptions. Offering message by message walks every subscription's
 * state (its queue, request, stream and connection, several cache lines
 * each) once per message; with a thousand subscribers that no longer fits
 * the cache, and each delivery paid those misses. So publishes to the
 * topic of the batch wait, each counted and answered as before, until the
 * end of the loop turn, and are then offered subscription by
 * subscription, in order. Only for one worker, no cluster, and matches
 * that are all plain reliable subscriptions (queue groups pick a member
 * per message; realtime ones encode per message). Anything that could
 * see or change the order flushes first: another topic, a publish that
 * does not batch, a new subscription (tree_write()); a subscription being
 * freed leaves the batch. */

static void pend_flush(bworker *w) {
  size_t n = w->npend;
  if (n == 0 || w->pend_flushing) return;
  /* The batch stays in place meanwhile, so that a subscription freed by
   * an offer's consequences leaves it (pend_forget()). */
  w->pend_flushing = 1;
  for (size_t i = 0; i < w->npend_subs; i++) {
    for (size_t j = 0; w->pend_subs[i] && j < n; j++) {
      bsub *s = w->pend_subs[i];
      if (qrpci_list_linked(&s->conn->doomed)) break;
      sub_offer(s, w->pend[j]);
    }
  }
  for (size_t j = 0; j < n; j++) qrpci_bmsg_unref(w->pend[j]);
  w->npend = w->npend_subs = 0;
  w->pend_flushing = 0;
}

static void pend_cb(evutil_socket_t fd, short what, void *arg) {
  bworker *w = arg;
  pend_flush(w);
  close_doomed(w);
}

/* Leaves s out of the batch waiting (it is being freed). */
static void pend_forget(bworker *w, bsub *s) {
  for (size_t i = 0; w->npend && i < w->npend_subs; i++)
    if (w->pend_subs[i] == s) w->pend_subs[i] = NULL;
}

static int batchable(const bworker *w) {
  return w->b->nworkers == 1 && !w->b->cluster && w->pend_ev &&
         !w->pend_flushing;
}

/* Adds m, fanned out to w->match[0..n), to the batch; 0, or -1 when it
 * must go at once (the batch is flushed then). plain: every one of them
 * is a reliable subscription outside any queue group. */
static int batch_fanout(bworker *w, qrpci_bmsg *m, size_t n, int plain) {
  if (n == 0) return 0; /* nobody to offer it to, nothing to order */
  if (!plain || !batchable(w)) {
    pend_flush(w);
    return -1;
  }
  if (w->npend) {
    const qrpci_bmsg *first = w->pend[0];
    if (first->topic_len != m->topic_len ||
        memcmp(first->topic, m->topic, m->topic_len) != 0)
      pend_flush(w);
  }
  if (w->npend == w->pend_cap) {
    size_t cap = w->pend_cap ? 2 * w->pend_cap : 64;
    qrpci_bmsg **p = realloc(w->pend, cap * sizeof(*p));
    if (!p) {
      pend_flush(w);
      return -1;
    }
    w->pend = p;
    w->pend_cap = cap;
  }
  if (w->npend == 0) {
    if (n > w->pend_subs_cap) {
      bsub **p = realloc(w->pend_subs, n * sizeof(*p));
      if (!p) return -1;
      w->pend_subs = p;
      w->pend_subs_cap = n;
    }
    memcpy(w->pend_subs, w->match, n * sizeof(*w->match));
    w->npend_subs = n;
    event_active(w->pend_ev, 0, 0);
  }
  qrpci_bmsg_ref(m);
  w->pend[w->npend++] = m;
  return 0;
}

/* Offers a publish on worker w to every matching subscription, and to
 * one member of each matching queue group: those of w at once, those of
 * other workers through their inboxes. *handed counts the subscriptions
 * it went to, a queue group counting once. A clustered queue group whose
 * NATS queue subscription is open gets it back from NATS, which picks one
 * member on this node or another (cluster_deliver()). QRPC_EAGAIN, with
 * nothing delivered, when another worker's inbox is full. */
static int fanout(bworker *w, qrpci_bmsg *m, size_t *handed) {
  qrpc_broker *b = w->b;
  int shared = b->nworkers > 1;
  tree_read(b);
  match_topic(w, m->topic, m->topic_len);
  uint64_t gen = ++w->fanouts;
  size_t n = 0, count = 0;
  int plain = 1;
  for (size_t i = 0; i < w->match_len; i++) {
    bsub *s = w->match[i];
    cpat *x = s->cp;
    if (x->group_len) {
      if (x->fanout[w->idx] == gen) continue;
      x->fanout[w->idx] = gen;
      count++;
      if (x->ns) continue;
      if (!(s = shared ? group_pick_shared(x) : group_pick(x))) continue;
      if (s->conn->w != w) {
        if (target_gid(&w->tgt[s->conn->w->idx], s->gid) != 0)
          ST_ADD(w, dropped, 1);
        continue;
      }
    } else {
      count++;
      if (s->conn->w != w) {
        w->tgt[s->conn->w->idx].all = 1;
        continue;
      }
    }
    if (!qrpci_list_linked(&s->conn->doomed)) {
      /* s is this worker's: only this thread writes its mode. */
      plain &= !x->group_len && s->mode == QRPC_BROKER_RELIABLE;
      w->match[n++] = s;
    }
  }
  tree_done(b);
  if (shared && hand_over(w, m) != 0) return QRPC_EAGAIN;
  if (batch_fanout(w, m, n, plain) != 0) offer_all(w, m, n);
  *handed = count;
  return 0;
}

/* ---- Retained messages ------------------------------------------------ */

static retained_msg *retained_get(qrpc_broker *b, const char *topic, size_t len,
                                  uint64_t hash) {
  for (retained_msg *r = qrpci_u64map_get(&b->retained_by_hash, hash); r;
       r = r->next_same_hash)
    if (r->msg->topic_len == len && memcmp(r->msg->topic, topic, len) == 0)
      return r;
  return NULL;
}

static void retained_remove(qrpc_broker *b, retained_msg *r) {
  uint64_t h = r->msg->topic_hash;
  retained_msg *head = qrpci_u64map_get(&b->retained_by_hash, h);
  if (head == r) {
    qrpci_u64map_del(&b->retained_by_hash, h);
    if (r->next_same_hash)
      qrpci_u64map_put(&b->retained_by_hash, h, r->next_same_hash);
  } else {
    for (retained_msg *p = head; p; p = p->next_same_hash)
      if (p->next_same_hash == r) {
        p->next_same_hash = r->next_same_hash;
        break;
      }
  }
  qrpci_list_remove(&r->node);
  b->retained_bytes -= r->payload_len;
  b->nretained--;
  qrpci_bmsg_unref(r->msg);
  free(r);
}

static int retain_locked(qrpc_broker *b, const char *topic, size_t topic_len,
                         const uint8_t *payload, size_t len, const char **why);

/* Keeps (or with an empty payload clears) the topic's retained message.
 * Returns a QRPC_STATUS_*. Any worker. */
static int retain_msg(qrpc_broker *b, const char *topic, size_t topic_len,
                      const uint8_t *payload, size_t len, const char **why) {
  pthread_mutex_lock(&b->retained_lock);
  int rv = retain_locked(b, topic, topic_len, payload, len, why);
  pthread_mutex_unlock(&b->retained_lock);
  return rv;
}

static int retain_locked(qrpc_broker *b, const char *topic, size_t topic_len,
                         const uint8_t *payload, size_t len, const char **why) {
  uint64_t h = qrpci_topic_hash(topic, topic_len);
  retained_msg *old = retained_get(b, topic, topic_len, h);
  size_t old_len = old ? old->payload_len : 0;
  if (len == 0) {
    if (old) retained_remove(b, old);
    return QRPC_STATUS_OK;
  }
  if ((!old && b->nretained >= b->opts.max_retained) ||
      b->retained_bytes - old_len + len > b->opts.max_retained_bytes) {
    *why = "the broker's store of retained messages is full";
    return QRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  qrpci_bmsg *m = encode_delivery(topic, topic_len, payload, len, 1);
  if (!m) {
    *why = "out of memory";
    return QRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  if (old) {
    qrpci_bmsg_unref(old->msg);
    old->msg = m;
    old->payload_len = len;
    b->retained_bytes = b->retained_bytes - old_len + len;
    return QRPC_STATUS_OK;
  }
  retained_msg *r = calloc(1, sizeof(*r));
  if (!r) {
    qrpci_bmsg_unref(m);
    *why = "out of memory";
    return QRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  r->msg = m;
  r->payload_len = len;
  r->next_same_hash = qrpci_u64map_get(&b->retained_by_hash, h);
  if (qrpci_u64map_put(&b->retained_by_hash, h, r) != 0) {
    qrpci_bmsg_unref(m);
    free(r);
    *why = "out of memory";
    return QRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  qrpci_list_push_back(&b->retained, &r->node);
  b->retained_bytes += len;
  b->nretained++;
  return QRPC_STATUS_OK;
}

/* Offers s the retained messages its pattern matches. The store is
 * shared by the workers: with several, s gets its worker's own copy of
 * each, since a message's references are counted by one thread. */
static void send_retained(qrpc_broker *b, bsub *s) {
  pthread_mutex_lock(&b->retained_lock);
  for (qrpci_list *n = b->retained.next; n != &b->retained; n = n->next) {
    retained_msg *r = QRPCI_CONTAINER_OF(n, retained_msg, node);
    qrpci_bmsg *m = r->msg;
    if (!qrpci_pattern_match(s->pattern, s->pattern_len, m->topic,
                             m->topic_len))
      continue;
    if (b->nworkers > 1) {
      if (!(m = qrpci_bmsg_new(r->msg->topic, r->msg->topic_len,
                               r->msg->len))) {
        ST_ADD(s->conn->w, dropped, 1);
        continue;
      }
      memcpy(m->bytes, r->msg->bytes, m->len);
    } else {
      qrpci_bmsg_ref(m);
    }
    dgram_cache dc = {.n = 0};
    offer(s, m, &dc);
    dgram_cache_free(&dc);
    qrpci_bmsg_unref(m);
    if (qrpci_list_linked(&s->conn->doomed)) break;
  }
  pthread_mutex_unlock(&b->retained_lock);
}

/* ---- Publishing ------------------------------------------------------- */

/* Publishes r, whose topic is t, for connection c; returns a
 * QRPC_STATUS_* with *why set when it is not OK. */
static int publish(bconn *c, const Qrpc__Broker__PublishRequest *r, wstr t,
                   uint32_t *nsubs, const char **why) {
  qrpc_broker *b = c->b;
  bworker *w = c->w;
  int status = QRPC_STATUS_OK;
  if ((*why = qrpci_topic_problem(t.p, t.len, 0)) != NULL) {
    status = QRPC_STATUS_INVALID_ARGUMENT;
  } else if (!may_publish(c, t)) {
    *why = "the connection's ACL section may not publish on this topic";
    status = QRPC_STATUS_PERMISSION_DENIED;
    ST_ADD(w, denied, 1);
  } else if (r->payload.len > b->opts.max_payload) {
    *why = "payload over the broker's max_payload";
    status = QRPC_STATUS_RESOURCE_EXHAUSTED;
  } else if (b->cluster &&
             !qrpci_cluster_fits(b->cluster, t.len, r->payload.len)) {
    *why = "payload over the max_payload of the cluster's NATS servers";
    status = QRPC_STATUS_RESOURCE_EXHAUSTED;
  } else if (r->retain) {
    status = retain_msg(b, t.p, t.len, r->payload.data, r->payload.len, why);
  }
  if (status != QRPC_STATUS_OK) {
    ST_ADD(w, refused, 1);
    return status;
  }
  qrpci_bmsg *m =
      encode_delivery(t.p, t.len, r->payload.data, r->payload.len, 0);
  if (!m) {
    *why = "out of memory";
    ST_ADD(w, refused, 1);
    return QRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  size_t handed = 0;
  int rv = fanout(w, m, &handed);
  qrpci_bmsg_unref(m);
  if (rv != 0) {
    /* Its retained copy, if any, is kept: the store holds the last
     * value, delivered or not. */
    *why = "the broker's workers are behind: a worker's queue of "
           "publishes from the others is full";
    ST_ADD(w, refused, 1);
    return QRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  ST_ADD(w, published, 1);
  *nsubs = (uint32_t)handed;
  /* Delivered here first; a failure to hand it to NATS is counted and
   * logged by the cluster (it then reached this node's subscribers only).
   * A retained one is also stored in the cluster's JetStream stream, for
   * late subscribers on every node. */
  if (b->cluster) {
    qrpci_cluster_publish(b->cluster, t.p, t.len, r->payload.data,
                          r->payload.len);
    if (r->retain)
      qrpci_cluster_retain(b->cluster, t.p, t.len, r->payload.data,
                           r->payload.len);
  }
  return QRPC_STATUS_OK;
}

static bconn *req_conn(qrpc_req *req) {
  return qrpc_peer_user_data(qrpc_req_peer(req));
}

static void h_publish(qrpc_req *req, const Qrpc__Broker__PublishRequest *r,
                      wstr topic) {
  bconn *c = req_conn(req);
  const char *why = NULL;
  uint32_t n = 0;
  int status = publish(c, r, topic, &n, &why);
  if (status == QRPC_STATUS_OK) {
    Qrpc__Broker__PublishReply rep = QRPC__BROKER__PUBLISH_REPLY__INIT;
    rep.subscribers = n;
    qrpc_broker_Broker_Publish_reply(req, &rep);
  } else {
    qrpc_broker_Broker_Publish_error(req, status, why);
  }
  close_doomed(c->w);
}

static void h_publish_oneway(qrpc_req *req,
                             const Qrpc__Broker__PublishRequest *r,
                             wstr topic) {
  bconn *c = req_conn(req);
  const char *why = NULL;
  uint32_t n = 0;
  logstr ls;
  if (publish(c, r, topic, &n, &why) != QRPC_STATUS_OK)
    QRPCI_DEBUG("broker: one-way publish on '%s' refused: %s",
                log_str(&ls, topic), why);
  close_doomed(c->w);
}

/* ---- Subscriptions ---------------------------------------------------- */

static void interest_del(qrpc_broker *b, bsub *s);

static void sub_free(bsub *s) {
  bconn *c = s->conn;
  pend_forget(c->w, s);
  tree_write(c->b);
  interest_del(c->b, s);
  qrpci_topic_tree_remove(c->b->tree, &s->link);
  tree_done(c->b);
  qrpci_u64map_del(&c->w->by_gid, s->gid);
  qrpci_list_remove(&s->node);
  c->nsubs--;
  ST_ADD(c->w, subscriptions, -1);
  qrpci_bqueue_clear(&s->q);
  free(s);
}

static void sub_on_cancel(qrpc_req *req, int status, void *ud) { sub_free(ud); }

static void sub_on_writable(qrpc_req *req, void *ud) { sub_drain(ud); }

static const qrpc_req_callbacks sub_req_callbacks = {
    .on_cancel = sub_on_cancel,
    .on_writable = sub_on_writable,
};

/* Checks a Subscribe request r whose pattern is pat and queue group
 * group (empty: none); returns a
 * QRPC_STATUS_* with *why. */
static int sub_check(bconn *c, const Qrpc__Broker__SubscribeRequest *r,
                     wstr pat, wstr group, const char **why) {
  qrpc_broker *b = c->b;
  if ((*why = qrpci_topic_problem(pat.p, pat.len, 1)) != NULL)
    return QRPC_STATUS_INVALID_ARGUMENT;
  if (group.len && (*why = qrpci_group_problem(group.p, group.len)) != NULL)
    return QRPC_STATUS_INVALID_ARGUMENT;
  if ((unsigned)r->mode > (unsigned)QRPC_BROKER_REALTIME ||
      (unsigned)r->policy > (unsigned)QRPC_BROKER_CONFLATE) {
    *why = "unknown delivery mode or slow-consumer policy";
    return QRPC_STATUS_INVALID_ARGUMENT;
  }
  if (r->mode == QRPC__BROKER__DELIVERY_MODE__REALTIME &&
      r->policy != QRPC__BROKER__SLOW_CONSUMER_POLICY__POLICY_DEFAULT &&
      r->policy != QRPC__BROKER__SLOW_CONSUMER_POLICY__DROP_NEWEST) {
    *why = "realtime subscriptions drop the newest message when the "
           "connection's datagram queue is full; other policies are for "
           "reliable subscriptions";
    return QRPC_STATUS_INVALID_ARGUMENT;
  }
  if (!may_subscribe(c, pat)) {
    ST_ADD(c->w, denied, 1);
    *why = "the connection's ACL section may not subscribe to this pattern";
    return QRPC_STATUS_PERMISSION_DENIED;
  }
  if (c->nsubs >= b->opts.max_subscriptions || c->next_id >= UINT32_MAX) {
    *why = "too many subscriptions on this connection";
    return QRPC_STATUS_RESOURCE_EXHAUSTED;
  }
  if (r->mode == QRPC__BROKER__DELIVERY_MODE__REALTIME &&
      qrpc_peer_max_dgram_payload(c->peer, UINT32_MAX) == 0) {
    *why = "realtime subscriptions need QUIC datagrams, which this "
           "connection did not enable";
    return QRPC_STATUS_FAILED_PRECONDITION;
  }
  return QRPC_STATUS_OK;
}

/* ---- Interest on NATS ------------------------------------------------- */

static const char *cpat_group(const cpat *x) { return x->pattern + x->len + 1; }

static cpat *cpat_find(qrpc_broker *b, const char *p, size_t len, wstr group,
                       uint64_t h) {
  for (cpat *x = qrpci_u64map_get(&b->cpat_by_hash, h); x;
       x = x->next_same_hash)
    if (x->len == len && memcmp(x->pattern, p, len) == 0 &&
        x->group_len == group.len &&
        (!group.len || memcmp(cpat_group(x), group.p, group.len) == 0))
      return x;
  return NULL;
}

/* Links s to the interest of its pattern and queue group, opening it on
 * NATS for the first subscriber when clustered: a NATS queue subscription
 * for a group. A NATS refusal leaves s working on this node (counted by
 * the cluster); only out of memory fails. */
static int interest_add(qrpc_broker *b, bsub *s, wstr group) {
  uint64_t h = qrpci_topic_hash(s->pattern, s->pattern_len) ^
               (qrpci_topic_hash(group.p, group.len) * 0x9e3779b97f4a7c15u);
  cpat *x = cpat_find(b, s->pattern, s->pattern_len, group, h);
  if (!x) {
    if (!(x = calloc(1, sizeof(*x) + s->pattern_len + group.len + 2)))
      return -1;
    memcpy(x->pattern, s->pattern, s->pattern_len);
    x->len = s->pattern_len;
    if (group.len) memcpy(x->pattern + x->len + 1, group.p, group.len);
    x->group_len = group.len;
    x->hash = h;
    x->id = ++b->next_cpat_id;
    qrpci_list_init(&x->subs);
    x->next_same_hash = qrpci_u64map_get(&b->cpat_by_hash, h);
    if (group.len && !(x->fanout = calloc(b->nworkers, sizeof(uint64_t)))) {
      free(x);
      return -1;
    }
    if (qrpci_u64map_put(&b->cpat_by_id, x->id, x) != 0) {
      free(x->fanout);
      free(x);
      return -1;
    }
    if (qrpci_u64map_put(&b->cpat_by_hash, h, x) != 0) {
      qrpci_u64map_del(&b->cpat_by_id, x->id);
      free(x->fanout);
      free(x);
      return -1;
    }
    if (b->cluster)
      x->ns = qrpci_cluster_subscribe(b->cluster, x->pattern, x->len,
                                      cpat_group(x), x->group_len, x->id);
  }
  s->cp = x;
  qrpci_list_push_back(&x->subs, &s->cnode);
  x->nsubs++;
  return 0;
}

static void interest_del(qrpc_broker *b, bsub *s) {
  cpat *x = s->cp;
  if (!x) return;
  qrpci_list_remove(&s->cnode);
  x->nsubs--;
  s->cp = NULL;
  if (!qrpci_list_empty(&x->subs)) return;
  if (x->ns) qrpci_cluster_unsubscribe(b->cluster, x->ns);
  qrpci_u64map_del(&b->cpat_by_id, x->id);
  cpat *head = qrpci_u64map_get(&b->cpat_by_hash, x->hash);
  if (head == x) {
    qrpci_u64map_del(&b->cpat_by_hash, x->hash);
    if (x->next_same_hash)
      qrpci_u64map_put(&b->cpat_by_hash, x->hash, x->next_same_hash);
  } else {
    for (cpat *p = head; p; p = p->next_same_hash)
      if (p->next_same_hash == x) {
        p->next_same_hash = x->next_same_hash;
        break;
      }
  }
  free(x->fanout);
  free(x);
}

/* A message from NATS, for the local subscriptions of one pattern, or one
 * member of a queue group: checked as a local publish is (the ACL was
 * checked at the publisher's node), encoded once, offered as a local
 * publish's fan-out does. Only this interest's subscriptions: a message
 * matching several patterns comes once through each of their NATS
 * subscriptions. A queue group's messages all come this way, this node's
 * own publishes included, when its queue subscription is open. */
/* A retained message from the cluster's JetStream stream, published on
 * any node (this one's own come back too): stored as a local retained
 * publish would be, not delivered (it travelled live as any publish). A
 * message that does not fit the store is dropped, as a refused publish
 * would be. */
static void cluster_retained(qrpc_broker *b, const char *topic,
                             size_t topic_len, const uint8_t *payload,
                             size_t len) {
  const char *why = qrpci_topic_problem(topic, topic_len, 0);
  if (!why && len > b->opts.max_payload) why = "a payload over max_payload";
  if (why) {
    qrpci_cluster_malformed(b->cluster, why);
    return;
  }
  if (retain_msg(b, topic, topic_len, payload, len, &why) != QRPC_STATUS_OK) {
    logstr ls;
    QRPCI_DEBUG("broker: cluster: retained message on '%s' not kept: %s",
                log_strn(&ls, (wstr){topic, topic_len}, 64), why);
  }
}

static void cluster_deliver(void *ctx, uint64_t id, const char *topic,
                            size_t topic_len, const uint8_t *payload,
                            size_t len) {
  qrpc_broker *b = ctx;
  if (id == 0) {
    cluster_retained(b, topic, topic_len, payload, len);
    return;
  }
  cpat *x = qrpci_u64map_get(&b->cpat_by_id, id);
  if (!x) return; /* its last subscriber left meanwhile */
  const char *why = qrpci_topic_problem(topic, topic_len, 0);
  if (!why && !qrpci_pattern_match(x->pattern, x->len, topic, topic_len))
    why = "a subject its subscription's pattern does not match";
  if (!why && len > b->opts.max_payload) why = "a payload over max_payload";
  if (why) {
    qrpci_cluster_malformed(b->cluster, why);
    return;
  }
  bworker *w = &b->w[0]; /* clustered brokers have one worker */
  qrpci_bmsg *m = encode_delivery(topic, topic_len, payload, len, 0);
  if (!m) {
    ST_ADD(w, dropped, 1);
    return;
  }
  dgram_cache dc = {.n = 0};
  if (x->group_len) {
    bsub *s = group_pick(x);
    if (s) offer(s, m, &dc);
  } else {
    for (qrpci_list *n = x->subs.next; n != &x->subs; n = n->next) {
      bsub *s = QRPCI_CONTAINER_OF(n, bsub, cnode);
      if (!qrpci_list_linked(&s->conn->doomed)) offer(s, m, &dc);
    }
  }
  dgram_cache_free(&dc);
  qrpci_bmsg_unref(m);
  close_doomed(w);
}

void qrpc_broker_get_cluster_stats(qrpc_broker *b,
                                   qrpc_broker_cluster_stats *st) {
  if (b->cluster)
    qrpci_cluster_get_stats(b->cluster, st);
  else
    memset(st, 0, sizeof(*st));
}

/* A new subscription of c. What other workers read of it (its connection,
 * gid and interest) is set before it enters the tree. */
static bsub *sub_new(bconn *c, const Qrpc__Broker__SubscribeRequest *r,
                     wstr pat, wstr group) {
  qrpc_broker *b = c->b;
  bsub *s = calloc(1, sizeof(*s) + pat.len + 1);
  if (!s) return NULL;
  memcpy(s->pattern, pat.p, pat.len);
  s->pattern_len = pat.len;
  s->conn = c;
  s->gid = atomic_fetch_add_explicit(&b->next_gid, 1, memory_order_relaxed);
  if (qrpci_u64map_put(&c->w->by_gid, s->gid, s) != 0) {
    free(s);
    return NULL;
  }
  /* The batch waiting goes to the subscriptions before this one. */
  pend_flush(c->w);
  tree_write(b);
  int rv = qrpci_topic_tree_add(b->tree, s->pattern, pat.len, &s->link);
  if (rv == 0 && (rv = interest_add(b, s, group)) != 0)
    qrpci_topic_tree_remove(b->tree, &s->link);
  tree_done(b);
  if (rv != 0) {
    qrpci_u64map_del(&c->w->by_gid, s->gid);
    free(s);
    return NULL;
  }
  s->id = ++c->next_id;
  s->mode = r->mode == QRPC__BROKER__DELIVERY_MODE__REALTIME
                ? QRPC_BROKER_REALTIME
                : QRPC_BROKER_RELIABLE;
  s->policy = r->policy == QRPC__BROKER__SLOW_CONSUMER_POLICY__POLICY_DEFAULT
                  ? (s->mode == QRPC_BROKER_REALTIME ? QRPCI_BPOLICY_DROP_NEWEST
                                                     : QRPCI_BPOLICY_DISCONNECT)
                  : (qrpci_bpolicy)r->policy;
  uint32_t msgs =
      r->queue_max_messages ? r->queue_max_messages : b->opts.queue_messages;
  size_t bytes =
      r->queue_max_bytes ? (size_t)r->queue_max_bytes : b->opts.queue_bytes;
  if (msgs > b->opts.queue_messages_max) msgs = b->opts.queue_messages_max;
  if (bytes > b->opts.queue_bytes_max) bytes = b->opts.queue_bytes_max;
  qrpci_bqueue_init(&s->q, msgs, bytes, &c->w->queued_bytes,
                    b->opts.queued_bytes_total / b->nworkers);
  qrpci_list_push_back(&c->subs, &s->node);
  c->nsubs++;
  ST_ADD(c->w, subscriptions, 1);
  return s;
}

static void h_subscribe(qrpc_req *req, const Qrpc__Broker__SubscribeRequest *r,
                        wstr pat, wstr group) {
  bconn *c = req_conn(req);
  const char *why = NULL;
  int status = sub_check(c, r, pat, group, &why);
  bsub *s = NULL;
  if (status == QRPC_STATUS_OK && !(s = sub_new(c, r, pat, group))) {
    status = QRPC_STATUS_RESOURCE_EXHAUSTED;
    why = "out of memory";
  }
  if (status != QRPC_STATUS_OK) {
    logstr ls;
    QRPCI_DEBUG("broker: subscribe to '%s' refused: %s", log_str(&ls, pat),
                why);
    qrpc_broker_Broker_Subscribe_error(req, status, why);
    return;
  }
  s->req = req;
  qrpc_req_set_callbacks(req, &sub_req_callbacks, s);
  Qrpc__Broker__Delivery confirm = QRPC__BROKER__DELIVERY__INIT;
  confirm.subscription_id = s->id;
  if (qrpc_broker_Broker_Subscribe_item(req, &confirm) != 0) {
    qrpc_broker_Broker_Subscribe_error(req, QRPC_STATUS_INTERNAL,
                                       "cannot confirm the subscription");
    sub_free(s);
    return;
  }
  /* A queue group's members get no retained messages, as MQTT 5's
   * shared subscriptions: which member would take them is arbitrary. */
  if (!r->skip_retained && !group.len) send_retained(c->b, s);
  close_doomed(c->w);
}

static void fill_sub_stats(const bsub *s, Qrpc__Broker__SubscriptionStats *o) {
  qrpc__broker__subscription_stats__init(o);
  o->subscription_id = s->id;
  o->pattern = (char *)s->pattern;
  o->group = (char *)cpat_group(s->cp);
  o->mode = (Qrpc__Broker__DeliveryMode)s->mode;
  o->policy = (Qrpc__Broker__SlowConsumerPolicy)s->policy;
  o->delivered = s->delivered;
  o->dropped = s->dropped;
  o->conflated = s->conflated;
  o->queued_messages = s->q.count;
  o->queued_bytes = s->q.bytes;
}

static void h_unsubscribe(qrpc_req *req,
                          const Qrpc__Broker__UnsubscribeRequest *r, void *ud) {
  bconn *c = req_conn(req);
  bsub *s = NULL;
  for (qrpci_list *n = c->subs.next; n != &c->subs; n = n->next) {
    bsub *x = QRPCI_CONTAINER_OF(n, bsub, node);
    if (x->id == r->subscription_id) {
      s = x;
      break;
    }
  }
  if (!s) {
    qrpc_broker_Broker_Unsubscribe_error(req, QRPC_STATUS_NOT_FOUND,
                                         "no subscription with that id on "
                                         "this connection");
    return;
  }
  Qrpc__Broker__SubscriptionStats st;
  fill_sub_stats(s, &st);
  Qrpc__Broker__UnsubscribeReply rep = QRPC__BROKER__UNSUBSCRIBE_REPLY__INIT;
  rep.stats = &st;
  qrpc_broker_Broker_Unsubscribe_reply(req, &rep);
  /* END with OK tells the subscriber's call it is over; what was queued
   * for it is dropped with the subscription. */
  qrpc_req_end(s->req);
  sub_free(s);
}

/* ---- Hello and Stats -------------------------------------------------- */

/* A token of any length that is not one of the ACL's, one holding a NUL
 * byte included, is unknown, and the connection keeps the section it has
 * (its certificate's, or the anonymous one); an empty token changes
 * nothing. */
static void h_hello(qrpc_req *req, wstr token, wstr client_name) {
  bconn *c = req_conn(req);
  qrpc_broker *b = c->b;
  logstr ls;
  if (b->acl && token.len) {
    const qrpci_acl_identity *id = qrpci_acl_lookup(b->acl, token.p, token.len);
    if (!id) {
      ST_ADD(c->w, denied, 1);
      QRPCI_INFO("broker: client '%s' presented an unknown token",
                 log_str(&ls, client_name));
      qrpc_broker_Broker_Hello_error(req, QRPC_STATUS_UNAUTHENTICATED,
                                     "unknown token");
      return;
    }
    c->id = id;
  }
  QRPCI_DEBUG("broker: hello from '%s'%s", log_str(&ls, client_name),
              token.len ? " with a token" : "");
  Qrpc__Broker__HelloReply rep = QRPC__BROKER__HELLO_REPLY__INIT;
  rep.broker_version = (char *)QRPC_VERSION;
  rep.max_payload = b->opts.max_payload;
  rep.max_subscriptions = (uint32_t)b->opts.max_subscriptions;
  rep.acl = b->acl != NULL;
  qrpc_broker_Broker_Hello_reply(req, &rep);
}

static uint64_t stat_get(_Atomic uint64_t *c) {
  return atomic_load_explicit(c, memory_order_relaxed);
}

void qrpc_broker_get_stats(qrpc_broker *b, qrpc_broker_stats *st) {
  memset(st, 0, sizeof(*st));
  for (size_t i = 0; i < b->nworkers; i++) {
    bworker *w = &b->w[i];
    st->connections += stat_get(&w->st.connections);
    st->subscriptions += stat_get(&w->st.subscriptions);
    st->published += stat_get(&w->st.published);
    st->refused += stat_get(&w->st.refused);
    st->delivered += stat_get(&w->st.delivered);
    st->dropped += stat_get(&w->st.dropped);
    st->conflated += stat_get(&w->st.conflated);
    st->slow_disconnects += stat_get(&w->st.slow_disconnects);
    st->denied += stat_get(&w->st.denied);
    st->dropped_oldest += stat_get(&w->st.dropped_oldest);
    st->dropped_newest += stat_get(&w->st.dropped_newest);
    st->queued_bytes +=
        atomic_load_explicit(&w->queued_bytes, memory_order_relaxed);
  }
  pthread_mutex_lock(&b->retained_lock);
  st->retained = b->nretained;
  pthread_mutex_unlock(&b->retained_lock);
  /* Every worker's endpoint, where the thread may ask them all (worker
   * 0's, or one that is no worker's); else this worker's own. */
  qrpc_endpoint_stats es;
  if (qrpc_server_get_stats(b->srv, &es, NULL, 0) != 0)
    qrpc_endpoint_get_stats(qrpci_server_own_endpoint(b->srv), &es);
  st->dead_peers = es.dead_peers;
}

static void h_stats(qrpc_req *req, const Qrpc__Broker__StatsRequest *r,
                    void *ud) {
  bconn *c = req_conn(req);
  qrpc_broker_stats t;
  qrpc_broker_get_stats(c->b, &t);
  Qrpc__Broker__BrokerStats bs = QRPC__BROKER__BROKER_STATS__INIT;
  bs.connections = t.connections;
  bs.subscriptions = t.subscriptions;
  bs.retained = t.retained;
  bs.published = t.published;
  bs.refused = t.refused;
  bs.delivered = t.delivered;
  bs.dropped = t.dropped;
  bs.conflated = t.conflated;
  bs.slow_disconnects = t.slow_disconnects;
  bs.denied = t.denied;
  bs.queued_bytes = t.queued_bytes;
  bs.dead_peers = t.dead_peers;
  bs.dropped_oldest = t.dropped_oldest;
  bs.dropped_newest = t.dropped_newest;
  Qrpc__Broker__SubscriptionStats *ss = calloc(c->nsubs + 1, sizeof(*ss));
  Qrpc__Broker__SubscriptionStats **sp = calloc(c->nsubs + 1, sizeof(*sp));
  if (!ss || !sp) {
    free(ss);
    free(sp);
    qrpc_broker_Broker_Stats_error(req, QRPC_STATUS_RESOURCE_EXHAUSTED,
                                   "out of memory");
    return;
  }
  size_t n = 0;
  for (qrpci_list *l = c->subs.next; l != &c->subs; l = l->next, n++) {
    fill_sub_stats(QRPCI_CONTAINER_OF(l, bsub, node), &ss[n]);
    sp[n] = &ss[n];
  }
  Qrpc__Broker__StatsReply rep = QRPC__BROKER__STATS_REPLY__INIT;
  rep.broker = &bs;
  rep.n_subscriptions = n;
  rep.subscriptions = sp;
  qrpc_broker_Broker_Stats_reply(req, &rep);
  free(sp);
  free(ss);
}

/* ---- Requests with strings -------------------------------------------- */

/* The generated stubs hand a handler the request protobuf-c decoded, whose
 * strings end at their first NUL byte: a Publish to "a\0b" would reach
 * h_publish() as one to "a", and a Hello with "T\0junk" as one with token
 * T. The requests that carry strings are therefore served here: decoded by
 * the same generated code for their other fields, with each string's bytes
 * and length read from the request as received (util/pbwire.h). */

/* The field of messages of type desc whose member at offset off is a
 * string, or NULL: the offset comes from the C struct, so the field number
 * always is the IDL's. */
static const ProtobufCFieldDescriptor *
string_field(const ProtobufCMessageDescriptor *desc, size_t off) {
  for (unsigned i = 0; i < desc->n_fields; i++)
    if (desc->fields[i].offset == off &&
        desc->fields[i].type == PROTOBUF_C_TYPE_STRING)
      return &desc->fields[i];
  return NULL;
}

/* Decodes raw[0..len) as a message of type desc and reads its string
 * members at offsets off[0..n) into strs[0..n). Returns the message (to
 * free with protobuf_c_message_free_unpacked()), or NULL after refusing the
 * request as the stubs do: INVALID_ARGUMENT, or nothing for a NOTIFY. */
static ProtobufCMessage *decode(qrpc_req *req,
                                const ProtobufCMessageDescriptor *desc,
                                const uint8_t *raw, size_t len,
                                const size_t *off, wstr *strs, size_t n) {
  static const uint8_t none[1];
  ProtobufCMessage *m =
      protobuf_c_message_unpack(desc, NULL, len, raw ? raw : none);
  size_t done = 0;
  for (; m && done < n; done++) {
    const ProtobufCFieldDescriptor *f = string_field(desc, off[done]);
    const uint8_t *v;
    if (!f || qrpci_pb_field_bytes(raw, len, f->id, &v, &strs[done].len) != 0)
      break;
    strs[done].p = (const char *)v;
  }
  if (m && done == n) return m;
  if (m) protobuf_c_message_free_unpacked(m, NULL);
  if (!qrpc_req_is_notify(req)) {
    char why[128];
    snprintf(why, sizeof(why), "the request does not decode as %s", desc->name);
    qrpc_req_error(req, QRPC_STATUS_INVALID_ARGUMENT, why);
  }
  return NULL;
}

static void serve_hello(qrpc_req *req, const uint8_t *raw, size_t len,
                        void *ud) {
  static const size_t off[] = {
      offsetof(Qrpc__Broker__HelloRequest, token),
      offsetof(Qrpc__Broker__HelloRequest, client_name)};
  wstr s[2];
  ProtobufCMessage *m = decode(req, &qrpc__broker__hello_request__descriptor,
                               raw, len, off, s, 2);
  if (!m) return;
  h_hello(req, s[0], s[1]);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void serve_subscribe(qrpc_req *req, const uint8_t *raw, size_t len,
                            void *ud) {
  static const size_t off[] = {
      offsetof(Qrpc__Broker__SubscribeRequest, pattern),
      offsetof(Qrpc__Broker__SubscribeRequest, group)};
  wstr s[2];
  ProtobufCMessage *m = decode(
      req, &qrpc__broker__subscribe_request__descriptor, raw, len, off, s, 2);
  if (!m) return;
  h_subscribe(req, (const Qrpc__Broker__SubscribeRequest *)m, s[0], s[1]);
  protobuf_c_message_free_unpacked(m, NULL);
}

static const size_t publish_strs[] = {
    offsetof(Qrpc__Broker__PublishRequest, topic)};

static void serve_publish(qrpc_req *req, const uint8_t *raw, size_t len,
                          void *ud) {
  wstr topic;
  ProtobufCMessage *m = decode(req, &qrpc__broker__publish_request__descriptor,
                               raw, len, publish_strs, &topic, 1);
  if (!m) return;
  h_publish(req, (const Qrpc__Broker__PublishRequest *)m, topic);
  protobuf_c_message_free_unpacked(m, NULL);
}

static void serve_publish_oneway(qrpc_req *req, const uint8_t *raw, size_t len,
                                 void *ud) {
  int notify = qrpc_req_is_notify(req);
  wstr topic;
  ProtobufCMessage *m = decode(req, &qrpc__broker__publish_request__descriptor,
                               raw, len, publish_strs, &topic, 1);
  if (!m) return;
  h_publish_oneway(req, (const Qrpc__Broker__PublishRequest *)m, topic);
  protobuf_c_message_free_unpacked(m, NULL);
  /* Called as a unary method, as the stubs allow: an empty reply. */
  if (!notify) qrpc_req_reply(req, NULL, 0);
}

/* Registers the methods of the Broker service on srv. */
static int broker_register(qrpc_server *srv) {
  static const qrpc_broker_Broker_handlers stubs = {
      .Unsubscribe = h_unsubscribe,
      .Stats = h_stats,
  };
  static const struct {
    uint32_t id;
    qrpc_shape shape;
    qrpc_handler_fn fn;
  } own[] = {
      {qrpc_broker_Broker_Hello_METHOD_ID, QRPC_SHAPE_UNARY, serve_hello},
      {qrpc_broker_Broker_Subscribe_METHOD_ID, QRPC_SHAPE_SERVER_STREAM,
       serve_subscribe},
      {qrpc_broker_Broker_Publish_METHOD_ID, QRPC_SHAPE_UNARY, serve_publish},
      {qrpc_broker_Broker_PublishOneway_METHOD_ID, QRPC_SHAPE_UNARY,
       serve_publish_oneway},
  };
  int rv = qrpc_broker_Broker_register(srv, &stubs);
  for (size_t i = 0; rv == 0 && i < sizeof(own) / sizeof(own[0]); i++)
    rv = qrpc_server_register(srv, own[i].id, own[i].shape, own[i].fn, NULL);
  return rv;
}

/* ---- Connections ------------------------------------------------------ */

/* The section of a connection before any Hello: its verified client
 * certificate's, else the anonymous one (docs/broker.md, "Access
 * control"). Logs the certificate's subject and what it selected. */
static const qrpci_acl_identity *pick_identity(qrpc_broker *b,
                                               const qrpc_identity *cert) {
  const qrpci_acl_identity *id =
      b->acl && cert ? qrpci_acl_lookup_cert(b->acl, cert) : NULL;
  if (cert) {
    logstr ls;
    wstr subject = {cert->subject.ptr, cert->subject.len};
    const char *subj = log_strn(&ls, subject, LOG_SUBJECT_MAX);
    if (!b->acl)
      QRPCI_DEBUG("broker: client certificate '%s'", subj);
    else if (id)
      QRPCI_DEBUG("broker: client certificate '%s': ACL cert section of "
                  "line %lu",
                  subj, qrpci_acl_line(id));
    else
      QRPCI_DEBUG("broker: client certificate '%s': no ACL cert section, "
                  "anonymous rights",
                  subj);
  }
  if (id || !b->acl) return id;
  return qrpci_acl_anonymous(b->acl);
}

/* The worker whose loop is loop (a connection's: one of them). */
static bworker *worker_at(qrpc_broker *b, qrpc_loop *loop) {
  for (size_t i = 1; i < b->nworkers; i++)
    if (b->w[i].loop == loop) return &b->w[i];
  return &b->w[0];
}

static void on_peer_open(qrpc_peer *peer, void *ud) {
  qrpc_broker *b = ud;
  bconn *c = calloc(1, sizeof(*c));
  if (!c) {
    qrpc_conn_close(qrpc_peer_conn(peer), QRPCI_ERR_INTERNAL_ERROR,
                    "out of memory");
    return;
  }
  c->b = b;
  c->w = worker_at(b, qrpc_peer_loop(peer));
  c->peer = peer;
  c->id = pick_identity(b, qrpc_conn_peer_identity(qrpc_peer_conn(peer)));
  qrpci_list_init(&c->subs);
  qrpci_list_init(&c->doomed);
  qrpc_peer_set_user_data(peer, c);
  ST_ADD(c->w, connections, 1);
}

static void on_peer_close(qrpc_peer *peer, void *ud) {
  bconn *c = qrpc_peer_user_data(peer);
  if (!c) return;
  /* The requests were cancelled before this; what is left never had one
   * answered. */
  while (!qrpci_list_empty(&c->subs))
    sub_free(QRPCI_CONTAINER_OF(c->subs.next, bsub, node));
  if (qrpci_list_linked(&c->doomed)) qrpci_list_remove(&c->doomed);
  ST_ADD(c->w, connections, -1);
  qrpc_peer_set_user_data(peer, NULL);
  free(c);
}

/* ---- The broker ------------------------------------------------------- */

static int load_acl(qrpc_broker *b, const char *path, char *err,
                    size_t errlen) {
  if (!path) {
    QRPCI_WARN("broker: no ACL file: every client may publish and subscribe "
               "to every topic");
    return 0;
  }
  char buf[512];
  int rv = qrpci_acl_load(path, &b->acl, buf, sizeof(buf));
  if (rv != 0) {
    if (err && errlen)
      snprintf(err, errlen, "%s", buf);
    else
      QRPCI_ERROR("broker: ACL: %s", buf);
    return rv;
  }
  QRPCI_INFO("broker: ACL %s: %zu sections, %zu by client certificate", path,
             qrpci_acl_count(b->acl), qrpci_acl_cert_count(b->acl));
  return 0;
}

/* The broker's side of each of the server's workers, made before the
 * worker threads serve anyone (they wait for worker 0's loop to run). */
static int workers_new(qrpc_broker *b) {
  size_t n = qrpc_server_workers(b->srv);
  if (!(b->w = calloc(n, sizeof(*b->w)))) return QRPC_ENOMEM;
  for (size_t i = 0; i < n; i++) {
    bworker *w = &b->w[i];
    w->b = b;
    w->idx = i;
    w->loop = qrpc_server_worker_loop(b->srv, i);
    qrpci_list_init(&w->conns_doomed);
    qrpci_u64map_init(&w->by_gid);
    pthread_mutex_init(&w->in_mu, NULL);
    w->in_tail = &w->in_head;
    b->nworkers = i + 1; /* freed by qrpc_broker_free() from here on */
    if (!(w->tgt = calloc(n, sizeof(*w->tgt)))) return QRPC_ENOMEM;
    if (n == 1 &&
        !(w->pend_ev = event_new(qrpc_loop_base(w->loop), -1, 0, pend_cb, w)))
      return QRPC_ENOMEM;
  }
  return 0;
}

static void workers_free(qrpc_broker *b) {
  for (size_t i = 0; i < b->nworkers; i++) {
    bworker *w = &b->w[i];
    inbox_free(w);
    pthread_mutex_destroy(&w->in_mu);
    qrpci_u64map_free(&w->by_gid);
    for (size_t j = 0; w->tgt && j < b->nworkers; j++) free(w->tgt[j].gid);
    free(w->tgt);
    free(w->match);
    if (w->pend_ev) event_free(w->pend_ev);
    for (size_t j = 0; j < w->npend; j++) qrpci_bmsg_unref(w->pend[j]);
    free(w->pend);
    free(w->pend_subs);
  }
  free(b->w);
}

int qrpc_broker_new(qrpc_loop *loop, const char *addr, qrpc_tls_config *tls,
                    const qrpc_broker_opts *opts, qrpc_broker **out, char *err,
                    size_t errlen) {
  if (!loop || !addr || !tls || !out) return QRPC_EINVAL;
  qrpc_broker_opts def;
  if (!opts) {
    qrpc_broker_opts_default(&def);
    opts = &def;
  }
  int rv = opts_check(opts, err, errlen);
  if (rv != 0) return rv;
  qrpc_broker *b = calloc(1, sizeof(*b));
  if (!b) return QRPC_ENOMEM;
  b->loop = loop;
  b->opts = *opts;
  b->inbox_max = opts->worker_queue_bytes;
  atomic_init(&b->next_gid, 1);
  pthread_rwlock_init(&b->tree_lock, NULL);
  pthread_mutex_init(&b->retained_lock, NULL);
  qrpci_list_init(&b->retained);
  qrpci_u64map_init(&b->retained_by_hash);
  qrpci_u64map_init(&b->cpat_by_hash);
  qrpci_u64map_init(&b->cpat_by_id);
  if ((rv = load_acl(b, opts->acl_path, err, errlen)) != 0 ||
      (rv = qrpci_topic_tree_new(&b->tree)) != 0) {
    qrpc_broker_free(b);
    return rv;
  }
  b->opts.acl_path = NULL; /* the caller's string; read already */
  if (opts->cluster &&
      (rv = qrpci_cluster_new(loop, opts, cluster_deliver, b, &b->cluster, err,
                              errlen)) != 0) {
    qrpc_broker_free(b);
    return rv;
  }
  /* The caller's strings, copied by the cluster. */
  b->opts.cluster = b->opts.cluster_user = b->opts.cluster_password = NULL;
  b->opts.cluster_token = b->opts.cluster_prefix = NULL;
  qrpc_server_opts so = opts->server;
  so.on_peer_open = on_peer_open;
  so.on_peer_close = on_peer_close;
  so.user_data = b;
  if (so.rpc.max_frame < opts->max_payload + DELIVERY_OVERHEAD)
    so.rpc.max_frame = opts->max_payload + DELIVERY_OVERHEAD;
  /* Every subscription is a stream the client opens; the unary calls take
   * a few more. */
  uint64_t streams = (uint64_t)opts->max_subscriptions + 8;
  if (so.endpoint.conn.max_streams_bidi < streams)
    so.endpoint.conn.max_streams_bidi = streams;
  if ((rv = qrpc_server_new(loop, addr, tls, &so, &b->srv)) != 0 ||
      (rv = workers_new(b)) != 0 || (rv = broker_register(b->srv)) != 0 ||
      (rv = qrpc_health_new(b->srv, &b->health)) != 0 ||
      (rv = qrpc_health_set(b->health, "qrpc.broker.Broker",
                            QRPC_HEALTH_SERVING)) != 0) {
    if (err && errlen)
      snprintf(err, errlen, "cannot serve on %s: %s", addr, qrpc_strerror(rv));
    qrpc_broker_free(b);
    return rv;
  }
  *out = b;
  return 0;
}

qrpc_server *qrpc_broker_server(qrpc_broker *b) { return b->srv; }

size_t qrpc_broker_workers(const qrpc_broker *b) { return b->nworkers; }

qrpc_health *qrpc_broker_health(qrpc_broker *b) { return b->health; }

static void on_server_shutdown(qrpc_server *srv, void *ud) {
  qrpc_broker *b = ud;
  if (b->on_shutdown) b->on_shutdown(b, b->shutdown_ud);
}

int qrpc_broker_shutdown(qrpc_broker *b, uint64_t deadline_ms,
                         void (*on_done)(qrpc_broker *b, void *user_data),
                         void *user_data) {
  b->on_shutdown = on_done;
  b->shutdown_ud = user_data;
  int rv = qrpc_server_shutdown(b->srv, deadline_ms, on_server_shutdown, b);
  if (rv == 0) qrpc_health_shutdown(b->health);
  return rv;
}

void qrpc_broker_free(qrpc_broker *b) {
  if (!b) return;
  qrpc_server_free(b->srv); /* closes every connection: frees bconns */
  qrpc_health_free(b->health);
  /* Every subscription is gone, and with them every interest. */
  qrpci_cluster_free(b->cluster);
  qrpci_u64map_free(&b->cpat_by_hash);
  qrpci_u64map_free(&b->cpat_by_id);
  while (!qrpci_list_empty(&b->retained))
    retained_remove(b,
                    QRPCI_CONTAINER_OF(b->retained.next, retained_msg, node));
  qrpci_u64map_free(&b->retained_by_hash);
  qrpci_topic_tree_free(b->tree);
  qrpci_acl_free(b->acl);
  workers_free(b);
  pthread_rwlock_destroy(&b->tree_lock);
  pthread_mutex_destroy(&b->retained_lock);
  free(b);
}
