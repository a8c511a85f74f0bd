/*
 * The broker's client library (include/qrpc/broker.h): the generated
 * Broker stubs on a qrpc_client, with Hello first on every connection,
 * publishes held until it is answered, and subscriptions renewed after
 * every reconnection.
 *
 * Publishes and Hello travel on the client's single unary stream
 * (rpc.unary_streams = 1), so the broker sees them in the order of the
 * calls. A realtime subscription's datagram channel is its id on the
 * current connection; the client remembers which subscription owns each
 * channel, since an old call may end after a new one took its id.
 */
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "qrpc/broker.h"
#include "qrpc/dgram.h"
#include "qrpc/error.h"

#include "broker/topic.h"
#include "qrpc/broker.qrpc.h"
#include "quic/tls.h"
#include "util/clock.h"
#include "util/list.h"
#include "util/log.h"
#include "util/pbwire.h"
#include "util/u64map.h"

struct qrpc_broker_sub {
  qrpci_list node;
  qrpc_broker_client *bc;
  qrpc_call *call; /* the current Subscribe call, or NULL */
  uint64_t id;     /* on the current connection; 0 until confirmed */
  qrpc_broker_sub_opts opts;
  qrpc_broker_sub_callbacks cbs;
  void *user_data;
  int dead;   /* unsubscribed: no more callbacks; freed when call ends */
  int in_end; /* inside on_end, which frees it afterwards */
  char *group; /* opts.group's copy, inside the allocation, or NULL */
  char pattern[];
};

typedef struct held {
  qrpci_list node;
  int flags;
  qrpc_broker_publish_fn done;
  void *user_data;
  size_t len;
  uint8_t *payload;
  char topic[];
} held;

/* Failover: with several broker addresses the client holds one
 * connection, to addrs[cur]. When an attempt fails or the connection is
 * lost, switch_ev frees that qrpc_client (its calls end as on a lost
 * connection) and starts one for the next address, at once while the
 * failures since the last ready connection are fewer than the addresses,
 * then after the client's own backoff. */
struct qrpc_broker_client {
  qrpc_loop *loop;
  qrpc_client *cli;
  qrpc_tls_config *tls;
  qrpc_broker_client_opts opts;
  char **addrs;
  size_t naddrs, cur;
  struct event *switch_ev;
  uint64_t fails; /* failed attempts since the last ready connection */
  int switching;  /* inside the switch: the old client's calls end */
  char *token;
  char *name;
  int ready;
  int hello_sent; /* on the current connection */
  int freeing;
  uint64_t max_payload; /* from Hello; 0 while unknown */
  qrpci_list subs;
  qrpci_list held;
  size_t nheld;
  qrpci_u64map channels; /* realtime channel -> owning subscription */
};

typedef struct pub_ctx {
  qrpc_broker_client *bc;
  qrpc_broker_publish_fn done;
  void *user_data;
} pub_ctx;

typedef struct stats_ctx {
  qrpc_broker_client *bc;
  qrpc_broker_stats_fn fn;
  void *user_data;
} stats_ctx;

void qrpc_broker_client_opts_default(qrpc_broker_client_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  qrpc_client_opts_default(&o->client);
  o->max_pending = 1024;
}

void qrpc_broker_sub_opts_default(qrpc_broker_sub_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
  o->mode = QRPC_BROKER_RELIABLE;
  o->policy = QRPC_BROKER_POLICY_DEFAULT;
}

/* ---- Publishing ------------------------------------------------------- */

static void pub_done(qrpc_call *call, const Qrpc__Broker__PublishReply *rep,
                     const qrpc_result *res, void *ud) {
  pub_ctx *p = ud;
  char detail[256] = "";
  if (res->detail_len) {
    size_t n = res->detail_len < sizeof(detail) - 1 ? res->detail_len
                                                    : sizeof(detail) - 1;
    memcpy(detail, res->detail, n);
    detail[n] = '\0';
  }
  p->done(p->bc, res->status, rep ? rep->subscribers : 0,
          res->detail_len ? detail : NULL, p->user_data);
  free(p);
}

