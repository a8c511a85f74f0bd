/*
 * Streams: the send buffer ngtcp2 reads from, the stream-kind header, and
 * delivery to the application with flow control that follows the reader.
 */
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "quic/conn.h"
#include "quic/loop.h"
#include "quic/rpcstream.h"
#include "quic/stream.h"
#include "util/log.h"
#include "wire/stream_header.h"

#define CHUNK_MIN (16 * 1024)
#define CHUNK_MAX (256 * 1024)
/* Chunks of CHUNK_MIN bytes a loop keeps for reuse (1 MiB): most streams
 * hold one small message at a time (a delivery to a subscriber, a reply)
 * in a chunk of their own, and freeing and allocating it for each cost a
 * fan-out to 100 subscribers a page fault per delivery, as glibc gave the
 * memory back to the kernel between publishes. */
#define CHUNK_CACHE 64

static void chunk_free(qrpc_loop *loop, qrpci_chunk *ch) {
  if (ch->release) ch->release(ch->owner);
  if (ch->data == ch->mem && ch->cap == CHUNK_MIN &&
      loop->nchunks < CHUNK_CACHE) {
    ch->next = loop->chunks;
    loop->chunks = ch;
    loop->nchunks++;
    return;
  }
  free(ch);
}

void qrpci_loop_free_chunks(qrpc_loop *loop) {
  while (loop->chunks) {
    qrpci_chunk *next = loop->chunks->next;
    free(loop->chunks);
    loop->chunks = next;
  }
  loop->nchunks = 0;
}

qrpc_stream *qrpci_stream_new(qrpc_conn *c, int64_t id, int local) {
  qrpc_stream *s = calloc(1, sizeof(*s));
  if (!s) return NULL;
  s->conn = c;
  s->id = id;
  s->local = local;
  qrpci_list_init(&s->send_node);
  qrpci_list_push_back(&c->streams, &s->node);
  return s;
}

void qrpci_stream_free(qrpc_stream *s) {
  qrpci_list_remove(&s->node);
  if (qrpci_list_linked(&s->send_node)) qrpci_list_remove(&s->send_node);
  while (s->head) {
    qrpci_chunk *next = s->head->next;
    chunk_free(s->conn->loop, s->head);
    s->head = next;
  }
  free(s->hdr);
  free(s->rx);
  free(s);
}

void qrpci_stream_fire_closed(qrpc_stream *s, int error) {
  if (s->closed_fired) return;
  s->closed_fired = 1;
  if (s->has_user && s->cbs.on_closed) s->cbs.on_closed(s, error, s->user_data);
}

/* ---- Sending ---------------------------------------------------------- */

static int has_pending(const qrpc_stream *s) {
  return !s->stopped &&
         (s->sent < s->written || (s->fin_queued && !s->fin_sent));
}

int qrpci_stream_has_pending(qrpc_stream *s) { return has_pending(s); }

static void want_send(qrpc_stream *s) {
  if (!s->data_blocked && has_pending(s) && !qrpci_list_linked(&s->send_node))
    qrpci_list_push_back(&s->conn->sendq, &s->send_node);
  qrpci_loop_mark_dirty(s->conn->loop, s->conn);
}

/* Links chunk n at the tail. Earlier chunks keep whatever room they have
 * left unused: they never move or grow, since ngtcp2 may point into them. */
static void link_chunk(qrpc_stream *s, qrpci_chunk *n) {
  n->next = NULL;
  if (s->tail) {
    s->tail->next = n;
  } else {
    s->head = n;
    s->head_off = s->written;
  }
  if (!s->cur) {
    /* Everything before was sent: sending resumes in this chunk. */
    s->cur = n;
    s->cur_off = s->written;
  }
  s->tail = n;
}

/* Links a new empty chunk of cap bytes at the tail. */
static qrpci_chunk *add_chunk(qrpc_stream *s, size_t cap) {
  qrpc_loop *loop = s->conn->loop;
  qrpci_chunk *n;
  if (cap == CHUNK_MIN && loop->chunks) {
    n = loop->chunks;
    loop->chunks = n->next;
    loop->nchunks--;
  } else if (!(n = malloc(sizeof(*n) + cap))) {
    return NULL;
  }
  n->cap = cap;
  n->len = 0;
  n->data = n->mem;
  n->release = NULL;
  n->owner = NULL;
  link_chunk(s, n);
  return n;
}

