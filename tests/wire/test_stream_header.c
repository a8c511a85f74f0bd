/* The kind header at the start of every bidirectional stream (docs/protocol.md
 * section 2). */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "wire/stream_header.h"

/* Decodes p[0..len) from an exactly sized heap copy, so a sanitizer build
 * catches any read past the input. */
static qrpci_hdr_result decode(const uint8_t *p, size_t len,
                               qrpci_stream_header *h, size_t *consumed) {
  uint8_t *copy = malloc(len ? len : 1);
  memcpy(copy, p, len);
  qrpci_hdr_result r = qrpci_stream_header_decode(copy, len, h, consumed);
  /* The name points into the input; tests compare it before it goes. */
  if (r == QRPCI_HDR_OK && h->name != NULL) {
    static uint8_t name[QRPCI_RAW_NAME_MAX];
    memcpy(name, h->name, h->name_len);
    h->name = name;
  }
  free(copy);
  return r;
}

START_TEST(test_rpc_kind) {
  /* Frames follow the kind byte directly; they are not part of the header. */
  const uint8_t in[] = {0x00, 0x03, 0x05, 0x01};
  qrpci_stream_header h;
  size_t consumed = 0;
  ck_assert_int_eq(decode(in, sizeof(in), &h, &consumed), QRPCI_HDR_OK);
  ck_assert_uint_eq(h.kind, QRPCI_STREAM_KIND_RPC);
  ck_assert_uint_eq(consumed, 1);
}
END_TEST

START_TEST(test_raw_with_name) {
  const uint8_t in[] = {0x01, 0x05, 'v', 'i', 'd', 'e', 'o', 0xde, 0xad};
  qrpci_stream_header h;
  size_t consumed = 0;
  ck_assert_int_eq(decode(in, sizeof(in), &h, &consumed), QRPCI_HDR_OK);
  ck_assert_uint_eq(h.kind, QRPCI_STREAM_KIND_RAW);
  ck_assert_uint_eq(h.name_len, 5);
  ck_assert_mem_eq(h.name, "video", 5);
  ck_assert_uint_eq(consumed, 7); /* the application's bytes stay unread */
}
END_TEST

START_TEST(test_raw_encode_round_trip) {
  static const char *const names[] = {"a", "file-transfer", "\xc3\xa9t\xc3\xa9",
                                      "\xf0\x9f\x98\x80"};
  for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
    uint8_t out[QRPCI_STREAM_HEADER_MAX];
    size_t n = qrpci_stream_header_encode_raw(out, names[i], strlen(names[i]));
    ck_assert_uint_eq(n, 2 + strlen(names[i]));
    qrpci_stream_header h;
    size_t consumed = 0;
    ck_assert_int_eq(decode(out, n, &h, &consumed), QRPCI_HDR_OK);
    ck_assert_uint_eq(consumed, n);
    ck_assert_uint_eq(h.name_len, strlen(names[i]));
    ck_assert_mem_eq(h.name, names[i], h.name_len);
  }
}
END_TEST

/* 255 bytes needs a two-byte Name Length and is the longest name allowed. */
START_TEST(test_raw_name_255) {
  char name[QRPCI_RAW_NAME_MAX];
  memset(name, 'n', sizeof(name));
  uint8_t out[QRPCI_STREAM_HEADER_MAX];
  size_t n = qrpci_stream_header_encode_raw(out, name, sizeof(name));
  ck_assert_uint_eq(n, QRPCI_STREAM_HEADER_MAX);
  qrpci_stream_header h;
  size_t consumed = 0;
  ck_assert_int_eq(decode(out, n, &h, &consumed), QRPCI_HDR_OK);
  ck_assert_uint_eq(h.name_len, QRPCI_RAW_NAME_MAX);
  ck_assert_uint_eq(consumed, n);
}
END_TEST

START_TEST(test_raw_name_length_0) {
  const uint8_t in[] = {0x01, 0x00, 'x'};
  qrpci_stream_header h;
  size_t consumed = 0;
  ck_assert_int_eq(decode(in, sizeof(in), &h, &consumed), QRPCI_HDR_BAD_NAME);
  uint8_t out[QRPCI_STREAM_HEADER_MAX];
  ck_assert_uint_eq(qrpci_stream_header_encode_raw(out, "", 0), 0);
}
END_TEST

/* A Name Length over 255 is refused as soon as the length is known, without
 * waiting for a name the receiver would never accept. */
