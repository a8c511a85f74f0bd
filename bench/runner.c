#include "runner.h"

#include <event2/event.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static struct timeval tv_of(double s) {
  if (s < 0) s = 0;
  double whole = floor(s);
  struct timeval tv = {(time_t)whole, (suseconds_t)((s - whole) * 1e6)};
  return tv;
}

static void open_window(bench_runner *r) {
  r->phase = BENCH_MEASURE;
  r->t_measure = bench_now_ns();
  if (r->cbs.on_measure) r->cbs.on_measure(r, r->user_data);
  struct timeval tv = tv_of(r->duration_s);
  evtimer_add(r->phase_ev, &tv);
}

static void on_phase(evutil_socket_t fd, short what, void *arg) {
  bench_runner *r = arg;
  (void)fd, (void)what;
  switch (r->phase) {
  case BENCH_SETUP: {
    const char *why = bench_log_last();
    bench_runner_fail(r, "the load was not set up within %.0f s%s%s",
                      r->setup_timeout_s, why[0] ? "; qrpc said: " : "", why);
    break;
  }
  case BENCH_WARMUP: open_window(r); break;
  case BENCH_MEASURE:
    r->phase = BENCH_DONE;
    r->t_end = bench_now_ns();
    qrpc_loop_stop(r->loop);
    break;
  case BENCH_DONE: break;
  }
}

static void on_progress(evutil_socket_t fd, short what, void *arg) {
  bench_runner *r = arg;
  (void)fd, (void)what;
  if (r->phase != BENCH_WARMUP && r->phase != BENCH_MEASURE) return;
  double t = (double)(bench_now_ns() - r->t_warmup) / 1e9;
  if (r->cbs.on_progress) r->cbs.on_progress(r, t, r->user_data);
}

int bench_runner_init(bench_runner *r, const char *prog, qrpc_loop *loop,
                      double warmup_s, double duration_s,
                      double setup_timeout_s, const bench_runner_callbacks *cbs,
                      void *user_data) {
  memset(r, 0, sizeof(*r));
  r->prog = prog;
  r->loop = loop;
  r->warmup_s = warmup_s;
  r->duration_s = duration_s;
  r->setup_timeout_s = setup_timeout_s;
  if (cbs != NULL) r->cbs = *cbs;
  r->user_data = user_data;
  r->phase = BENCH_SETUP;
  r->t_setup = bench_now_ns();
  struct event_base *base = qrpc_loop_base(loop);
  r->phase_ev = evtimer_new(base, on_phase, r);
  r->progress_ev = event_new(base, -1, EV_PERSIST, on_progress, r);
  struct timeval tv = tv_of(setup_timeout_s);
  if (r->phase_ev == NULL || r->progress_ev == NULL ||
      evtimer_add(r->phase_ev, &tv) != 0 ||
      bench_signals_init(&r->sig, loop, &r->interrupted) != 0) {
    fprintf(stderr, "%s: cannot set up the run's timers\n", prog);
    bench_runner_cleanup(r);
    return 1;
  }
  return 0;
}

void bench_runner_ready(bench_runner *r) {
  if (r->phase != BENCH_SETUP || r->failed) return;
  evtimer_del(r->phase_ev);
  r->phase = BENCH_WARMUP;
  r->t_warmup = bench_now_ns();
  if (r->warmup_s + r->duration_s > BENCH_PROGRESS_AFTER_S) {
    struct timeval one = {1, 0};
    event_add(r->progress_ev, &one);
  }
  if (r->warmup_s <= 0) {
    open_window(r);
    return;
  }
  struct timeval tv = tv_of(r->warmup_s);
  evtimer_add(r->phase_ev, &tv);
}

void bench_runner_fail(bench_runner *r, const char *fmt, ...) {
  if (r->failed) return;
  r->failed = 1;
  va_list ap;
  va_start(ap, fmt);
  fprintf(stderr, "%s: ", r->prog);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  qrpc_loop_stop(r->loop);
}

int bench_runner_run(bench_runner *r) {
  int rc = qrpc_loop_run(r->loop);
  if (rc != 0 && !r->failed)
    bench_runner_fail(r, "the event loop failed: %s", qrpc_strerror(rc));
  if (r->phase == BENCH_DONE && !r->failed) return 0;
  if (r->interrupted && !r->failed)
    fprintf(stderr, "%s: interrupted before the measured window ended\n",
            r->prog);
  else if (!r->failed)
    fprintf(stderr, "%s: the run ended early (nothing left to wait for)\n",
            r->prog);
  return 1;
}

double bench_runner_measured_s(const bench_runner *r) {
  if (r->t_measure == 0) return 0;
  uint64_t end = r->t_end ? r->t_end : bench_now_ns();
  return (double)(end - r->t_measure) / 1e9;
}

void bench_runner_cleanup(bench_runner *r) {
  if (r->phase_ev != NULL) event_free(r->phase_ev);
  if (r->progress_ev != NULL) event_free(r->progress_ev);
  r->phase_ev = r->progress_ev = NULL;
  bench_signals_free(&r->sig);
}
