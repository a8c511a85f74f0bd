/*
 * hello_client: calls Greeter.SayHello of hello.proto with the stubs
 * protoc-gen-qrpc generates (hello.qrpc.h) and prints the reply.
 *
 *   hello_client [--connect HOST:PORT] [--ca PEM] [--servername NAME]
 *                [--cert PEM --key PEM] [--timeout SECONDS] [--verbose]
 *                [--interval MS [--deadline MS]] [NAME]
 *
 * The defaults match `make certs` and hello_server's: 127.0.0.1:4433,
 * build/certs/ca.pem, server name localhost, and NAME "world". --cert and
 * --key (both or neither) give the client certificate presented to a
 * server that requires one (hello_server --client-ca; `make certs` makes
 * build/certs/client.pem and client-key.pem); a server that refuses the
 * client's certificate, or the lack of one, is reported as such.
 *
 * With --interval it keeps calling instead, one call every MS
 * milliseconds, each with a --deadline (default 500 ms), for --timeout
 * seconds, and prints a line whenever the outcome changes ("EVENT <unix
 * ms> OK", "EVENT <unix ms> FAIL <status>", "EVENT <unix ms> DISCONNECTED
 * <reason>"), then "RESULT calls=N ok=N failed=N"; docs/reliability.md
 * uses it to time a server restart. Exit status 0 if the last call
 * succeeded.
 *
 * The client's on_state callback (qrpc_client_opts) follows each
 * connection attempt: a TLS failure (an untrusted certificate, say) ends
 * the program at once with its reason, other failures are retried until
 * --timeout and the last one is named then.
 *
 * Exit status: 0 with the reply printed, 1 when the server could not be
 * reached or the call failed (the reason on stderr), 2 on a bad command
 * line.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include <qrpc/qrpc.h>

#include "hello.qrpc.h"

#define PROG "hello_client"

typedef struct options {
  const char *connect;
  const char *ca;
  const char *servername;
  const char *cert;
  const char *key;
  const char *name;
  unsigned long timeout_s;
  unsigned long interval_ms; /* 0: one call */
  unsigned long deadline_ms;
  int verbose;
} options;

/* What the client learnt about its connection, for the error message. */
typedef struct client_state {
  qrpc_loop *loop;
  int connected;
  int cert_refused; /* the server closed the connection over our certificate */
  int interval;     /* --interval: print connection changes */
  int gave_up;      /* a failure waiting will not mend (TLS): stop now */
  unsigned long failures; /* attempts that failed */
  int last_error;         /* QRPC_E* of the last failure */
  char last_reason[320];  /* and its reason */
} client_state;

static client_state state;

static unsigned long long unix_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (unsigned long long)ts.tv_sec * 1000 + (unsigned long long)ts.tv_nsec / 1000000;
}
static int verbose;

static void usage(FILE *f) {
  fprintf(f, "usage: " PROG " [--connect HOST:PORT] [--ca PEM]"
             " [--servername NAME]\n"
             "         [--cert PEM --key PEM] [--timeout SECONDS] [--verbose]"
             " [NAME]\n"
             "\n"
             "  --connect HOST:PORT  the server (default 127.0.0.1:4433)\n"
             "  --ca PEM             CA to trust (default build/certs/ca.pem)\n"
             "  --servername NAME    name to verify (default localhost)\n"
             "  --cert PEM           client certificate, for servers that\n"
             "                       require one (with --key)\n"
             "  --key PEM            its private key (with --cert)\n"
             "  --timeout SECONDS    give up after this long, 1..3600\n"
             "                       (default 5)\n"
             "  --verbose            log qrpc debug messages to stderr\n"
             "  --interval MS        call every MS ms (1..60000) for\n"
             "                       --timeout seconds, printing each change\n"
             "                       of outcome\n"
             "  --deadline MS        each such call's deadline (default 500)\n"
             "  NAME                 who to greet (default world)\n");
}

/* Returns 0 and fills o, 1 when help was printed, -1 on a bad command line
 * (after saying which argument was wrong). */
