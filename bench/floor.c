/*
 * qrpc-bench client floor: the machine's floor for one round trip, to
 * quote next to qrpc's figures. Two threads of this process, on different
 * CPUs where the system allows it, bounce --payload bytes over loopback
 * UDP or TCP (--proto) with blocking send and receive calls: no QUIC, no
 * TLS, no event loop, one message in flight. A unary call with one in
 * flight is that round trip plus qrpc's own work on both sides, so the
 * ratio of the two is what qrpc costs. With --busy (UDP) both ends poll
 * their socket without sleeping, the floor for qrpc's busy-polled loops
 * (qrpc_loop_set_busy_poll(), --busy-poll).
 *
 * RESULT: rtt_per_s (round trips a second in the measured window),
 * p50_us and p99_us (each round trip's time), and errors.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "args.h"
#include "bench.h"
#include "hist.h"
#include "report.h"

#define FLOOR_MAX_PAYLOAD 65507

typedef struct floor_run {
  int tcp;
  int busy; /* UDP: poll with MSG_DONTWAIT instead of sleeping in recv */
  size_t payload;
  int srv_fd; /* UDP: the echo socket; TCP: the listener */
  atomic_int stop;
  int echo_cpu; /* -1: not pinned */
  int echo_error;
} floor_run;

/* Pins the calling thread to cpu when there are several; returns the cpu,
 * or -1 when it stays where the system puts it. */
static int pin(int cpu) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  if (n < 2) return -1;
  cpu_set_t set;
  CPU_ZERO(&set);
  CPU_SET((int)(cpu % n), &set);
  return pthread_setaffinity_np(pthread_self(), sizeof(set), &set) == 0
             ? (int)(cpu % n)
             : -1;
}

/* Reads exactly n bytes from a stream socket. Returns 0, or -1. */
static int read_full(int fd, uint8_t *buf, size_t n) {
  size_t got = 0;
  while (got < n) {
    ssize_t r = recv(fd, buf + got, n - got, 0);
    if (r <= 0) {
      if (r < 0 && errno == EINTR) continue;
      return -1;
    }
    got += (size_t)r;
  }
  return 0;
}

static int send_full(int fd, const uint8_t *buf, size_t n) {
  size_t sent = 0;
  while (sent < n) {
    ssize_t r = send(fd, buf + sent, n - sent, MSG_NOSIGNAL);
    if (r < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    sent += (size_t)r;
  }
  return 0;
}

/* A datagram, received as recvfrom() would, but polling without sleeping
 * when f->busy; gives up (EAGAIN) after a second, like the blocking
 * receive's timeout, or when the run is stopping. */
static ssize_t floor_recv(floor_run *f, int fd, uint8_t *buf, size_t n,
                          struct sockaddr *from, socklen_t *fl) {
  if (!f->busy) return recvfrom(fd, buf, n, 0, from, fl);
  uint64_t until = bench_now_ns() + UINT64_C(1000000000);
  for (;;) {
    ssize_t r = recvfrom(fd, buf, n, MSG_DONTWAIT, from, fl);
    if (r >= 0 || (errno != EAGAIN && errno != EWOULDBLOCK)) return r;
    if (atomic_load(&f->stop) || bench_now_ns() > until) return -1;
  }
}

/* The echo side: sends back whatever arrives until stopped. */
static void *echo_main(void *arg) {
  floor_run *f = arg;
  f->echo_cpu = pin(1);
  uint8_t *buf = malloc(f->payload);
  if (buf == NULL) {
    f->echo_error = 1;
    return NULL;
  }
  if (f->tcp) {
    int c = accept(f->srv_fd, NULL, NULL);
    int one = 1;
    if (c < 0 || setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)))
      f->echo_error = 1;
    while (c >= 0 && !atomic_load(&f->stop) &&
           read_full(c, buf, f->payload) == 0)
      if (send_full(c, buf, f->payload) != 0) break;
    if (c >= 0) close(c);
  } else {
    for (;;) {
      struct sockaddr_storage from;
      socklen_t fl = sizeof(from);
      ssize_t r = floor_recv(f, f->srv_fd, buf, f->payload,
                             (struct sockaddr *)&from, &fl);
      if (atomic_load(&f->stop)) break;
      if (r < 0) {
        if (errno == EINTR || (f->busy && errno == EAGAIN)) continue;
        f->echo_error = 1;
        break;
      }
      sendto(f->srv_fd, buf, (size_t)r, 0, (struct sockaddr *)&from, fl);
    }
  }
  free(buf);
  return NULL;
}

