/*
 * Datagram channels: Channel and Seq in front of each payload, per-channel
 * sequence numbers, latest-only filtering, age limits and counters
 * (docs/protocol.md section 4).
 */
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "quic/rpcglue.h"
#include "rpc/engine.h"
#include "util/clock.h"
#include "util/varint.h"

/* Channel (at most 5 bytes for a uint32) and Seq (at most 8). */
#define DGRAM_HEADER_MAX (5 + 8)

typedef struct qrpci_dgchan {
  qrpc_dgram_opts opts;
  qrpc_dgram_fn fn;
  void *ud;
  uint64_t next_seq; /* the sender's counter, shared by all peers */
} qrpci_dgchan;

typedef struct qrpci_dgpeer {
  uint64_t last_seq; /* latest-only: last accepted */
  qrpc_dgram_stats st;
} qrpci_dgpeer;

struct qrpc_dgram {
  qrpci_dgbuf *buf;
  uint32_t channel;
  uint64_t max_age_ns;
};

void qrpc_dgram_opts_default(qrpc_dgram_opts *o) {
  memset(o, 0, sizeof(*o));
  o->size = sizeof(*o);
}

/* Keys are channel + 1 so that channel 0 is a valid id. */
static uint64_t key(uint32_t channel) { return (uint64_t)channel + 1; }

static qrpci_dgchan *chan_get(qrpci_core *core, uint32_t channel, int create) {
  qrpci_dgchan *ch = qrpci_u64map_get(&core->dgchans, key(channel));
  if (ch || !create) return ch;
  if (!(ch = calloc(1, sizeof(*ch)))) return NULL;
  qrpc_dgram_opts_default(&ch->opts);
  ch->next_seq = 1;
  if (qrpci_u64map_put(&core->dgchans, key(channel), ch) != 0) {
    free(ch);
    return NULL;
  }
  return ch;
}

static qrpci_dgpeer *peer_chan(qrpc_peer *peer, uint32_t channel) {
  qrpci_dgpeer *pc = qrpci_u64map_get(&peer->dgstats, key(channel));
  if (pc) return pc;
  if (!(pc = calloc(1, sizeof(*pc)))) return NULL;
  if (qrpci_u64map_put(&peer->dgstats, key(channel), pc) != 0) {
    free(pc);
    return NULL;
  }
  return pc;
}

int qrpci_dgram_register(qrpci_core *core, uint32_t channel,
                         const qrpc_dgram_opts *opts, qrpc_dgram_fn fn,
                         void *ud) {
  if (opts && opts->size != sizeof(*opts)) return QRPC_EINVAL;
  qrpci_dgchan *ch = chan_get(core, channel, 1);
  if (!ch) return QRPC_ENOMEM;
  if (opts)
    ch->opts = *opts;
  else
    qrpc_dgram_opts_default(&ch->opts);
  ch->fn = fn;
  ch->ud = ud;
  return 0;
}

void qrpci_dgram_core_cleanup(qrpci_core *core) {
  void *v;
  while ((v = qrpci_u64map_pop(&core->dgchans))) free(v);
  qrpci_u64map_free(&core->dgchans);
}

/* Notices from the transport carry channel + 1 as the datagram id. */
static void on_lost(qrpc_conn *c, uint64_t id, void *ud) {
  qrpci_dgpeer *pc = id ? qrpci_u64map_get(&((qrpc_peer *)ud)->dgstats, id)
                        : NULL;
  if (pc) pc->st.lost++;
}

static void on_aged(qrpc_conn *c, uint64_t id, void *ud) {
  qrpci_dgpeer *pc = id ? qrpci_u64map_get(&((qrpc_peer *)ud)->dgstats, id)
                        : NULL;
  if (pc) pc->st.dropped_aged++;
}

void qrpci_dgram_peer_init(qrpc_peer *peer) {
  qrpci_u64map_init(&peer->dgstats);
  qrpci_dgram_hooks h = {.lost = on_lost, .aged = on_aged, .ud = peer};
  qrpci_conn_set_dgram_hooks(peer->conn, &h);
}

void qrpci_dgram_peer_cleanup(qrpc_peer *peer) {
  void *v;
  while ((v = qrpci_u64map_pop(&peer->dgstats))) free(v);
  qrpci_u64map_free(&peer->dgstats);
}

