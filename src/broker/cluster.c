/*
 * The broker's link to NATS (cluster.h, docs/broker.md "Clustering").
 *
 * One nats.c connection ("out", nc[0]), attached to the broker's
 * event_base through nats.c's libevent adapter. It publishes what local
 * clients publish and holds the subscriptions, with no-echo: the server
 * never hands this node its own publishes back, which it has already
 * delivered locally. Queue groups subscribe on a second connection
 * ("groups", nc[1]), with echo: NATS picks one member among the queue
 * subscriptions of every node, the publishing node's own included, so a
 * queue group's messages reach it through NATS only. The NATS queue name
 * is the group and a hash of the pattern, "GROUP-HHHHHHHHHHHHHHHH": two
 * groups of one name on different patterns stay apart, as they do on one
 * node.
 *
 * nats.c calls the message and connection callbacks on its own threads
 * (its delivery pool and its callback thread). They append an item to a
 * hand-off list under a mutex and, when the list was empty, make a
 * libevent event active; the loop takes the whole list and handles it.
 * Every counter is touched on the loop only.
 *
 * Lifetime: a NATS subscription's closure (csub) is freed by nats.c's
 * completion callback, after its last message callback; the connections'
 * closed callbacks mark the end of their callbacks. qrpci_cluster_free()
 * waits (bounded) for both before freeing what those callbacks use.
 */
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/cluster.h"
#include "broker/queue.h"
#include "broker/topic.h"
#include "qrpc/error.h"
#include "util/log.h"

#define PREFIX_MAX 64
#define URLS_MAX 16
#define URL_MAX 300

/* ---- URLs (built with or without nats.c) ------------------------------ */

static int is_host_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
         (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_';
}

/* Checks one URL of n bytes; returns NULL or what is wrong. */
static const char *url_problem(const char *u, size_t n) {
  static const char scheme[] = "nats://";
  size_t sl = sizeof(scheme) - 1;
  if (n == 0) return "an empty URL";
  if (memchr(u, '@', n)) return "credentials";
  if (n > URL_MAX) return "too long";
  if (n < sl || memcmp(u, scheme, sl) != 0) return "not nats://HOST:PORT";
  const char *h = u + sl, *end = u + n, *colon;
  if (h < end && *h == '[') { /* [v6]:port */
    const char *rb = memchr(h, ']', (size_t)(end - h));
    if (!rb || rb == h + 1) return "not nats://HOST:PORT";
    for (const char *p = h + 1; p < rb; p++)
      if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f') ||
            (*p >= 'A' && *p <= 'F') || *p == ':' || *p == '.'))
        return "not nats://HOST:PORT";
    colon = rb + 1;
    if (colon >= end || *colon != ':') return "not nats://HOST:PORT";
  } else {
    colon = h;
    while (colon < end && is_host_char(*colon)) colon++;
    if (colon == h || colon >= end || *colon != ':')
      return "not nats://HOST:PORT";
  }
  const char *p = colon + 1;
  unsigned long port = 0;
  if (p >= end || end - p > 5) return "not nats://HOST:PORT";
  for (; p < end; p++) {
    if (*p < '0' || *p > '9') return "not nats://HOST:PORT";
    port = port * 10 + (unsigned long)(*p - '0');
  }
  if (port == 0 || port > 65535) return "a port outside 1 to 65535";
  return NULL;
}

int qrpci_cluster_check_urls(const char *urls, char *err, size_t errlen) {
  if (!urls || !*urls) {
    if (err && errlen) snprintf(err, errlen, "no NATS URL");
    return QRPC_EINVAL;
  }
  size_t k = 0;
  for (const char *s = urls;; k++) {
    const char *comma = strchr(s, ',');
    size_t n = comma ? (size_t)(comma - s) : strlen(s);
    const char *why =
        k >= URLS_MAX ? "one URL too many (16 at most)" : url_problem(s, n);
    if (why) {
      if (err && errlen) {
        if (strcmp(why, "credentials") == 0)
          snprintf(err, errlen,
                   "URL %zu holds credentials (USER:PASSWORD@ or TOKEN@), "
                   "which would show in logs and process lists: give them "
                   "apart (docs/broker.md, \"Clustering\")",
                   k + 1);
        else
          snprintf(err, errlen, "'%.*s' is %s", (int)(n < 80 ? n : 80), s,
                   strcmp(why, "not nats://HOST:PORT") == 0
                       ? "not nats://HOST:PORT"
                       : why);
      }
      return QRPC_EINVAL;
    }
    if (!comma) break;
    s = comma + 1;
  }
  return 0;
}

