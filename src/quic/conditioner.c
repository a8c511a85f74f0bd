/*
 * The link conditioner (conditioner.h). Each packet draws, from the
 * connection's own generator: lost with probability loss_pct; else held
 * for delay_ms plus a uniform 0..jitter_ms, plus reorder_ms for a
 * reorder_pct share, so that packets sent after it overtake it. Held
 * packets wait in a list sorted by the time they are due, under one timer.
 * The first conditioner of the process says so in the log.
 */
#include "quic/conditioner.h"

#include <event2/event.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "util/clock.h"
#include "util/list.h"
#include "util/log.h"

typedef struct held_pkt {
  qrpci_list node;
  uint64_t due_ns;
  struct sockaddr_storage to;
  socklen_t tolen;
  size_t len;
  uint8_t data[];
} held_pkt;

struct qrpci_sim {
  qrpci_sock *sock;
  struct event *timer;
  qrpci_list held; /* by due_ns, earliest first */
  uint64_t rng;
  double loss, reorder; /* probabilities, 0..1 */
  uint64_t delay_ns, jitter_ns, reorder_ns;
  uint64_t dropped;
};

int qrpci_sim_wanted(const qrpc_conn_opts *o) {
  return o->sim_loss_pct > 0 || o->sim_reorder_pct > 0 || o->sim_delay_ms ||
         o->sim_jitter_ms;
}

/* xorshift64*: uniform in [0, 1). */
static double draw(qrpci_sim *s) {
  s->rng ^= s->rng >> 12;
  s->rng ^= s->rng << 25;
  s->rng ^= s->rng >> 27;
  return (double)((s->rng * 0x2545f4914f6cdd1dull) >> 11) * 0x1.0p-53;
}

static double probability(double pct) {
  return pct <= 0 ? 0 : pct >= 100 ? 1 : pct / 100;
}

static void arm(qrpci_sim *s, uint64_t now) {
  if (qrpci_list_empty(&s->held)) return;
  held_pkt *h = QRPCI_CONTAINER_OF(s->held.next, held_pkt, node);
  uint64_t wait = h->due_ns > now ? h->due_ns - now : 0;
  struct timeval tv = qrpci_ns_to_tv(wait);
  evtimer_add(s->timer, &tv);
}

static void send_due(qrpci_sim *s, uint64_t now) {
  while (!qrpci_list_empty(&s->held)) {
    held_pkt *h = QRPCI_CONTAINER_OF(s->held.next, held_pkt, node);
    if (h->due_ns > now) break;
    qrpci_list_remove(&h->node);
    qrpci_sock_send(s->sock, (const struct sockaddr *)&h->to, h->tolen,
                    h->data, h->len, 0);
    free(h);
  }
}

static void on_timer(evutil_socket_t fd, short what, void *arg) {
  qrpci_sim *s = arg;
  uint64_t now = qrpci_now_ns();
  send_due(s, now);
  arm(s, now);
}

qrpci_sim *qrpci_sim_new(struct event_base *base, qrpci_sock *sock,
                         const qrpc_conn_opts *o, const char *name) {
  qrpci_sim *s = calloc(1, sizeof(*s));
  if (!s) return NULL;
  if (!(s->timer = evtimer_new(base, on_timer, s))) {
    free(s);
    return NULL;
  }
  s->sock = sock;
  qrpci_list_init(&s->held);
  s->loss = probability(o->sim_loss_pct);
  s->reorder = probability(o->sim_reorder_pct);
  s->delay_ns = (uint64_t)o->sim_delay_ms * 1000000u;
  s->jitter_ns = (uint64_t)o->sim_jitter_ms * 1000000u;
  s->reorder_ns = (uint64_t)(o->sim_reorder_ms ? o->sim_reorder_ms : 10) *
                  1000000u;
  s->rng = o->sim_seed;
  while (s->rng == 0 && getrandom(&s->rng, sizeof(s->rng), 0) < 0) s->rng = 1;
  static atomic_int logged;
  if (atomic_exchange(&logged, 1) == 0)
    QRPCI_WARN("link conditioner ON for %s: %.1f%% loss, %u ms delay + up to "
             "%u ms jitter, %.1f%% reordered by %u ms more (development "
             "only: qrpc_conn_opts.sim_*)",
             name, o->sim_loss_pct, o->sim_delay_ms, o->sim_jitter_ms,
             o->sim_reorder_pct,
             (unsigned)(s->reorder_ns / 1000000u));
  return s;
}

static void take_one(qrpci_sim *s, const struct sockaddr *to, socklen_t tolen,
                     const uint8_t *data, size_t len, uint64_t now) {
  if (s->loss > 0 && draw(s) < s->loss) {
    s->dropped++;
    return;
  }
  uint64_t wait = s->delay_ns;
  if (s->jitter_ns) wait += (uint64_t)(draw(s) * (double)s->jitter_ns);
  if (s->reorder > 0 && draw(s) < s->reorder) wait += s->reorder_ns;
  if (wait == 0 && qrpci_list_empty(&s->held)) {
    qrpci_sock_send(s->sock, to, tolen, data, len, 0);
    return;
  }
  held_pkt *h = malloc(sizeof(*h) + len);
  if (!h || (size_t)tolen > sizeof(h->to)) {
    free(h);
    s->dropped++;
    return;
  }
  h->due_ns = now + wait;
  memcpy(&h->to, to, (size_t)tolen);
  h->tolen = tolen;
  h->len = len;
  memcpy(h->data, data, len);
  /* After every packet due no later: equal delays keep their order. */
  qrpci_list *at = s->held.prev;
  while (at != &s->held &&
         QRPCI_CONTAINER_OF(at, held_pkt, node)->due_ns > h->due_ns)
    at = at->prev;
  qrpci_list_push_back(at->next, &h->node); /* right after at */
}

void qrpci_sim_send(qrpci_sim *s, const struct sockaddr *to, socklen_t tolen,
                    const uint8_t *data, size_t len, size_t seg) {
  uint64_t now = qrpci_now_ns();
  size_t step = seg ? seg : len;
  for (size_t off = 0; off < len; off += step)
    take_one(s, to, tolen, data + off, len - off < step ? len - off : step,
             now);
  send_due(s, now);
  arm(s, now);
}

uint64_t qrpci_sim_dropped(const qrpci_sim *s) { return s ? s->dropped : 0; }

void qrpci_sim_free(qrpci_sim *s) {
  if (!s) return;
  send_due(s, UINT64_MAX);
  event_free(s->timer);
  free(s);
}
