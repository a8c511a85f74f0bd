/*
 * Timers and signal watches on a qrpc_loop (include/qrpc/loop.h): thin
 * owners of libevent events that keep a fixed schedule for periodic
 * timers and are freed with their loop.
 */
#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "qrpc/error.h"
#include "qrpc/loop.h"
#include "quic/loop.h"
#include "util/clock.h"

struct qrpc_timer {
  qrpci_list node; /* in loop->timers */
  qrpc_loop *loop;
  struct event *ev;
  qrpc_timer_fn fn;
  void *user_data;
  uint64_t due_ns;    /* the tick now running, or the next one */
  uint64_t period_ns; /* 0: one-shot */
  uint64_t skipped;
  int active;
  int in_callback;
  int freed; /* freed inside its own callback */
};

struct qrpc_signal {
  qrpci_list node; /* in loop->signals */
  qrpc_loop *loop;
  struct event *ev;
  qrpc_signal_fn fn;
  void *user_data;
  int signum;
  int pipe[2]; /* the handler writes to [1], the loop reads [0] */
  struct sigaction old;
  int in_callback;
  int freed;
};

static void arm(qrpc_timer *t, uint64_t now) {
  struct timeval tv = qrpci_ns_to_tv(t->due_ns > now ? t->due_ns - now : 0);
  evtimer_add(t->ev, &tv);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_timer *t = arg;
  (void)fd;
  (void)what;
  /* libevent's clock and ours may differ by a rounding step: never run a
   * tick before it is due. */
  uint64_t now = qrpci_now_ns();
  if (now < t->due_ns) {
    arm(t, now);
    return;
  }
  if (t->period_ns == 0) t->active = 0;
  t->in_callback = 1;
  t->fn(t, t->user_data);
  t->in_callback = 0;
  if (t->freed) {
    free(t);
    return;
  }
  /* Re-armed inside the callback (qrpc_timer_start), or stopped. */
  if (!t->active || t->period_ns == 0 || evtimer_pending(t->ev, NULL)) return;
  uint64_t next = t->due_ns + t->period_ns;
  now = qrpci_now_ns();
  if (next <= now) {
    uint64_t behind = (now - next) / t->period_ns + 1;
    t->skipped += behind;
    next += behind * t->period_ns;
  }
  t->due_ns = next;
  arm(t, now);
}

int qrpc_timer_new(qrpc_loop *loop, qrpc_timer_fn fn, void *user_data,
                   qrpc_timer **out) {
  if (!loop || !fn || !out) return QRPC_EINVAL;
  qrpc_timer *t = calloc(1, sizeof(*t));
  if (!t) return QRPC_ENOMEM;
  t->ev = evtimer_new(loop->base, timer_cb, t);
  if (!t->ev) {
    free(t);
    return QRPC_ENOMEM;
  }
  t->loop = loop;
  t->fn = fn;
  t->user_data = user_data;
  qrpci_list_push_back(&loop->timers, &t->node);
  *out = t;
  return 0;
}

int qrpc_timer_start(qrpc_timer *t, uint64_t delay_ns, uint64_t period_ns) {
  if (!t || t->freed) return QRPC_EINVAL;
  uint64_t now = qrpci_now_ns();
  if (delay_ns > UINT64_MAX - now) return QRPC_EINVAL;
  evtimer_del(t->ev);
  t->due_ns = now + delay_ns;
  t->period_ns = period_ns;
  t->active = 1;
  arm(t, now);
  return 0;
}

void qrpc_timer_stop(qrpc_timer *t) {
  if (!t) return;
  evtimer_del(t->ev);
  t->active = 0;
}

int qrpc_timer_active(const qrpc_timer *t) { return t && t->active; }

uint64_t qrpc_timer_due_ns(const qrpc_timer *t) { return t ? t->due_ns : 0; }

uint64_t qrpc_timer_skipped(const qrpc_timer *t) { return t ? t->skipped : 0; }

void qrpc_timer_free(qrpc_timer *t) {
  if (!t || t->freed) return;
  event_free(t->ev);
  qrpci_list_remove(&t->node);
  t->active = 0;
  if (t->in_callback)
    t->freed = 1; /* timer_cb frees it when the callback returns */
  else
    free(t);
}

