/*
 * Command-line flags of the subcommands: a table of flags per subcommand,
 * strict parsing, and messages that name the flag and what it expects.
 */
#ifndef BENCH_ARGS_H
#define BENCH_ARGS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

typedef enum bench_flag_kind {
  BENCH_FLAG_STR,     /* const char **: any non-empty text */
  BENCH_FLAG_UINT,    /* uint64_t *: a whole number in [min, max] */
  BENCH_FLAG_SECONDS, /* double *: a decimal number of seconds in [min, max] */
  BENCH_FLAG_BOOL,    /* int *: present or not; takes no value */
  BENCH_FLAG_CHOICE,  /* int *: the index of the value in choices */
} bench_flag_kind;

typedef struct bench_flag {
  const char *name; /* "--port" */
  bench_flag_kind kind;
  void *dst; /* holds the default on entry */
  double min, max;
  const char *const *choices; /* BENCH_FLAG_CHOICE: NULL-terminated */
  const char *meta;           /* the value's name in --help ("P") */
  const char *help;
  int required;
  int seen; /* set by bench_args_parse() */
} bench_flag;

/* The link conditioner's flags (qrpc_conn_opts.sim_*), for a client's or
 * a server's outgoing packets; all 0: off. */
typedef struct bench_sim {
  uint64_t loss_pct;
  uint64_t reorder_pct;
  uint64_t delay_ms;
  uint64_t jitter_ms;
} bench_sim;

/* The flags every client takes, into their own fields. */
typedef struct bench_client_common {
  const char *host;
  uint64_t port;
  const char *tls_ca;
  const char *tls_name;
  const char *tls_cert; /* client certificate, with tls_key; or NULL */
  const char *tls_key;
  double warmup_s;
  double duration_s;
  int json;
  const char *qlog_dir;
  int shared_socket; /* all connections through one socket */
  uint64_t busy_poll_us; /* qrpc_loop_set_busy_poll(); 0: off */
  bench_sim sim;
} bench_client_common;

/* The most flags one subcommand has. */
#define BENCH_MAX_FLAGS 40

/* Appends the conditioner's flags (--loss, --delay, --jitter, --reorder)
 * to flags after n entries; returns the new count. Sets s to 0. */
size_t bench_sim_flags(bench_flag *flags, size_t n, bench_sim *s);

struct qrpc_conn_opts;
/* Applies s to o. */
void bench_sim_apply(const bench_sim *s, struct qrpc_conn_opts *o);

/* Appends the client flags shared by every family to flags (which has
 * room for BENCH_MAX_FLAGS) after n entries; returns the new count. Sets
 * the defaults in c. */
size_t bench_client_common_flags(bench_flag *flags, size_t n,
                                 bench_client_common *c);

/* Parses argv against flags (each "--name VALUE" or "--name=VALUE").
 * Returns 0 when parsed, 1 when --help was printed (to stdout), 2 after
 * printing a message naming the bad flag (to stderr). synopsis and about
 * head the help text. */
int bench_args_parse(const char *prog, const char *synopsis, const char *about,
                     bench_flag *flags, size_t nflags, int argc, char **argv);

/* Prints the help text of a subcommand to f. */
void bench_args_usage(FILE *f, const char *prog, const char *synopsis,
                      const char *about, const bench_flag *flags,
                      size_t nflags);

/* The flag named name in flags, or NULL. */
const bench_flag *bench_args_find(const bench_flag *flags, size_t nflags,
                                  const char *name);

#endif