static int send_publish(qrpc_broker_client *bc, const char *topic,
                        const void *payload, size_t len, int flags,
                        qrpc_broker_publish_fn done, void *ud) {
  Qrpc__Broker__PublishRequest r = QRPC__BROKER__PUBLISH_REQUEST__INIT;
  r.topic = (char *)topic;
  r.payload.data = (uint8_t *)payload;
  r.payload.len = len;
  r.retain = (flags & QRPC_BROKER_RETAIN) != 0;
  if (!done) return qrpc_broker_Broker_PublishOneway(bc->cli, &r);
  pub_ctx *p = malloc(sizeof(*p));
  if (!p) return QRPC_ENOMEM;
  *p = (pub_ctx){bc, done, ud};
  int rv = qrpc_broker_Broker_Publish(bc->cli, &r, NULL, pub_done, p, NULL);
  if (rv != 0) free(p);
  return rv;
}

static void held_fail(qrpc_broker_client *bc, int status, const char *why) {
  while (!qrpci_list_empty(&bc->held)) {
    held *h = QRPCI_CONTAINER_OF(bc->held.next, held, node);
    qrpci_list_remove(&h->node);
    bc->nheld--;
    if (h->done) h->done(bc, status, 0, why, h->user_data);
    free(h);
  }
}

static void held_flush(qrpc_broker_client *bc) {
  while (bc->ready && !qrpci_list_empty(&bc->held)) {
    held *h = QRPCI_CONTAINER_OF(bc->held.next, held, node);
    qrpci_list_remove(&h->node);
    bc->nheld--;
    int rv = send_publish(bc, h->topic, h->payload, h->len, h->flags, h->done,
                          h->user_data);
    if (rv != 0 && h->done)
      h->done(bc, QRPC_STATUS_UNAVAILABLE, 0, qrpc_strerror(rv), h->user_data);
    free(h);
  }
}

const char *qrpc_broker_topic_problem(const char *topic) {
  return qrpci_topic_reason(topic ? topic : "", topic ? strlen(topic) : 0, 0);
}

const char *qrpc_broker_pattern_problem(const char *pattern) {
  return qrpci_topic_reason(pattern ? pattern : "",
                            pattern ? strlen(pattern) : 0, 1);
}

const char *qrpc_broker_group_problem(const char *group) {
  static const char prefix[] = "invalid queue group: ";
  const char *p = qrpci_group_problem(
      group ? group : "", group ? strnlen(group, QRPCI_GROUP_MAX + 1) : 0);
  return p ? p + sizeof(prefix) - 1 : NULL;
}

int qrpc_broker_publish(qrpc_broker_client *bc, const char *topic,
                        const void *payload, size_t len, int flags,
                        qrpc_broker_publish_fn done, void *user_data) {
  if (!bc || !topic || (!payload && len) || (flags & ~QRPC_BROKER_RETAIN))
    return QRPC_EINVAL;
  size_t tlen = strlen(topic);
  if (qrpci_topic_check(topic, tlen) != 0) return QRPC_EINVAL;
  if (bc->max_payload && len > bc->max_payload) return QRPC_EMSGSIZE;
  if (bc->ready && qrpci_list_empty(&bc->held))
    return send_publish(bc, topic, payload, len, flags, done, user_data);
  if (bc->nheld >= bc->opts.max_pending) return QRPC_ENOBUFS;
  held *h = malloc(sizeof(*h) + tlen + 1 + len);
  if (!h) return QRPC_ENOMEM;
  h->flags = flags;
  h->done = done;
  h->user_data = user_data;
  h->len = len;
  memcpy(h->topic, topic, tlen + 1);
  h->payload = (uint8_t *)h->topic + tlen + 1;
  if (len) memcpy(h->payload, payload, len);
  qrpci_list_push_back(&bc->held, &h->node);
  bc->nheld++;
  return 0;
}

/* ---- Subscriptions ---------------------------------------------------- */

