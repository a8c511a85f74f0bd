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

typedef struct conn_chan {
  uint64_t last_seq; /* latest-only: last accepted */
  qrpc_dgram_stats st;
} conn_chan;

struct qrpc_dgram {
  qrpci_dgbuf *buf;
  uint32_t channel;
  uint64_t max_age_ns;
};

void qrpc_dgram_opts_default(qrpc_dgram_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
}

/* Keys are channel + 1 so that channel 0 is a valid id; the transport's
 * lost and aged notices carry the same key as the datagram's id. */
static uint64_t key(uint32_t channel) { return (uint64_t)channel + 1; }

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
  chan *ch = chan_get(dg, channel, 1);
  if (!ch) return QRPC_ENOMEM;
  if (opts)
    ch->opts = *opts;
  else
    qrpc_dgram_opts_default(&ch->opts);
  ch->fn = fn;
  ch->ud = ud;
  return 0;
}

static size_t put_header(uint8_t *out, uint32_t channel, uint64_t seq) {
  size_t n = qrpci_varint_put(out, channel);
  return n + qrpci_varint_put(out + n, seq);
}

int qrpci_dgram_encode(qrpci_dgram *dg, uint32_t channel, qrpci_payload pl,
                       qrpc_dgram **out) {
  if (!out || !qrpci_payload_valid(&pl)) return QRPC_EINVAL;
  chan *ch = chan_get(dg, channel, 1);
  qrpc_dgram *d = ch ? calloc(1, sizeof(*d)) : NULL;
  if (!d) return QRPC_ENOMEM;
  uint8_t hdr[DGRAM_HEADER_MAX];
  size_t hl = put_header(hdr, channel, ch->next_seq);
  if (!(d->buf = qrpci_dgbuf_new(hl + qrpci_payload_len(&pl)))) {
    free(d);
    return QRPC_ENOMEM;
  }
  memcpy(d->buf->data, hdr, hl);
  if (qrpci_payload_write(&pl, d->buf->data + hl) != 0) {
    qrpc_dgram_free(d);
    return QRPC_EINVAL;
  }
  ch->next_seq++;
  d->channel = channel;
  d->max_age_ns = ch->opts.max_age_ms * QRPCI_NS_PER_MS;
  *out = d;
  return 0;
}

void qrpc_dgram_free(qrpc_dgram *d) {
  if (!d) return;
  qrpci_dgbuf_unref(d->buf);
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
  free_values(&dc->chans);
  free(dc);
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
  ch->fn(dc->peer, (uint32_t)channel, seq, data + a + b, len - a - b, ch->ud);
}

int qrpci_dgconn_send_encoded(qrpci_dgconn *dc, const qrpc_dgram *d) {
  if (!d) return QRPC_EINVAL;
  conn_chan *cc = conn_chan_get(dc, d->channel);
  if (!cc) return QRPC_ENOMEM;
  int rv =
      qrpci_conn_queue_dgram(dc->conn, d->buf, key(d->channel), d->max_age_ns);
  qrpc_dgram_stats *total = &dc->dg->total;
  if (rv == 0) {
    cc->st.sent++;
    total->sent++;
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
