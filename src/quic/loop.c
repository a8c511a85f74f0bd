#include <errno.h>
#include <event2/dns.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <event2/thread.h>

#include "qrpc/error.h"
#include "quic/conn.h"
#include "quic/loop.h"
#include "quic/testing.h"
#include "util/clock.h"
#include "util/log.h"

/* Room for one GSO batch (at most QRPCI_GSO_MAX_BYTES) and, after it, the
 * next packet: ngtcp2 is handed room for its largest packet, a PMTUD probe,
 * before we know whether that packet still fits the batch. */
#define QRPCI_TXBUF_CAP (2 * QRPCI_MAX_UDP)
_Static_assert(QRPCI_TXBUF_CAP >= QRPCI_GSO_MAX_BYTES + QRPCI_MAX_UDP,
               "a full batch and the largest packet fit the send buffer");

struct qrpci_post {
  qrpci_post *next;
  qrpc_loop_fn fn;
  void *arg;
};

/* Runs once per loop turn after the read callbacks that made connections
 * dirty, so frames queued by many calls leave in as few packets as possible. */
static void flush_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_loop *loop = arg;
  loop->activity++;
  qrpci_list work;
  qrpci_list_init(&work);
  /* Detach the list first: writing may mark other connections dirty, which
   * schedules another pass instead of growing this one without end. */
  if (!qrpci_list_empty(&loop->dirty)) {
    work.next = loop->dirty.next;
    work.prev = loop->dirty.prev;
    work.next->prev = &work;
    work.prev->next = &work;
    qrpci_list_init(&loop->dirty);
  }
  while (!qrpci_list_empty(&work)) {
    qrpc_conn *c = QRPCI_CONTAINER_OF(work.next, qrpc_conn, dirty_node);
    qrpci_list_remove(&c->dirty_node);
    if (c->resume_pending) qrpci_conn_process_resumed(c);
    if (c->state == QRPCI_CONN_DEAD) {
      qrpci_conn_free(c);
      continue;
    }
    if (!c->write_wanted && qrpci_conn_ack_can_wait(c)) continue;
    loop->flushing = 1;
    qrpci_conn_write(c);
    loop->flushing = 0;
  }
  qrpci_loop_flush_txqs(loop);
}

void qrpci_loop_mark_dirty(qrpc_loop *loop, qrpc_conn *c) {
  c->write_wanted = 1;
  qrpci_loop_mark_read(loop, c);
}

void qrpci_loop_mark_read(qrpc_loop *loop, qrpc_conn *c) {
  if (qrpci_list_linked(&c->dirty_node)) return;
  qrpci_list_push_back(&loop->dirty, &c->dirty_node);
  event_active(loop->flush_ev, 0, 0);
}

static void nudge_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_loop *loop = arg;
  loop->nudge_at = UINT64_MAX;
}

void qrpci_loop_nudge(qrpc_loop *loop, uint64_t ts, uint64_t now) {
  if (ts >= loop->nudge_at) return;
  loop->nudge_at = ts;
  struct timeval tv = qrpci_ns_to_tv(ts > now ? ts - now : 0);
  evtimer_add(loop->nudge_ev, &tv);
}

static void post_cb(evutil_socket_t fd, short what, void *arg) {
  qrpc_loop *loop = arg;
  loop->activity++;
  pthread_mutex_lock(&loop->post_mu);
  qrpci_post *p = loop->post_head;
  loop->post_head = loop->post_tail = NULL;
  pthread_mutex_unlock(&loop->post_mu);
  while (p) {
    qrpci_post *next = p->next;
    p->fn(loop, p->arg);
    free(p);
    p = next;
  }
}

static pthread_once_t threads_once = PTHREAD_ONCE_INIT;
static int threads_rv;

/* libevent's locking must be on before a base is created, so that
 * qrpc_loop_post() may activate an event from another thread. */
static void threads_init(void) { threads_rv = evthread_use_pthreads(); }

/* ngtcp2 paces packets and asks for timers tens of microseconds ahead;
 * libevent's default epoll backend rounds timeouts up to milliseconds,
 * which would hold every paced packet a millisecond. A precise base uses
 * timerfd instead. */
static struct event_base *new_precise_base(void) {
  struct event_config *cfg = event_config_new();
  if (!cfg) return NULL;
  event_config_set_flag(cfg, EVENT_BASE_FLAG_PRECISE_TIMER);
  struct event_base *base = event_base_new_with_config(cfg);
  event_config_free(cfg);
  return base ? base : event_base_new();
}

