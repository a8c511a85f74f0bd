/*
 * qrpc-pub: publishes a message on a topic of a qrpc broker
 * (docs/broker.md), like mosquitto_pub or nats pub. See usage() for the
 * command line; exit statuses as cli.h says.
 *
 * Publishes go out once the broker has accepted the connection, at most
 * WINDOW unanswered at a time, and the program ends when the broker has
 * answered every one: a refusal (an ACL that does not grant the topic, a
 * message over the broker's size limit) ends it with status 1 and the
 * broker's reason.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cli.h"

#define PROG "qrpc-pub"
/* The most -n may ask for. */
#define MAX_COUNT 100000000UL
/* Publishes unanswered at a time: under the client's max_pending (1024),
 * which holds publishes while it is not connected. */
#define WINDOW 256
/* The largest message read from stdin: qrpc-broker's --max-payload cap. */
#define STDIN_MAX (64u << 20)

typedef struct options {
  cli_opts conn;
  const char *topic;
  const char *message; /* NULL: read stdin */
  unsigned long count;
  int retain;
} options;

typedef struct pub {
  cli c;
  options opt;
  uint8_t *payload;
  size_t len;
  unsigned long sent, answered;
  uint64_t subscribers; /* over all answers, for --verbose */
} pub;

static void usage(FILE *f) {
  fprintf(
      f,
      "NAME\n"
      "    " PROG " - publish a message through a qrpc broker\n"
      "\n"
      "SYNOPSIS\n"
      "    " PROG " [-s HOST:PORT] [-t TOKEN] [--ca PEM] [--cert PEM --key "
      "PEM]\n"
      "             [-r] [-n COUNT] TOPIC [MESSAGE]\n"
      "\n"
      "DESCRIPTION\n"
      "    Publishes MESSAGE on TOPIC (dot-separated levels such as\n"
      "    sensors.kitchen.temp) through the qrpc-broker at HOST:PORT, and\n"
      "    exits once the broker has taken it. Without MESSAGE the message\n"
      "    is everything read from standard input, byte for byte (a final\n"
      "    newline included; up to 64 MiB).\n"
      "\n"
      "OPTIONS\n"
      "    -r, --retain\n"
      "        keep the message as the topic's retained message: the broker\n"
      "        hands it to every later subscriber first\n"
      "    -n, --count COUNT\n"
      "        publish the message COUNT times, in order (default 1)\n"
      "\n"
      "%s"
      "\n"
      "EXIT STATUS\n"
      "    0   the broker took all COUNT messages\n"
      "    1   it did not: no connection (the reason: no answer, an\n"
      "        untrusted certificate, a client certificate refused), a\n"
      "        token refused, a topic the ACL does not grant, a message too\n"
      "        large, interrupted, or a bad command line (an unknown\n"
      "        option, a missing value, an invalid topic); the message on\n"
      "        stderr says which\n"
      "\n"
      "EXAMPLES\n"
      "    " PROG " -s localhost:7422 --ca certs/ca.pem chat.lobby hello\n"
      "    date | " PROG " --ca certs/ca.pem -r clock.now\n"
      "    " PROG " --ca certs/ca.pem -t s3cret -n 100 load.test x\n"
      "\n"
      "SEE ALSO\n"
      "    qrpc-sub(1), qrpc-broker --help, docs/broker.md\n",
      cli_conn_help);
}

/* Returns 0 and fills o, 1 when help was printed, -1 on a bad command line
 * (after saying what is wrong). */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  cli_opts_default(&o->conn);
  o->count = 1;
  int positional = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 1;
    }
    int rc = cli_parse_conn_opt(PROG, argc, argv, &i, &o->conn);
    if (rc < 0) return -1;
    if (rc > 0) continue;
    if (strcmp(a, "-r") == 0 || strcmp(a, "--retain") == 0) {
      o->retain = 1;
    } else if (strcmp(a, "-n") == 0 || strcmp(a, "--count") == 0) {
      if (i + 1 >= argc) {
        fprintf(stderr, PROG ": %s expects a value (see --help)\n", a);
        return -1;
      }
      if (cli_parse_ulong(PROG, a, argv[++i], 1, MAX_COUNT, &o->count) != 0)
        return -1;
    } else if (strcmp(a, "--") == 0) {
      positional = 1;
    } else if (a[0] == '-' && a[1] != '\0' && !positional) {
      fprintf(stderr, PROG ": unknown option '%s' (see --help)\n", a);
      return -1;
    } else if (!o->topic) {
      o->topic = a;
    } else if (!o->message) {
      o->message = a;
    } else {
      fprintf(stderr,
              PROG ": one TOPIC and at most one MESSAGE ('%s' is one too "
                   "many; quote a message with spaces)\n",
              a);
      return -1;
    }
  }
  if (!o->topic) {
    fprintf(stderr, PROG ": TOPIC is required (see --help)\n");
    return -1;
  }
  return cli_check_opts(PROG, &o->conn);
}

