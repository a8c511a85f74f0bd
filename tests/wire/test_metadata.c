/* Call metadata on the wire (docs/protocol.md, "Call metadata"): the pairs
 * of HEADERS and TRAILERS, their encoder and decoder, the worked example,
 * and every malformed case: a cut at every byte, bad keys, lengths running
 * past the frame. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "wire/frame.h"
#include "wire/metadata.h"

/* docs/protocol.md's example: HEADERS for call 1 with traceparent=00-ab
 * and bin=00 ff. */
static const uint8_t example[] = {
    0x1b, 0x09, 0x01, 0x0b, 't', 'r',  'a',  'c',  'e', 'p',
    'a',  'r',  'e',  'n',  't', 0x05, '0',  '0',  '-', 'a',
    'b',  0x03, 'b',  'i',  'n', 0x02, 0x00, 0xff,
};

START_TEST(test_metadata_worked_example) {
  uint8_t pairs[64], out[64];
  size_t n = qrpci_md_put(pairs, (const uint8_t *)"traceparent", 11,
                          (const uint8_t *)"00-ab", 5);
  static const uint8_t bin[] = {0x00, 0xff};
  n += qrpci_md_put(pairs + n, (const uint8_t *)"bin", 3, bin, 2);
  qrpci_frame f;
  memset(&f, 0, sizeof(f));
  f.type = QRPCI_FRAME_HEADERS;
  f.msgid = 1;
  f.payload = pairs;
  f.payload_len = n;
  size_t len = qrpci_frame_encode(out, sizeof(out), &f);
  ck_assert_uint_eq(len, sizeof(example));
  ck_assert(memcmp(out, example, sizeof(example)) == 0);

  qrpci_frame d;
  const char *why = NULL;
  ck_assert_int_eq(qrpci_frame_decode(out + 1, len - 1, &d, &why), 0);
  ck_assert_uint_eq(d.type, QRPCI_FRAME_HEADERS);
  ck_assert_uint_eq(d.msgid, 1);
  size_t count = 0, total = 0;
  ck_assert_int_eq(qrpci_md_check(d.payload, d.payload_len, &count, &total),
                   QRPCI_MD_OK);
  ck_assert_uint_eq(count, 2);
  ck_assert_uint_eq(total, 11 + 5 + 3 + 2);
  qrpci_md_pair p;
  size_t used = qrpci_md_next(d.payload, d.payload_len, &p);
  ck_assert_uint_eq(p.key_len, 11);
  ck_assert(memcmp(p.key, "traceparent", 11) == 0);
  ck_assert_uint_eq(p.value_len, 5);
  used += qrpci_md_next(d.payload + used, d.payload_len - used, &p);
  ck_assert_uint_eq(used, d.payload_len);
  ck_assert_uint_eq(p.value_len, 2);
  ck_assert(memcmp(p.value, bin, 2) == 0);
  ck_assert_str_eq(qrpci_frame_type_name(QRPCI_FRAME_TRAILERS), "TRAILERS");
}
END_TEST

START_TEST(test_metadata_empty_and_trailers) {
  /* No pairs at all is a valid HEADERS: it asks for response headers. */
  static const uint8_t empty[] = {QRPCI_FRAME_HEADERS, 0x07};
  qrpci_frame d;
  ck_assert_int_eq(qrpci_frame_decode(empty, sizeof(empty), &d, NULL), 0);
  ck_assert_uint_eq(d.payload_len, 0);
  static const uint8_t trl[] = {QRPCI_FRAME_TRAILERS, 0x07, 0x01, 'k', 0x00};
  ck_assert_int_eq(qrpci_frame_decode(trl, sizeof(trl), &d, NULL), 0);
  ck_assert_uint_eq(d.msgid, 7);
  ck_assert_uint_eq(d.payload_len, 3);
}
END_TEST

/* Every cut of the example inside a pair is malformed. */
START_TEST(test_metadata_truncated_at_every_byte) {
  const uint8_t *body = example + 1;
  size_t full = sizeof(example) - 1;
  for (size_t cut = 3; cut < full; cut++) {
    qrpci_frame d;
    const char *why = NULL;
    /* A cut right after a whole pair leaves a shorter valid frame. */
    int whole = cut == 2 + 1 + 11 + 1 + 5;
    int rc = qrpci_frame_decode(body, cut, &d, &why);
    if (whole) {
      ck_assert_int_eq(rc, 0);
    } else {
      ck_assert_int_eq(rc, QRPC_EPROTO);
      ck_assert_ptr_nonnull(why);
      ck_assert(strncmp(why, "HEADERS: ", 9) == 0);
    }
  }
}
END_TEST

