/*
 * Datagram channels: Channel and Seq in front of each payload, per-channel
 * sequence numbers, latest-only filtering, age limits and counters
 * (docs/protocol.md section 4).
 */
#include "dgram/channel.h"

#include <stdlib.h>
#include <string.h>

#include "dgram/delta.h"
#include "qrpc/error.h"
#include "quic/dgqueue.h"
#include "util/clock.h"
#include "util/u64map.h"
#include "util/varint.h"
#include "wire/protocol.h"

/* Channel (at most 5 bytes for a uint32) and Seq (at most 8). */
#define DGRAM_HEADER_MAX (5 + 8)

struct qrpci_dgram {
  qrpci_u64map chans;     /* channel + 1 -> chan */
  qrpc_dgram_stats total; /* all channels of all connections */
};

/* A state of a snapshot channel: in the sender's ring (shared by the
 * snapshots that use it), or in a receiver's. */
typedef struct snap_state {
  size_t refs;
  uint64_t tick, server_us;
  size_t len;
  uint8_t data[];
} snap_state;

typedef struct chan {
  qrpc_dgram_opts opts;
  qrpc_dgram_fn fn;
  void *ud;
  uint64_t next_seq; /* the sender's counter, shared by all connections */
  /* Snapshot channels, sending: the last opts.snapshot_ring states. */
  snap_state **ring;
  size_t ring_next; /* the slot the next state takes */
  uint64_t last_tick;
} chan;

struct qrpci_dgconn {
  qrpci_dgram *dg;
  qrpc_conn *conn;
  qrpc_peer *peer;
  qrpci_u64map chans; /* channel + 1 -> conn_chan */
  uint64_t unknown;
  uint64_t malformed;
};

/* A fragmented message being reassembled: its bytes, and a bitmap of the
 * bytes that arrived (so overlapping fragments are caught). */
typedef struct partial {
  struct partial *next; /* the channel's partials, oldest first */
  uint64_t seq;
  uint64_t started_ns;
  size_t total, have, cost;
  uint8_t *bits;
  uint8_t data[];
} partial;

/* A snapshot sent on a connection, until its fragments are all
 * acknowledged or one is lost. */
typedef struct snap_sent {
  uint64_t seq, tick;
  uint64_t sent_ns;
  size_t frags, written, acked;
  int lost;
  int whole;
} snap_sent;

/* How long a state in the queue, or a whole state in flight, holds back
 * the next state to the same connection, at most: its fate is normally
 * known within an RTT or so (sent, acknowledged or declared lost). */
#define WHOLE_IN_FLIGHT_NS (500 * QRPCI_NS_PER_MS)

/* Snapshots tracked per connection, each in the slot of its Seq, so a
 * notice about a fragment finds its snapshot in one step. A snapshot
 * overwritten by a later one of the same slot (128 Seqs on, which the
 * channel's other encodings take too) is no longer tracked: it can no
 * longer become a baseline, nothing else. A power of two that divides
 * 2^31, so the Seq bits an id carries give the slot. */
#define SNAP_SENT_SLOTS (2 * QRPC_DGRAM_MAX_RING)
/* Snapshots in the clock estimate's window. */
#define CLOCK_WINDOW 64

typedef struct snap_conn {
  /* Sending. */
  snap_sent sent[SNAP_SENT_SLOTS];
  uint64_t last_seq, prev_seq; /* the last two snapshots sent; 0: none */
  uint64_t acked_tick;         /* the newest tick acknowledged whole; 0: none */
  /* Receiving: the last states rebuilt, by tick (NULL: free slot). */
  snap_state **ring;
  uint64_t tick, tick_server_us; /* the newest handed over */
  /* The largest (server clock - local clock) of this window and the
   * last: the snapshot that waited least. */
  int64_t best, best_prev;
  size_t window_n;
  int have_clock;
} snap_conn;

typedef struct conn_chan {
  uint64_t last_seq; /* latest-only: last accepted */
  qrpc_dgram_stats st;
  partial *parts;  /* fragmented channels: oldest first */
  snap_conn *snap; /* snapshot channels, once used */
} conn_chan;

struct qrpc_dgram {
  uint32_t channel;
  uint64_t max_age_ns;
  uint64_t seq;
  int snapshot; /* its fragments' acknowledgements are tracked */
  size_t n;     /* datagrams: 1, or the fragments of one message */
  qrpci_dgbuf *bufs[];
};

/* A snapshot's encodings: whole, and against each baseline used. */
typedef struct snap_enc {
  uint64_t base; /* 0: the whole state */
  qrpc_dgram *d; /* shared with the whole encoding when a delta gains
                    nothing (delta 0) */
  int delta;
} snap_enc;

struct qrpc_snapshot {
  qrpci_dgram *dg;
  uint32_t channel;
  size_t whole_sent; /* peers it went to whole */
  snap_state *st;
  size_t n;
  snap_enc enc[QRPC_DGRAM_MAX_RING + 1];
};

/* A datagram's id on its connection: the channel's key, and for a
 * snapshot the low bits of its Seq above it, so acknowledgements find the
 * snapshot they are about. */
#define ID_KEY_BITS 33
#define ID_KEY_MASK ((UINT64_C(1) << ID_KEY_BITS) - 1)
#define ID_SEQ_MASK ((UINT64_C(1) << (64 - ID_KEY_BITS)) - 1)

