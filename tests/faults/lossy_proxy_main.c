/*
 * lossy_proxy: the fault-injecting UDP proxy of lossy_proxy.h as a program,
 * to put between any qrpc client and server by hand:
 *
 *   lossy_proxy --upstream 127.0.0.1:4433 --both loss=5,reorder=10:20 \
 *               [--up SPEC] [--down SPEC] [--seed N] [--blackout MS:LEN]
 *
 * It listens on 127.0.0.1 (a free port), prints "READY <port>", forwards
 * until SIGINT or SIGTERM, then prints what it did in each direction.
 * SPEC is loss=P,dup=P,reorder=P[:MS],delay=MS,jitter=MS with P in
 * percent. --blackout MS:LEN drops everything for LEN ms starting MS ms
 * after start.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "lossy_proxy.h"

typedef struct blackout {
  qt_proxy *p;
  uint32_t len_ms;
} blackout;

static void on_signal(evutil_socket_t sig, short what, void *arg) {
  (void)sig;
  (void)what;
  event_base_loopbreak(arg);
}

static void on_blackout(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  blackout *b = arg;
  qt_proxy_blackout(b->p, QT_BOTH_DIRS, b->len_ms);
  fprintf(stderr, "lossy_proxy: blackout for %u ms\n", (unsigned)b->len_ms);
}

static int usage(const char *why) {
  fprintf(stderr,
          "lossy_proxy: %s\n"
          "usage: lossy_proxy --upstream HOST:PORT [--both SPEC] [--up SPEC]"
          " [--down SPEC] [--seed N] [--blackout AT_MS:LEN_MS]\n"
          "SPEC: loss=P,dup=P,reorder=P[:MS],delay=MS,jitter=MS (P in %%)\n",
          why);
  return 2;
}

static void print_stats(qt_proxy *p) {
  static const char *names[2] = {"up (client to server)",
                                 "down (server to client)"};
  for (int d = 0; d < 2; d++) {
    qt_link_stats st;
    qt_proxy_get_stats(p, (qt_dir)d, &st);
    printf("%s: %llu packets, %llu dropped, %llu blacked out, %llu "
           "duplicated, %llu reordered, %llu delivered, %llu send errors\n",
           names[d], (unsigned long long)st.packets,
           (unsigned long long)st.dropped, (unsigned long long)st.blacked_out,
           (unsigned long long)st.duplicated, (unsigned long long)st.reordered,
           (unsigned long long)st.delivered,
           (unsigned long long)st.send_errors);
  }
}

int main(int argc, char **argv) {
  const char *upstream = NULL;
  const char *spec[2] = {NULL, NULL};
  uint64_t seed = 1;
  unsigned long at_ms = 0, len_ms = 0;
  for (int i = 1; i < argc; i += 2) {
    const char *a = argv[i];
    const char *v = i + 1 < argc ? argv[i + 1] : NULL;
    if (!v) return usage("every option takes a value");
    if (strcmp(a, "--upstream") == 0) {
      upstream = v;
    } else if (strcmp(a, "--both") == 0) {
      spec[0] = spec[1] = v;
    } else if (strcmp(a, "--up") == 0) {
      spec[QT_UP] = v;
    } else if (strcmp(a, "--down") == 0) {
      spec[QT_DOWN] = v;
    } else if (strcmp(a, "--seed") == 0) {
      seed = strtoull(v, NULL, 10);
    } else if (strcmp(a, "--blackout") == 0) {
      if (sscanf(v, "%lu:%lu", &at_ms, &len_ms) != 2)
        return usage("--blackout wants AT_MS:LEN_MS");
    } else {
      return usage("unknown option");
    }
  }
  if (!upstream) return usage("--upstream is required");

  qt_link_conf conf[2];
  for (int d = 0; d < 2; d++) {
    if (!spec[d]) {
      memset(&conf[d], 0, sizeof(conf[d]));
    } else if (qt_link_conf_parse(spec[d], &conf[d]) != 0) {
      fprintf(stderr, "lossy_proxy: bad fault spec '%s'\n", spec[d]);
      return 2;
    }
  }

  struct event_base *base = event_base_new();
  qt_proxy *p;
  if (!base || qt_proxy_new(base, upstream, seed, &p) != 0) {
    perror("lossy_proxy: cannot start");
    return 1;
  }
  qt_proxy_set(p, QT_UP, &conf[QT_UP]);
  qt_proxy_set(p, QT_DOWN, &conf[QT_DOWN]);

  struct event *sigint = evsignal_new(base, SIGINT, on_signal, base);
  struct event *sigterm = evsignal_new(base, SIGTERM, on_signal, base);
  evsignal_add(sigint, NULL);
  evsignal_add(sigterm, NULL);
  blackout b = {p, (uint32_t)len_ms};
  struct event *bev = evtimer_new(base, on_blackout, &b);
  if (len_ms) {
    struct timeval tv = {(time_t)(at_ms / 1000),
                         (suseconds_t)(at_ms % 1000) * 1000};
    evtimer_add(bev, &tv);
  }

  printf("READY %u\n", (unsigned)qt_proxy_port(p));
  fflush(stdout);
  event_base_loop(base, EVLOOP_NO_EXIT_ON_EMPTY);
  print_stats(p);

  event_free(bev);
  event_free(sigint);
  event_free(sigterm);
  qt_proxy_free(p);
  event_base_free(base);
  return 0;
}
