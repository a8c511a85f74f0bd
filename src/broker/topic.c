#include "broker/topic.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "wire/stream_header.h"

/* ---- levels ------------------------------------------------------------ */

typedef struct level {
  const char *p;
  size_t len;
} level;

/* Walks the '.'-separated levels of a string from the front. */
typedef struct cursor {
  const char *p; /* NULL once the last level was taken */
  const char *end;
} cursor;

static cursor cursor_of(const char *s, size_t len) {
  cursor c = {len ? s : NULL, len ? s + len : NULL};
  return c;
}

/* Returns 0 when no level is left. */
static int next_level(cursor *c, level *lv) {
  if (!c->p) return 0;
  const char *dot = memchr(c->p, '.', (size_t)(c->end - c->p));
  lv->p = c->p;
  if (dot) {
    lv->len = (size_t)(dot - c->p);
    c->p = dot + 1;
  } else {
    lv->len = (size_t)(c->end - c->p);
    c->p = NULL;
  }
  return 1;
}

static int is_star(level lv) { return lv.len == 1 && lv.p[0] == '*'; }
static int is_gt(level lv) { return lv.len == 1 && lv.p[0] == '>'; }
static int level_eq(level a, level b) {
  return a.len == b.len && memcmp(a.p, b.p, a.len) == 0;
}

/* ---- validation -------------------------------------------------------- */

/* A byte that may appear in no topic or pattern level. */
static int forbidden(unsigned char c) {
  return c < 0x20 || c == 0x7f || c == ' ';
}

/* What is wrong with s as a topic (wildcards 0) or a pattern (1), in the
 * words of each; NULL when nothing is. */
const char *qrpci_topic_problem(const char *s, size_t len, int wildcards) {
  static const char *const what[][2] = {
#define P(topic, pattern) {"invalid topic: " topic, "invalid pattern: " pattern}
      P("it is empty", "it is empty"),
      P("it is longer than 255 bytes", "it is longer than 255 bytes"),
      P("an empty level (a dot at the start, at the end or after another)",
        "an empty level (a dot at the start, at the end or after another)"),
      P("more than 32 levels", "more than 32 levels"),
      P("a space or a control character", "a space or a control character"),
      P("'*' and '>' are for patterns only",
        "'*' and '>' must be a whole level"),
      P("'*' and '>' are for patterns only", "'>' may only be the last level"),
      P("not valid UTF-8", "not valid UTF-8"),
#undef P
  };
  enum { EMPTY, LONG, EMPTY_LEVEL, LEVELS, SPACE, WILD, GT_LAST, UTF8 };
  int w = wildcards != 0, bad = -1;
  size_t levels = 1, start = 0;
  if (len == 0) return what[EMPTY][w];
  if (len > QRPCI_TOPIC_MAX) return what[LONG][w];
  for (size_t i = 0; i < len && bad < 0; i++) {
    unsigned char c = (unsigned char)s[i];
    if (c == '.') {
      if (i == start)
        bad = EMPTY_LEVEL;
      else if (++levels > QRPCI_TOPIC_MAX_LEVELS)
        bad = LEVELS;
      start = i + 1;
    } else if (forbidden(c)) {
      bad = SPACE;
    } else if (c == '*' || c == '>') {
      /* A wildcard is a whole level, and ">" is the last one. */
      int alone = i == start && (i + 1 == len || s[i + 1] == '.');
      if (!wildcards || !alone)
        bad = WILD;
      else if (c == '>' && i + 1 != len)
        bad = GT_LAST;
    }
  }
  if (bad < 0 && start == len) bad = EMPTY_LEVEL; /* a trailing '.' */
  /* '.' is ASCII, so splitting at it never cuts a multi-byte sequence and
   * the whole string can be checked at once. */
  if (bad < 0 && !qrpci_utf8_valid((const uint8_t *)s, len)) bad = UTF8;
  return bad < 0 ? NULL : what[bad][w];
}