void qrpci_dgram_recv(qrpc_peer *peer, const uint8_t *data, size_t len) {
  uint64_t channel, seq;
  size_t a = qrpci_varint_get(data, len, &channel);
  size_t b = a ? qrpci_varint_get(data + a, len - a, &seq) : 0;
  if (!a || !b || seq == 0) {
    peer->dg_malformed++;
    return;
  }
  qrpci_dgchan *ch =
      channel <= UINT32_MAX ? chan_get(peer->core, (uint32_t)channel, 0) : NULL;
  if (!ch || !ch->fn) {
    /* Counted, not fatal: a peer may be newer than this build. */
    peer->dg_unknown++;
    return;
  }
  qrpci_dgpeer *pc = peer_chan(peer, (uint32_t)channel);
  if (!pc) return;
  pc->st.received++;
  if (ch->opts.latest_only && seq <= pc->last_seq) {
    pc->st.dropped_stale++;
    return;
  }
  if (seq > pc->last_seq) pc->last_seq = seq;
  pc->st.delivered++;
  ch->fn(peer, (uint32_t)channel, seq, data + a + b, len - a - b, ch->ud);
}

static size_t put_header(uint8_t *out, uint32_t channel, uint64_t seq) {
  size_t n = qrpci_varint_put(out, channel);
  return n + qrpci_varint_put(out + n, seq);
}

int qrpci_dgram_encode(qrpci_core *core, uint32_t channel,
                       const qrpci_payload *pl, qrpc_dgram **out) {
  if (!out) return QRPC_EINVAL;
  qrpci_dgchan *ch = chan_get(core, channel, 1);
  qrpc_dgram *d = ch ? calloc(1, sizeof(*d)) : NULL;
  if (!d) return QRPC_ENOMEM;
  uint8_t hdr[DGRAM_HEADER_MAX];
  size_t hl = put_header(hdr, channel, ch->next_seq);
  size_t len = qrpci_payload_len(pl);
  if (!(d->buf = qrpci_dgbuf_new(hl + len))) {
    free(d);
    return QRPC_ENOMEM;
  }
  memcpy(d->buf->data, hdr, hl);
  if (qrpci_payload_write(pl, d->buf->data + hl) != 0) {
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

int qrpc_peer_send_encoded(qrpc_peer *peer, const qrpc_dgram *d) {
  if (!peer || !d) return QRPC_EINVAL;
  if (peer->closed) return QRPC_ECLOSED;
  qrpci_dgpeer *pc = peer_chan(peer, d->channel);
  if (!pc) return QRPC_ENOMEM;
  int rv = qrpci_conn_queue_dgram(peer->conn, d->buf, key(d->channel),
                                  d->max_age_ns);
  if (rv == 0)
    pc->st.sent++;
  else if (rv == QRPC_EMSGSIZE)
    pc->st.refused_too_large++;
  else if (rv == QRPC_ENOBUFS)
    pc->st.refused_queue_full++;
  return rv;
}

static int send_payload(qrpc_peer *peer, uint32_t channel,
                        const qrpci_payload *pl) {
  if (!peer) return QRPC_EINVAL;
  if (peer->closed) return QRPC_ECLOSED;
  qrpc_dgram *d;
  int rv = qrpci_dgram_encode(peer->core, channel, pl, &d);
  if (rv != 0) return rv;
  rv = qrpc_peer_send_encoded(peer, d);
  qrpc_dgram_free(d);
  return rv;
}

int qrpc_peer_send_dgram(qrpc_peer *peer, uint32_t channel, const void *payload,
                         size_t len) {
  qrpci_payload pl;
  if (qrpci_payload_bytes(&pl, payload, len) != 0) return QRPC_EINVAL;
  return send_payload(peer, channel, &pl);
}

int qrpc_peer_send_dgram_msg(qrpc_peer *peer, uint32_t channel,
                             const qrpc_msg *m) {
  qrpci_payload pl;
  if (qrpci_payload_msg(&pl, m) != 0) return QRPC_EINVAL;
  return send_payload(peer, channel, &pl);
}

size_t qrpc_peer_max_dgram_payload(qrpc_peer *peer, uint32_t channel) {
  size_t max = qrpc_conn_max_datagram_size(peer->conn);
  /* The largest Seq header keeps the answer valid for the channel's life. */
  size_t hl = qrpci_varint_len(channel) + QRPCI_VARINT_MAXLEN;
  return max > hl ? max - hl : 0;
}

void qrpc_peer_dgram_count_undecodable(qrpc_peer *peer, uint32_t channel) {
  /* The entry exists once a datagram was delivered on the channel. */
  qrpci_dgpeer *pc =
      peer ? qrpci_u64map_get(&peer->dgstats, key(channel)) : NULL;
  if (pc && pc->st.dropped_undecodable < pc->st.delivered)
    pc->st.dropped_undecodable++;
}

void qrpc_peer_dgram_stats(qrpc_peer *peer, uint32_t channel,
                           qrpc_dgram_stats *st) {
  qrpci_dgpeer *pc = qrpci_u64map_get(&peer->dgstats, key(channel));
  if (pc)
    *st = pc->st;
  else
    memset(st, 0, sizeof(*st));
  st->dropped_unknown = peer->dg_unknown;
  st->dropped_malformed = peer->dg_malformed;
}
