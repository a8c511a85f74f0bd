/* Broker topics and patterns: validation, matching, covering, and the
 * subscription tree checked against the plain matcher. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "alloc_fail.h"
#include "broker/topic.h"
#include "qrpc/broker.h"
#include "qrpc/error.h"

/* ---- tables ------------------------------------------------------------ */

typedef struct bytes {
  const char *s;
  size_t len;
} bytes;

/* A string literal with its length, so embedded NULs count. */
#define B(lit)                                                                 \
  { lit, sizeof(lit) - 1 }

static const struct {
  const char *pat;
  const char *topic;
  int match;
} matches[] = {
    /* literals */
    {"a", "a", 1},
    {"a", "b", 0},
    {"A", "a", 0},
    {"a.b.c", "a.b.c", 1},
    {"a.b.c", "a.b", 0},
    {"a.b", "a.b.c", 0},
    {"game.lobby.42", "game.lobby.42", 1},
    {"game.lobby.42", "game.lobby.420", 0},
    {"game.lobby.42", "game.lobby.4", 0},
    {"caf\xc3\xa9", "caf\xc3\xa9", 1},
    {"caf\xc3\xa9", "cafe", 0},
    /* prefixes of a level are not the level */
    {"a.b", "a.bc", 0},
    {"a.bc", "a.b", 0},
    {"ab", "a.b", 0},
    {"a.b", "ab", 0},
    /* "*" at every position, and one level only */
    {"*", "a", 1},
    {"*", "a.b", 0},
    {"*.b.c", "a.b.c", 1},
    {"*.b.c", "a.x.c", 0},
    {"*.b.c", "b.c", 0},
    {"a.*.c", "a.b.c", 1},
    {"a.*.c", "a.c", 0},
    {"a.*.c", "a.b.b.c", 0},
    {"a.*.c", "a.b.d", 0},
    {"a.b.*", "a.b.c", 1},
    {"a.b.*", "a.b", 0},
    {"a.b.*", "a.b.c.d", 0},
    {"*.*", "a.b", 1},
    {"*.*", "a", 0},
    {"*.*", "a.b.c", 0},
    {"*.*.*", "x.y.z", 1},
    {"*", "caf\xc3\xa9", 1},
    /* ">" takes one or more levels, never zero */
    {">", "a", 1},
    {">", "a.b.c", 1},
    {"a.>", "a", 0},
    {"a.>", "a.b", 1},
    {"a.>", "a.b.c.d", 1},
    {"a.>", "b.a", 0},
    {"a.>", "ab.c", 0},
    {"a.b.>", "a.b", 0},
    {"a.b.>", "a.b.c", 1},
    {"a.b.>", "a.bc.d", 0},
    {"*.>", "a", 0},
    {"*.>", "a.b", 1},
    {"*.*.>", "a.b", 0},
    {"*.*.>", "a.b.c.d", 1},
    {"a.*.>", "a.b.c", 1},
    {"a.*.>", "a.b", 0},
    {"a.*.>", "b.b.c", 0},
};

#define N_MATCHES (sizeof(matches) / sizeof(matches[0]))

static const bytes bad_topics[] = {
    B(""),
    B("."),
    B(".."),
    B("a."),
    B(".a"),
    B("a..b"),
    B("a.b."),
    B("a b"),
    B(" a"),
    B("a\tb"),
    B("a\nb"),
    B("a\x01"),
    B("a\x7f"),
    B("a\0b"),
    B("*"),
    B(">"),
    B("a.*"),
    B("a.>"),
    B("a*"),
    B("a>b"),
    B("\xff"),
    B("\x80"),
    B("ab\xc3"),
    B("\xc0\xae"),         /* overlong '.' */
    B("\xed\xa0\x80"),     /* UTF-16 surrogate */
    B("\xf4\x90\x80\x80"), /* past U+10FFFF */
};