int qrpc_loop_new(struct event_base *base, qrpc_loop **out) {
  if (!out) return QRPC_EINVAL;
  pthread_once(&threads_once, threads_init);
  if (threads_rv != 0) return QRPC_ESYSTEM;
  qrpc_loop *loop = calloc(1, sizeof(*loop));
  if (!loop) return QRPC_ENOMEM;
  qrpci_list_init(&loop->dirty);
  qrpci_list_init(&loop->conns);
  qrpci_list_init(&loop->txq_socks);
  qrpci_list_init(&loop->timers);
  qrpci_list_init(&loop->signals);
  pthread_mutex_init(&loop->post_mu, NULL);
  if (base) {
    loop->base = base;
    if (evthread_make_base_notifiable(base) != 0) goto fail;
  } else {
    loop->base = new_precise_base();
    loop->own_base = 1;
    if (!loop->base) goto fail;
  }
  loop->txcap = QRPCI_TXBUF_CAP;
  loop->txbuf = malloc(loop->txcap);
  /* Pages of the receive batch are touched only as large packets arrive. */
  loop->rxbufs = malloc(sizeof(*loop->rxbufs) * QRPCI_RECV_BATCH);
  if (!loop->rxbufs) goto fail;
  loop->flush_ev = event_new(loop->base, -1, 0, flush_cb, loop);
  loop->post_ev = event_new(loop->base, -1, 0, post_cb, loop);
  loop->nudge_ev = evtimer_new(loop->base, nudge_cb, loop);
  loop->nudge_at = UINT64_MAX;
  if (!loop->txbuf || !loop->flush_ev || !loop->post_ev || !loop->nudge_ev)
    goto fail;
  *out = loop;
  return 0;
fail:
  qrpc_loop_free(loop);
  return QRPC_ENOMEM;
}

struct event_base *qrpc_loop_base(qrpc_loop *loop) { return loop->base; }

uint64_t qrpc_loop_now_ns(qrpc_loop *loop) { return qrpci_now_ns(); }

int qrpc_loop_set_busy_poll(qrpc_loop *loop, uint32_t usec) {
  if (!loop || usec > 1000000) return QRPC_EINVAL;
  loop->busy_poll_ns = (uint64_t)usec * 1000;
  return 0;
}

/* Turns without blocking while anything happened within busy_poll_ns,
 * then one turn that blocks until an event. */
static int run_busy(qrpc_loop *loop) {
  loop->stop = 0;
  uint64_t seen = loop->activity, idle_since = qrpci_now_ns();
  for (;;) {
    int rv = event_base_loop(loop->base, EVLOOP_NONBLOCK);
    if (rv < 0) return QRPC_ESYSTEM;
    if (rv == 1 || loop->stop || event_base_got_break(loop->base)) return 0;
    uint64_t now = qrpci_now_ns();
    if (loop->activity != seen) {
      seen = loop->activity;
      idle_since = now;
    } else if (now - idle_since >= loop->busy_poll_ns) {
      rv = event_base_loop(loop->base, EVLOOP_ONCE);
      if (rv < 0) return QRPC_ESYSTEM;
      if (rv == 1 || loop->stop || event_base_got_break(loop->base)) return 0;
      seen = loop->activity;
      idle_since = qrpci_now_ns();
    }
  }
}

static int run(qrpc_loop *loop) {
  if (loop->busy_poll_ns) return run_busy(loop);
  return event_base_dispatch(loop->base) < 0 ? QRPC_ESYSTEM : 0;
}

int qrpc_loop_run(qrpc_loop *loop) { return run(loop); }

static void run_for_expired(evutil_socket_t fd, short what, void *arg) {
  qrpc_loop_stop(arg);
}

int qrpc_loop_run_for(qrpc_loop *loop, uint64_t timeout_ms) {
  /* A timer of our own rather than event_base_loopexit(), whose pending
   * exit would cut short a later run if this one ends early. */
  struct event *t = evtimer_new(loop->base, run_for_expired, loop);
  if (!t) return QRPC_ENOMEM;
  struct timeval tv = qrpci_ns_to_tv(timeout_ms * QRPCI_NS_PER_MS);
  evtimer_add(t, &tv);
  int rv = run(loop);
  event_free(t);
  return rv;
}

