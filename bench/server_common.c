#include "server_common.h"

#include <stdio.h>

size_t bench_server_common_flags(bench_flag *flags, size_t n,
                                 bench_server_common *c) {
  c->host = "127.0.0.1";
  c->port = 0;
  c->tls_cert = NULL;
  c->tls_key = NULL;
  c->tls_client_ca = NULL;
  c->max_conns = BENCH_DEFAULT_MAX_CONNS;
  c->max_udp_payload = 0;
  qrpc_endpoint_opts eo;
  qrpc_endpoint_opts_default(&eo);
  c->dead_peer_ms = eo.conn.dead_peer_timeout_ms;
  c->precise_timers = 0;
  c->base = NULL;
  c->metrics = NULL;
  c->busy_poll_us = 0;
  const bench_flag common[] = {
      {"--host", BENCH_FLAG_STR, &c->host, 0, 0, NULL, "HOST",
       "the address to listen on", 0, 0},
      {"--port", BENCH_FLAG_UINT, &c->port, 0, 65535, NULL, "P",
       "the UDP port (0: any free one, printed as PORT n before READY)", 1, 0},
      {"--tls-cert", BENCH_FLAG_STR, &c->tls_cert, 0, 0, NULL, "PEM",
       "certificate chain (without it: a throwaway self-signed one for "
       "localhost)",
       0, 0},
      {"--tls-key", BENCH_FLAG_STR, &c->tls_key, 0, 0, NULL, "PEM",
       "the certificate's private key", 0, 0},
      {"--tls-client-ca", BENCH_FLAG_STR, &c->tls_client_ca, 0, 0, NULL, "PEM",
       "require a client certificate verified against this CA (mutual TLS)", 0,
       0},
      {"--max-conns", BENCH_FLAG_UINT, &c->max_conns, 1, 1000000, NULL, "N",
       "connections held at once", 0, 0},
      {"--max-udp-payload", BENCH_FLAG_UINT, &c->max_udp_payload, 0, 65527,
       NULL, "BYTES",
       "largest QUIC packet (qrpc_conn_opts.max_udp_payload; 0: the "
       "default, 1200 to 65527)",
       0, 0},
      {"--dead-peer-ms", BENCH_FLAG_UINT, &c->dead_peer_ms, 0, 600000, NULL,
       "MS",
       "dead-peer detection (qrpc_conn_opts.dead_peer_timeout_ms; 0: off)", 0,
       0},
      {"--metrics", BENCH_FLAG_STR, &c->metrics, 0, 0, NULL, "HOST:PORT",
       "serve Prometheus metrics at /metrics there (docs/api.md)", 0, 0},
      {"--busy-poll", BENCH_FLAG_UINT, &c->busy_poll_us, 0, 1000000, NULL,
       "US",
       "poll without sleeping for US microseconds after the last packet "
       "(qrpc_loop_set_busy_poll; uses the whole CPU meanwhile)",
       0, 0},
  };
  for (size_t i = 0; i < sizeof(common) / sizeof(common[0]); i++)
    if (n < BENCH_MAX_FLAGS) flags[n++] = common[i];
  return bench_sim_flags(flags, n, &c->sim);
}

void bench_server_opts(const bench_server_common *c, qrpc_server_opts *o) {
  qrpc_server_opts_default(o);
  /* Connections in their closing period count too: leave room for the
   * churn of the connect workload next to the idle ones. */
  o->endpoint.max_connections = (size_t)c->max_conns + 1024;
  o->endpoint.max_handshakes = BENCH_MAX_HANDSHAKES;
  o->endpoint.conn.idle_timeout_ms = BENCH_SERVER_IDLE_TIMEOUT_MS;
  o->endpoint.conn.dead_peer_timeout_ms = c->dead_peer_ms;
  if (c->max_udp_payload)
    o->endpoint.conn.max_udp_payload = (size_t)c->max_udp_payload;
  bench_sim_apply(&c->sim, &o->endpoint.conn);
  o->rpc.max_frame = BENCH_MAX_FRAME;
  if (o->rpc.max_buffered < 2 * (size_t)BENCH_MAX_FRAME)
    o->rpc.max_buffered = 2 * (size_t)BENCH_MAX_FRAME;
}

