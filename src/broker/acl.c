#include "broker/acl.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "broker/topic.h"
#include "qrpc/error.h"

/* A word of the file: a slice of the acl's own copy of the text. */
typedef struct span {
  const char *p;
  size_t len;
} span;

typedef struct spans {
  span *v;
  size_t n, cap;
} spans;

/* What a cert section names: the certificate's subject or one type of
 * its subjectAltName entries. */
typedef enum cert_kind {
  CERT_NONE = 0, /* a token or the anonymous section */
  CERT_SUBJECT,
  CERT_DNS,
  CERT_URI,
  CERT_EMAIL,
  CERT_IP,
} cert_kind;

static const struct {
  const char *name;
  cert_kind kind;
} cert_kinds[] = {
    {"subject", CERT_SUBJECT}, {"dns", CERT_DNS}, {"uri", CERT_URI},
    {"email", CERT_EMAIL},     {"ip", CERT_IP},
};

struct qrpci_acl_identity {
  /* Zero-padded to the longest token, so that every comparison reads the
   * same number of bytes whatever the token's length. */
  unsigned char token[QRPCI_ACL_TOKEN_MAX];
  size_t token_len; /* 0 for the anonymous and cert sections */
  cert_kind cert;
  span cert_value; /* a cert section's VALUE, unquoted: owned */
  unsigned long line;
  spans publish, subscribe;
};

struct qrpci_acl {
  char *text;
  qrpci_acl_identity *ids;
  size_t n, cap;
  size_t anonymous; /* index in ids, or SIZE_MAX */
  size_t ncert;
};

void qrpci_acl_free(qrpci_acl *acl) {
  if (!acl) return;
  for (size_t i = 0; i < acl->n; i++) {
    free(acl->ids[i].publish.v);
    free(acl->ids[i].subscribe.v);
    free((char *)acl->ids[i].cert_value.p);
  }
  free(acl->ids);
  free(acl->text);
  free(acl);
}

/* ---- parsing ----------------------------------------------------------- */

typedef struct parser {
  qrpci_acl *acl;
  const char *name;
  unsigned long line;
  size_t section; /* index of the section being filled, or SIZE_MAX */
  char *err;
  size_t errlen;
} parser;

#define NO_SECTION SIZE_MAX

static void report(parser *ps, const char *fmt, va_list ap) {
  if (!ps->err || !ps->errlen) return;
  int n = snprintf(ps->err, ps->errlen, "%s:%lu: ", ps->name, ps->line);
  if (n >= 0 && (size_t)n < ps->errlen)
    vsnprintf(ps->err + n, ps->errlen - (size_t)n, fmt, ap);
}

__attribute__((format(printf, 3, 4))) static int fail(parser *ps, int rv,
                                                      const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  report(ps, fmt, ap);
  va_end(ap);
  return rv;
}

/* The longest word quoted in a message, before it is cut with "...". */
#define QUOTE_MAX 64

/* Writes w into buf for a message: non-printable bytes as \xHH, so a
 * message never carries control characters into a terminal or a log. */
static const char *quote(span w, char buf[QUOTE_MAX * 4 + 4]) {
  static const char hex[] = "0123456789abcdef";
  size_t o = 0;
  for (size_t i = 0; i < w.len && i < QUOTE_MAX; i++) {
    unsigned char c = (unsigned char)w.p[i];
    if (c >= 0x20 && c < 0x7f && c != '\\') {
      buf[o++] = (char)c;
    } else {
      buf[o++] = '\\';
      buf[o++] = 'x';
      buf[o++] = hex[c >> 4];
      buf[o++] = hex[c & 15];
    }
  }
  if (w.len > QUOTE_MAX) {
    memcpy(buf + o, "...", 3);
    o += 3;
  }
  buf[o] = '\0';
  return buf;
}

static int is_blank(char c) { return c == ' ' || c == '\t'; }

/* Takes the next word of [*p, end); returns 0 when none is left. */
static int next_word(const char **p, const char *end, span *w) {
  const char *s = *p;
  while (s < end && is_blank(*s)) s++;
  if (s == end) return 0;
  w->p = s;
  while (s < end && !is_blank(*s)) s++;
  w->len = (size_t)(s - w->p);
  *p = s;
  return 1;
}

static int word_is(span w, const char *kw) {
  return w.len == strlen(kw) && memcmp(w.p, kw, w.len) == 0;
}

