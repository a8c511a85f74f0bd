/* Broker ACL files: parsing, every error with its line, what each
 * identity may publish and subscribe to, and which cert section a
 * certificate identity selects. */
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
    {"publish a\n",
     "t.acl:1: publish before any token, cert or anonymous line"},
    {"\n# x\nsubscribe a\n",
     "t.acl:3: subscribe before any token, cert or anonymous line"},
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
    {"token a\npublish a.> a..b\n",
     "t.acl:2: invalid pattern 'a..b': "
     "an empty level (a dot at the start, at the end or after another)"},
    {"token a\nsubscribe a.>.b\n",
     "t.acl:2: invalid pattern 'a.>.b': '>' may only be "
     "the last level"},
    {"token a\nsubscribe a*\n", "t.acl:2: invalid pattern 'a*': '*' and '>' "
                                "must be a whole level"},
    {"token a\npublish chat.#room\n",
     "t.acl:2: invalid pattern 'chat.': "
     "an empty level (a dot at the start, at the end or after another)"},
    {"token a\npublish a\x7f\n",
     "t.acl:2: invalid pattern 'a\\x7f': a space or a "
     "control character"},
    {"token a\r\npublish a\rb\r\n",
     "t.acl:2: invalid pattern 'a\\x0db': a space or a "
     "control character"},
    {"cert\n", "t.acl:1: cert needs a kind (subject, dns, uri, email or ip) "
               "and a value"},
    {"cert # x\n", "t.acl:1: cert needs a kind (subject, dns, uri, email or "
                   "ip) and a value"},
    {"cert cn alice\n", "t.acl:1: unknown cert kind 'cn' (expected subject, "
                        "dns, uri, email or ip)"},
    {"cert Subject CN=a\n", "t.acl:1: unknown cert kind 'Subject' (expected "
                            "subject, dns, uri, email or ip)"},
    {"cert uri\n", "t.acl:1: cert uri needs a value"},
    {"cert uri   # none\n", "t.acl:1: cert uri needs a value"},
    {"cert subject CN=a b\n",
     "t.acl:1: cert subject takes one value (quote a value with spaces)"},
    {"cert subject \"CN=a\" x\n",
     "t.acl:1: cert subject takes one value (quote a value with spaces)"},
    {"cert subject \"CN=a\"x\n",
     "t.acl:1: cert subject takes one value (quote a value with spaces)"},
    {"cert subject \"CN=a b\n",
     "t.acl:1: quoted value without its closing '\"'"},
    {"cert subject \"CN=a\"\"\n",
     "t.acl:1: quoted value without its closing '\"'"},
    {"cert subject CN=\"a\"\n",
     "t.acl:1: '\"' in an unquoted value (quote the value and write '\"\"' "
     "for each '\"' in it)"},
    {"cert dns \"\"\n", "t.acl:1: cert dns value is empty"},
    {"cert dns \"a\tb\"\n",
     "t.acl:1: cert dns value 'a\\x09b' holds a control character"},
    {"cert dns a\x7f\n",
     "t.acl:1: cert dns value 'a\\x7f' holds a control character"},
    {"cert ip 10.0.0.256\n",
     "t.acl:1: '10.0.0.256' is not an IPv4 or IPv6 address"},
    {"cert ip localhost\n",
     "t.acl:1: 'localhost' is not an IPv4 or IPv6 address"},
    {"cert uri spiffe://x/a\ncert dns spiffe://x/a\ncert uri spiffe://x/a\n",
     "t.acl:3: duplicate cert uri 'spiffe://x/a' (first at line 1)"},
    {"cert subject \"CN=a,O=b\"\ncert subject CN=a,O=b\n",
     "t.acl:2: duplicate cert subject 'CN=a,O=b' (first at line 1)"},
    {"cert ip ::1\n\ncert ip 0:0:0:0:0:0:0:1\n",
     "t.acl:3: duplicate cert ip '::1' (first at line 1)"},
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
  n += (size_t)snprintf(text + n, sizeof(text) - n,
                        "cert subject \"CN=a b\"\npublish a\n"
                        "cert ip 0::1\npublish b\n");
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
  ck_assert_uint_eq(qrpci_acl_count(acl), 12);
  ck_assert(may_pub(lookup(acl, "t9"), "f.x"));
  ck_assert_uint_eq(qrpci_acl_cert_count(acl), 2);
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

/* ---- certificate identities ------------------------------------------- */

static const char certs_acl[] =
    "cert subject \"CN=qrpc development client,O=qrpc development\"\n"
    "  publish sensors.7\n"
    "cert uri spiffe://qrpc.dev/client # a comment\n"
    "  publish sensors.>\n"
    "cert dns worker.example.org\n"
    "  subscribe jobs.>\n"
    "cert email ops@example.org\n"
    "cert ip 0:0:0:0:0:0:0:1\n"
    "  publish local.>\n"
    "cert ip 10.0.0.7\n"
    "cert subject \"CN=say \"\"hi\"\" #1,O=x\"\n"
    "  publish quoted\n"
    "token t\n"
    "anonymous\n";