static const bytes bad_patterns[] = {
    B(""),     B("."),      B("a."),         B(".a"),  B("a..b"),
    B(".>"),   B("a*"),     B("*a"),         B("a*b"), B("**"),
    B("a>"),   B(">a"),     B(">>"),         B("*>"),  B(">*"),
    B(">.a"),  B("a.>.b"),  B("a.>.>"),      B(">.>"), B("a.b*"),
    B("a.>b"), B("a b"),    B("* "),         B("a\r"), B("\x1b[0m"),
    B("a.\0"), B("\xff.>"), B("*.\xe2\x82"),
};

static const bytes good_patterns[] = {
    B("a"),   B("*"),   B(">"),     B("a.*"),           B("*.a"),
    B("a.>"), B("*.>"), B("*.*.*"), B("a.*.>"),         B("a-b_c"),
    B("a/b"), B("a:b"), B("#"),     B("caf\xc3\xa9.>"), B("\xf0\x9f\x98\x80.*"),
};

/* ---- helpers ----------------------------------------------------------- */

/* Builds "l.l.l..." with levels copies of level in buf; returns its length. */
static size_t repeat_levels(char *buf, const char *level, size_t levels) {
  size_t n = 0, l = strlen(level);
  for (size_t i = 0; i < levels; i++) {
    if (i) buf[n++] = '.';
    memcpy(buf + n, level, l);
    n += l;
  }
  buf[n] = '\0';
  return n;
}

static int match_s(const char *p, const char *t) {
  return qrpci_pattern_match(p, strlen(p), t, strlen(t));
}

static int covers_s(const char *o, const char *i) {
  return qrpci_pattern_covers(o, strlen(o), i, strlen(i));
}

/* Checks from an exactly sized heap copy, so a sanitizer build catches any
 * read past len. */
static int check_copy(int (*fn)(const char *, size_t), const char *s,
                      size_t len) {
  char *copy = malloc(len ? len : 1);
  memcpy(copy, s, len);
  int rv = fn(copy, len);
  free(copy);
  return rv;
}

/* ---- validation ------------------------------------------------------- */

START_TEST(test_match_table) {
  const char *p = matches[_i].pat, *t = matches[_i].topic;
  ck_assert_int_eq(qrpci_pattern_check(p, strlen(p)), 0);
  ck_assert_int_eq(qrpci_topic_check(t, strlen(t)), 0);
  ck_assert_msg(match_s(p, t) == matches[_i].match, "'%s' on '%s': want %d", p,
                t, matches[_i].match);
}
END_TEST

START_TEST(test_bad_topics) {
  bytes b = bad_topics[_i];
  ck_assert_int_eq(check_copy(qrpci_topic_check, b.s, b.len), QRPC_EINVAL);
}
END_TEST

START_TEST(test_bad_patterns) {
  bytes b = bad_patterns[_i];
  ck_assert_int_eq(check_copy(qrpci_pattern_check, b.s, b.len), QRPC_EINVAL);
}
END_TEST

START_TEST(test_good_patterns) {
  bytes b = good_patterns[_i];
  ck_assert_int_eq(check_copy(qrpci_pattern_check, b.s, b.len), 0);
}
END_TEST

#define EMPTY_LEVEL                                                            \
  "an empty level (a dot at the start, at the end or after another)"

/* What is wrong is said: the phrase for each kind of mistake, NULL for
 * what is valid, and a refusal exactly when there is a phrase. */
