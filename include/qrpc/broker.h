/*
 * Publish/subscribe through a qrpc broker (docs/broker.md): the broker
 * itself, to run in any process (the qrpc-broker daemon is a thin command
 * line around it), and the client library that wraps the Broker service of
 * idl/qrpc/broker.proto.
 *
 * Topics are dot-separated levels ("game.lobby.42", at most 255 bytes and
 * 32 levels); a subscription pattern may use "*" for exactly one level and
 * a last ">" for one or more levels ("game.*.state", "chat.>").
 *
 * Guarantees: a reliable subscription receives the messages of one
 * publisher connection in publish order, none lost, as long as its queue
 * holds what it has not yet read; when the queue overflows its policy
 * decides (disconnect, drop, conflate) and drops are reported. Realtime
 * subscriptions get datagrams: unordered, lossy, never queued beyond the
 * connection's datagram queue. Nothing is kept across a reconnection:
 * messages published while a subscriber is away are not delivered to it
 * (retained messages excepted).
 *
 * Threading: everything runs on the loop thread, like the rest of qrpc.
 */
#ifndef QRPC_BROKER_H
#define QRPC_BROKER_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/health.h"
#include "qrpc/rpc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef enum qrpc_broker_mode {
  QRPC_BROKER_RELIABLE = 0, /* ITEMs of the Subscribe call */
  QRPC_BROKER_REALTIME = 1, /* datagrams */
} qrpc_broker_mode;

typedef enum qrpc_broker_policy {
  QRPC_BROKER_POLICY_DEFAULT = 0, /* DISCONNECT (reliable), DROP_NEWEST
                                     (realtime) */
  QRPC_BROKER_DISCONNECT = 1,     /* close the connection, RESOURCE_LIMIT */
  QRPC_BROKER_DROP_OLDEST = 2,
  QRPC_BROKER_DROP_NEWEST = 3,
  QRPC_BROKER_CONFLATE = 4, /* keep the latest queued message per topic */
} qrpc_broker_policy;

/* The broker's counters (BrokerStats in the IDL). */
typedef struct qrpc_broker_stats {
  uint64_t connections;
  uint64_t subscriptions;
  uint64_t retained;
  uint64_t published;
  uint64_t refused;
  uint64_t delivered;
  uint64_t dropped;
  uint64_t conflated;
  uint64_t slow_disconnects;
  uint64_t denied;
  uint64_t queued_bytes;
  uint64_t dead_peers; /* connections closed because the peer stopped
                          answering (its subscriptions and queues freed) */
  /* Of dropped: by a DROP_OLDEST subscription's policy, and by a
   * DROP_NEWEST one's (realtime subscriptions included). The rest were
   * dropped for want of memory or over the fan-out limit. */
  uint64_t dropped_oldest;
  uint64_t dropped_newest;
} qrpc_broker_stats;

/* One subscription's counters (SubscriptionStats in the IDL). */
typedef struct qrpc_broker_sub_stats {
  uint64_t id;
  const char *pattern; /* NUL-terminated, borrowed */
  qrpc_broker_mode mode;
  qrpc_broker_policy policy;
  uint64_t delivered;
  uint64_t dropped;
  uint64_t conflated;
  uint32_t queued_messages;
  uint64_t queued_bytes;
} qrpc_broker_sub_stats;

/* ==== The broker ======================================================= */

typedef struct qrpc_broker qrpc_broker;

typedef struct qrpc_broker_opts {
  size_t size;                 /* sizeof(qrpc_broker_opts) */
  qrpc_server_opts server;     /* endpoint, connection and RPC settings;
                                  on_peer_open/close are the broker's */
  const char *acl_path;        /* ACL file (docs/broker.md); NULL: open
                                  access, with a warning in the log */
  size_t max_payload;          /* largest published payload; 1 MiB */
  size_t max_subscriptions;    /* per connection; 1000 */
  uint32_t queue_messages;     /* default per-subscription queue; 10000 */
  size_t queue_bytes;          /* default per-subscription queue; 8 MiB */
  uint32_t queue_messages_max; /* the most a subscriber may ask; 100000 */
  size_t queue_bytes_max;      /* the most a subscriber may ask; 64 MiB */
  size_t queued_bytes_total;   /* all queues together; beyond it each
                                  subscription's policy applies; 1 GiB */
  size_t max_retained;         /* topics with a retained message; 100000 */
  size_t max_retained_bytes;   /* their payloads together; 256 MiB */
  /* Clustering through NATS (docs/broker.md, "Clustering"): the servers,
   * "nats://HOST:PORT[,nats://HOST:PORT...]" (at most 16, no credentials
   * in them); NULL: this broker alone. The strings are copied; the
   * credentials are never logged. */
  const char *cluster;
  const char *cluster_user;     /* with cluster_password; NULL: none */
  const char *cluster_password; /* NULL: empty */
  const char *cluster_token;    /* NULL: none */
  const char *cluster_prefix;   /* topic T is NATS subject PREFIX.T;
                                   NULL: "qrpc" */
  size_t cluster_buffer_bytes;  /* publishes nats.c holds while it
                                   reconnects; beyond, dropped and counted
                                   (publish_failed); 8 MiB */
  /* With several workers (server.workers): the bytes of publishes one
   * worker may hold from the others while it has not yet delivered them.
   * A publish that would overflow a worker's share is refused as a whole
   * (RESOURCE_EXHAUSTED, counted as refused), before any subscriber has
   * it. At least max_payload plus the Delivery's framing; 64 MiB. */
  size_t worker_queue_bytes;
  /* Note: server.endpoint.conn.keepalive_ms defaults to 10000 here, so a
   * subscriber whose machine vanished is found and its subscriptions and
   * queues freed within keepalive_ms + dead_peer_timeout_ms (3000), not
   * after the 30 s idle timeout; 0 turns the PINGs off. */
} qrpc_broker_opts;

