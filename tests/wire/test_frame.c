/* Frames on RPC streams (docs/protocol.md section 3): encoding, decoding and
 * every malformed case a single frame can show. */
#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "util/varint.h"
#include "wire/frame.h"

static const uint8_t all_types[] = {
    QRPCI_FRAME_REQUEST, QRPCI_FRAME_NOTIFY, QRPCI_FRAME_REPLY,
    QRPCI_FRAME_ERROR,   QRPCI_FRAME_CANCEL, QRPCI_FRAME_ITEM,
    QRPCI_FRAME_END,     QRPCI_FRAME_GOAWAY,
};
#define N_TYPES (sizeof(all_types) / sizeof(all_types[0]))

/* Values where a varint changes size, on both sides. */
static const uint64_t edges[] = {
    1,
    63,
    64,
    16383,
    16384,
    (UINT64_C(1) << 30) - 1,
    UINT64_C(1) << 30,
    QRPCI_VARINT_MAX,
};
#define N_EDGES (sizeof(edges) / sizeof(edges[0]))

/* Payload sizes that move the Length field across its size boundaries. */
static const size_t payload_sizes[] = {0, 5, 70, 16400};
#define N_SIZES (sizeof(payload_sizes) / sizeof(payload_sizes[0]))

static const char detail_text[] =
    "deadline passed \xe2\x80\x94 r\xc3\xa9sum\xc3\xa9";

static int has_msgid(uint8_t t) {
  return t != QRPCI_FRAME_NOTIFY && t != QRPCI_FRAME_GOAWAY;
}
static int has_payload(uint8_t t) {
  return t != QRPCI_FRAME_CANCEL && t != QRPCI_FRAME_GOAWAY;
}

/* A frame of type t with every field it has set to v. */
static qrpci_frame sample(uint8_t t, uint64_t v, const uint8_t *payload,
                          size_t payload_len) {
  qrpci_frame f;
  memset(&f, 0, sizeof(f));
  f.type = t;
  switch (t) {
  case QRPCI_FRAME_REQUEST:
    f.timeout_ms = v;
    /* fall through */
  case QRPCI_FRAME_NOTIFY:
    f.method = v;
    break;
  case QRPCI_FRAME_ERROR:
  case QRPCI_FRAME_END:
    f.status = v;
    f.detail = (const uint8_t *)detail_text;
    f.detail_len = sizeof(detail_text) - 1;
    break;
  case QRPCI_FRAME_GOAWAY:
    f.last_msgid = v;
    break;
  default:
    break;
  }
  if (has_msgid(t)) f.msgid = v;
  if (has_payload(t)) {
    f.payload = payload;
    f.payload_len = payload_len;
  }
  return f;
}

static uint8_t *pattern(size_t n) {
  uint8_t *p = malloc(n ? n : 1);
  for (size_t i = 0; i < n; i++) p[i] = (uint8_t)(i * 7 + 3);
  return p;
}

/* Encodes f into an exactly sized heap buffer; *n is its size. */
static uint8_t *encode(const qrpci_frame *f, size_t *n) {
  *n = qrpci_frame_encoded_len(f);
  ck_assert_uint_gt(*n, 0);
  uint8_t *out = malloc(*n);
  ck_assert_uint_eq(qrpci_frame_encode(out, *n, f), *n);
  return out;
}

/* The body of an encoded frame: checks that Length counts exactly the bytes
 * after it. */
static const uint8_t *body_of(const uint8_t *frame, size_t n, size_t *len) {
  uint64_t length;
  size_t vl = qrpci_varint_get(frame, n, &length);
  ck_assert_uint_gt(vl, 0);
  ck_assert_uint_eq(length, n - vl);
  *len = n - vl;
  return frame + vl;
}