START_TEST(test_problem_phrases) {
  static const struct {
    const char *s;
    int pattern;
    const char *want; /* NULL: valid */
  } cases[] = {
      {"sensors.>.x", 1, "'>' may only be the last level"},
      {"sensors.>", 1, NULL},
      {"sensors.*.temp", 1, NULL},
      {"sensors.*.temp", 0, "'*' and '>' are for patterns only"},
      {"sensors.t*", 1, "'*' and '>' must be a whole level"},
      {"", 0, "it is empty"},
      {"", 1, "it is empty"},
      {"a..b", 0, EMPTY_LEVEL},
      {".a", 1, EMPTY_LEVEL},
      {"a.", 0, EMPTY_LEVEL},
      {"a b", 0, "a space or a control character"},
      {"a\tb", 1, "a space or a control character"},
      {"a.\xff", 0, "not valid UTF-8"},
      {"chat.room", 0, NULL},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    const char *want = cases[i].want;
    const char *got = cases[i].pattern ? qrpc_broker_pattern_problem(cases[i].s)
                                       : qrpc_broker_topic_problem(cases[i].s);
    if (want)
      ck_assert_msg(got && strcmp(got, want) == 0, "'%s': got %s", cases[i].s,
                    got ? got : "(null)");
    else
      ck_assert_msg(got == NULL, "'%s': got %s", cases[i].s, got);
    size_t len = strlen(cases[i].s);
    int rc = cases[i].pattern ? qrpci_pattern_check(cases[i].s, len)
                              : qrpci_topic_check(cases[i].s, len);
    ck_assert_int_eq(rc, want ? QRPC_EINVAL : 0);
  }
  /* More than 255 bytes, more than 32 levels. */
  char long_topic[300];
  memset(long_topic, 'a', sizeof(long_topic) - 1);
  long_topic[sizeof(long_topic) - 1] = 0;
  ck_assert_str_eq(qrpc_broker_topic_problem(long_topic),
                   "it is longer than 255 bytes");
  char many[80] = "";
  for (int i = 0; i < 33; i++) strcat(many, i ? ".a" : "a");
  ck_assert_str_eq(qrpc_broker_pattern_problem(many), "more than 32 levels");
  ck_assert_str_eq(qrpc_broker_topic_problem(NULL), "it is empty");
  /* Every bad topic and pattern of the tables above has its phrase. */
  for (size_t i = 0; i < sizeof(bad_topics) / sizeof(bad_topics[0]); i++)
    ck_assert_ptr_nonnull(
        qrpci_topic_reason(bad_topics[i].s, bad_topics[i].len, 0));
  for (size_t i = 0; i < sizeof(bad_patterns) / sizeof(bad_patterns[0]); i++)
    ck_assert_ptr_nonnull(
        qrpci_topic_reason(bad_patterns[i].s, bad_patterns[i].len, 1));
}
END_TEST

/* Every topic is a pattern that matches itself. */
START_TEST(test_topic_is_pattern) {
  for (size_t i = 0; i < N_MATCHES; i++) {
    const char *t = matches[i].topic;
    ck_assert_int_eq(qrpci_pattern_check(t, strlen(t)), 0);
    ck_assert(match_s(t, t));
  }
}
END_TEST

START_TEST(test_length_limits) {
  char buf[QRPCI_TOPIC_MAX + 2];
  memset(buf, 'x', sizeof(buf));
  ck_assert_int_eq(qrpci_topic_check(buf, QRPCI_TOPIC_MAX), 0);
  ck_assert_int_eq(qrpci_pattern_check(buf, QRPCI_TOPIC_MAX), 0);
  ck_assert_int_eq(qrpci_topic_check(buf, QRPCI_TOPIC_MAX + 1), QRPC_EINVAL);
  ck_assert_int_eq(qrpci_pattern_check(buf, QRPCI_TOPIC_MAX + 1), QRPC_EINVAL);
  /* 253 bytes and ".>" is the longest pattern; it matches 253 bytes and
   * ".y", but not the 253 bytes alone. */
  char pat[QRPCI_TOPIC_MAX], topic[QRPCI_TOPIC_MAX];
  memset(pat, 'x', sizeof(pat));
  memcpy(pat + QRPCI_TOPIC_MAX - 2, ".>", 2);
  memcpy(topic, pat, sizeof(topic));
  topic[QRPCI_TOPIC_MAX - 1] = 'y';
  ck_assert_int_eq(qrpci_pattern_check(pat, sizeof(pat)), 0);
  ck_assert_int_eq(qrpci_topic_check(topic, sizeof(topic)), 0);
  ck_assert(qrpci_pattern_match(pat, sizeof(pat), topic, sizeof(topic)));
  ck_assert(!qrpci_pattern_match(pat, sizeof(pat), topic, sizeof(topic) - 2));
}
END_TEST