static void channel_release(qrpc_broker_sub *s) {
  qrpc_broker_client *bc = s->bc;
  if (!s->id || s->opts.mode != QRPC_BROKER_REALTIME ||
      qrpci_u64map_get(&bc->channels, s->id) != s)
    return;
  qrpci_u64map_del(&bc->channels, s->id);
  if (!bc->freeing && !bc->switching)
    qrpc_client_register_dgram(bc->cli, (uint32_t)s->id, NULL, NULL, NULL);
}

static void sub_destroy(qrpc_broker_sub *s) {
  channel_release(s);
  qrpci_list_remove(&s->node);
  free(s);
}

/* A Delivery of the IDL, read in place: every message of every
 * subscription passes here, so it is parsed by hand instead of unpacked
 * into allocated memory. The fields point into the received bytes. */
typedef struct delivery {
  uint64_t subscription_id;
  uint64_t dropped;
  qrpc_broker_msg msg;
} delivery;

/* Reads one field's value into d; returns the bytes it took after the key,
 * or 0 when malformed. */
static size_t delivery_field(uint64_t key, const uint8_t *p, size_t n,
                             delivery *d) {
  uint64_t v;
  size_t k;
  switch (key & 7) {
  case QRPCI_PB_VARINT:
    if (!(k = qrpci_pb_varint(p, n, &v))) return 0;
    if (key >> 3 == 1) d->subscription_id = v;
    if (key >> 3 == 4) d->msg.retained = v != 0;
    if (key >> 3 == 5) d->dropped = v;
    return k;
  case QRPCI_PB_LEN:
    if (!(k = qrpci_pb_varint(p, n, &v)) || v > n - k) return 0;
    if (key >> 3 == 2) {
      d->msg.topic = (const char *)p + k;
      d->msg.topic_len = (size_t)v;
    } else if (key >> 3 == 3) {
      d->msg.payload = p + k;
      d->msg.len = (size_t)v;
    }
    return k + (size_t)v;
  case QRPCI_PB_I64: return n >= 8 ? 8 : 0;
  case QRPCI_PB_I32: return n >= 4 ? 4 : 0;
  default: return 0;
  }
}

/* Returns 0, or -1 when the bytes are not a Delivery. Unknown fields are
 * skipped, as protobuf requires. */
static int delivery_parse(const uint8_t *p, size_t n, delivery *d) {
  memset(d, 0, sizeof(*d));
  d->msg.topic = "";
  size_t i = 0;
  while (i < n) {
    uint64_t key;
    size_t k = qrpci_pb_varint(p + i, n - i, &key);
    size_t f = k ? delivery_field(key, p + i + k, n - i - k, d) : 0;
    if (!f) return -1;
    i += k + f;
  }
  return 0;
}

static void sub_on_dgram(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                         const uint8_t *payload, size_t len, void *ud) {
  qrpc_broker_sub *s = ud;
  if (s->dead) return;
  delivery d;
  if (delivery_parse(payload, len, &d) != 0) {
    qrpc_peer_dgram_count_undecodable(peer, channel);
    return;
  }
  s->cbs.on_message(s, &d.msg, s->user_data);
}

static void confirm(qrpc_broker_sub *s, uint64_t id) {
  qrpc_broker_client *bc = s->bc;
  s->id = id;
  if (s->opts.mode == QRPC_BROKER_REALTIME && id <= UINT32_MAX) {
    qrpc_dgram_opts o;
    qrpc_dgram_opts_default(&o);
    o.latest_only = s->opts.latest_only;
    if (qrpci_u64map_put(&bc->channels, id, s) == 0)
      qrpc_client_register_dgram(bc->cli, (uint32_t)id, &o, sub_on_dgram, s);
  }
  if (s->cbs.on_subscribed) s->cbs.on_subscribed(s, id, s->user_data);
}

static void sub_on_item(qrpc_call *call, const uint8_t *data, size_t len,
                        void *ud) {
  qrpc_broker_sub *s = ud;
  delivery d;
  if (s->dead) return;
  if (delivery_parse(data, len, &d) != 0) {
    QRPCI_WARN("broker client: an undecodable delivery on '%s' ends the "
               "subscription's call; it is renewed on the next connection",
               s->pattern);
    qrpc_call_cancel(call);
    return;
  }
  if (!s->id) {
    if (d.subscription_id) confirm(s, d.subscription_id);
  } else if (d.dropped) {
    if (s->cbs.on_dropped) s->cbs.on_dropped(s, d.dropped, s->user_data);
  } else {
    s->cbs.on_message(s, &d.msg, s->user_data);
  }
}