static int parse_args(int argc, char **argv, options *o) {
  memset(o, 0, sizeof(*o));
  o->connect = "127.0.0.1:4433";
  o->ca = "build/certs/ca.pem";
  o->servername = "localhost";
  o->timeout_s = 5;
  o->deadline_ms = 500;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    const char **dst = NULL;
    if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
      usage(stdout);
      return 1;
    } else if (strcmp(a, "--verbose") == 0 || strcmp(a, "-v") == 0) {
      o->verbose = 1;
      continue;
    } else if (strcmp(a, "--connect") == 0) {
      dst = &o->connect;
    } else if (strcmp(a, "--ca") == 0) {
      dst = &o->ca;
    } else if (strcmp(a, "--servername") == 0) {
      dst = &o->servername;
    } else if (strcmp(a, "--cert") == 0) {
      dst = &o->cert;
    } else if (strcmp(a, "--key") == 0) {
      dst = &o->key;
    } else if (strcmp(a, "--timeout") != 0 && strcmp(a, "--interval") != 0 &&
               strcmp(a, "--deadline") != 0) {
      if (a[0] == '-') {
        fprintf(stderr, PROG ": unknown option '%s'\n", a);
        usage(stderr);
        return -1;
      }
      if (o->name != NULL) {
        fprintf(stderr, PROG ": one NAME only ('%s' and '%s' given)\n", o->name,
                a);
        return -1;
      }
      o->name = a;
      continue;
    }
    if (i + 1 >= argc || argv[i + 1][0] == '\0') {
      fprintf(stderr, PROG ": %s expects a value\n", a);
      return -1;
    }
    const char *v = argv[++i];
    if (dst != NULL) {
      *dst = v;
      continue;
    }
    int secs = strcmp(a, "--timeout") == 0;
    unsigned long max = secs ? 3600 : 60000;
    char *end = NULL;
    errno = 0;
    unsigned long n = strtoul(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || v[0] == '-' || n < 1 ||
        n > max) {
      fprintf(stderr, PROG ": %s expects whole %s from 1 to %lu, not '%s'\n",
              a, secs ? "seconds" : "milliseconds", max, v);
      return -1;
    }
    if (secs)
      o->timeout_s = n;
    else if (strcmp(a, "--interval") == 0)
      o->interval_ms = n;
    else
      o->deadline_ms = n;
  }
  if ((o->cert == NULL) != (o->key == NULL)) {
    fprintf(stderr,
            PROG ": %s needs %s as well (the client certificate and "
                 "its key go together)\n",
            o->cert ? "--cert" : "--key", o->cert ? "--key" : "--cert");
    return -1;
  }
  if (o->name == NULL) o->name = "world";
  return 0;
}

static void on_log(qrpc_log_level level, const char *msg, void *user_data) {
  (void)user_data;
  if (verbose || level >= QRPC_LOG_ERROR)
    fprintf(stderr, PROG ": qrpc %s: %s\n", qrpc_log_level_name(level), msg);
}

/* The client retries failed attempts on its own; each transition comes
 * here once. The last failure explains a timeout; a TLS failure will not
 * mend by waiting, so the one-shot call gives up at once. */
static void on_state(qrpc_client *cli, const qrpc_client_state_info *info,
                     void *user_data) {
  (void)cli, (void)user_data;
  if (info->state == QRPC_CLIENT_READY) {
    state.connected = 1;
    if (verbose) fprintf(stderr, PROG ": connected\n");
    return;
  }
  if (info->state != QRPC_CLIENT_FAILED) return;
  const qrpc_close_info *ci = info->close;
  const char *why =
      ci && ci->reason[0] ? ci->reason : qrpc_strerror(info->error);
  state.failures++;
  state.last_error = info->error;
  snprintf(state.last_reason, sizeof(state.last_reason), "%s", why);
  if (verbose)
    fprintf(stderr, PROG ": attempt %llu failed: %s; next in %llu ms\n",
            (unsigned long long)info->attempt, why,
            (unsigned long long)info->retry_in_ms);
  /* Under TLS 1.3 a client finishes its side of the handshake before the
   * server has judged its certificate: a refusal arrives as the close of
   * a connection already reported connected. */
  if (ci && info->error == QRPC_ECERT && !ci->local) state.cert_refused = 1;
  if (state.interval) {
    if (info->was_ready) printf("EVENT %llu DISCONNECTED %s\n", unix_ms(), why);
    return;
  }
  if (info->error == QRPC_ECERT || info->error == QRPC_ETLS ||
      info->error == QRPC_EALPN) {
    state.gave_up = 1;
    qrpc_loop_stop(state.loop);
  }
}

/* ---- --interval: a call every interval, outcomes as they change ------- */