/* What a partial costs besides its bytes and bitmap. */
#define PARTIAL_OVERHEAD 64
#define DEFAULT_REASSEMBLY_MS 1000

static size_t partial_cost(size_t total) {
  return PARTIAL_OVERHEAD + total + (total + 7) / 8;
}

void qrpc_dgram_opts_default(qrpc_dgram_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
}

/* Keys are channel + 1 so that channel 0 is a valid id; the transport's
 * lost and aged notices carry the same key as the datagram's id. */
static uint64_t key(uint32_t channel) { return (uint64_t)channel + 1; }

static void state_unref(snap_state *st) {
  if (st && --st->refs == 0) free(st);
}

static snap_state *state_new(uint64_t tick, uint64_t server_us,
                             const uint8_t *data, size_t len) {
  snap_state *st = malloc(sizeof(*st) + (len ? len : 1));
  if (!st) return NULL;
  st->refs = 1;
  st->tick = tick;
  st->server_us = server_us;
  st->len = len;
  if (len && data) memcpy(st->data, data, len);
  return st;
}

static void free_ring(snap_state **ring, size_t n) {
  if (!ring) return;
  for (size_t i = 0; i < n; i++) state_unref(ring[i]);
  free(ring);
}

/* The state of tick in ring, or NULL. */
static snap_state *ring_find(snap_state **ring, size_t n, uint64_t tick) {
  for (size_t i = 0; ring && tick && i < n; i++)
    if (ring[i] && ring[i]->tick == tick) return ring[i];
  return NULL;
}

/* How a snapshot channel's states are diffed. */
static qrpci_delta_keys delta_keys(const chan *ch) {
  return (qrpci_delta_keys){.entities = ch->opts.snapshot_entities,
                            .key = ch->opts.snapshot_key};
}

static void free_partials(conn_chan *cc) {
  while (cc->parts) {
    partial *p = cc->parts;
    cc->parts = p->next;
    free(p);
  }
  cc->st.reassembly_held = 0;
}

static void free_values(qrpci_u64map *m) {
  void *v;
  while ((v = qrpci_u64map_pop(m))) free(v);
  qrpci_u64map_free(m);
}

static void free_chans(qrpci_u64map *m) {
  chan *ch;
  while ((ch = qrpci_u64map_pop(m))) {
    free_ring(ch->ring, ch->opts.snapshot_ring);
    free(ch);
  }
  qrpci_u64map_free(m);
}

/* A new zeroed entry for key k in m; NULL when out of memory. */
static void *entry_new(qrpci_u64map *m, uint64_t k, size_t size) {
  void *v = calloc(1, size);
  if (v && qrpci_u64map_put(m, k, v) != 0) {
    free(v);
    return NULL;
  }
  return v;
}

static chan *chan_get(qrpci_dgram *dg, uint32_t channel, int create) {
  chan *ch = qrpci_u64map_get(&dg->chans, key(channel));
  if (ch || !create) return ch;
  if ((ch = entry_new(&dg->chans, key(channel), sizeof(*ch)))) {
    qrpc_dgram_opts_default(&ch->opts);
    ch->next_seq = 1;
  }
  return ch;
}

static conn_chan *conn_chan_get(qrpci_dgconn *dc, uint32_t channel) {
  conn_chan *cc = qrpci_u64map_get(&dc->chans, key(channel));
  return cc ? cc : entry_new(&dc->chans, key(channel), sizeof(*cc));
}

qrpci_dgram *qrpci_dgram_new(void) {
  qrpci_dgram *dg = calloc(1, sizeof(*dg));
  if (dg) qrpci_u64map_init(&dg->chans);
  return dg;
}

void qrpci_dgram_free(qrpci_dgram *dg) {
  if (!dg) return;
  free_chans(&dg->chans);
  free(dg);
}

int qrpci_dgram_register(qrpci_dgram *dg, uint32_t channel,
                         const qrpc_dgram_opts *opts, qrpc_dgram_fn fn,
                         void *ud) {
  if (opts && opts->size != sizeof(*opts)) return QRPC_EINVAL;
  qrpc_dgram_opts o;
  if (opts)
    o = *opts;
  else
    qrpc_dgram_opts_default(&o);
  if (o.max_message > QRPC_DGRAM_MAX_MESSAGE ||
      o.snapshot_ring > QRPC_DGRAM_MAX_RING)
    return QRPC_EINVAL;
  if (o.snapshot_ring) {
    if (!o.max_message) o.max_message = QRPC_DGRAM_SNAPSHOT_MESSAGE;
    if (!o.snapshot_key) o.snapshot_key = 1;
    if (!o.snapshot_whole_per_tick)
      o.snapshot_whole_per_tick = QRPC_DGRAM_WHOLE_PER_TICK;
    /* Ticks order a snapshot channel; a complete message older than the
     * newest is still a baseline the sender may use. */
    o.latest_only = 0;
  }
  if (o.max_message) {
    if (!o.fragment_size) o.fragment_size = QRPC_DGRAM_FRAGMENT_SIZE;
    if (!o.reassembly_ms) o.reassembly_ms = DEFAULT_REASSEMBLY_MS;
    if (!o.reassembly_bytes)
      o.reassembly_bytes = 4 * partial_cost(o.max_message);
    /* Room for the largest headers and at least one byte of message. */
    if (o.fragment_size <= DGRAM_HEADER_MAX + 2 * QRPCI_VARINT_MAXLEN ||
        o.reassembly_bytes < partial_cost(o.max_message))
      return QRPC_EINVAL;
  }
  chan *ch = chan_get(dg, channel, 1);
  if (!ch) return QRPC_ENOMEM;
  snap_state **ring = NULL;
  if (o.snapshot_ring && !(ring = calloc(o.snapshot_ring, sizeof(*ring))))
    return QRPC_ENOMEM;
  free_ring(ch->ring, ch->opts.snapshot_ring);
  ch->ring = ring;
  ch->ring_next = 0;
  ch->last_tick = 0;
  ch->opts = o;
  ch->fn = fn;
  ch->ud = ud;
  return 0;
}

