/*
 * Writes the seed corpus of every fuzz target: fuzz_gen_corpus DIR writes
 * DIR/<target>/<name> files (DIR is normally tests/fuzz/corpus). Frames
 * come from the project's own encoder, the three worked examples of
 * docs/protocol.md are written byte for byte, the broker's requests are
 * encoded here field by field (so that strings can hold NUL bytes, which
 * protobuf-c's encoder cannot write), and the PEM seeds hold
 * certificates generated at run time (never a private key: the PEM target
 * generates its key itself). Existing files of the same name are replaced;
 * other files (crash regressions) are left alone.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "certs.h"
#include "dgram/delta.h"
#include "qrpc/broker.pb-c.h"
#include "util/varint.h"
#include "wire/frame.h"

static const char *root;

typedef struct buf {
  uint8_t data[65536];
  size_t len;
} buf;

static void put(buf *b, const void *p, size_t n) {
  if (b->len + n > sizeof(b->data)) {
    fprintf(stderr, "seed too large\n");
    exit(1);
  }
  memcpy(b->data + b->len, p, n);
  b->len += n;
}

static void put_u8(buf *b, uint8_t v) { put(b, &v, 1); }

static void put_varint(buf *b, uint64_t v) {
  uint8_t tmp[QRPCI_VARINT_MAXLEN];
  put(b, tmp, qrpci_varint_put(tmp, v));
}

static void put_frame(buf *b, const qrpci_frame *f) {
  uint8_t tmp[4096];
  size_t n = qrpci_frame_encode(tmp, sizeof(tmp), f);
  if (n == 0) {
    fprintf(stderr, "frame of type %u cannot be encoded\n", f->type);
    exit(1);
  }
  put(b, tmp, n);
}

/* The frame's body: what follows its Length. */
static void put_body(buf *b, const qrpci_frame *f) {
  buf whole = {.len = 0};
  uint64_t len;
  put_frame(&whole, f);
  size_t vl = qrpci_varint_get(whole.data, whole.len, &len);
  put(b, whole.data + vl, (size_t)len);
}

static void pf(buf *b, qrpci_frame f) { put_frame(b, &f); }

static void write_seed(const char *target, const char *name, const buf *b) {
  char path[1024];
  snprintf(path, sizeof(path), "%s/%s", root, target);
  if (mkdir(path, 0755) != 0 && errno != EEXIST) {
    perror(path);
    exit(1);
  }
  snprintf(path, sizeof(path), "%s/%s/%s", root, target, name);
  FILE *f = fopen(path, "wb");
  if (!f || fwrite(b->data, 1, b->len, f) != b->len || fclose(f) != 0) {
    perror(path);
    exit(1);
  }
}

static void write_bytes(const char *target, const char *name, const void *p,
                        size_t n) {
  buf b = {.len = 0};
  put(&b, p, n);
  write_seed(target, name, &b);
}

/* ---- Frames ------------------------------------------------------------- */

#define HELLO_ID 0x393c3e51u

static const uint8_t worked_request[] = {0x0e, 0x01, 0x01, 0xb9, 0x3c,
                                         0x3e, 0x51, 0x53, 0x88, 0x0a,
                                         0x04, 0x71, 0x72, 0x70, 0x63};
static const uint8_t worked_reply[] = {0x0b, 0x03, 0x01, 0x0a, 0x07, 0x68,
                                       0x69, 0x20, 0x71, 0x72, 0x70, 0x63};
static const uint8_t worked_error[] = {0x10, 0x04, 0x02, 0x05, 0x0c, 0x6e,
                                       0x6f, 0x20, 0x73, 0x75, 0x63, 0x68,
                                       0x20, 0x75, 0x73, 0x65, 0x72};

static qrpci_frame fr(uint8_t type, uint64_t msgid) {
  qrpci_frame f;
  memset(&f, 0, sizeof(f));
  f.type = type;
  f.msgid = msgid;
  return f;
}

static qrpci_frame request(uint64_t msgid, uint64_t method, const char *p) {
  qrpci_frame f = fr(QRPCI_FRAME_REQUEST, msgid);
  f.method = method;
  f.payload = (const uint8_t *)p;
  f.payload_len = strlen(p);
  return f;
}

static qrpci_frame with_payload(qrpci_frame f, const char *p) {
  f.payload = (const uint8_t *)p;
  f.payload_len = strlen(p);
  return f;
}

static qrpci_frame with_status(qrpci_frame f, uint64_t status,
                               const char *detail) {
  f.status = status;
  f.detail = (const uint8_t *)detail;
  f.detail_len = strlen(detail);
  return f;
}

