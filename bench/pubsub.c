/*
 * qrpc-bench client pubsub: fan-out through qrpc-broker.
 *
 * One process holds --subs subscriber connections and one publisher
 * connection, all qrpc_broker_client on one loop. Every subscriber has a
 * reliable subscription to the topic; the publisher sends one-way
 * publishes of --size bytes whose first 16 bytes are the publish time
 * (CLOCK_MONOTONIC ns) and a sequence number, so each delivery gives the
 * publish-to-delivery latency and each subscriber sees gaps as loss.
 *
 * - --rate 0: as fast as the slowest subscriber allows, the publisher
 *   staying at most --window messages ahead of it.
 * - --rate R: R messages a second, paced by a 1 ms timer.
 */
#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qrpc/broker.h>

#include "client_common.h"
#include "hist.h"
#include "runner.h"

#define MAX_SUBS 10000
#define SETUP_BASE_S 20.0
#define SETUP_PER_SUB_S 0.01
/* Publishes per loop turn at most, so deliveries are read in between. */
#define BURST 256
#define PACE_US 1000
#define HEADER 16

typedef struct ps_opts {
  bench_client_common c;
  uint64_t subs;
  uint64_t size;
  uint64_t rate;
  uint64_t window;
  const char *topic;
  uint64_t sub_port; /* 0, or every other subscriber's broker (a node) */
} ps_opts;

typedef struct ps_bench ps_bench;

typedef struct ps_sub {
  ps_bench *b;
  qrpc_broker_client *bc;
  int ready, subscribed;
  uint64_t received; /* since the start */
  uint64_t next_seq; /* expected; 0 before the first message */
} ps_sub;

struct ps_bench {
  const char *prog;
  ps_opts o;
  bench_client_env env;
  bench_runner run;
  ps_sub *subs;
  qrpc_broker_client *pub;
  int pub_ready;
  size_t nready, nsubscribed;
  int started, stopping;
  uint8_t *msg;
  uint64_t seq; /* last published */
  uint64_t t_start_ns;
  struct event *pace_ev, *pump_ev;
  int pump_scheduled; /* pump_ev is active */
  /* Counted in the measured window. */
  uint64_t delivered, published, lost;
  uint64_t errors, delivered_total;
  bench_hist lat;
  bench_rate rate;
  char first_error[200];
};

static void count_error(ps_bench *b, const char *fmt, const char *detail) {
  b->errors++;
  if (b->first_error[0] == '\0')
    snprintf(b->first_error, sizeof(b->first_error), "%s%s%s", fmt,
             detail ? ": " : "", detail ? detail : "");
}

static uint64_t get64(const uint8_t *p) {
  uint64_t v;
  memcpy(&v, p, sizeof(v));
  return v;
}

/* ---- Publishing --------------------------------------------------------- */

static int publish_one(ps_bench *b) {
  uint64_t now = bench_now_ns(), seq = b->seq + 1;
  memcpy(b->msg, &now, 8);
  memcpy(b->msg + 8, &seq, 8);
  int rc =
      qrpc_broker_publish(b->pub, b->o.topic, b->msg, b->o.size, 0, NULL, NULL);
  if (rc != 0) {
    count_error(b, "publish refused", qrpc_strerror(rc));
    return rc;
  }
  b->seq = seq;
  if (bench_runner_measuring(&b->run)) b->published++;
  return 0;
}

static uint64_t slowest(const ps_bench *b) {
  uint64_t m = UINT64_MAX;
  for (size_t i = 0; i < b->o.subs; i++)
    if (b->subs[i].received < m) m = b->subs[i].received;
  return m;
}

/* --rate 0: publishes while the slowest subscriber is within the window. */
static void pump(evutil_socket_t fd, short what, void *arg) {
  ps_bench *b = arg;
  b->pump_scheduled = 0;
  if (b->stopping || !b->started) return;
  uint64_t low = slowest(b);
  for (int i = 0; i < BURST && b->seq < low + b->o.window; i++)
    if (publish_one(b) != 0) return;
  /* Still room: go on after the loop has read what came in. */
  if (b->seq < low + b->o.window) {
    b->pump_scheduled = 1;
    event_active(b->pump_ev, 0, 0);
  }
}