static size_t put_header(uint8_t *out, uint32_t channel, uint64_t seq) {
  size_t n = qrpci_varint_put(out, channel);
  return n + qrpci_varint_put(out + n, seq);
}

/* The fragments of a message of total bytes (docs/protocol.md,
 * "Fragmented datagrams"): Channel, Seq, Total Length, Offset, bytes.
 * Fills d->bufs (d has room for every fragment) from msg. */
static int fragment(qrpc_dgram *d, const chan *ch, uint64_t seq,
                    const uint8_t *msg, size_t total) {
  size_t off = 0;
  do {
    uint8_t hdr[DGRAM_HEADER_MAX + 2 * QRPCI_VARINT_MAXLEN];
    size_t hl = put_header(hdr, d->channel, seq);
    hl += qrpci_varint_put(hdr + hl, total);
    hl += qrpci_varint_put(hdr + hl, off);
    size_t n = ch->opts.fragment_size - hl;
    if (n > total - off) n = total - off;
    qrpci_dgbuf *b = qrpci_dgbuf_new(hl + n);
    if (!b) return QRPC_ENOMEM;
    memcpy(b->data, hdr, hl);
    if (n) memcpy(b->data + hl, msg + off, n);
    d->bufs[d->n++] = b;
    off += n;
  } while (off < total);
  return 0;
}

/* Fragments a message of total bytes takes with ch's fragment_size (the
 * largest headers assumed, so never fewer than fragment() makes). */
static size_t fragments_for(const chan *ch, uint32_t channel, size_t total) {
  size_t room = ch->opts.fragment_size - qrpci_varint_len(channel) -
                QRPCI_VARINT_MAXLEN - 2 * qrpci_varint_len(total);
  return total ? (total + room - 1) / room : 1;
}

int qrpci_dgram_encode(qrpci_dgram *dg, uint32_t channel, qrpci_payload pl,
                       qrpc_dgram **out) {
  if (!out || !qrpci_payload_valid(&pl)) return QRPC_EINVAL;
  chan *ch = chan_get(dg, channel, 1);
  if (!ch) return QRPC_ENOMEM;
  size_t len = qrpci_payload_len(&pl);
  size_t frag = ch->opts.max_message != 0;
  if (frag && len > ch->opts.max_message) return QRPC_EMSGSIZE;
  size_t nmax = frag ? fragments_for(ch, channel, len) : 1;
  qrpc_dgram *d = calloc(1, sizeof(*d) + nmax * sizeof(d->bufs[0]));
  if (!d) return QRPC_ENOMEM;
  d->channel = channel;
  d->max_age_ns = ch->opts.max_age_ms * QRPCI_NS_PER_MS;
  d->seq = ch->next_seq;
  d->snapshot = ch->opts.snapshot_ring != 0;
  int rv = 0;
  if (frag) {
    uint8_t *msg = malloc(len ? len : 1);
    if (!msg)
      rv = QRPC_ENOMEM;
    else if (qrpci_payload_write(&pl, msg) != 0)
      rv = QRPC_EINVAL;
    else
      rv = fragment(d, ch, ch->next_seq, msg, len);
    free(msg);
  } else {
    uint8_t hdr[DGRAM_HEADER_MAX];
    size_t hl = put_header(hdr, channel, ch->next_seq);
    if (!(d->bufs[0] = qrpci_dgbuf_new(hl + len))) {
      rv = QRPC_ENOMEM;
    } else {
      d->n = 1;
      memcpy(d->bufs[0]->data, hdr, hl);
      if (qrpci_payload_write(&pl, d->bufs[0]->data + hl) != 0)
        rv = QRPC_EINVAL;
    }
  }
  if (rv != 0) {
    qrpc_dgram_free(d);
    return rv;
  }
  ch->next_seq++;
  *out = d;
  return 0;
}

void qrpc_dgram_free(qrpc_dgram *d) {
  if (!d) return;
  for (size_t i = 0; i < d->n; i++) qrpci_dgbuf_unref(d->bufs[i]);
  free(d);
}

/* The channel a notice is about: its id holds the channel's key. */
static conn_chan *noticed(void *ud, uint64_t id) {
  id &= ID_KEY_MASK;
  return id ? qrpci_u64map_get(&((qrpci_dgconn *)ud)->chans, id) : NULL;
}

/* The snapshot a fragment's id names, while it is tracked. */
static snap_sent *noticed_snapshot(conn_chan *cc, uint64_t id) {
  uint64_t seq = id >> ID_KEY_BITS;
  if (!cc || !cc->snap || !seq) return NULL;
  snap_sent *ss = &cc->snap->sent[seq % SNAP_SENT_SLOTS];
  return ss->seq && (ss->seq & ID_SEQ_MASK) == seq ? ss : NULL;
}

