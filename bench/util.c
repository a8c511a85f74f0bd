/*
 * Small things every subcommand needs: clocks, limits, /proc, addresses,
 * qrpc's log lines and signals.
 */
#include <errno.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "bench.h"

/* qrpc log lines printed per process; a run that goes wrong with ten
 * thousand connections must not bury its own summary. */
#define LOG_LINES_MAX 30

uint64_t bench_now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * UINT64_C(1000000000) + (uint64_t)ts.tv_nsec;
}

int bench_loop_new(int precise, qrpc_loop **loop, struct event_base **base) {
  *base = NULL;
  if (!precise) return qrpc_loop_new(NULL, loop);
  /* qrpc_loop_post() needs libevent's locking set up before the base is
   * made (qrpc does it itself only for bases it makes). */
  if (evthread_use_pthreads() != 0) return QRPC_ESYSTEM;
  struct event_config *cfg = event_config_new();
  if (cfg == NULL) return QRPC_ENOMEM;
  event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
  *base = event_base_new_with_config(cfg);
  event_config_free(cfg);
  if (*base == NULL) return QRPC_ESYSTEM;
  int rc = qrpc_loop_new(*base, loop);
  if (rc != 0) {
    event_base_free(*base);
    *base = NULL;
  }
  return rc;
}

void bench_loop_free(qrpc_loop *loop, struct event_base *base) {
  qrpc_loop_free(loop);
  if (base != NULL) event_base_free(base);
}

double bench_cpu_s(void) {
  struct rusage ru;
  if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
  return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
         (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

uint64_t bench_raise_nofile(uint64_t want) {
  struct rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) != 0) return 0;
  if (rl.rlim_cur != RLIM_INFINITY && rl.rlim_cur < want) {
    struct rlimit up = rl;
    up.rlim_cur = want;
    if (up.rlim_max != RLIM_INFINITY && up.rlim_max < want) up.rlim_max = want;
    /* Raising the hard limit needs privilege; fall back to what it allows. */
    if (setrlimit(RLIMIT_NOFILE, &up) != 0) {
      up.rlim_max = rl.rlim_max;
      up.rlim_cur = rl.rlim_max;
      setrlimit(RLIMIT_NOFILE, &up);
    }
    getrlimit(RLIMIT_NOFILE, &rl);
  }
  return rl.rlim_cur == RLIM_INFINITY ? UINT64_MAX : (uint64_t)rl.rlim_cur;
}

int bench_read_rss_kb(long pid, uint64_t *kb) {
  char path[64], line[256];
  snprintf(path, sizeof(path), "/proc/%ld/status", pid);
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  int rc = -1;
  while (fgets(line, sizeof(line), f) != NULL) {
    unsigned long long v;
    if (sscanf(line, "VmRSS: %llu kB", &v) == 1) {
      *kb = v;
      rc = 0;
      break;
    }
  }
  fclose(f);
  if (rc != 0) errno = ENOENT;
  return rc;
}

int bench_join_addr(char *buf, size_t cap, const char *host, uint64_t port) {
  int n = strchr(host, ':') != NULL && host[0] != '['
              ? snprintf(buf, cap, "[%s]:%llu", host, (unsigned long long)port)
              : snprintf(buf, cap, "%s:%llu", host, (unsigned long long)port);
  return n < 0 || (size_t)n >= cap ? -1 : 0;
}

/* ---- qrpc's log lines ---------------------------------------------------- */

static struct {
  const char *prog;
  int unverified;
  unsigned printed;
  char last[256];
} log_state;

/* With verification off, qrpc warns once; the client said already that it
 * does not verify, which is all there is to know. */
static int is_verification_noise(const char *msg) {
  return strstr(msg, "verification is DISABLED") != NULL ||
         strncmp(msg, "tls: certificate of ", 20) == 0;
}

static void on_log(qrpc_log_level level, const char *msg, void *user_data) {
  (void)user_data;
  if (log_state.unverified && is_verification_noise(msg)) return;
  /* Failed connection attempts are retried and logged at info level only:
   * kept to explain a setup that times out, not printed. */
  if (level < QRPC_LOG_WARN) {
    if (strstr(msg, "failed") != NULL)
      snprintf(log_state.last, sizeof(log_state.last), "%s", msg);
    return;
  }
  snprintf(log_state.last, sizeof(log_state.last), "%s", msg);
  if (log_state.printed > LOG_LINES_MAX) return;
  if (++log_state.printed > LOG_LINES_MAX) {
    fprintf(stderr, "%s: further qrpc messages are not shown\n",
            log_state.prog);
    return;
  }
  fprintf(stderr, "%s: qrpc %s: %s\n", log_state.prog,
          qrpc_log_level_name(level), msg);
}

void bench_log_init(const char *prog) {
  log_state.prog = prog;
  qrpc_log_set_handler(on_log, NULL);
  qrpc_log_set_level(QRPC_LOG_INFO);
}

void bench_log_unverified(void) { log_state.unverified = 1; }

const char *bench_log_last(void) { return log_state.last; }

/* ---- Signals ------------------------------------------------------------- */

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  bench_signals *s = arg;
  (void)sig, (void)what;
  *s->flag = 1;
  qrpc_loop_stop(s->loop);
}

int bench_signals_init(bench_signals *s, qrpc_loop *loop, volatile int *flag) {
  struct event_base *base = qrpc_loop_base(loop);
  s->loop = loop;
  s->flag = flag;
  s->term = evsignal_new(base, SIGTERM, on_signal, s);
  s->intr = evsignal_new(base, SIGINT, on_signal, s);
  if (s->term == NULL || s->intr == NULL || event_add(s->term, NULL) != 0 ||
      event_add(s->intr, NULL) != 0) {
    bench_signals_free(s);
    return -1;
  }
  return 0;
}

void bench_signals_free(bench_signals *s) {
  if (s->term != NULL) event_free(s->term);
  if (s->intr != NULL) event_free(s->intr);
  s->term = s->intr = NULL;
}
