#include "lossy_proxy.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <event2/thread.h>

/* Largest UDP payload carried; QUIC packets are far smaller. */
#define PKT_MAX 65536
/* Client addresses tracked at once; more are dropped (and counted). */
#define FLOWS_MAX 1024
/* Packets read per readiness callback, so one busy socket cannot starve
 * the loop it shares with the code under test. */
#define READ_BATCH 256
/* Kernel buffers: deep enough that the proxy itself loses nothing under a
 * burst (raised as far as the system maximum allows). */
#define SOCK_BUF (4 << 20)

/* One upstream socket, connected to the server. A rebinding retires it:
 * it stays open (the kernel would otherwise answer the server with ICMP
 * port unreachable, which a NAT does not send) and what arrives on it is
 * dropped, until the proxy is freed. */
typedef struct upstream_sock {
  struct proxy_flow *f;
  int fd;
  struct event *ev;
  int retired;
  struct upstream_sock *next_retired;
} upstream_sock;

typedef struct proxy_flow {
  qt_proxy *p;
  size_t index;
  struct sockaddr_storage client;
  socklen_t client_len;
  upstream_sock *up;      /* the current mapping */
  upstream_sock *retired; /* earlier mappings, newest first */
} proxy_flow;

/* A packet waiting in the delay queue. */
typedef struct held {
  uint64_t due_ns;
  uint64_t order; /* tie-break: equal due times leave in arrival order */
  size_t flow;
  qt_dir dir;
  size_t len;
  uint8_t data[];
} held;

struct qt_proxy {
  struct event_base *base;
  int own_base;
  pthread_t thread;
  int has_thread;
  pthread_mutex_t mu;

  int fd; /* front socket, where clients send */
  struct event *front_ev;
  uint16_t port;
  char addr[64];
  struct sockaddr_storage upstream;
  socklen_t upstream_len;

  proxy_flow *flows[FLOWS_MAX];
  size_t nflows;
  uint64_t flows_refused;

  qt_link_conf conf[2];
  uint64_t blackout_until_ns[2];
  qt_link_stats stats[2];
  qt_proxy_tap_fn tap;
  void *tap_ud;
  uint64_t rng;

  held **heap; /* min-heap on (due_ns, order) */
  size_t nheld, capheld;
  uint64_t order;
  struct event *timer;
  uint8_t buf[PKT_MAX];
};

static uint64_t now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* xorshift64*: small, fast, and reproducible from the seed. */
static uint64_t rnd(qt_proxy *p) {
  p->rng ^= p->rng >> 12;
  p->rng ^= p->rng << 25;
  p->rng ^= p->rng >> 27;
  return p->rng * UINT64_C(2685821657736338717);
}

static double rnd_unit(qt_proxy *p) {
  return (double)(rnd(p) >> 11) / (double)(UINT64_C(1) << 53);
}

static int chance(qt_proxy *p, double prob) {
  return prob > 0 && rnd_unit(p) < prob;
}

/* ---- Sockets ------------------------------------------------------------ */

static int udp_socket(int family) {
  int fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (fd < 0) return -1;
  int size = SOCK_BUF;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
  setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
  return fd;
}

static int parse_addr(const char *s, struct sockaddr_storage *ss,
                      socklen_t *len) {
  char host[256];
  const char *colon = strrchr(s, ':');
  if (!colon || (size_t)(colon - s) >= sizeof(host)) {
    errno = EINVAL;
    return -1;
  }
  memcpy(host, s, (size_t)(colon - s));
  host[colon - s] = '\0';
  char *h = host;
  size_t hl = strlen(h);
  if (hl >= 2 && h[0] == '[' && h[hl - 1] == ']') {
    h[hl - 1] = '\0';
    h++;
  }
  struct addrinfo hints, *res = NULL;
  memset(&hints, 0, sizeof(hints));
  hints.ai_socktype = SOCK_DGRAM;
  hints.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV;
  if (getaddrinfo(h, colon + 1, &hints, &res) != 0 || !res) {
    errno = EINVAL;
    return -1;
  }
  memcpy(ss, res->ai_addr, res->ai_addrlen);
  *len = (socklen_t)res->ai_addrlen;
  freeaddrinfo(res);
  return 0;
}

/* ---- Sending --------------------------------------------------------------
 */

