/*
 * qrpc-sub: subscribes to topic patterns of a qrpc broker
 * (docs/broker.md) and prints each message as it arrives, like
 * mosquitto_sub or nats sub. See usage() for the command line; exit
 * statuses as cli.h says.
 *
 * Each PATTERN is one subscription, renewed by the client after every
 * reconnection. Once the broker has confirmed one, "qrpc-sub: subscribed
 * to 'PATTERN'" goes to stderr, so a script knows when publishing can
 * start. Messages go to stdout, flushed one by one.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define PROG "qrpc-sub"
#define MAX_COUNT 100000000UL

typedef enum format { FORMAT_TEXT, FORMAT_JSON, FORMAT_RAW } format;

typedef struct options {
  cli_opts conn;
  char **patterns;
  int n_patterns;
  unsigned long count; /* 0: until interrupted */
  int realtime;
  int skip_retained;
  qrpc_broker_policy policy;
  const char *group; /* NULL: none */
  format fmt;
} options;

typedef struct sub {
  cli c;
  options opt;
  qrpc_broker_sub **subs; /* one per pattern; NULL once ended */
  unsigned long received;
} sub;

static void usage(FILE *f) {
  fprintf(
      f,
      "NAME\n"
      "    " PROG " - print the messages of qrpc broker topics\n"
      "\n"
      "SYNOPSIS\n"
      "    " PROG " [-s HOST:PORT] [-t TOKEN] [--ca PEM] [--cert PEM --key "
      "PEM]\n"
      "             [--realtime] [--policy POLICY] [--no-retained] [-n "
      "COUNT]\n"
      "             [--group NAME] [-F text|json|raw] PATTERN...\n"
      "\n"
      "DESCRIPTION\n"
      "    Subscribes to each PATTERN through the qrpc-broker at HOST:PORT\n"
      "    and prints every message that arrives, until COUNT messages\n"
      "    have arrived or it is interrupted (SIGINT, SIGTERM). A pattern\n"
      "    is a topic whose levels may be * (exactly one level) or, last,\n"
      "    > (one or more): sensors.*.temp, chat.>. The topic's retained\n"
      "    message, if any, comes first. When the connection is lost the\n"
      "    subscriptions are made again once it is back.\n"
      "\n"
      "OPTIONS\n"
      "    --realtime\n"
      "        receive as datagrams: no queue, no order, losses possible,\n"
      "        the newest state first (docs/broker.md)\n"
      "    --policy POLICY\n"
      "        what the broker does when this subscriber falls behind:\n"
      "        disconnect, drop-oldest, drop-newest or conflate (default:\n"
      "        disconnect for reliable, drop-newest for realtime)\n"
      "    --no-retained\n"
      "        skip the retained messages\n"
      "    --group NAME\n"
      "        join queue group NAME on each pattern: the subscribers of a\n"
      "        pattern that name the same group share its messages, each\n"
      "        message going to one of them, across a cluster's nodes too;\n"
      "        members get no retained messages (1 to 64 ASCII letters,\n"
      "        digits, _ and -)\n"
      "    -n, --count COUNT\n"
      "        exit after COUNT messages (default: run until interrupted)\n"
      "    -F, --format FORMAT\n"
      "        text (default): one line per message, the topic, a space\n"
      "            and the payload, with \\\\, \\n, \\r, \\t and \\xHH for\n"
      "            backslashes and other control bytes;\n"
      "        json: one JSON object per line, {\"topic\": ..., "
      "\"payload\":\n"
      "            ..., \"retained\": true|false}, with \"payload_base64\"\n"
      "            instead of \"payload\" when the payload is not UTF-8;\n"
      "        raw: the payloads' bytes only, nothing added\n"
      "\n"
      "%s"
      "\n"
      "EXIT STATUS\n"
      "    0   COUNT messages arrived, or interrupted by SIGINT or SIGTERM\n"
      "    1   no connection (the reason: no answer, an untrusted\n"
      "        certificate, a client certificate refused), a token refused,\n"
      "        a pattern the ACL does not grant or the broker ended, or the\n"
      "        connection lost for longer than --connect-timeout, or a\n"
      "        bad command line (an unknown option, a missing value, an\n"
      "        invalid pattern); the message on stderr says which\n"
      "\n"
      "EXAMPLES\n"
      "    " PROG " -s localhost:7422 --ca certs/ca.pem 'chat.>'\n"
      "    " PROG " --ca certs/ca.pem -n 1 -F raw clock.now\n"
      "    " PROG " --ca certs/ca.pem --realtime --policy conflate "
      "'game.*.state'\n"
      "    " PROG " --ca certs/ca.pem --group workers 'jobs.>'\n"
      "\n"
      "SEE ALSO\n"
      "    qrpc-pub(1), qrpc-broker --help, docs/broker.md\n",
      cli_conn_help);
}