static int append(qrpc_stream *s, const uint8_t *data, size_t len) {
  while (len) {
    qrpci_chunk *t = s->tail;
    if (!t || t->len == t->cap) {
      size_t cap = len < CHUNK_MIN ? CHUNK_MIN : len > CHUNK_MAX ? CHUNK_MAX : len;
      if (!(t = add_chunk(s, cap))) return QRPC_ENOMEM;
    }
    size_t k = t->cap - t->len < len ? t->cap - t->len : len;
    memcpy(t->data + t->len, data, k);
    t->len += k;
    s->written += k;
    data += k;
    len -= k;
  }
  return 0;
}

size_t qrpci_stream_pending_vec(qrpc_stream *s, ngtcp2_vec *v, size_t max) {
  size_t n = 0;
  qrpci_chunk *ch = s->cur;
  size_t off = ch ? (size_t)(s->sent - s->cur_off) : 0;
  for (; ch && n < max; ch = ch->next, off = 0) {
    if (off >= ch->len) continue;
    v[n].base = ch->data + off;
    v[n].len = ch->len - off;
    n++;
  }
  return n;
}

void qrpci_stream_advance(qrpc_stream *s, size_t n) {
  s->sent += n;
  while (s->cur && s->sent >= s->cur_off + s->cur->len && s->cur->next) {
    s->cur_off += s->cur->len;
    s->cur = s->cur->next;
  }
  if (!has_pending(s) && qrpci_list_linked(&s->send_node))
    qrpci_list_remove(&s->send_node);
}

size_t qrpc_stream_buffered(qrpc_stream *s) {
  return (size_t)(s->written - s->acked);
}

void qrpci_stream_acked(qrpc_stream *s, uint64_t offset, uint64_t len) {
  if (offset + len <= s->acked) return;
  s->acked = offset + len;
  /* Chunks wholly acknowledged are no longer referenced by ngtcp2. */
  while (s->head && s->head_off + s->head->len <= s->acked &&
         s->head_off + s->head->len <= s->sent) {
    qrpci_chunk *h = s->head;
    if (s->cur == h) {
      s->cur = h->next;
      s->cur_off += h->len;
    }
    if (s->tail == h) s->tail = NULL;
    s->head = h->next;
    s->head_off += h->len;
    chunk_free(s->conn->loop, h);
  }
  if (s->closed_fired || !s->has_user) return;
  if (s->cbs.on_acked && s->acked > s->hdr_len)
    s->cbs.on_acked(s, s->acked - s->hdr_len, s->user_data);
  if (s->write_blocked && !s->closed_fired &&
      qrpc_stream_buffered(s) <= s->conn->opts.stream_send_buffer / 2) {
    s->write_blocked = 0;
    if (s->cbs.on_writable) s->cbs.on_writable(s, s->user_data);
  }
}

static int check_writable(qrpc_stream *s) {
  if (s->closed_fired || s->conn->closed_fired || s->transport_closed)
    return QRPC_ECLOSED;
  if (s->stopped) return QRPC_ERESET;
  if (s->fin_queued) return QRPC_ESTATE;
  return 0;
}

int qrpc_stream_write(qrpc_stream *s, const void *data, size_t len) {
  if (!s || (!data && len)) return QRPC_EINVAL;
  int rv = check_writable(s);
  if (rv != 0) return rv;
  if (qrpc_stream_buffered(s) >= s->conn->opts.stream_send_buffer) {
    if (!s->write_blocked) s->conn->stats.stream_blocked++;
    s->write_blocked = 1;
    return QRPC_EAGAIN;
  }
  if ((rv = append(s, data, len)) != 0) return rv;
  want_send(s);
  return 0;
}

int qrpc_stream_finish(qrpc_stream *s) {
  if (!s) return QRPC_EINVAL;
  int rv = check_writable(s);
  if (rv != 0) return rv;
  s->fin_queued = 1;
  want_send(s);
  return 0;
}

int qrpc_stream_reset(qrpc_stream *s, uint64_t app_error) {
  if (!s) return QRPC_EINVAL;
  if (s->closed_fired || s->conn->closed_fired || s->transport_closed)
    return QRPC_ECLOSED;
  ngtcp2_conn_shutdown_stream(s->conn->q, 0, s->id, app_error);
  s->stopped = 1;
  if (qrpci_list_linked(&s->send_node)) qrpci_list_remove(&s->send_node);
  qrpci_loop_mark_dirty(s->conn->loop, s->conn);
  return 0;
}