const char *qrpci_topic_reason(const char *s, size_t len, int wildcards) {
  const char *p = qrpci_topic_problem(s, len, wildcards);
  return p ? p + strlen(wildcards ? "invalid pattern: " : "invalid topic: ")
           : NULL;
}

const char *qrpci_group_problem(const char *g, size_t len) {
  if (len == 0) return "invalid queue group: it is empty";
  if (len > QRPCI_GROUP_MAX)
    return "invalid queue group: it is longer than 64 bytes";
  for (size_t i = 0; i < len; i++) {
    char c = g[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
          (c >= '0' && c <= '9') || c == '_' || c == '-'))
      return "invalid queue group: only ASCII letters, digits, '_' and '-'";
  }
  return NULL;
}

int qrpci_topic_check(const char *topic, size_t len) {
  return qrpci_topic_problem(topic, len, 0) ? QRPC_EINVAL : 0;
}

int qrpci_pattern_check(const char *pat, size_t len) {
  return qrpci_topic_problem(pat, len, 1) ? QRPC_EINVAL : 0;
}

/* ---- matching and covering --------------------------------------------- */

int qrpci_pattern_match(const char *pat, size_t plen, const char *topic,
                        size_t tlen) {
  cursor pc = cursor_of(pat, plen), tc = cursor_of(topic, tlen);
  level p, t;
  for (;;) {
    int has_p = next_level(&pc, &p), has_t = next_level(&tc, &t);
    if (!has_p) return !has_t;
    if (is_gt(p)) return has_t;
    if (!has_t) return 0;
    if (!is_star(p) && !level_eq(p, t)) return 0;
  }
}

int qrpci_pattern_covers(const char *outer, size_t olen, const char *inner,
                         size_t ilen) {
  cursor oc = cursor_of(outer, olen), ic = cursor_of(inner, ilen);
  level o, i;
  for (;;) {
    int has_o = next_level(&oc, &o), has_i = next_level(&ic, &i);
    if (!has_o) return !has_i;
    if (is_gt(o)) return has_i;
    if (!has_i) return 0;
    if (is_star(o)) {
      /* One level never covers the one-or-more levels of ">". */
      if (is_gt(i)) return 0;
    } else if (!level_eq(o, i)) {
      return 0; /* a literal never equals a wildcard */
    }
  }
}

/* ---- the tree ---------------------------------------------------------- */

/* One level of one or more patterns. Every node but the root is in the
 * tree's table, the "*" and ">" children too; those two are also linked
 * from their parent, so a match reaches them without hashing. A node other
 * than the root always has a sub or a child, which is what pruning keeps
 * true. */
typedef struct node {
  struct node *parent;
  struct node *next; /* in the table's bucket */
  struct node *star, *gt;
  qrpci_list subs;
  size_t children;
  uint64_t hash; /* of (parent, level) */
  size_t len;
  char level[];
} node;

struct qrpci_topic_tree {
  node *root;
  node **buckets; /* chained; cap is 0 or a power of two */
  size_t cap;
  size_t count; /* nodes in the table: all but the root */
  uint64_t seed;
};

/* Below this the table never shrinks; at 0 nodes it is freed outright. */
#define MIN_CAP 16