static int valid_token(span w) {
  if (w.len == 0 || w.len > QRPCI_ACL_TOKEN_MAX) return 0;
  for (size_t i = 0; i < w.len; i++) {
    unsigned char c = (unsigned char)w.p[i];
    if (c < 0x21 || c > 0x7e || c == '#') return 0;
  }
  return 1;
}

/* Appends a section for token (len 0: the anonymous or a cert one). */
static int add_section(parser *ps, span token) {
  qrpci_acl *acl = ps->acl;
  if (acl->n == acl->cap) {
    size_t cap = acl->cap ? acl->cap * 2 : 8;
    qrpci_acl_identity *ids = realloc(acl->ids, cap * sizeof(*ids));
    if (!ids) return fail(ps, QRPC_ENOMEM, "out of memory");
    acl->ids = ids;
    acl->cap = cap;
  }
  qrpci_acl_identity *id = &acl->ids[acl->n];
  memset(id, 0, sizeof(*id));
  memcpy(id->token, token.p, token.len);
  id->token_len = token.len;
  id->line = ps->line;
  ps->section = acl->n++;
  return 0;
}

static int on_token(parser *ps, const char *p, const char *end) {
  span tok, extra;
  /* Messages about tokens never quote them: they are secrets. */
  if (!next_word(&p, end, &tok))
    return fail(ps, QRPC_EINVAL, "token needs a value");
  if (next_word(&p, end, &extra))
    return fail(ps, QRPC_EINVAL,
                "token takes one value (a token has no spaces)");
  if (!valid_token(tok))
    return fail(ps, QRPC_EINVAL,
                "token is not 1..%d bytes of printable ASCII without '#'",
                QRPCI_ACL_TOKEN_MAX);
  for (size_t i = 0; i < ps->acl->n; i++) {
    const qrpci_acl_identity *id = &ps->acl->ids[i];
    if (id->token_len == tok.len && memcmp(id->token, tok.p, tok.len) == 0)
      return fail(ps, QRPC_EINVAL, "duplicate token (first at line %lu)",
                  id->line);
  }
  return add_section(ps, tok);
}

static int on_anonymous(parser *ps, const char *p, const char *end) {
  span extra;
  if (next_word(&p, end, &extra))
    return fail(ps, QRPC_EINVAL, "anonymous takes no value");
  if (ps->acl->anonymous != NO_SECTION)
    return fail(ps, QRPC_EINVAL,
                "duplicate anonymous section (first at line %lu)",
                ps->acl->ids[ps->acl->anonymous].line);
  span none = {"", 0};
  int rv = add_section(ps, none);
  if (rv == 0) ps->acl->anonymous = ps->section;
  return rv;
}

/* ---- cert lines -------------------------------------------------------- */

static int is_item_end(char c) { return is_blank(c) || c == '#'; }

/* Takes the next item of [*p, end), which ends at a blank or a '#';
 * returns 0 when the rest is blank or a comment. */
static int next_item(const char **p, const char *end, span *w) {
  const char *s = *p;
  while (s < end && is_blank(*s)) s++;
  if (s == end || *s == '#') {
    *p = s;
    return 0;
  }
  w->p = s;
  while (s < end && !is_item_end(*s)) s++;
  w->len = (size_t)(s - w->p);
  *p = s;
  return 1;
}

/* Reads a VALUE starting at *p (not blank, not '#') into a new heap copy
 * *out, unquoted; advances *p past it. Returns 0 or a QRPC_E* after
 * reporting. */
static int read_value(parser *ps, const char **p, const char *end, span *out) {
  const char *s = *p;
  char *v = malloc((size_t)(end - s) + 1);
  if (!v) return fail(ps, QRPC_ENOMEM, "out of memory");
  size_t n = 0;
  if (*s != '"') {
    while (s < end && !is_item_end(*s)) {
      if (*s == '"') {
        free(v);
        return fail(ps, QRPC_EINVAL,
                    "'\"' in an unquoted value (quote the value and write "
                    "'\"\"' for each '\"' in it)");
      }
      v[n++] = *s++;
    }
  } else {
    for (s++;; s++) {
      if (s == end) {
        free(v);
        return fail(ps, QRPC_EINVAL, "quoted value without its closing '\"'");
      }
      if (*s == '"') {
        if (s + 1 < end && s[1] == '"') {
          s++;
        } else {
          s++;
          break;
        }
      }
      v[n++] = *s;
    }
  }
  *p = s;
  out->p = v;
  out->len = n;
  return 0;
}