/* ---- Receiving -------------------------------------------------------- */

static void give_credit(qrpc_stream *s, size_t n) {
  qrpc_conn *c = s->conn;
  if (!n || !c->q || c->state > QRPCI_CONN_ESTABLISHED) return;
  ngtcp2_conn_extend_max_stream_offset(c->q, s->id, n);
  ngtcp2_conn_extend_max_offset(c->q, n);
}

/* Refuses a stream the peer opened (docs/protocol.md section 2). */
static void refuse(qrpc_stream *s) {
  s->kind_known = -1;
  ngtcp2_conn_shutdown_stream(s->conn->q, 0, s->id,
                              QRPCI_ERR_UNKNOWN_STREAM_KIND);
}

static void offer_raw(qrpc_stream *s, const qrpci_stream_header *h) {
  qrpc_conn *c = s->conn;
  if (!c->cbs.on_stream || c->closed_fired) {
    refuse(s);
    return;
  }
  s->has_user = 1;
  c->cbs.on_stream(c, s, (const char *)h->name, h->name_len, c->user_data);
  if (!s->cbs_set && !s->closed_fired) {
    s->has_user = 0;
    refuse(s);
  }
}

static void offer_rpc(qrpc_stream *s) {
  qrpc_conn *c = s->conn;
  if (!c->rpc_accept || c->closed_fired) {
    refuse(s);
    return;
  }
  s->has_user = 1;
  c->rpc_accept(c, s, c->rpc_accept_ud);
  if (!s->cbs_set && !s->closed_fired) {
    s->has_user = 0;
    refuse(s);
  }
}

/* Parses the stream header from the first bytes; returns how many bytes of
 * data it used, and whether the stream is usable afterwards. */
static size_t parse_header(qrpc_stream *s, const uint8_t *data, size_t len,
                           int fin) {
  if (!s->hdr && !(s->hdr = malloc(QRPCI_STREAM_HEADER_MAX))) {
    qrpci_conn_fail_protocol(s->conn, "out of memory for a stream header");
    return len;
  }
  size_t before = s->hdr_got;
  size_t take = QRPCI_STREAM_HEADER_MAX - before;
  if (take > len) take = len;
  memcpy(s->hdr + before, data, take);
  qrpci_stream_header h;
  size_t used = 0;
  switch (qrpci_stream_header_decode(s->hdr, before + take, &h, &used)) {
  case QRPCI_HDR_NEED_MORE:
    s->hdr_got = before + take;
    if (fin) {
      /* It ended before its header: simply closed, with our FIN. */
      s->kind_known = -1;
      s->fin_queued = 1;
      want_send(s);
    }
    return take;
  case QRPCI_HDR_UNKNOWN_KIND:
    refuse(s);
    return len;
  case QRPCI_HDR_BAD_NAME:
    qrpci_conn_fail_protocol(s->conn,
                             "RAW stream header: name not 1..255 bytes of UTF-8");
    s->kind_known = -1;
    return len;
  case QRPCI_HDR_OK:
    break;
  }
  s->kind_known = 1;
  s->hdr_got = used;
  if (h.kind == QRPCI_STREAM_KIND_RAW)
    offer_raw(s, &h);
  else
    offer_rpc(s);
  return used - before;
}

static int hold(qrpc_stream *s, const uint8_t *data, size_t len) {
  if (s->rx_len + len > s->rx_cap) {
    size_t cap = s->rx_cap ? s->rx_cap : 16384;
    while (cap < s->rx_len + len) cap *= 2;
    uint8_t *p = realloc(s->rx, cap);
    if (!p) return QRPC_ENOMEM;
    s->rx = p;
    s->rx_cap = cap;
  }
  memcpy(s->rx + s->rx_len, data, len);
  s->rx_len += len;
  return 0;
}

