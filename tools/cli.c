/* The connection and the run shared by qrpc-pub and qrpc-sub (cli.h). */
#include "cli.h"

#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* How long cli_free() lets the close reach the broker. */
#define CLOSE_GRACE_MS 100

const char cli_conn_help[] =
    "CONNECTION OPTIONS\n"
    "    -s, --server HOST:PORT[,HOST:PORT...]\n"
    "        the broker (default " CLI_DEFAULT_SERVER "); with several,\n"
    "        the nodes of a cluster, tried in turn: when one fails or is\n"
    "        lost the next is tried and the subscriptions made again\n"
    "    -t, --token TOKEN\n"
    "        access token for the broker's ACL (default: anonymous)\n"
    "    --ca PEM\n"
    "        CA certificates to trust (default: the system's)\n"
    "    --servername NAME\n"
    "        name the broker's certificate must carry (default: HOST)\n"
    "    --cert PEM, --key PEM\n"
    "        client certificate and its key, for brokers that require\n"
    "        one (qrpc-broker --client-ca)\n"
    "    --connect-timeout SECONDS\n"
    "        give up when the broker has not accepted the connection\n"
    "        after this long, also after losing it (default 10)\n"
    "    -v, --verbose\n"
    "        log qrpc's messages to stderr\n"
    "    -h, --help\n"
    "        this text\n";

void cli_opts_default(cli_opts *o) {
  memset(o, 0, sizeof(*o));
  o->server = CLI_DEFAULT_SERVER;
  o->connect_timeout_s = CLI_DEFAULT_CONNECT_TIMEOUT;
}

int cli_parse_ulong(const char *prog, const char *flag, const char *v,
                    unsigned long min, unsigned long max, unsigned long *out) {
  char *end = NULL;
  errno = 0;
  unsigned long n = strtoul(v, &end, 10);
  if (errno != 0 || end == v || *end != '\0' || v[0] == '-' || n < min ||
      n > max) {
    fprintf(stderr, "%s: %s expects a whole number from %lu to %lu, not '%s'\n",
            prog, flag, min, max, v);
    return -1;
  }
  *out = n;
  return 0;
}

int cli_parse_conn_opt(const char *prog, int argc, char **argv, int *i,
                       cli_opts *o) {
  const char *a = argv[*i];
  if (strcmp(a, "-v") == 0 || strcmp(a, "--verbose") == 0) {
    o->verbose = 1;
    return 1;
  }
  static const char *const names[][2] = {
      {"-s", "--server"},       {"-t", "--token"}, {"", "--ca"},
      {"", "--servername"},     {"", "--cert"},    {"", "--key"},
      {"", "--connect-timeout"}};
  const char **dst[] = {&o->server, &o->token, &o->ca, &o->servername,
                        &o->cert,   &o->key,   NULL};
  size_t n = sizeof(names) / sizeof(names[0]), k = 0;
  while (k < n && strcmp(a, names[k][0]) != 0 && strcmp(a, names[k][1]) != 0)
    k++;
  if (k == n) return 0;
  if (*i + 1 >= argc || argv[*i + 1][0] == '\0') {
    fprintf(stderr, "%s: %s expects a value (see --help)\n", prog, a);
    return -1;
  }
  const char *v = argv[++*i];
  if (dst[k]) {
    *dst[k] = v;
    return 1;
  }
  return cli_parse_ulong(prog, a, v, 1, CLI_MAX_CONNECT_TIMEOUT,
                         &o->connect_timeout_s) == 0
             ? 1
             : -1;
}

int cli_check_opts(const char *prog, const cli_opts *o) {
  if ((o->cert == NULL) != (o->key == NULL)) {
    fprintf(stderr,
            "%s: %s needs %s as well (the client certificate and its key go "
            "together)\n",
            prog, o->cert ? "--cert" : "--key", o->cert ? "--key" : "--cert");
    return -1;
  }
  if (strchr(o->server, ':') == NULL) {
    fprintf(stderr, "%s: -s expects HOST:PORT, not '%s'\n", prog, o->server);
    return -1;
  }
  return 0;
}

void cli_fail(cli *c, const char *fmt, ...) {
  if (c->stopped) return;
  c->stopped = 1;
  c->status = CLI_EXIT_FAIL;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", c->prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  if (c->loop) qrpc_loop_stop(c->loop);
}