/* A fragment was lost or never sent: its snapshot cannot be a baseline. */
static void snapshot_missed(conn_chan *cc, uint64_t id) {
  snap_sent *ss = noticed_snapshot(cc, id);
  if (ss) ss->lost = 1;
}

static void on_lost(qrpc_conn *c, uint64_t id, void *ud) {
  conn_chan *cc = noticed(ud, id);
  if (!cc) return;
  cc->st.lost++;
  ((qrpci_dgconn *)ud)->dg->total.lost++;
  snapshot_missed(cc, id);
}

static void on_aged(qrpc_conn *c, uint64_t id, void *ud) {
  conn_chan *cc = noticed(ud, id);
  if (!cc) return;
  cc->st.dropped_aged++;
  ((qrpci_dgconn *)ud)->dg->total.dropped_aged++;
  snapshot_missed(cc, id);
}

/* A fragment left the connection's queue for a packet. */
static void on_sent(qrpc_conn *c, uint64_t id, void *ud) {
  if (!(id >> ID_KEY_BITS)) return;
  snap_sent *ss = noticed_snapshot(noticed(ud, id), id);
  if (ss) ss->written++;
}

/* The peer's QUIC stack has a fragment: once it has every fragment of a
 * snapshot, that state is the connection's baseline, unless a newer one
 * is. */
static void on_acked(qrpc_conn *c, uint64_t id, void *ud) {
  if (!(id >> ID_KEY_BITS)) return;
  conn_chan *cc = noticed(ud, id);
  snap_sent *ss = noticed_snapshot(cc, id);
  if (!ss || ss->lost || ++ss->acked < ss->frags) return;
  if (ss->tick > cc->snap->acked_tick) cc->snap->acked_tick = ss->tick;
}

qrpci_dgconn *qrpci_dgconn_new(qrpci_dgram *dg, qrpc_conn *conn,
                               qrpc_peer *peer) {
  qrpci_dgconn *dc = calloc(1, sizeof(*dc));
  if (!dc) return NULL;
  dc->dg = dg;
  dc->conn = conn;
  dc->peer = peer;
  qrpci_u64map_init(&dc->chans);
  qrpci_dgram_hooks h = {.sent = on_sent,
                         .lost = on_lost,
                         .acked = on_acked,
                         .aged = on_aged,
                         .ud = dc};
  if (conn) qrpci_conn_set_dgram_hooks(conn, &h);
  return dc;
}

void qrpci_dgconn_free(qrpci_dgconn *dc) {
  if (!dc) return;
  conn_chan *cc;
  while ((cc = qrpci_u64map_pop(&dc->chans))) {
    free_partials(cc);
    if (cc->snap) {
      free_ring(cc->snap->ring, QRPC_DGRAM_MAX_RING);
      free(cc->snap);
    }
    free(cc);
  }
  free_values(&dc->chans);
  free(dc);
}

/* The snapshot state of a connection's channel, made on first use. */
static snap_conn *snap_conn_get(conn_chan *cc) {
  if (cc->snap) return cc->snap;
  snap_conn *sc = calloc(1, sizeof(*sc));
  if (sc && !(sc->ring = calloc(QRPC_DGRAM_MAX_RING, sizeof(*sc->ring)))) {
    free(sc);
    sc = NULL;
  }
  return cc->snap = sc;
}

/* Keeps st in a receiver's ring of n slots: a free slot, else the oldest
 * tick's if st is newer. Takes st's reference either way. */
static void rx_keep(snap_state **ring, size_t n, snap_state *st) {
  size_t slot = n;
  for (size_t i = 0; i < n; i++) {
    if (!ring[i]) {
      slot = i;
      break;
    }
    if (slot == n || ring[i]->tick < ring[slot]->tick) slot = i;
  }
  if (ring[slot] && ring[slot]->tick > st->tick) {
    state_unref(st);
    return;
  }
  state_unref(ring[slot]);
  ring[slot] = st;
}

/* One clock sample: the server's clock when it made a state, against
 * this side's when the state arrived whole. */
static void clock_sample(snap_conn *sc, uint64_t server_us) {
  int64_t v = (int64_t)server_us - (int64_t)(qrpci_now_ns() / 1000);
  if (!sc->have_clock || sc->window_n == 0 || v > sc->best) sc->best = v;
  if (!sc->have_clock) sc->best_prev = v;
  sc->have_clock = 1;
  if (++sc->window_n == CLOCK_WINDOW) {
    sc->best_prev = sc->best;
    sc->window_n = 0;
  }
}

static void snapshot_dropped(qrpci_dgconn *dc, conn_chan *cc, int no_base) {
  if (no_base) {
    cc->st.snap_no_baseline++;
    dc->dg->total.snap_no_baseline++;
  } else {
    cc->st.snap_bad_delta++;
    dc->dg->total.snap_bad_delta++;
  }
}

/* The state a snapshot message carries (docs/protocol.md, "Snapshot
 * channels"): whole, or rebuilt from a baseline of the ring. NULL, counted,
 * when it cannot be had. */
static snap_state *snapshot_state(qrpci_dgconn *dc, chan *ch, conn_chan *cc,
                                  uint64_t tick, uint64_t base,
                                  uint64_t server_us, const uint8_t *body,
                                  size_t n) {
  if (!base) return state_new(tick, server_us, body, n);
  snap_state *b = ring_find(cc->snap->ring, ch->opts.snapshot_ring, base);
  if (!b) {
    snapshot_dropped(dc, cc, 1);
    return NULL;
  }
  qrpci_delta_buf out = {0};
  snap_state *st = NULL;
  qrpci_delta_keys keys = delta_keys(ch);
  if (qrpci_delta_apply(&keys, b->data, b->len, body, n, ch->opts.max_message,
                        &out) == 0)
    st = state_new(tick, server_us, out.data, out.len);
  else
    snapshot_dropped(dc, cc, 0);
  qrpci_delta_buf_free(&out);
  return st;
}

