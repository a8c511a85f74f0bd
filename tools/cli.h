/*
 * What qrpc-pub and qrpc-sub share: the connection options and their
 * parsing, the broker client with its TLS configuration, the connect
 * timeout, signals, and ending the run with a status and a message.
 *
 * Exit statuses (both tools): 0 when the work is done, 1 when it failed
 * (connection, TLS, refusal by the broker's ACL, a lost connection), 2 on a
 * bad command line, as qrpc-broker and the examples.
 */
#ifndef QRPC_TOOLS_CLI_H
#define QRPC_TOOLS_CLI_H

#include <stddef.h>

#include <qrpc/broker.h>
#include <qrpc/qrpc.h>

#define CLI_EXIT_OK 0
#define CLI_EXIT_FAIL 1
/* A bad command line: 1 as well, as mosquitto_pub and nats exit. */
#define CLI_EXIT_USAGE 1

/* The default broker address: qrpc-broker's default --listen. */
#define CLI_DEFAULT_SERVER "127.0.0.1:7422"
/* Seconds to wait for the broker before giving up. */
#define CLI_DEFAULT_CONNECT_TIMEOUT 10
#define CLI_MAX_CONNECT_TIMEOUT 3600

typedef struct cli_opts {
  const char *server;     /* -s HOST:PORT */
  const char *token;      /* -t TOKEN */
  const char *ca;         /* --ca PEM; NULL: the system's store */
  const char *servername; /* --servername; NULL: the host of -s */
  const char *cert;       /* --cert PEM */
  const char *key;        /* --key PEM */
  const char *name;       /* --name, for the broker's log */
  unsigned long connect_timeout_s;
  int verbose;
} cli_opts;

typedef struct cli cli;

/* Called once the client is ready (connected, token accepted). */
typedef void (*cli_ready_fn)(cli *c);

struct cli {
  const char *prog;
  cli_opts opt;
  qrpc_loop *loop;
  qrpc_tls_config *tls;
  qrpc_broker_client *bc;
  cli_ready_fn on_ready;
  void *user_data;
  int signal_ok; /* SIGINT and SIGTERM end the run with 0, not 1 */
  int ready;     /* the client is ready now */
  int stopped;   /* cli_done() or cli_fail() ran */
  int status;    /* exit status */
  qrpc_timer *connect_timer;
  qrpc_signal *sigterm, *sigint;
  char last_failure[320]; /* why the last connection attempt failed */
};

/* Sets the defaults of o. */
void cli_opts_default(cli_opts *o);

/* Parses the connection option at argv[*i] (its value, if any, at
 * argv[*i + 1]) into o. Returns 1 and moves *i past it, 0 when argv[*i] is
 * not one of them, or -1 after printing what is wrong. */
int cli_parse_conn_opt(const char *prog, int argc, char **argv, int *i,
                       cli_opts *o);

/* Checks the options that depend on each other; -1 after printing. */
int cli_check_opts(const char *prog, const cli_opts *o);

/* Parses a whole number from min to max for flag; -1 after printing. */
int cli_parse_ulong(const char *prog, const char *flag, const char *v,
                    unsigned long min, unsigned long max, unsigned long *out);

/* The connection options' lines of the tools' --help. */
extern const char cli_conn_help[];

/* Creates the loop, the TLS configuration and the broker client, and
 * arms the connect timeout and the signals. on_ready runs once the broker
 * accepted the client. Returns 0, or -1 after printing why (c->status is
 * then 1). */
int cli_start(cli *c, const char *prog, const cli_opts *o,
              cli_ready_fn on_ready, void *user_data);

/* Runs the loop until cli_done() or cli_fail(); returns the exit status. */
int cli_run(cli *c);

/* Ends the run with status 0. */
void cli_done(cli *c);

/* Ends the run with status 1, printing "PROG: " and the message on stderr
 * (only the first failure is printed). */
void cli_fail(cli *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Frees everything, after letting the connection's close reach the
 * broker. */
void cli_free(cli *c);

#endif