void cli_done(cli *c) {
  if (c->stopped) return;
  c->stopped = 1;
  c->status = CLI_EXIT_OK;
  qrpc_loop_stop(c->loop);
}

static void on_log(qrpc_log_level level, const char *msg, void *user_data) {
  cli *c = user_data;
  /* Without --verbose the tools say themselves why they stop. */
  if (c->opt.verbose)
    fprintf(stderr, "%s: qrpc %s: %s\n", c->prog, qrpc_log_level_name(level),
            msg);
}

static void arm_connect_timer(cli *c) {
  c->last_failure[0] = '\0';
  qrpc_timer_start(c->connect_timer,
                   (uint64_t)c->opt.connect_timeout_s * 1000000000u, 0);
}

static void on_connect_timeout(qrpc_timer *t, void *arg) {
  cli *c = arg;
  (void)t;
  if (c->ready) return;
  const char *why = c->last_failure[0] ? c->last_failure
                                       : "no answer; is qrpc-broker running "
                                         "there?";
  cli_fail(c, "cannot connect to the broker at %s within %lu s: %s",
           c->opt.server, c->opt.connect_timeout_s, why);
}

/* Each connection attempt's outcome. The client retries on its own; a
 * TLS failure will not mend by waiting, so the tool stops at once. */
static void on_state(qrpc_client *rpc, const qrpc_client_state_info *info,
                     void *ud) {
  cli *c = ud;
  (void)rpc;
  if (info->state != QRPC_CLIENT_FAILED || c->stopped) return;
  const qrpc_close_info *ci = info->close;
  if (info->error == QRPC_ECERT && ci && !ci->local) {
    /* The handshake completed on this side before the broker judged the
     * client's certificate. */
    cli_fail(c, "the broker at %s refused %s", c->opt.server,
             c->opt.cert ? "the client certificate --cert"
                         : "a client without a certificate (give --cert and "
                           "--key)");
    return;
  }
  const char *why =
      ci && ci->reason[0] ? ci->reason : qrpc_strerror(info->error);
  if (info->error == QRPC_ECERT || info->error == QRPC_ETLS ||
      info->error == QRPC_EALPN) {
    cli_fail(c, "cannot connect to the broker at %s: %s", c->opt.server, why);
    return;
  }
  snprintf(c->last_failure, sizeof(c->last_failure), "%s", why);
  if (c->opt.verbose)
    fprintf(stderr, "%s: attempt %llu failed: %s; next in %llu ms\n", c->prog,
            (unsigned long long)info->attempt, why,
            (unsigned long long)info->retry_in_ms);
}

static void on_signal(qrpc_loop *loop, int sig, void *arg) {
  cli *c = arg;
  (void)loop;
  if (c->signal_ok)
    cli_done(c);
  else
    cli_fail(c, "interrupted by %s", sig == SIGTERM ? "SIGTERM" : "SIGINT");
}

static void on_ready(qrpc_broker_client *bc, int status, const char *detail,
                     void *ud) {
  cli *c = ud;
  (void)bc;
  if (status != 0) {
    cli_fail(c, "the broker at %s refused %s: %s%s%s", c->opt.server,
             c->opt.token ? "the token (-t)" : "anonymous access",
             qrpc_status_name(status), detail ? ": " : "",
             detail ? detail : "");
    return;
  }
  qrpc_timer_stop(c->connect_timer);
  int first = !c->ready;
  c->ready = 1;
  if (c->opt.verbose)
    fprintf(stderr, "%s: connected to %s\n", c->prog, c->opt.server);
  if (first && c->on_ready) c->on_ready(c);
}

/* Why a connection closed, in words. */
static const char *close_reason(const qrpc_close_info *info) {
  if (info->reason && info->reason[0]) return info->reason;
  if (info->error) return qrpc_strerror(info->error);
  switch (info->kind) {
  case QRPC_CLOSE_IDLE: return "idle timeout";
  case QRPC_CLOSE_HANDSHAKE_TIMEOUT: return "handshake timeout";
  case QRPC_CLOSE_TLS: return "TLS handshake failed";
  default: return info->local ? "closed here" : "closed by the broker";
  }
}