static int parse_policy(const char *v, qrpc_broker_policy *out) {
  static const struct {
    const char *name;
    qrpc_broker_policy policy;
  } policies[] = {{"disconnect", QRPC_BROKER_DISCONNECT},
                  {"drop-oldest", QRPC_BROKER_DROP_OLDEST},
                  {"drop-newest", QRPC_BROKER_DROP_NEWEST},
                  {"conflate", QRPC_BROKER_CONFLATE}};
  for (size_t i = 0; i < sizeof(policies) / sizeof(policies[0]); i++)
    if (strcmp(v, policies[i].name) == 0) {
      *out = policies[i].policy;
      return 0;
    }
  fprintf(stderr,
          PROG ": --policy expects disconnect, drop-oldest, drop-newest or "
               "conflate, not '%s'\n",
          v);
  return -1;
}

static int parse_format(const char *v, format *out) {
  if (strcmp(v, "text") == 0)
    *out = FORMAT_TEXT;
  else if (strcmp(v, "json") == 0)
    *out = FORMAT_JSON;
  else if (strcmp(v, "raw") == 0)
    *out = FORMAT_RAW;
  else {
    fprintf(stderr, PROG ": --format expects text, json or raw, not '%s'\n", v);
    return -1;
  }
  return 0;
}

/* The value of the option at argv[*i], or NULL after printing. */
static const char *value_of(int argc, char **argv, int *i) {
  if (*i + 1 >= argc || argv[*i + 1][0] == '\0') {
    fprintf(stderr, PROG ": %s expects a value (see --help)\n", argv[*i]);
    return NULL;
  }
  return argv[++*i];
}

/* Parses the option at argv[*i] of this program; 1 when it was one, 0
 * when not, -1 after printing what is wrong. */
static int parse_own_opt(int argc, char **argv, int *i, options *o) {
  const char *a = argv[*i], *v;
  if (strcmp(a, "--realtime") == 0) {
    o->realtime = 1;
  } else if (strcmp(a, "--no-retained") == 0) {
    o->skip_retained = 1;
  } else if (strcmp(a, "--group") == 0) {
    const char *bad;
    if (!(v = value_of(argc, argv, i))) return -1;
    if ((bad = qrpc_broker_group_problem(v)) != NULL) {
      fprintf(stderr, PROG ": invalid --group '%s': %s\n", v, bad);
      return -1;
    }
    o->group = v;
  } else if (strcmp(a, "--policy") == 0) {
    if (!(v = value_of(argc, argv, i)) || parse_policy(v, &o->policy) != 0)
      return -1;
  } else if (strcmp(a, "-F") == 0 || strcmp(a, "--format") == 0) {
    if (!(v = value_of(argc, argv, i)) || parse_format(v, &o->fmt) != 0)
      return -1;
  } else if (strcmp(a, "-n") == 0 || strcmp(a, "--count") == 0) {
    if (!(v = value_of(argc, argv, i)) ||
        cli_parse_ulong(PROG, a, v, 1, MAX_COUNT, &o->count) != 0)
      return -1;
  } else {
    return 0;
  }
  return 1;
}

/* Returns 0 and fills o, 1 when help was printed, -1 on a bad command line
 * (after saying what is wrong). */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  cli_opts_default(&o->conn);
  o->patterns = calloc((size_t)argc, sizeof(*o->patterns));
  if (!o->patterns) {
    fprintf(stderr, PROG ": out of memory\n");
    return -1;
  }
  int positional = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (!positional && (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0)) {
      usage(stdout);
      return 1;
    }
    if (!positional && a[0] == '-' && a[1] != '\0') {
      if (strcmp(a, "--") == 0) {
        positional = 1;
        continue;
      }
      int rc = cli_parse_conn_opt(PROG, argc, argv, &i, &o->conn);
      if (rc == 0) rc = parse_own_opt(argc, argv, &i, o);
      if (rc < 0) return -1;
      if (rc == 0) {
        fprintf(stderr, PROG ": unknown option '%s' (see --help)\n", a);
        return -1;
      }
      continue;
    }
    o->patterns[o->n_patterns++] = argv[i];
  }
  if (o->n_patterns == 0) {
    fprintf(stderr, PROG ": at least one PATTERN is required (see --help)\n");
    return -1;
  }
  return cli_check_opts(PROG, &o->conn);
}