/* Sends now; caller holds the lock. */
static void send_now(qt_proxy *p, qt_dir dir, size_t fi, const uint8_t *data,
                     size_t len) {
  proxy_flow *f = fi < p->nflows ? p->flows[fi] : NULL;
  ssize_t rv;
  if (!f) return;
  if (dir == QT_UP)
    rv = send(f->up->fd, data, len, 0);
  else
    rv = sendto(p->fd, data, len, 0, (struct sockaddr *)&f->client,
                f->client_len);
  if (rv < 0)
    p->stats[dir].send_errors++;
  else
    p->stats[dir].delivered++;
}

static int held_before(const held *a, const held *b) {
  return a->due_ns < b->due_ns ||
         (a->due_ns == b->due_ns && a->order < b->order);
}

static void arm_timer(qt_proxy *p) {
  if (p->nheld == 0) {
    evtimer_del(p->timer);
    return;
  }
  uint64_t now = now_ns(), due = p->heap[0]->due_ns;
  uint64_t wait = due > now ? due - now : 0;
  struct timeval tv = {(time_t)(wait / 1000000000u),
                       (suseconds_t)((wait % 1000000000u) / 1000u)};
  evtimer_add(p->timer, &tv);
}

static void heap_push(qt_proxy *p, held *h) {
  if (p->nheld == p->capheld) {
    size_t cap = p->capheld ? p->capheld * 2 : 256;
    held **nh = realloc(p->heap, cap * sizeof(*nh));
    if (!nh) {
      p->stats[h->dir].send_errors++;
      free(h);
      return;
    }
    p->heap = nh;
    p->capheld = cap;
  }
  size_t i = p->nheld++;
  while (i > 0) {
    size_t parent = (i - 1) / 2;
    if (!held_before(h, p->heap[parent])) break;
    p->heap[i] = p->heap[parent];
    i = parent;
  }
  p->heap[i] = h;
}

static held *heap_pop(qt_proxy *p) {
  held *top = p->heap[0], *last = p->heap[--p->nheld];
  size_t i = 0;
  for (;;) {
    size_t c = 2 * i + 1;
    if (c >= p->nheld) break;
    if (c + 1 < p->nheld && held_before(p->heap[c + 1], p->heap[c])) c++;
    if (!held_before(p->heap[c], last)) break;
    p->heap[i] = p->heap[c];
    i = c;
  }
  if (p->nheld > 0) p->heap[i] = last;
  return top;
}

static void send_later(qt_proxy *p, qt_dir dir, size_t fi, const uint8_t *data,
                       size_t len, uint64_t delay_ns) {
  held *h = malloc(sizeof(*h) + len);
  if (!h) {
    p->stats[dir].send_errors++;
    return;
  }
  h->due_ns = now_ns() + delay_ns;
  h->order = p->order++;
  h->flow = fi;
  h->dir = dir;
  h->len = len;
  memcpy(h->data, data, len);
  p->stats[dir].delayed++;
  heap_push(p, h);
  arm_timer(p);
}

static void timer_cb(evutil_socket_t fd, short what, void *arg) {
  (void)fd;
  (void)what;
  qt_proxy *p = arg;
  pthread_mutex_lock(&p->mu);
  uint64_t now = now_ns();
  while (p->nheld > 0 && p->heap[0]->due_ns <= now) {
    held *h = heap_pop(p);
    /* A blackout also swallows what was already on its way. */
    if (now < p->blackout_until_ns[h->dir])
      p->stats[h->dir].blacked_out++;
    else
      send_now(p, h->dir, h->flow, h->data, h->len);
    free(h);
  }
  arm_timer(p);
  pthread_mutex_unlock(&p->mu);
}

static uint64_t ms_ns(uint32_t ms) { return (uint64_t)ms * 1000000u; }