/* The echo socket (UDP) or listener (TCP) on 127.0.0.1, port chosen by
 * the system; fills addr. Returns the descriptor, or -1. */
static int open_server(int tcp, struct sockaddr_in *addr) {
  int fd = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
  if (fd < 0) return -1;
  memset(addr, 0, sizeof(*addr));
  addr->sin_family = AF_INET;
  addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(*addr);
  if (bind(fd, (struct sockaddr *)addr, sizeof(*addr)) != 0 ||
      getsockname(fd, (struct sockaddr *)addr, &len) != 0 ||
      (tcp && listen(fd, 1) != 0)) {
    close(fd);
    return -1;
  }
  return fd;
}

static int open_client(int tcp, const struct sockaddr_in *addr) {
  int fd = socket(AF_INET, tcp ? SOCK_STREAM : SOCK_DGRAM, 0);
  if (fd < 0) return -1;
  int one = 1;
  if (connect(fd, (const struct sockaddr *)addr, sizeof(*addr)) != 0 ||
      (tcp && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)))) {
    close(fd);
    return -1;
  }
  /* A UDP round trip that never comes back ends after a second. */
  struct timeval tv = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  return fd;
}

/* Round trips until deadline; the measured ones go into h. */
static uint64_t bounce(int fd, floor_run *f, uint8_t *buf, uint64_t until_ns,
                       bench_hist *h, uint64_t *errors) {
  uint64_t n = 0;
  for (uint64_t now = bench_now_ns(); now < until_ns;) {
    int bad = f->tcp ? send_full(fd, buf, f->payload) != 0 ||
                           read_full(fd, buf, f->payload) != 0
                     : send(fd, buf, f->payload, 0) < 0 ||
                           floor_recv(f, fd, buf, f->payload, NULL, NULL) !=
                               (ssize_t)f->payload;
    uint64_t t = bench_now_ns();
    if (bad) {
      if (++*errors > 10) break;
    } else {
      if (h) bench_hist_add(h, t - now);
      n++;
    }
    now = t;
  }
  return n;
}