/* A whole snapshot message: its state rebuilt, kept as a baseline, and
 * handed over if it is the newest. */
static void snapshot_recv(qrpci_dgconn *dc, chan *ch, conn_chan *cc,
                          uint32_t channel, const uint8_t *msg, size_t len) {
  uint64_t tick, base, server_us;
  size_t a = qrpci_varint_get(msg, len, &tick);
  size_t b = a ? qrpci_varint_get(msg + a, len - a, &base) : 0;
  size_t c = b ? qrpci_varint_get(msg + a + b, len - a - b, &server_us) : 0;
  snap_conn *sc = snap_conn_get(cc);
  if (!sc) return;
  if (!c || tick == 0 || base >= tick) {
    snapshot_dropped(dc, cc, 0);
    return;
  }
  qrpc_dgram_stats *total = &dc->dg->total;
  cc->st.received++;
  total->received++;
  if (ring_find(sc->ring, ch->opts.snapshot_ring, tick)) {
    cc->st.dropped_stale++; /* a duplicate */
    total->dropped_stale++;
    return;
  }
  size_t hl = a + b + c;
  snap_state *st =
      snapshot_state(dc, ch, cc, tick, base, server_us, msg + hl, len - hl);
  if (!st) {
    cc->st.received--;
    total->received--;
    return;
  }
  clock_sample(sc, server_us);
  st->refs++;
  rx_keep(sc->ring, ch->opts.snapshot_ring, st);
  if (tick <= sc->tick) {
    cc->st.dropped_stale++;
    total->dropped_stale++;
  } else {
    sc->tick = tick;
    sc->tick_server_us = server_us;
    cc->st.delivered++;
    total->delivered++;
    ch->fn(dc->peer, channel, tick, st->data, st->len, ch->ud);
  }
  state_unref(st);
}

/* A whole message arrived (in one datagram, or reassembled): latest-only
 * filtering, counters, and the channel's function. */
static void deliver(qrpci_dgconn *dc, chan *ch, conn_chan *cc, uint32_t channel,
                    uint64_t seq, const uint8_t *msg, size_t len) {
  if (ch->opts.snapshot_ring) {
    snapshot_recv(dc, ch, cc, channel, msg, len);
    return;
  }
  qrpc_dgram_stats *total = &dc->dg->total;
  cc->st.received++;
  total->received++;
  if (ch->opts.latest_only && seq <= cc->last_seq) {
    cc->st.dropped_stale++;
    total->dropped_stale++;
    return;
  }
  if (seq > cc->last_seq) cc->last_seq = seq;
  cc->st.delivered++;
  total->delivered++;
  ch->fn(dc->peer, channel, seq, msg, len, ch->ud);
}

static void unlink_partial(conn_chan *cc, partial *p) {
  for (partial **pp = &cc->parts; *pp; pp = &(*pp)->next) {
    if (*pp == p) {
      *pp = p->next;
      break;
    }
  }
  cc->st.reassembly_held -= p->cost;
}

/* Gives up a partial message, counting it. */
static void abandon(qrpci_dgconn *dc, conn_chan *cc, partial *p) {
  unlink_partial(cc, p);
  free(p);
  cc->st.dropped_incomplete++;
  dc->dg->total.dropped_incomplete++;
}

/* Drops a fragment that breaks the rules of docs/protocol.md, "Fragmented
 * datagrams", counting it; never fatal. */
static void invalid(qrpci_dgconn *dc, conn_chan *cc) {
  cc->st.frags_invalid++;
  dc->dg->total.frags_invalid++;
}

/* A fragment on a fragmented channel (docs/protocol.md, "Fragmented
 * datagrams"): p and n are what follows Seq. A fragment that breaks the
 * rules is dropped and counted in frags_invalid, and the partial message
 * it contradicts is given up; nothing is held for a Total Length over
 * max_message. Everything else that goes wrong (loss, age, memory) drops
 * partial messages and counts them. The connection stays up. */