/* Applies the direction's faults to one packet; caller holds the lock. */
static void forward(qt_proxy *p, qt_dir dir, size_t fi, uint8_t *data,
                    size_t len) {
  qt_link_stats *st = &p->stats[dir];
  const qt_link_conf *c = &p->conf[dir];
  st->packets++;
  st->bytes += len;
  if (p->tap) {
    size_t n = len;
    /* The tap may inject, which takes the lock again. */
    qt_proxy_tap_fn tap = p->tap;
    void *ud = p->tap_ud;
    pthread_mutex_unlock(&p->mu);
    int drop = tap(p, dir, fi, data, &n, PKT_MAX, ud);
    pthread_mutex_lock(&p->mu);
    if (drop) {
      st->dropped++;
      return;
    }
    len = n > PKT_MAX ? PKT_MAX : n;
  }
  if (now_ns() < p->blackout_until_ns[dir]) {
    st->blacked_out++;
    return;
  }
  if (chance(p, c->loss)) {
    st->dropped++;
    return;
  }
  int copies = chance(p, c->duplicate) ? 2 : 1;
  if (copies == 2) st->duplicated++;
  for (int i = 0; i < copies; i++) {
    uint64_t delay = ms_ns(c->delay_ms);
    if (c->jitter_ms) delay += rnd(p) % (ms_ns(c->jitter_ms) + 1);
    if (i == 1) delay += rnd(p) % (ms_ns(c->jitter_ms) + ms_ns(1));
    if (chance(p, c->reorder)) {
      st->reordered++;
      delay += ms_ns(c->reorder_ms);
    }
    if (delay == 0)
      send_now(p, dir, fi, data, len);
    else
      send_later(p, dir, fi, data, len, delay);
  }
}

/* ---- Receiving ------------------------------------------------------------
 */

static int same_addr(const struct sockaddr_storage *a, socklen_t alen,
                     const struct sockaddr_storage *b, socklen_t blen) {
  return alen == blen && memcmp(a, b, alen) == 0;
}

static void upstream_cb(evutil_socket_t fd, short what, void *arg);

static void upstream_close(upstream_sock *u) {
  if (u->ev) event_free(u->ev);
  if (u->fd >= 0) close(u->fd);
  free(u);
}

/* A new socket connected to the upstream, on a port of its own, read on
 * the proxy's base. Caller holds the lock (or owns the proxy alone). */
static upstream_sock *upstream_open(proxy_flow *f) {
  qt_proxy *p = f->p;
  upstream_sock *u = calloc(1, sizeof(*u));
  if (!u) return NULL;
  u->f = f;
  u->fd = udp_socket(p->upstream.ss_family);
  if (u->fd < 0 ||
      connect(u->fd, (struct sockaddr *)&p->upstream, p->upstream_len) != 0) {
    upstream_close(u);
    return NULL;
  }
  u->ev = event_new(p->base, u->fd, EV_READ | EV_PERSIST, upstream_cb, u);
  if (!u->ev || event_add(u->ev, NULL) != 0) {
    upstream_close(u);
    return NULL;
  }
  return u;
}

static proxy_flow *flow_for(qt_proxy *p, const struct sockaddr_storage *from,
                            socklen_t fromlen) {
  for (size_t i = 0; i < p->nflows; i++)
    if (same_addr(&p->flows[i]->client, p->flows[i]->client_len, from, fromlen))
      return p->flows[i];
  if (p->nflows == FLOWS_MAX) {
    p->flows_refused++;
    return NULL;
  }
  proxy_flow *f = calloc(1, sizeof(*f));
  if (!f) return NULL;
  f->p = p;
  f->index = p->nflows;
  memcpy(&f->client, from, fromlen);
  f->client_len = fromlen;
  if (!(f->up = upstream_open(f))) {
    free(f);
    return NULL;
  }
  p->flows[p->nflows++] = f;
  return f;
}

static void front_cb(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  qt_proxy *p = arg;
  pthread_mutex_lock(&p->mu);
  for (int i = 0; i < READ_BATCH; i++) {
    struct sockaddr_storage from;
    socklen_t fromlen = sizeof(from);
    ssize_t n = recvfrom(fd, p->buf, sizeof(p->buf), 0,
                         (struct sockaddr *)&from, &fromlen);
    if (n < 0) break;
    proxy_flow *f = flow_for(p, &from, fromlen);
    if (f) forward(p, QT_UP, f->index, p->buf, (size_t)n);
  }
  pthread_mutex_unlock(&p->mu);
}

static void upstream_cb(evutil_socket_t fd, short what, void *arg) {
  (void)what;
  upstream_sock *u = arg;
  qt_proxy *p = u->f->p;
  pthread_mutex_lock(&p->mu);
  for (int i = 0; i < READ_BATCH; i++) {
    ssize_t n = recv(fd, p->buf, sizeof(p->buf), 0);
    if (n < 0) break;
    if (u->retired)
      p->stats[QT_DOWN].unmapped++;
    else
      forward(p, QT_DOWN, u->f->index, p->buf, (size_t)n);
  }
  pthread_mutex_unlock(&p->mu);
}

