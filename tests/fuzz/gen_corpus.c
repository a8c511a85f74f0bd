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
  pem_seeds();
  return 0;
}