START_TEST(test_level_limits) {
  char buf[4 * (QRPCI_TOPIC_MAX_LEVELS + 1)];
  size_t n = repeat_levels(buf, "a", QRPCI_TOPIC_MAX_LEVELS);
  ck_assert_int_eq(qrpci_topic_check(buf, n), 0);
  ck_assert_int_eq(qrpci_pattern_check(buf, n), 0);
  n = repeat_levels(buf, "a", QRPCI_TOPIC_MAX_LEVELS + 1);
  ck_assert_int_eq(qrpci_topic_check(buf, n), QRPC_EINVAL);
  ck_assert_int_eq(qrpci_pattern_check(buf, n), QRPC_EINVAL);
  n = repeat_levels(buf, "*", QRPCI_TOPIC_MAX_LEVELS);
  ck_assert_int_eq(qrpci_pattern_check(buf, n), 0);
  n = repeat_levels(buf, "*", QRPCI_TOPIC_MAX_LEVELS + 1);
  ck_assert_int_eq(qrpci_pattern_check(buf, n), QRPC_EINVAL);
  /* 32 stars match exactly the 32-level topic. */
  char topic[4 * (QRPCI_TOPIC_MAX_LEVELS + 1)];
  size_t tn = repeat_levels(topic, "bb", QRPCI_TOPIC_MAX_LEVELS);
  n = repeat_levels(buf, "*", QRPCI_TOPIC_MAX_LEVELS);
  ck_assert(qrpci_pattern_match(buf, n, topic, tn));
  ck_assert(!qrpci_pattern_match(buf, n, topic, tn - 3));
}
END_TEST

/* ---- covering ---------------------------------------------------------- */

static const struct {
  const char *outer;
  const char *inner;
  int covers;
} covers[] = {
    {">", "a", 1},
    {">", "*", 1},
    {">", ">", 1},
    {">", "a.b.>", 1},
    {"a.>", "a.>", 1},
    {"a.>", "a.b", 1},
    {"a.>", "a.*", 1},
    {"a.>", "a.*.>", 1},
    {"a.>", "a", 0},
    {"a.>", ">", 0},
    {"a.>", "*.b", 0},
    {"a.>", "b.>", 0},
    {"*", "a", 1},
    {"*", "*", 1},
    {"*", ">", 0},
    {"*", "a.b", 0},
    {"*.>", "a.>", 1},
    {"*.>", "*.*", 1},
    {"*.>", ">", 0},
    {"*.*", "*.>", 0},
    {"a.*", "a.b", 1},
    {"a.*", "a.*", 1},
    {"a.*", "a.>", 0},
    {"a.*", "*.b", 0},
    {"a.b", "a.b", 1},
    {"a.b", "a.*", 0},
    {"a.b", "a.bc", 0},
    {"a.b", "a.b.c", 0},
    {"a.b.c", "a.b", 0},
    {"chat.>", "chat.room.*", 1},
    {"game.*.state", "game.7.state", 1},
    {"game.*.state", "game.>", 0},
};

START_TEST(test_covers_table) {
  const char *o = covers[_i].outer, *in = covers[_i].inner;
  ck_assert_msg(covers_s(o, in) == covers[_i].covers, "'%s' over '%s': want %d",
                o, in, covers[_i].covers);
}
END_TEST

/* A small universe: patterns of 1..3 levels over {a, b, *} with or without
 * a closing ">", and topics of 1..4 levels over {a, b, x}. A topic one
 * level longer than any pattern and a level no pattern names are enough to
 * tell any two of these patterns apart. */
