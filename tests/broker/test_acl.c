/* Broker ACL files: parsing, every error with its line, and what each
 * identity may publish and subscribe to. */
#include <check.h>
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "alloc_fail.h"
#include "broker/acl.h"
#include "qrpc/error.h"

/* ---- helpers ----------------------------------------------------------- */

static const char example[] =
    "# comments start with '#'; blank lines and leading whitespace are "
    "ignored\n"
    "token s3cret-alice            # starts the section of one token\n"
    "  publish chat.> game.*.state # publish patterns: one or more\n"
    "  subscribe chat.>            # subscribe patterns\n"
    "\n"
    "token bob\n"
    "anonymous                     # starts the section of tokenless ones\n"
    "  subscribe public.>\n";

/* Parses text from an exactly sized heap copy without a NUL, so a
 * sanitizer build catches a read past len. */
static int parse(const char *text, size_t len, qrpci_acl **out, char *err,
                 size_t errlen) {
  char *copy = malloc(len ? len : 1);
  memcpy(copy, text, len);
  int rv = qrpci_acl_parse(copy, len, "t.acl", out, err, errlen);
  free(copy);
  return rv;
}

static qrpci_acl *parse_ok(const char *text) {
  qrpci_acl *acl = NULL;
  char err[256];
  int rv = parse(text, strlen(text), &acl, err, sizeof(err));
  ck_assert_msg(rv == 0, "parse failed: %s", err);
  ck_assert_str_eq(err, "");
  return acl;
}

static const qrpci_acl_identity *lookup(const qrpci_acl *acl, const char *tok) {
  return qrpci_acl_lookup(acl, tok, strlen(tok));
}

static int may_pub(const qrpci_acl_identity *id, const char *topic) {
  return qrpci_acl_may_publish(id, topic, strlen(topic));
}

static int may_sub(const qrpci_acl_identity *id, const char *pattern) {
  return qrpci_acl_may_subscribe(id, pattern, strlen(pattern));
}

/* ---- parsing ----------------------------------------------------------- */

START_TEST(test_parse_example) {
  qrpci_acl *acl = parse_ok(example);
  ck_assert_uint_eq(qrpci_acl_count(acl), 3);
  const qrpci_acl_identity *alice = lookup(acl, "s3cret-alice");
  const qrpci_acl_identity *bob = lookup(acl, "bob");
  const qrpci_acl_identity *anon = qrpci_acl_anonymous(acl);
  ck_assert_ptr_nonnull(alice);
  ck_assert_ptr_nonnull(bob);
  ck_assert_ptr_nonnull(anon);
  ck_assert_ptr_ne(alice, bob);
  ck_assert_ptr_ne(alice, anon);
  ck_assert(may_pub(alice, "chat.room"));
  ck_assert(may_sub(alice, "chat.>"));
  ck_assert(may_sub(anon, "public.news"));
  ck_assert(!may_pub(anon, "public.news"));
  ck_assert(!may_pub(bob, "chat.room")); /* a section without permissions */
  ck_assert(!may_sub(bob, "chat.room"));
  qrpci_acl_free(acl);
}
END_TEST

START_TEST(test_parse_empty_and_comments) {
  static const char *const texts[] = {
      "", "\n", "# only a comment", "   \t  \n\n# x\n  # y  \n", "\r\n",
  };
  for (size_t i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
    qrpci_acl *acl = parse_ok(texts[i]);
    ck_assert_uint_eq(qrpci_acl_count(acl), 0);
    ck_assert_ptr_null(qrpci_acl_anonymous(acl));
    ck_assert_ptr_null(lookup(acl, "x"));
    qrpci_acl_free(acl);
  }
}
END_TEST

/* CRLF endings, tabs, repeated keywords, comments right after a word and a
 * last line without '\n'. */
START_TEST(test_parse_layout) {
  qrpci_acl *acl = parse_ok("\ttoken\ta#comment\r\n"
                            "publish x.*\r\n"
                            "publish   y   z.>#w.>\r\n"
                            "subscribe  x.>\t");
  const qrpci_acl_identity *a = lookup(acl, "a");
  ck_assert_ptr_nonnull(a);
  ck_assert(may_pub(a, "x.1"));
  ck_assert(may_pub(a, "y"));
  ck_assert(may_pub(a, "z.1.2"));
  ck_assert(!may_pub(a, "w.1"));
  ck_assert(may_sub(a, "x.1"));
  ck_assert(!may_sub(a, "y"));
  qrpci_acl_free(acl);
}
END_TEST