static void assert_same(const qrpci_frame *a, const qrpci_frame *b) {
  ck_assert_uint_eq(a->type, b->type);
  ck_assert_uint_eq(a->msgid, b->msgid);
  ck_assert_uint_eq(a->method, b->method);
  ck_assert_uint_eq(a->timeout_ms, b->timeout_ms);
  ck_assert_uint_eq(a->status, b->status);
  ck_assert_uint_eq(a->last_msgid, b->last_msgid);
  ck_assert_uint_eq(a->detail_len, b->detail_len);
  if (a->detail_len) ck_assert_mem_eq(a->detail, b->detail, a->detail_len);
  ck_assert_uint_eq(a->payload_len, b->payload_len);
  if (a->payload_len) ck_assert_mem_eq(a->payload, b->payload, a->payload_len);
}

/* Decodes body[0..len) from an exactly sized heap copy, so that a sanitizer
 * build catches any read past the input, and returns the result. */
static int decode_copy(const uint8_t *body, size_t len, const char **why) {
  uint8_t *copy = malloc(len ? len : 1);
  qrpci_frame f;
  memcpy(copy, body, len);
  *why = NULL;
  int rc = qrpci_frame_decode(copy, len, &f, why);
  free(copy);
  return rc;
}

static void assert_proto(const uint8_t *body, size_t len, const char *why) {
  const char *got;
  ck_assert_int_eq(decode_copy(body, len, &got), QRPC_EPROTO);
  ck_assert_ptr_nonnull(got);
  ck_assert_str_eq(got, why);
}

/* ---- round trips ------------------------------------------------------- */

/* _i walks types x edge values x payload sizes. */
START_TEST(test_round_trip) {
  uint8_t t = all_types[_i % N_TYPES];
  uint64_t v = edges[(_i / N_TYPES) % N_EDGES];
  size_t plen = payload_sizes[_i / (N_TYPES * N_EDGES)];
  uint8_t *payload = pattern(plen);
  qrpci_frame in = sample(t, v, payload, plen), out;
  size_t n, blen;
  uint8_t *frame = encode(&in, &n);
  const uint8_t *body = body_of(frame, n, &blen);
  const char *why = NULL;

  ck_assert_int_eq(qrpci_frame_decode(body, blen, &out, &why), 0);
  assert_same(&in, &out);
  /* Decoding borrows: the payload is read in place, never copied. */
  if (out.payload_len)
    ck_assert_ptr_eq(out.payload, body + blen - out.payload_len);
  free(frame);
  free(payload);
}
END_TEST

/* Fields a type allows to be 0 survive a round trip as 0. */
START_TEST(test_round_trip_zero_fields) {
  qrpci_frame req = sample(QRPCI_FRAME_REQUEST, 9, NULL, 0);
  req.method = 0;
  req.timeout_ms = 0; /* no timeout */
  qrpci_frame end = sample(QRPCI_FRAME_END, 9, NULL, 0);
  end.status = 0; /* OK */
  end.detail = NULL;
  end.detail_len = 0;
  qrpci_frame goaway = sample(QRPCI_FRAME_GOAWAY, 0, NULL, 0);
  const qrpci_frame *frames[] = {&req, &end, &goaway};
  for (size_t i = 0; i < 3; i++) {
    size_t n, blen;
    uint8_t *frame = encode(frames[i], &n);
    const uint8_t *body = body_of(frame, n, &blen);
    qrpci_frame out;
    ck_assert_int_eq(qrpci_frame_decode(body, blen, &out, NULL), 0);
    assert_same(frames[i], &out);
    free(frame);
  }
}
END_TEST

/* The Length prefix takes 1, 2, 4 or 8 bytes as the body crosses 63/64,
 * 16383/16384 and 2^30-1/2^30; sizes are computed without a payload in
 * memory, as a sender reserving space would. */
