/*
 * What the RPC and game clients share: the loop and TLS setup, a
 * progress line from running totals, and the order of teardown.
 */
#ifndef BENCH_CLIENT_COMMON_H
#define BENCH_CLIENT_COMMON_H

#include "args.h"
#include "bench.h"
#include "report.h"

typedef struct bench_client_env {
  qrpc_loop *loop;
  struct event_base *base; /* the loop's, with precise timers */
  qrpc_tls_config *tls;
  qrpc_endpoint *shared; /* --shared-socket: set qrpc_conn_opts.via to it */
  char addr[300]; /* "host:port" */
} bench_client_env;

/* Raises the descriptor limit to fds (saying so when the hard limit is
 * lower), makes the loop (bench_loop_new() with precise) and the client
 * TLS config, and joins the address. Returns 0, or 1 after saying why. */
int bench_client_env_init(bench_client_env *e, const char *prog,
                          const bench_client_common *c, uint64_t fds,
                          int precise);

/* Frees the TLS config, lets the loop send the closes of connections
 * already closed for a moment, frees the shared socket's endpoint and the
 * loop. Everything on it must be freed first. */
void bench_client_env_cleanup(bench_client_env *e);

/* The client options every family starts from: SNI from --tls-name,
 * frames up to BENCH_MAX_FRAME. */
void bench_client_opts(const bench_client_common *c, qrpc_client_opts *o);

/* Adds the common parameters (family, host, port, warmup, duration, and
 * whether the server was verified) to r. */
void bench_report_common(bench_report *r, const char *family,
                         const bench_client_common *c);

/* Why a connection closed, for a message: its reason, or its error; a
 * server's refusal of this client's certificate (or of its absence) names
 * the flags that matter. Static or borrowed from info. */
const char *bench_close_reason(const qrpc_close_info *info);

/* Whether info is a server refusing this client's certificate, or its
 * absence: the run cannot succeed, and nothing else is the first error. */
int bench_close_cert_refused(const qrpc_close_info *info);

/* A progress line's rate: events since the last line over the seconds
 * since then. Keeps its own state. */
typedef struct bench_rate {
  uint64_t last_count;
  uint64_t last_ns;
} bench_rate;

double bench_rate_next(bench_rate *r, uint64_t count);

#endif