static uint64_t mix(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

/* FNV-1a from a per-tree seed, so which levels collide differs between
 * trees and runs. A topic's level hashes are computed once per publish and
 * combined with each candidate parent by child_hash(). */
static uint64_t level_hash(const qrpci_topic_tree *t, level lv) {
  uint64_t h = t->seed ^ lv.len;
  for (size_t i = 0; i < lv.len; i++) {
    h ^= (unsigned char)lv.p[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

static uint64_t child_hash(const node *parent, uint64_t lh) {
  return mix(lh ^ (uint64_t)(uintptr_t)parent * 0x9e3779b97f4a7c15ULL);
}

static node *find_child(const qrpci_topic_tree *t, const node *parent,
                        uint64_t h, level lv) {
  if (!t->cap) return NULL;
  for (node *n = t->buckets[h & (t->cap - 1)]; n; n = n->next) {
    if (n->hash == h && n->parent == parent && n->len == lv.len &&
        memcmp(n->level, lv.p, lv.len) == 0)
      return n;
  }
  return NULL;
}

static int resize(qrpci_topic_tree *t, size_t cap) {
  node **b = calloc(cap, sizeof(*b));
  if (!b) return QRPC_ENOMEM;
  for (size_t i = 0; i < t->cap; i++) {
    node *n = t->buckets[i];
    while (n) {
      node *next = n->next;
      size_t j = n->hash & (cap - 1);
      n->next = b[j];
      b[j] = n;
      n = next;
    }
  }
  free(t->buckets);
  t->buckets = b;
  t->cap = cap;
  return 0;
}

/* Keeps memory in proportion to the live nodes after removals. Shrinking
 * is an optimisation, so a failed allocation just keeps the larger table. */
static void maybe_shrink(qrpci_topic_tree *t) {
  if (t->count == 0) {
    free(t->buckets);
    t->buckets = NULL;
    t->cap = 0;
  } else if (t->cap > MIN_CAP && t->count * 8 <= t->cap) {
    (void)resize(t, t->cap / 4);
  }
}

static node *new_child(qrpci_topic_tree *t, node *parent, level lv,
                       uint64_t h) {
  /* Grow at a load of 1: chains stay short and a lookup rarely compares
   * more than one level. */
  if (t->count + 1 > t->cap && resize(t, t->cap ? t->cap * 2 : MIN_CAP) != 0)
    return NULL;
  node *n = malloc(sizeof(*n) + lv.len);
  if (!n) return NULL;
  n->parent = parent;
  n->star = n->gt = NULL;
  qrpci_list_init(&n->subs);
  n->children = 0;
  n->hash = h;
  n->len = lv.len;
  memcpy(n->level, lv.p, lv.len);
  size_t b = h & (t->cap - 1);
  n->next = t->buckets[b];
  t->buckets[b] = n;
  t->count++;
  parent->children++;
  if (is_star(lv)) parent->star = n;
  if (is_gt(lv)) parent->gt = n;
  return n;
}

static void unhash(qrpci_topic_tree *t, node *n) {
  node **pp = &t->buckets[n->hash & (t->cap - 1)];
  while (*pp != n) pp = &(*pp)->next;
  *pp = n->next;
  t->count--;
}

/* Frees n and then its ancestors for as long as each is left with neither
 * a sub nor a child. */
static void prune(qrpci_topic_tree *t, node *n) {
  while (n != t->root && qrpci_list_empty(&n->subs) && n->children == 0) {
    node *parent = n->parent;
    unhash(t, n);
    if (parent->star == n) parent->star = NULL;
    if (parent->gt == n) parent->gt = NULL;
    parent->children--;
    free(n);
    n = parent;
  }
  maybe_shrink(t);
}

int qrpci_topic_tree_new(qrpci_topic_tree **out) {
  qrpci_topic_tree *t = malloc(sizeof(*t));
  node *root = malloc(sizeof(*root));
  if (!t || !root) {
    free(t);
    free(root);
    return QRPC_ENOMEM;
  }
  memset(root, 0, sizeof(*root));
  qrpci_list_init(&root->subs);
  t->root = root;
  t->buckets = NULL;
  t->cap = 0;
  t->count = 0;
  t->seed = mix((uint64_t)(uintptr_t)t ^ 0x6a09e667f3bcc909ULL);
  *out = t;
  return 0;
}

void qrpci_topic_tree_free(qrpci_topic_tree *t) {
  if (!t) return;
  for (size_t i = 0; i < t->cap; i++) {
    node *n = t->buckets[i];
    while (n) {
      node *next = n->next;
      free(n);
      n = next;
    }
  }
  free(t->buckets);
  free(t->root);
  free(t);
}

int qrpci_topic_tree_add(qrpci_topic_tree *t, const char *pat, size_t len,
                         qrpci_topic_sub *sub) {
  if (sub->node || qrpci_pattern_check(pat, len) != 0) return QRPC_EINVAL;
  cursor c = cursor_of(pat, len);
  level lv;
  node *n = t->root;
  while (next_level(&c, &lv)) {
    uint64_t h = child_hash(n, level_hash(t, lv));
    node *child = is_star(lv) ? n->star
                  : is_gt(lv) ? n->gt
                              : find_child(t, n, h, lv);
    if (!child && !(child = new_child(t, n, lv, h))) {
      prune(t, n); /* the nodes this call made, and only those */
      return QRPC_ENOMEM;
    }
    n = child;
  }
  qrpci_list_push_back(&n->subs, &sub->link);
  sub->node = n;
  return 0;
}

void qrpci_topic_tree_remove(qrpci_topic_tree *t, qrpci_topic_sub *sub) {
  node *n = sub->node;
  if (!n) return;
  qrpci_list_remove(&sub->link);
  sub->link.prev = sub->link.next = NULL;
  sub->node = NULL;
  prune(t, n);
}

/* State of one match: the topic split once, with each level's hash, so a
 * node's literal child costs one combine and one bucket walk. */
typedef struct walk {
  const qrpci_topic_tree *t;
  level lv[QRPCI_TOPIC_MAX_LEVELS];
  uint64_t lh[QRPCI_TOPIC_MAX_LEVELS];
  size_t levels;
  qrpci_topic_match_fn fn;
  void *ctx;
  size_t calls;
} walk;

static void call_subs(walk *w, const node *n) {
  const qrpci_list *head = &n->subs;
  for (qrpci_list *l = head->next; l != head; l = l->next) {
    w->fn(QRPCI_CONTAINER_OF(l, qrpci_topic_sub, link), w->ctx);
    w->calls++;
  }
}

/* Visits the nodes under n that match the topic from level depth on. The
 * tree has one node per pattern, so no sub is reached twice; recursion is
 * at most QRPCI_TOPIC_MAX_LEVELS deep. */
static void visit(walk *w, const node *n, size_t depth) {
  if (depth == w->levels) {
    call_subs(w, n);
    return;
  }
  if (n->gt) call_subs(w, n->gt);
  if (n->star) visit(w, n->star, depth + 1);
  level lv = w->lv[depth];
  /* A literal "*" or ">" in an unchecked topic would otherwise reach the
   * wildcard nodes a second time. */
  size_t wild = (n->star != NULL) + (n->gt != NULL);
  if (n->children > wild && !is_star(lv) && !is_gt(lv)) {
    const node *c = find_child(w->t, n, child_hash(n, w->lh[depth]), lv);
    if (c) visit(w, c, depth + 1);
  }
}

size_t qrpci_topic_tree_match(const qrpci_topic_tree *t, const char *topic,
                              size_t len, qrpci_topic_match_fn fn, void *ctx) {
  if (t->count == 0 || len == 0 || len > QRPCI_TOPIC_MAX) return 0;
  walk w;
  w.t = t;
  w.levels = 0;
  w.fn = fn;
  w.ctx = ctx;
  w.calls = 0;
  cursor c = cursor_of(topic, len);
  level lv;
  while (next_level(&c, &lv)) {
    if (w.levels == QRPCI_TOPIC_MAX_LEVELS) return 0;
    w.lv[w.levels] = lv;
    w.lh[w.levels++] = level_hash(t, lv);
  }
  visit(&w, t->root, 0);
  return w.calls;
}

size_t qrpci_topic_tree_node_count(const qrpci_topic_tree *t) {
  return t->count;
}