static void frame_seeds(void) {
  const char *t = "fuzz_frame";
  /* Worked examples without their Length byte. */
  write_bytes(t, "worked-request", worked_request + 1,
              sizeof(worked_request) - 1);
  write_bytes(t, "worked-reply", worked_reply + 1, sizeof(worked_reply) - 1);
  write_bytes(t, "worked-error", worked_error + 1, sizeof(worked_error) - 1);

  struct {
    const char *name;
    qrpci_frame f;
  } seeds[] = {
      {"notify", with_payload(fr(QRPCI_FRAME_NOTIFY, 0), "note")},
      {"cancel", fr(QRPCI_FRAME_CANCEL, 7)},
      {"item", with_payload(fr(QRPCI_FRAME_ITEM, 3), "item")},
      {"end-ok", with_status(fr(QRPCI_FRAME_END, 3), 0, "")},
      {"end-error", with_status(fr(QRPCI_FRAME_END, 3), 13, "internal")},
      {"goaway", fr(QRPCI_FRAME_GOAWAY, 0)},
      {"request-big-ids", request(QRPCI_VARINT_MAX, 0x3fffffff, "x")},
  };
  for (size_t i = 0; i < sizeof(seeds) / sizeof(seeds[0]); i++) {
    buf b = {.len = 0};
    if (seeds[i].f.type == QRPCI_FRAME_GOAWAY) seeds[i].f.last_msgid = 9;
    put_body(&b, &seeds[i].f);
    write_seed(t, seeds[i].name, &b);
  }

  /* Violations the decoder must name. */
  static const uint8_t msgid0_long[] = {0x03, 0x80, 0x00, 0x00, 0x00, 0x41};
  static const uint8_t unknown_type[] = {0x09, 0x01};
  static const uint8_t cancel_trailing[] = {0x05, 0x01, 0x00};
  static const uint8_t error_status0[] = {0x04, 0x01, 0x00, 0x00};
  static const uint8_t detail_past[] = {0x04, 0x01, 0x05, 0x10, 0x61};
  static const uint8_t detail_not_utf8[] = {0x07, 0x01, 0x00, 0x02, 0xc0, 0xaf};
  static const uint8_t request_truncated[] = {0x01, 0x01, 0xb9, 0x3c};
  write_bytes(t, "bad-msgid0-long-form", msgid0_long, sizeof(msgid0_long));
  write_bytes(t, "bad-unknown-type", unknown_type, sizeof(unknown_type));
  write_bytes(t, "bad-cancel-trailing", cancel_trailing,
              sizeof(cancel_trailing));
  write_bytes(t, "bad-error-status0", error_status0, sizeof(error_status0));
  write_bytes(t, "bad-detail-past-frame", detail_past, sizeof(detail_past));
  write_bytes(t, "bad-detail-utf8", detail_not_utf8, sizeof(detail_not_utf8));
  write_bytes(t, "bad-request-truncated", request_truncated,
              sizeof(request_truncated));
}

/* ---- Reassembler -------------------------------------------------------- */

/* Control bytes of fuzz_reassembler: limit index (into its table: 1 is a
 * limit of 2 bytes, 4 of 100, 7 of 1 MiB), stop-after, piece seed. */
static void reasm_head(buf *b, uint8_t limit, uint8_t stop, uint16_t seed) {
  put_u8(b, limit);
  put_u8(b, stop);
  put_u8(b, (uint8_t)(seed >> 8));
  put_u8(b, (uint8_t)seed);
}

static void reassembler_seeds(void) {
  const char *t = "fuzz_reassembler";
  buf b = {.len = 0};
  reasm_head(&b, 7, 0, 1);
  put(&b, worked_request, sizeof(worked_request));
  put(&b, worked_reply, sizeof(worked_reply));
  put(&b, worked_error, sizeof(worked_error));
  write_seed(t, "worked-examples", &b);

  /* Length in 2 and 8 bytes (non-shortest forms are valid), a 300-byte
   * ITEM that is split across pieces, and a stop in the middle. */
  b.len = 0;
  reasm_head(&b, 7, 3, 0x1234);
  put_u8(&b, 0x40);
  put_u8(&b, 0x02);
  put_u8(&b, QRPCI_FRAME_CANCEL);
  put_u8(&b, 0x01);
  static const uint8_t len8[] = {0xc0, 0, 0, 0, 0, 0, 0, 2};
  put(&b, len8, sizeof(len8));
  put_u8(&b, QRPCI_FRAME_CANCEL);
  put_u8(&b, 0x02);
  char big[301];
  memset(big, 'z', 300);
  big[300] = '\0';
  pf(&b, (qrpci_frame){.type = QRPCI_FRAME_ITEM,
                       .msgid = 4,
                       .payload = (const uint8_t *)big,
                       .payload_len = 300});
  put(&b, worked_reply, sizeof(worked_reply));
  write_seed(t, "long-lengths-and-split", &b);

  b.len = 0;
  reasm_head(&b, 7, 0, 7);
  put(&b, worked_reply, sizeof(worked_reply));
  put_u8(&b, 0x00);
  put(&b, worked_reply, sizeof(worked_reply));
  write_seed(t, "length-zero", &b);

  b.len = 0;
  reasm_head(&b, 4, 0, 9);
  put(&b, worked_reply, sizeof(worked_reply));
  put_varint(&b, 101);
  put_u8(&b, QRPCI_FRAME_ITEM);
  write_seed(t, "over-limit", &b);

  b.len = 0;
  reasm_head(&b, 7, 0, 3);
  put(&b, worked_request, sizeof(worked_request));
  put(&b, worked_reply, sizeof(worked_reply) - 4);
  write_seed(t, "truncated-at-end", &b);

  b.len = 0;
  reasm_head(&b, 7, 0, 5);
  put(&b, worked_request, sizeof(worked_request));
  put_u8(&b, 0x80); /* a 4-byte Length cut short */
  write_seed(t, "truncated-length", &b);
}