int qrpci_stream_recv(qrpc_stream *s, uint32_t flags, const uint8_t *data,
                      size_t len) {
  int fin = (flags & NGTCP2_STREAM_DATA_FLAG_FIN) != 0;
  if (s->kind_known == 0) {
    size_t used = parse_header(s, data, len, fin);
    give_credit(s, used);
    data += used;
    len -= used;
  }
  if (s->kind_known != 1 || !s->has_user || s->closed_fired) {
    /* Refused, ignored or abandoned: keep the peer's credit flowing so the
     * connection window is not eaten by a stream nobody reads. */
    give_credit(s, len);
    return 0;
  }
  if (fin) s->fin_received = 1;
  int early = (flags & NGTCP2_STREAM_DATA_FLAG_0RTT) ||
              !s->conn->established_fired;
  if (s->paused || s->rx_len) {
    /* Held bytes get no credit back: the peer's window bounds them. */
    if (len) s->held_early |= early;
    return hold(s, data, len) == 0 ? 0 : QRPC_ENOMEM;
  }
  size_t rest = 0;
  if (len || fin) {
    s->fin_delivered = fin;
    s->rx_early = early;
    s->rest = 0;
    if (s->cbs.on_read) s->cbs.on_read(s, data, len, fin, s->user_data);
    s->rx_early = 0;
    if ((rest = s->rest) != 0) {
      s->rest = 0;
      s->fin_delivered = 0;
      s->held_early |= early;
      if (hold(s, data + len - rest, rest) != 0) return QRPC_ENOMEM;
    }
  }
  give_credit(s, len - rest);
  return 0;
}

void qrpci_stream_hold_rest(qrpc_stream *s, size_t n) {
  s->rest = n;
  s->paused = 1;
}

void qrpci_stream_deliver_held(qrpc_stream *s) {
  size_t n = s->rx_len;
  if (!s->closed_fired && s->has_user &&
      (n || (s->fin_received && !s->fin_delivered))) {
    int fin = s->fin_received;
    s->fin_delivered = fin;
    s->rx_len = 0;
    s->rx_early = s->held_early;
    s->held_early = 0;
    s->rest = 0;
    if (s->cbs.on_read) s->cbs.on_read(s, s->rx, n, fin, s->user_data);
    size_t rest = s->rest;
    if (rest) {
      /* Still not used: they stay first in line. */
      s->rest = 0;
      s->fin_delivered = 0;
      s->held_early = s->rx_early;
      memmove(s->rx, s->rx + n - rest, rest);
      s->rx_len = rest;
    }
    s->rx_early = 0;
    give_credit(s, n - rest);
    qrpci_loop_mark_read(s->conn->loop, s->conn);
  }
  if (s->transport_closed && !s->paused && !s->rx_len) {
    qrpc_conn *c = s->conn;
    qrpci_stream_fire_closed(s, s->close_error);
    qrpci_stream_free(s);
    qrpci_conn_check_shutdown(c);
  }
}

void qrpci_stream_transport_closed(qrpc_stream *s, int error) {
  s->transport_closed = 1;
  s->close_error = error;
  if (s->has_user && !s->closed_fired &&
      (s->rx_len || (s->fin_received && !s->fin_delivered)))
    return; /* held bytes first; deliver_held finishes the job */
  qrpc_conn *c = s->conn;
  ngtcp2_conn_set_stream_user_data(c->q, s->id, NULL);
  qrpci_stream_fire_closed(s, error);
  qrpci_stream_free(s);
  qrpci_conn_check_shutdown(c);
}

int qrpci_stream_rx_early(qrpc_stream *s) { return s->rx_early; }

uint64_t qrpci_stream_rx_ns(qrpc_stream *s) { return s->conn->rx_ns; }

int qrpci_stream_restart(qrpc_stream *s) {
  qrpc_conn *c = s->conn;
  if (s->acked || s->head_off || s->stopped) return QRPC_ESTATE;
  int64_t sid;
  if (ngtcp2_conn_open_bidi_stream(c->q, &sid, NULL) != 0) return QRPC_ELIMIT;
  s->id = sid;
  ngtcp2_conn_set_stream_user_data(c->q, sid, s);
  s->sent = 0;
  s->cur = s->head;
  s->cur_off = 0;
  s->fin_sent = 0;
  s->data_blocked = 0;
  want_send(s);
  return 0;
}

void qrpc_stream_pause_read(qrpc_stream *s, int paused) {
  s->paused = paused != 0;
  if (!s->paused &&
      (s->rx_len || (s->fin_received && !s->fin_delivered) ||
       s->transport_closed)) {
    s->conn->resume_pending = 1;
    qrpci_loop_mark_dirty(s->conn->loop, s->conn);
  }
}