static void sub_on_done(qrpc_call *call, const qrpc_result *res, void *ud) {
  qrpc_broker_sub *s = ud;
  qrpc_broker_client *bc = s->bc;
  s->call = NULL;
  channel_release(s);
  s->id = 0;
  if (s->dead || bc->freeing) {
    sub_destroy(s);
    return;
  }
  /* Decided here: the connection went away; renewed on the next one. */
  if (res->local) return;
  char detail[256] = "";
  size_t n = res->detail_len < sizeof(detail) - 1 ? res->detail_len
                                                  : sizeof(detail) - 1;
  if (n) memcpy(detail, res->detail, n);
  detail[n] = '\0';
  if (s->cbs.on_end) {
    s->in_end = 1;
    s->cbs.on_end(s, res->status, detail, s->user_data);
  }
  sub_destroy(s);
}

static const qrpc_call_callbacks sub_callbacks = {
    .on_item = sub_on_item,
    .on_done = sub_on_done,
};

static size_t pack_subscribe(const void *msg, uint8_t *out) {
  return qrpc__broker__subscribe_request__pack(msg, out);
}

static void sub_start(qrpc_broker_sub *s) {
  Qrpc__Broker__SubscribeRequest r = QRPC__BROKER__SUBSCRIBE_REQUEST__INIT;
  r.pattern = s->pattern;
  r.mode = (Qrpc__Broker__DeliveryMode)s->opts.mode;
  r.policy = (Qrpc__Broker__SlowConsumerPolicy)s->opts.policy;
  r.queue_max_messages = s->opts.queue_messages;
  r.queue_max_bytes = s->opts.queue_bytes;
  r.skip_retained = s->opts.skip_retained != 0;
  if (s->group) r.group = s->group;
  qrpc_msg m = {.msg = &r,
                .size = qrpc__broker__subscribe_request__get_packed_size(&r),
                .pack = pack_subscribe};
  int rv = qrpc_client_stream_msg(
      s->bc->cli, qrpc_broker_Broker_Subscribe_METHOD_ID,
      QRPC_SHAPE_SERVER_STREAM, &m, NULL, &sub_callbacks, s, &s->call);
  if (rv != 0) {
    s->call = NULL;
    QRPCI_WARN("broker client: cannot subscribe to '%s' now (%s); again "
               "after the next connection",
               s->pattern, qrpc_strerror(rv));
  }
}

int qrpc_broker_subscribe(qrpc_broker_client *bc, const char *pattern,
                          const qrpc_broker_sub_opts *opts,
                          const qrpc_broker_sub_callbacks *cbs, void *user_data,
                          qrpc_broker_sub **out) {
  const size_t before_group = offsetof(qrpc_broker_sub_opts, group);
  if (!bc || !pattern || !cbs || !cbs->on_message) return QRPC_EINVAL;
  if (opts && ((opts->size != sizeof(*opts) && opts->size != before_group) ||
               (unsigned)opts->mode > QRPC_BROKER_REALTIME ||
               (unsigned)opts->policy > QRPC_BROKER_CONFLATE))
    return QRPC_EINVAL;
  size_t plen = strlen(pattern), glen = 0;
  if (qrpci_pattern_check(pattern, plen) != 0) return QRPC_EINVAL;
  const char *group = opts && opts->size == sizeof(*opts) ? opts->group : NULL;
  if (group &&
      qrpci_group_problem(group, glen = strnlen(group, QRPCI_GROUP_MAX + 1)))
    return QRPC_EINVAL;
  qrpc_broker_sub *s =
      calloc(1, sizeof(*s) + plen + 1 + (group ? glen + 1 : 0));
  if (!s) return QRPC_ENOMEM;
  s->bc = bc;
  qrpc_broker_sub_opts_default(&s->opts);
  if (opts) memcpy(&s->opts, opts, opts->size);
  s->opts.size = sizeof(s->opts);
  s->cbs = *cbs;
  s->user_data = user_data;
  memcpy(s->pattern, pattern, plen + 1);
  if (group) {
    s->group = s->pattern + plen + 1;
    memcpy(s->group, group, glen + 1);
  }
  s->opts.group = s->group;
  qrpci_list_push_back(&bc->subs, &s->node);
  if (bc->ready) sub_start(s);
  if (out) *out = s;
  return 0;
}

