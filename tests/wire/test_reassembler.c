/* Frame reassembly from a byte stream that arrives in arbitrary pieces. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "util/varint.h"
#include "wire/frame.h"
#include "wire/reassembler.h"

#define MAX_FRAME (1u << 20)
#define MAX_FRAMES 64

/* ---- a stream of frames and what the receiver must see ----------------- */

typedef struct stream {
  uint8_t *bytes;
  size_t len;
  size_t n_frames;
  size_t body_off[MAX_FRAMES]; /* where each body starts in bytes */
  size_t body_len[MAX_FRAMES];
  size_t frame_end[MAX_FRAMES]; /* offset just past each frame */
} stream;

static void append(stream *s, const uint8_t *p, size_t n) {
  s->bytes = realloc(s->bytes, s->len + n);
  memcpy(s->bytes + s->len, p, n);
  s->len += n;
}

/* Appends a frame whose Length is written in prefix_len bytes, which may be
 * longer than needed: QUIC varints allow it and receivers must accept it. */
static void add_body(stream *s, const uint8_t *body, size_t n,
                     size_t prefix_len) {
  static const uint8_t tag[] = {0, 0x00, 0x40, 0, 0x80, 0, 0, 0, 0xc0};
  uint8_t prefix[QRPCI_VARINT_MAXLEN];
  uint64_t v = n;
  ck_assert_uint_lt(s->n_frames, MAX_FRAMES);
  for (size_t i = prefix_len; i > 0; i--, v >>= 8) prefix[i - 1] = (uint8_t)v;
  prefix[0] |= tag[prefix_len];
  append(s, prefix, prefix_len);
  s->body_off[s->n_frames] = s->len;
  s->body_len[s->n_frames] = n;
  append(s, body, n);
  s->frame_end[s->n_frames++] = s->len;
}

static void add_frame(stream *s, const qrpci_frame *f) {
  size_t n = qrpci_frame_encoded_len(f);
  uint8_t *out = malloc(n);
  uint64_t body_len;
  ck_assert_uint_eq(qrpci_frame_encode(out, n, f), n);
  size_t vl = qrpci_varint_get(out, n, &body_len);
  add_body(s, out + vl, (size_t)body_len, vl);
  free(out);
}

static void add_reply(stream *s, uint64_t msgid, size_t payload_len) {
  uint8_t *payload = malloc(payload_len ? payload_len : 1);
  for (size_t i = 0; i < payload_len; i++)
    payload[i] = (uint8_t)(msgid * 31 + i);
  qrpci_frame f = {.type = QRPCI_FRAME_REPLY,
                   .msgid = msgid,
                   .payload = payload,
                   .payload_len = payload_len};
  add_frame(s, &f);
  free(payload);
}

/* Frames of every type and of sizes whose Length takes 1, 2 and 4 bytes,
 * plus one Length written in 8 bytes. */
static stream mixed_stream(void) {
  stream s = {0};
  static const size_t sizes[] = {0,   1,    61,    62,    63,    64,
                                 200, 1500, 16380, 16390, 70000, 3};
  qrpci_frame f = {.type = QRPCI_FRAME_REQUEST,
                   .msgid = 1,
                   .method = 0x393c3e51,
                   .timeout_ms = 5000,
                   .payload = (const uint8_t *)"\x0a\x04qrpc",
                   .payload_len = 6};
  add_frame(&s, &f);
  f = (qrpci_frame){.type = QRPCI_FRAME_NOTIFY, .method = 7};
  add_frame(&s, &f);
  f = (qrpci_frame){.type = QRPCI_FRAME_ERROR,
                    .msgid = 2,
                    .status = 4,
                    .detail = (const uint8_t *)"too slow",
                    .detail_len = 8};
  add_frame(&s, &f);
  f = (qrpci_frame){.type = QRPCI_FRAME_CANCEL, .msgid = 3};
  add_frame(&s, &f);
  f = (qrpci_frame){.type = QRPCI_FRAME_ITEM,
                    .msgid = 4,
                    .payload = (const uint8_t *)"item",
                    .payload_len = 4};
  add_frame(&s, &f);
  f = (qrpci_frame){.type = QRPCI_FRAME_END, .msgid = 4};
  add_frame(&s, &f);
  for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++)
    add_reply(&s, 10 + i, sizes[i]);
  f = (qrpci_frame){.type = QRPCI_FRAME_GOAWAY, .last_msgid = 9};
  add_frame(&s, &f);
  const uint8_t cancel[] = {QRPCI_FRAME_CANCEL, 0x05};
  add_body(&s, cancel, sizeof(cancel), 8);
  return s;
}