void qrpc_broker_opts_default(qrpc_broker_opts *o);

/* Starts a broker listening on addr (as qrpc_server_new()). tls is
 * referenced. The ACL file, if any, is read now. With opts.cluster, nats.c
 * keeps events of its own on the loop while the broker lives, so
 * qrpc_loop_run() does not return for lack of events: end it with
 * qrpc_loop_stop() (after qrpc_broker_shutdown()'s on_done, say).
 * Errors: as qrpc_server_new(); QRPC_EINVAL (bad options or ACL file: the
 * reason is written to err, errlen bytes, NUL-terminated, or logged at
 * error level when err is NULL). */
int qrpc_broker_new(qrpc_loop *loop, const char *addr, qrpc_tls_config *tls,
                    const qrpc_broker_opts *opts, qrpc_broker **out, char *err,
                    size_t errlen);

/* The server underneath (port, endpoint statistics). Owned by the broker. */
qrpc_server *qrpc_broker_server(qrpc_broker *b);

/* The number of workers serving (qrpc_server_opts.workers, 0 resolved).
 * Any thread. */
size_t qrpc_broker_workers(const qrpc_broker *b);

/* The broker's health service (qrpc/health.h): "" and
 * "qrpc.broker.Broker" are SERVING, and NOT_SERVING once
 * qrpc_broker_shutdown() has begun. Owned by the broker. */
qrpc_health *qrpc_broker_health(qrpc_broker *b);

/* Fills st with the broker's counters now. */
void qrpc_broker_get_stats(qrpc_broker *b, qrpc_broker_stats *st);

/* The broker's link to NATS (docs/broker.md, "Clustering"). */
typedef struct qrpc_broker_cluster_stats {
  int enabled;               /* opts.cluster was given */
  int connected;             /* to a NATS server now */
  uint64_t interests;        /* NATS subscriptions open now: one per distinct
                                pattern (and queue group) of local clients */
  uint64_t published;        /* local publishes handed to NATS */
  uint64_t publish_failed;   /* not handed (reconnect buffer full, ...):
                                delivered on this node only */
  uint64_t received;         /* messages from NATS for local subscriptions */
  uint64_t malformed;        /* from NATS, dropped: not a valid topic under
                                the prefix, or a payload over max_payload */
  uint64_t dropped;          /* from NATS, dropped by nats.c as a slow
                                consumer */
  uint64_t subscribe_failed; /* interests NATS refused or could not take */
  uint64_t reconnects;
  uint64_t retained_received; /* retained messages from the JetStream
                                 stream, every node's own included */
} qrpc_broker_cluster_stats;

/* Fills st (all zero without opts.cluster). Loop thread. */
void qrpc_broker_get_cluster_stats(qrpc_broker *b,
                                   qrpc_broker_cluster_stats *st);

/* Checks a list of NATS URLs as opts.cluster takes it. Returns 0, or
 * QRPC_EINVAL with the reason in err (errlen bytes, NUL-terminated),
 * which quotes the bad URL unless it holds credentials. Any thread. */
int qrpc_broker_cluster_check(const char *urls, char *err, size_t errlen);

/* Graceful shutdown, as qrpc_server_shutdown(): GOAWAY to every client,
 * subscriptions end when their connections close. on_done (may be NULL)
 * fires once when the last connection is gone; the broker may then be
 * freed. Errors: QRPC_ESTATE (already shutting down). */
int qrpc_broker_shutdown(qrpc_broker *b, uint64_t deadline_ms,
                         void (*on_done)(qrpc_broker *b, void *user_data),
                         void *user_data);

/* Closes every connection now and frees the broker. Not from inside one of
 * its callbacks. NULL is ignored. With opts.cluster it also closes the
 * NATS connections and waits, at most 2 s, for nats.c's threads to run
 * their last callbacks. */
