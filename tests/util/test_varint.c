/* QUIC variable-length integers, RFC 9000 section 16. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "util/varint.h"

/* The values where the encoded size changes, with the size on each side. */
static const struct {
  uint64_t v;
  size_t len;
} boundaries[] = {
    {0, 1},
    {63, 1},
    {64, 2},
    {16383, 2},
    {16384, 4},
    {(UINT64_C(1) << 30) - 1, 4},
    {UINT64_C(1) << 30, 8},
    {QRPCI_VARINT_MAX, 8},
};

#define N_BOUNDARIES (sizeof(boundaries) / sizeof(boundaries[0]))

START_TEST(test_boundaries_round_trip) {
  uint64_t v = boundaries[_i].v;
  uint8_t buf[QRPCI_VARINT_MAXLEN];
  uint64_t got = 0;
  ck_assert_uint_eq(qrpci_varint_len(v), boundaries[_i].len);
  ck_assert_uint_eq(qrpci_varint_put(buf, v), boundaries[_i].len);
  ck_assert_uint_eq(qrpci_varint_get(buf, boundaries[_i].len, &got),
                    boundaries[_i].len);
  ck_assert_uint_eq(got, v);
}
END_TEST

/* The examples of RFC 9000 appendix A.1, including a two-byte encoding of
 * 37, which is not the shortest but must still be accepted. */
START_TEST(test_rfc9000_examples) {
  static const struct {
    uint8_t bytes[8];
    size_t len;
    uint64_t v;
  } ex[] = {
      {{0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c},
       8,
       UINT64_C(151288809941952652)},
      {{0x9d, 0x7f, 0x3e, 0x7d}, 4, 494878333},
      {{0x7b, 0xbd}, 2, 15293},
      {{0x25}, 1, 37},
      {{0x40, 0x25}, 2, 37},
  };
  for (size_t i = 0; i < sizeof(ex) / sizeof(ex[0]); i++) {
    uint64_t got = 0;
    ck_assert_uint_eq(qrpci_varint_get(ex[i].bytes, ex[i].len, &got),
                      ex[i].len);
    ck_assert_uint_eq(got, ex[i].v);
  }
  uint8_t out[8];
  ck_assert_uint_eq(qrpci_varint_put(out, UINT64_C(151288809941952652)), 8);
  ck_assert_mem_eq(out, ex[0].bytes, 8);
  ck_assert_uint_eq(qrpci_varint_put(out, 15293), 2);
  ck_assert_mem_eq(out, ex[2].bytes, 2);
}
END_TEST

/* A varint cut short is reported as incomplete and its bytes past the given
 * length are never read: each prefix is decoded from an exactly sized heap
 * copy, so a sanitizer build catches any over-read. */
START_TEST(test_truncated_is_incomplete) {
  uint64_t v = boundaries[_i].v;
  uint8_t buf[QRPCI_VARINT_MAXLEN];
  size_t n = qrpci_varint_put(buf, v);
  for (size_t k = 0; k < n; k++) {
    uint8_t *copy = malloc(k ? k : 1);
    uint64_t got = 12345;
    memcpy(copy, buf, k);
    ck_assert_uint_eq(qrpci_varint_get(copy, k, &got), 0);
    ck_assert_uint_eq(got, 12345);
    free(copy);
  }
}
END_TEST

/* Decoding consumes only its own bytes, so fields can follow each other. */
START_TEST(test_consecutive_values) {
  uint8_t buf[N_BOUNDARIES * QRPCI_VARINT_MAXLEN];
  size_t off = 0;
  for (size_t i = 0; i < N_BOUNDARIES; i++)
    off += qrpci_varint_put(buf + off, boundaries[i].v);
  size_t pos = 0;
  for (size_t i = 0; i < N_BOUNDARIES; i++) {
    uint64_t got;
    size_t n = qrpci_varint_get(buf + pos, off - pos, &got);
    ck_assert_uint_eq(n, boundaries[i].len);
    ck_assert_uint_eq(got, boundaries[i].v);
    pos += n;
  }
  ck_assert_uint_eq(pos, off);
}
END_TEST

static Suite *varint_suite(void) {
  Suite *s = suite_create("varint");
  TCase *tc = tcase_create("codec");
  tcase_add_loop_test(tc, test_boundaries_round_trip, 0, (int)N_BOUNDARIES);
  tcase_add_test(tc, test_rfc9000_examples);
  tcase_add_loop_test(tc, test_truncated_is_incomplete, 0, (int)N_BOUNDARIES);
  tcase_add_test(tc, test_consecutive_values);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(varint_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