typedef struct pacer {
  qrpc_loop *loop;
  qrpc_client *cli;
  const options *opt;
  struct event *tick, *stop;
  unsigned long calls, ok, failed;
  int last; /* -1 before the first answer, else the last status */
} pacer;

static void paced_done(qrpc_call *call,
                       const Qrpc__Examples__Hello__HelloReply *reply,
                       const qrpc_result *res, void *user_data) {
  (void)call, (void)reply;
  pacer *p = user_data;
  if (res->status == QRPC_STATUS_OK)
    p->ok++;
  else
    p->failed++;
  if (res->status != p->last) {
    if (res->status == QRPC_STATUS_OK)
      printf("EVENT %llu OK\n", unix_ms());
    else
      printf("EVENT %llu FAIL %s\n", unix_ms(),
             qrpc_status_name(res->status));
  }
  p->last = res->status;
}

static void paced_tick(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  pacer *p = arg;
  Qrpc__Examples__Hello__HelloRequest request =
      QRPC__EXAMPLES__HELLO__HELLO_REQUEST__INIT;
  request.name = (char *)p->opt->name;
  qrpc_call_opts co;
  qrpc_call_opts_default(&co);
  co.timeout_ms = p->opt->deadline_ms;
  p->calls++;
  int rc = qrpc_examples_hello_Greeter_SayHello(p->cli, &request, &co,
                                                paced_done, p, NULL);
  if (rc != 0) {
    p->failed++;
    printf("EVENT %llu FAIL %s\n", unix_ms(), qrpc_strerror(rc));
    p->last = QRPC_STATUS_UNKNOWN;
  }
}

static void paced_stop(evutil_socket_t fd, short what, void *arg) {
  (void)fd, (void)what;
  pacer *p = arg;
  qrpc_loop_stop(p->loop);
}

/* Returns the exit status. */
static int run_paced(qrpc_loop *loop, qrpc_client *cli, const options *opt) {
  pacer p = {.loop = loop, .cli = cli, .opt = opt, .last = -1};
  struct event_base *base = qrpc_loop_base(loop);
  p.tick = event_new(base, -1, EV_PERSIST, paced_tick, &p);
  p.stop = evtimer_new(base, paced_stop, &p);
  struct timeval every = {(time_t)(opt->interval_ms / 1000),
                          (suseconds_t)(opt->interval_ms % 1000 * 1000)};
  struct timeval total = {(time_t)opt->timeout_s, 0};
  int status = 1;
  if (p.tick && p.stop && event_add(p.tick, &every) == 0 &&
      evtimer_add(p.stop, &total) == 0) {
    printf("EVENT %llu START\n", unix_ms());
    fflush(stdout);
    qrpc_loop_run(loop);
    printf("RESULT calls=%lu ok=%lu failed=%lu\n", p.calls, p.ok, p.failed);
    status = p.last == QRPC_STATUS_OK ? 0 : 1;
  } else {
    fprintf(stderr, PROG ": cannot start the timers\n");
  }
  if (p.tick) event_free(p.tick);
  if (p.stop) event_free(p.stop);
  return status;
}

/* The one-shot call: its outcome, with the reply's message copied. */
typedef struct one_call {
  qrpc_loop *loop;
  int done;
  int status;
  char *message;
} one_call;

static void one_done(qrpc_call *call,
                     const Qrpc__Examples__Hello__HelloReply *reply,
                     const qrpc_result *res, void *user_data) {
  (void)call;
  one_call *one = user_data;
  one->done = 1;
  one->status = res->status;
  if (res->status == QRPC_STATUS_OK && reply && reply->message &&
      !(one->message = strdup(reply->message)))
    one->status = QRPC_STATUS_RESOURCE_EXHAUSTED;
  qrpc_loop_stop(one->loop);
}