/* ---- Opening and accessors -------------------------------------------- */

static int open_with_header(qrpc_conn *c, const uint8_t *hdr, size_t hlen,
                            const qrpc_stream_callbacks *cbs, void *user_data,
                            qrpc_stream **out) {
  if (c->closed_fired || c->state > QRPCI_CONN_ESTABLISHED) return QRPC_ECLOSED;
  /* A client resuming with 0-RTT may open streams before the handshake
   * completes. */
  if ((!c->established_fired && !(c->early && !c->is_server)) ||
      c->shutting_down)
    return QRPC_ESTATE;
  int64_t sid;
  int rv = ngtcp2_conn_open_bidi_stream(c->q, &sid, NULL);
  if (rv == NGTCP2_ERR_STREAM_ID_BLOCKED) return QRPC_ELIMIT;
  if (rv != 0) return QRPC_ECLOSED;
  qrpc_stream *s = qrpci_stream_new(c, sid, 1);
  if (!s || append(s, hdr, hlen) != 0) {
    if (s) qrpci_stream_free(s);
    ngtcp2_conn_shutdown_stream(c->q, 0, sid, QRPCI_ERR_INTERNAL_ERROR);
    return QRPC_ENOMEM;
  }
  ngtcp2_conn_set_stream_user_data(c->q, sid, s);
  s->kind_known = 1;
  s->hdr_len = hlen;
  s->has_user = 1;
  qrpc_stream_set_callbacks(s, cbs, user_data);
  want_send(s);
  *out = s;
  return 0;
}

int qrpc_stream_open(qrpc_conn *c, const char *name,
                     const qrpc_stream_callbacks *cbs, void *user_data,
                     qrpc_stream **out) {
  if (!c || !name || !out) return QRPC_EINVAL;
  uint8_t hdr[QRPCI_STREAM_HEADER_MAX];
  size_t hlen = qrpci_stream_header_encode_raw(hdr, name, strlen(name));
  if (hlen == 0) return QRPC_EINVAL;
  return open_with_header(c, hdr, hlen, cbs, user_data, out);
}

int qrpci_stream_open_rpc(qrpc_conn *c, const qrpc_stream_callbacks *cbs,
                          void *user_data, qrpc_stream **out) {
  static const uint8_t kind = QRPCI_STREAM_KIND_RPC;
  if (!c || !out) return QRPC_EINVAL;
  return open_with_header(c, &kind, 1, cbs, user_data, out);
}

uint8_t *qrpci_stream_reserve(qrpc_stream *s, size_t n) {
  if (check_writable(s) != 0) return NULL;
  qrpci_chunk *t = s->tail;
  if (t && t->cap - t->len >= n) return t->data + t->len;
  t = add_chunk(s, n < CHUNK_MIN ? CHUNK_MIN : n);
  return t ? t->data : NULL;
}

void qrpci_stream_commit(qrpc_stream *s, size_t n) {
  s->tail->len += n;
  s->written += n;
  want_send(s);
}

int qrpci_stream_commit_given(qrpc_stream *s, size_t n, const uint8_t *data,
                              size_t len, void (*release)(void *owner),
                              void *owner) {
  qrpci_chunk *g = malloc(sizeof(*g));
  if (!g) return QRPC_ENOMEM;
  s->tail->len += n;
  s->written += n;
  /* Full from the start: later writes go to a new chunk after it. */
  g->cap = g->len = len;
  g->data = (uint8_t *)data;
  g->release = release;
  g->owner = owner;
  link_chunk(s, g);
  s->written += len;
  want_send(s);
  return 0;
}

int qrpci_stream_congested(qrpc_stream *s) {
  if (qrpc_stream_buffered(s) < s->conn->opts.stream_send_buffer) return 0;
  if (!s->write_blocked) s->conn->stats.stream_blocked++;
  s->write_blocked = 1;
  return 1;
}

void qrpc_stream_set_callbacks(qrpc_stream *s, const qrpc_stream_callbacks *cbs,
                               void *user_data) {
  if (cbs) s->cbs = *cbs;
  s->user_data = user_data;
  s->cbs_set = 1;
}

void *qrpc_stream_user_data(qrpc_stream *s) { return s->user_data; }
qrpc_conn *qrpc_stream_conn(qrpc_stream *s) { return s->conn; }
int64_t qrpc_stream_id(qrpc_stream *s) { return s->id; }