/* --rate R: publishes what is due since the start. */
static void pace(evutil_socket_t fd, short what, void *arg) {
  ps_bench *b = arg;
  if (b->stopping) return;
  double t = (double)(bench_now_ns() - b->t_start_ns) / 1e9;
  uint64_t due = (uint64_t)(t * (double)b->o.rate);
  while (b->seq < due)
    if (publish_one(b) != 0) return;
}

/* ---- Subscribers -------------------------------------------------------- */

static void on_message(qrpc_broker_sub *h, const qrpc_broker_msg *m, void *ud) {
  ps_sub *s = ud;
  ps_bench *b = s->b;
  if (b->stopping) return;
  s->received++;
  b->delivered_total++;
  if (m->len < HEADER) {
    count_error(b, "a message shorter than its header", NULL);
    return;
  }
  uint64_t t = get64(m->payload), seq = get64(m->payload + 8);
  int measuring = bench_runner_measuring(&b->run);
  if (s->next_seq && seq != s->next_seq) {
    if (seq > s->next_seq && measuring) b->lost += seq - s->next_seq;
    if (seq < s->next_seq) count_error(b, "a message out of order", NULL);
  }
  s->next_seq = seq + 1;
  if (measuring) {
    b->delivered++;
    bench_hist_add(&b->lat, bench_now_ns() - t);
  }
  if (b->o.rate == 0 && !b->pump_scheduled) {
    b->pump_scheduled = 1;
    event_active(b->pump_ev, 0, 0);
  }
}

static void on_subscribed(qrpc_broker_sub *h, uint64_t id, void *ud);

static void on_end(qrpc_broker_sub *h, int status, const char *detail,
                   void *ud) {
  ps_sub *s = ud;
  count_error(s->b, "the broker ended a subscription", detail);
}

static void on_dropped(qrpc_broker_sub *h, uint64_t n, void *ud) {
  ps_sub *s = ud;
  if (bench_runner_measuring(&s->b->run)) s->b->lost += n;
}

static const qrpc_broker_sub_callbacks sub_cbs = {
    .on_message = on_message,
    .on_subscribed = on_subscribed,
    .on_dropped = on_dropped,
    .on_end = on_end,
};

static void maybe_start(ps_bench *b) {
  if (b->started || !b->pub_ready || b->nsubscribed < b->o.subs) return;
  b->started = 1;
  b->t_start_ns = bench_now_ns();
  bench_runner_ready(&b->run);
  bench_rate_next(&b->rate, 0);
  if (b->o.rate) {
    struct timeval tv = {0, PACE_US};
    event_add(b->pace_ev, &tv);
  } else {
    b->pump_scheduled = 1;
    event_active(b->pump_ev, 0, 0);
  }
}

static void on_subscribed(qrpc_broker_sub *h, uint64_t id, void *ud) {
  ps_sub *s = ud;
  ps_bench *b = s->b;
  if (s->subscribed++) {
    count_error(b, "a subscriber had to resubscribe", NULL);
    return;
  }
  b->nsubscribed++;
  maybe_start(b);
}

static void on_ready(qrpc_broker_client *bc, int status, const char *detail,
                     void *ud) {
  ps_sub *s = ud;
  if (status != 0) {
    bench_runner_fail(&s->b->run, "the broker refused the client: %s",
                      detail ? detail : "");
    return;
  }
  if (s->ready++) return;
  if (!s->bc || bc == s->b->pub) {
    s->b->pub_ready = 1;
    maybe_start(s->b);
  }
}

static void on_disconnect(qrpc_broker_client *bc, const qrpc_close_info *info,
                          void *ud) {
  ps_sub *s = ud;
  if (!s->b->stopping)
    count_error(s->b, "a connection was lost",
                info->reason && info->reason[0] ? info->reason
                                                : qrpc_strerror(info->error));
}