void qrpc_broker_unsubscribe(qrpc_broker_sub *s) {
  if (!s || s->dead) return;
  s->dead = 1;
  channel_release(s);
  if (s->in_end) return; /* freed when on_end returns */
  if (s->call)
    qrpc_call_cancel(s->call); /* freed in sub_on_done */
  else
    sub_destroy(s);
}

uint64_t qrpc_broker_sub_id(qrpc_broker_sub *s) { return s ? s->id : 0; }

/* ---- Connections ------------------------------------------------------ */

static void hello_done(qrpc_call *call, const Qrpc__Broker__HelloReply *rep,
                       const qrpc_result *res, void *ud) {
  qrpc_broker_client *bc = ud;
  if (bc->freeing || (res->local && res->status != QRPC_STATUS_OK)) return;
  if (res->status != QRPC_STATUS_OK) {
    char detail[256];
    size_t n = res->detail_len < sizeof(detail) - 1 ? res->detail_len
                                                    : sizeof(detail) - 1;
    memcpy(detail, res->detail ? res->detail : "", n);
    detail[n] = '\0';
    QRPCI_ERROR("broker client: the broker refused the token: %s", detail);
    held_fail(bc, res->status, detail);
    if (bc->opts.on_ready)
      bc->opts.on_ready(bc, res->status, detail, bc->opts.user_data);
    return;
  }
  bc->ready = 1;
  bc->fails = 0;
  bc->max_payload = rep->max_payload;
  for (qrpci_list *n = bc->subs.next; n != &bc->subs; n = n->next) {
    qrpc_broker_sub *s = QRPCI_CONTAINER_OF(n, qrpc_broker_sub, node);
    if (!s->dead && !s->call) sub_start(s);
  }
  held_flush(bc);
  if (bc->opts.on_ready) bc->opts.on_ready(bc, 0, NULL, bc->opts.user_data);
}

static void on_connect(qrpc_client *cli, qrpc_peer *peer, void *ud) {
  qrpc_broker_client *bc = ud;
  Qrpc__Broker__HelloRequest r = QRPC__BROKER__HELLO_REQUEST__INIT;
  r.token = bc->token ? bc->token : (char *)"";
  r.client_name = bc->name ? bc->name : (char *)"";
  int rv = qrpc_broker_Broker_Hello(cli, &r, NULL, hello_done, bc, NULL);
  if (rv != 0) {
    QRPCI_ERROR("broker client: cannot send Hello: %s", qrpc_strerror(rv));
    return;
  }
  bc->hello_sent = 1;
}

static void on_disconnect(qrpc_client *cli, const qrpc_close_info *info,
                          void *ud) {
  qrpc_broker_client *bc = ud;
  int was_ready = bc->ready;
  bc->ready = 0;
  bc->hello_sent = 0;
  if (was_ready) {
    if (bc->opts.on_disconnect)
      bc->opts.on_disconnect(bc, info, bc->opts.user_data);
  } else {
    QRPCI_INFO("broker client: a connection closed before it was ready: "
               "%s; retrying",
               info->reason && info->reason[0] ? info->reason
               : info->error                   ? qrpc_strerror(info->error)
                                               : "closed");
  }
}

static void on_state(qrpc_client *cli, const qrpc_client_state_info *info,
                     void *ud) {
  qrpc_broker_client *bc = ud;
  if (bc->opts.client.on_state)
    bc->opts.client.on_state(cli, info, bc->opts.user_data);
  if (bc->naddrs < 2 || info->state != QRPC_CLIENT_FAILED || bc->freeing ||
      event_pending(bc->switch_ev, EV_TIMEOUT, NULL))
    return;
  /* Another node: at once for a first pass over the list, then after the
   * backoff the client would have waited for this node. */
  uint64_t ms = ++bc->fails < bc->naddrs ? 0 : info->retry_in_ms;
  struct timeval tv = qrpci_ns_to_tv(ms * 1000000u);
  evtimer_add(bc->switch_ev, &tv);
}

