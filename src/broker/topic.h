/*
 * Broker topics, subscription patterns and the tree that finds every
 * subscription a published topic reaches. Pure: no I/O, no clock, no
 * threads; one tree belongs to one thread.
 *
 * A topic is a sequence of levels joined by '.', as in "game.lobby.42":
 * - it is 1..QRPCI_TOPIC_MAX bytes long and has at most
 *   QRPCI_TOPIC_MAX_LEVELS levels;
 * - every level is non-empty (no leading, trailing or doubled '.');
 * - its bytes are valid UTF-8 with no ASCII control character (0x00..0x1f,
 *   0x7f) and no space;
 * - '*' and '>' appear nowhere in it.
 *
 * A pattern follows the same rules, except that
 * - a level that is exactly "*" matches exactly one level of any content;
 * - a last level that is exactly ">" matches one or more remaining levels,
 *   never zero: "a.>" matches "a.b" and "a.b.c" but not "a".
 * A '*' or '>' inside a longer level ("a*", ">x") is invalid, and so is a
 * ">" that is not the last level. Every topic is also a valid pattern, one
 * that matches only itself.
 */
#ifndef QRPCI_BROKER_TOPIC_H
#define QRPCI_BROKER_TOPIC_H

#include <stddef.h>

#include "util/list.h"

#define QRPCI_TOPIC_MAX 255
#define QRPCI_TOPIC_MAX_LEVELS 32

/* What is wrong with s[0..len) as a topic (wildcards 0) or a pattern
 * (wildcards 1): a static sentence starting "invalid topic: " or "invalid
 * pattern: ", or NULL when it is valid. */
const char *qrpci_topic_problem(const char *s, size_t len, int wildcards);
/* The same without the "invalid topic: " or "invalid pattern: " prefix. */
const char *qrpci_topic_reason(const char *s, size_t len, int wildcards);

/* A queue group's name (docs/broker.md, "Queue groups"): 1 to
 * QRPCI_GROUP_MAX bytes of ASCII letters, digits, '_' and '-'. Returns a
 * static sentence starting "invalid queue group: ", or NULL when g[0..len)
 * is valid. */
#define QRPCI_GROUP_MAX 64
const char *qrpci_group_problem(const char *g, size_t len);

/* Returns 0 if topic[0..len) is a valid topic, else QRPC_EINVAL. */
int qrpci_topic_check(const char *topic, size_t len);

/* Returns 0 if pat[0..len) is a valid pattern, else QRPC_EINVAL. */
int qrpci_pattern_check(const char *pat, size_t len);

/* Returns 1 if the valid pattern pat matches the valid topic, else 0.
 * Allocates nothing. */
int qrpci_pattern_match(const char *pat, size_t plen, const char *topic,
                        size_t tlen);

/* Returns 1 if every topic that the valid pattern inner matches is also
 * matched by the valid pattern outer, else 0: may an identity allowed outer
 * subscribe to inner? Decided level by level, which is exact for this
 * pattern language: an outer ">" covers any non-empty rest of inner,
 * including a ">"; an outer "*" covers a literal level or "*" but not ">";
 * a literal level covers only the same literal. */
int qrpci_pattern_covers(const char *outer, size_t olen, const char *inner,
                         size_t ilen);

/* A subscription's link into a tree, embedded in the owner's struct (the
 * owner is recovered in a match callback with QRPCI_CONTAINER_OF). The
 * fields belong to the tree. A sub must be zeroed before its first
 * qrpci_topic_tree_add(); after qrpci_topic_tree_remove() it is zeroed
 * again and may be added anew. */
typedef struct qrpci_topic_sub {
  qrpci_list link;
  void *node; /* NULL while the sub is in no tree */
} qrpci_topic_sub;

/* Subscriptions indexed by pattern. Each distinct pattern level is a node,
 * and a node's children are found through one hash table keyed by (parent
 * node, level bytes), so neither 10,000s of sibling levels nor 1000s of
 * subscriptions on one pattern make a publish scan a list. Nodes exist only
 * while some subscription lies at or below them. */
typedef struct qrpci_topic_tree qrpci_topic_tree;

/* Creates an empty tree in *out. Errors: QRPC_ENOMEM. */
int qrpci_topic_tree_new(qrpci_topic_tree **out);

/* Frees t and its nodes. Subs still linked are forgotten, not touched: their
 * owners may already be gone, and their fields are meaningless afterwards
 * (zero them before adding them to another tree). t may be NULL. */
void qrpci_topic_tree_free(qrpci_topic_tree *t);

/* Links sub under pattern pat[0..len), which is validated here. Many subs
 * may share a pattern; a sub lies in at most one place. The tree keeps no
 * pointer into pat. Errors: QRPC_EINVAL (invalid pattern, or sub already
 * linked), QRPC_ENOMEM; on error the tree and sub are as before the call. */
int qrpci_topic_tree_add(qrpci_topic_tree *t, const char *pat, size_t len,
                         qrpci_topic_sub *sub);

/* Unlinks sub (a no-op if it is not linked) and frees the nodes it leaves
 * without any subscription at or below them. */
void qrpci_topic_tree_remove(qrpci_topic_tree *t, qrpci_topic_sub *sub);

/* Called by qrpci_topic_tree_match() once per matching sub. It must not add
 * subs to or remove subs from the tree it was called from. */
typedef void (*qrpci_topic_match_fn)(qrpci_topic_sub *sub, void *ctx);

/* Calls fn once for every sub whose pattern matches topic[0..len), in no
 * particular order, and returns the number of calls. topic must be valid
 * (the caller checked it with qrpci_topic_check()); a topic of more than
 * QRPCI_TOPIC_MAX bytes or QRPCI_TOPIC_MAX_LEVELS levels matches nothing.
 * Allocates nothing. */
size_t qrpci_topic_tree_match(const qrpci_topic_tree *t, const char *topic,
                              size_t len, qrpci_topic_match_fn fn, void *ctx);

/* Nodes the tree holds, 0 when it has no subscription: for tests. */
size_t qrpci_topic_tree_node_count(const qrpci_topic_tree *t);

#endif