/* Each file breaks one rule; err must be exactly the message. */
static const struct {
  const char *text;
  const char *err;
} bad_files[] = {
    {"publish a\n", "t.acl:1: publish before any token or anonymous line"},
    {"\n# x\nsubscribe a\n",
     "t.acl:3: subscribe before any token or anonymous line"},
    {"token a\nfoo x\n", "t.acl:2: unknown keyword 'foo'"},
    {"Token a\n", "t.acl:1: unknown keyword 'Token'"},
    {"token a\n\x1b[2Jx\n", "t.acl:2: unknown keyword '\\x1b[2Jx'"},
    {"token a\n\ntoken b\ntoken a\n",
     "t.acl:4: duplicate token (first at line 1)"},
    {"anonymous\ntoken a\nanonymous\n",
     "t.acl:3: duplicate anonymous section (first at line 1)"},
    {"anonymous x\n", "t.acl:1: anonymous takes no value"},
    {"token\n", "t.acl:1: token needs a value"},
    {"token # no value\n", "t.acl:1: token needs a value"},
    {"token my secret\n",
     "t.acl:1: token takes one value (a token has no spaces)"},
    {"token caf\xc3\xa9\n", "t.acl:1: token is not 1..256 bytes of printable "
                            "ASCII without '#'"},
    {"token a\x01\n", "t.acl:1: token is not 1..256 bytes of printable ASCII "
                      "without '#'"},
    {"token a\npublish\n", "t.acl:2: publish needs at least one pattern"},
    {"token a\nsubscribe   # none\n",
     "t.acl:2: subscribe needs at least one pattern"},
    {"token a\npublish a.> a..b\n", "t.acl:2: invalid pattern 'a..b'"},
    {"token a\nsubscribe a.>.b\n", "t.acl:2: invalid pattern 'a.>.b'"},
    {"token a\nsubscribe a*\n", "t.acl:2: invalid pattern 'a*'"},
    {"token a\npublish chat.#room\n", "t.acl:2: invalid pattern 'chat.'"},
    {"token a\npublish a\x7f\n", "t.acl:2: invalid pattern 'a\\x7f'"},
    {"token a\r\npublish a\rb\r\n", "t.acl:2: invalid pattern 'a\\x0db'"},
};

START_TEST(test_parse_errors) {
  const char *text = bad_files[_i].text;
  static char sentinel;
  qrpci_acl *const before = (qrpci_acl *)(void *)&sentinel;
  qrpci_acl *acl = before; /* must stay untouched */
  char err[256];
  ck_assert_int_eq(parse(text, strlen(text), &acl, err, sizeof(err)),
                   QRPC_EINVAL);
  ck_assert_str_eq(err, bad_files[_i].err);
  ck_assert_ptr_eq(acl, before);
}
END_TEST

START_TEST(test_token_limits) {
  char text[16 + QRPCI_ACL_TOKEN_MAX + 2];
  char tok[QRPCI_ACL_TOKEN_MAX + 2];
  memset(tok, 'k', sizeof(tok));
  tok[QRPCI_ACL_TOKEN_MAX] = '\0';
  snprintf(text, sizeof(text), "token %s\n", tok);
  qrpci_acl *acl = parse_ok(text);
  ck_assert_ptr_nonnull(lookup(acl, tok));
  qrpci_acl_free(acl);
  tok[QRPCI_ACL_TOKEN_MAX] = 'k';
  tok[QRPCI_ACL_TOKEN_MAX + 1] = '\0';
  snprintf(text, sizeof(text), "token %s\n", tok);
  char err[256];
  ck_assert_int_eq(parse(text, strlen(text), &acl, err, sizeof(err)),
                   QRPC_EINVAL);
  ck_assert_str_eq(err, "t.acl:1: token is not 1..256 bytes of printable "
                        "ASCII without '#'");
  /* The error never quotes the secret. */
  ck_assert_ptr_null(strstr(err, "kkkk"));
}
END_TEST