/* ---- Stream headers ------------------------------------------------------ */

static void stream_header_seeds(void) {
  const char *t = "fuzz_stream_header";
  static const uint8_t rpc[] = {0x00, 0x0e, 0x01};
  static const uint8_t raw[] = {0x01, 0x05, 'h', 'e', 'l', 'l', 'o', '!'};
  static const uint8_t raw_long_len[] = {0x01, 0x40, 0x04, 'e', 'c', 'h', 'o'};
  static const uint8_t raw_utf8[] = {0x01, 0x04, 0xc3, 0xa9, 0xe2, 0x82};
  static const uint8_t raw_len0[] = {0x01, 0x00};
  static const uint8_t raw_len256[] = {0x01, 0x41, 0x00};
  static const uint8_t raw_bad_utf8[] = {0x01, 0x03, 0xed, 0xa0, 0x80};
  static const uint8_t raw_partial[] = {0x01, 0x0a, 'p', 'a'};
  static const uint8_t unknown[] = {0x02, 0x00};
  write_bytes(t, "rpc", rpc, sizeof(rpc));
  write_bytes(t, "raw", raw, sizeof(raw));
  write_bytes(t, "raw-two-byte-length", raw_long_len, sizeof(raw_long_len));
  write_bytes(t, "raw-utf8-cut", raw_utf8, sizeof(raw_utf8));
  write_bytes(t, "raw-length-0", raw_len0, sizeof(raw_len0));
  write_bytes(t, "raw-length-256", raw_len256, sizeof(raw_len256));
  write_bytes(t, "raw-surrogate", raw_bad_utf8, sizeof(raw_bad_utf8));
  write_bytes(t, "raw-partial", raw_partial, sizeof(raw_partial));
  write_bytes(t, "unknown-kind", unknown, sizeof(unknown));

  uint8_t longest[3 + 255];
  longest[0] = 0x01;
  longest[1] = 0x40;
  longest[2] = 0xff;
  memset(longest + 3, 'n', 255);
  write_bytes(t, "raw-255", longest, sizeof(longest));
}

/* ---- Varints and datagram headers ---------------------------------------- */

static void varint_seeds(void) {
  const char *t = "fuzz_varint";
  /* RFC 9000 appendix A.1's examples. */
  static const uint8_t rfc[] = {0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14,
                                0xe8, 0x8c, 0x9d, 0x7f, 0x3e, 0x7d,
                                0x7b, 0xbd, 0x25, 0x00, 0x25};
  write_bytes(t, "rfc9000-examples", rfc, sizeof(rfc));
  /* A datagram header: Channel hello.Greeter/SayHello, Seq 1, payload. */
  buf b = {.len = 0};
  put_varint(&b, HELLO_ID);
  put_varint(&b, 1);
  put(&b, "\x0a\x04qrpc", 6);
  write_seed(t, "datagram-header", &b);
  b.len = 0;
  put_varint(&b, QRPCI_VARINT_MAX);
  put_varint(&b, 16383);
  put_varint(&b, 16384);
  put_varint(&b, 63);
  put_u8(&b, 0xc0); /* an 8-byte varint cut short */
  put_u8(&b, 0x01);
  write_seed(t, "edges-and-truncated", &b);
}

/* ---- RPC engine ---------------------------------------------------------- */

/* Control bytes of fuzz_rpc: flags, stream selector, split point. */
enum {
  F_SERVER_CALLS = 1,
  F_TWO_STREAMS = 2,
  F_FIN = 4,
  F_CANCEL = 8,
  F_DATAGRAMS = 16
};
enum { M_ECHO = 1, M_FAIL, M_SERVER_STREAM, M_CLIENT_STREAM, M_BIDI, M_HOLD };

static void rpc_head(buf *b, uint8_t flags, uint8_t sel, uint16_t split) {
  put_u8(b, flags);
  put_u8(b, sel);
  put_u8(b, (uint8_t)(split >> 8));
  put_u8(b, (uint8_t)split);
}

/* One datagram of fuzz_rpc's datagram mode: length byte, Channel, Seq,
 * payload. */
static void put_dgram(buf *b, uint64_t channel, uint64_t seq, const char *p) {
  buf d = {.len = 0};
  put_varint(&d, channel);
  put_varint(&d, seq);
  put(&d, p, strlen(p));
  put_u8(b, (uint8_t)d.len);
  put(b, d.data, d.len);
}