#define MAX_UNIVERSE 256

typedef struct universe {
  char pats[MAX_UNIVERSE][16];
  size_t n_pats;
  char topics[MAX_UNIVERSE][16];
  size_t n_topics;
} universe;

static void spell(char *out, const char *alphabet, size_t base, size_t code,
                  size_t levels) {
  size_t n = 0;
  for (size_t i = 0; i < levels; i++) {
    if (i) out[n++] = '.';
    out[n++] = alphabet[code % base];
    code /= base;
  }
  out[n] = '\0';
}

static void make_universe(universe *u) {
  u->n_pats = u->n_topics = 0;
  for (size_t levels = 1, count = 3; levels <= 3; levels++, count *= 3) {
    for (size_t c = 0; c < count; c++) {
      spell(u->pats[u->n_pats++], "ab*", 3, c, levels);
      /* The same with its last level replaced by ">". */
      if (c < count / 3) {
        char *p = u->pats[u->n_pats++];
        spell(p, "ab*", 3, c, levels);
        p[strlen(p) - 1] = '>';
      }
    }
  }
  for (size_t levels = 1, count = 3; levels <= 4; levels++, count *= 3)
    for (size_t c = 0; c < count; c++)
      spell(u->topics[u->n_topics++], "abx", 3, c, levels);
}

START_TEST(test_covers_is_inclusion) {
  universe u;
  make_universe(&u);
  ck_assert_uint_eq(u.n_topics, 3 + 9 + 27 + 81);
  for (size_t i = 0; i < u.n_pats; i++)
    ck_assert_int_eq(qrpci_pattern_check(u.pats[i], strlen(u.pats[i])), 0);
  for (size_t o = 0; o < u.n_pats; o++) {
    for (size_t in = 0; in < u.n_pats; in++) {
      int included = 1;
      for (size_t t = 0; t < u.n_topics && included; t++)
        if (match_s(u.pats[in], u.topics[t]) &&
            !match_s(u.pats[o], u.topics[t]))
          included = 0;
      ck_assert_msg(covers_s(u.pats[o], u.pats[in]) == included,
                    "'%s' over '%s': want %d", u.pats[o], u.pats[in], included);
    }
  }
}
END_TEST

/* ---- the tree ---------------------------------------------------------- */

typedef struct test_sub {
  qrpci_topic_sub sub;
  size_t id;
  unsigned calls;
} test_sub;

static void count_call(qrpci_topic_sub *sub, void *ctx) {
  test_sub *s = QRPCI_CONTAINER_OF(sub, test_sub, sub);
  s->calls++;
  (*(size_t *)ctx)++;
}

static size_t tree_match(qrpci_topic_tree *t, const char *topic) {
  size_t seen = 0;
  size_t n = qrpci_topic_tree_match(t, topic, strlen(topic), count_call, &seen);
  ck_assert_uint_eq(n, seen);
  return n;
}

static qrpci_topic_tree *new_tree(void) {
  qrpci_topic_tree *t = NULL;
  ck_assert_int_eq(qrpci_topic_tree_new(&t), 0);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 0);
  return t;
}

static void add(qrpci_topic_tree *t, const char *pat, test_sub *s) {
  ck_assert_int_eq(qrpci_topic_tree_add(t, pat, strlen(pat), &s->sub), 0);
}

/* Every pattern of the universe twice, against every topic: each sub is
 * called exactly once when its pattern matches and never otherwise, also
 * after half the subs are gone. */