static int open_clients(ps_bench *b, ps_sub *pub_state) {
  qrpc_broker_client_opts o;
  qrpc_broker_client_opts_default(&o);
  bench_client_opts(&b->o.c, &o.client);
  o.client.conn.via = b->env.shared;
  o.on_ready = on_ready;
  o.on_disconnect = on_disconnect;
  char other[300];
  if (b->o.sub_port &&
      bench_join_addr(other, sizeof(other), b->o.c.host, b->o.sub_port) != 0) {
    fprintf(stderr, "%s: --host %s is too long\n", b->prog, b->o.c.host);
    return 1;
  }
  for (size_t i = 0; i < b->o.subs; i++) {
    ps_sub *s = &b->subs[i];
    s->b = b;
    o.user_data = s;
    const char *addr = b->o.sub_port && i % 2 ? other : b->env.addr;
    int rc = qrpc_broker_client_new(b->env.loop, addr, b->env.tls, &o, &s->bc);
    if (rc == 0)
      rc = qrpc_broker_subscribe(s->bc, b->o.topic, NULL, &sub_cbs, s, NULL);
    if (rc != 0) {
      fprintf(stderr, "%s: cannot start subscriber %zu: %s\n", b->prog, i + 1,
              qrpc_strerror(rc));
      return 1;
    }
  }
  pub_state->b = b;
  o.user_data = pub_state;
  int rc =
      qrpc_broker_client_new(b->env.loop, b->env.addr, b->env.tls, &o, &b->pub);
  if (rc != 0) {
    fprintf(stderr, "%s: cannot start the publisher: %s\n", b->prog,
            qrpc_strerror(rc));
    return 1;
  }
  return 0;
}

/* ---- Runner callbacks and report ---------------------------------------- */

static void on_measure(bench_runner *r, void *ud) {
  ps_bench *b = ud;
  b->delivered = b->published = b->lost = 0;
  bench_hist_reset(&b->lat);
}

static void on_progress(bench_runner *r, double t, void *ud) {
  ps_bench *b = ud;
  fprintf(stderr,
          "%s: %5.1f s  %.0f deliveries/s, %llu published, %llu "
          "errors\n",
          b->prog, t, bench_rate_next(&b->rate, b->delivered_total),
          (unsigned long long)b->seq, (unsigned long long)b->errors);
}

static void report(ps_bench *b) {
  double secs = bench_runner_measured_s(&b->run);
  double dps = secs > 0 ? (double)b->delivered / secs : 0;
  double pps = secs > 0 ? (double)b->published / secs : 0;
  double p50 = bench_hist_quantile(&b->lat, 0.50) / 1e3;
  double p99 = bench_hist_quantile(&b->lat, 0.99) / 1e3;
  double p999 = bench_hist_quantile(&b->lat, 0.999) / 1e3;
  double loss = b->delivered + b->lost
                    ? 100.0 * (double)b->lost / (double)(b->delivered + b->lost)
                    : 0.0;
  bench_report r;
  bench_report_init(&r);
  bench_report_common(&r, "pubsub", &b->o.c);
  bench_report_param_uint(&r, "subs", b->o.subs);
  bench_report_param_uint(&r, "size", b->o.size);
  bench_report_param_uint(&r, "rate", b->o.rate);
  bench_report_param_uint(&r, "window", b->o.window);
  bench_report_param_uint(&r, "sub_port", b->o.sub_port);
  bench_report_param_num(&r, "measured_s", secs);
  bench_report_param_num(&r, "client_cpu_s", bench_cpu_s());
  bench_report_num(&r, "delivered_per_s", dps, 1);
  bench_report_num(&r, "pub_per_s", pps, 1);
  bench_report_num(&r, "p50_us", p50, 1);
  bench_report_num(&r, "p99_us", p99, 1);
  bench_report_num(&r, "p999_us", p999, 1);
  bench_report_num(&r, "loss_pct", loss, 3);
  bench_report_uint(&r, "errors", b->errors);
  fprintf(stderr,
          "%s: 1 -> %llu subscribers, %llu B messages, %s: %.1f "
          "deliveries/s, %.1f publishes/s, latency p50 %.1f us, p99 %.1f "
          "us, p99.9 %.1f us, loss %.3f %%, %llu errors over %.2f s\n",
          b->prog, (unsigned long long)b->o.subs, (unsigned long long)b->o.size,
          b->o.rate ? "paced" : "max", dps, pps, p50, p99, p999, loss,
          (unsigned long long)b->errors, secs);
  if (b->errors)
    fprintf(stderr, "%s: first error: %s\n", b->prog, b->first_error);
  bench_report_print(&r, b->o.c.json);
}

