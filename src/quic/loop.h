/*
 * The loop behind qrpc_loop (loop.c): the libevent base, the connections
 * it holds, the flush of dirty connections once per turn, cross-thread
 * posts. Internal; not installed.
 */
#ifndef QRPCI_QUIC_LOOP_H
#define QRPCI_QUIC_LOOP_H

#include <pthread.h>

#include "quic/internal.h"
#include "quic/udp.h"

struct evdns_base;
typedef struct qrpci_post qrpci_post;

struct qrpc_loop {
  struct event_base *base;
  int own_base;
  struct event *flush_ev;   /* activated when a connection has work */
  int flushing;             /* inside flush_cb: its end sends the txqs */
  qrpci_list dirty;         /* connections to flush this turn */
  qrpci_list conns;         /* every connection the loop holds */
  size_t nconns;
  struct evdns_base *dns;   /* created on the first name lookup */
  struct evdns_base **retired_dns; /* freed on a later turn */
  size_t nretired_dns;
  struct event *retire_ev;
  struct event *post_ev;    /* activated by qrpc_loop_post() */
  pthread_mutex_t post_mu;
  qrpci_post *post_head, *post_tail;
  uint8_t *txbuf;           /* packets of one flush, for GSO batching */
  uint8_t (*rxbufs)[QRPCI_MAX_UDP]; /* one recvmmsg batch */
  size_t txcap;             /* a GSO batch plus one packet being written */
  qrpci_list txq_socks;     /* sockets with packets queued for sendmmsg */
  qrpci_list timers;        /* qrpc_timer objects, freed with the loop */
  qrpci_list signals;       /* qrpc_signal watches, freed with the loop */
  uint64_t busy_poll_ns;    /* qrpc_loop_set_busy_poll(); 0: off */
  uint64_t activity;        /* grows with every flush and post (every
                               packet read for a connection makes one) */
  int stop;                 /* qrpc_loop_stop() during a busy-polled run */
  struct qrpci_chunk *chunks; /* free send-buffer chunks (stream.c) */
  size_t nchunks;
  struct event *nudge_ev;   /* a wake-up at a pacing time (conn.c) */
  uint64_t nudge_at;        /* when nudge_ev is due; UINT64_MAX: not armed */
};

/* c is written at the end of this loop turn: it has something to send. */
void qrpci_loop_mark_dirty(qrpc_loop *loop, qrpc_conn *c);
/* c read a packet (or gave credit for what it read): it is written at the
 * end of the turn unless only an acknowledgement is due, which may wait
 * (qrpci_conn_ack_can_wait). Loop thread, as the one above. */
void qrpci_loop_mark_read(qrpc_loop *loop, qrpc_conn *c);
/* Frees the loop's cache of send-buffer chunks (stream.c). */
void qrpci_loop_free_chunks(qrpc_loop *loop);
/* Wakes the loop at ts (a qrpci_now_ns() time; now is a recent one) for a
 * turn that does nothing of its own, unless a wake-up at or before ts is
 * already due. Loop thread. */
void qrpci_loop_nudge(qrpc_loop *loop, uint64_t ts, uint64_t now);
struct evdns_base *qrpci_loop_dns(qrpc_loop *loop);
/* Frees dns on a later turn of the loop (or with the loop): for a
 * resolver whose lookup was just cancelled, since libevent still calls
 * into it from the loop to report the cancellation. Loop thread. */
void qrpci_loop_retire_dns(qrpc_loop *loop, struct evdns_base *dns);
void qrpci_loop_add_conn(qrpc_loop *loop, qrpc_conn *c);
void qrpci_loop_remove_conn(qrpc_loop *loop, qrpc_conn *c);
/* Frees the timers and signal watches the user left on the loop (timer.c). */
void qrpci_loop_free_timers(qrpc_loop *loop);

#endif