START_TEST(test_length_prefix_sizes) {
  static const struct {
    uint64_t body;
    size_t prefix;
  } cases[] = {{63, 1},
               {64, 2},
               {16383, 2},
               {16384, 4},
               {(UINT64_C(1) << 30) - 1, 4},
               {UINT64_C(1) << 30, 8}};
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    /* REPLY with MsgId 1: Type and MsgId take 2 bytes of the body. */
    size_t plen = (size_t)(cases[i].body - 2);
    ck_assert_uint_eq(qrpci_frame_header_len(QRPCI_FRAME_REPLY, 1, 0, 0, plen),
                      cases[i].prefix + 2);
    qrpci_frame f = sample(QRPCI_FRAME_REPLY, 1, (const uint8_t *)"", plen);
    ck_assert_uint_eq(qrpci_frame_encoded_len(&f),
                      cases[i].prefix + cases[i].body);
  }
}
END_TEST

/* The published examples of docs/protocol.md, byte for byte. */
START_TEST(test_worked_examples) {
  static const uint8_t hello_req[] = {0x0a, 0x04, 'q', 'r', 'p', 'c'};
  static const uint8_t hello_rep[] = {0x0a, 0x07, 'h', 'i', ' ',
                                      'q',  'r',  'p', 'c'};
  static const uint8_t want_req[] = {0x0e, 0x01, 0x01, 0xb9, 0x3c,
                                     0x3e, 0x51, 0x53, 0x88, 0x0a,
                                     0x04, 0x71, 0x72, 0x70, 0x63};
  static const uint8_t want_rep[] = {0x0b, 0x03, 0x01, 0x0a, 0x07, 0x68,
                                     0x69, 0x20, 0x71, 0x72, 0x70, 0x63};
  static const uint8_t want_err[] = {0x10, 0x04, 0x02, 0x05, 0x0c, 'n',
                                     'o',  ' ',  's',  'u',  'c',  'h',
                                     ' ',  'u',  's',  'e',  'r'};
  uint8_t out[32];
  qrpci_frame f;

  /* REQUEST MsgId 1 for hello.Greeter/SayHello (FNV-1a id 0x393c3e51),
   * timeout 5000 ms, HelloRequest{name: "qrpc"}. */
  memset(&f, 0, sizeof(f));
  f.type = QRPCI_FRAME_REQUEST;
  f.msgid = 1;
  f.method = 0x393c3e51;
  f.timeout_ms = 5000;
  f.payload = hello_req;
  f.payload_len = sizeof(hello_req);
  ck_assert_uint_eq(qrpci_frame_encode(out, sizeof(out), &f), sizeof(want_req));
  ck_assert_mem_eq(out, want_req, sizeof(want_req));

  /* REPLY MsgId 1 with HelloReply{message: "hi qrpc"}. */
  memset(&f, 0, sizeof(f));
  f.type = QRPCI_FRAME_REPLY;
  f.msgid = 1;
  f.payload = hello_rep;
  f.payload_len = sizeof(hello_rep);
  ck_assert_uint_eq(qrpci_frame_encode(out, sizeof(out), &f), sizeof(want_rep));
  ck_assert_mem_eq(out, want_rep, sizeof(want_rep));

  /* ERROR MsgId 2, status 5 NOT_FOUND, Detail "no such user". */
  memset(&f, 0, sizeof(f));
  f.type = QRPCI_FRAME_ERROR;
  f.msgid = 2;
  f.status = 5;
  f.detail = (const uint8_t *)"no such user";
  f.detail_len = 12;
  ck_assert_uint_eq(qrpci_frame_encode(out, sizeof(out), &f), sizeof(want_err));
  ck_assert_mem_eq(out, want_err, sizeof(want_err));

  /* And back. */
  ck_assert_int_eq(qrpci_frame_decode(want_req + 1, 14, &f, NULL), 0);
  ck_assert_uint_eq(f.method, 0x393c3e51);
  ck_assert_uint_eq(f.timeout_ms, 5000);
  ck_assert_uint_eq(f.payload_len, sizeof(hello_req));
  ck_assert_int_eq(qrpci_frame_decode(want_err + 1, 16, &f, NULL), 0);
  ck_assert_uint_eq(f.status, 5);
  ck_assert_mem_eq(f.detail, "no such user", 12);
}
END_TEST