/* ---- Output ------------------------------------------------------------ */

static void put_text(const uint8_t *p, size_t len) {
  for (size_t i = 0; i < len; i++) {
    uint8_t ch = p[i];
    if (ch == '\\')
      fputs("\\\\", stdout);
    else if (ch == '\n')
      fputs("\\n", stdout);
    else if (ch == '\r')
      fputs("\\r", stdout);
    else if (ch == '\t')
      fputs("\\t", stdout);
    else if (ch < 0x20 || ch == 0x7f)
      printf("\\x%02x", ch);
    else
      putchar(ch);
  }
}

/* The length of the UTF-8 sequence at p (at most len bytes), 0 if it is
 * not a valid one (overlong forms, surrogates and values over U+10FFFF
 * included). */
static size_t utf8_seq(const uint8_t *p, size_t len) {
  uint8_t b = p[0];
  size_t n;
  uint32_t cp;
  if (b < 0x80) return 1;
  if (b >= 0xc2 && b <= 0xdf) {
    n = 2;
    cp = b & 0x1f;
  } else if (b >= 0xe0 && b <= 0xef) {
    n = 3;
    cp = b & 0x0f;
  } else if (b >= 0xf0 && b <= 0xf4) {
    n = 4;
    cp = b & 0x07;
  } else {
    return 0;
  }
  if (len < n) return 0;
  for (size_t i = 1; i < n; i++) {
    if ((p[i] & 0xc0) != 0x80) return 0;
    cp = (cp << 6) | (p[i] & 0x3f);
  }
  if ((n == 3 && cp < 0x800) || (n == 4 && cp < 0x10000) || cp > 0x10ffff ||
      (cp >= 0xd800 && cp <= 0xdfff))
    return 0;
  return n;
}

static int utf8_valid(const uint8_t *p, size_t len) {
  for (size_t i = 0; i < len;) {
    size_t n = utf8_seq(p + i, len - i);
    if (n == 0) return 0;
    i += n;
  }
  return 1;
}

/* A JSON string of valid UTF-8. */
static void put_json_string(const uint8_t *p, size_t len) {
  putchar('"');
  for (size_t i = 0; i < len; i++) {
    uint8_t ch = p[i];
    if (ch == '"' || ch == '\\')
      printf("\\%c", ch);
    else if (ch == '\n')
      fputs("\\n", stdout);
    else if (ch == '\r')
      fputs("\\r", stdout);
    else if (ch == '\t')
      fputs("\\t", stdout);
    else if (ch < 0x20 || ch == 0x7f)
      printf("\\u%04x", ch);
    else
      putchar(ch);
  }
  putchar('"');
}

static void put_base64(const uint8_t *p, size_t len) {
  static const char abc[] =
      "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
  putchar('"');
  for (size_t i = 0; i < len; i += 3) {
    uint32_t v = (uint32_t)p[i] << 16;
    if (i + 1 < len) v |= (uint32_t)p[i + 1] << 8;
    if (i + 2 < len) v |= p[i + 2];
    putchar(abc[(v >> 18) & 63]);
    putchar(abc[(v >> 12) & 63]);
    putchar(i + 1 < len ? abc[(v >> 6) & 63] : '=');
    putchar(i + 2 < len ? abc[v & 63] : '=');
  }
  putchar('"');
}

static void print_msg(format fmt, const qrpc_broker_msg *m) {
  const uint8_t *topic = (const uint8_t *)m->topic;
  switch (fmt) {
  case FORMAT_RAW: fwrite(m->payload, 1, m->len, stdout); break;
  case FORMAT_TEXT:
    put_text(topic, m->topic_len);
    putchar(' ');
    put_text(m->payload, m->len);
    putchar('\n');
    break;
  case FORMAT_JSON:
    fputs("{\"topic\":", stdout);
    if (utf8_valid(topic, m->topic_len))
      put_json_string(topic, m->topic_len);
    else
      put_base64(topic, m->topic_len);
    if (utf8_valid(m->payload, m->len)) {
      fputs(",\"payload\":", stdout);
      put_json_string(m->payload, m->len);
    } else {
      fputs(",\"payload_base64\":", stdout);
      put_base64(m->payload, m->len);
    }
    printf(",\"retained\":%s}\n", m->retained ? "true" : "false");
    break;
  }
  fflush(stdout);
}

/* ---- Subscriptions ----------------------------------------------------- */