/* Signals reach the loop through a pipe of the watch's own: the handler
 * only writes a byte to it, and the loop's read event calls the user. (Not
 * libevent's signal events: they allow one event_base per process and keep
 * the base busy after the last of them is deleted.) One watch per signal
 * in the process; the table is changed only under sig_mu, and read by
 * the handler. */
static pthread_mutex_t sig_mu = PTHREAD_MUTEX_INITIALIZER;
static volatile sig_atomic_t sig_fd[NSIG]; /* write end + 1; 0: none */
static qrpc_signal *sig_watch[NSIG];

static void on_os_signal(int signum) {
  int saved = errno;
  int fd = sig_fd[signum] - 1;
  if (fd >= 0) {
    unsigned char b = 1;
    /* A full pipe already holds a pending wake-up. */
    ssize_t n = write(fd, &b, 1);
    (void)n;
  }
  errno = saved;
}

static void signal_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_signal *s = arg;
  unsigned char buf[64];
  (void)what;
  int seen = 0;
  for (;;) {
    ssize_t n = read(fd, buf, sizeof(buf));
    if (n > 0) {
      seen = 1;
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    break;
  }
  if (!seen) return;
  s->in_callback = 1;
  s->fn(s->loop, s->signum, s->user_data);
  s->in_callback = 0;
  if (s->freed) free(s);
}

int qrpc_loop_on_signal(qrpc_loop *loop, int signum, qrpc_signal_fn fn,
                        void *user_data, qrpc_signal **out) {
  if (!loop || !fn || !out || signum <= 0 || signum >= NSIG ||
      signum == SIGKILL || signum == SIGSTOP)
    return QRPC_EINVAL;
  qrpc_signal *s = calloc(1, sizeof(*s));
  if (!s) return QRPC_ENOMEM;
  s->loop = loop;
  s->fn = fn;
  s->user_data = user_data;
  s->signum = signum;
  s->pipe[0] = s->pipe[1] = -1;
  int rv = QRPC_ESYSTEM;
  pthread_mutex_lock(&sig_mu);
  if (sig_watch[signum]) {
    rv = QRPC_ESTATE;
    goto fail;
  }
  if (pipe2(s->pipe, O_NONBLOCK | O_CLOEXEC) != 0) goto fail;
  s->ev = event_new(loop->base, s->pipe[0], EV_READ | EV_PERSIST, signal_cb, s);
  if (!s->ev || event_add(s->ev, NULL) != 0) {
    rv = QRPC_ENOMEM;
    goto fail;
  }
  struct sigaction sa;
  memset(&sa, 0, sizeof(sa));
  sa.sa_handler = on_os_signal;
  sigfillset(&sa.sa_mask);
  sa.sa_flags = SA_RESTART;
  sig_fd[signum] = s->pipe[1] + 1;
  if (sigaction(signum, &sa, &s->old) != 0) {
    sig_fd[signum] = 0;
    rv = QRPC_EINVAL;
    goto fail;
  }
  sig_watch[signum] = s;
  pthread_mutex_unlock(&sig_mu);
  qrpci_list_push_back(&loop->signals, &s->node);
  *out = s;
  return 0;
fail:
  pthread_mutex_unlock(&sig_mu);
  if (s->ev) event_free(s->ev);
  if (s->pipe[0] >= 0) close(s->pipe[0]);
  if (s->pipe[1] >= 0) close(s->pipe[1]);
  free(s);
  return rv;
}

void qrpc_signal_free(qrpc_signal *s) {
  if (!s || s->freed) return;
  pthread_mutex_lock(&sig_mu);
  sigaction(s->signum, &s->old, NULL);
  sig_fd[s->signum] = 0;
  sig_watch[s->signum] = NULL;
  pthread_mutex_unlock(&sig_mu);
  event_free(s->ev);
  close(s->pipe[0]);
  close(s->pipe[1]);
  qrpci_list_remove(&s->node);
  if (s->in_callback)
    s->freed = 1; /* signal_cb frees it when the callback returns */
  else
    free(s);
}

void qrpci_loop_free_timers(qrpc_loop *loop) {
  while (!qrpci_list_empty(&loop->timers))
    qrpc_timer_free(QRPCI_CONTAINER_OF(loop->timers.next, qrpc_timer, node));
  while (!qrpci_list_empty(&loop->signals))
    qrpc_signal_free(QRPCI_CONTAINER_OF(loop->signals.next, qrpc_signal, node));
}
