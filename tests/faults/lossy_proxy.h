/*
 * A lossy UDP proxy for fault-injection tests: clients send to the
 * proxy's port, the proxy forwards to one upstream address (a qrpc server)
 * and back, and on the way it drops, duplicates, delays and reorders
 * packets, or blacks a direction out completely for a while.
 *
 * Each client address gets its own upstream socket (a flow), so the server
 * sees one address per client, as behind a NAT, and qt_proxy_rebind()
 * moves a flow to a new one, as a NAT rebinding does. Everything is decided
 * by a seeded random generator, so a failing run can be repeated with its
 * seed.
 *
 * The proxy runs on a libevent event_base: the test's own loop
 * (qt_proxy_new() with qrpc_loop_base(loop)), or a thread of its own
 * (qt_proxy_start_thread()). The setters and getters below are safe to
 * call from any thread in both modes; the tap runs on the proxy's thread.
 */
#ifndef QT_LOSSY_PROXY_H
#define QT_LOSSY_PROXY_H

#include <stddef.h>
#include <stdint.h>

struct event_base;
typedef struct qt_proxy qt_proxy;

/* Directions. */
typedef enum qt_dir {
  QT_UP = 0,   /* client to server */
  QT_DOWN = 1, /* server to client */
} qt_dir;

#define QT_BOTH_DIRS 3 /* mask for qt_proxy_blackout(): 1 << dir */

/* What happens to packets in one direction. Probabilities are 0..1. */
typedef struct qt_link_conf {
  double loss;      /* a packet is dropped */
  double duplicate; /* a packet is sent twice (the copy after a jitter) */
  double reorder;   /* a packet is held back reorder_ms, so later ones
                       overtake it */
  uint32_t reorder_ms;
  uint32_t delay_ms;  /* added to every packet */
  uint32_t jitter_ms; /* plus a uniform 0..jitter_ms; can reorder too */
} qt_link_conf;

typedef struct qt_link_stats {
  uint64_t packets; /* arrived at the proxy */
  uint64_t bytes;
  uint64_t dropped;     /* by the loss probability or the tap */
  uint64_t blacked_out; /* dropped during a blackout */
  uint64_t duplicated;
  uint64_t reordered;
  uint64_t delayed;     /* went through the delay queue */
  uint64_t injected;    /* sent by qt_proxy_inject() */
  uint64_t delivered;   /* sent on (copies and injections included) */
  uint64_t send_errors; /* the kernel refused a send (acts as loss) */
  uint64_t unmapped;    /* QT_DOWN: arrived on a mapping qt_proxy_rebind()
                           retired, and dropped (not in packets) */
} qt_link_stats;

/* Sees every packet that arrives, before loss and delay. It may change
 * the packet in place (*len up to cap) and returns 1 to drop it, 0 to let
 * it go on. flow numbers clients in order of first appearance, from 0.
 * Runs on the proxy's thread; may call qt_proxy_inject(). */
typedef int (*qt_proxy_tap_fn)(qt_proxy *p, qt_dir dir, size_t flow,
                               uint8_t *pkt, size_t *len, size_t cap,
                               void *user_data);

/* Creates a proxy on base listening on 127.0.0.1 (port chosen by the
 * system) and forwarding to upstream ("127.0.0.1:4433", "[::1]:4433").
 * Returns 0, or -1 with errno set. */
int qt_proxy_new(struct event_base *base, const char *upstream, uint64_t seed,
                 qt_proxy **out);

/* The same on a thread of its own, with its own event_base. */
int qt_proxy_start_thread(const char *upstream, uint64_t seed, qt_proxy **out);

/* Stops the thread if it has one, closes every socket and frees the
 * proxy; packets still in the delay queue are dropped. NULL is ignored.
 * Not from inside the tap. */
void qt_proxy_free(qt_proxy *p);

uint16_t qt_proxy_port(qt_proxy *p);
/* "127.0.0.1:PORT": where clients connect. Borrowed. */
const char *qt_proxy_addr(qt_proxy *p);

void qt_proxy_set(qt_proxy *p, qt_dir dir, const qt_link_conf *conf);
/* The same conf in both directions. */
void qt_proxy_set_both(qt_proxy *p, const qt_link_conf *conf);

/* Drops everything in the directions of dir_mask (1 << QT_UP,
 * 1 << QT_DOWN, or QT_BOTH_DIRS) for the next ms milliseconds; 0 ends a
 * blackout now. */
void qt_proxy_blackout(qt_proxy *p, unsigned dir_mask, uint32_t ms);

void qt_proxy_set_tap(qt_proxy *p, qt_proxy_tap_fn fn, void *user_data);

/* Sends len bytes on flow in direction dir now, as if the client (QT_UP)
 * or the server (QT_DOWN) had sent them, without loss or delay. Returns 0,
 * or -1 if there is no such flow or the send failed. */
int qt_proxy_inject(qt_proxy *p, qt_dir dir, size_t flow, const void *data,
                    size_t len);

/* A NAT rebinding: gives flow a new upstream socket, so from now on the
 * server sees the client's packets, delayed ones included, come from a
 * new port. Like a NAT whose mapping changed, the proxy forgets the old
 * one at once: what the server sends to the old port is dropped silently
 * (counted in QT_DOWN's unmapped), never forwarded and never answered
 * with ICMP, so the server learns the new address only from the client's
 * next packet. Returns 0, or -1 if there is no such flow or no socket. */
int qt_proxy_rebind(qt_proxy *p, size_t flow);

/* The local port of flow's current upstream socket: the client's port as
 * the server sees it. 0 if there is no such flow. */
uint16_t qt_proxy_flow_port(qt_proxy *p, size_t flow);

void qt_proxy_get_stats(qt_proxy *p, qt_dir dir, qt_link_stats *st);
/* Flows (distinct client addresses) seen so far. */
size_t qt_proxy_flows(qt_proxy *p);

/* Parses "loss=5,dup=1,reorder=10:20,delay=2,jitter=3" (percentages;
 * reorder takes an optional hold time in ms after a colon) into conf,
 * starting from all zeros. Returns 0, or -1 naming nothing (the caller
 * reports the whole string). */
int qt_link_conf_parse(const char *spec, qt_link_conf *conf);

#endif