static int run(const char *prog, floor_run *f, double warmup_s,
               double duration_s, int json) {
  struct sockaddr_in addr;
  if ((f->srv_fd = open_server(f->tcp, &addr)) < 0) {
    fprintf(stderr, "%s: cannot open a loopback %s socket: %s\n", prog,
            f->tcp ? "TCP" : "UDP", strerror(errno));
    return 1;
  }
  pthread_t echo;
  if (pthread_create(&echo, NULL, echo_main, f) != 0) {
    fprintf(stderr, "%s: cannot start the echo thread\n", prog);
    close(f->srv_fd);
    return 1;
  }
  int fd = open_client(f->tcp, &addr);
  int cpu = pin(0);
  uint8_t *buf = calloc(1, f->payload);
  bench_hist h;
  bench_hist_reset(&h);
  uint64_t errors = 0, n = 0;
  double secs = 0;
  if (fd >= 0 && buf != NULL) {
    uint64_t start = bench_now_ns();
    bounce(fd, f, buf, start + (uint64_t)(warmup_s * 1e9), NULL, &errors);
    uint64_t t0 = bench_now_ns();
    n = bounce(fd, f, buf, t0 + (uint64_t)(duration_s * 1e9), &h, &errors);
    secs = (double)(bench_now_ns() - t0) / 1e9;
  } else {
    errors++;
  }
  atomic_store(&f->stop, 1);
  /* Wakes the echo side: closing our end ends a TCP read; one datagram
   * more ends a UDP receive. */
  if (fd >= 0) {
    if (!f->tcp) send(fd, "", 0, 0);
    close(fd);
  }
  if (!f->tcp) {
    int w = open_client(0, &addr);
    if (w >= 0) {
      send(w, "", 0, 0);
      close(w);
    }
  }
  pthread_join(echo, NULL);
  close(f->srv_fd);
  free(buf);
  if (f->echo_error) errors++;
  bench_report r;
  bench_report_init(&r);
  bench_report_param_text(&r, "impl", "kernel");
  bench_report_param_text(&r, "family", "floor");
  bench_report_param_text(&r, "proto", f->tcp ? "tcp" : "udp");
  bench_report_param_uint(&r, "payload", f->payload);
  bench_report_param_uint(&r, "busy", (uint64_t)f->busy);
  bench_report_param_num(&r, "warmup_s", warmup_s);
  bench_report_param_num(&r, "duration_s", duration_s);
  bench_report_param_uint(&r, "pinned", cpu >= 0 && f->echo_cpu >= 0);
  bench_report_num(&r, "rtt_per_s", secs > 0 ? (double)n / secs : 0, 1);
  bench_report_num(&r, "p50_us", bench_hist_quantile(&h, 0.50) / 1e3, 1);
  bench_report_num(&r, "p99_us", bench_hist_quantile(&h, 0.99) / 1e3, 1);
  bench_report_uint(&r, "errors", errors);
  fprintf(stderr,
          "%s: %s%s floor, %zu B: %.0f round trips/s, p50 %.1f us, p99 %.1f "
          "us (%s)\n",
          prog, f->tcp ? "TCP" : "UDP", f->busy ? " busy-polled" : "",
          f->payload,
          secs > 0 ? (double)n / secs : 0, bench_hist_quantile(&h, 0.50) / 1e3,
          bench_hist_quantile(&h, 0.99) / 1e3,
          cpu >= 0 && f->echo_cpu >= 0 ? "the two ends on CPUs 0 and 1"
                                       : "not pinned");
  bench_report_print(&r, json);
  return errors ? 1 : 0;
}

int bench_client_floor(const char *prog, int argc, char **argv) {
  static const char *const protos[] = {"udp", "tcp", NULL};
  int proto = 0, json = 0, busy = 0;
  uint64_t payload = 64;
  double warmup_s = 1, duration_s = 5;
  bench_flag flags[] = {
      {"--proto", BENCH_FLAG_CHOICE, &proto, 0, 0, protos, "udp|tcp",
       "the transport to bounce over", 0, 0},
      {"--payload", BENCH_FLAG_UINT, &payload, 1, FLOOR_MAX_PAYLOAD, NULL,
       "BYTES", "bytes each way", 0, 0},
      {"--warmup", BENCH_FLAG_SECONDS, &warmup_s, 0, 3600, NULL, "S",
       "seconds before measuring", 0, 0},
      {"--duration", BENCH_FLAG_SECONDS, &duration_s, 0.1, 3600, NULL, "S",
       "seconds measured", 0, 0},
      {"--json", BENCH_FLAG_BOOL, &json, 0, 0, NULL, NULL,
       "also print the result as one JSON line", 0, 0},
      {"--busy", BENCH_FLAG_BOOL, &busy, 0, 0, NULL, NULL,
       "UDP: both ends poll without sleeping (the floor of --busy-poll)", 0,
       0},
  };
  int rc = bench_args_parse(
      prog,
      "[--proto udp|tcp] [--payload BYTES] [--warmup S] [--duration S] "
      "[--busy]",
      "The machine's floor for one round trip: two threads of this process\n"
      "(on CPUs 0 and 1 when there are two) bounce the payload over\n"
      "loopback, no QUIC, no TLS, one in flight. Prints RESULT with\n"
      "rtt_per_s, p50_us, p99_us and errors; quote qrpc's figures as a\n"
      "ratio to it, measured in the same run.",
      flags, sizeof(flags) / sizeof(flags[0]), argc, argv);
  if (rc != 0) return rc == 1 ? 0 : 2;
  if (busy && proto == 1) {
    fprintf(stderr, "%s: --busy applies to --proto udp\n", prog);
    return 2;
  }
  floor_run f = {.tcp = proto == 1, .busy = busy, .payload = (size_t)payload};
  return run(prog, &f, warmup_s, duration_s, json);
}
