/*
 * Fuzz target: broker topics and patterns (broker/topic.h). The input is a
 * pattern and a topic separated by the first '\n'; without a '\n' the
 * whole input is both.
 *
 * Properties: the checks never read outside their input, and a valid topic
 * is a valid pattern; neither holds a NUL byte (the broker relies on it to
 * refuse a string that a NUL would cut short); a valid pattern covers
 * itself; when both halves are valid, a tree holding the pattern and
 * patterns derived from both halves (each level of the topic in turn made
 * "*", its prefixes closed by ">", the pattern's levels made "*") calls
 * exactly the subs whose pattern qrpci_pattern_match() says matches, once
 * each, also after half of them are removed, and holds no node once all
 * are; a topic read as a pattern matches itself, and covers it exactly
 * when it matches it; and for every two derived patterns a and b, if a
 * covers b then a matches whatever b matches.
 */
#include <stdlib.h>
#include <string.h>

#include "broker/topic.h"
#include "fuzz.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

/* Room for every derived pattern: three per topic level, one per pattern
 * level, and a few more. */
#define MAX_DERIVED (4 * QRPCI_TOPIC_MAX_LEVELS + 8)

typedef struct derived {
  char s[QRPCI_TOPIC_MAX + 2];
  size_t len;
  qrpci_topic_sub sub;
  unsigned calls;
} derived;

typedef struct set {
  derived d[MAX_DERIVED];
  size_t n;
} set;

/* Adds s[0..len) to the set if it is a valid pattern. */
static void offer(set *st, const char *s, size_t len) {
  if (st->n == MAX_DERIVED || len > QRPCI_TOPIC_MAX) return;
  if (qrpci_pattern_check(s, len) != 0) return;
  derived *d = &st->d[st->n++];
  memcpy(d->s, s, len);
  d->len = len;
  memset(&d->sub, 0, sizeof(d->sub));
  d->calls = 0;
}

/* Start offsets of the levels of s; returns how many. */
static size_t levels_of(const char *s, size_t len, size_t *starts) {
  size_t n = 0;
  starts[n++] = 0;
  for (size_t i = 0; i < len; i++)
    if (s[i] == '.' && n < QRPCI_TOPIC_MAX_LEVELS + 1) starts[n++] = i + 1;
  return n;
}

static size_t level_end(const size_t *starts, size_t n, size_t i, size_t len) {
  return i + 1 < n ? starts[i + 1] - 1 : len;
}

/* s with level i replaced by rep. */
static void offer_replaced(set *st, const char *s, size_t len,
                           const size_t *starts, size_t n, size_t i,
                           const char *rep) {
  char buf[2 * QRPCI_TOPIC_MAX + 4];
  size_t end = level_end(starts, n, i, len), r = strlen(rep);
  memcpy(buf, s, starts[i]);
  memcpy(buf + starts[i], rep, r);
  memcpy(buf + starts[i] + r, s + end, len - end);
  offer(st, buf, starts[i] + r + len - end);
}

static void derive(set *st, const char *pat, size_t plen, const char *topic,
                   size_t tlen) {
  size_t starts[QRPCI_TOPIC_MAX_LEVELS + 1];
  char buf[QRPCI_TOPIC_MAX + 4];
  st->n = 0;
  offer(st, pat, plen);
  offer(st, pat, plen); /* two subs on one pattern */
  offer(st, topic, tlen);
  offer(st, ">", 1);
  offer(st, "*", 1);
  size_t n = levels_of(topic, tlen, starts);
  for (size_t i = 0; i < n; i++) {
    offer_replaced(st, topic, tlen, starts, n, i, "*");
    /* The first i levels, alone and closed by ">". */
    size_t k = i ? starts[i] - 1 : 0;
    memcpy(buf, topic, k);
    if (i) offer(st, buf, k);
    memcpy(buf + k, i ? ".>" : ">", i ? 2 : 1);
    offer(st, buf, k + (i ? 2 : 1));
  }
  n = levels_of(pat, plen, starts);
  for (size_t i = 0; i < n; i++)
    offer_replaced(st, pat, plen, starts, n, i, i + 1 == n ? ">" : "*");
}