START_TEST(test_line_limit) {
  size_t max = QRPCI_ACL_LINE_MAX;
  char *text = malloc(2 * max + 16);
  /* A comment line of exactly the limit, then one a byte longer. */
  size_t n = 0;
  text[n++] = '#';
  memset(text + n, 'c', max - 1);
  n += max - 1;
  text[n++] = '\n';
  qrpci_acl *acl = NULL;
  char err[256];
  ck_assert_int_eq(parse(text, n, &acl, err, sizeof(err)), 0);
  qrpci_acl_free(acl);
  memcpy(text + n, "token a", 7);
  memset(text + n + 7, ' ', max - 6);
  n += max + 1;
  ck_assert_int_eq(parse(text, n, &acl, err, sizeof(err)), QRPC_EINVAL);
  ck_assert_str_eq(err, "t.acl:2: line longer than 4096 bytes");
  /* The same line with '\n' is refused as well: the limit is the line's. */
  text[n++] = '\n';
  ck_assert_int_eq(parse(text, n, &acl, err, sizeof(err)), QRPC_EINVAL);
  free(text);
}
END_TEST

START_TEST(test_error_buffer) {
  qrpci_acl *acl = NULL;
  char err[8];
  memset(err, 'z', sizeof(err));
  ck_assert_int_eq(parse("publish a", 9, &acl, err, sizeof(err)), QRPC_EINVAL);
  ck_assert_str_eq(err, "t.acl:1"); /* truncated, still terminated */
  ck_assert_int_eq(parse("publish a", 9, &acl, NULL, 0), QRPC_EINVAL);
  ck_assert_int_eq(parse("publish a", 9, &acl, err, 0), QRPC_EINVAL);
  char full[128];
  ck_assert_int_eq(qrpci_acl_parse("x", 1, NULL, &acl, full, sizeof(full)),
                   QRPC_EINVAL);
  ck_assert_str_eq(full, "acl:1: unknown keyword 'x'");
  /* A pattern longer than the quote limit is cut with "...". */
  char text[400];
  snprintf(text, sizeof(text), "token a\npublish %0200d.\n", 0);
  ck_assert_int_eq(parse(text, strlen(text), &acl, full, sizeof(full)),
                   QRPC_EINVAL);
  ck_assert_ptr_nonnull(strstr(full, "...'"));
  ck_assert_ptr_eq(acl, NULL);
}
END_TEST

/* Fails each allocation of a parse in turn: each gives QRPC_ENOMEM with a
 * message, and nothing leaks (checked by LeakSanitizer in sanitizer
 * builds), until the parse succeeds. */
START_TEST(test_parse_enomem) {
  /* Enough sections and patterns to make the arrays grow. */
  char text[2048];
  size_t n = 0;
  for (int i = 0; i < 10; i++)
    n += (size_t)snprintf(text + n, sizeof(text) - n,
                          "token t%d\npublish a b c d e f.>\n", i);
  int rv = QRPC_ENOMEM;
  long k;
  qrpci_acl *acl = NULL;
  char err[128];
  for (k = 0; rv == QRPC_ENOMEM; k++) {
    qt_alloc_fail_after(k);
    rv = qrpci_acl_parse(text, n, "t.acl", &acl, err, sizeof(err));
    qt_alloc_fail_after(-1);
    if (rv == QRPC_ENOMEM) {
      ck_assert_ptr_null(acl);
      ck_assert_ptr_nonnull(strstr(err, "out of memory"));
    }
  }
  ck_assert_int_eq(rv, 0);
  ck_assert_int_gt(k, 4);
  ck_assert_uint_eq(qrpci_acl_count(acl), 10);
  ck_assert(may_pub(lookup(acl, "t9"), "f.x"));
  qrpci_acl_free(acl);
}
END_TEST

/* ---- permissions ------------------------------------------------------- */

static const char perms[] = "token alice\n"
                            "publish chat.> game.*.state\n"
                            "subscribe chat.>\n"
                            "subscribe game.*.state news\n"
                            "token alice2\n"
                            "publish >\n"
                            "subscribe >\n"
                            "anonymous\n"
                            "subscribe public.>\n";