static void rpc_seeds(void) {
  const char *t = "fuzz_rpc";
  buf b = {.len = 0};
  rpc_head(&b, F_FIN, 0, 0);
  put(&b, worked_request, sizeof(worked_request));
  write_seed(t, "worked-request", &b);

  b.len = 0;
  rpc_head(&b, 0, 0, 0);
  pf(&b, request(1, M_ECHO, "ping"));
  pf(&b,
     with_payload((qrpci_frame){.type = QRPCI_FRAME_NOTIFY, .method = M_ECHO},
                  "note"));
  pf(&b, request(2, M_FAIL, ""));
  pf(&b, request(3, 999, "unknown method"));
  write_seed(t, "unary-mix", &b);

  b.len = 0;
  rpc_head(&b, F_FIN, 0, 0);
  pf(&b, request(1, M_SERVER_STREAM, "items"));
  write_seed(t, "server-stream", &b);

  b.len = 0;
  rpc_head(&b, F_FIN, 0, 0);
  pf(&b, request(1, M_CLIENT_STREAM, ""));
  pf(&b, with_payload(fr(QRPCI_FRAME_ITEM, 1), "a"));
  pf(&b, with_payload(fr(QRPCI_FRAME_ITEM, 1), "b"));
  pf(&b, with_status(fr(QRPCI_FRAME_END, 1), 0, ""));
  write_seed(t, "client-stream", &b);

  b.len = 0;
  rpc_head(&b, 0, 0, 0);
  pf(&b, request(1, M_BIDI, ""));
  pf(&b, with_payload(fr(QRPCI_FRAME_ITEM, 1), "x"));
  pf(&b, with_status(fr(QRPCI_FRAME_END, 1), 0, ""));
  write_seed(t, "bidi", &b);

  b.len = 0;
  rpc_head(&b, 0, 0, 0);
  pf(&b, request(1, M_HOLD, "held"));
  pf(&b, request(2, M_HOLD, "held"));
  pf(&b, fr(QRPCI_FRAME_CANCEL, 1));
  pf(&b, fr(QRPCI_FRAME_GOAWAY, 0));
  write_seed(t, "hold-cancel-goaway", &b);

  b.len = 0;
  rpc_head(&b, F_TWO_STREAMS | F_FIN, 0, 0);
  size_t at = b.len;
  pf(&b, request(5, M_ECHO, "first"));
  size_t split = b.len - at;
  pf(&b, request(5, M_ECHO, "same id, other stream"));
  b.data[2] = (uint8_t)(split >> 8);
  b.data[3] = (uint8_t)split;
  write_seed(t, "two-streams", &b);

  b.len = 0;
  rpc_head(&b, 0, 0, 0);
  for (uint64_t i = 1; i <= 40; i++) pf(&b, request(i, M_HOLD, "h"));
  write_seed(t, "calls-over-limit", &b);

  /* Answers from a peer that breaks the rules. */
  b.len = 0;
  rpc_head(&b, 0, 0, 0);
  pf(&b, with_payload(fr(QRPCI_FRAME_REPLY, 5), "?"));
  write_seed(t, "reply-never-called", &b);

  b.len = 0;
  rpc_head(&b, 0, 0, 0);
  pf(&b, request(2, M_ECHO, "a"));
  pf(&b, request(2, M_ECHO, "b"));
  write_seed(t, "msgid-not-increasing", &b);

  b.len = 0;
  rpc_head(&b, F_FIN, 0, 0);
  put_varint(&b, 2u << 20);
  put_u8(&b, QRPCI_FRAME_ITEM);
  write_seed(t, "frame-too-large", &b);

  b.len = 0;
  rpc_head(&b, F_FIN, 0, 0);
  put(&b, worked_request, sizeof(worked_request) - 3);
  write_seed(t, "truncated-by-fin", &b);

  /* The server called the client; the bytes answer its calls 1 to 4. */
  b.len = 0;
  rpc_head(&b, F_SERVER_CALLS, 0, 0);
  pf(&b, with_payload(fr(QRPCI_FRAME_REPLY, 1), "r"));
  pf(&b, with_payload(fr(QRPCI_FRAME_ITEM, 2), "i"));
  pf(&b, with_status(fr(QRPCI_FRAME_END, 2), 0, ""));
  pf(&b, with_status(fr(QRPCI_FRAME_ERROR, 3), 5, "no such user"));
  pf(&b, with_payload(fr(QRPCI_FRAME_ITEM, 4), "j"));
  pf(&b, with_status(fr(QRPCI_FRAME_END, 4), 0, ""));
  write_seed(t, "answers", &b);

  b.len = 0;
  rpc_head(&b, F_SERVER_CALLS | F_CANCEL | F_TWO_STREAMS, 1, 0);
  pf(&b, with_payload(fr(QRPCI_FRAME_ITEM, 2), "i"));
  pf(&b, with_payload(fr(QRPCI_FRAME_REPLY, 4), "no"));
  put(&b, worked_error, sizeof(worked_error));
  write_seed(t, "answers-cancelled", &b);

  /* Datagrams: in order, stale and duplicate Seqs on the latest-only
   * channel 1, channel 2, the hello id, an unknown channel, Seq 0, and a
   * datagram too short to hold a Seq. */
  b.len = 0;
  rpc_head(&b, F_DATAGRAMS, 0, 0);
  put_dgram(&b, 1, 1, "a");
  put_dgram(&b, 1, 3, "c");
  put_dgram(&b, 1, 2, "stale");
  put_dgram(&b, 1, 3, "dup");
  put_dgram(&b, 2, 1, "plain");
  put_dgram(&b, 2, 1, "plain again");
  put_dgram(&b, HELLO_ID, 7, "\x0a\x04qrpc");
  put_dgram(&b, 9, 1, "unknown channel");
  put_dgram(&b, 1, 0, "seq 0");
  put_u8(&b, 1);
  put_u8(&b, 0x01);
  write_seed(t, "datagrams", &b);
}

/* ---- Protobuf fields read in place --------------------------------------- */