START_TEST(test_raw_name_length_256) {
  const uint8_t in[] = {0x01, 0x41, 0x00};
  qrpci_stream_header h;
  size_t consumed = 0;
  ck_assert_int_eq(decode(in, sizeof(in), &h, &consumed), QRPCI_HDR_BAD_NAME);
  const uint8_t huge[] = {0x01, 0xc0, 0, 0, 0, 0x40, 0, 0, 0};
  ck_assert_int_eq(decode(huge, sizeof(huge), &h, &consumed),
                   QRPCI_HDR_BAD_NAME);
  char name[QRPCI_RAW_NAME_MAX + 1];
  memset(name, 'n', sizeof(name));
  uint8_t out[QRPCI_STREAM_HEADER_MAX];
  ck_assert_uint_eq(qrpci_stream_header_encode_raw(out, name, sizeof(name)), 0);
}
END_TEST

START_TEST(test_raw_name_not_utf8) {
  static const struct {
    const char *bytes;
    size_t len;
  } bad[] = {
      {"\xff", 1},             /* never valid */
      {"\x80", 1},             /* lone continuation byte */
      {"ab\xc3", 3},           /* sequence cut short */
      {"\xc0\x80", 2},         /* overlong NUL */
      {"\xe0\x80\xaf", 3},     /* overlong '/' */
      {"\xed\xa0\x80", 3},     /* UTF-16 surrogate */
      {"\xf4\x90\x80\x80", 4}, /* past U+10FFFF */
  };
  for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
    uint8_t in[8] = {0x01, (uint8_t)bad[i].len};
    memcpy(in + 2, bad[i].bytes, bad[i].len);
    qrpci_stream_header h;
    size_t consumed = 0;
    ck_assert_int_eq(decode(in, 2 + bad[i].len, &h, &consumed),
                     QRPCI_HDR_BAD_NAME);
    uint8_t out[QRPCI_STREAM_HEADER_MAX];
    ck_assert_uint_eq(
        qrpci_stream_header_encode_raw(out, bad[i].bytes, bad[i].len), 0);
  }
}
END_TEST

START_TEST(test_utf8_valid_edges) {
  ck_assert(qrpci_utf8_valid((const uint8_t *)"", 0));
  ck_assert(qrpci_utf8_valid((const uint8_t *)"plain ascii", 11));
  ck_assert(qrpci_utf8_valid((const uint8_t *)"\x7f", 1));
  ck_assert(qrpci_utf8_valid((const uint8_t *)"\xc2\x80", 2));     /* U+0080 */
  ck_assert(qrpci_utf8_valid((const uint8_t *)"\xef\xbf\xbf", 3)); /* U+FFFF */
  ck_assert(qrpci_utf8_valid((const uint8_t *)"\xf4\x8f\xbf\xbf", 4));
  ck_assert(!qrpci_utf8_valid((const uint8_t *)"\xf8\x88\x80\x80\x80", 5));
  ck_assert(!qrpci_utf8_valid((const uint8_t *)"\xe2\x82", 2));
}
END_TEST

START_TEST(test_unknown_kind) {
  static const uint8_t kinds[] = {0x02, 0x7f, 0xff};
  for (size_t i = 0; i < sizeof(kinds); i++) {
    qrpci_stream_header h;
    size_t consumed = 0;
    ck_assert_int_eq(decode(&kinds[i], 1, &h, &consumed),
                     QRPCI_HDR_UNKNOWN_KIND);
    ck_assert_uint_eq(h.kind, kinds[i]); /* for the reset and the log */
  }
}
END_TEST

/* Every proper prefix of a valid header asks for more input, never fails. */
START_TEST(test_truncated_at_each_byte) {
  uint8_t out[QRPCI_STREAM_HEADER_MAX];
  char name[200];
  memset(name, 'q', sizeof(name));
  size_t n = qrpci_stream_header_encode_raw(out, name, sizeof(name));
  ck_assert_uint_eq(n, 2 + 1 + sizeof(name));
  for (size_t k = 0; k < n; k++) {
    qrpci_stream_header h;
    size_t consumed = 0;
    ck_assert_int_eq(decode(out, k, &h, &consumed), QRPCI_HDR_NEED_MORE);
  }
  qrpci_stream_header h;
  size_t consumed = 0;
  ck_assert_int_eq(decode(out, n, &h, &consumed), QRPCI_HDR_OK);
  ck_assert_uint_eq(consumed, n);
}
END_TEST

static Suite *stream_header_suite(void) {
  Suite *s = suite_create("stream_header");
  TCase *tc = tcase_create("decode");
  tcase_add_test(tc, test_rpc_kind);
  tcase_add_test(tc, test_raw_with_name);
  tcase_add_test(tc, test_raw_encode_round_trip);
  tcase_add_test(tc, test_raw_name_255);
  tcase_add_test(tc, test_raw_name_length_0);
  tcase_add_test(tc, test_raw_name_length_256);
  tcase_add_test(tc, test_raw_name_not_utf8);
  tcase_add_test(tc, test_utf8_valid_edges);
  tcase_add_test(tc, test_unknown_kind);
  tcase_add_test(tc, test_truncated_at_each_byte);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(stream_header_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