/* ---- header-only encoding ---------------------------------------------- */

/* Writing the header and packing the payload after it gives the very bytes
 * the full encoder gives. */
START_TEST(test_header_then_payload) {
  static const uint8_t types[] = {QRPCI_FRAME_REQUEST, QRPCI_FRAME_NOTIFY,
                                  QRPCI_FRAME_REPLY, QRPCI_FRAME_ITEM};
  for (size_t i = 0; i < sizeof(types); i++) {
    for (size_t e = 0; e < N_EDGES; e++) {
      for (size_t s = 0; s < N_SIZES; s++) {
        size_t plen = payload_sizes[s];
        uint8_t *payload = pattern(plen);
        qrpci_frame f = sample(types[i], edges[e], payload, plen);
        size_t n;
        uint8_t *want = encode(&f, &n);
        size_t h = qrpci_frame_header_len(f.type, f.msgid, f.method,
                                          f.timeout_ms, plen);
        ck_assert_uint_eq(h + plen, n);
        uint8_t *out = malloc(n);
        ck_assert_uint_eq(qrpci_frame_encode_header(out, h, f.type, f.msgid,
                                                    f.method, f.timeout_ms,
                                                    plen),
                          h);
        if (plen) memcpy(out + h, payload, plen);
        ck_assert_mem_eq(out, want, n);
        /* One byte short of the header writes nothing. */
        ck_assert_uint_eq(qrpci_frame_encode_header(out, h - 1, f.type, f.msgid,
                                                    f.method, f.timeout_ms,
                                                    plen),
                          0);
        free(out);
        free(want);
        free(payload);
      }
    }
  }
}
END_TEST

START_TEST(test_header_path_refuses) {
  uint8_t out[64];
  /* Types whose fields are not plain varints before a payload. */
  static const uint8_t others[] = {QRPCI_FRAME_ERROR,
                                   QRPCI_FRAME_END,
                                   QRPCI_FRAME_CANCEL,
                                   QRPCI_FRAME_GOAWAY,
                                   0,
                                   9,
                                   0xff};
  for (size_t i = 0; i < sizeof(others); i++) {
    ck_assert_uint_eq(qrpci_frame_header_len(others[i], 1, 1, 1, 0), 0);
    ck_assert_uint_eq(
        qrpci_frame_encode_header(out, sizeof(out), others[i], 1, 1, 1, 0), 0);
  }
  /* MsgId 0 would be a protocol violation at the peer. */
  ck_assert_uint_eq(qrpci_frame_header_len(QRPCI_FRAME_REPLY, 0, 0, 0, 4), 0);
  /* NOTIFY has no MsgId, so a 0 there is simply ignored. */
  ck_assert_uint_eq(qrpci_frame_header_len(QRPCI_FRAME_NOTIFY, 0, 7, 0, 4), 3);
  ck_assert_uint_eq(qrpci_frame_header_len(QRPCI_FRAME_REQUEST, 1,
                                           QRPCI_VARINT_MAX + 1, 0, 0),
                    0);
  /* Length itself is a varint: a body of 2^62-1 bytes is the largest. */
  ck_assert_uint_eq(
      qrpci_frame_header_len(QRPCI_FRAME_REPLY, 1, 0, 0, SIZE_MAX), 0);
#if SIZE_MAX > UINT32_MAX
  ck_assert_uint_eq(qrpci_frame_header_len(QRPCI_FRAME_REPLY, 1, 0, 0,
                                           (size_t)QRPCI_VARINT_MAX - 2),
                    8 + 2);
  ck_assert_uint_eq(qrpci_frame_header_len(QRPCI_FRAME_REPLY, 1, 0, 0,
                                           (size_t)QRPCI_VARINT_MAX - 1),
                    0);
#endif
}
END_TEST

/* ---- encoder refusals -------------------------------------------------- */

