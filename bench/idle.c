/*
 * qrpc-bench client idle: what an idle connection costs the server. Reads
 * the server's resident memory (--server-pid, from /proc), opens --conns
 * QUIC connections to it in waves of at most --handshakes at a time,
 * holds them all open for --warmup and --duration seconds, reads the
 * server's memory again and reports the difference per connection.
 *
 * The connections are plain qrpc connections (no calls), each with its own
 * UDP socket, so this process needs one descriptor per connection.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client_common.h"
#include "runner.h"

#define MAX_CONNS 200000
#define MAX_HANDSHAKES 5000
/* Connecting: a fixed allowance plus time per connection. */
#define SETUP_BASE_S 30.0
#define SETUP_PER_CONN_S 0.005
/* Neither side may give up on a connection held for the whole run. */
#define IDLE_SLACK_S 120
#define HANDSHAKE_TIMEOUT_MS 4000

typedef struct idle_opts {
  bench_client_common c;
  uint64_t conns;
  uint64_t server_pid;
  uint64_t handshakes;
} idle_opts;

typedef struct idle_bench idle_bench;

typedef struct idle_conn {
  idle_bench *b;
  qrpc_conn *conn;
  int established;
} idle_conn;

struct idle_bench {
  const char *prog;
  idle_opts o;
  bench_client_env env;
  bench_runner run;
  qrpc_conn_opts co;
  idle_conn *conns;
  size_t started, inflight, established, failed, dropped;
  /* Connections whose handshake failed, to be tried again. */
  idle_conn **retry;
  size_t nretry, retries, max_retries;
  int stopping;
  char first_error[200];
};

static void start_more(idle_bench *b);

static void on_established(qrpc_conn *c, void *ud) {
  idle_conn *ic = ud;
  idle_bench *b = ic->b;
  (void)c;
  ic->established = 1;
  b->established++;
  b->inflight--;
  if (b->established == b->o.conns) {
    fprintf(stderr, "%s: %zu connections established in %.2f s; holding\n",
            b->prog, b->established,
            (double)(bench_now_ns() - b->run.t_setup) / 1e9);
    bench_runner_ready(&b->run);
    return;
  }
  start_more(b);
}

/* A handshake that fails (its packets dropped while hundreds are under
 * way) is tried again, within a budget; a connection lost once
 * established ends the run. */
static void on_closed(qrpc_conn *c, const qrpc_close_info *info, void *ud) {
  idle_conn *ic = ud;
  idle_bench *b = ic->b;
  (void)c;
  ic->conn = NULL;
  if (b->stopping) return;
  if (b->first_error[0] == '\0')
    snprintf(b->first_error, sizeof(b->first_error), "%s",
             bench_close_reason(info));
  if (!ic->established) {
    b->inflight--;
    b->failed++;
    if (b->retries++ < b->max_retries) {
      b->retry[b->nretry++] = ic;
      start_more(b);
      return;
    }
  } else {
    b->established--;
    b->dropped++;
  }
  bench_runner_fail(&b->run,
                    "connection %zu %s: %s (%zu established, %zu handshakes "
                    "failed, %zu dropped)",
                    (size_t)(ic - b->conns) + 1,
                    ic->established ? "was lost" : "could not be made",
                    b->first_error, b->established, b->failed, b->dropped);
}

static const qrpc_conn_callbacks conn_cbs = {
    .on_established = on_established,
    .on_closed = on_closed,
};

/* Starts connections (those to try again first) while fewer than
 * --handshakes are under way. */
static void start_more(idle_bench *b) {
  while (!b->stopping && b->inflight < b->o.handshakes &&
         (b->nretry > 0 || b->started < b->o.conns)) {
    idle_conn *ic =
        b->nretry > 0 ? b->retry[--b->nretry] : &b->conns[b->started++];
    ic->b = b;
    int rc = qrpc_conn_connect(b->env.loop, b->env.addr, b->o.c.tls_name,
                               b->env.tls, &b->co, &conn_cbs, ic, &ic->conn);
    if (rc != 0) {
      ic->conn = NULL;
      bench_runner_fail(&b->run, "cannot start connection %zu: %s",
                        (size_t)(ic - b->conns) + 1, qrpc_strerror(rc));
      return;
    }
    b->inflight++;
  }
}

static void on_progress(bench_runner *r, double t, void *ud) {
  idle_bench *b = ud;
  uint64_t kb = 0;
  bench_read_rss_kb((long)b->o.server_pid, &kb);
  fprintf(stderr,
          "%s: %5.1f s %-7s %zu connections held, server RSS %llu "
          "KiB\n",
          b->prog, t, bench_runner_measuring(r) ? "measure" : "warmup",
          b->established, (unsigned long long)kb);
}