static char *dup_or_null(const char *s) { return s && *s ? strdup(s) : NULL; }

/* Starts the qrpc client of addrs[cur]. */
static int client_start(qrpc_broker_client *bc) {
  qrpc_client_opts co = bc->opts.client;
  co.on_connect = on_connect;
  co.on_disconnect = on_disconnect;
  co.on_state = bc->opts.client.on_state || bc->naddrs > 1 ? on_state : NULL;
  co.user_data = bc;
  co.rpc.unary_streams = 1;
  return qrpc_client_new(bc->loop, bc->addrs[bc->cur], bc->tls, &co, &bc->cli);
}

static void on_switch(evutil_socket_t fd, short what, void *arg) {
  qrpc_broker_client *bc = arg;
  bc->switching = 1;
  bc->ready = 0;
  bc->hello_sent = 0;
  qrpc_client_free(bc->cli); /* subscriptions' calls end, kept for renewal */
  bc->cli = NULL;
  bc->switching = 0;
  bc->cur = (bc->cur + 1) % bc->naddrs;
  QRPCI_INFO("broker client: trying the next broker, %s", bc->addrs[bc->cur]);
  int rv = client_start(bc);
  if (rv != 0) {
    /* Only out of memory or a bad address fails here: try the next one
     * after the longest backoff. */
    QRPCI_WARN("broker client: cannot start a client of %s: %s",
               bc->addrs[bc->cur], qrpc_strerror(rv));
    bc->cli = NULL;
    uint64_t ms = bc->opts.client.backoff_max_ms;
    struct timeval tv = qrpci_ns_to_tv(ms * 1000000u);
    evtimer_add(bc->switch_ev, &tv);
  }
}

/* Splits addr at its commas into bc->addrs: "dns:" targets and single
 * addresses stay whole. */
static int split_addrs(qrpc_broker_client *bc, const char *addr) {
  size_t n = 1;
  int list = strncmp(addr, "dns:", 4) != 0;
  if (list)
    for (const char *p = addr; *p; p++) n += *p == ',';
  if (!(bc->addrs = calloc(n, sizeof(*bc->addrs)))) return QRPC_ENOMEM;
  const char *p = addr;
  for (size_t i = 0; i < n; i++) {
    const char *end = list ? strchr(p, ',') : NULL;
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == 0) return QRPC_EINVAL;
    if (!(bc->addrs[i] = strndup(p, len))) return QRPC_ENOMEM;
    bc->naddrs++;
    p = end ? end + 1 : p + len;
  }
  return 0;
}

int qrpc_broker_client_new(qrpc_loop *loop, const char *addr,
                           qrpc_tls_config *tls,
                           const qrpc_broker_client_opts *opts,
                           qrpc_broker_client **out) {
  if (!loop || !addr || !tls || !out) return QRPC_EINVAL;
  if (opts && opts->size != sizeof(*opts)) return QRPC_EINVAL;
  qrpc_broker_client *bc = calloc(1, sizeof(*bc));
  if (!bc) return QRPC_ENOMEM;
  bc->loop = loop;
  if (opts)
    bc->opts = *opts;
  else
    qrpc_broker_client_opts_default(&bc->opts);
  qrpci_list_init(&bc->subs);
  qrpci_list_init(&bc->held);
  qrpci_u64map_init(&bc->channels);
  bc->token = dup_or_null(bc->opts.token);
  bc->name = dup_or_null(bc->opts.client_name);
  bc->opts.token = bc->opts.client_name = NULL;
  if ((bc->opts.token && !bc->token) || (bc->opts.client_name && !bc->name)) {
    qrpc_broker_client_free(bc);
    return QRPC_ENOMEM;
  }
  qrpci_tls_config_ref(tls); /* for the clients of failovers */
  bc->tls = tls;
  int rv = split_addrs(bc, addr);
  if (rv == 0 && bc->naddrs > 1 &&
      !(bc->switch_ev = evtimer_new(qrpc_loop_base(loop), on_switch, bc)))
    rv = QRPC_ENOMEM;
  if (rv == 0) rv = client_start(bc);
  if (rv != 0) {
    qrpc_broker_client_free(bc);
    return rv;
  }
  *out = bc;
  return 0;
}