void qrpc_broker_free(qrpc_broker *b);

/* ==== The client ======================================================= */

typedef struct qrpc_broker_client qrpc_broker_client;
typedef struct qrpc_broker_sub qrpc_broker_sub;

typedef struct qrpc_broker_client_opts {
  size_t size;             /* sizeof(qrpc_broker_client_opts) */
  qrpc_client_opts client; /* connection, reconnection and RPC settings;
                              on_connect/on_disconnect and
                              rpc.unary_streams are the library's;
                              client.on_state gets the user_data below */
  const char *token;       /* ACL token (copied); NULL or "": anonymous */
  const char *client_name; /* for the broker's log (copied); may be NULL */
  size_t max_pending;      /* publishes held while not ready; 1024 */
  /* The client is ready: connected, Hello answered, subscriptions being
   * renewed (status 0); or the broker refused the token (status
   * UNAUTHENTICATED, detail says why; nothing is sent on this connection
   * then, and held publishes fail with that status). Fires once per
   * connection. */
  void (*on_ready)(qrpc_broker_client *bc, int status, const char *detail,
                   void *user_data);
  /* A connection reported ready is lost (info says why: a broker that cut
   * off a slow subscriber closes with RESOURCE_LIMIT and a reason naming
   * the subscription). The client reconnects and resubscribes by itself.
   * A connection lost before it was ready is retried without a callback
   * and logged at info level (a broker that requires client certificates
   * refuses a client without an acceptable one that way). */
  void (*on_disconnect)(qrpc_broker_client *bc, const qrpc_close_info *info,
                        void *user_data);
  void *user_data;
} qrpc_broker_client_opts;

void qrpc_broker_client_opts_default(qrpc_broker_client_opts *o);

/* Creates a client of the broker at addr ("host:port") and starts
 * connecting. addr may also list the nodes of a broker cluster,
 * "host:port,host:port,...": the client holds one connection, to the
 * first node; when an attempt fails or the connection is lost it moves to
 * the next node in turn (at once for one pass over the list, then with
 * client.backoff_*), says Hello there and renews every subscription
 * (docs/broker.md, "Failover"). A "dns:" target is passed to
 * qrpc_client_new() whole. tls is referenced. Errors: QRPC_EINVAL (an
 * empty entry in the list), else as qrpc_client_new(). */
int qrpc_broker_client_new(qrpc_loop *loop, const char *addr,
                           qrpc_tls_config *tls,
                           const qrpc_broker_client_opts *opts,
                           qrpc_broker_client **out);

/* Ends every subscription without callbacks, fails publishes in flight or
 * held (their callbacks run, with CANCELLED, before this returns) and
 * frees the client. Not from inside the client's callbacks. NULL is
 * ignored. */
void qrpc_broker_client_free(qrpc_broker_client *bc);

/* Whether the client is ready now (see on_ready). */
int qrpc_broker_client_ready(qrpc_broker_client *bc);

/* The qrpc client underneath, for its statistics and the connection.
 * Owned by bc; do not register methods or free it. With several broker
 * addresses it is replaced on each move to another node: do not keep it
 * past the callback or call it was read in. NULL while a move failed to
 * start a client (retried after client.backoff_max_ms). */
qrpc_client *qrpc_broker_client_rpc(qrpc_broker_client *bc);

/* ---- Publishing ------------------------------------------------------- */

enum {
  QRPC_BROKER_RETAIN = 1, /* keep as the topic's retained message */
};

/* The broker has answered a publish: status 0 and the number of
 * subscriptions it was handed to, or the reason it was refused or lost
 * (UNAVAILABLE: the connection was lost, the message may or may not have
 * been published). detail is borrowed, may be NULL. */
typedef void (*qrpc_broker_publish_fn)(qrpc_broker_client *bc, int status,
                                       uint32_t subscribers, const char *detail,
                                       void *user_data);

/* What is wrong with a topic or a pattern, for a message to the user:
 * a static phrase such as "'>' may only be the last level", or NULL when
 * it is valid (docs/broker.md, "Topics and patterns"). qrpc_broker_publish()
 * and qrpc_broker_subscribe() return QRPC_EINVAL exactly when these are not
 * NULL. Any thread; NULL input is reported as empty. */
const char *qrpc_broker_topic_problem(const char *topic);
const char *qrpc_broker_pattern_problem(const char *pattern);
/* The same for a queue group's name (qrpc_broker_sub_opts.group). */
const char *qrpc_broker_group_problem(const char *group);

/* Publishes payload (copied) on topic. With done, the broker answers and
 * done fires exactly once (never inside this function); without it the
 * message goes one-way and a refusal is only counted by the broker. While
 * the client is not ready, publishes are held (at most max_pending) and
 * sent once it is; messages are sent in the order of these calls.
 * Errors: QRPC_EINVAL (topic invalid, flags unknown), QRPC_EMSGSIZE
 * (payload over the broker's max_payload, once known), QRPC_ENOBUFS (held
 * publishes full), QRPC_ENOMEM. */