static void assert_unsendable(const qrpci_frame *f) {
  uint8_t out[256];
  memset(out, 0xaa, sizeof(out));
  ck_assert_uint_eq(qrpci_frame_encoded_len(f), 0);
  ck_assert_uint_eq(qrpci_frame_encode(out, sizeof(out), f), 0);
  for (size_t i = 0; i < sizeof(out); i++) ck_assert_uint_eq(out[i], 0xaa);
}

/* The encoder never produces a frame the peer would have to reject. */
START_TEST(test_encoder_refuses_violations) {
  for (size_t i = 0; i < N_TYPES; i++) {
    if (!has_msgid(all_types[i])) continue;
    qrpci_frame f = sample(all_types[i], 3, NULL, 0);
    f.msgid = 0;
    assert_unsendable(&f);
  }
  qrpci_frame f = sample(QRPCI_FRAME_ERROR, 3, NULL, 0);
  f.status = 0;
  assert_unsendable(&f);

  f = sample(QRPCI_FRAME_ERROR, 3, NULL, 0);
  f.detail = (const uint8_t *)"bad \xff byte";
  f.detail_len = 10;
  assert_unsendable(&f);
  f.type = QRPCI_FRAME_END;
  assert_unsendable(&f);

  f = sample(QRPCI_FRAME_CANCEL, 3, NULL, 0);
  f.payload = (const uint8_t *)"x";
  f.payload_len = 1;
  assert_unsendable(&f);
  f.type = QRPCI_FRAME_GOAWAY;
  assert_unsendable(&f);

  f = sample(QRPCI_FRAME_REQUEST, 3, NULL, 0);
  f.timeout_ms = QRPCI_VARINT_MAX + 1;
  assert_unsendable(&f);
  f = sample(QRPCI_FRAME_GOAWAY, QRPCI_VARINT_MAX + 1, NULL, 0);
  assert_unsendable(&f);

  /* A length with no bytes behind it. */
  f = sample(QRPCI_FRAME_REPLY, 3, NULL, 5);
  assert_unsendable(&f);
  f = sample(QRPCI_FRAME_END, 3, NULL, 0);
  f.detail = NULL;
  f.detail_len = 4;
  assert_unsendable(&f);

  f = sample(QRPCI_FRAME_REPLY, 3, NULL, 0);
  f.type = 0;
  assert_unsendable(&f);
  f.type = 0x2a;
  assert_unsendable(&f);
}
END_TEST

/* Too little room: nothing is written, not even partly (the buffer is sized
 * exactly, so a sanitizer build catches an overflow). */
START_TEST(test_encode_cap_too_small) {
  uint8_t payload[100];
  memset(payload, 0x5a, sizeof(payload));
  for (size_t i = 0; i < N_TYPES; i++) {
    qrpci_frame f = sample(all_types[i], 16384, payload, sizeof(payload));
    size_t n = qrpci_frame_encoded_len(&f);
    for (size_t cap = 0; cap < n; cap++) {
      uint8_t *out = malloc(cap ? cap : 1);
      ck_assert_uint_eq(qrpci_frame_encode(out, cap, &f), 0);
      free(out);
    }
  }
}
END_TEST

/* ---- malformed frames -------------------------------------------------- */

/* Every proper prefix of a valid body: cutting into the fields is a protocol
 * violation naming the frame; cutting into the payload only shortens it. */
START_TEST(test_truncated_at_every_byte) {
  uint8_t t = all_types[_i % N_TYPES];
  uint64_t v = edges[_i / N_TYPES];
  uint8_t payload[9] = "payload!";
  qrpci_frame in = sample(t, v, payload, sizeof(payload));
  size_t n, blen;
  uint8_t *frame = encode(&in, &n);
  const uint8_t *body = body_of(frame, n, &blen);
  size_t fields_end = blen - in.payload_len;
  const char *name = qrpci_frame_type_name(t);

  for (size_t k = 0; k < blen; k++) {
    const char *why;
    int rc = decode_copy(body, k, &why);
    if (k < fields_end) {
      ck_assert_int_eq(rc, QRPC_EPROTO);
      ck_assert_ptr_nonnull(why);
      if (k > 0) ck_assert_int_eq(strncmp(why, name, strlen(name)), 0);
    } else {
      ck_assert_int_eq(rc, 0);
    }
  }
  free(frame);
}
END_TEST