void qrpc_loop_stop(qrpc_loop *loop) {
  loop->stop = 1;
  event_base_loopbreak(loop->base);
}

int qrpc_loop_post(qrpc_loop *loop, qrpc_loop_fn fn, void *arg) {
  if (!loop || !fn) return QRPC_EINVAL;
  qrpci_post *p = malloc(sizeof(*p));
  if (!p) return QRPC_ENOMEM;
  p->fn = fn;
  p->arg = arg;
  p->next = NULL;
  pthread_mutex_lock(&loop->post_mu);
  int was_empty = loop->post_head == NULL;
  if (loop->post_tail)
    loop->post_tail->next = p;
  else
    loop->post_head = p;
  loop->post_tail = p;
  pthread_mutex_unlock(&loop->post_mu);
  /* Thread-safe with libevent's locking on; it wakes the loop. */
  if (was_empty) event_active(loop->post_ev, 0, 0);
  return 0;
}

struct evdns_base *qrpci_loop_dns(qrpc_loop *loop) {
  if (!loop->dns) {
    loop->dns = evdns_base_new(loop->base, EVDNS_BASE_INITIALIZE_NAMESERVERS |
                                               EVDNS_BASE_DISABLE_WHEN_INACTIVE);
    if (!loop->dns) QRPCI_ERROR("loop: cannot create the DNS resolver");
  }
  return loop->dns;
}

static void free_retired_dns(qrpc_loop *loop) {
  for (size_t i = 0; i < loop->nretired_dns; i++)
    evdns_base_free(loop->retired_dns[i], 0);
  free(loop->retired_dns);
  loop->retired_dns = NULL;
  loop->nretired_dns = 0;
}

static void retire_cb(evutil_socket_t fd, short what, void *arg) {
  free_retired_dns(arg);
}

void qrpci_loop_retire_dns(qrpc_loop *loop, struct evdns_base *dns) {
  struct evdns_base **v =
      realloc(loop->retired_dns, (loop->nretired_dns + 1) * sizeof(*v));
  if (!loop->retire_ev)
    loop->retire_ev = evtimer_new(loop->base, retire_cb, loop);
  if (!v || !loop->retire_ev) {
    /* Better a resolver kept than one freed under libevent's feet. */
    if (v) loop->retired_dns = v;
    QRPCI_WARN("loop: no memory to free a DNS resolver; it is kept");
    return;
  }
  loop->retired_dns = v;
  loop->retired_dns[loop->nretired_dns++] = dns;
  /* A timer, not an activation: the cancellation's callbacks, scheduled
   * already, run first on the next turn. */
  struct timeval tv = {0, 0};
  evtimer_add(loop->retire_ev, &tv);
}

void qrpci_loop_add_conn(qrpc_loop *loop, qrpc_conn *c) {
  qrpci_list_push_back(&loop->conns, &c->loop_node);
  loop->nconns++;
}

void qrpci_loop_remove_conn(qrpc_loop *loop, qrpc_conn *c) {
  qrpci_list_remove(&c->loop_node);
  if (qrpci_list_linked(&c->dirty_node)) qrpci_list_remove(&c->dirty_node);
  loop->nconns--;
}

size_t qrpci_loop_conn_count(qrpc_loop *loop) { return loop->nconns; }

void qrpc_loop_free(qrpc_loop *loop) {
  if (!loop) return;
  while (!qrpci_list_empty(&loop->conns)) {
    qrpci_conn_discard(
        QRPCI_CONTAINER_OF(loop->conns.next, qrpc_conn, loop_node), NULL);
  }
  qrpci_loop_free_timers(loop);
  qrpci_loop_free_chunks(loop);
  if (loop->dns) evdns_base_free(loop->dns, 1);
  free_retired_dns(loop);
  if (loop->retire_ev) event_free(loop->retire_ev);
  qrpci_post *p = loop->post_head;
  while (p) {
    qrpci_post *next = p->next;
    free(p);
    p = next;
  }
  if (loop->post_ev) event_free(loop->post_ev);
  if (loop->flush_ev) event_free(loop->flush_ev);
  if (loop->nudge_ev) event_free(loop->nudge_ev);
  if (loop->own_base && loop->base) event_base_free(loop->base);
  pthread_mutex_destroy(&loop->post_mu);
  free(loop->txbuf);
  free(loop->rxbufs);
  free(loop);
}