/* An ip VALUE in the form inet_ntop() writes, replacing *v. */
static int canonical_ip(parser *ps, span *v) {
  char in[INET6_ADDRSTRLEN + 1], outbuf[INET6_ADDRSTRLEN];
  unsigned char bin[16];
  char q[QUOTE_MAX * 4 + 4];
  int af = 0;
  if (v->len < sizeof(in)) {
    memcpy(in, v->p, v->len);
    in[v->len] = '\0';
    if (inet_pton(AF_INET, in, bin) == 1)
      af = AF_INET;
    else if (inet_pton(AF_INET6, in, bin) == 1)
      af = AF_INET6;
  }
  if (!af || !inet_ntop(af, bin, outbuf, sizeof(outbuf)))
    return fail(ps, QRPC_EINVAL, "'%s' is not an IPv4 or IPv6 address",
                quote(*v, q));
  size_t n = strlen(outbuf);
  char *c = malloc(n);
  if (!c) return fail(ps, QRPC_ENOMEM, "out of memory");
  memcpy(c, outbuf, n);
  free((char *)v->p);
  v->p = c;
  v->len = n;
  return 0;
}

static int check_value(parser *ps, const char *kind, span v) {
  if (v.len == 0) return fail(ps, QRPC_EINVAL, "cert %s value is empty", kind);
  if (v.len > QRPCI_ACL_CERT_VALUE_MAX)
    return fail(ps, QRPC_EINVAL, "cert %s value longer than %d bytes", kind,
                QRPCI_ACL_CERT_VALUE_MAX);
  for (size_t i = 0; i < v.len; i++) {
    unsigned char c = (unsigned char)v.p[i];
    if (c < 0x20 || c == 0x7f) {
      char q[QUOTE_MAX * 4 + 4];
      return fail(ps, QRPC_EINVAL,
                  "cert %s value '%s' holds a control character", kind,
                  quote(v, q));
    }
  }
  return 0;
}

/* Checks the VALUE v of kind k (ip: made canonical) and that no section
 * has it already. */
static int cert_value_ok(parser *ps, cert_kind k, const char *kind, span *v) {
  int rv = check_value(ps, kind, *v);
  if (rv == 0 && k == CERT_IP) rv = canonical_ip(ps, v);
  if (rv != 0) return rv;
  for (size_t i = 0; i < ps->acl->n; i++) {
    const qrpci_acl_identity *id = &ps->acl->ids[i];
    if (id->cert == k && id->cert_value.len == v->len &&
        memcmp(id->cert_value.p, v->p, v->len) == 0) {
      char q[QUOTE_MAX * 4 + 4];
      return fail(ps, QRPC_EINVAL, "duplicate cert %s '%s' (first at line %lu)",
                  kind, quote(*v, q), id->line);
    }
  }
  return 0;
}

/* "cert KIND VALUE": p is right after the keyword, end the line's end
 * with any comment still in it. */
static int on_cert(parser *ps, const char *p, const char *end) {
  char q[QUOTE_MAX * 4 + 4];
  span kw;
  if (!next_item(&p, end, &kw))
    return fail(ps, QRPC_EINVAL,
                "cert needs a kind (subject, dns, uri, email or ip) and a "
                "value");
  size_t k = 0, nk = sizeof(cert_kinds) / sizeof(cert_kinds[0]);
  while (k < nk && !word_is(kw, cert_kinds[k].name)) k++;
  if (k == nk)
    return fail(ps, QRPC_EINVAL,
                "unknown cert kind '%s' (expected subject, dns, uri, email "
                "or ip)",
                quote(kw, q));
  const char *kind = cert_kinds[k].name;
  while (p < end && is_blank(*p)) p++;
  if (p == end || *p == '#')
    return fail(ps, QRPC_EINVAL, "cert %s needs a value", kind);
  span v;
  int rv = read_value(ps, &p, end, &v);
  if (rv != 0) return rv;
  while (p < end && is_blank(*p)) p++;
  if (p < end && *p != '#')
    rv = fail(ps, QRPC_EINVAL,
              "cert %s takes one value (quote a value with spaces)", kind);
  if (rv == 0) rv = cert_value_ok(ps, cert_kinds[k].kind, kind, &v);
  span none = {"", 0};
  if (rv == 0) rv = add_section(ps, none);
  if (rv != 0) {
    free((char *)v.p);
    return rv;
  }
  qrpci_acl_identity *id = &ps->acl->ids[ps->section];
  id->cert = cert_kinds[k].kind;
  id->cert_value = v;
  ps->acl->ncert++;
  return 0;
}