static const struct {
  const char *token; /* NULL: the anonymous section */
  const char *topic;
  int publish;
} pub_rules[] = {
    {"alice", "chat.room", 1},    {"alice", "chat.room.1", 1},
    {"alice", "chat", 0},         {"alice", "chatroom", 0},
    {"alice", "game.7.state", 1}, {"alice", "game.7.8.state", 0},
    {"alice", "game.7.stat", 0},  {"alice", "news", 0},
    {"alice", "chat.*", 0}, /* not a topic */
    {"alice", "chat..x", 0},      {"alice2", "anything.at.all", 1},
    {NULL, "public.news", 0},     {NULL, "chat.room", 0},
};

static const struct {
  const char *token;
  const char *pattern;
  int subscribe;
} sub_rules[] = {
    {"alice", "chat.room", 1},
    {"alice", "chat.*", 1},
    {"alice", "chat.>", 1},
    {"alice", "chat.*.x", 1},
    {"alice", "chat", 0},
    {"alice", ">", 0},
    {"alice", "*.room", 0},
    {"alice", "game.*.state", 1},
    {"alice", "game.1.state", 1},
    {"alice", "game.>", 0},
    {"alice", "game.*.*", 0},
    {"alice", "news", 1},
    {"alice", "news.x", 0},
    {"alice", "chat..x", 0}, /* not a pattern */
    {"alice2", ">", 1},
    {NULL, "public.x", 1},
    {NULL, "public.>", 1},
    {NULL, "public", 0},
    {NULL, ">", 0},
};

static const qrpci_acl_identity *identity(const qrpci_acl *acl,
                                          const char *token) {
  const qrpci_acl_identity *id =
      token ? lookup(acl, token) : qrpci_acl_anonymous(acl);
  ck_assert_ptr_nonnull(id);
  return id;
}

START_TEST(test_publish_rules) {
  qrpci_acl *acl = parse_ok(perms);
  const qrpci_acl_identity *id = identity(acl, pub_rules[_i].token);
  ck_assert_msg(may_pub(id, pub_rules[_i].topic) == pub_rules[_i].publish,
                "%s publish '%s'", pub_rules[_i].token, pub_rules[_i].topic);
  qrpci_acl_free(acl);
}
END_TEST

START_TEST(test_subscribe_rules) {
  qrpci_acl *acl = parse_ok(perms);
  const qrpci_acl_identity *id = identity(acl, sub_rules[_i].token);
  ck_assert_msg(may_sub(id, sub_rules[_i].pattern) == sub_rules[_i].subscribe,
                "%s subscribe '%s'", sub_rules[_i].token,
                sub_rules[_i].pattern);
  qrpci_acl_free(acl);
}
END_TEST

START_TEST(test_unknown_tokens) {
  qrpci_acl *acl = parse_ok(perms);
  ck_assert_ptr_ne(lookup(acl, "alice"), lookup(acl, "alice2"));
  static const char *const unknown[] = {"alic", "alicE", "alice3", "alice ",
                                        "bob"};
  for (size_t i = 0; i < sizeof(unknown) / sizeof(unknown[0]); i++)
    ck_assert_ptr_null(lookup(acl, unknown[i]));
  ck_assert_ptr_null(qrpci_acl_lookup(acl, "alice", 0));
  char big[QRPCI_ACL_TOKEN_MAX + 10];
  memset(big, 'a', sizeof(big));
  ck_assert_ptr_null(qrpci_acl_lookup(acl, big, sizeof(big)));
  /* The token is compared with its length: a NUL does not end it. */
  ck_assert_ptr_null(qrpci_acl_lookup(acl, "alice\0", 6));
  /* No identity, no permission. */
  ck_assert(!may_pub(NULL, "chat.room"));
  ck_assert(!may_sub(NULL, "chat.room"));
  qrpci_acl_free(acl);
}
END_TEST

START_TEST(test_no_anonymous_section) {
  qrpci_acl *acl = parse_ok("token a\npublish >\n");
  ck_assert_ptr_null(qrpci_acl_anonymous(acl));
  ck_assert_uint_eq(qrpci_acl_count(acl), 1);
  qrpci_acl_free(acl);
  qrpci_acl_free(NULL);
}
END_TEST

/* ---- loading ----------------------------------------------------------- */

/* Writes text to a fresh file in the working directory (the test's build
 * directory) and returns its name in path. */
