/*
 * Datagram channels: Channel and Seq in front of each payload, per-channel
 * sequence numbers, latest-only filtering, age limits and counters
 * (docs/protocol.md section 4).
 */
#include "dgram/channel.h"

#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "quic/dgqueue.h"
#include "util/clock.h"
#include "util/u64map.h"
#include "util/varint.h"
#include "wire/protocol.h"

/* Channel (at most 5 bytes for a uint32) and Seq (at most 8). */
#define DGRAM_HEADER_MAX (5 + 8)

struct qrpci_dgram {
  qrpci_u64map chans; /* channel + 1 -> chan */
  qrpc_dgram_stats total; /* all channels of all connections */
};

typedef struct chan {
  qrpc_dgram_opts opts;
  qrpc_dgram_fn fn;
  void *ud;
  uint64_t next_seq; /* the sender's counter, shared by all connections */
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

typedef struct conn_chan {
  uint64_t last_seq; /* latest-only: last accepted */
  qrpc_dgram_stats st;
  partial *parts; /* fragmented channels: oldest first */
} conn_chan;

struct qrpc_dgram {
  uint32_t channel;
  uint64_t max_age_ns;
  size_t n; /* datagrams: 1, or the fragments of one message */
  qrpci_dgbuf *bufs[];
};

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
  free_values(&dg->chans);
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
  if (o.max_message > QRPC_DGRAM_MAX_MESSAGE) return QRPC_EINVAL;
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

/* The counters a lost or aged notice is about: its id is the channel's
 * key. */
static qrpc_dgram_stats *noticed(void *ud, uint64_t id) {
  conn_chan *cc = id ? qrpci_u64map_get(&((qrpci_dgconn *)ud)->chans, id)
                     : NULL;
  return cc ? &cc->st : NULL;
}

static void on_lost(qrpc_conn *c, uint64_t id, void *ud) {
  qrpc_dgram_stats *st = noticed(ud, id);
  if (!st) return;
  st->lost++;
  ((qrpci_dgconn *)ud)->dg->total.lost++;
}

static void on_aged(qrpc_conn *c, uint64_t id, void *ud) {
  qrpc_dgram_stats *st = noticed(ud, id);
  if (!st) return;
  st->dropped_aged++;
  ((qrpci_dgconn *)ud)->dg->total.dropped_aged++;
}

qrpci_dgconn *qrpci_dgconn_new(qrpci_dgram *dg, qrpc_conn *conn,
                               qrpc_peer *peer) {
  qrpci_dgconn *dc = calloc(1, sizeof(*dc));
  if (!dc) return NULL;
  dc->dg = dg;
  dc->conn = conn;
  dc->peer = peer;
  qrpci_u64map_init(&dc->chans);
  qrpci_dgram_hooks h = {.lost = on_lost, .aged = on_aged, .ud = dc};
  qrpci_conn_set_dgram_hooks(conn, &h);
  return dc;
}

void qrpci_dgconn_free(qrpci_dgconn *dc) {
  if (!dc) return;
  conn_chan *cc;
  while ((cc = qrpci_u64map_pop(&dc->chans))) {
    free_partials(cc);
    free(cc);
  }
  free_values(&dc->chans);
  free(dc);
}

/* A whole message arrived (in one datagram, or reassembled): latest-only
 * filtering, counters, and the channel's function. */
static void deliver(qrpci_dgconn *dc, chan *ch, conn_chan *cc, uint32_t channel,
                    uint64_t seq, const uint8_t *msg, size_t len) {
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
  if (ch->opts.max_message)
    recv_fragment(dc, ch, cc, (uint32_t)channel, seq, data + a + b,
                  len - a - b);
  else
    deliver(dc, ch, cc, (uint32_t)channel, seq, data + a + b, len - a - b);
}

int qrpci_dgconn_send_encoded(qrpci_dgconn *dc, const qrpc_dgram *d) {
  if (!d) return QRPC_EINVAL;
  conn_chan *cc = conn_chan_get(dc, d->channel);
  if (!cc) return QRPC_ENOMEM;
  int rv = 0;
  /* Several fragments go whole or not at all; the first is the largest. */
  if (d->n > 1 && qrpci_conn_dgram_room(dc->conn) < d->n &&
      qrpci_conn_dgram_room(dc->conn) > 0)
    rv = QRPC_ENOBUFS;
  size_t queued = 0;
  while (rv == 0 && queued < d->n) {
    rv = qrpci_conn_queue_dgram(dc->conn, d->bufs[queued], key(d->channel),
                                d->max_age_ns);
    if (rv == 0) queued++;
  }
  qrpc_dgram_stats *total = &dc->dg->total;
  if (rv == 0) {
    cc->st.sent += queued;
    total->sent += queued;
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
  size_t max = qrpc_conn_max_datagram_size(dc->conn);
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