START_TEST(test_metadata_bad_keys) {
  static const struct {
    uint8_t body[12];
    size_t len;
    const char *why;
  } cases[] = {
      {{0x09, 0x01, 0x01, 'A', 0x00}, 5, "HEADERS: key is not lowercase ASCII"},
      {{0x0a, 0x01, 0x02, 'a', ' ', 0x00},
       6,
       "TRAILERS: key is not lowercase ASCII"},
      {{0x09, 0x01, 0x02, 0xc3, 0xa9, 0x00},
       6,
       "HEADERS: key is not lowercase ASCII"},
      {{0x09, 0x01, 0x00, 0x00}, 4, "HEADERS: Key Length 0 or over 255"},
      {{0x09, 0x01, 0x41, 0x00, 'a'}, 5, "HEADERS: Key Length 0 or over 255"},
      {{0x09, 0x01, 0x03, 'a', 'b'}, 5, "HEADERS: Key runs past frame"},
      {{0x09, 0x01, 0x01, 'a'}, 4, "HEADERS: truncated Value Length"},
      {{0x09, 0x01, 0x01, 'a', 0x05, 'x'}, 6, "HEADERS: Value runs past frame"},
      {{0x09, 0x01, 0x01, 'a', 0x40}, 5, "HEADERS: truncated Value Length"},
      {{0x09, 0x00}, 2, "HEADERS: MsgId 0"},
      {{0x0a}, 1, "TRAILERS: truncated MsgId"},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    qrpci_frame d;
    const char *why = NULL;
    ck_assert_int_eq(qrpci_frame_decode(cases[i].body, cases[i].len, &d, &why),
                     QRPC_EPROTO);
    ck_assert_str_eq(why, cases[i].why);
  }
  ck_assert(qrpci_md_key_valid((const uint8_t *)"x-trace_id.v2", 13));
  ck_assert(!qrpci_md_key_valid((const uint8_t *)"X", 1));
  ck_assert(!qrpci_md_key_valid((const uint8_t *)"a", 0));
}
END_TEST

START_TEST(test_metadata_encoder_refuses) {
  uint8_t out[300];
  uint8_t key[256];
  memset(key, 'k', sizeof(key));
  ck_assert_uint_eq(qrpci_md_put(out, key, 256, NULL, 0), 0);
  ck_assert_uint_eq(qrpci_md_put(out, key, 255, NULL, 0), 255 + 2 + 1);
  ck_assert_uint_eq(qrpci_md_put(out, (const uint8_t *)"K", 1, NULL, 0), 0);
  ck_assert_uint_eq(qrpci_md_put(out, (const uint8_t *)"k", 1, NULL, 3), 0);
  /* The frame encoder refuses pairs its decoder would refuse. */
  static const uint8_t bad[] = {0x01, 'Z', 0x00};
  qrpci_frame f;
  memset(&f, 0, sizeof(f));
  f.type = QRPCI_FRAME_TRAILERS;
  f.msgid = 2;
  f.payload = bad;
  f.payload_len = sizeof(bad);
  ck_assert_uint_eq(qrpci_frame_encoded_len(&f), 0);
  ck_assert_uint_eq(qrpci_frame_encode(out, sizeof(out), &f), 0);
  ck_assert_uint_eq(qrpci_frame_header_len(QRPCI_FRAME_HEADERS, 1, 0, 0, 0), 0);
}
END_TEST

static Suite *metadata_suite(void) {
  Suite *s = suite_create("wire_metadata");
  TCase *tc = tcase_create("metadata");
  tcase_add_test(tc, test_metadata_worked_example);
  tcase_add_test(tc, test_metadata_empty_and_trailers);
  tcase_add_test(tc, test_metadata_truncated_at_every_byte);
  tcase_add_test(tc, test_metadata_bad_keys);
  tcase_add_test(tc, test_metadata_encoder_refuses);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(metadata_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