int qrpc_broker_cluster_check(const char *urls, char *err, size_t errlen) {
  return qrpci_cluster_check_urls(urls, err, errlen);
}

#ifndef QRPC_HAVE_NATS

/* Without nats.c a broker cannot join a cluster: creating one fails with
 * QRPC_ENOTSUP and the rest are never reached with a cluster. */
int qrpci_cluster_new(qrpc_loop *loop, const qrpc_broker_opts *o,
                      qrpci_cluster_deliver_fn deliver, void *ctx,
                      qrpci_cluster **out, char *err, size_t errlen) {
  *out = NULL;
  if (err && errlen)
    snprintf(err, errlen, "this qrpc was built without nats.c (libnats)");
  return QRPC_ENOTSUP;
}
int qrpci_cluster_publish(qrpci_cluster *cl, const char *topic,
                          size_t topic_len, const uint8_t *payload,
                          size_t len) {
  return QRPC_ENOTSUP;
}
qrpci_cluster_sub *qrpci_cluster_subscribe(qrpci_cluster *cl,
                                           const char *pattern,
                                           size_t pattern_len,
                                           const char *group, size_t group_len,
                                           uint64_t id) {
  return NULL;
}
void qrpci_cluster_unsubscribe(qrpci_cluster *cl, qrpci_cluster_sub *s) {}
int qrpci_cluster_fits(qrpci_cluster *cl, size_t topic_len, size_t len) {
  return 1;
}
void qrpci_cluster_malformed(qrpci_cluster *cl, const char *why) {}
void qrpci_cluster_get_stats(qrpci_cluster *cl, qrpc_broker_cluster_stats *st) {
  memset(st, 0, sizeof(*st));
}
void qrpci_cluster_free(qrpci_cluster *cl) {}
void qrpci_cluster_retain(qrpci_cluster *cl, const char *topic,
                          size_t topic_len, const uint8_t *payload,
                          size_t len) {}

#else

#include <event2/event.h>
#include <pthread.h>
#include <time.h>

#include <nats/nats.h>
/* The adapter's functions are defined in its header, without prototypes
 * for some: this file is its only includer. */
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmissing-prototypes"
#pragma GCC diagnostic ignored "-Wstrict-prototypes"
#include <nats/adapters/libevent.h>
#pragma GCC diagnostic pop

#include "qrpc/loop.h"

enum item_kind {
  ITEM_MSG,
  ITEM_CONNECTED,    /* first connection */
  ITEM_DISCONNECTED, /* lost, nats.c reconnects */
  ITEM_RECONNECTED,
  ITEM_SLOW, /* nats.c dropped messages of a subscription */
  ITEM_ERROR,
};

typedef struct item {
  struct item *next;
  enum item_kind kind;
  int conn; /* 0: out, 1: group */
  uint64_t id;
  natsMsg *msg;
  natsStatus status;
} item;

/* The closure of one NATS subscription; freed by its completion
 * callback. */
struct qrpci_cluster_sub {
  qrpci_cluster *cl;
  natsSubscription *ns;
  uint64_t id;
};

/* Retained messages in JetStream: a stream holding the last message of
 * each subject PREFIX-retained.TOPIC, and an ordered consumer of it on
 * every node that replays the last of each subject and then follows. Set
 * up by a thread of its own on a connection of its own (nats.c's threads,
 * not the loop), since JetStream's management calls block. */
typedef struct retained_js {
  natsConnection *nc; /* under cl->mu until the thread is joined */
  jsCtx *js;
  natsSubscription *sub;
  pthread_t thread;
  int thread_started;
  atomic_int stop;
  atomic_int closed;
  char root[PREFIX_MAX + 10]; /* "PREFIX-retained" */
  size_t root_len;
  char stream[PREFIX_MAX + 16];
  char urlbuf[URLS_MAX * (URL_MAX + 1)];
  const char *urls[URLS_MAX];
  int nurls;
  char *user, *password, *token;
} retained_js;

struct qrpci_cluster {
  retained_js rjs;
  qrpc_loop *loop;
  qrpci_cluster_deliver_fn deliver;
  void *ctx;
  natsConnection *nc[2];
  struct event *wake;
  pthread_mutex_t mu;
  item *head, *tail; /* under mu */
  atomic_int live_subs;
  atomic_int closed[2]; /* the connection's closed callback has run */
  char prefix[PREFIX_MAX + 1];
  size_t prefix_len;
  int connected[2];
  int logged_pub_fail, logged_sub_fail, logged_malformed, logged_slow;
  qrpc_broker_cluster_stats st;
};