/* ---- Lifetime -------------------------------------------------------------
 */

static int setup(qt_proxy *p, const char *upstream, uint64_t seed) {
  pthread_mutex_init(&p->mu, NULL);
  p->fd = -1;
  p->rng = seed ? seed : 1;
  if (parse_addr(upstream, &p->upstream, &p->upstream_len) != 0) return -1;
  struct sockaddr_in sin;
  memset(&sin, 0, sizeof(sin));
  sin.sin_family = AF_INET;
  sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t sl = sizeof(sin);
  p->fd = udp_socket(AF_INET);
  if (p->fd < 0 || bind(p->fd, (struct sockaddr *)&sin, sizeof(sin)) != 0 ||
      getsockname(p->fd, (struct sockaddr *)&sin, &sl) != 0)
    return -1;
  p->port = ntohs(sin.sin_port);
  snprintf(p->addr, sizeof(p->addr), "127.0.0.1:%u", (unsigned)p->port);
  p->front_ev = event_new(p->base, p->fd, EV_READ | EV_PERSIST, front_cb, p);
  p->timer = evtimer_new(p->base, timer_cb, p);
  if (!p->front_ev || !p->timer || event_add(p->front_ev, NULL) != 0) {
    errno = ENOMEM;
    return -1;
  }
  return 0;
}

int qt_proxy_new(struct event_base *base, const char *upstream, uint64_t seed,
                 qt_proxy **out) {
  qt_proxy *p = calloc(1, sizeof(*p));
  if (!p) return -1;
  p->base = base;
  if (setup(p, upstream, seed) != 0) {
    int e = errno;
    qt_proxy_free(p);
    errno = e;
    return -1;
  }
  *out = p;
  return 0;
}

static void *thread_main(void *arg) {
  qt_proxy *p = arg;
  event_base_loop(p->base, EVLOOP_NO_EXIT_ON_EMPTY);
  return NULL;
}

int qt_proxy_start_thread(const char *upstream, uint64_t seed, qt_proxy **out) {
  /* Breaking a loop from another thread needs libevent's locking. */
  evthread_use_pthreads();
  struct event_base *base = event_base_new();
  if (!base) return -1;
  qt_proxy *p;
  if (qt_proxy_new(base, upstream, seed, &p) != 0) {
    int e = errno;
    event_base_free(base);
    errno = e;
    return -1;
  }
  p->own_base = 1;
  if (pthread_create(&p->thread, NULL, thread_main, p) != 0) {
    qt_proxy_free(p);
    errno = EAGAIN;
    return -1;
  }
  p->has_thread = 1;
  *out = p;
  return 0;
}

void qt_proxy_free(qt_proxy *p) {
  if (!p) return;
  if (p->has_thread) {
    event_base_loopbreak(p->base);
    pthread_join(p->thread, NULL);
  }
  for (size_t i = 0; i < p->nflows; i++) {
    proxy_flow *f = p->flows[i];
    upstream_close(f->up);
    while (f->retired) {
      upstream_sock *next = f->retired->next_retired;
      upstream_close(f->retired);
      f->retired = next;
    }
    free(f);
  }
  while (p->nheld > 0) free(heap_pop(p));
  free(p->heap);
  if (p->timer) event_free(p->timer);
  if (p->front_ev) event_free(p->front_ev);
  if (p->fd >= 0) close(p->fd);
  if (p->own_base) event_base_free(p->base);
  pthread_mutex_destroy(&p->mu);
  free(p);
}

/* ---- Settings -------------------------------------------------------------
 */

uint16_t qt_proxy_port(qt_proxy *p) { return p->port; }
const char *qt_proxy_addr(qt_proxy *p) { return p->addr; }

void qt_proxy_set(qt_proxy *p, qt_dir dir, const qt_link_conf *conf) {
  pthread_mutex_lock(&p->mu);
  p->conf[dir] = *conf;
  pthread_mutex_unlock(&p->mu);
}

void qt_proxy_set_both(qt_proxy *p, const qt_link_conf *conf) {
  qt_proxy_set(p, QT_UP, conf);
  qt_proxy_set(p, QT_DOWN, conf);
}