START_TEST(test_length_0) {
  assert_proto((const uint8_t *)"", 0, "frame with Length 0");
}
END_TEST

START_TEST(test_unknown_types) {
  for (unsigned t = 0; t < 256; t++) {
    if (t >= QRPCI_FRAME_REQUEST && t <= QRPCI_FRAME_TRAILERS) continue;
    const uint8_t body[] = {(uint8_t)t, 0x01, 0x02};
    char want[40];
    snprintf(want, sizeof(want), "unknown frame type 0x%02x", t);
    assert_proto(body, sizeof(body), want);
    assert_proto(body, 1, want);
  }
}
END_TEST

START_TEST(test_msgid_0) {
  static const struct {
    uint8_t body[8];
    size_t len;
    const char *why;
  } cases[] = {
      {{QRPCI_FRAME_REQUEST, 0x00, 0x01, 0x00}, 4, "REQUEST: MsgId 0"},
      {{QRPCI_FRAME_REPLY, 0x00}, 2, "REPLY: MsgId 0"},
      {{QRPCI_FRAME_ERROR, 0x00, 0x02, 0x00}, 4, "ERROR: MsgId 0"},
      {{QRPCI_FRAME_CANCEL, 0x00}, 2, "CANCEL: MsgId 0"},
      {{QRPCI_FRAME_ITEM, 0x00, 0x08, 0x01}, 4, "ITEM: MsgId 0"},
      {{QRPCI_FRAME_END, 0x00, 0x00, 0x00}, 4, "END: MsgId 0"},
      /* The same zero in a longer, non-shortest encoding. */
      {{QRPCI_FRAME_CANCEL, 0x80, 0, 0, 0}, 5, "CANCEL: MsgId 0"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
    assert_proto(cases[i].body, cases[i].len, cases[i].why);

  /* GOAWAY's Last MsgId 0 means "none of your calls", which is fine. */
  const uint8_t goaway[] = {QRPCI_FRAME_GOAWAY, 0x00};
  qrpci_frame f;
  ck_assert_int_eq(qrpci_frame_decode(goaway, sizeof(goaway), &f, NULL), 0);
  ck_assert_uint_eq(f.last_msgid, 0);
}
END_TEST

START_TEST(test_error_status_0) {
  const uint8_t error[] = {QRPCI_FRAME_ERROR, 0x07, 0x00, 0x02, 'o', 'k'};
  assert_proto(error, sizeof(error), "ERROR: status 0");
  /* END with status 0 is how a stream finishes successfully. */
  const uint8_t end[] = {QRPCI_FRAME_END, 0x07, 0x00, 0x00};
  qrpci_frame f;
  ck_assert_int_eq(qrpci_frame_decode(end, sizeof(end), &f, NULL), 0);
  ck_assert_uint_eq(f.status, 0);
  ck_assert_uint_eq(f.detail_len, 0);
}
END_TEST

START_TEST(test_trailing_bytes) {
  const uint8_t cancel[] = {QRPCI_FRAME_CANCEL, 0x07, 0x00};
  assert_proto(cancel, sizeof(cancel), "CANCEL: trailing bytes");
  const uint8_t goaway[] = {QRPCI_FRAME_GOAWAY, 0x07, 0xff, 0xff};
  assert_proto(goaway, sizeof(goaway), "GOAWAY: trailing bytes");
}
END_TEST

START_TEST(test_detail_past_frame) {
  const uint8_t error[] = {QRPCI_FRAME_ERROR, 0x01, 0x0d, 0x0a, 'a', 'b', 'c'};
  assert_proto(error, sizeof(error), "ERROR: Detail Length runs past frame");
  const uint8_t end[] = {QRPCI_FRAME_END, 0x01, 0x00, 0x01};
  assert_proto(end, sizeof(end), "END: Detail Length runs past frame");
  /* The largest Detail Length a varint holds must not wrap any arithmetic. */
  uint8_t huge[12] = {QRPCI_FRAME_ERROR, 0x01, 0x0d};
  memset(huge + 3, 0xff, 8); /* Detail Length 2^62-1 */
  huge[11] = 'x';
  assert_proto(huge, sizeof(huge), "ERROR: Detail Length runs past frame");
}
END_TEST

START_TEST(test_detail_not_utf8) {
  const uint8_t error[] = {QRPCI_FRAME_ERROR, 0x01, 0x0d, 0x03, 'a', 0xc3, 'b'};
  assert_proto(error, sizeof(error), "ERROR: Detail is not valid UTF-8");
  const uint8_t end[] = {QRPCI_FRAME_END, 0x01, 0x02, 0x02, 0xc0, 0x80};
  assert_proto(end, sizeof(end), "END: Detail is not valid UTF-8");
}
END_TEST

/* Bytes after the Detail of ERROR and END are that frame's payload (see
 * docs/protocol.md, Clarifications): accepted and handed up. */
START_TEST(test_payload_after_detail) {
  const uint8_t error[] = {
      QRPCI_FRAME_ERROR, 0x01, 0x0d, 0x02, 'n', 'o', 0x0a, 0x01, 'x'};
  qrpci_frame f;
  ck_assert_int_eq(qrpci_frame_decode(error, sizeof(error), &f, NULL), 0);
  ck_assert_uint_eq(f.status, 13);
  ck_assert_uint_eq(f.detail_len, 2);
  ck_assert_mem_eq(f.detail, "no", 2);
  ck_assert_uint_eq(f.payload_len, 3);
  ck_assert_ptr_eq(f.payload, error + 6);
}
END_TEST

START_TEST(test_type_names) {
  ck_assert_str_eq(qrpci_frame_type_name(QRPCI_FRAME_REQUEST), "REQUEST");
  ck_assert_str_eq(qrpci_frame_type_name(QRPCI_FRAME_GOAWAY), "GOAWAY");
  ck_assert_str_eq(qrpci_frame_type_name(0), "unknown");
  ck_assert_str_eq(qrpci_frame_type_name(0x2a), "unknown");
}
END_TEST

static Suite *frame_suite(void) {
  Suite *s = suite_create("frame");
  TCase *tc = tcase_create("encode");
  tcase_add_loop_test(tc, test_round_trip, 0,
                      (int)(N_TYPES * N_EDGES * N_SIZES));
  tcase_add_test(tc, test_round_trip_zero_fields);
  tcase_add_test(tc, test_length_prefix_sizes);
  tcase_add_test(tc, test_worked_examples);
  tcase_add_test(tc, test_header_then_payload);
  tcase_add_test(tc, test_header_path_refuses);
  tcase_add_test(tc, test_encoder_refuses_violations);
  tcase_add_test(tc, test_encode_cap_too_small);
  tcase_add_test(tc, test_type_names);
  suite_add_tcase(s, tc);

  tc = tcase_create("malformed");
  tcase_add_loop_test(tc, test_truncated_at_every_byte, 0,
                      (int)(N_TYPES * N_EDGES));
  tcase_add_test(tc, test_length_0);
  tcase_add_test(tc, test_unknown_types);
  tcase_add_test(tc, test_msgid_0);
  tcase_add_test(tc, test_error_status_0);
  tcase_add_test(tc, test_trailing_bytes);
  tcase_add_test(tc, test_detail_past_frame);
  tcase_add_test(tc, test_detail_not_utf8);
  tcase_add_test(tc, test_payload_after_detail);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(frame_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