static void put_pb_varint(buf *b, uint64_t v) {
  for (; v >= 0x80; v >>= 7) put_u8(b, (uint8_t)(v | 0x80));
  put_u8(b, (uint8_t)v);
}

/* The key of the field name of messages of type d, with wire type wt. */
static void put_pb_key(buf *b, const ProtobufCMessageDescriptor *d,
                       const char *name, unsigned wt) {
  const ProtobufCFieldDescriptor *f =
      protobuf_c_message_descriptor_get_field_by_name(d, name);
  if (!f) {
    fprintf(stderr, "%s has no field %s\n", d->name, name);
    exit(1);
  }
  put_pb_varint(b, (uint64_t)f->id << 3 | wt);
}

static void put_pb_bytes(buf *b, const ProtobufCMessageDescriptor *d,
                         const char *name, const void *p, size_t n) {
  put_pb_key(b, d, name, 2);
  put_pb_varint(b, n);
  put(b, p, n);
}

static void put_pb_uint(buf *b, const ProtobufCMessageDescriptor *d,
                        const char *name, uint64_t v) {
  put_pb_key(b, d, name, 0);
  put_pb_varint(b, v);
}

static void pbwire_seeds(void) {
  const char *t = "fuzz_pbwire";
  const ProtobufCMessageDescriptor *hello =
      &qrpc__broker__hello_request__descriptor;
  const ProtobufCMessageDescriptor *sub =
      &qrpc__broker__subscribe_request__descriptor;
  const ProtobufCMessageDescriptor *pub =
      &qrpc__broker__publish_request__descriptor;
  buf b = {.len = 0};
  write_seed(t, "empty", &b);

  put_pb_bytes(&b, hello, "token", "T\0junk", 6);
  put_pb_bytes(&b, hello, "client_name", "evil\nname", 9);
  write_seed(t, "hello-token-nul", &b);

  b.len = 0;
  put_pb_bytes(&b, pub, "topic", "a\0b", 3);
  put_pb_bytes(&b, pub, "payload", "\0\1\2", 3);
  put_pb_uint(&b, pub, "retain", 1);
  write_seed(t, "publish-topic-nul", &b);

  /* The last value is the one kept: a NUL in an earlier one is gone, one
   * in the last counts. */
  b.len = 0;
  put_pb_bytes(&b, pub, "topic", "x\0y", 3);
  put_pb_bytes(&b, pub, "topic", "a", 1);
  put_pb_bytes(&b, pub, "payload", "p", 1);
  put_pb_bytes(&b, pub, "topic", "a.b\0", 4);
  write_seed(t, "publish-topic-twice", &b);

  b.len = 0;
  put_pb_bytes(&b, sub, "pattern", ">\0x", 3);
  put_pb_uint(&b, sub, "mode", 1);
  put_pb_uint(&b, sub, "policy", 3);
  put_pb_uint(&b, sub, "queue_max_bytes", UINT64_MAX);
  write_seed(t, "subscribe-pattern-nul", &b);

  /* Unknown fields of every wire type, one numbered past a byte. */
  b.len = 0;
  put_pb_varint(&b, 9 << 3 | 1);
  put(&b, "12345678", 8);
  put_pb_varint(&b, 10 << 3 | 5);
  put(&b, "1234", 4);
  put_pb_varint(&b, 300 << 3 | 2);
  put_pb_varint(&b, 2);
  put(&b, "hi", 2);
  put_pb_bytes(&b, pub, "topic", "chat.lobby", 10);
  put_pb_varint(&b, 11 << 3);
  put_pb_varint(&b, UINT64_MAX);
  write_seed(t, "unknown-fields", &b);

  /* What protobuf-c refuses: the reader must still stay inside. */
  b.len = 0;
  put_pb_key(&b, pub, "topic", 2);
  put_pb_varint(&b, 5);
  put(&b, "ab", 2);
  write_seed(t, "value-cut", &b);
  b.len = 0;
  put_pb_key(&b, pub, "topic", 3);
  put_pb_key(&b, pub, "topic", 4);
  write_seed(t, "group", &b);
  b.len = 0;
  put_pb_uint(&b, pub, "topic", 1);
  write_seed(t, "topic-as-varint", &b);
}

/* ---- Snapshot deltas ----------------------------------------------------- */

/* A World { uint32 tick = 1; repeated Entity entities = 2; string name =
 * 3; } with Entity { uint32 id = 1; bytes data = 2; }: entities ids[i]
 * (0: no key field, as proto3 writes 0), the one numbered changed with
 * other data. */
static void put_world(buf *b, uint64_t tick, const uint32_t *ids, size_t n,
                      uint32_t changed, const char *name) {
  if (tick) {
    put_pb_varint(b, 1 << 3);
    put_pb_varint(b, tick);
  }
  for (size_t i = 0; i < n; i++) {
    buf e = {.len = 0};
    if (ids[i]) {
      put_pb_varint(&e, 1 << 3);
      put_pb_varint(&e, ids[i]);
    }
    char data[13];
    snprintf(data, sizeof(data), "entity-%05u",
             ids[i] * 7 + (ids[i] == changed));
    put_pb_varint(&e, 2 << 3 | 2);
    put_pb_varint(&e, 12);
    put(&e, data, 12);
    put_pb_varint(b, 2 << 3 | 2);
    put_pb_varint(b, e.len);
    put(b, e.data, e.len);
  }
  if (name) {
    put_pb_varint(b, 3 << 3 | 2);
    put_pb_varint(b, strlen(name));
    put(b, name, strlen(name));
  }
}