START_TEST(test_tree_agrees_with_match) {
  universe u;
  make_universe(&u);
  test_sub *subs = calloc(2 * u.n_pats, sizeof(*subs));
  qrpci_topic_tree *t = new_tree();
  for (size_t i = 0; i < 2 * u.n_pats; i++)
    add(t, u.pats[i % u.n_pats], &subs[i]);
  for (int round = 0; round < 2; round++) {
    for (size_t k = 0; k < u.n_topics; k++) {
      for (size_t i = 0; i < 2 * u.n_pats; i++) subs[i].calls = 0;
      size_t want = 0;
      tree_match(t, u.topics[k]);
      for (size_t i = 0; i < 2 * u.n_pats; i++) {
        int linked = subs[i].sub.node != NULL;
        unsigned expect = linked && match_s(u.pats[i % u.n_pats], u.topics[k]);
        want += expect;
        ck_assert_msg(subs[i].calls == expect, "'%s' on '%s': %u calls",
                      u.pats[i % u.n_pats], u.topics[k], subs[i].calls);
      }
      ck_assert_uint_eq(tree_match(t, u.topics[k]), want);
    }
    /* Every other sub goes: shared patterns keep their nodes. */
    for (size_t i = 0; i < 2 * u.n_pats; i += 2)
      qrpci_topic_tree_remove(t, &subs[i].sub);
  }
  for (size_t i = 0; i < 2 * u.n_pats; i++)
    qrpci_topic_tree_remove(t, &subs[i].sub);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 0);
  ck_assert_uint_eq(tree_match(t, "a"), 0);
  qrpci_topic_tree_free(t);
  free(subs);
}
END_TEST

START_TEST(test_tree_prunes) {
  qrpci_topic_tree *t = new_tree();
  test_sub s[5];
  memset(s, 0, sizeof(s));
  add(t, "a.b.c", &s[0]);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 3);
  add(t, "a.b.d", &s[1]);
  add(t, "a.*", &s[2]);
  add(t, "a.>", &s[3]);
  add(t, "a.b", &s[4]);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 6);
  ck_assert_uint_eq(tree_match(t, "a.b"), 3); /* a.b, a.*, a.> */
  ck_assert_uint_eq(tree_match(t, "a.b.c"), 2);
  qrpci_topic_tree_remove(t, &s[0].sub);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 5);
  qrpci_topic_tree_remove(t, &s[0].sub); /* not linked any more: no-op */
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 5);
  qrpci_topic_tree_remove(t, &s[4].sub); /* "b" keeps its child "d" */
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 5);
  ck_assert_uint_eq(tree_match(t, "a.b"), 2);
  qrpci_topic_tree_remove(t, &s[1].sub);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 3);
  qrpci_topic_tree_remove(t, &s[3].sub);
  qrpci_topic_tree_remove(t, &s[2].sub);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 0);
  /* A removed sub is zeroed and may be added again. */
  ck_assert_ptr_null(s[2].sub.node);
  add(t, "x", &s[2]);
  ck_assert_uint_eq(tree_match(t, "x"), 1);
  qrpci_topic_tree_remove(t, &s[2].sub);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 0);
  qrpci_topic_tree_free(t);
}
END_TEST

#define N_TOPICS 10000

START_TEST(test_tree_many_topics) {
  qrpci_topic_tree *t = new_tree();
  test_sub *subs = calloc(N_TOPICS, sizeof(*subs));
  char topic[64];
  for (size_t i = 0; i < N_TOPICS; i++) {
    snprintf(topic, sizeof(topic), "game.lobby.%zu", i);
    subs[i].id = i;
    add(t, topic, &subs[i]);
  }
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 2 + N_TOPICS);
  test_sub all = {0};
  add(t, "game.lobby.*", &all);
  for (size_t i = 0; i < N_TOPICS; i++) {
    snprintf(topic, sizeof(topic), "game.lobby.%zu", i);
    ck_assert_uint_eq(tree_match(t, topic), 2);
    ck_assert_uint_eq(subs[i].calls, 1);
  }
  ck_assert_uint_eq(all.calls, N_TOPICS);
  ck_assert_uint_eq(tree_match(t, "game.lobby.10000"), 1);
  ck_assert_uint_eq(tree_match(t, "game.lobby.1.2"), 0);
  /* Half go, in an order unlike the insertion order. */
  for (size_t i = 0; i < N_TOPICS; i += 2)
    qrpci_topic_tree_remove(t, &subs[(i * 7919) % N_TOPICS].sub);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 3 + N_TOPICS / 2);
  for (size_t i = 0; i < N_TOPICS; i++) {
    snprintf(topic, sizeof(topic), "game.lobby.%zu", i);
    ck_assert_uint_eq(tree_match(t, topic), 1 + (subs[i].sub.node != NULL));
  }
  for (size_t i = 0; i < N_TOPICS; i++)
    qrpci_topic_tree_remove(t, &subs[i].sub);
  qrpci_topic_tree_remove(t, &all.sub);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 0);
  qrpci_topic_tree_free(t);
  free(subs);
}
END_TEST