void qrpc_broker_client_free(qrpc_broker_client *bc) {
  if (!bc) return;
  bc->freeing = 1;
  bc->ready = 0;
  if (bc->switch_ev) event_free(bc->switch_ev);
  qrpc_client_free(bc->cli); /* ends every call: their on_done run now */
  bc->cli = NULL;
  held_fail(bc, QRPC_STATUS_CANCELLED, "the client was freed");
  while (!qrpci_list_empty(&bc->subs)) {
    qrpc_broker_sub *s =
        QRPCI_CONTAINER_OF(bc->subs.next, qrpc_broker_sub, node);
    qrpci_list_remove(&s->node);
    free(s);
  }
  qrpci_u64map_free(&bc->channels);
  for (size_t i = 0; i < bc->naddrs; i++) free(bc->addrs[i]);
  free(bc->addrs);
  qrpc_tls_config_free(bc->tls);
  free(bc->token);
  free(bc->name);
  free(bc);
}

int qrpc_broker_client_ready(qrpc_broker_client *bc) { return bc && bc->ready; }

qrpc_client *qrpc_broker_client_rpc(qrpc_broker_client *bc) {
  return bc ? bc->cli : NULL;
}

/* ---- Statistics ------------------------------------------------------- */

static void stats_done(qrpc_call *call, const Qrpc__Broker__StatsReply *rep,
                       const qrpc_result *res, void *ud) {
  stats_ctx *c = ud;
  qrpc_broker_stats bs = {0};
  qrpc_broker_sub_stats *subs = NULL;
  size_t n = 0;
  int status = res->status;
  if (status == QRPC_STATUS_OK && rep->broker) {
    const Qrpc__Broker__BrokerStats *b = rep->broker;
    bs = (qrpc_broker_stats){
        b->connections,      b->subscriptions, b->retained,     b->published,
        b->refused,          b->delivered,     b->dropped,      b->conflated,
        b->slow_disconnects, b->denied,        b->queued_bytes, b->dead_peers,
        b->dropped_oldest,   b->dropped_newest};
    n = rep->n_subscriptions;
    if (n && !(subs = calloc(n, sizeof(*subs)))) {
      status = QRPC_STATUS_RESOURCE_EXHAUSTED;
      n = 0;
    }
    for (size_t i = 0; i < n; i++) {
      const Qrpc__Broker__SubscriptionStats *s = rep->subscriptions[i];
      subs[i] = (qrpc_broker_sub_stats){s->subscription_id,
                                        s->pattern,
                                        (qrpc_broker_mode)s->mode,
                                        (qrpc_broker_policy)s->policy,
                                        s->delivered,
                                        s->dropped,
                                        s->conflated,
                                        s->queued_messages,
                                        s->queued_bytes};
    }
  }
  c->fn(c->bc, status, status == QRPC_STATUS_OK ? &bs : NULL, subs, n,
        c->user_data);
  free(subs);
  free(c);
}

int qrpc_broker_client_stats(qrpc_broker_client *bc, qrpc_broker_stats_fn fn,
                             void *user_data) {
  if (!bc || !fn) return QRPC_EINVAL;
  if (!bc->ready) return QRPC_ECLOSED;
  stats_ctx *c = malloc(sizeof(*c));
  if (!c) return QRPC_ENOMEM;
  *c = (stats_ctx){bc, fn, user_data};
  Qrpc__Broker__StatsRequest r = QRPC__BROKER__STATS_REQUEST__INIT;
  int rv = qrpc_broker_Broker_Stats(bc->cli, &r, NULL, stats_done, c, NULL);
  if (rv != 0) free(c);
  return rv;
}