/* The delta from base to cur, which must be worth sending. */
static void put_delta(buf *b, const qrpci_delta_keys *k, const buf *base,
                      const buf *cur) {
  qrpci_delta_buf d = {0};
  if (qrpci_delta_diff(k, base->data, base->len, cur->data, cur->len, &d) !=
      0) {
    fprintf(stderr, "seed delta not worth sending\n");
    exit(1);
  }
  put(b, d.data, d.len);
  qrpci_delta_buf_free(&d);
}

/* Control bytes of fuzz_delta: keys (entity field, key field - 1 above
 * it), limit index (0: none, 4: 16 bytes), length of the first part. */
static void delta_head(buf *b, uint8_t entities, uint8_t limit, size_t first) {
  put_u8(b, entities);
  put_u8(b, limit);
  put_u8(b, (uint8_t)(first >> 8));
  put_u8(b, (uint8_t)first);
}

static void delta_seed(const char *name, uint8_t entities, uint8_t limit,
                       const buf *first, const buf *rest) {
  buf b = {.len = 0};
  delta_head(&b, entities, limit, first->len);
  put(&b, first->data, first->len);
  put(&b, rest->data, rest->len);
  write_seed("fuzz_delta", name, &b);
}

static const uint32_t ids8[] = {1, 2, 3, 4, 5, 6, 7, 8};
/* Long enough that a delta sending every entity still gains something. */
static const char arena[] = "the arena of the seed corpus";

static void delta_seeds(void) {
  const qrpci_delta_keys keys = {2, 1}, none = {0, 1};
  buf a = {.len = 0}, b = {.len = 0}, d = {.len = 0};
  /* Entity 3 changed, 5 gone, 9 new, the tick moved. */
  static const uint32_t next[] = {1, 2, 3, 4, 6, 7, 8, 9};
  put_world(&a, 10, ids8, 8, 0, arena);
  put_world(&b, 11, next, 8, 3, arena);
  put_delta(&d, &keys, &a, &b);
  delta_seed("apply-world", 2, 0, &a, &d);
  delta_seed("apply-over-limit", 2, 4, &a, &d);
  delta_seed("diff-world", 2, 0, &a, &b);

  d.len = 0;
  put_delta(&d, &none, &a, &b);
  delta_seed("apply-no-entities", 0, 0, &a, &d);

  /* Entities without a key field have key 0. */
  static const uint32_t zero[] = {0, 1, 2, 3, 4};
  a.len = b.len = d.len = 0;
  put_world(&a, 1, zero, 5, 0, NULL);
  put_world(&b, 1, zero, 5, 0, NULL);
  b.data[b.len - 1] ^= 1; /* the data of entity 4 */
  put_delta(&d, &keys, &a, &b);
  delta_seed("apply-key-zero", 2, 0, &a, &d);
  a.len = b.len = d.len = 0;
  put_world(&a, 1, zero, 5, 0, "keyless");
  put_world(&b, 2, zero + 1, 4, 0, "keyless");
  put_delta(&d, &keys, &a, &b);
  delta_seed("apply-delete-key-zero", 2, 0, &a, &d);

  /* A baseline that repeats a key: a delta may change the rest. */
  static const uint32_t repeated[] = {1, 2, 1, 3};
  a.len = d.len = 0;
  put_world(&a, 1, repeated, 4, 0, "w");
  static const uint8_t tick2[] = {1, 1, 2, 0x08, 0x02};
  put(&d, tick2, sizeof(tick2));
  delta_seed("apply-repeated-key", 2, 0, &a, &d);
  /* Which apply must refuse: the two entities of key 1 gone for one
   * DELETE count as much as that DELETE and one of a key base lacks. */
  static const uint8_t del_repeated[] = {3, 1, 3, 9};
  d.len = 0;
  put(&d, del_repeated, sizeof(del_repeated));
  delta_seed("apply-delete-repeated-key", 2, 0, &a, &d);

  /* Moved entities: diff must send the whole state. */
  static const uint32_t moved[] = {2, 1, 3, 4, 5, 6, 7, 8};
  a.len = b.len = 0;
  put_world(&a, 1, ids8, 8, 0, "w");
  put_world(&b, 1, moved, 8, 0, "w");
  delta_seed("diff-moved", 2, 0, &a, &b);

  /* Records written by hand: FIELD 1 (tick 5), UPSERT of entity 9,
   * DELETE 2, FIELD 3 empty (the name gone). Keyed by field 1 of
   * entity field 2. */
  static const uint8_t hand[] = {
      1, 1, 2,    0x08, 0x05,       /* FIELD 1: tick 5 */
      2, 4, 0x08, 0x09, 0x12, 0x00, /* UPSERT: id 9, no data */
      3, 2,                         /* DELETE 2 */
      1, 3, 0,                      /* FIELD 3: gone */
  };
  d.len = 0;
  put(&d, hand, sizeof(hand));
  delta_seed("apply-hand-records", 2, 0, &a, &d);
}

/* ---- Datagram receive path ----------------------------------------------- */