static void recv_fragment(qrpci_dgconn *dc, chan *ch, conn_chan *cc,
                          uint32_t channel, uint64_t seq, const uint8_t *p,
                          size_t n) {
  uint64_t total, off;
  cc->st.frags_received++;
  dc->dg->total.frags_received++;
  size_t a = qrpci_varint_get(p, n, &total);
  size_t b = a ? qrpci_varint_get(p + a, n - a, &off) : 0;
  if (!a || !b) { /* header cut off */
    invalid(dc, cc);
    return;
  }
  const uint8_t *frag = p + a + b;
  size_t flen = n - a - b;
  /* Past its message's end, empty, or a message over max_message. */
  if (off > total || flen > total - off || (flen == 0 && total > 0) ||
      total > ch->opts.max_message) {
    invalid(dc, cc);
    return;
  }
  /* Latest-only: a fragment of a message no newer than one delivered. */
  if (ch->opts.latest_only && seq <= cc->last_seq) return;
  uint64_t now = qrpci_now_ns();
  uint64_t max_ns = ch->opts.reassembly_ms * QRPCI_NS_PER_MS;
  partial *pt = NULL;
  for (partial *q = cc->parts, *next; q; q = next) {
    next = q->next;
    if (now - q->started_ns > max_ns)
      abandon(dc, cc, q);
    else if (q->seq == seq)
      pt = q;
  }
  if (!pt && flen == total) {
    deliver(dc, ch, cc, channel, seq, frag, flen);
    return;
  }
  if (pt) {
    /* Fragments that disagree on the length, or overlap: the message
     * cannot be trusted, so it goes with the fragment. */
    int bad = pt->total != total;
    for (size_t i = (size_t)off; !bad && i < (size_t)off + flen; i++)
      bad = (pt->bits[i / 8] & (1u << (i % 8))) != 0;
    if (bad) {
      invalid(dc, cc);
      abandon(dc, cc, pt);
      return;
    }
  } else {
    size_t cost = partial_cost((size_t)total);
    while (cc->parts &&
           cc->st.reassembly_held + cost > ch->opts.reassembly_bytes)
      abandon(dc, cc, cc->parts);
    pt = calloc(1, sizeof(*pt) + (size_t)total + ((size_t)total + 7) / 8);
    if (!pt) return;
    pt->seq = seq;
    pt->started_ns = now;
    pt->total = (size_t)total;
    pt->cost = cost;
    pt->bits = pt->data + pt->total;
    partial **tail = &cc->parts;
    while (*tail) tail = &(*tail)->next;
    *tail = pt;
    cc->st.reassembly_held += cost;
    if (cc->st.reassembly_held > cc->st.reassembly_peak)
      cc->st.reassembly_peak = cc->st.reassembly_held;
  }
  for (size_t i = (size_t)off; i < (size_t)off + flen; i++)
    pt->bits[i / 8] |= (uint8_t)(1u << (i % 8));
  memcpy(pt->data + off, frag, flen);
  pt->have += flen;
  if (pt->have < pt->total) return;
  unlink_partial(cc, pt);
  /* Latest-only: what is older than a complete message is worth nothing. */
  if (ch->opts.latest_only) {
    for (partial *q = cc->parts, *next; q; q = next) {
      next = q->next;
      if (q->seq < seq) abandon(dc, cc, q);
    }
  }
  deliver(dc, ch, cc, channel, seq, pt->data, pt->total);
  free(pt);
}

void qrpci_dgconn_recv(qrpci_dgconn *dc, const uint8_t *data, size_t len) {
  uint64_t channel, seq;
  size_t a = qrpci_varint_get(data, len, &channel);
  size_t b = a ? qrpci_varint_get(data + a, len - a, &seq) : 0;
  qrpc_dgram_stats *total = &dc->dg->total;
  if (!a || !b || seq == 0) {
    dc->malformed++;
    total->dropped_malformed++;
    return;
  }
  chan *ch =
      channel <= UINT32_MAX ? chan_get(dc->dg, (uint32_t)channel, 0) : NULL;
  if (!ch || !ch->fn) {
    /* Counted, not fatal: a peer may be newer than this build. */
    dc->unknown++;
    total->dropped_unknown++;
    return;
  }
  conn_chan *cc = conn_chan_get(dc, (uint32_t)channel);
  if (!cc) return;
  cc->st.bytes_received += len;
  total->bytes_received += len;
  if (ch->opts.max_message)
    recv_fragment(dc, ch, cc, (uint32_t)channel, seq, data + a + b,
                  len - a - b);
  else
    deliver(dc, ch, cc, (uint32_t)channel, seq, data + a + b, len - a - b);
}

int qrpci_dgconn_send_encoded(qrpci_dgconn *dc, const qrpc_dgram *d) {
  if (!d) return QRPC_EINVAL;
  if (!dc->conn) return QRPC_ECLOSED;
  conn_chan *cc = conn_chan_get(dc, d->channel);
  if (!cc) return QRPC_ENOMEM;
  int rv = 0;
  /* Several fragments go whole or not at all; the first is the largest. */
  if (d->n > 1 && qrpci_conn_dgram_room(dc->conn) < d->n &&
      qrpci_conn_dgram_room(dc->conn) > 0)
    rv = QRPC_ENOBUFS;
  size_t queued = 0, bytes = 0;
  uint64_t id = key(d->channel);
  if (d->snapshot) id |= (d->seq & ID_SEQ_MASK) << ID_KEY_BITS;
  while (rv == 0 && queued < d->n) {
    rv = qrpci_conn_queue_dgram(dc->conn, d->bufs[queued], id, d->max_age_ns);
    if (rv == 0) bytes += d->bufs[queued++]->len;
  }
  qrpc_dgram_stats *total = &dc->dg->total;
  if (rv == 0) {
    cc->st.sent += queued;
    total->sent += queued;
    cc->st.bytes_sent += bytes;
    total->bytes_sent += bytes;
  } else if (rv == QRPC_EMSGSIZE) {
    cc->st.refused_too_large++;
    total->refused_too_large++;
  } else if (rv == QRPC_ENOBUFS) {
    cc->st.refused_queue_full++;
    total->refused_queue_full++;
  }
  return rv;
}

int qrpci_dgconn_send(qrpci_dgconn *dc, uint32_t channel, qrpci_payload pl) {
  qrpc_dgram *d;
  int rv = qrpci_dgram_encode(dc->dg, channel, pl, &d);
  if (rv != 0) return rv;
  rv = qrpci_dgconn_send_encoded(dc, d);
  qrpc_dgram_free(d);
  return rv;
}