static int parse(ps_bench *b, int argc, char **argv) {
  ps_opts *o = &b->o;
  bench_flag flags[BENCH_MAX_FLAGS];
  size_t n = bench_client_common_flags(flags, 0, &o->c);
  o->subs = 100;
  o->size = 128;
  o->rate = 0;
  o->window = 1000;
  o->topic = "bench.fanout";
  o->sub_port = 0;
  const bench_flag own[] = {
      {"--subs", BENCH_FLAG_UINT, &o->subs, 1, MAX_SUBS, NULL, "N",
       "subscriber connections", 0, 0},
      {"--size", BENCH_FLAG_UINT, &o->size, HEADER, 1u << 20, NULL, "BYTES",
       "bytes in each message (at least 16)", 0, 0},
      {"--rate", BENCH_FLAG_UINT, &o->rate, 0, 10000000, NULL, "N",
       "messages a second; 0: as fast as --window allows", 0, 0},
      {"--window", BENCH_FLAG_UINT, &o->window, 1, 1000000, NULL, "N",
       "--rate 0: messages the publisher may be ahead of the slowest "
       "subscriber",
       0, 0},
      {"--topic", BENCH_FLAG_STR, &o->topic, 0, 0, NULL, "TOPIC",
       "the topic published and subscribed", 0, 0},
      {"--sub-port", BENCH_FLAG_UINT, &o->sub_port, 0, 65535, NULL, "P",
       "every other subscriber connects to the broker at this port, "
       "another node of a cluster (the publisher stays on --port)",
       0, 0},
  };
  for (size_t i = 0; i < sizeof(own) / sizeof(own[0]); i++) flags[n++] = own[i];
  return bench_args_parse(
      b->prog, "--port P --subs N --size B --rate R [--window W] [flags]",
      "Publishes through 'qrpc-broker' to --subs reliable subscribers in\n"
      "this process. Prints a summary on stderr and, as its last line on\n"
      "stdout, RESULT with delivered_per_s, pub_per_s, p50_us, p99_us,\n"
      "p999_us, loss_pct and errors.",
      flags, n, argc, argv);
}

static void teardown(ps_bench *b) {
  if (b->pace_ev) event_free(b->pace_ev);
  if (b->pump_ev) event_free(b->pump_ev);
  qrpc_broker_client_free(b->pub);
  for (size_t i = 0; b->subs && i < b->o.subs; i++)
    qrpc_broker_client_free(b->subs[i].bc);
  free(b->subs);
  free(b->msg);
  bench_runner_cleanup(&b->run);
  bench_client_env_cleanup(&b->env);
}

int bench_client_pubsub(const char *prog, int argc, char **argv) {
  ps_bench *b = calloc(1, sizeof(*b));
  if (!b) {
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
  bench_hist_reset(&b->lat);
  int status = 1;
  ps_sub pub_state = {0};
  if (bench_client_env_init(&b->env, prog, &b->o.c, b->o.subs + 64, 1) != 0)
    goto out;
  bench_runner_callbacks cbs = {.on_measure = on_measure,
                                .on_progress = on_progress};
  double setup = SETUP_BASE_S + SETUP_PER_SUB_S * (double)b->o.subs;
  if (bench_runner_init(&b->run, prog, b->env.loop, b->o.c.warmup_s,
                        b->o.c.duration_s, setup, &cbs, b) != 0)
    goto out;
  struct event_base *base = qrpc_loop_base(b->env.loop);
  b->subs = calloc(b->o.subs, sizeof(*b->subs));
  b->msg = calloc(1, b->o.size);
  b->pace_ev = event_new(base, -1, EV_PERSIST, pace, b);
  b->pump_ev = event_new(base, -1, 0, pump, b);
  if (!b->subs || !b->msg || !b->pace_ev || !b->pump_ev) {
    fprintf(stderr, "%s: out of memory\n", prog);
    goto out;
  }
  if (open_clients(b, &pub_state) != 0) goto out;
  if (bench_runner_run(&b->run) != 0) goto out;
  b->stopping = 1;
  report(b);
  status = 0;
out:
  b->stopping = 1;
  teardown(b);
  free(b);
  return status;
}