static atomic_int adapter_ready;

/* ---- The hand-off ----------------------------------------------------- */

/* Any thread. Takes ownership of it (and of its msg). */
static void handoff(qrpci_cluster *cl, item *it) {
  it->next = NULL;
  pthread_mutex_lock(&cl->mu);
  int was_empty = cl->head == NULL;
  if (cl->tail)
    cl->tail->next = it;
  else
    cl->head = it;
  cl->tail = it;
  pthread_mutex_unlock(&cl->mu);
  if (was_empty) event_active(cl->wake, EV_READ, 0);
}

static void push_state(qrpci_cluster *cl, enum item_kind kind, int conn,
                       natsStatus status) {
  item *it = calloc(1, sizeof(*it));
  if (!it) return; /* a lost state change only costs a log line */
  it->kind = kind;
  it->conn = conn;
  it->status = status;
  handoff(cl, it);
}

static void on_msg(natsConnection *nc, natsSubscription *ns, natsMsg *msg,
                   void *closure) {
  qrpci_cluster_sub *cs = closure;
  item *it = malloc(sizeof(*it));
  if (!it) {
    natsMsg_Destroy(msg);
    push_state(cs->cl, ITEM_SLOW, 0, NATS_NO_MEMORY);
    return;
  }
  it->kind = ITEM_MSG;
  it->conn = 0;
  it->id = cs->id;
  it->msg = msg;
  it->status = NATS_OK;
  handoff(cs->cl, it);
}

static void on_sub_complete(void *closure) {
  qrpci_cluster_sub *cs = closure;
  atomic_fetch_sub(&cs->cl->live_subs, 1);
  free(cs);
}

typedef struct conn_ctx {
  qrpci_cluster *cl;
  int idx;
} conn_ctx;

static void on_connected(natsConnection *nc, void *closure) {
  conn_ctx *cc = closure;
  push_state(cc->cl, ITEM_CONNECTED, cc->idx, NATS_OK);
}

static void on_disconnected(natsConnection *nc, void *closure) {
  conn_ctx *cc = closure;
  push_state(cc->cl, ITEM_DISCONNECTED, cc->idx, NATS_OK);
}

static void on_reconnected(natsConnection *nc, void *closure) {
  conn_ctx *cc = closure;
  push_state(cc->cl, ITEM_RECONNECTED, cc->idx, NATS_OK);
}

static void on_closed(natsConnection *nc, void *closure) {
  conn_ctx *cc = closure;
  atomic_store(&cc->cl->closed[cc->idx], 1);
}

static void on_error(natsConnection *nc, natsSubscription *ns, natsStatus err,
                     void *closure) {
  conn_ctx *cc = closure;
  push_state(cc->cl, err == NATS_SLOW_CONSUMER ? ITEM_SLOW : ITEM_ERROR,
             cc->idx, err);
}

/* ---- The loop side ---------------------------------------------------- */

static const char *conn_name(int idx) {
  return idx ? "queue-group connection" : "connection";
}

static void handle(qrpci_cluster *cl, item *it) {
  switch (it->kind) {
  case ITEM_MSG: {
    const char *subj = natsMsg_GetSubject(it->msg);
    size_t sl = subj ? strlen(subj) : 0;
    const uint8_t *data = (const uint8_t *)natsMsg_GetData(it->msg);
    int len = natsMsg_GetDataLength(it->msg);
    /* Interest 0 is the retained stream's consumer. */
    const char *root = it->id ? cl->prefix : cl->rjs.root;
    size_t rl = it->id ? cl->prefix_len : cl->rjs.root_len;
    if (sl <= rl + 1 || memcmp(subj, root, rl) != 0 || subj[rl] != '.' ||
        len < 0) {
      qrpci_cluster_malformed(cl, "a subject outside the broker's prefix");
    } else {
      if (it->id)
        cl->st.received++;
      else
        cl->st.retained_received++;
      cl->deliver(cl->ctx, it->id, subj + rl + 1, sl - rl - 1,
                  data ? data : (const uint8_t *)"", (size_t)len);
    }
    natsMsg_Destroy(it->msg);
    break;
  }
  case ITEM_CONNECTED:
  case ITEM_RECONNECTED: {
    char url[URL_MAX + 1] = "";
    natsConnection_GetConnectedUrl(cl->nc[it->conn], url, sizeof(url));
    /* The URL nats.c reports may carry credentials: show up to '@'
     * never. */
    char *at = strchr(url, '@');
    if (at) memmove(url + 7, at + 1, strlen(at + 1) + 1);
    if (!cl->connected[it->conn]) {
      cl->connected[it->conn] = 1;
      if (it->kind == ITEM_RECONNECTED) cl->st.reconnects++;
      QRPCI_INFO("broker: cluster: %s %s NATS at %s", conn_name(it->conn),
                 it->kind == ITEM_RECONNECTED ? "back to" : "joined", url);
    }
    break;
  }
  case ITEM_DISCONNECTED:
    if (cl->connected[it->conn]) {
      cl->connected[it->conn] = 0;
      QRPCI_WARN("broker: cluster: %s to NATS lost; local delivery goes "
                 "on, reconnecting",
                 conn_name(it->conn));
    }
    break;
  case ITEM_SLOW:
    cl->st.dropped++;
    if (!cl->logged_slow++)
      QRPCI_WARN("broker: cluster: messages from NATS dropped (%s); "
                 "counted in the cluster statistics, logged once",
                 natsStatus_GetText(it->status));
    break;
  case ITEM_ERROR:
    QRPCI_WARN("broker: cluster: %s: %s", conn_name(it->conn),
               natsStatus_GetText(it->status));
    break;
  }
  free(it);
}