size_t qrpci_dgconn_max_payload(const qrpci_dgconn *dc, uint32_t channel) {
  size_t max = dc->conn ? qrpc_conn_max_datagram_size(dc->conn) : 0;
  const chan *ch = chan_get(dc->dg, channel, 0);
  if (ch && ch->opts.max_message)
    return ch->opts.fragment_size <= max ? ch->opts.max_message : 0;
  /* The largest Seq header keeps the answer valid for the channel's life. */
  size_t hl = qrpci_varint_len(channel) + QRPCI_VARINT_MAXLEN;
  return max > hl ? max - hl : 0;
}

void qrpci_dgconn_count_undecodable(qrpci_dgconn *dc, uint32_t channel) {
  /* The entry exists once a datagram was delivered on the channel. */
  conn_chan *cc = qrpci_u64map_get(&dc->chans, key(channel));
  if (cc && cc->st.dropped_undecodable < cc->st.delivered) {
    cc->st.dropped_undecodable++;
    dc->dg->total.dropped_undecodable++;
  }
}

void qrpci_dgconn_stats(const qrpci_dgconn *dc, uint32_t channel,
                        qrpc_dgram_stats *st) {
  const conn_chan *cc = qrpci_u64map_get(&dc->chans, key(channel));
  if (cc)
    *st = cc->st;
  else
    memset(st, 0, sizeof(*st));
  st->dropped_unknown = dc->unknown;
  st->dropped_malformed = dc->malformed;
}

void qrpci_dgram_totals(const qrpci_dgram *dg, qrpc_dgram_stats *st) {
  *st = dg->total;
}

/* The server's clock, as snapshots carry it. */
static uint64_t server_clock_us(void) { return qrpci_now_ns() / 1000; }

int qrpci_snapshot_new(qrpci_dgram *dg, uint32_t channel, uint64_t tick,
                       qrpci_payload pl, qrpc_snapshot **out) {
  if (!out || !qrpci_payload_valid(&pl)) return QRPC_EINVAL;
  chan *ch = chan_get(dg, channel, 0);
  if (!ch || !ch->opts.snapshot_ring || tick == 0 || tick <= ch->last_tick ||
      tick > QRPCI_VARINT_MAX)
    return QRPC_EINVAL;
  size_t len = qrpci_payload_len(&pl);
  if (len > ch->opts.max_message) return QRPC_EMSGSIZE;
  qrpc_snapshot *s = calloc(1, sizeof(*s));
  snap_state *st = state_new(tick, server_clock_us(), NULL, len);
  if (!s || !st) {
    free(s);
    free(st);
    return QRPC_ENOMEM;
  }
  if (qrpci_payload_write(&pl, st->data) != 0) {
    free(s);
    free(st);
    return QRPC_EINVAL;
  }
  s->dg = dg;
  s->channel = channel;
  s->st = st;
  /* The newest state becomes a baseline; the ring's reference and the
   * snapshot's are separate. */
  st->refs++;
  state_unref(ch->ring[ch->ring_next]);
  ch->ring[ch->ring_next] = st;
  ch->ring_next = (ch->ring_next + 1) % ch->opts.snapshot_ring;
  ch->last_tick = tick;
  *out = s;
  return 0;
}

size_t qrpc_snapshot_encodings(const qrpc_snapshot *s) {
  size_t n = 0;
  for (size_t i = 0; s && i < s->n; i++)
    n += s->enc[i].delta || !s->enc[i].base;
  return n;
}

void qrpc_snapshot_free(qrpc_snapshot *s) {
  if (!s) return;
  for (size_t i = 0; i < s->n; i++)
    if (s->enc[i].delta || s->enc[i].base == 0) qrpc_dgram_free(s->enc[i].d);
  state_unref(s->st);
  free(s);
}

/* Encodes Tick, Baseline, Server Time and body as one channel message. */
static int snapshot_encode(qrpc_snapshot *s, uint64_t base, const uint8_t *body,
                           size_t n, qrpc_dgram **out) {
  uint8_t *msg = malloc(3 * QRPCI_VARINT_MAXLEN + n);
  if (!msg) return QRPC_ENOMEM;
  size_t hl = qrpci_varint_put(msg, s->st->tick);
  hl += qrpci_varint_put(msg + hl, base);
  hl += qrpci_varint_put(msg + hl, s->st->server_us & QRPCI_VARINT_MAX);
  if (n) memcpy(msg + hl, body, n);
  int rv = qrpci_dgram_encode(s->dg, s->channel, qrpci_bytes(msg, hl + n), out);
  free(msg);
  return rv;
}