/* ---- permissions ------------------------------------------------------- */

static int push(parser *ps, spans *s, span w) {
  if (s->n == s->cap) {
    size_t cap = s->cap ? s->cap * 2 : 4;
    span *v = realloc(s->v, cap * sizeof(*v));
    if (!v) return fail(ps, QRPC_ENOMEM, "out of memory");
    s->v = v;
    s->cap = cap;
  }
  s->v[s->n++] = w;
  return 0;
}

/* A publish or subscribe line; kw is its keyword. */
static int on_patterns(parser *ps, span kw, const char *p, const char *end) {
  char q[QUOTE_MAX * 4 + 4];
  if (ps->section == NO_SECTION)
    return fail(ps, QRPC_EINVAL, "%s before any token, cert or anonymous line",
                quote(kw, q));
  qrpci_acl_identity *id = &ps->acl->ids[ps->section];
  spans *s = word_is(kw, "publish") ? &id->publish : &id->subscribe;
  span w;
  int any = 0;
  while (next_word(&p, end, &w)) {
    const char *bad = qrpci_topic_reason(w.p, w.len, 1);
    if (bad)
      return fail(ps, QRPC_EINVAL, "invalid pattern '%s': %s", quote(w, q),
                  bad);
    int rv = push(ps, s, w);
    if (rv != 0) return rv;
    any = 1;
  }
  if (!any)
    return fail(ps, QRPC_EINVAL, "%s needs at least one pattern", quote(kw, q));
  return 0;
}

static int parse_line(parser *ps, const char *p, size_t len) {
  const char *end = p + len;
  span kw;
  /* The keyword ends at a blank or at a comment. A cert line finds its
   * comment itself: its quoted value may hold a '#'. */
  if (!next_item(&p, end, &kw)) return 0;
  if (word_is(kw, "cert")) return on_cert(ps, p, end);
  /* next_item() never moves p past end; saying so spares gcc's
   * -Wstringop-overread a length it cannot bound. */
  const char *comment = p < end ? memchr(p, '#', (size_t)(end - p)) : NULL;
  if (comment) end = comment;
  if (word_is(kw, "token")) return on_token(ps, p, end);
  if (word_is(kw, "anonymous")) return on_anonymous(ps, p, end);
  if (word_is(kw, "publish") || word_is(kw, "subscribe"))
    return on_patterns(ps, kw, p, end);
  char q[QUOTE_MAX * 4 + 4];
  return fail(ps, QRPC_EINVAL, "unknown keyword '%s'", quote(kw, q));
}

static int parse_text(parser *ps, const char *text, size_t len) {
  size_t pos = 0;
  while (pos < len) {
    const char *line = text + pos;
    const char *nl = memchr(line, '\n', len - pos);
    size_t n = nl ? (size_t)(nl - line) : len - pos;
    pos += n + (nl != NULL);
    ps->line++;
    if (n > QRPCI_ACL_LINE_MAX)
      return fail(ps, QRPC_EINVAL, "line longer than %d bytes",
                  QRPCI_ACL_LINE_MAX);
    if (n && line[n - 1] == '\r') n--;
    int rv = parse_line(ps, line, n);
    if (rv != 0) return rv;
  }
  return 0;
}

int qrpci_acl_parse(const char *text, size_t len, const char *name,
                    qrpci_acl **out, char *err, size_t errlen) {
  parser ps = {NULL, name ? name : "acl", 0, NO_SECTION, err, errlen};
  if (err && errlen) err[0] = '\0';
  qrpci_acl *acl = calloc(1, sizeof(*acl));
  char *copy = malloc(len ? len : 1);
  if (!acl || !copy) {
    free(acl);
    free(copy);
    return fail(&ps, QRPC_ENOMEM, "out of memory");
  }
  if (len) memcpy(copy, text, len);
  acl->text = copy;
  acl->anonymous = NO_SECTION;
  ps.acl = acl;
  int rv = parse_text(&ps, copy, len);
  if (rv != 0) {
    qrpci_acl_free(acl);
    return rv;
  }
  *out = acl;
  return 0;
}

/* ---- loading ----------------------------------------------------------- */

static int sys_fail(const char *path, int e, char *err, size_t errlen) {
  if (err && errlen) snprintf(err, errlen, "%s: %s", path, strerror(e));
  return QRPC_ESYSTEM;
}