static void write_file(char *path, const char *text) {
  strcpy(path, "test_acl_XXXXXX");
  int fd = mkstemp(path);
  ck_assert_int_ge(fd, 0);
  size_t len = strlen(text);
  ck_assert_int_eq(write(fd, text, len), (ssize_t)len);
  close(fd);
}

START_TEST(test_load) {
  char path[32];
  write_file(path, example);
  qrpci_acl *acl = NULL;
  char err[256];
  ck_assert_int_eq(qrpci_acl_load(path, &acl, err, sizeof(err)), 0);
  ck_assert_uint_eq(qrpci_acl_count(acl), 3);
  ck_assert(may_pub(lookup(acl, "s3cret-alice"), "game.1.state"));
  qrpci_acl_free(acl);
  unlink(path);
}
END_TEST

START_TEST(test_load_errors) {
  qrpci_acl *acl = NULL;
  char err[256], want[256];
  const char *missing = "no-such-dir/missing.acl";
  ck_assert_int_eq(qrpci_acl_load(missing, &acl, err, sizeof(err)),
                   QRPC_ESYSTEM);
  snprintf(want, sizeof(want), "%s: %s", missing, strerror(ENOENT));
  ck_assert_str_eq(err, want);
  ck_assert_ptr_null(acl);
  /* A directory opens but cannot be read. */
  ck_assert_int_eq(qrpci_acl_load(".", &acl, err, sizeof(err)), QRPC_ESYSTEM);
  snprintf(want, sizeof(want), ".: %s", strerror(EISDIR));
  ck_assert_str_eq(err, want);
  /* A parse error is named after the path. */
  char path[32];
  write_file(path, "token a\n\nsubscribe a..b\n");
  ck_assert_int_eq(qrpci_acl_load(path, &acl, err, sizeof(err)), QRPC_EINVAL);
  snprintf(want, sizeof(want), "%s:3: invalid pattern 'a..b'", path);
  ck_assert_str_eq(err, want);
  ck_assert_ptr_null(acl);
  unlink(path);
}
END_TEST

/* A file larger than the first read buffer is read whole. */
START_TEST(test_load_large) {
  size_t cap = 64 * 1024;
  char *text = malloc(cap);
  size_t n = 0;
  for (int i = 0; n + 64 < cap; i++)
    n += (size_t)snprintf(text + n, cap - n, "token tok-%05d\npublish t.%d\n",
                          i, i);
  char path[32];
  write_file(path, text);
  qrpci_acl *acl = NULL;
  char err[256];
  ck_assert_int_eq(qrpci_acl_load(path, &acl, err, sizeof(err)), 0);
  ck_assert_uint_gt(qrpci_acl_count(acl), 1000);
  ck_assert(may_pub(lookup(acl, "tok-01000"), "t.1000"));
  ck_assert(!may_pub(lookup(acl, "tok-01000"), "t.1001"));
  qrpci_acl_free(acl);
  unlink(path);
  free(text);
}
END_TEST

static Suite *acl_suite(void) {
  Suite *s = suite_create("acl");
  TCase *tc = tcase_create("parse");
  tcase_add_test(tc, test_parse_example);
  tcase_add_test(tc, test_parse_empty_and_comments);
  tcase_add_test(tc, test_parse_layout);
  tcase_add_loop_test(tc, test_parse_errors, 0,
                      (int)(sizeof(bad_files) / sizeof(bad_files[0])));
  tcase_add_test(tc, test_token_limits);
  tcase_add_test(tc, test_line_limit);
  tcase_add_test(tc, test_error_buffer);
  tcase_add_test(tc, test_parse_enomem);
  suite_add_tcase(s, tc);
  tc = tcase_create("permissions");
  tcase_add_loop_test(tc, test_publish_rules, 0,
                      (int)(sizeof(pub_rules) / sizeof(pub_rules[0])));
  tcase_add_loop_test(tc, test_subscribe_rules, 0,
                      (int)(sizeof(sub_rules) / sizeof(sub_rules[0])));
  tcase_add_test(tc, test_unknown_tokens);
  tcase_add_test(tc, test_no_anonymous_section);
  suite_add_tcase(s, tc);
  tc = tcase_create("load");
  tcase_add_test(tc, test_load);
  tcase_add_test(tc, test_load_errors);
  tcase_add_test(tc, test_load_large);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(acl_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