/* ---- the receiving side ------------------------------------------------ */

typedef struct seen {
  size_t count;
  uint8_t *body[MAX_FRAMES];
  size_t len[MAX_FRAMES];
  size_t in_place; /* bodies handed over inside the fed piece */
  const uint8_t *piece;
  size_t piece_len;
  size_t stop_at; /* return stop_rc for the frame with this count */
  int stop_rc;
} seen;

static int on_frame(void *ctx, const uint8_t *body, size_t len) {
  seen *w = ctx;
  ck_assert_uint_gt(len, 0);
  ck_assert_uint_lt(w->count, MAX_FRAMES);
  if (body >= w->piece && body + len <= w->piece + w->piece_len) w->in_place++;
  w->body[w->count] = malloc(len);
  memcpy(w->body[w->count], body, len);
  w->len[w->count] = len;
  w->count++;
  return w->count == w->stop_at ? w->stop_rc : 0;
}

static int feed(qrpci_reasm *r, seen *w, const uint8_t *p, size_t n,
                const char **why) {
  w->piece = p;
  w->piece_len = n;
  return qrpci_reasm_feed(r, p, n, on_frame, w, why);
}

/* Feeds p[0..n) from an exactly sized heap copy, so a sanitizer build
 * catches a read past the piece or a pointer kept after it. */
static int feed_copy(qrpci_reasm *r, seen *w, const uint8_t *p, size_t n,
                     const char **why) {
  uint8_t *copy = malloc(n ? n : 1);
  memcpy(copy, p, n);
  int rc = feed(r, w, copy, n, why);
  free(copy);
  return rc;
}

static void assert_frames(const seen *w, const stream *s, size_t n) {
  ck_assert_uint_eq(w->count, n);
  for (size_t i = 0; i < n; i++) {
    ck_assert_uint_eq(w->len[i], s->body_len[i]);
    ck_assert_mem_eq(w->body[i], s->bytes + s->body_off[i], w->len[i]);
  }
}

static void seen_free(seen *w) {
  for (size_t i = 0; i < w->count; i++) free(w->body[i]);
  w->count = 0;
}

/* Small deterministic generator, so a failing split pattern can be replayed
 * from its seed. */