int qrpci_acl_load(const char *path, qrpci_acl **out, char *err,
                   size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) return sys_fail(path, errno, err, errlen);
  size_t len = 0, cap = 4096;
  char *buf = malloc(cap);
  while (buf) {
    len += fread(buf + len, 1, cap - len, f);
    if (len < cap) break;
    char *bigger = realloc(buf, cap * 2);
    if (!bigger) {
      free(buf);
      buf = NULL;
      break;
    }
    buf = bigger;
    cap *= 2;
  }
  int e = errno;
  int bad = !buf || ferror(f);
  fclose(f);
  if (!buf) {
    if (err && errlen) snprintf(err, errlen, "%s: out of memory", path);
    return QRPC_ENOMEM;
  }
  if (bad) {
    free(buf);
    return sys_fail(path, e, err, errlen);
  }
  int rv = qrpci_acl_parse(buf, len, path, out, err, errlen);
  free(buf);
  return rv;
}

/* ---- queries ----------------------------------------------------------- */

const qrpci_acl_identity *qrpci_acl_lookup(const qrpci_acl *acl,
                                           const char *token, size_t len) {
  if (len == 0 || len > QRPCI_ACL_TOKEN_MAX) return NULL;
  unsigned char padded[QRPCI_ACL_TOKEN_MAX] = {0};
  memcpy(padded, token, len);
  const qrpci_acl_identity *found = NULL;
  for (size_t i = 0; i < acl->n; i++) {
    const qrpci_acl_identity *id = &acl->ids[i];
    /* Every byte is compared and the differences are only gathered, so
     * the time taken says nothing about how much of a token was right. */
    unsigned diff = (unsigned)(id->token_len != len);
    for (size_t k = 0; k < QRPCI_ACL_TOKEN_MAX; k++)
      diff |= (unsigned)(id->token[k] ^ padded[k]);
    if (diff == 0) found = id;
  }
  return found;
}

static int str_is(qrpc_str s, span v) {
  return s.len == v.len && memcmp(s.ptr, v.p, v.len) == 0;
}

static int any_is(const qrpc_str *a, size_t n, span v) {
  for (size_t i = 0; i < n; i++)
    if (str_is(a[i], v)) return 1;
  return 0;
}

static int cert_matches(const qrpci_acl_identity *id, const qrpc_identity *p) {
  span v = id->cert_value;
  switch (id->cert) {
  case CERT_NONE: return 0;
  case CERT_SUBJECT: return str_is(p->subject, v);
  case CERT_DNS: return any_is(p->dns, p->ndns, v);
  case CERT_URI: return any_is(p->uri, p->nuri, v);
  case CERT_EMAIL: return any_is(p->email, p->nemail, v);
  case CERT_IP: return any_is(p->ip, p->nip, v);
  }
  return 0;
}

const qrpci_acl_identity *qrpci_acl_lookup_cert(const qrpci_acl *acl,
                                                const qrpc_identity *peer) {
  if (!peer) return NULL;
  for (size_t i = 0; i < acl->n; i++)
    if (cert_matches(&acl->ids[i], peer)) return &acl->ids[i];
  return NULL;
}

const qrpci_acl_identity *qrpci_acl_anonymous(const qrpci_acl *acl) {
  return acl->anonymous == NO_SECTION ? NULL : &acl->ids[acl->anonymous];
}

int qrpci_acl_may_publish(const qrpci_acl_identity *id, const char *topic,
                          size_t len) {
  if (!id || qrpci_topic_check(topic, len) != 0) return 0;
  for (size_t i = 0; i < id->publish.n; i++) {
    span p = id->publish.v[i];
    if (qrpci_pattern_match(p.p, p.len, topic, len)) return 1;
  }
  return 0;
}

int qrpci_acl_may_subscribe(const qrpci_acl_identity *id, const char *pattern,
                            size_t len) {
  if (!id || qrpci_pattern_check(pattern, len) != 0) return 0;
  for (size_t i = 0; i < id->subscribe.n; i++) {
    span p = id->subscribe.v[i];
    if (qrpci_pattern_covers(p.p, p.len, pattern, len)) return 1;
  }
  return 0;
}

size_t qrpci_acl_count(const qrpci_acl *acl) { return acl->n; }

size_t qrpci_acl_cert_count(const qrpci_acl *acl) { return acl->ncert; }

unsigned long qrpci_acl_line(const qrpci_acl_identity *id) { return id->line; }