#define N_SUBS 5000

START_TEST(test_tree_many_subs_one_pattern) {
  qrpci_topic_tree *t = new_tree();
  test_sub *subs = calloc(N_SUBS, sizeof(*subs));
  for (size_t i = 0; i < N_SUBS; i++) add(t, "chat.room", &subs[i]);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 2);
  ck_assert_uint_eq(tree_match(t, "chat.room"), N_SUBS);
  for (size_t i = 0; i < N_SUBS; i++) ck_assert_uint_eq(subs[i].calls, 1);
  ck_assert_uint_eq(tree_match(t, "chat.room2"), 0);
  for (size_t i = 0; i < N_SUBS; i += 3)
    qrpci_topic_tree_remove(t, &subs[i].sub);
  ck_assert_uint_eq(tree_match(t, "chat.room"), N_SUBS - (N_SUBS + 2) / 3);
  for (size_t i = 0; i < N_SUBS; i++) qrpci_topic_tree_remove(t, &subs[i].sub);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 0);
  qrpci_topic_tree_free(t);
  free(subs);
}
END_TEST

START_TEST(test_tree_add_errors) {
  qrpci_topic_tree *t = new_tree();
  test_sub s = {0}, other = {0};
  add(t, "a.b", &other);
  for (size_t i = 0; i < sizeof(bad_patterns) / sizeof(bad_patterns[0]); i++) {
    bytes b = bad_patterns[i];
    ck_assert_int_eq(qrpci_topic_tree_add(t, b.s, b.len, &s.sub), QRPC_EINVAL);
    ck_assert_ptr_null(s.sub.node);
  }
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 2);
  /* A sub lies in one place only. */
  ck_assert_int_eq(qrpci_topic_tree_add(t, "c", 1, &other.sub), QRPC_EINVAL);
  ck_assert_uint_eq(qrpci_topic_tree_node_count(t), 2);
  ck_assert_uint_eq(tree_match(t, "a.b"), 1);
  qrpci_topic_tree_remove(t, &other.sub);
  qrpci_topic_tree_free(t);
}
END_TEST

/* Fails each allocation of an add in turn: every failure leaves the tree
 * as it was (and, in a sanitizer build, nothing leaked), until the add
 * finally succeeds. */