static uint64_t next_rand(uint64_t *state) {
  uint64_t z = (*state += UINT64_C(0x9e3779b97f4a7c15));
  z = (z ^ (z >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
  z = (z ^ (z >> 27)) * UINT64_C(0x94d049bb133111eb);
  return z ^ (z >> 31);
}

/* ---- same frames however the bytes arrive ------------------------------ */

START_TEST(test_coalesced) {
  stream s = mixed_stream();
  qrpci_reasm r;
  seen w = {0};
  const char *why = NULL;
  qrpci_reasm_init(&r, MAX_FRAME);
  ck_assert_int_eq(feed(&r, &w, s.bytes, s.len, &why), 0);
  assert_frames(&w, &s, s.n_frames);
  /* All of them lay wholly in the piece: handed over without a copy. */
  ck_assert_uint_eq(w.in_place, s.n_frames);
  ck_assert_uint_eq(qrpci_reasm_buffered(&r), 0);
  ck_assert_int_eq(qrpci_reasm_finish(&r), 0);
  qrpci_reasm_free(&r);
  seen_free(&w);
  free(s.bytes);
}
END_TEST

START_TEST(test_byte_by_byte) {
  stream s = mixed_stream();
  qrpci_reasm r;
  seen w = {0};
  const char *why = NULL;
  qrpci_reasm_init(&r, MAX_FRAME);
  for (size_t i = 0; i < s.len; i++) {
    ck_assert_int_eq(feed_copy(&r, &w, s.bytes + i, 1, &why), 0);
    ck_assert_uint_le(qrpci_reasm_buffered(&r), MAX_FRAME);
  }
  assert_frames(&w, &s, s.n_frames);
  ck_assert_int_eq(qrpci_reasm_finish(&r), 0);
  qrpci_reasm_free(&r);
  seen_free(&w);
  free(s.bytes);
}
END_TEST

/* _i is the seed. Pieces are mostly small, sometimes large, so frames are
 * both split and coalesced, and Length fields are split too. */
START_TEST(test_random_splits) {
  stream s = mixed_stream();
  uint64_t rng = (uint64_t)_i;
  qrpci_reasm r;
  seen w = {0};
  const char *why = NULL;
  qrpci_reasm_init(&r, MAX_FRAME);
  size_t off = 0;
  while (off < s.len) {
    uint64_t x = next_rand(&rng);
    size_t n =
        (x & 3) ? 1 + (size_t)(x >> 8) % 17 : 1 + (size_t)(x >> 8) % 40000;
    if (n > s.len - off) n = s.len - off;
    ck_assert_int_eq(feed_copy(&r, &w, s.bytes + off, n, &why), 0);
    ck_assert_uint_le(qrpci_reasm_buffered(&r), MAX_FRAME);
    off += n;
  }
  assert_frames(&w, &s, s.n_frames);
  ck_assert_int_eq(qrpci_reasm_finish(&r), 0);
  qrpci_reasm_free(&r);
  seen_free(&w);
  free(s.bytes);
}
END_TEST

/* A stream cut anywhere: every complete frame is delivered, the rest waits
 * without error (qrpci_reasm_in_frame() says a frame is under way), and
 * only the end of the stream turns a partial frame into a protocol
 * violation. */
START_TEST(test_truncated_at_every_byte) {
  stream s = {0};
  qrpci_frame f = {.type = QRPCI_FRAME_ERROR,
                   .msgid = 300,
                   .status = 14,
                   .detail = (const uint8_t *)"draining",
                   .detail_len = 8};
  add_frame(&s, &f);
  add_reply(&s, 301, 70); /* Length takes 2 bytes */
  f = (qrpci_frame){.type = QRPCI_FRAME_GOAWAY, .last_msgid = 16384};
  add_frame(&s, &f);

  for (size_t k = 0; k <= s.len; k++) {
    for (int bytewise = 0; bytewise < 2; bytewise++) {
      qrpci_reasm r;
      seen w = {0};
      const char *why = NULL;
      size_t complete = 0, step = bytewise ? 1 : (k ? k : 1);
      qrpci_reasm_init(&r, MAX_FRAME);
      for (size_t off = 0; off < k; off += step) {
        size_t n = k - off < step ? k - off : step;
        ck_assert_int_eq(feed_copy(&r, &w, s.bytes + off, n, &why), 0);
      }
      while (complete < s.n_frames && s.frame_end[complete] <= k) complete++;
      assert_frames(&w, &s, complete);
      int at_boundary =
          k == 0 || (complete > 0 && s.frame_end[complete - 1] == k);
      ck_assert_int_eq(qrpci_reasm_in_frame(&r), !at_boundary);
      ck_assert_int_eq(qrpci_reasm_finish(&r), at_boundary ? 0 : QRPC_EPROTO);
      qrpci_reasm_free(&r);
      seen_free(&w);
    }
  }
  free(s.bytes);
}
END_TEST

/* ---- limits -------------------------------------------------------------- */

/* A 1 GiB Length is refused the moment it is read, before the body arrives:
 * nothing is buffered, nothing is delivered. */
START_TEST(test_too_large_before_buffering) {
  const uint8_t gib[] = {0x80, 0x40, 0x00, 0x00}; /* Length 2^30 */
  qrpci_reasm r;
  seen w = {0};
  const char *why = NULL;

  qrpci_reasm_init(&r, MAX_FRAME);
  ck_assert_int_eq(feed(&r, &w, gib, sizeof(gib), &why), QRPC_EMSGSIZE);
  ck_assert_ptr_nonnull(why);
  ck_assert_uint_eq(qrpci_reasm_buffered(&r), 0);
  ck_assert_uint_eq(w.count, 0);
  qrpci_reasm_free(&r);

  /* Same when the Length itself arrives one byte at a time. */
  qrpci_reasm_init(&r, MAX_FRAME);
  for (size_t i = 0; i + 1 < sizeof(gib); i++)
    ck_assert_int_eq(feed(&r, &w, gib + i, 1, &why), 0);
  ck_assert_int_eq(feed(&r, &w, gib + 3, 1, &why), QRPC_EMSGSIZE);
  ck_assert_uint_eq(qrpci_reasm_buffered(&r), 0);
  qrpci_reasm_free(&r);

  /* And when body bytes follow in the same piece. */
  uint8_t piece[4096] = {0x80, 0x40, 0x00, 0x00, QRPCI_FRAME_REPLY, 0x01};
  qrpci_reasm_init(&r, MAX_FRAME);
  ck_assert_int_eq(feed(&r, &w, piece, sizeof(piece), &why), QRPC_EMSGSIZE);
  ck_assert_uint_eq(qrpci_reasm_buffered(&r), 0);
  ck_assert_uint_eq(w.count, 0);
  qrpci_reasm_free(&r);
}
END_TEST

/* Length exactly at the limit is a frame; one more is too large. */
START_TEST(test_limit_is_inclusive) {
  const size_t limit = 5000;
  uint8_t *body = calloc(1, limit + 1);
  body[0] = QRPCI_FRAME_REPLY;
  stream ok = {0}, over = {0};
  add_body(&ok, body, limit, 2);
  add_body(&over, body, limit + 1, 2);

  qrpci_reasm r;
  seen w = {0};
  const char *why = NULL;
  qrpci_reasm_init(&r, limit);
  /* Split in two, so the body is really held; never more than the limit. */
  ck_assert_int_eq(feed_copy(&r, &w, ok.bytes, 1000, &why), 0);
  ck_assert_uint_le(qrpci_reasm_buffered(&r), limit);
  ck_assert_int_eq(feed_copy(&r, &w, ok.bytes + 1000, ok.len - 1000, &why), 0);
  ck_assert_uint_eq(w.count, 1);
  ck_assert_uint_eq(w.len[0], limit);
  ck_assert_int_eq(feed(&r, &w, over.bytes, over.len, &why), QRPC_EMSGSIZE);
  ck_assert_uint_eq(w.count, 1);
  qrpci_reasm_free(&r);
  seen_free(&w);
  free(ok.bytes);
  free(over.bytes);
  free(body);
}
END_TEST

/* Announcing a big frame and trickling its body costs the receiver memory in
 * proportion to what arrived, not to what was announced. */
START_TEST(test_memory_follows_received_bytes) {
  const uint8_t start[] = {0x80, 0x10, 0x00, 0x00, QRPCI_FRAME_REPLY,
                           0x01, 0x02, 0x03}; /* Length 1 MiB, 4 body bytes */
  qrpci_reasm r;
  seen w = {0};
  const char *why = NULL;
  qrpci_reasm_init(&r, 16u << 20);
  ck_assert_int_eq(feed(&r, &w, start, sizeof(start), &why), 0);
  ck_assert_uint_le(qrpci_reasm_buffered(&r), 4096);
  ck_assert_int_eq(qrpci_reasm_finish(&r), QRPC_EPROTO);
  qrpci_reasm_free(&r);
  ck_assert_uint_eq(qrpci_reasm_buffered(&r), 0);
}
END_TEST

/* After a large split frame is delivered, its buffer is not kept for the
 * life of the stream: trimming between frames gives it back, while
 * trimming inside a frame keeps what that frame needs. */
START_TEST(test_large_buffer_released) {
  stream s = {0};
  add_reply(&s, 1, 200000);
  add_reply(&s, 2, 10);
  qrpci_reasm r;
  seen w = {0};
  const char *why = NULL;
  qrpci_reasm_init(&r, MAX_FRAME);
  ck_assert_int_eq(feed_copy(&r, &w, s.bytes, 100000, &why), 0);
  qrpci_reasm_trim(&r);
  ck_assert_uint_ge(qrpci_reasm_buffered(&r), 100000 - 4);
  ck_assert_uint_le(qrpci_reasm_buffered(&r), s.body_len[0]);
  ck_assert_int_eq(feed_copy(&r, &w, s.bytes + 100000, s.len - 100000, &why),
                   0);
  assert_frames(&w, &s, 2);
  qrpci_reasm_trim(&r);
  ck_assert_uint_lt(qrpci_reasm_buffered(&r), 100000);
  qrpci_reasm_free(&r);
  seen_free(&w);
  free(s.bytes);
}
END_TEST

/* Large frames back to back reuse one buffer: the second is reassembled
 * where the first was, without growing a new one, and arrives intact. */
static const uint8_t *first_body;
static int same_buffer_cb(void *ctx, const uint8_t *body, size_t len) {
  seen *w = ctx;
  if (!first_body) first_body = body;
  else ck_assert_ptr_eq(body, first_body);
  return on_frame(w, body, len);
}

START_TEST(test_large_buffer_reused) {
  stream s = {0};
  add_reply(&s, 1, 150000);
  add_reply(&s, 2, 150000);
  add_reply(&s, 3, 120000);
  qrpci_reasm r;
  seen w = {0};
  const char *why = NULL;
  first_body = NULL;
  qrpci_reasm_init(&r, MAX_FRAME);
  /* Pieces of 1,000 bytes, trimmed after each as the RPC engine does:
   * never on a frame boundary here, so the buffer stays. */
  for (size_t off = 0; off < s.len; off += 1000) {
    size_t n = s.len - off < 1000 ? s.len - off : 1000;
    w.piece = s.bytes + off;
    w.piece_len = n;
    ck_assert_int_eq(
        qrpci_reasm_feed(&r, s.bytes + off, n, same_buffer_cb, &w, &why), 0);
    if (off + n < s.len) qrpci_reasm_trim(&r);
  }
  assert_frames(&w, &s, 3);
  qrpci_reasm_trim(&r);
  ck_assert_uint_eq(qrpci_reasm_buffered(&r), 0);
  qrpci_reasm_free(&r);
  seen_free(&w);
  free(s.bytes);
}
END_TEST

/* A callback that takes the body it is given when it lies in r's own
 * buffer, checks it against the stream and frees it as its new owner. */
typedef struct taker {
  qrpci_reasm *r;
  const stream *s;
  size_t n;
  size_t taken;
} taker;

static int take_cb(void *ctx, const uint8_t *body, size_t len) {
  taker *t = ctx;
  ck_assert_uint_lt(t->n, t->s->n_frames);
  ck_assert_uint_eq(len, t->s->body_len[t->n]);
  ck_assert_mem_eq(body, t->s->bytes + t->s->body_off[t->n], len);
  uint8_t *own = qrpci_reasm_take(t->r, body);
  if (own) {
    ck_assert_ptr_eq(own, body);
    ck_assert_uint_eq(qrpci_reasm_buffered(t->r), 0);
    /* Taken once: the buffer is no longer r's. */
    ck_assert_ptr_null(qrpci_reasm_take(t->r, body));
    t->taken++;
    free(own);
  }
  t->n++;
  return 0;
}

/* Frames split over pieces hand their buffer over; frames that arrived
 * whole stay borrowed (nothing to take); the frames after a taken one are
 * reassembled intact in a new buffer. */
START_TEST(test_take_buffer) {
  stream s = {0};
  add_reply(&s, 1, 200000);
  add_reply(&s, 2, 10);
  add_reply(&s, 3, 70000);
  add_reply(&s, 4, 300);
  qrpci_reasm r;
  taker t = {&r, &s, 0, 0};
  const char *why = NULL;
  qrpci_reasm_init(&r, MAX_FRAME);
  /* Pieces of 1,000 bytes: the two large frames are split, and so are
   * the small ones where a boundary falls inside them. */
  for (size_t off = 0; off < s.len; off += 1000) {
    size_t n = s.len - off < 1000 ? s.len - off : 1000;
    ck_assert_int_eq(qrpci_reasm_feed(&r, s.bytes + off, n, take_cb, &t, &why),
                     0);
  }
  ck_assert_uint_eq(t.n, 4);
  ck_assert_uint_ge(t.taken, 2);
  ck_assert_int_eq(qrpci_reasm_finish(&r), 0);
  qrpci_reasm_free(&r);
  /* Whole in one piece: every frame is delivered in place, none taken. */
  taker w = {&r, &s, 0, 0};
  qrpci_reasm_init(&r, MAX_FRAME);
  ck_assert_int_eq(qrpci_reasm_feed(&r, s.bytes, s.len, take_cb, &w, &why), 0);
  ck_assert_uint_eq(w.n, 4);
  ck_assert_uint_eq(w.taken, 0);
  qrpci_reasm_free(&r);
  free(s.bytes);
}
END_TEST

/* ---- violations and stopping ------------------------------------------- */

START_TEST(test_length_0) {
  stream s = {0};
  add_reply(&s, 1, 3);
  const uint8_t zero = 0x00;
  append(&s, &zero, 1);
  add_reply(&s, 2, 3);

  qrpci_reasm r;
  seen w = {0};
  const char *why = NULL;
  qrpci_reasm_init(&r, MAX_FRAME);
  ck_assert_int_eq(feed(&r, &w, s.bytes, s.len, &why), QRPC_EPROTO);
  ck_assert_str_eq(why, "frame with Length 0");
  ck_assert_uint_eq(w.count, 1); /* frames before it still count */
  /* The failure is final. */
  ck_assert_int_eq(feed(&r, &w, s.bytes, s.len, &why), QRPC_EPROTO);
  ck_assert_uint_eq(w.count, 1);
  ck_assert_int_eq(qrpci_reasm_finish(&r), QRPC_EPROTO);
  qrpci_reasm_free(&r);
  seen_free(&w);
  free(s.bytes);
}
END_TEST

/* The callback stops feeding by returning non-zero, for a frame handed over
 * in place as well as for one that was reassembled. */
START_TEST(test_callback_stops) {
  stream s = {0};
  add_reply(&s, 1, 10);
  add_reply(&s, 2, 10);
  add_reply(&s, 3, 10);
  for (int split = 0; split < 2; split++) {
    qrpci_reasm r;
    seen w = {.stop_at = 2, .stop_rc = 77};
    const char *why = NULL;
    qrpci_reasm_init(&r, MAX_FRAME);
    size_t first = split ? s.frame_end[0] + 5 : s.len;
    int rc = feed(&r, &w, s.bytes, first, &why);
    if (split) {
      ck_assert_int_eq(rc, 0);
      rc = feed(&r, &w, s.bytes + first, s.len - first, &why);
    }
    ck_assert_int_eq(rc, 77);
    ck_assert_uint_eq(w.count, 2);
    ck_assert_int_eq(feed(&r, &w, s.bytes, s.len, &why), 77);
    ck_assert_uint_eq(w.count, 2);
    qrpci_reasm_free(&r);
    seen_free(&w);
  }
  free(s.bytes);
}
END_TEST

START_TEST(test_finish) {
  qrpci_reasm r;
  seen w = {0};
  const char *why = NULL;
  qrpci_reasm_init(&r, MAX_FRAME);
  ck_assert_int_eq(qrpci_reasm_finish(&r), 0); /* an empty stream is fine */
  const uint8_t half_length[] = {0x40};
  ck_assert_int_eq(feed(&r, &w, half_length, 1, &why), 0);
  ck_assert_int_eq(qrpci_reasm_finish(&r), QRPC_EPROTO);
  qrpci_reasm_free(&r);

  /* A reassembler can be used again after being freed. */
  qrpci_reasm_init(&r, MAX_FRAME);
  const uint8_t cancel[] = {0x02, QRPCI_FRAME_CANCEL, 0x01};
  ck_assert_int_eq(feed(&r, &w, cancel, sizeof(cancel), &why), 0);
  ck_assert_uint_eq(w.count, 1);
  ck_assert_int_eq(qrpci_reasm_finish(&r), 0);
  qrpci_reasm_free(&r);
  seen_free(&w);
}
END_TEST

static Suite *reasm_suite(void) {
  Suite *s = suite_create("reassembler");
  TCase *tc = tcase_create("splits");
  tcase_add_test(tc, test_coalesced);
  tcase_add_test(tc, test_byte_by_byte);
  tcase_add_loop_test(tc, test_random_splits, 1, 41);
  tcase_add_test(tc, test_truncated_at_every_byte);
  suite_add_tcase(s, tc);

  tc = tcase_create("limits");
  tcase_add_test(tc, test_too_large_before_buffering);
  tcase_add_test(tc, test_limit_is_inclusive);
  tcase_add_test(tc, test_memory_follows_received_bytes);
  tcase_add_test(tc, test_large_buffer_released);
  tcase_add_test(tc, test_large_buffer_reused);
  tcase_add_test(tc, test_take_buffer);
  suite_add_tcase(s, tc);

  tc = tcase_create("errors");
  tcase_add_test(tc, test_length_0);
  tcase_add_test(tc, test_callback_stops);
  tcase_add_test(tc, test_finish);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(reasm_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
