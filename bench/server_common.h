/*
 * What the two benchmark servers share: their flags, their qrpc options,
 * and the lifecycle READY, serve until SIGTERM or SIGINT, RESULT.
 */
#ifndef BENCH_SERVER_COMMON_H
#define BENCH_SERVER_COMMON_H

#include "args.h"
#include "bench.h"

typedef struct bench_server_common {
  const char *host;
  uint64_t port;
  const char *tls_cert;
  const char *tls_key;
  const char *tls_client_ca; /* CA of required client certificates, or NULL */
  uint64_t max_conns;
  uint64_t max_udp_payload; /* 0: the library's default */
  uint64_t dead_peer_ms;    /* qrpc_conn_opts.dead_peer_timeout_ms */
  int precise_timers;       /* set by the family before bench_server_start() */
  struct event_base *base;  /* the loop's, when precise_timers */
  const char *metrics;      /* --metrics HOST:PORT, or NULL */
  uint64_t busy_poll_us;    /* qrpc_loop_set_busy_poll(); 0: off */
  bench_sim sim;            /* --loss, --delay, ... */
} bench_server_common;

/* Appends the server flags to flags after n entries; returns the count. */
size_t bench_server_common_flags(bench_flag *flags, size_t n,
                                 bench_server_common *c);

/* Fills o for a benchmark server: connection limits for the idle family,
 * long idle timeouts, frames up to BENCH_MAX_FRAME. */
void bench_server_opts(const bench_server_common *c, qrpc_server_opts *o);

/* Makes the loop (bench_loop_new()), the TLS config and the server
 * listening on host:port. Returns 0, or 1 after saying why (everything
 * made is freed). */
int bench_server_start(const char *prog, bench_server_common *c,
                       const qrpc_server_opts *o, qrpc_loop **loop,
                       qrpc_server **srv);

/* Frees the server, then the loop (and its base). */
void bench_server_stop(bench_server_common *c, qrpc_loop *loop,
                       qrpc_server *srv);

/* Prints "PORT n" when the port was chosen by the system (--port 0), then
 * "READY", and flushes; runs the loop until SIGTERM or SIGINT. Returns 0,
 * or 1 when the loop failed. */
int bench_server_serve(const char *prog, qrpc_loop *loop, qrpc_server *srv,
                       const bench_server_common *c);

#endif