/* Prints why the call failed (or was given up). */
static void report_failure(const options *o, int status) {
  if (state.cert_refused) {
    if (o->cert)
      fprintf(stderr,
              PROG ": %s refused the client certificate --cert %s (it "
                   "must be valid, for client authentication, and signed "
                   "by the CA the server trusts for clients)\n",
              o->connect, o->cert);
    else
      fprintf(stderr,
              PROG ": %s requires a client certificate: give --cert PEM "
                   "and --key PEM\n",
              o->connect);
    return;
  }
  if (state.gave_up) {
    fprintf(stderr, PROG ": cannot connect to %s: %s (%s)\n", o->connect,
            state.last_reason, qrpc_strerror(state.last_error));
    return;
  }
  if (!state.connected && (status == QRPC_STATUS_DEADLINE_EXCEEDED ||
                           status == QRPC_STATUS_UNAVAILABLE)) {
    if (state.failures == 0)
      fprintf(stderr,
              PROG ": cannot connect to %s within %lu s: no answer; is "
                   "hello_server running there?\n",
              o->connect, o->timeout_s);
    else
      fprintf(stderr,
              PROG ": cannot connect to %s within %lu s (%lu attempts): "
                   "%s\n",
              o->connect, o->timeout_s, state.failures, state.last_reason);
    return;
  }
  fprintf(stderr, PROG ": SayHello failed: %s (%d)\n", qrpc_status_name(status),
          status);
}

int main(int argc, char **argv) {
  options opt;
  int rc = parse_args(argc, argv, &opt);
  if (rc != 0) return rc > 0 ? 0 : 2;
  verbose = opt.verbose;

  qrpc_log_set_handler(on_log, NULL);
  qrpc_log_set_level(opt.verbose ? QRPC_LOG_DEBUG : QRPC_LOG_INFO);

  qrpc_loop *loop = NULL;
  qrpc_tls_config *tls = NULL;
  qrpc_client *cli = NULL;
  int exit_status = 1;

  if ((rc = qrpc_loop_new(NULL, &loop)) != 0) {
    fprintf(stderr, PROG ": cannot create the loop: %s\n", qrpc_strerror(rc));
    return 1;
  }
  if ((rc = qrpc_tls_config_new(&tls)) != 0 ||
      (rc = qrpc_tls_config_set_ca_file(tls, opt.ca)) != 0) {
    fprintf(stderr,
            PROG ": cannot load --ca %s: %s (make certs creates the default "
                 "one)\n",
            opt.ca, qrpc_strerror(rc));
    goto out;
  }
  if (opt.cert &&
      (rc = qrpc_tls_config_set_cert_files(tls, opt.cert, opt.key)) != 0) {
    fprintf(stderr, PROG ": cannot load --cert %s / --key %s: %s\n", opt.cert,
            opt.key, qrpc_strerror(rc));
    goto out;
  }

  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.server_name = opt.servername;
  co.on_state = on_state;
  state.loop = loop;
  /* Attempts fail (and say why) well before the overall timeout. */
  co.conn.handshake_timeout_ms = opt.timeout_s * 1000 / 2;
  rc = qrpc_client_new(loop, opt.connect, tls, &co, &cli);
  qrpc_tls_config_free(tls); /* the client holds its own reference */
  tls = NULL;
  if (rc != 0) {
    cli = NULL;
    fprintf(stderr, PROG ": cannot connect to --connect %s: %s%s\n",
            opt.connect, qrpc_strerror(rc),
            rc == QRPC_EINVAL ? " (expected HOST:PORT)" : "");
    goto out;
  }

  if (opt.interval_ms) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    state.interval = 1;
    exit_status = run_paced(loop, cli, &opt);
    goto out;
  }

  /* The request is packed during the call; the reply is ours to free. */
  Qrpc__Examples__Hello__HelloRequest request =
      QRPC__EXAMPLES__HELLO__HELLO_REQUEST__INIT;
  request.name = (char *)opt.name;
  one_call one = {.loop = loop, .status = QRPC_STATUS_UNKNOWN};
  qrpc_call_opts callopts;
  qrpc_call_opts_default(&callopts);
  callopts.timeout_ms = opt.timeout_s * 1000;
  rc = qrpc_examples_hello_Greeter_SayHello(cli, &request, &callopts, one_done,
                                            &one, NULL);
  if (rc != 0) {
    fprintf(stderr, PROG ": cannot call SayHello: %s\n", qrpc_strerror(rc));
    goto out;
  }
  /* Until the answer, the deadline, or a failure that waiting will not
   * mend (on_state); qrpc_client_free() below then cancels the call. */
  while (!one.done && !state.gave_up && qrpc_loop_run(loop) == 0) {
  }
  if (one.done && one.status == QRPC_STATUS_OK) {
    printf("%s\n", one.message);
    exit_status = 0;
  } else {
    report_failure(&opt, one.status);
  }
  free(one.message);

out:
  qrpc_client_free(cli);
  qrpc_tls_config_free(tls);
  qrpc_loop_free(loop);
  return exit_status;
}
