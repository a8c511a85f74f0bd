/*
 * Fuzz target: the frame reassembler (wire/reassembler.h), fed one stream
 * in pieces whose sizes the input chooses.
 *
 * Input: one byte picks the frame limit, one byte after how many frames
 * the callback stops feeding (0: never), two bytes seed the piece sizes;
 * the rest is the stream.
 *
 * Properties: whatever the split, the reassembler hands over exactly the
 * frames, in order and byte for byte, that a straightforward one-pass
 * reading of the stream finds; it fails with the same error at the same
 * frame; it never holds more than the frame limit; a failure is final; and
 * finishing reports whether the stream stopped on a frame boundary.
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "qrpc/error.h"
#include "util/varint.h"
#include "wire/reassembler.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

/* The one-pass reading: frame bodies as slices of the stream, and how the
 * stream ends. */
typedef struct expected {
  size_t n;
  size_t *off;
  size_t *len;
  int error;   /* 0, QRPC_EPROTO (Length 0) or QRPC_EMSGSIZE */
  int partial; /* the stream ends inside a frame */
} expected;

static void read_stream(const uint8_t *p, size_t len, size_t max_frame,
                        expected *e) {
  size_t pos = 0;
  memset(e, 0, sizeof(*e));
  e->off = malloc((len / 2 + 1) * sizeof(size_t));
  e->len = malloc((len / 2 + 1) * sizeof(size_t));
  FZ_CHECK(e->off && e->len);
  while (pos < len) {
    uint64_t v;
    size_t vl = qrpci_varint_get(p + pos, len - pos, &v);
    if (vl == 0) {
      e->partial = 1;
      return;
    }
    if (v == 0) {
      e->error = QRPC_EPROTO;
      return;
    }
    if (v > max_frame) {
      e->error = QRPC_EMSGSIZE;
      return;
    }
    if (v > len - pos - vl) {
      e->partial = 1;
      return;
    }
    e->off[e->n] = pos + vl;
    e->len[e->n] = (size_t)v;
    e->n++;
    pos += vl + (size_t)v;
  }
}

typedef struct sink {
  const uint8_t *stream;
  const expected *e;
  size_t seen;
  size_t stop_after; /* 0: never stop */
} sink;

#define STOP_VALUE 77

static int on_frame(void *ctx, const uint8_t *body, size_t body_len) {
  sink *s = ctx;
  FZ_CHECK(s->seen < s->e->n);
  FZ_CHECK(body_len == s->e->len[s->seen]);
  FZ_CHECK(memcmp(body, s->stream + s->e->off[s->seen], body_len) == 0);
  s->seen++;
  return s->stop_after && s->seen == s->stop_after ? STOP_VALUE : 0;
}

static uint32_t next_rand(uint32_t *x) {
  *x ^= *x << 13;
  *x ^= *x >> 17;
  *x ^= *x << 5;
  return *x;
}

/* Piece sizes: mostly tiny (splitting Length fields), some medium, a few
 * large, and the odd empty piece. */
static size_t piece_size(uint32_t *rng, size_t left) {
  uint32_t r = next_rand(rng);
  size_t n;
  switch (r % 8) {
  case 0: n = 0; break;
  case 1:
  case 2: n = 1; break;
  case 3: n = 2 + (r >> 8) % 7; break;
  case 4:
  case 5: n = 1 + (r >> 8) % 64; break;
  case 6: n = 1 + (r >> 8) % 4096; break;
  default: n = left; break;
  }
  return n < left ? n : left;
}

static const size_t limits[] = {1, 2, 63, 64, 100, 16383, 16384, 1u << 20};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fz_input in = {data, size};
  size_t max_frame = limits[fz_u8(&in) % (sizeof(limits) / sizeof(limits[0]))];
  size_t stop_after = fz_u8(&in) % 8;
  uint32_t rng = (uint32_t)fz_u16(&in) * 2654435761u + 1;
  const uint8_t *stream;
  size_t len = fz_take(&in, in.len, &stream);

  expected e;
  read_stream(stream, len, max_frame, &e);
  size_t want_frames = stop_after && stop_after < e.n ? stop_after : e.n;
  int want_rv = stop_after && stop_after <= e.n ? STOP_VALUE : e.error;

  qrpci_reasm r;
  qrpci_reasm_init(&r, max_frame);
  sink s = {stream, &e, 0, stop_after};
  size_t pos = 0;
  int rv = 0;
  while (pos < len || rv == 0) {
    size_t n = piece_size(&rng, len - pos);
    const char *why = NULL;
    int got = qrpci_reasm_feed(&r, stream + pos, n, on_frame, &s, &why);
    FZ_CHECK(qrpci_reasm_buffered(&r) <= max_frame);
    if (rv != 0) {
      /* Final: the same result, no more frames. */
      FZ_CHECK(got == rv);
    } else if (got != 0) {
      rv = got;
      if (got == QRPC_EPROTO || got == QRPC_EMSGSIZE)
        FZ_CHECK(why != NULL && why[0] != '\0');
    }
    pos += n;
    if (pos >= len && rv == 0) break;
    if (pos >= len) {
      /* One more feed after the failure, with the whole stream again. */
      FZ_CHECK(qrpci_reasm_feed(&r, stream, len, on_frame, &s, NULL) == rv);
      break;
    }
  }
  FZ_CHECK(rv == want_rv);
  FZ_CHECK(s.seen == want_frames);

  int fin = qrpci_reasm_finish(&r);
  if (rv != 0)
    FZ_CHECK(fin == rv);
  else
    FZ_CHECK(fin == (e.partial ? QRPC_EPROTO : 0));

  qrpci_reasm_free(&r);
  FZ_CHECK(qrpci_reasm_buffered(&r) == 0);
  free(e.off);
  free(e.len);
  return 0;
}
