/*
 * Datagram channels (docs/protocol.md section 4): unreliable messages for
 * realtime state, carried in QUIC datagrams as Channel, Seq, Payload.
 *
 * A channel is the method id of a (qrpc.datagram) method. Each side counts
 * its own Seq per channel, from 1, shared by all its connections, so one
 * encoding can go to many peers (qrpc_server_dgram_encode()). A datagram is
 * delivered at most once, possibly out of order, possibly not at all; a
 * receiver that asks for latest-only delivery never sees a Seq that is not
 * greater than the last one it accepted on that channel.
 *
 * Datagrams are congestion controlled but not flow controlled: each
 * connection queues what the congestion window cannot take yet, in a
 * bounded queue (qrpc_conn_opts.datagram_queue_len); a channel's max_age
 * drops, and counts, a datagram that waited longer than that, so stale
 * state is never sent late.
 *
 * Threading: loop thread only, like everything in qrpc.
 */
#ifndef QRPC_DGRAM_H
#define QRPC_DGRAM_H

#include <stddef.h>
#include <stdint.h>

#include "qrpc/rpc.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct qrpc_dgram_opts {
  size_t size;         /* sizeof(qrpc_dgram_opts), set by the default */
  int latest_only;     /* receiving: drop stale or duplicate Seq; default 0 */
  uint64_t max_age_ms; /* sending: drop what waited longer; 0 = no limit */
  /* Fragmented channels (docs/datagrams.md, "Large messages"): with
   * max_message > 0 a message of up to max_message bytes spans as many
   * datagrams as it needs, and the receiver hands it over only once every
   * fragment has arrived. Both sides must set it (the IDL option
   * (qrpc.max_message_bytes) does); 0 (the default) keeps one message per
   * datagram. At most QRPC_DGRAM_MAX_MESSAGE. */
  size_t max_message;
  /* Sending: the largest datagram a fragment takes, headers included;
   * 0 = QRPC_DGRAM_FRAGMENT_SIZE, which fits every path. */
  size_t fragment_size;
  /* Receiving: a partial message is dropped this long after its first
   * fragment arrived; 0 = 1000 ms. */
  uint64_t reassembly_ms;
  /* Receiving: bytes one connection may hold in partial messages of this
   * channel (each counts its length, plus a bitmap and a fixed overhead);
   * the oldest partial goes first. 0 = 4 * max_message plus overheads; at
   * least one message's worth. */
  size_t reassembly_bytes;
  /* Snapshot channels (docs/datagrams.md, "Snapshots"): with
   * snapshot_ring > 0 the channel carries a server's state tick by tick
   * (qrpc_server_snapshot_new()), each as the difference from the last
   * state that client acknowledged, and the client's function gets the
   * full state. Each side keeps the last snapshot_ring states (at most
   * QRPC_DGRAM_MAX_RING) as baselines. A snapshot channel is fragmented:
   * max_message 0 means 64 KiB. Both sides must set the same options (the
   * IDL options (qrpc.snapshot_ring) and (qrpc.snapshot_key) do). */
  size_t snapshot_ring;
  /* The field number of the state's repeated message field whose entries
   * are matched by key, so only the entries that changed travel; 0: none,
   * every top-level field is compared whole. */
  uint32_t snapshot_entities;
  /* The field number of the varint that keys an entry; 0 means 1. */
  uint32_t snapshot_key;
  /* Sending, with snapshot_ring > 1: how many peers one snapshot goes to
   * whole at most (peers without a baseline: new, or cut off for longer
   * than the ring); the others get QRPC_EAGAIN and a later tick. Whole
   * states are many times a delta's size: a crowd joining at once, or a
   * stall that cost many peers their baselines, is served a few a tick
   * instead of flooding every path at once. 0 means
   * QRPC_DGRAM_WHOLE_PER_TICK. */
  size_t snapshot_whole_per_tick;
} qrpc_dgram_opts;

/* The largest snapshot_ring. */
#define QRPC_DGRAM_MAX_RING 64
/* snapshot_whole_per_tick of a channel that does not set it. */
#define QRPC_DGRAM_WHOLE_PER_TICK 8
/* max_message of a snapshot channel that does not set it. */
#define QRPC_DGRAM_SNAPSHOT_MESSAGE (64u * 1024)

/* The default datagram size of a fragment: fits the smallest path QUIC
 * allows (1200-byte packets) whatever the connection ids' lengths. */
#define QRPC_DGRAM_FRAGMENT_SIZE 1140
/* The largest max_message a channel accepts. */
#define QRPC_DGRAM_MAX_MESSAGE (16u * 1024 * 1024)

void qrpc_dgram_opts_default(qrpc_dgram_opts *o);

/* A datagram arrived on a registered channel. payload is borrowed for the
 * duration of the call. On a snapshot channel, seq is the state's tick
 * and payload the whole state, rebuilt from its delta; ticks only move
 * forward. */
typedef void (*qrpc_dgram_fn)(qrpc_peer *peer, uint32_t channel, uint64_t seq,
                              const uint8_t *payload, size_t len,
                              void *user_data);