/* An identity with a subject and one entry of each SAN type, or none (a
 * NULL string): what qrpc_conn_peer_identity() would give. */
typedef struct fake_id {
  qrpc_identity id;
  qrpc_str dns, uri, email, ip;
} fake_id;

static qrpc_str str_of(const char *s) {
  qrpc_str r = {s, s ? strlen(s) : 0};
  return r;
}

static const qrpc_identity *fake(fake_id *f, const char *subject,
                                 const char *dns, const char *uri,
                                 const char *email, const char *ip) {
  memset(f, 0, sizeof(*f));
  f->id.subject = str_of(subject);
  f->dns = str_of(dns);
  f->uri = str_of(uri);
  f->email = str_of(email);
  f->ip = str_of(ip);
  f->id.dns = &f->dns;
  f->id.ndns = dns != NULL;
  f->id.uri = &f->uri;
  f->id.nuri = uri != NULL;
  f->id.email = &f->email;
  f->id.nemail = email != NULL;
  f->id.ip = &f->ip;
  f->id.nip = ip != NULL;
  return &f->id;
}

/* The line of the section a fake identity selects, 0 for none. */
static unsigned long cert_line(const qrpci_acl *acl, const char *subject,
                               const char *dns, const char *uri,
                               const char *email, const char *ip) {
  fake_id f;
  const qrpci_acl_identity *id =
      qrpci_acl_lookup_cert(acl, fake(&f, subject, dns, uri, email, ip));
  return id ? qrpci_acl_line(id) : 0;
}

START_TEST(test_cert_sections) {
  qrpci_acl *acl = parse_ok(certs_acl);
  ck_assert_uint_eq(qrpci_acl_count(acl), 9);
  ck_assert_uint_eq(qrpci_acl_cert_count(acl), 7);
  const char *dev = "CN=qrpc development client,O=qrpc development";
  ck_assert_uint_eq(cert_line(acl, dev, NULL, NULL, NULL, NULL), 1);
  ck_assert_uint_eq(
      cert_line(acl, "CN=b", NULL, "spiffe://qrpc.dev/client", NULL, NULL), 3);
  ck_assert_uint_eq(
      cert_line(acl, "CN=b", "worker.example.org", NULL, NULL, NULL), 5);
  ck_assert_uint_eq(cert_line(acl, "CN=b", NULL, NULL, "ops@example.org", NULL),
                    7);
  /* ip values are kept as inet_ntop() writes them. */
  ck_assert_uint_eq(cert_line(acl, "CN=b", NULL, NULL, NULL, "::1"), 8);
  ck_assert_uint_eq(cert_line(acl, "CN=b", NULL, NULL, NULL, "10.0.0.7"), 10);
  /* "" is one '"'; a '#' inside quotes is no comment. */
  ck_assert_uint_eq(
      cert_line(acl, "CN=say \"hi\" #1,O=x", NULL, NULL, NULL, NULL), 11);
  /* Permissions are the section's. */
  fake_id f;
  const qrpci_acl_identity *id =
      qrpci_acl_lookup_cert(acl, fake(&f, dev, NULL, NULL, NULL, NULL));
  ck_assert(may_pub(id, "sensors.7"));
  ck_assert(!may_pub(id, "sensors.8"));
  ck_assert(!may_sub(id, "sensors.7"));
  /* Token lookups never find a cert section, nor the reverse. */
  ck_assert_ptr_null(lookup(acl, "spiffe://qrpc.dev/client"));
  ck_assert_uint_eq(cert_line(acl, "t", "t", "t", "t", "t"), 0);
  qrpci_acl_free(acl);
}
END_TEST

/* Exact matches only: by length, case included, no prefix, no wildcard,
 * NUL bytes counted, and a value only matches its own kind. */
