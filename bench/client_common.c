#include "client_common.h"

#include <stdio.h>
#include <string.h>

/* After the clients are freed, their CONNECTION_CLOSE frames still have
 * to leave; this much loop time lets them go before the process exits. */
#define CLOSE_FLUSH_MS 100
#define HANDSHAKE_TIMEOUT_MS 4000

int bench_client_env_init(bench_client_env *e, const char *prog,
                          const bench_client_common *c, uint64_t fds,
                          int precise) {
  memset(e, 0, sizeof(*e));
  if (bench_join_addr(e->addr, sizeof(e->addr), c->host, c->port) != 0) {
    fprintf(stderr, "%s: --host %s is too long\n", prog, c->host);
    return 1;
  }
  uint64_t have = bench_raise_nofile(fds);
  if (have < fds) {
    fprintf(stderr,
            "%s: this run needs %llu file descriptors (one UDP socket per "
            "connection) but the limit is %llu; raise the hard limit "
            "(ulimit -Hn) or ask for fewer connections\n",
            prog, (unsigned long long)fds, (unsigned long long)have);
    return 1;
  }
  int rc = bench_loop_new(precise, &e->loop, &e->base);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot create the loop: %s\n", prog,
            qrpc_strerror(rc));
    return 1;
  }
  qrpc_loop_set_busy_poll(e->loop, (uint32_t)c->busy_poll_us);
  if (bench_tls_client(prog, c->tls_ca, c->tls_cert, c->tls_key, &e->tls) !=
      0) {
    bench_loop_free(e->loop, e->base);
    e->loop = NULL;
    e->base = NULL;
    return 1;
  }
  if (c->shared_socket) {
    /* Any local address of the server's family: a bracketed or colon
     * host is IPv6. */
    const char *any = strchr(c->host, ':') ? "[::]:0" : "0.0.0.0:0";
    rc = qrpc_endpoint_open(e->loop, any, NULL, &e->shared);
    if (rc != 0) {
      fprintf(stderr, "%s: cannot open the shared socket: %s\n", prog,
              qrpc_strerror(rc));
      bench_client_env_cleanup(e);
      return 1;
    }
  }
  return 0;
}

void bench_client_env_cleanup(bench_client_env *e) {
  qrpc_tls_config_free(e->tls);
  e->tls = NULL;
  if (e->loop == NULL) return;
  qrpc_loop_run_for(e->loop, CLOSE_FLUSH_MS);
  qrpc_endpoint_free(e->shared);
  e->shared = NULL;
  bench_loop_free(e->loop, e->base);
  e->loop = NULL;
  e->base = NULL;
}

void bench_client_opts(const bench_client_common *c, qrpc_client_opts *o) {
  qrpc_client_opts_default(o);
  o->server_name = c->tls_name;
  /* A handshake whose packets were dropped (a receive buffer overflowing
   * while hundreds connect at once) is given up and retried well before
   * the run's setup timeout. */
  o->conn.handshake_timeout_ms = HANDSHAKE_TIMEOUT_MS;
  o->conn.qlog_dir = c->qlog_dir;
  bench_sim_apply(&c->sim, &o->conn);
  o->rpc.max_frame = BENCH_MAX_FRAME;
  if (o->rpc.max_buffered < 2 * (size_t)BENCH_MAX_FRAME)
    o->rpc.max_buffered = 2 * (size_t)BENCH_MAX_FRAME;
}

void bench_report_common(bench_report *r, const char *family,
                         const bench_client_common *c) {
  bench_report_param_text(r, "impl", "qrpc");
  bench_report_param_text(r, "family", family);
  bench_report_param_text(r, "host", c->host);
  bench_report_param_uint(r, "port", c->port);
  bench_report_param_num(r, "warmup_s", c->warmup_s);
  bench_report_param_num(r, "duration_s", c->duration_s);
  bench_report_param_uint(r, "verified", c->tls_ca != NULL);
}

int bench_close_cert_refused(const qrpc_close_info *info) {
  return info->error == QRPC_ECERT && !info->local;
}

const char *bench_close_reason(const qrpc_close_info *info) {
  /* Under TLS 1.3 the server judges a client certificate after the client
   * has finished its handshake: a refusal closes a connection already
   * made. */
  if (bench_close_cert_refused(info))
    return "the server refused the client certificate, or requires one "
           "(--tls-cert, --tls-key)";
  if (info->reason && info->reason[0]) return info->reason;
  return qrpc_strerror(info->error);
}

double bench_rate_next(bench_rate *r, uint64_t count) {
  uint64_t now = bench_now_ns();
  double rate = 0;
  if (r->last_ns != 0 && now > r->last_ns)
    rate = (double)(count - r->last_count) * 1e9 / (double)(now - r->last_ns);
  r->last_count = count;
  r->last_ns = now;
  return rate;
}