int bench_server_start(const char *prog, bench_server_common *c,
                       const qrpc_server_opts *o, qrpc_loop **loop,
                       qrpc_server **srv) {
  char addr[300];
  if (bench_join_addr(addr, sizeof(addr), c->host, c->port) != 0) {
    fprintf(stderr, "%s: --host %s is too long\n", prog, c->host);
    return 1;
  }
  /* One UDP socket serves every connection; descriptors matter little
   * here, but the limit is raised like the clients' for symmetry. */
  bench_raise_nofile(c->max_conns + 256);
  bench_log_init(prog);
  *loop = NULL;
  *srv = NULL;
  int rc = bench_loop_new(c->precise_timers, loop, &c->base);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot create the loop: %s\n", prog,
            qrpc_strerror(rc));
    return 1;
  }
  qrpc_loop_set_busy_poll(*loop, (uint32_t)c->busy_poll_us);
  qrpc_tls_config *tls = NULL;
  if (bench_tls_server(prog, c->tls_cert, c->tls_key, c->tls_client_ca, &tls) !=
      0) {
    bench_loop_free(*loop, c->base);
    *loop = NULL;
    c->base = NULL;
    return 1;
  }
  rc = qrpc_server_new(*loop, addr, tls, o, srv);
  qrpc_tls_config_free(tls); /* the server holds its own reference */
  if (rc != 0) {
    *srv = NULL;
    fprintf(stderr, "%s: cannot listen on %s (--host %s --port %llu): %s\n",
            prog, addr, c->host, (unsigned long long)c->port,
            qrpc_strerror(rc));
    bench_loop_free(*loop, c->base);
    *loop = NULL;
    c->base = NULL;
    return 1;
  }
  return 0;
}

void bench_server_stop(bench_server_common *c, qrpc_loop *loop,
                       qrpc_server *srv) {
  qrpc_server_free(srv);
  bench_loop_free(loop, c->base);
  c->base = NULL;
}

int bench_server_serve(const char *prog, qrpc_loop *loop, qrpc_server *srv,
                       const bench_server_common *c) {
  volatile int stopped = 0;
  bench_signals sig = {0};
  if (bench_signals_init(&sig, loop, &stopped) != 0) {
    fprintf(stderr, "%s: cannot install the signal handlers\n", prog);
    return 1;
  }
  qrpc_metrics *metrics = NULL;
  if (c->metrics) {
    int mrc = qrpc_metrics_serve(loop, c->metrics, NULL, &metrics);
    if (mrc == 0) mrc = qrpc_metrics_add_server(metrics, srv);
    if (mrc != 0) {
      fprintf(stderr, "%s: cannot serve --metrics %s: %s\n", prog, c->metrics,
              qrpc_strerror(mrc));
      qrpc_metrics_free(metrics);
      bench_signals_free(&sig);
      return 1;
    }
    fprintf(stderr, "%s: metrics on %s, tcp port %u, path /metrics\n", prog,
            c->metrics, (unsigned)qrpc_metrics_port(metrics));
  }
  unsigned port = qrpc_server_port(srv);
  fprintf(stderr, "%s: listening on %s port %u (udp)\n", prog, c->host, port);
  if (c->port == 0) printf("PORT %u\n", port);
  printf("READY\n");
  fflush(stdout);
  int rc = qrpc_loop_run(loop);
  qrpc_metrics_free(metrics);
  bench_signals_free(&sig);
  if (rc != 0) {
    fprintf(stderr, "%s: the event loop failed: %s\n", prog, qrpc_strerror(rc));
    return 1;
  }
  if (!stopped) {
    fprintf(stderr, "%s: the event loop ended by itself\n", prog);
    return 1;
  }
  return 0;
}