START_TEST(test_cert_exact) {
  qrpci_acl *acl = parse_ok(certs_acl);
  static const struct {
    const char *subject, *dns, *uri, *email, *ip;
  } none[] = {
      {"CN=qrpc development client,O=qrpc developmen", 0, 0, 0, 0},
      {"CN=qrpc development client,O=qrpc development2", 0, 0, 0, 0},
      {"cn=qrpc development client,o=qrpc development", 0, 0, 0, 0},
      {"O=qrpc development,CN=qrpc development client", 0, 0, 0, 0},
      {"CN=x", "WORKER.example.org", 0, 0, 0},
      {"CN=x", "*.example.org", 0, 0, 0},
      {"CN=x", "spiffe://qrpc.dev/client", 0, 0, 0},
      {"CN=x", 0, "spiffe://qrpc.dev/client/", 0, 0},
      {"CN=x", 0, "spiffe://qrpc.dev", 0, 0},
      {"CN=x", 0, 0, "OPS@example.org", 0},
      {"CN=x", 0, 0, 0, "0:0:0:0:0:0:0:1"},
      {"CN=x", 0, 0, 0, "10.0.0.70"},
      {"spiffe://qrpc.dev/client", 0, 0, 0, 0},
      {"", "", "", "", ""},
  };
  for (size_t i = 0; i < sizeof(none) / sizeof(none[0]); i++)
    ck_assert_msg(cert_line(acl, none[i].subject, none[i].dns, none[i].uri,
                            none[i].email, none[i].ip) == 0,
                  "case %zu matched", i);
  /* A NUL byte is one more byte: "spiffe://qrpc.dev/client\0x" differs. */
  fake_id f;
  fake(&f, "CN=x", NULL, "spiffe://qrpc.dev/client", NULL, NULL);
  f.uri.ptr = "spiffe://qrpc.dev/client\0x";
  f.uri.len = 26;
  ck_assert_ptr_null(qrpci_acl_lookup_cert(acl, &f.id));
  f.uri.len = 24;
  ck_assert_ptr_nonnull(qrpci_acl_lookup_cert(acl, &f.id));
  /* No certificate, no cert section. */
  ck_assert_ptr_null(qrpci_acl_lookup_cert(acl, NULL));
  qrpci_acl_free(acl);
}
END_TEST

/* When several cert sections match one certificate, the first in the file
 * wins; any SAN entry of the right type may match. */
START_TEST(test_cert_first_match) {
  qrpci_acl *acl = parse_ok("cert dns b.example\n"
                            "  publish b\n"
                            "cert subject CN=a\n"
                            "  publish a\n"
                            "cert dns a.example\n"
                            "  publish c\n");
  ck_assert_uint_eq(cert_line(acl, "CN=a", "a.example", NULL, NULL, NULL), 3);
  ck_assert_uint_eq(cert_line(acl, "CN=z", "a.example", NULL, NULL, NULL), 5);
  qrpc_str dns[3] = {str_of("x.example"), str_of("a.example"),
                     str_of("b.example")};
  fake_id f;
  fake(&f, "CN=a", NULL, NULL, NULL, NULL);
  f.id.dns = dns;
  f.id.ndns = 3;
  const qrpci_acl_identity *id = qrpci_acl_lookup_cert(acl, &f.id);
  ck_assert_uint_eq(qrpci_acl_line(id), 1);
  ck_assert(may_pub(id, "b"));
  ck_assert(!may_pub(id, "a"));
  f.id.ndns = 1; /* only x.example */
  ck_assert_uint_eq(qrpci_acl_line(qrpci_acl_lookup_cert(acl, &f.id)), 3);
  qrpci_acl_free(acl);
}
END_TEST

/* The longest value fits; one byte more does not. IPv6 in any form
 * inet_pton() takes. */
START_TEST(test_cert_value_limits) {
  size_t max = QRPCI_ACL_CERT_VALUE_MAX;
  char *text = malloc(max + 64);
  char *value = malloc(max + 2);
  memset(value, 'v', max + 1);
  value[max] = '\0';
  snprintf(text, max + 64, "cert uri \"%s\"\n", value);
  qrpci_acl *acl = parse_ok(text);
  ck_assert_uint_eq(cert_line(acl, "CN=x", NULL, value, NULL, NULL), 1);
  qrpci_acl_free(acl);
  value[max] = 'v';
  value[max + 1] = '\0';
  snprintf(text, max + 64, "cert uri %s\n", value);
  char err[256];
  ck_assert_int_eq(parse(text, strlen(text), &acl, err, sizeof(err)),
                   QRPC_EINVAL);
  ck_assert_str_eq(err, "t.acl:1: cert uri value longer than 1024 bytes");
  free(text);
  free(value);
  acl = parse_ok("cert ip 2001:DB8:0:0:0:0:0:1a\ncert ip ::ffff:102:304\n");
  ck_assert_uint_eq(cert_line(acl, "CN=x", NULL, NULL, NULL, "2001:db8::1a"),
                    1);
  ck_assert_uint_eq(cert_line(acl, "CN=x", NULL, NULL, NULL, "::ffff:1.2.3.4"),
                    2);
  qrpci_acl_free(acl);
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
  snprintf(want, sizeof(want), "%s:3: invalid pattern 'a..b': %s", path,
           "an empty level (a dot at the start, at the end or after another)");
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
  tc = tcase_create("cert");
  tcase_add_test(tc, test_cert_sections);
  tcase_add_test(tc, test_cert_exact);
  tcase_add_test(tc, test_cert_first_match);
  tcase_add_test(tc, test_cert_value_limits);
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