static int parse(idle_bench *b, int argc, char **argv) {
  idle_opts *o = &b->o;
  bench_flag flags[BENCH_MAX_FLAGS];
  size_t n = bench_client_common_flags(flags, 0, &o->c);
  o->conns = 10000;
  o->server_pid = 0;
  o->handshakes = 200;
  const bench_flag own[] = {
      {"--conns", BENCH_FLAG_UINT, &o->conns, 1, MAX_CONNS, NULL, "N",
       "connections to open and hold", 0, 0},
      {"--server-pid", BENCH_FLAG_UINT, &o->server_pid, 1, 4194304, NULL, "PID",
       "the server's process id, for its VmRSS in /proc", 1, 0},
      {"--handshakes", BENCH_FLAG_UINT, &o->handshakes, 1, MAX_HANDSHAKES, NULL,
       "N", "handshakes under way at once at most", 0, 0},
  };
  for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) flags[n++] = own[i];
  return bench_args_parse(
      b->prog, "--port P --conns N --server-pid PID [--duration D] [flags]",
      "Opens --conns connections to 'qrpc-bench server rpc' and holds them\n"
      "for --warmup and --duration seconds; prints, as its last line on\n"
      "stdout, RESULT conns=N server_rss_kb=K per_conn_bytes=B, where K is\n"
      "the server's VmRSS while holding them and B the growth of it over\n"
      "the server's VmRSS before connecting, per connection.",
      flags, n, argc, argv);
}

static void report(idle_bench *b, uint64_t before_kb, uint64_t after_kb) {
  size_t conns = b->established;
  double growth = (double)after_kb - (double)before_kb;
  double per_conn = conns > 0 ? growth * 1024.0 / (double)conns : 0;
  bench_report r;
  bench_report_init(&r);
  bench_report_common(&r, "idle", &b->o.c);
  bench_report_param_uint(&r, "server_rss_before_kb", before_kb);
  bench_report_param_uint(&r, "handshakes", b->o.handshakes);
  bench_report_param_num(&r, "client_cpu_s", bench_cpu_s());
  bench_report_uint(&r, "conns", conns);
  bench_report_uint(&r, "server_rss_kb", after_kb);
  bench_report_num(&r, "per_conn_bytes", per_conn < 0 ? 0 : per_conn, 0);
  fprintf(stderr,
          "%s: %zu idle connections: server RSS %llu KiB (was %llu KiB), "
          "%.0f bytes per connection\n",
          b->prog, conns, (unsigned long long)after_kb,
          (unsigned long long)before_kb, per_conn);
  bench_report_print(&r, b->o.c.json);
}

static void teardown(idle_bench *b) {
  b->stopping = 1;
  for (size_t i = 0; b->conns && i < b->started; i++)
    if (b->conns[i].conn != NULL)
      qrpc_conn_close(b->conns[i].conn, 0, "benchmark over");
  bench_runner_cleanup(&b->run);
  bench_client_env_cleanup(&b->env);
  free(b->conns);
  free(b->retry);
}

int bench_client_idle(const char *prog, int argc, char **argv) {
  idle_bench *b = calloc(1, sizeof(*b));
  if (b == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    return 1;
  }
  b->prog = prog;
  int rc = parse(b, argc, argv);
  if (rc != 0) {
    free(b);
    return rc == 1 ? 0 : 2;
  }
  bench_log_init(prog);
  int status = 1;
  uint64_t before_kb = 0, after_kb = 0;
  if (bench_read_rss_kb((long)b->o.server_pid, &before_kb) != 0) {
    fprintf(stderr,
            "%s: cannot read VmRSS of --server-pid %llu from /proc: "
            "%s\n",
            prog, (unsigned long long)b->o.server_pid, strerror(errno));
    free(b);
    return 1;
  }
  if (bench_client_env_init(&b->env, prog, &b->o.c, b->o.conns + 64, 0) != 0)
    goto out;
  qrpc_conn_opts_default(&b->co);
  b->co.handshake_timeout_ms = HANDSHAKE_TIMEOUT_MS;
  b->co.qlog_dir = b->o.c.qlog_dir;
  b->co.via = b->env.shared;
  bench_sim_apply(&b->o.c.sim, &b->co);
  b->co.idle_timeout_ms =
      (uint64_t)((b->o.c.warmup_s + b->o.c.duration_s + IDLE_SLACK_S) * 1e3);
  /* Nor on silence while the others connect: a server answering thousands
   * of handshakes on one core, its socket buffer full of path MTU probes
   * (64 KiB each on loopback), can leave a connection unanswered for longer
   * than the default dead-peer timeout of 1 s. The idle timeout above still
   * ends a connection whose server is gone. */
  b->co.dead_peer_timeout_ms = 0;
  double setup = SETUP_BASE_S + SETUP_PER_CONN_S * (double)b->o.conns;
  bench_runner_callbacks cbs = {.on_progress = on_progress};
  if (bench_runner_init(&b->run, prog, b->env.loop, b->o.c.warmup_s,
                        b->o.c.duration_s, setup, &cbs, b) != 0)
    goto out;
  b->conns = calloc((size_t)b->o.conns, sizeof(*b->conns));
  b->retry = calloc((size_t)b->o.conns, sizeof(*b->retry));
  b->max_retries = (size_t)(b->o.conns / 10 + 10);
  if (b->conns == NULL || b->retry == NULL) {
    fprintf(stderr, "%s: out of memory\n", prog);
    goto out;
  }
  start_more(b);
  if (bench_runner_run(&b->run) != 0) goto out;
  if (bench_read_rss_kb((long)b->o.server_pid, &after_kb) != 0) {
    fprintf(stderr, "%s: the server (pid %llu) is gone: %s\n", prog,
            (unsigned long long)b->o.server_pid, strerror(errno));
    goto out;
  }
  b->stopping = 1;
  report(b, before_kb, after_kb);
  status = 0;
out:
  teardown(b);
  free(b);
  return status;
}