static void on_disconnect(qrpc_broker_client *bc, const qrpc_close_info *info,
                          void *ud) {
  cli *c = ud;
  (void)bc;
  c->ready = 0;
  if (c->stopped) return;
  fprintf(stderr, "%s: lost the connection to %s: %s; reconnecting\n", c->prog,
          c->opt.server, close_reason(info));
  arm_connect_timer(c);
}

static int load_tls(cli *c) {
  const cli_opts *o = &c->opt;
  int rc = qrpc_tls_config_new(&c->tls);
  if (rc != 0) {
    cli_fail(c, "cannot set up TLS: %s", qrpc_strerror(rc));
    return -1;
  }
  if (o->ca && (rc = qrpc_tls_config_set_ca_file(c->tls, o->ca)) != 0) {
    cli_fail(c, "cannot load --ca %s: %s", o->ca, qrpc_strerror(rc));
    return -1;
  }
  if (o->cert &&
      (rc = qrpc_tls_config_set_cert_files(c->tls, o->cert, o->key)) != 0) {
    cli_fail(c, "cannot load --cert %s / --key %s: %s", o->cert, o->key,
             qrpc_strerror(rc));
    return -1;
  }
  return 0;
}

static int start_events(cli *c) {
  if (qrpc_timer_new(c->loop, on_connect_timeout, c, &c->connect_timer) != 0 ||
      qrpc_loop_on_signal(c->loop, SIGTERM, on_signal, c, &c->sigterm) != 0 ||
      qrpc_loop_on_signal(c->loop, SIGINT, on_signal, c, &c->sigint) != 0) {
    cli_fail(c, "cannot watch signals and timers");
    return -1;
  }
  arm_connect_timer(c);
  return 0;
}

int cli_start(cli *c, const char *prog, const cli_opts *o,
              cli_ready_fn ready_fn, void *user_data) {
  memset(c, 0, sizeof(*c));
  c->prog = prog;
  c->opt = *o;
  c->on_ready = ready_fn;
  c->user_data = user_data;
  qrpc_log_set_handler(on_log, c);
  qrpc_log_set_level(o->verbose ? QRPC_LOG_DEBUG : QRPC_LOG_INFO);
  int rc = qrpc_loop_new(NULL, &c->loop);
  if (rc != 0) {
    cli_fail(c, "cannot create the loop: %s", qrpc_strerror(rc));
    return -1;
  }
  if (load_tls(c) != 0 || start_events(c) != 0) return -1;
  qrpc_broker_client_opts bo;
  qrpc_broker_client_opts_default(&bo);
  bo.client.server_name = o->servername;
  bo.client.on_state = on_state;
  bo.token = o->token;
  bo.client_name = prog;
  bo.on_ready = on_ready;
  bo.on_disconnect = on_disconnect;
  bo.user_data = c;
  rc = qrpc_broker_client_new(c->loop, o->server, c->tls, &bo, &c->bc);
  if (rc != 0) {
    c->bc = NULL;
    cli_fail(c, "cannot connect to -s %s: %s%s", o->server, qrpc_strerror(rc),
             rc == QRPC_EINVAL ? " (expected HOST:PORT)" : "");
    return -1;
  }
  return 0;
}

int cli_run(cli *c) {
  int rc = qrpc_loop_run(c->loop);
  if (rc != 0) cli_fail(c, "the loop failed: %s", qrpc_strerror(rc));
  if (!c->stopped) cli_fail(c, "stopped without finishing");
  return c->status;
}

void cli_free(cli *c) {
  c->stopped = 1;
  qrpc_broker_client_free(c->bc);
  c->bc = NULL;
  qrpc_timer_free(c->connect_timer);
  qrpc_signal_free(c->sigterm);
  qrpc_signal_free(c->sigint);
  c->connect_timer = NULL;
  c->sigterm = c->sigint = NULL;
  qrpc_tls_config_free(c->tls);
  if (c->loop) {
    /* Let the close reach the broker before the process goes. */
    qrpc_loop_run_for(c->loop, CLOSE_GRACE_MS);
    qrpc_loop_free(c->loop);
  }
  qrpc_log_set_handler(NULL, NULL);
}
