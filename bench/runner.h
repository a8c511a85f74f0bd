/*
 * The phases of a client run, shared by every family: setup (connecting,
 * bounded by a timeout), warmup, the measured window, done. The family
 * drives the load; the runner tells it when the window opens, calls it
 * once a second for a progress line on runs longer than a few seconds,
 * stops the loop when the window closes, and stops it early on a failure
 * or a signal.
 */
#ifndef BENCH_RUNNER_H
#define BENCH_RUNNER_H

#include <stdint.h>

#include "bench.h"

/* Runs of at most this many seconds print no progress lines. */
#define BENCH_PROGRESS_AFTER_S 3.0

typedef enum bench_phase {
  BENCH_SETUP,
  BENCH_WARMUP,
  BENCH_MEASURE,
  BENCH_DONE,
} bench_phase;

typedef struct bench_runner bench_runner;

typedef struct bench_runner_callbacks {
  /* The measured window opened: reset the counters. */
  void (*on_measure)(bench_runner *r, void *user_data);
  /* Once a second on long runs: print a progress line to stderr. t is the
   * seconds since the warmup began. */
  void (*on_progress)(bench_runner *r, double t, void *user_data);
} bench_runner_callbacks;

struct bench_runner {
  const char *prog;
  qrpc_loop *loop;
  double warmup_s, duration_s, setup_timeout_s;
  bench_runner_callbacks cbs;
  void *user_data;
  bench_phase phase;
  uint64_t t_setup, t_warmup, t_measure, t_end;
  int failed;
  volatile int interrupted;
  struct event *phase_ev, *progress_ev;
  bench_signals sig;
};

/* Starts the setup phase now: it fails the run after setup_timeout_s
 * unless bench_runner_ready() comes first. Returns 0, or 1 after saying
 * why. */
int bench_runner_init(bench_runner *r, const char *prog, qrpc_loop *loop,
                      double warmup_s, double duration_s,
                      double setup_timeout_s, const bench_runner_callbacks *cbs,
                      void *user_data);

/* The load is set up: warmup begins (or the window, without warmup). */
void bench_runner_ready(bench_runner *r);

/* Ends the run as failed after printing prog: the message. */
void bench_runner_fail(bench_runner *r, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Runs the loop until the window closed, the run failed or a signal came.
 * Returns 0 when the window closed, 1 otherwise (after saying why). */
int bench_runner_run(bench_runner *r);

static inline int bench_runner_measuring(const bench_runner *r) {
  return r->phase == BENCH_MEASURE;
}

/* Seconds the window lasted (or has lasted so far). */
double bench_runner_measured_s(const bench_runner *r);

void bench_runner_cleanup(bench_runner *r);

#endif