int qrpc_broker_publish(qrpc_broker_client *bc, const char *topic,
                        const void *payload, size_t len, int flags,
                        qrpc_broker_publish_fn done, void *user_data);

/* ---- Subscribing ------------------------------------------------------ */

typedef struct qrpc_broker_sub_opts {
  size_t size; /* sizeof(qrpc_broker_sub_opts) */
  qrpc_broker_mode mode;
  qrpc_broker_policy policy;
  uint32_t queue_messages; /* 0: the broker's default */
  size_t queue_bytes;      /* 0: the broker's default */
  int skip_retained;       /* do not receive retained messages first */
  int latest_only;         /* realtime: drop a datagram older than the
                              newest one received (docs/datagrams.md) */
  /* A queue group (docs/broker.md, "Queue groups"), or NULL: the
   * subscriptions of one pattern that name the same group share its
   * messages, each message going to one of them, on every node of a
   * cluster. 1 to 64 ASCII letters, digits, '_' and '-'; copied. A group's
   * members get no retained messages. Added after latest_only: a size of
   * offsetof(qrpc_broker_sub_opts, group) is accepted and means none. */
  const char *group;
} qrpc_broker_sub_opts;

void qrpc_broker_sub_opts_default(qrpc_broker_sub_opts *o);

/* A message, borrowed for the duration of the callback. */
typedef struct qrpc_broker_msg {
  const char *topic; /* topic_len bytes, not NUL-terminated */
  size_t topic_len;
  const uint8_t *payload;
  size_t len;
  int retained; /* a retained message sent on subscribing */
} qrpc_broker_msg;

typedef struct qrpc_broker_sub_callbacks {
  /* A message matching the pattern. */
  void (*on_message)(qrpc_broker_sub *sub, const qrpc_broker_msg *msg,
                     void *user_data);
  /* The broker confirmed the subscription (again after each reconnection),
   * with its id on this connection. May be NULL. */
  void (*on_subscribed)(qrpc_broker_sub *sub, uint64_t id, void *user_data);
  /* The broker's slow-consumer policy dropped count messages of this
   * subscription since the last report (reliable only). May be NULL. */
  void (*on_dropped)(qrpc_broker_sub *sub, uint64_t count, void *user_data);
  /* The broker refused or ended the subscription for good
   * (PERMISSION_DENIED, INVALID_ARGUMENT, RESOURCE_EXHAUSTED,
   * FAILED_PRECONDITION, or OK when ended by an Unsubscribe from another
   * program). The last callback: sub is freed when it returns. May be
   * NULL. */
  void (*on_end)(qrpc_broker_sub *sub, int status, const char *detail,
                 void *user_data);
} qrpc_broker_sub_callbacks;

/* Subscribes to pattern (copied) with opts (NULL: reliable, defaults) and
 * callbacks (copied; on_message required). The subscription is made now if
 * the client is ready, else once it is, and again after every
 * reconnection. On success *out (may be NULL) is the handle, valid until
 * on_end returns or qrpc_broker_unsubscribe().
 * Errors: QRPC_EINVAL (pattern or group invalid, options), QRPC_ENOMEM. */
int qrpc_broker_subscribe(qrpc_broker_client *bc, const char *pattern,
                          const qrpc_broker_sub_opts *opts,
                          const qrpc_broker_sub_callbacks *cbs, void *user_data,
                          qrpc_broker_sub **out);

/* Ends the subscription: no callback of sub fires after this returns and
 * the handle is invalid. Allowed inside sub's own callbacks. */
void qrpc_broker_unsubscribe(qrpc_broker_sub *sub);

/* The subscription's id on the current connection, 0 while not
 * confirmed. */
uint64_t qrpc_broker_sub_id(qrpc_broker_sub *sub);

/* ---- Statistics ------------------------------------------------------- */

/* The broker's answer to a Stats call: status 0 with its counters and
 * those of this client's subscriptions (n of them), everything borrowed
 * for the duration of the callback; or the reason there is none. */
typedef void (*qrpc_broker_stats_fn)(qrpc_broker_client *bc, int status,
                                     const qrpc_broker_stats *broker,
                                     const qrpc_broker_sub_stats *subs,
                                     size_t n, void *user_data);

/* Asks the broker for its counters; fn fires exactly once, never inside
 * this function. Errors: QRPC_ECLOSED (not ready), QRPC_ENOMEM. */
int qrpc_broker_client_stats(qrpc_broker_client *bc, qrpc_broker_stats_fn fn,
                             void *user_data);

#ifdef __cplusplus
}
#endif
#endif