/* Configures channel on a server or client: opts (NULL for defaults) apply
 * to both directions, fn (may be NULL for a send-only channel) receives.
 * Re-registering replaces. Errors: QRPC_EINVAL, QRPC_ENOMEM. */
int qrpc_server_register_dgram(qrpc_server *srv, uint32_t channel,
                               const qrpc_dgram_opts *opts, qrpc_dgram_fn fn,
                               void *user_data);
int qrpc_client_register_dgram(qrpc_client *cli, uint32_t channel,
                               const qrpc_dgram_opts *opts, qrpc_dgram_fn fn,
                               void *user_data);

/* The largest payload sure to fit a datagram on channel to peer on the
 * current path (whatever its Seq), or 0 if the peer did not enable
 * datagrams, peer is NULL or its connection is closed. On a fragmented
 * channel: the channel's max_message while the peer takes fragments of
 * its fragment_size, else 0. */
size_t qrpc_peer_max_dgram_payload(qrpc_peer *peer, uint32_t channel);

/* Sends payload (copied, or packed in place with _msg) on channel; on a
 * fragmented channel as one datagram per fragment, all or none queued.
 * Errors: QRPC_EMSGSIZE (over qrpc_peer_max_dgram_payload()),
 * QRPC_ENOBUFS (the connection's datagram queue is full, or cannot take
 * every fragment),
 * QRPC_ENODGRAM (the peer did not enable datagrams), QRPC_ECLOSED,
 * QRPC_EINVAL, QRPC_ENOMEM. Each refusal is counted on the channel. */
int qrpc_peer_send_dgram(qrpc_peer *peer, uint32_t channel, const void *payload,
                         size_t len);
int qrpc_peer_send_dgram_msg(qrpc_peer *peer, uint32_t channel,
                             const qrpc_msg *m);

/* One datagram encoded once (its Seq taken) for sending to many peers. */
typedef struct qrpc_dgram qrpc_dgram;

/* Encodes payload for channel with the server's next Seq, for a broadcast
 * to many of its peers with qrpc_peer_send_encoded(); on a fragmented
 * channel, as all its fragments. Free with qrpc_dgram_free() once it has
 * been handed to every peer; the queues keep the bytes alive as long as
 * they need them. On a server with several workers, the Seq is the calling
 * worker's (worker 0's from a thread that is none of them), and the
 * encoding goes only to peers of that worker. Errors: QRPC_EINVAL (srv or
 * out NULL, payload NULL with len > 0, a message without pack, a
 * fragment_size too small for the headers), QRPC_EMSGSIZE (over a
 * fragmented channel's max_message),
 * QRPC_ENOMEM. */
int qrpc_server_dgram_encode(qrpc_server *srv, uint32_t channel,
                             const void *payload, size_t len,
                             qrpc_dgram **out);
int qrpc_server_dgram_encode_msg(qrpc_server *srv, uint32_t channel,
                                 const qrpc_msg *m, qrpc_dgram **out);
/* Queues an encoded datagram to peer (d stays the caller's). Errors as
 * qrpc_peer_send_dgram(). */
int qrpc_peer_send_encoded(qrpc_peer *peer, const qrpc_dgram *d);
/* Drops the caller's reference; NULL is ignored. */
void qrpc_dgram_free(qrpc_dgram *d);

/* One tick of a server's state on a snapshot channel, encoded at most
 * once for each baseline its peers acknowledged, and once whole. */
typedef struct qrpc_snapshot qrpc_snapshot;

/* Makes state (copied; or packed with _msg) the server's state at tick on
 * snapshot channel, and the newest baseline of the channel's ring. Ticks
 * must increase from one call to the next. The snapshot carries the
 * server's clock (CLOCK_MONOTONIC, in microseconds) of this call. Send it
 * to peers with qrpc_peer_send_snapshot(), then free it; it must be freed
 * before srv. On a server with several workers, the state and ring are the
 * calling worker's (worker 0's from a thread that is none of them), for
 * that worker's peers. Errors: QRPC_EINVAL (srv, out or state NULL, not a
 * snapshot channel, tick 0 or not above the last), QRPC_EMSGSIZE (over the
 * channel's max_message), QRPC_ENOMEM. */
int qrpc_server_snapshot_new(qrpc_server *srv, uint32_t channel, uint64_t tick,
                             const void *state, size_t len,
                             qrpc_snapshot **out);
int qrpc_server_snapshot_new_msg(qrpc_server *srv, uint32_t channel,
                                 uint64_t tick, const qrpc_msg *m,
                                 qrpc_snapshot **out);

/* Queues s to peer: the difference from the newest state peer's QUIC
 * stack acknowledged every fragment of while that state is still in the
 * ring, else the whole state. Peers with the same baseline share one
 * encoding. Errors as qrpc_peer_send_encoded(), and QRPC_EAGAIN (counted
 * in snap_deferred, nothing queued): the connection's queue still holds
 * part of the state before the last one sent to it (its path takes fewer
 * states than the server makes: it gets a newer one once there is room),
 * or peer needs a whole state and one is still on its way (neither
 * acknowledged nor lost), or s already went whole to the channel's
 * snapshot_whole_per_tick peers; a held state waits at most 500 ms. */