/* Channels of fuzz_dgram_recv and its control bits. */
enum { DG_FRAG = 1, DG_SNAP = 2, DG_PLAIN = 3 };
enum { DG_LATEST_ONLY = 1, DG_NO_ENTITIES = 2 };

/* One datagram of fuzz_dgram_recv: a two-byte length, then the bytes. */
static void put_dgram16(buf *b, const buf *d) {
  put_u8(b, (uint8_t)(d->len >> 8));
  put_u8(b, (uint8_t)d->len);
  put(b, d->data, d->len);
}

/* One fragment (docs/protocol.md, "Fragmented datagrams"): Channel, Seq,
 * Total Length, Offset, bytes. */
static void put_fragment(buf *b, uint64_t ch, uint64_t seq, size_t total,
                         size_t off, const uint8_t *p, size_t n) {
  buf d = {.len = 0};
  put_varint(&d, ch);
  put_varint(&d, seq);
  put_varint(&d, total);
  put_varint(&d, off);
  put(&d, p, n);
  put_dgram16(b, &d);
}

/* msg in fragments of room bytes, in order, or last to first. */
static void put_message(buf *b, uint64_t ch, uint64_t seq, const buf *msg,
                        size_t room, int reversed) {
  size_t n = (msg->len + room - 1) / room;
  for (size_t k = 0; k < n; k++) {
    size_t i = reversed ? n - 1 - k : k;
    size_t off = i * room, len = msg->len - off < room ? msg->len - off : room;
    put_fragment(b, ch, seq, msg->len, off, msg->data + off, len);
  }
}

/* A snapshot message: Tick, Baseline, Server Time, then the state or the
 * delta. */
static void put_snapshot(buf *m, uint64_t tick, uint64_t base,
                         const buf *body) {
  m->len = 0;
  put_varint(m, tick);
  put_varint(m, base);
  put_varint(m, 1000000 + tick * 16000);
  put(m, body->data, body->len);
}

static void dgram_recv_seeds(void) {
  const char *t = "fuzz_dgram_recv";
  const qrpci_delta_keys keys = {2, 1}, none = {0, 1};
  buf b = {.len = 0}, msg = {.len = 0}, m = {.len = 0};
  for (size_t i = 0; i < 150; i++) put_u8(&msg, (uint8_t)('a' + i % 26));

  put_u8(&b, 0);
  put_message(&b, DG_FRAG, 1, &msg, 50, 0);
  write_seed(t, "fragments-3", &b);

  /* Out of order and a duplicate on a latest-only channel, then a stale
   * message, and fragments that break the rules: past the end, over
   * max_message, empty, and a header cut short. */
  b.len = 0;
  put_u8(&b, DG_LATEST_ONLY);
  put_message(&b, DG_FRAG, 2, &msg, 50, 1);
  put_fragment(&b, DG_FRAG, 2, msg.len, 0, msg.data, 50);
  put_fragment(&b, DG_FRAG, 1, 3, 0, (const uint8_t *)"old", 3);
  put_fragment(&b, DG_FRAG, 3, 10, 8, (const uint8_t *)"abc", 3);
  put_fragment(&b, DG_FRAG, 4, 5000, 0, msg.data, 50);
  put_fragment(&b, DG_FRAG, 5, 10, 0, (const uint8_t *)"", 0);
  put_message(&b, DG_FRAG, 6, &msg, 64, 0);
  static const uint8_t cut[] = {0x00, 0x03, DG_FRAG, 0x07, 0x40};
  put(&b, cut, sizeof(cut));
  write_seed(t, "fragments-latest-only-and-bad", &b);

  /* A full state, a delta against it, one against that, the last again,
   * a delta against a tick never received, and the first state again. */
  buf s1 = {.len = 0}, s2 = {.len = 0}, s3 = {.len = 0}, d = {.len = 0};
  static const uint32_t ids2[] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
  put_world(&s1, 1, ids8, 8, 0, arena);
  put_world(&s2, 2, ids8, 8, 4, arena);
  put_world(&s3, 3, ids2 + 1, 8, 4, arena);
  b.len = 0;
  put_u8(&b, 0);
  put_snapshot(&m, 1, 0, &s1);
  put_message(&b, DG_SNAP, 1, &m, 60, 0);
  put_delta(&d, &keys, &s1, &s2);
  put_snapshot(&m, 2, 1, &d);
  put_message(&b, DG_SNAP, 2, &m, 60, 0);
  d.len = 0;
  put_delta(&d, &keys, &s2, &s3);
  put_snapshot(&m, 3, 2, &d);
  put_message(&b, DG_SNAP, 3, &m, 60, 1);
  put_message(&b, DG_SNAP, 4, &m, 60, 0);
  put_snapshot(&m, 9, 7, &d);
  put_message(&b, DG_SNAP, 5, &m, 60, 0);
  put_snapshot(&m, 1, 0, &s1);
  put_message(&b, DG_SNAP, 6, &m, 60, 0);
  write_seed(t, "snapshot-full-then-deltas", &b);

  /* Without an entity field: the entities go whole as a field. */
  b.len = d.len = 0;
  put_u8(&b, DG_NO_ENTITIES);
  put_snapshot(&m, 5, 0, &s1);
  put_message(&b, DG_SNAP, 1, &m, 60, 0);
  put_delta(&d, &none, &s1, &s2);
  put_snapshot(&m, 6, 5, &d);
  put_message(&b, DG_SNAP, 2, &m, 60, 0);
  write_seed(t, "snapshot-no-entities", &b);

  /* Both fragmented channels at once, their fragments interleaved. */
  b.len = d.len = 0;
  put_u8(&b, 0);
  buf fr = {.len = 0}, sn = {.len = 0};
  put_message(&fr, DG_FRAG, 1, &msg, 40, 0);
  put_snapshot(&m, 1, 0, &s1);
  put_message(&sn, DG_SNAP, 1, &m, 40, 0);
  const buf *from[2] = {&fr, &sn};
  size_t at[2] = {0, 0};
  for (int k = 0; at[0] < fr.len || at[1] < sn.len; k ^= 1) {
    const buf *f = from[k];
    if (at[k] == f->len) continue;
    size_t n = 2 + ((size_t)f->data[at[k]] << 8 | f->data[at[k] + 1]);
    put(&b, f->data + at[k], n);
    at[k] += n;
  }
  write_seed(t, "two-channels", &b);

  /* Plain latest-only datagrams: in order, stale, a duplicate, an unknown
   * channel, Seq 0, and a header cut short. */
  b.len = 0;
  put_u8(&b, 0);
  static const struct {
    uint64_t ch, seq;
    const char *p;
  } plain[] = {{DG_PLAIN, 1, "a"}, {DG_PLAIN, 3, "c"}, {DG_PLAIN, 2, "b"},
               {DG_PLAIN, 3, "c"}, {9, 1, "?"},        {DG_PLAIN, 0, "0"}};
  for (size_t i = 0; i < sizeof(plain) / sizeof(plain[0]); i++) {
    buf dg = {.len = 0};
    put_varint(&dg, plain[i].ch);
    put_varint(&dg, plain[i].seq);
    put(&dg, plain[i].p, strlen(plain[i].p));
    put_dgram16(&b, &dg);
  }
  static const uint8_t short_dg[] = {0x00, 0x01, DG_PLAIN};
  put(&b, short_dg, sizeof(short_dg));
  write_seed(t, "plain-latest-only", &b);
}