START_TEST(test_tree_add_enomem) {
  static const char *const pats[] = {"a", "a.b.c.d.e", "a.b.x.>", "q.*.*.r"};
  qrpci_topic_tree *t = new_tree();
  test_sub subs[4];
  memset(subs, 0, sizeof(subs));
  for (size_t p = 0; p < 4; p++) {
    size_t before = qrpci_topic_tree_node_count(t);
    int rv = QRPC_ENOMEM;
    long k;
    for (k = 0; rv == QRPC_ENOMEM; k++) {
      qt_alloc_fail_after(k);
      rv = qrpci_topic_tree_add(t, pats[p], strlen(pats[p]), &subs[p].sub);
      qt_alloc_fail_after(-1);
      if (rv == QRPC_ENOMEM) {
        ck_assert_uint_eq(qrpci_topic_tree_node_count(t), before);
        ck_assert_ptr_null(subs[p].sub.node);
      }
    }
    ck_assert_int_eq(rv, 0);
    ck_assert_int_gt(k, 1); /* at least one failure was seen */
  }
  ck_assert_uint_eq(tree_match(t, "a.b.c.d.e"), 1);
  ck_assert_uint_eq(tree_match(t, "a.b.x.y"), 1);
  ck_assert_uint_eq(tree_match(t, "q.1.2.r"), 1);
  /* Creating a tree fails cleanly too. */
  qrpci_topic_tree *t2 = NULL;
  for (long k = 0; k < 2; k++) {
    qt_alloc_fail_after(k);
    int rv = qrpci_topic_tree_new(&t2);
    qt_alloc_fail_after(-1);
    ck_assert_int_eq(rv, QRPC_ENOMEM);
    ck_assert_ptr_null(t2);
  }
  /* Freed with subs still linked: the nodes go, the subs are not touched. */
  qrpci_topic_tree_free(t);
}
END_TEST

/* Topics the caller should have refused do not break the walk. */
START_TEST(test_tree_unchecked_topics) {
  qrpci_topic_tree *t = new_tree();
  test_sub s[3];
  memset(s, 0, sizeof(s));
  add(t, ">", &s[0]);
  add(t, "*", &s[1]);
  add(t, "*.*", &s[2]);
  char buf[QRPCI_TOPIC_MAX + 2];
  size_t n = repeat_levels(buf, "a", QRPCI_TOPIC_MAX_LEVELS + 1);
  ck_assert_uint_eq(qrpci_topic_tree_match(t, buf, n, count_call, &(size_t){0}),
                    0);
  memset(buf, 'a', sizeof(buf));
  ck_assert_uint_eq(qrpci_topic_tree_match(t, buf, QRPCI_TOPIC_MAX + 1,
                                           count_call, &(size_t){0}),
                    0);
  ck_assert_uint_eq(qrpci_topic_tree_match(t, "", 0, count_call, &(size_t){0}),
                    0);
  /* A literal "*" level reaches the "*" node once, not twice. */
  ck_assert_uint_eq(tree_match(t, "*"), 2);
  ck_assert_uint_eq(s[1].calls, 1);
  qrpci_topic_tree_free(t);
}
END_TEST

static Suite *topic_suite(void) {
  Suite *s = suite_create("topic");
  TCase *tc = tcase_create("syntax");
  tcase_add_loop_test(tc, test_match_table, 0, (int)N_MATCHES);
  tcase_add_loop_test(tc, test_bad_topics, 0,
                      (int)(sizeof(bad_topics) / sizeof(bad_topics[0])));
  tcase_add_loop_test(tc, test_bad_patterns, 0,
                      (int)(sizeof(bad_patterns) / sizeof(bad_patterns[0])));
  tcase_add_loop_test(tc, test_good_patterns, 0,
                      (int)(sizeof(good_patterns) / sizeof(good_patterns[0])));
  tcase_add_test(tc, test_topic_is_pattern);
  tcase_add_test(tc, test_problem_phrases);
  tcase_add_test(tc, test_length_limits);
  tcase_add_test(tc, test_level_limits);
  tcase_add_loop_test(tc, test_covers_table, 0,
                      (int)(sizeof(covers) / sizeof(covers[0])));
  tcase_add_test(tc, test_covers_is_inclusion);
  suite_add_tcase(s, tc);
  tc = tcase_create("tree");
  tcase_add_test(tc, test_tree_agrees_with_match);
  tcase_add_test(tc, test_tree_prunes);
  tcase_add_test(tc, test_tree_many_topics);
  tcase_add_test(tc, test_tree_many_subs_one_pattern);
  tcase_add_test(tc, test_tree_add_errors);
  tcase_add_test(tc, test_tree_add_enomem);
  tcase_add_test(tc, test_tree_unchecked_topics);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(topic_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