void qt_proxy_blackout(qt_proxy *p, unsigned dir_mask, uint32_t ms) {
  pthread_mutex_lock(&p->mu);
  uint64_t until = ms ? now_ns() + ms_ns(ms) : 0;
  for (int d = 0; d < 2; d++)
    if (dir_mask & (1u << d)) p->blackout_until_ns[d] = until;
  pthread_mutex_unlock(&p->mu);
}

void qt_proxy_set_tap(qt_proxy *p, qt_proxy_tap_fn fn, void *user_data) {
  pthread_mutex_lock(&p->mu);
  p->tap = fn;
  p->tap_ud = user_data;
  pthread_mutex_unlock(&p->mu);
}

int qt_proxy_inject(qt_proxy *p, qt_dir dir, size_t flow, const void *data,
                    size_t len) {
  pthread_mutex_lock(&p->mu);
  int ok = flow < p->nflows;
  if (ok) {
    uint64_t before = p->stats[dir].delivered;
    p->stats[dir].injected++;
    send_now(p, dir, flow, data, len);
    ok = p->stats[dir].delivered > before;
  }
  pthread_mutex_unlock(&p->mu);
  return ok ? 0 : -1;
}

int qt_proxy_rebind(qt_proxy *p, size_t flow) {
  pthread_mutex_lock(&p->mu);
  proxy_flow *f = flow < p->nflows ? p->flows[flow] : NULL;
  upstream_sock *u = f ? upstream_open(f) : NULL;
  if (u) {
    /* The old socket's event stays registered: freeing it here could wait
     * for its callback, which waits for this lock. */
    f->up->retired = 1;
    f->up->next_retired = f->retired;
    f->retired = f->up;
    f->up = u;
  }
  pthread_mutex_unlock(&p->mu);
  return u ? 0 : -1;
}

uint16_t qt_proxy_flow_port(qt_proxy *p, size_t flow) {
  struct sockaddr_storage ss;
  socklen_t len = sizeof(ss);
  uint16_t port = 0;
  pthread_mutex_lock(&p->mu);
  if (flow < p->nflows &&
      getsockname(p->flows[flow]->up->fd, (struct sockaddr *)&ss, &len) == 0) {
    if (ss.ss_family == AF_INET)
      port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
    else if (ss.ss_family == AF_INET6)
      port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
  }
  pthread_mutex_unlock(&p->mu);
  return port;
}

void qt_proxy_get_stats(qt_proxy *p, qt_dir dir, qt_link_stats *st) {
  pthread_mutex_lock(&p->mu);
  *st = p->stats[dir];
  pthread_mutex_unlock(&p->mu);
}

size_t qt_proxy_flows(qt_proxy *p) {
  pthread_mutex_lock(&p->mu);
  size_t n = p->nflows;
  pthread_mutex_unlock(&p->mu);
  return n;
}

/* ---- Text form ------------------------------------------------------------
 */

int qt_link_conf_parse(const char *spec, qt_link_conf *conf) {
  memset(conf, 0, sizeof(*conf));
  char *copy = strdup(spec), *save = NULL;
  if (!copy) return -1;
  int rv = 0;
  for (char *tok = strtok_r(copy, ",", &save); tok && rv == 0;
       tok = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(tok, '=');
    char *end;
    if (!eq) {
      rv = -1;
      break;
    }
    *eq = '\0';
    double v = strtod(eq + 1, &end);
    unsigned long ms = 0;
    if (*end == ':' && strcmp(tok, "reorder") == 0)
      ms = strtoul(end + 1, &end, 10);
    if (*end != '\0' || v < 0) {
      rv = -1;
    } else if (strcmp(tok, "loss") == 0 && v <= 100) {
      conf->loss = v / 100;
    } else if (strcmp(tok, "dup") == 0 && v <= 100) {
      conf->duplicate = v / 100;
    } else if (strcmp(tok, "reorder") == 0 && v <= 100) {
      conf->reorder = v / 100;
      conf->reorder_ms = (uint32_t)(ms ? ms : 10);
    } else if (strcmp(tok, "delay") == 0) {
      conf->delay_ms = (uint32_t)v;
    } else if (strcmp(tok, "jitter") == 0) {
      conf->jitter_ms = (uint32_t)v;
    } else {
      rv = -1;
    }
  }
  free(copy);
  return rv;
}