/* ---- PEM ----------------------------------------------------------------- */

/* Modes of fuzz_tls_pem. */
enum { P_CA, P_CERT_AND_KEY, P_CERT, P_EDIT_CERT, P_EDIT_KEY, P_EDIT_CA };

static void pem_seed(const char *name, uint8_t mode, const char *text) {
  buf b = {.len = 0};
  put_u8(&b, mode);
  put(&b, text, strlen(text));
  write_seed("fuzz_tls_pem", name, &b);
}

static void edit_seed(const char *name, uint8_t mode, const uint8_t *edits,
                      size_t n) {
  buf b = {.len = 0};
  put_u8(&b, mode);
  put(&b, edits, n);
  write_seed("fuzz_tls_pem", name, &b);
}

static void pem_seeds(void) {
  qt_certs c;
  if (qt_certs_generate(&c) != 0) {
    fprintf(stderr, "cannot generate certificates\n");
    exit(1);
  }
  pem_seed("ca", P_CA, c.ca_pem);
  pem_seed("cert-with-generated-key", P_CERT, c.server_cert_pem);
  char both[16384];
  snprintf(both, sizeof(both), "%s%s", c.ca_pem, c.other_ca_pem);
  pem_seed("two-cas", P_CA, both);
  pem_seed("empty", P_CA, "");
  pem_seed(
      "bad-base64", P_CA,
      "-----BEGIN CERTIFICATE-----\nMIIB!!!!\n-----END CERTIFICATE-----\n");
  pem_seed("no-end-line", P_CA,
           "-----BEGIN CERTIFICATE-----\nMIIBkTCB+wIJAK\n");

  buf b = {.len = 0};
  put_u8(&b, P_CERT_AND_KEY);
  put(&b, c.server_cert_pem, strlen(c.server_cert_pem));
  put_u8(&b, 0);
  put(&b, "not a key\n", 10);
  write_seed("fuzz_tls_pem", "cert-and-bad-key", &b);

  edit_seed("generated-key", P_EDIT_KEY, NULL, 0);
  edit_seed("generated-cert", P_EDIT_CERT, NULL, 0);
  static const uint8_t flip[] = {0, 0x00, 0x60, 'A', 0, 0x01, 0x00, '/'};
  static const uint8_t cut[] = {3, 0x00, 0x90, 0};
  static const uint8_t insert[] = {1, 0x00, 0x1c, '\n', 2, 0x00, 0x40, 0};
  edit_seed("cert-flipped", P_EDIT_CERT, flip, sizeof(flip));
  edit_seed("key-cut", P_EDIT_KEY, cut, sizeof(cut));
  edit_seed("ca-newline-and-delete", P_EDIT_CA, insert, sizeof(insert));
  qt_certs_free(&c);
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s CORPUS_DIR\n", argv[0]);
    return 2;
  }
  root = argv[1];
  frame_seeds();
  reassembler_seeds();
  stream_header_seeds();
  varint_seeds();
  rpc_seeds();
  pbwire_seeds();
  delta_seeds();
  dgram_recv_seeds();
  pem_seeds();
  return 0;
}