static void on_wake(evutil_socket_t fd, short what, void *arg) {
  qrpci_cluster *cl = arg;
  pthread_mutex_lock(&cl->mu);
  item *it = cl->head;
  cl->head = cl->tail = NULL;
  pthread_mutex_unlock(&cl->mu);
  while (it) {
    item *next = it->next;
    handle(cl, it);
    it = next;
  }
}

/* ---- Retained messages in JetStream ---------------------------------- */

static void on_rclosed(natsConnection *nc, void *closure) {
  qrpci_cluster *cl = closure;
  atomic_store(&cl->rjs.closed, 1);
}

/* Sleeps up to ms, in steps, unless asked to stop; returns 1 to stop. */
static int rjs_pause(retained_js *r, int ms) {
  for (int i = 0; i < ms / 50; i++) {
    if (atomic_load(&r->stop)) return 1;
    struct timespec ts = {0, 50 * 1000000};
    nanosleep(&ts, NULL);
  }
  return atomic_load(&r->stop);
}

static void *rjs_main(void *arg) {
  qrpci_cluster *cl = arg;
  retained_js *r = &cl->rjs;
  natsOptions *no = NULL;
  natsConnection *nc = NULL;
  natsStatus s = natsOptions_Create(&no);
  if (s == NATS_OK) s = natsOptions_SetServers(no, r->urls, r->nurls);
  if (s == NATS_OK) s = natsOptions_SetName(no, "qrpc-broker retained");
  if (s == NATS_OK && r->user)
    s = natsOptions_SetUserInfo(no, r->user, r->password ? r->password : "");
  if (s == NATS_OK && r->token) s = natsOptions_SetToken(no, r->token);
  if (s == NATS_OK) s = natsOptions_SetNoRandomize(no, true);
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(no, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(no, 250);
  if (s == NATS_OK) s = natsOptions_SetTimeout(no, 1000);
  if (s == NATS_OK)
    s = natsOptions_SetRetryOnFailedConnect(no, true, NULL, NULL);
  if (s == NATS_OK) s = natsOptions_SetClosedCB(no, on_rclosed, cl);
  if (s == NATS_OK) {
    s = natsConnection_Connect(&nc, no);
    if (s == NATS_NOT_YET_CONNECTED) s = NATS_OK;
  }
  natsOptions_Destroy(no);
  if (s != NATS_OK) {
    QRPCI_WARN("broker: cluster: retained messages stay on each node: no "
               "NATS connection for JetStream (%s)",
               natsStatus_GetText(s));
    return NULL;
  }
  pthread_mutex_lock(&cl->mu);
  r->nc = nc;
  pthread_mutex_unlock(&cl->mu);

  jsOptions jo;
  jsOptions_Init(&jo);
  jo.Wait = 2000;
  if ((s = natsConnection_JetStream(&r->js, nc, &jo)) != NATS_OK) return NULL;
  char subjects[PREFIX_MAX + 16];
  snprintf(subjects, sizeof(subjects), "%s.>", r->root);
  const char *subj[1] = {subjects};
  int logged = 0;
  for (;;) {
    jsStreamConfig sc;
    jsStreamConfig_Init(&sc);
    sc.Name = r->stream;
    sc.Subjects = subj;
    sc.SubjectsLen = 1;
    sc.MaxMsgsPerSubject = 1;
    jsErrCode jerr = 0;
    jsStreamInfo *si = NULL;
    s = js_AddStream(&si, r->js, &sc, NULL, &jerr);
    jsStreamInfo_Destroy(si);
    if (s == NATS_OK || jerr == JSStreamNameExistErr) {
      qrpci_cluster_sub *cs = calloc(1, sizeof(*cs));
      jsSubOptions so;
      jsSubOptions_Init(&so);
      so.Stream = r->stream;
      so.Ordered = true;
      so.Config.DeliverPolicy = js_DeliverLastPerSubject;
      s = cs ? js_Subscribe(&r->sub, r->js, subjects, on_msg, cs, NULL, &so,
                            &jerr)
             : NATS_NO_MEMORY;
      if (s == NATS_OK) {
        cs->cl = cl; /* id 0: the retained stream */
        atomic_fetch_add(&cl->live_subs, 1);
        if (natsSubscription_SetOnCompleteCB(r->sub, on_sub_complete, cs) !=
            NATS_OK)
          atomic_fetch_sub(&cl->live_subs, 1); /* cs is kept, as above */
        QRPCI_INFO("broker: cluster: retained messages shared through "
                   "JetStream stream %s",
                   r->stream);
        return NULL;
      }
      free(cs);
    }
    if (!logged++)
      QRPCI_WARN("broker: cluster: retained messages stay on each node until "
                 "JetStream answers (%s%s); retrying",
                 natsStatus_GetText(s),
                 jerr == JSNotEnabledErr ? ": JetStream is not enabled" : "");
    if (rjs_pause(r, 500)) return NULL;
  }
}

/* Starts the JetStream side (the thread connects and retries on its own).
 * Returns 0 or QRPC_ENOMEM. */
static int rjs_start(qrpci_cluster *cl, const qrpc_broker_opts *o,
                     const char *urls) {
  retained_js *r = &cl->rjs;
  atomic_init(&r->stop, 0);
  atomic_init(&r->closed, 0);
  r->root_len =
      (size_t)snprintf(r->root, sizeof(r->root), "%s-retained", cl->prefix);
  /* A stream's name allows no '.', '*', '>' or space. */
  snprintf(r->stream, sizeof(r->stream), "%s_RETAINED", cl->prefix);
  for (char *p = r->stream; *p; p++)
    if (*p == '.' || *p == '*' || *p == '>') *p = '_';
  snprintf(r->urlbuf, sizeof(r->urlbuf), "%s", urls);
  for (char *t = r->urlbuf, *save = NULL; r->nurls < URLS_MAX; t = NULL) {
    char *u = strtok_r(t, ",", &save);
    if (!u) break;
    r->urls[r->nurls++] = u;
  }
  if ((o->cluster_user && !(r->user = strdup(o->cluster_user))) ||
      (o->cluster_password && !(r->password = strdup(o->cluster_password))) ||
      (o->cluster_token && !(r->token = strdup(o->cluster_token))))
    return QRPC_ENOMEM;
  if (pthread_create(&r->thread, NULL, rjs_main, cl) != 0) return QRPC_ENOMEM;
  r->thread_started = 1;
  return 0;
}

/* Stops the thread and closes what it opened; the caller waits for
 * rjs.closed and live_subs. */
static void rjs_stop(qrpci_cluster *cl) {
  retained_js *r = &cl->rjs;
  atomic_store(&r->stop, 1);
  if (r->thread_started) pthread_join(r->thread, NULL);
  r->thread_started = 0;
  if (r->sub) {
    natsSubscription_Unsubscribe(r->sub);
    natsSubscription_Destroy(r->sub);
    r->sub = NULL;
  }
  if (r->js) jsCtx_Destroy(r->js);
  r->js = NULL;
  if (r->nc) natsConnection_Close(r->nc);
}

void qrpci_cluster_retain(qrpci_cluster *cl, const char *topic,
                          size_t topic_len, const uint8_t *payload,
                          size_t len) {
  char subj[PREFIX_MAX + 10 + 1 + 256 + 1];
  pthread_mutex_lock(&cl->mu);
  natsConnection *nc = cl->rjs.nc;
  pthread_mutex_unlock(&cl->mu);
  if (!nc || cl->rjs.root_len + 1 + topic_len + 1 > sizeof(subj) ||
      len > INT32_MAX)
    return;
  memcpy(subj, cl->rjs.root, cl->rjs.root_len);
  subj[cl->rjs.root_len] = '.';
  memcpy(subj + cl->rjs.root_len + 1, topic, topic_len);
  subj[cl->rjs.root_len + 1 + topic_len] = '\0';
  if (natsConnection_Publish(nc, subj, payload, (int)len) != NATS_OK)
    cl->st.publish_failed++;
}

/* ---- Setting up ------------------------------------------------------- */

static int set_err(char *err, size_t errlen, const char *what, natsStatus s) {
  if (err && errlen)
    snprintf(err, errlen, "cluster: %s: %s", what, natsStatus_GetText(s));
  return s == NATS_NO_MEMORY ? QRPC_ENOMEM : QRPC_EINVAL;
}

static int connect_one(qrpci_cluster *cl, const qrpc_broker_opts *o,
                       conn_ctx *cc, const char **urls, int nurls, char *err,
                       size_t errlen) {
  natsOptions *no = NULL;
  natsStatus s = natsOptions_Create(&no);
  int idx = cc->idx;
  if (s == NATS_OK) s = natsOptions_SetServers(no, urls, nurls);
  if (s == NATS_OK)
    s = natsOptions_SetName(no, idx ? "qrpc-broker groups" : "qrpc-broker");
  if (s == NATS_OK && idx == 0) s = natsOptions_SetNoEcho(no, true);
  if (s == NATS_OK && o->cluster_user)
    s = natsOptions_SetUserInfo(no, o->cluster_user,
                                o->cluster_password ? o->cluster_password : "");
  if (s == NATS_OK && o->cluster_token)
    s = natsOptions_SetToken(no, o->cluster_token);
  if (s == NATS_OK)
    s = natsOptions_SetEventLoop(no, qrpc_loop_base(cl->loop),
                                 natsLibevent_Attach, natsLibevent_Read,
                                 natsLibevent_Write, natsLibevent_Detach);
  /* The first URL first: a node is placed on a server by its list. */
  if (s == NATS_OK) s = natsOptions_SetNoRandomize(no, true);
  if (s == NATS_OK) s = natsOptions_UseGlobalMessageDelivery(no, true);
  if (s == NATS_OK) s = natsOptions_SetMaxReconnect(no, -1);
  if (s == NATS_OK) s = natsOptions_SetReconnectWait(no, 250);
  if (s == NATS_OK) s = natsOptions_SetTimeout(no, 1000);
  if (s == NATS_OK)
    s = natsOptions_SetReconnectBufSize(no, o->cluster_buffer_bytes);
  if (s == NATS_OK)
    s = natsOptions_SetRetryOnFailedConnect(no, true, on_connected, cc);
  if (s == NATS_OK) s = natsOptions_SetDisconnectedCB(no, on_disconnected, cc);
  if (s == NATS_OK) s = natsOptions_SetReconnectedCB(no, on_reconnected, cc);
  if (s == NATS_OK) s = natsOptions_SetClosedCB(no, on_closed, cc);
  if (s == NATS_OK) s = natsOptions_SetErrorHandler(no, on_error, cc);
  if (s != NATS_OK) {
    natsOptions_Destroy(no);
    return set_err(err, errlen, "options", s);
  }
  s = natsConnection_Connect(&cl->nc[idx], no);
  natsOptions_Destroy(no);
  if (s == NATS_OK) {
    /* Connected now: no connected callback follows. */
    push_state(cl, ITEM_CONNECTED, idx, NATS_OK);
  } else if (s == NATS_NOT_YET_CONNECTED) {
    if (idx == 0)
      QRPCI_WARN("broker: cluster: no NATS server answers yet; serving "
                 "alone and retrying");
  } else {
    cl->nc[idx] = NULL;
    atomic_store(&cl->closed[idx], 1);
    return set_err(err, errlen, "connect", s);
  }
  return 0;
}

int qrpci_cluster_new(qrpc_loop *loop, const qrpc_broker_opts *o,
                      qrpci_cluster_deliver_fn deliver, void *ctx,
                      qrpci_cluster **out, char *err, size_t errlen) {
  int rv = qrpci_cluster_check_urls(o->cluster, err, errlen);
  if (rv != 0) return rv;
  const char *prefix = o->cluster_prefix ? o->cluster_prefix : "qrpc";
  size_t pl = strlen(prefix);
  if (pl == 0 || pl > PREFIX_MAX || qrpc_broker_topic_problem(prefix) != NULL ||
      prefix[0] == '$' || prefix[0] == '_') {
    if (err && errlen)
      snprintf(err, errlen,
               "cluster prefix: 1 to %d bytes, a valid topic not starting "
               "with '$' or '_'",
               PREFIX_MAX);
    return QRPC_EINVAL;
  }
  if (atomic_exchange(&adapter_ready, 1) == 0) natsLibevent_Init();
  qrpci_cluster *cl = calloc(1, sizeof(*cl) + 2 * sizeof(conn_ctx));
  if (!cl) return QRPC_ENOMEM;
  conn_ctx *cc = (conn_ctx *)(cl + 1);
  cl->loop = loop;
  cl->deliver = deliver;
  cl->ctx = ctx;
  memcpy(cl->prefix, prefix, pl + 1);
  cl->prefix_len = pl;
  cl->st.enabled = 1;
  atomic_init(&cl->live_subs, 0);
  atomic_init(&cl->closed[0], 0);
  atomic_init(&cl->closed[1], 0);
  pthread_mutex_init(&cl->mu, NULL);
  cl->wake = event_new(qrpc_loop_base(loop), -1, 0, on_wake, cl);
  if (!cl->wake) {
    pthread_mutex_destroy(&cl->mu);
    free(cl);
    return QRPC_ENOMEM;
  }
  /* The list, split at the commas, for natsOptions_SetServers(). */
  char buf[URLS_MAX * (URL_MAX + 1)];
  snprintf(buf, sizeof(buf), "%s", o->cluster);
  const char *urls[URLS_MAX];
  int n = 0;
  for (char *s = buf, *save = NULL; n < URLS_MAX;) {
    char *t = strtok_r(s, ",", &save);
    if (!t) break;
    urls[n++] = t;
    s = NULL;
  }
  for (int i = 0; i < 2; i++) {
    cc[i].cl = cl;
    cc[i].idx = i;
  }
  rv = connect_one(cl, o, &cc[0], urls, n, err, errlen);
  if (rv == 0) rv = connect_one(cl, o, &cc[1], urls, n, err, errlen);
  if (rv == 0) rv = rjs_start(cl, o, o->cluster);
  if (rv != 0) {
    qrpci_cluster_free(cl);
    return rv;
  }
  QRPCI_INFO("broker: cluster: NATS servers %s, subjects %s.TOPIC", o->cluster,
             cl->prefix);
  *out = cl;
  return 0;
}

/* ---- Publishing and interest ------------------------------------------ */

/* Writes PREFIX.TEXT into out (cap bytes); 0 or -1 when it does not fit. */
static int subject(const qrpci_cluster *cl, const char *t, size_t n, char *out,
                   size_t cap) {
  if (cl->prefix_len + 1 + n + 1 > cap) return -1;
  memcpy(out, cl->prefix, cl->prefix_len);
  out[cl->prefix_len] = '.';
  memcpy(out + cl->prefix_len + 1, t, n);
  out[cl->prefix_len + 1 + n] = '\0';
  return 0;
}

int qrpci_cluster_publish(qrpci_cluster *cl, const char *topic,
                          size_t topic_len, const uint8_t *payload,
                          size_t len) {
  char subj[PREFIX_MAX + 1 + 256 + 1];
  if (subject(cl, topic, topic_len, subj, sizeof(subj)) != 0)
    return QRPC_EINVAL;
  natsStatus s = len > INT32_MAX ? NATS_MAX_PAYLOAD : NATS_OK;
  if (s == NATS_OK)
    s = natsConnection_Publish(cl->nc[0], subj, payload, (int)len);
  if (s == NATS_OK) {
    cl->st.published++;
    return 0;
  }
  cl->st.publish_failed++;
  if (!cl->logged_pub_fail++)
    QRPCI_WARN("broker: cluster: a publish did not reach NATS (%s): it was "
               "delivered on this node only; counted, logged once",
               natsStatus_GetText(s));
  return QRPC_EAGAIN;
}

int qrpci_cluster_fits(qrpci_cluster *cl, size_t topic_len, size_t len) {
  int64_t max = natsConnection_GetMaxPayload(cl->nc[0]);
  return max <= 0 || (uint64_t)len <= (uint64_t)max;
}

qrpci_cluster_sub *qrpci_cluster_subscribe(qrpci_cluster *cl,
                                           const char *pattern,
                                           size_t pattern_len,
                                           const char *group, size_t group_len,
                                           uint64_t id) {
  char subj[PREFIX_MAX + 1 + 256 + 1], queue[QRPCI_GROUP_MAX + 18];
  qrpci_cluster_sub *cs = calloc(1, sizeof(*cs));
  if (!cs) return NULL;
  cs->cl = cl;
  cs->id = id;
  natsStatus s = NATS_INVALID_SUBJECT;
  if (subject(cl, pattern, pattern_len, subj, sizeof(subj)) == 0 &&
      group_len <= QRPCI_GROUP_MAX) {
    if (group_len && !cl->nc[1]) {
      s = NATS_INVALID_ARG;
    } else if (group_len) {
      snprintf(queue, sizeof(queue), "%.*s-%016llx", (int)group_len, group,
               (unsigned long long)qrpci_topic_hash(pattern, pattern_len));
      s = natsConnection_QueueSubscribe(&cs->ns, cl->nc[1], subj, queue, on_msg,
                                        cs);
    } else {
      s = natsConnection_Subscribe(&cs->ns, cl->nc[0], subj, on_msg, cs);
    }
  }
  if (s == NATS_OK) {
    /* Messages queued on this node beyond these are dropped by nats.c and
     * counted (ITEM_SLOW): the loop takes them one hand-off at a time. */
    natsSubscription_SetPendingLimits(cs->ns, 65536, 64 * 1024 * 1024);
    atomic_fetch_add(&cl->live_subs, 1);
    s = natsSubscription_SetOnCompleteCB(cs->ns, on_sub_complete, cs);
    if (s != NATS_OK) {
      /* Without it the closure cannot be freed safely: keep it. */
      atomic_fetch_sub(&cl->live_subs, 1);
    }
    cl->st.interests++;
    return cs;
  }
  free(cs);
  cl->st.subscribe_failed++;
  if (!cl->logged_sub_fail++)
    QRPCI_WARN("broker: cluster: a subscription could not be opened on NATS "
               "(%s): its subscribers get this node's messages only; "
               "counted, logged once",
               natsStatus_GetText(s));
  return NULL;
}

void qrpci_cluster_unsubscribe(qrpci_cluster *cl, qrpci_cluster_sub *cs) {
  if (!cs) return;
  cl->st.interests--;
  natsSubscription *ns = cs->ns;
  /* cs belongs to nats.c's completion callback from here on. */
  natsSubscription_Unsubscribe(ns);
  natsSubscription_Destroy(ns);
}

void qrpci_cluster_malformed(qrpci_cluster *cl, const char *why) {
  cl->st.malformed++;
  if (!cl->logged_malformed++)
    QRPCI_WARN("broker: cluster: a message from NATS dropped: %s; counted "
               "in the cluster statistics, logged once",
               why);
}

void qrpci_cluster_get_stats(qrpci_cluster *cl, qrpc_broker_cluster_stats *st) {
  *st = cl->st;
  st->connected = cl->connected[0];
}

void qrpci_cluster_free(qrpci_cluster *cl) {
  if (!cl) return;
  rjs_stop(cl);
  for (int i = 0; i < 2; i++)
    if (cl->nc[i]) natsConnection_Close(cl->nc[i]);
  /* nats.c's threads run their last callbacks (closed, completion of every
   * subscription) on their own; wait for them, at most 2 s. */
  for (int ms = 0; ms < 2000; ms++) {
    if (atomic_load(&cl->live_subs) == 0 &&
        (!cl->nc[0] || atomic_load(&cl->closed[0])) &&
        (!cl->nc[1] || atomic_load(&cl->closed[1])) &&
        (!cl->rjs.nc || atomic_load(&cl->rjs.closed)))
      break;
    struct timespec ts = {0, 1000000};
    nanosleep(&ts, NULL);
  }
  int done = atomic_load(&cl->live_subs) == 0 &&
             (!cl->nc[0] || atomic_load(&cl->closed[0])) &&
             (!cl->nc[1] || atomic_load(&cl->closed[1])) &&
             (!cl->rjs.nc || atomic_load(&cl->rjs.closed));
  for (int i = 0; i < 2; i++)
    if (cl->nc[i]) natsConnection_Destroy(cl->nc[i]);
  if (cl->rjs.nc) natsConnection_Destroy(cl->rjs.nc);
  free(cl->rjs.user);
  if (cl->rjs.password)
    explicit_bzero(cl->rjs.password, strlen(cl->rjs.password));
  free(cl->rjs.password);
  if (cl->rjs.token) explicit_bzero(cl->rjs.token, strlen(cl->rjs.token));
  free(cl->rjs.token);
  if (!done) {
    /* A callback may still come: leave what it touches allocated. */
    QRPCI_WARN("broker: cluster: nats.c did not finish closing in 2 s");
    return;
  }
  item *it = cl->head;
  while (it) {
    item *next = it->next;
    if (it->kind == ITEM_MSG) natsMsg_Destroy(it->msg);
    free(it);
    it = next;
  }
  event_free(cl->wake);
  pthread_mutex_destroy(&cl->mu);
  free(cl);
}

#endif