static int index_of(sub *s, qrpc_broker_sub *bs) {
  for (int i = 0; i < s->opt.n_patterns; i++)
    if (s->subs[i] == bs) return i;
  return -1;
}

static void unsubscribe_all(sub *s) {
  for (int i = 0; i < s->opt.n_patterns; i++) {
    qrpc_broker_unsubscribe(s->subs[i]);
    s->subs[i] = NULL;
  }
}

static void on_message(qrpc_broker_sub *bs, const qrpc_broker_msg *m,
                       void *ud) {
  sub *s = ud;
  (void)bs;
  if (s->c.stopped) return;
  print_msg(s->opt.fmt, m);
  if (s->opt.count && ++s->received == s->opt.count) {
    unsubscribe_all(s);
    cli_done(&s->c);
  }
}

static void on_subscribed(qrpc_broker_sub *bs, uint64_t id, void *ud) {
  sub *s = ud;
  (void)id;
  int i = index_of(s, bs);
  if (i >= 0)
    fprintf(stderr, PROG ": subscribed to '%s'\n", s->opt.patterns[i]);
}

static void on_dropped(qrpc_broker_sub *bs, uint64_t count, void *ud) {
  sub *s = ud;
  int i = index_of(s, bs);
  fprintf(stderr,
          PROG ": the broker dropped %llu message%s of '%s': this "
               "subscriber fell behind (--policy)\n",
          (unsigned long long)count, count == 1 ? "" : "s",
          i >= 0 ? s->opt.patterns[i] : "?");
}

static void on_end(qrpc_broker_sub *bs, int status, const char *detail,
                   void *ud) {
  sub *s = ud;
  int i = index_of(s, bs);
  if (i < 0) return;
  s->subs[i] = NULL; /* freed when this returns */
  const char *what = status == QRPC_STATUS_OK ? "ended the subscription to"
                     : status == QRPC_STATUS_PERMISSION_DENIED
                         ? "refused this client the subscription to"
                         : "refused the subscription to";
  cli_fail(&s->c, "the broker %s '%s': %s%s%s", what, s->opt.patterns[i],
           qrpc_status_name(status), detail && detail[0] ? ": " : "",
           detail ? detail : "");
}

static const qrpc_broker_sub_callbacks sub_cbs = {
    .on_message = on_message,
    .on_subscribed = on_subscribed,
    .on_dropped = on_dropped,
    .on_end = on_end,
};

/* Subscribes to every pattern (made once the client is ready). Returns 0,
 * or -1 after ending the run. */
static int subscribe_all(sub *s) {
  qrpc_broker_sub_opts so;
  qrpc_broker_sub_opts_default(&so);
  so.mode = s->opt.realtime ? QRPC_BROKER_REALTIME : QRPC_BROKER_RELIABLE;
  so.policy = s->opt.policy;
  so.skip_retained = s->opt.skip_retained;
  so.group = s->opt.group;
  for (int i = 0; i < s->opt.n_patterns; i++) {
    const char *pattern = s->opt.patterns[i];
    int rc =
        qrpc_broker_subscribe(s->c.bc, pattern, &so, &sub_cbs, s, &s->subs[i]);
    if (rc == QRPC_EINVAL) {
      const char *bad = qrpc_broker_pattern_problem(pattern);
      cli_fail(&s->c, "invalid pattern '%s': %s", pattern,
               bad ? bad : "refused");
      s->c.status = CLI_EXIT_USAGE;
      return -1;
    }
    if (rc != 0) {
      cli_fail(&s->c, "cannot subscribe to '%s': %s", pattern,
               qrpc_strerror(rc));
      return -1;
    }
  }
  return 0;
}

int main(int argc, char **argv) {
  sub s;
  memset(&s, 0, sizeof(s));
  int rc = parse_args(argc, argv, &s.opt);
  if (rc != 0) {
    free(s.opt.patterns);
    return rc > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
  }
  int status = CLI_EXIT_FAIL;
  s.subs = calloc((size_t)s.opt.n_patterns, sizeof(*s.subs));
  if (!s.subs) {
    fprintf(stderr, PROG ": out of memory\n");
  } else if (cli_start(&s.c, PROG, &s.opt.conn, NULL, &s) == 0 &&
             subscribe_all(&s) == 0) {
    s.c.signal_ok = 1;
    status = cli_run(&s.c);
  } else {
    status = s.c.status;
  }
  cli_free(&s.c); /* frees the subscriptions */
  free(s.subs);
  free(s.opt.patterns);
  return status;
}
