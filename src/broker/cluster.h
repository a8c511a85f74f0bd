/*
 * The broker's link to a NATS backbone (docs/broker.md, "Clustering"):
 * one nats.c connection whose I/O runs on the broker's libevent loop
 * (natsLibevent_Attach), carrying what local clients publish out and the
 * messages of the patterns local clients subscribe to in.
 *
 * Topic T travels as the NATS subject PREFIX.T (PREFIX is "qrpc" unless
 * set), so that no topic of ours can reach NATS's own subjects ($JS.API,
 * $SYS, _INBOX) and a pattern ">" stays inside our space.
 *
 * Threading: every function here runs on the loop thread. nats.c calls
 * its message and connection callbacks on threads of its own; they only
 * append to a hand-off list (a mutex held for two pointer writes) and wake
 * the loop through a libevent event, and the loop delivers. No lock is
 * taken on the broker's publish path other than nats.c's own inside
 * natsConnection_Publish().
 */
#ifndef QRPCI_BROKER_CLUSTER_H
#define QRPCI_BROKER_CLUSTER_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/broker.h"
#include "qrpc/loop.h"

typedef struct qrpci_cluster qrpci_cluster;
typedef struct qrpci_cluster_sub qrpci_cluster_sub;

/* A message from NATS for the local subscriptions of interest id (the id
 * given to qrpci_cluster_subscribe()), or with id 0 a retained message
 * from the JetStream stream (qrpci_cluster_retain()); topic and payload
 * are borrowed for
 * the call. topic is the subject without the prefix, unchecked: the
 * broker checks it as it checks a publisher's. Loop thread. */
typedef void (*qrpci_cluster_deliver_fn)(void *ctx, uint64_t id,
                                         const char *topic, size_t topic_len,
                                         const uint8_t *payload, size_t len);

/* Checks a --cluster list: one or more nats://HOST:PORT separated by
 * commas. Returns 0, or QRPC_EINVAL with the reason in err (which quotes
 * the URL unless it holds credentials, which it never repeats). */
int qrpci_cluster_check_urls(const char *urls, char *err, size_t errlen);

/* Starts connecting to the NATS servers of o->cluster on loop. When none
 * answers, the broker runs alone and nats.c keeps trying in the background.
 * Errors: QRPC_EINVAL (URLs, prefix: the reason in err), QRPC_ENOMEM,
 * QRPC_ENOTSUP (built without nats.c). */
int qrpci_cluster_new(qrpc_loop *loop, const qrpc_broker_opts *o,
                      qrpci_cluster_deliver_fn deliver, void *ctx,
                      qrpci_cluster **out, char *err, size_t errlen);

/* Publishes a local publish to the other nodes. Returns 0 or an error
 * (the message could not be handed to nats.c: counted in publish_failed,
 * logged once; it reached local subscribers only). */
int qrpci_cluster_publish(qrpci_cluster *cl, const char *topic,
                          size_t topic_len, const uint8_t *payload, size_t len);

/* Stores a local retained publish (an empty payload clears) in the
 * cluster's JetStream stream, whose consumers on every node, this one
 * included, hand it back through deliver with interest id 0. Dropped
 * (counted in publish_failed) while JetStream is not set up. */
void qrpci_cluster_retain(qrpci_cluster *cl, const char *topic,
                          size_t topic_len, const uint8_t *payload, size_t len);

/* Whether a publish of a topic of topic_len bytes and len bytes of payload
 * fits the NATS servers' max_payload (1 while no server has said). */
int qrpci_cluster_fits(qrpci_cluster *cl, size_t topic_len, size_t len);

/* Opens the NATS interest in pattern (a valid pattern of ours), in queue
 * group group when group_len > 0; messages come back with id. Returns
 * the handle or NULL (counted, logged once: the local subscription still
 * works on this node). */
qrpci_cluster_sub *qrpci_cluster_subscribe(qrpci_cluster *cl,
                                           const char *pattern,
                                           size_t pattern_len,
                                           const char *group, size_t group_len,
                                           uint64_t id);

/* Closes the interest; no message of it is delivered after this. NULL is
 * ignored. */
void qrpci_cluster_unsubscribe(qrpci_cluster *cl, qrpci_cluster_sub *s);

/* Counts a message from NATS the broker found malformed; logs the first. */
void qrpci_cluster_malformed(qrpci_cluster *cl, const char *why);

void qrpci_cluster_get_stats(qrpci_cluster *cl, qrpc_broker_cluster_stats *st);

/* Closes the connection and frees everything. Blocks the loop thread for
 * at most 2 s while nats.c's threads finish their last callbacks. NULL is
 * ignored. */
void qrpci_cluster_free(qrpci_cluster *cl);

#endif