/* s's encoding against base (0: whole), made on first use. */
static snap_enc *snapshot_encoding(qrpc_snapshot *s, const chan *ch,
                                   const snap_state *base, int *err) {
  uint64_t bt = base ? base->tick : 0;
  for (size_t i = 0; i < s->n; i++)
    if (s->enc[i].base == bt) return &s->enc[i];
  snap_enc *full = NULL;
  if (bt) {
    qrpci_delta_buf d = {0};
    qrpci_delta_keys keys = delta_keys(ch);
    int rv = qrpci_delta_diff(&keys, base->data, base->len, s->st->data,
                              s->st->len, &d);
    if (rv == 0) {
      snap_enc *e = &s->enc[s->n];
      if ((*err = snapshot_encode(s, bt, d.data, d.len, &e->d)) == 0) {
        e->base = bt;
        e->delta = 1;
        s->n++;
      }
      qrpci_delta_buf_free(&d);
      return *err ? NULL : e;
    }
    qrpci_delta_buf_free(&d);
    if (rv < 0) {
      *err = rv;
      return NULL;
    }
  }
  full = bt ? snapshot_encoding(s, ch, NULL, err) : NULL;
  if (bt && !full) return NULL;
  snap_enc *e = &s->enc[s->n];
  if (full) {
    /* The delta gains nothing: this baseline takes the whole encoding. */
    *e = (snap_enc){.base = bt, .d = full->d, .delta = 0};
  } else if ((*err = snapshot_encode(s, 0, s->st->data, s->st->len, &e->d)) ==
             0) {
    e->base = 0;
    e->delta = 0;
  } else {
    return NULL;
  }
  s->n++;
  return e;
}

/* Whether a connection's next state must wait: the one before the last
 * has not yet left its queue (the path takes fewer states than the server
 * makes, and a state queued behind two others would arrive late and
 * stale: it gets the newest state once there is room instead; one state
 * may wait behind another, which a path that takes a whole state in
 * about a tick needs); or, when whole_waits, it needs a whole state and
 * one is still on its way, neither acknowledged nor lost, so another
 * would only take the path's room (and a client joining a busy server
 * would never catch up). */
static int snapshot_must_wait(const snap_conn *sc, int whole_waits,
                              uint64_t now) {
  const snap_sent *prev = &sc->sent[sc->prev_seq % SNAP_SENT_SLOTS];
  if (sc->prev_seq && prev->seq == sc->prev_seq && !prev->lost &&
      prev->written < prev->frags && now - prev->sent_ns < WHOLE_IN_FLIGHT_NS)
    return 1;
  for (size_t i = 0; whole_waits && i < SNAP_SENT_SLOTS; i++) {
    const snap_sent *p = &sc->sent[i];
    if (p->seq && p->whole && !p->lost && p->acked < p->frags &&
        now - p->sent_ns < WHOLE_IN_FLIGHT_NS)
      return 1;
  }
  return 0;
}

int qrpci_dgconn_send_snapshot(qrpci_dgconn *dc, qrpc_snapshot *s) {
  if (!s || s->dg != dc->dg) return QRPC_EINVAL;
  chan *ch = chan_get(dc->dg, s->channel, 0);
  conn_chan *cc = conn_chan_get(dc, s->channel);
  snap_conn *sc = cc ? snap_conn_get(cc) : NULL;
  if (!ch || !ch->opts.snapshot_ring) return QRPC_EINVAL;
  if (!sc) return QRPC_ENOMEM;
  const snap_state *base =
      ring_find(ch->ring, ch->opts.snapshot_ring, sc->acked_tick);
  /* A baseline is older than the state, whatever was acknowledged. */
  if (base && base->tick >= s->st->tick) base = NULL;
  uint64_t now = qrpci_now_ns();
  /* With a ring of one state every state goes whole, and no delta can
   * follow an acknowledgement: neither the limit per tick nor waiting for
   * the last whole state applies; the queue alone holds a state back. */
  int deltas = ch->opts.snapshot_ring > 1;
  int whole_capped =
      !base && deltas && s->whole_sent >= ch->opts.snapshot_whole_per_tick;
  if (whole_capped || snapshot_must_wait(sc, !base && deltas, now)) {
    cc->st.snap_deferred++;
    dc->dg->total.snap_deferred++;
    return QRPC_EAGAIN;
  }
  int err = 0;
  snap_enc *e = snapshot_encoding(s, ch, base, &err);
  if (!e) return err;
  int rv = qrpci_dgconn_send_encoded(dc, e->d);
  if (rv != 0) return rv;
  snap_sent *ss = &sc->sent[e->d->seq % SNAP_SENT_SLOTS];
  sc->prev_seq = sc->last_seq;
  sc->last_seq = e->d->seq;
  *ss = (snap_sent){.seq = e->d->seq,
                    .tick = s->st->tick,
                    .sent_ns = now,
                    .frags = e->d->n,
                    .whole = !e->delta};
  if (!e->delta) s->whole_sent++;
  if (e->delta) {
    cc->st.snap_delta_sent++;
    dc->dg->total.snap_delta_sent++;
  } else {
    cc->st.snap_full_sent++;
    dc->dg->total.snap_full_sent++;
  }
  return 0;
}

int qrpci_dgconn_snapshot_clock(qrpci_dgconn *dc, uint32_t channel,
                                qrpc_snapshot_clock *c) {
  const conn_chan *cc = qrpci_u64map_get(&dc->chans, key(channel));
  const snap_conn *sc = cc ? cc->snap : NULL;
  if (!sc || !sc->have_clock) return QRPC_EAGAIN;
  qrpc_conn_stats st = {0};
  if (dc->conn) qrpc_conn_get_stats(dc->conn, &st);
  int64_t best = sc->best > sc->best_prev ? sc->best : sc->best_prev;
  c->tick = sc->tick;
  c->tick_server_us = sc->tick_server_us;
  c->error_us = st.smoothed_rtt_ns / 2000;
  c->offset_us = best + (int64_t)c->error_us;
  c->server_now_us =
      (uint64_t)((int64_t)(qrpci_now_ns() / 1000) + c->offset_us);
  return 0;
}