static void count_call(qrpci_topic_sub *sub, void *ctx) {
  (void)ctx;
  QRPCI_CONTAINER_OF(sub, derived, sub)->calls++;
}

/* The tree's calls for topic agree with qrpci_pattern_match() for every
 * sub still in the tree. */
static void check_tree(qrpci_topic_tree *t, set *st, const char *topic,
                       size_t tlen) {
  for (size_t i = 0; i < st->n; i++) st->d[i].calls = 0;
  size_t calls = qrpci_topic_tree_match(t, topic, tlen, count_call, NULL);
  size_t want = 0;
  for (size_t i = 0; i < st->n; i++) {
    derived *d = &st->d[i];
    unsigned expect =
        d->sub.node && qrpci_pattern_match(d->s, d->len, topic, tlen);
    FZ_CHECK(d->calls == expect);
    want += expect;
  }
  FZ_CHECK(calls == want);
}

static void check_pair(const char *pat, size_t plen, const char *topic,
                       size_t tlen) {
  static set st; /* large; one input runs at a time */
  derive(&st, pat, plen, topic, tlen);
  FZ_CHECK(qrpci_pattern_match(topic, tlen, topic, tlen) == 1);
  FZ_CHECK(qrpci_pattern_covers(pat, plen, topic, tlen) ==
           qrpci_pattern_match(pat, plen, topic, tlen));
  for (size_t a = 0; a < st.n; a++) {
    const derived *da = &st.d[a];
    FZ_CHECK(qrpci_pattern_covers(da->s, da->len, da->s, da->len) == 1);
    if (!qrpci_pattern_match(da->s, da->len, topic, tlen)) {
      for (size_t b = 0; b < st.n; b++) {
        const derived *db = &st.d[b];
        if (qrpci_pattern_covers(da->s, da->len, db->s, db->len))
          FZ_CHECK(!qrpci_pattern_match(db->s, db->len, topic, tlen));
      }
    }
  }

  qrpci_topic_tree *t = NULL;
  FZ_CHECK(qrpci_topic_tree_new(&t) == 0);
  for (size_t i = 0; i < st.n; i++)
    FZ_CHECK(qrpci_topic_tree_add(t, st.d[i].s, st.d[i].len, &st.d[i].sub) ==
             0);
  check_tree(t, &st, topic, tlen);
  for (size_t i = 1; i < st.n; i += 2) qrpci_topic_tree_remove(t, &st.d[i].sub);
  check_tree(t, &st, topic, tlen);
  for (size_t i = 0; i < st.n; i++) qrpci_topic_tree_remove(t, &st.d[i].sub);
  FZ_CHECK(qrpci_topic_tree_node_count(t) == 0);
  FZ_CHECK(qrpci_topic_tree_match(t, topic, tlen, count_call, NULL) == 0);
  qrpci_topic_tree_free(t);
}

/* An exactly sized copy, so ASan sees a read one byte too far. */
static char *copy_of(const uint8_t *p, size_t len) {
  char *c = malloc(len ? len : 1);
  FZ_CHECK(c != NULL);
  if (len) memcpy(c, p, len);
  return c;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  const uint8_t *nl = size ? memchr(data, '\n', size) : NULL;
  size_t plen = nl ? (size_t)(nl - data) : size;
  size_t tlen = nl ? size - plen - 1 : size;
  char *pat = copy_of(data, plen);
  char *topic = copy_of(nl ? nl + 1 : data, tlen);

  int p_ok = qrpci_pattern_check(pat, plen) == 0;
  int t_ok = qrpci_topic_check(topic, tlen) == 0;
  if (qrpci_topic_check(pat, plen) == 0) FZ_CHECK(p_ok);
  if (t_ok) FZ_CHECK(qrpci_pattern_check(topic, tlen) == 0);
  if (p_ok) FZ_CHECK(plen == 0 || memchr(pat, '\0', plen) == NULL);
  if (t_ok) FZ_CHECK(tlen == 0 || memchr(topic, '\0', tlen) == NULL);
  if (p_ok) FZ_CHECK(qrpci_pattern_covers(pat, plen, pat, plen) == 1);
  if (p_ok && t_ok) check_pair(pat, plen, topic, tlen);

  free(pat);
  free(topic);
  return 0;
}