/* Reads all of stdin into p->payload. Returns 0, or -1 after printing. */
static int read_stdin(pub *p) {
  size_t cap = 4096;
  uint8_t *buf = malloc(cap);
  if (!buf) goto nomem;
  for (;;) {
    if (p->len == cap) {
      if (cap >= STDIN_MAX) {
        fprintf(stderr, PROG ": standard input holds more than %u bytes\n",
                STDIN_MAX);
        free(buf);
        return -1;
      }
      uint8_t *bigger = realloc(buf, cap * 2);
      if (!bigger) goto nomem;
      buf = bigger;
      cap *= 2;
    }
    ssize_t n = read(STDIN_FILENO, buf + p->len, cap - p->len);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      fprintf(stderr, PROG ": cannot read standard input: %s\n",
              strerror(errno));
      free(buf);
      return -1;
    }
    if (n == 0) break;
    p->len += (size_t)n;
  }
  p->payload = buf;
  return 0;
nomem:
  free(buf);
  fprintf(stderr, PROG ": out of memory\n");
  return -1;
}

static void pump(pub *p);

static void on_published(qrpc_broker_client *bc, int status,
                         uint32_t subscribers, const char *detail, void *ud) {
  pub *p = ud;
  (void)bc;
  p->answered++;
  if (p->c.stopped) return;
  if (status == QRPC_STATUS_UNAUTHENTICATED) {
    cli_fail(&p->c, "the broker at %s refused the token (-t): %s%s%s",
             p->opt.conn.server, qrpc_status_name(status),
             detail && detail[0] ? ": " : "", detail ? detail : "");
    return;
  }
  if (status != QRPC_STATUS_OK) {
    const char *what = status == QRPC_STATUS_PERMISSION_DENIED
                           ? "refused to let this client publish on"
                       : status == QRPC_STATUS_UNAVAILABLE
                           ? "may not have taken a message on"
                           : "did not take a message on";
    cli_fail(&p->c, "the broker %s '%s': %s%s%s", what, p->opt.topic,
             qrpc_status_name(status), detail && detail[0] ? ": " : "",
             detail ? detail : "");
    return;
  }
  p->subscribers += subscribers;
  if (p->answered == p->opt.count) {
    if (p->opt.conn.verbose)
      fprintf(stderr,
              PROG ": the broker took %lu message%s on '%s' (%llu "
                   "deliveries)\n",
              p->answered, p->answered == 1 ? "" : "s", p->opt.topic,
              (unsigned long long)p->subscribers);
    cli_done(&p->c);
    return;
  }
  pump(p);
}

/* Publishes until WINDOW are unanswered or all were sent. */
static void pump(pub *p) {
  int flags = p->opt.retain ? QRPC_BROKER_RETAIN : 0;
  while (p->sent < p->opt.count && p->sent - p->answered < WINDOW) {
    int rc = qrpc_broker_publish(p->c.bc, p->opt.topic, p->payload, p->len,
                                 flags, on_published, p);
    if (rc == QRPC_EINVAL && p->sent == 0) {
      const char *bad = qrpc_broker_topic_problem(p->opt.topic);
      cli_fail(&p->c, "invalid topic '%s': %s", p->opt.topic,
               bad ? bad : "refused");
      p->c.status = CLI_EXIT_USAGE;
      return;
    }
    if (rc == QRPC_EMSGSIZE) {
      cli_fail(&p->c,
               "the message (%zu bytes) is larger than the broker "
               "takes (its --max-payload)",
               p->len);
      return;
    }
    if (rc != 0) {
      cli_fail(&p->c, "cannot publish on '%s': %s", p->opt.topic,
               qrpc_strerror(rc));
      return;
    }
    p->sent++;
  }
}

int main(int argc, char **argv) {
  pub p;
  memset(&p, 0, sizeof(p));
  int rc = parse_args(argc, argv, &p.opt);
  if (rc != 0) return rc > 0 ? CLI_EXIT_OK : CLI_EXIT_USAGE;
  if (p.opt.message) {
    p.payload = (uint8_t *)p.opt.message;
    p.len = strlen(p.opt.message);
  } else if (read_stdin(&p) != 0) {
    return CLI_EXIT_FAIL;
  }
  int status = CLI_EXIT_FAIL;
  /* Publishes wait in the client until the broker accepted it. */
  if (cli_start(&p.c, PROG, &p.opt.conn, NULL, &p) == 0) {
    pump(&p);
    status = p.c.stopped ? p.c.status : cli_run(&p.c);
  } else {
    status = p.c.status;
  }
  cli_free(&p.c);
  if (!p.opt.message) free(p.payload);
  return status;
}