int qrpc_peer_send_snapshot(qrpc_peer *peer, qrpc_snapshot *s);

/* How many encodings s has made so far: 1 when every peer it went to
 * shared one baseline (or none). 0 for NULL. */
size_t qrpc_snapshot_encodings(const qrpc_snapshot *s);

/* Frees s; the queues keep what they still need. NULL is ignored. */
void qrpc_snapshot_free(qrpc_snapshot *s);

/* The receiving side's view of the server's time on a snapshot channel. */
typedef struct qrpc_snapshot_clock {
  uint64_t tick;           /* the newest tick handed over; 0 before any */
  uint64_t tick_server_us; /* the server's clock when tick was made */
  /* The server's clock minus this process's CLOCK_MONOTONIC, in
   * microseconds: from the snapshot that arrived soonest after it was
   * made among the last 64 (the least queueing), plus half the smoothed
   * RTT for its one-way trip. */
  int64_t offset_us;
  /* Half the smoothed RTT: the error of offset_us when that snapshot met
   * no queue and the path is symmetric. */
  uint64_t error_us;
  uint64_t server_now_us; /* the server's clock now, estimated */
} qrpc_snapshot_clock;

/* Fills c for snapshot channel on peer. Errors: QRPC_EINVAL (peer or c
 * NULL), QRPC_EAGAIN (no snapshot yet). Loop thread of peer. */
int qrpc_peer_snapshot_clock(qrpc_peer *peer, uint32_t channel,
                             qrpc_snapshot_clock *c);

/* Counters of one channel on one connection. On a fragmented channel,
 * sent, lost and dropped_aged count datagrams (fragments); received,
 * delivered and dropped_stale count whole messages. */
typedef struct qrpc_dgram_stats {
  uint64_t sent;           /* queued for sending */
  uint64_t lost;           /* declared lost by the peer's acknowledgements */
  uint64_t dropped_aged;   /* waited longer than max_age; never sent */
  uint64_t refused_too_large;
  uint64_t refused_queue_full;
  uint64_t received;       /* arrived on this channel */
  uint64_t delivered;      /* handed to the channel's function */
  uint64_t dropped_stale;  /* latest-only: Seq not greater than the last */
  uint64_t dropped_undecodable; /* delivered, but it did not decode */
  uint64_t dropped_unknown; /* this connection, any unregistered channel */
  uint64_t dropped_malformed; /* this connection: no Channel or Seq */
  /* Fragmented channels, receiving. */
  uint64_t frags_received;     /* fragments that arrived */
  uint64_t dropped_incomplete; /* partial messages given up: too old, over
                                  the memory bound, or (latest-only) a
                                  newer message completed first */
  uint64_t reassembly_held;    /* bytes held in partial messages now */
  uint64_t reassembly_peak;    /* the most ever held at once */
  uint64_t frags_invalid;      /* of frags_received, dropped as breaking the
                                  rules: header cut off, past the message's end,
                                  empty, Total Length over max_message or
                                  disagreeing, overlapping (the partial message
                                  contradicted is dropped too, counted in
                                  dropped_incomplete); the connection stays up */
  uint64_t bytes_sent;     /* datagram bytes queued, headers included */
  uint64_t bytes_received; /* datagram bytes that arrived on the channel */
  /* Snapshot channels. Sending: states sent whole and as deltas.
   * Receiving: deltas against a baseline this side does not hold, and
   * deltas (or states) that do not apply, both dropped and not in
   * received. */
  uint64_t snap_full_sent;
  uint64_t snap_delta_sent;
  uint64_t snap_no_baseline;
  uint64_t snap_bad_delta;
  uint64_t snap_deferred; /* sending: QRPC_EAGAIN from
                             qrpc_peer_send_snapshot() */
} qrpc_dgram_stats;

/* Fills st for channel on peer (zeros for a channel never used, or a NULL
 * peer; nothing when st is NULL).
 * received == delivered + dropped_stale holds for every channel; of the
 * delivered, dropped_undecodable never reached the application. */
void qrpc_peer_dgram_stats(qrpc_peer *peer, uint32_t channel,
                           qrpc_dgram_stats *st);

/* Fills st with the counters of every channel on every connection srv
 * has had, summed since it was created (reassembly_held and
 * reassembly_peak excepted: those stay 0) (zeros for a NULL srv; nothing
 * when st is NULL). dropped_unknown and dropped_malformed are summed over
 * the connections too, and over the workers. Worker 0's loop thread. */
void qrpc_server_dgram_stats(qrpc_server *srv, qrpc_dgram_stats *st);

/* Counts, in channel's dropped_undecodable on peer, a datagram whose
 * payload the receiving function could not decode and dropped. Generated
 * stubs call it; a hand-written qrpc_dgram_fn may too, once for the
 * datagram it was given. The count never exceeds delivered: calls beyond
 * that, for a channel that delivered nothing, or with a NULL peer are
 * ignored. */
void qrpc_peer_dgram_count_undecodable(qrpc_peer *peer, uint32_t channel);

#ifdef __cplusplus
}
#endif
#endif
