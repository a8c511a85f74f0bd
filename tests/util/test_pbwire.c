/* The protobuf wire format read in place (util/pbwire.h). */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "util/pbwire.h"

/* Runs qrpci_pb_field_bytes() on an exactly sized heap copy of msg, so a
 * sanitizer build catches a read past its end; *off is where the value
 * starts in msg, or -1 when it is not inside msg. */
static int field(const uint8_t *msg, size_t len, uint32_t f, size_t *vlen,
                 long *off) {
  uint8_t *copy = malloc(len ? len : 1);
  ck_assert_ptr_nonnull(copy);
  if (len) memcpy(copy, msg, len);
  const uint8_t *v = NULL;
  *vlen = 12345;
  *off = -2;
  int rv = qrpci_pb_field_bytes(copy, len, f, &v, vlen);
  if (rv == 0) {
    ck_assert_ptr_nonnull(v);
    *off = v >= copy && v < copy + len ? (long)(v - copy) : -1;
  }
  free(copy);
  return rv;
}

START_TEST(test_varint) {
  static const struct {
    uint8_t b[11];
    size_t n, used;
    uint64_t v;
  } c[] = {
      {{0x00}, 1, 1, 0},
      {{0x7f}, 1, 1, 127},
      {{0xac, 0x02}, 2, 2, 300},
      {{0x96, 0x01, 0xff}, 3, 2, 150}, /* stops after its last byte */
      {{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01},
       10,
       10,
       UINT64_MAX},
      {{0x80}, 1, 0, 0},       /* cut short */
      {{0x80, 0x80}, 2, 0, 0}, /* cut short */
      {{0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x80, 0x01},
       11,
       0,
       0}, /* longer than 10 bytes */
  };
  for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
    uint8_t *copy = malloc(c[i].n);
    memcpy(copy, c[i].b, c[i].n);
    uint64_t v = 7;
    ck_assert_uint_eq(qrpci_pb_varint(copy, c[i].n, &v), c[i].used);
    ck_assert_uint_eq(v, c[i].used ? c[i].v : 7);
    free(copy);
  }
  uint64_t v;
  ck_assert_uint_eq(qrpci_pb_varint(NULL, 0, &v), 0);
}
END_TEST

/* A string keeps every byte the wire gave it, NUL bytes included. */
START_TEST(test_string_with_nul) {
  static const uint8_t m[] = {0x0a, 0x06, 'T', 0, 'j', 'u', 'n', 'k'};
  size_t n;
  long off;
  ck_assert_int_eq(field(m, sizeof(m), 1, &n, &off), 0);
  ck_assert_uint_eq(n, 6);
  ck_assert_int_eq(off, 2);
}
END_TEST

/* Absent, the field reads as an empty string (proto3's default). */
START_TEST(test_absent_and_empty) {
  static const uint8_t m[] = {0x10, 0x01, 0x1a, 0x00};
  size_t n;
  long off;
  ck_assert_int_eq(field(m, sizeof(m), 1, &n, &off), 0);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(field(m, sizeof(m), 3, &n, &off), 0);
  ck_assert_uint_eq(n, 0);
  ck_assert_int_eq(field(NULL, 0, 1, &n, &off), 0);
  ck_assert_uint_eq(n, 0);
  const uint8_t *v = NULL;
  ck_assert_int_eq(qrpci_pb_field_bytes(NULL, 0, 1, &v, &n), 0);
  ck_assert_ptr_nonnull(v);
}
END_TEST

/* The last value of the field is the one a decoder keeps. */
START_TEST(test_last_value_wins) {
  static const uint8_t m[] = {0x0a, 0x03, 'x', 0,    'y',  0x18, 0x05,
                              0x0a, 0x01, 'a', 0x12, 0x01, 'z'};
  size_t n;
  long off;
  ck_assert_int_eq(field(m, sizeof(m), 1, &n, &off), 0);
  ck_assert_uint_eq(n, 1);
  ck_assert_int_eq(off, 9);
  ck_assert_int_eq(field(m, sizeof(m), 2, &n, &off), 0);
  ck_assert_uint_eq(n, 1);
  ck_assert_int_eq(off, 12);
}
END_TEST

/* Fields of every wire type before and after it are stepped over, and a
 * field number of several bytes is read whole. */
START_TEST(test_skips_every_wire_type) {
  static const uint8_t m[] = {
      0x08, 0x96, 0x01,                        /* 1: varint */
      0x11, 1,    2,    3,    4,   5, 6, 7, 8, /* 2: 64-bit */
      0x1d, 1,    2,    3,    4,               /* 3: 32-bit */
      0xe2, 0x12, 0x02, 'h',  'i',             /* 300: bytes */
      0x22, 0x02, 0x08, 0x01,                  /* 4: message */
      0x20, 0x00,                              /* 4 as varint */
  };
  size_t n;
  long off;
  ck_assert_int_eq(field(m, sizeof(m), 300, &n, &off), 0);
  ck_assert_uint_eq(n, 2);
  ck_assert_int_eq(off, 20);
  ck_assert_int_eq(field(m, sizeof(m), 5, &n, &off), 0);
  ck_assert_uint_eq(n, 0);
  /* Field 4 ends as a varint: not length-delimited. */
  ck_assert_int_eq(field(m, sizeof(m), 4, &n, &off), QRPC_EINVAL);
  ck_assert_uint_eq(n, 12345);
}
END_TEST

/* Whatever cannot be walked is refused, and nothing past the message is
 * read (field() hands over exactly sized copies). */
START_TEST(test_malformed) {
  static const struct {
    uint8_t b[8];
    size_t n;
  } c[] = {
      {{0x0a, 0x05, 'a', 'b'}, 4},      /* value past the end */
      {{0x0a}, 1},                      /* no length */
      {{0x0a, 0x80}, 2},                /* length cut short */
      {{0x12, 0x03, 'a', 'b'}, 4},      /* another field past the end */
      {{0x08}, 1},                      /* varint missing */
      {{0x08, 0x80}, 2},                /* varint cut short */
      {{0x09, 1, 2, 3, 4, 5, 6, 7}, 8}, /* 64-bit cut short */
      {{0x0d, 1, 2, 3}, 4},             /* 32-bit cut short */
      {{0x0b, 0x0c}, 2},                /* a group */
      {{0x0e, 0x00}, 2},                /* wire type 6 */
      {{0x0f, 0x00}, 2},                /* wire type 7 */
      {{0x8a}, 1},                      /* key cut short */
      {{0x0d, 1, 2, 3, 4}, 5},          /* field 1 as 32-bit */
  };
  for (size_t i = 0; i < sizeof(c) / sizeof(c[0]); i++) {
    size_t n;
    long off;
    ck_assert_msg(field(c[i].b, c[i].n, 1, &n, &off) == QRPC_EINVAL,
                  "case %zu accepted", i);
    ck_assert_uint_eq(n, 12345);
  }
}
END_TEST

/* Varint fields: the last value, 0 when absent, refused when the field
 * has another wire type or the message cannot be walked. */
START_TEST(test_field_varint) {
  uint64_t v = 7;
  ck_assert_int_eq(qrpci_pb_field_varint(NULL, 0, 1, &v), 0);
  ck_assert_uint_eq(v, 0);
  static const uint8_t one[] = {0x08, 0x02};
  ck_assert_int_eq(qrpci_pb_field_varint(one, sizeof(one), 1, &v), 0);
  ck_assert_uint_eq(v, 2);
  /* Another field first, then field 1 twice: the last wins. */
  static const uint8_t two[] = {0x12, 0x01, 'x', 0x08, 0x01, 0x08, 0xac, 0x02};
  ck_assert_int_eq(qrpci_pb_field_varint(two, sizeof(two), 1, &v), 0);
  ck_assert_uint_eq(v, 300);
  ck_assert_int_eq(qrpci_pb_field_varint(two, sizeof(two), 3, &v), 0);
  ck_assert_uint_eq(v, 0);
  v = 9;
  ck_assert_int_eq(qrpci_pb_field_varint(two, sizeof(two), 2, &v), QRPC_EINVAL);
  static const uint8_t cut[] = {0x08, 0x80};
  ck_assert_int_eq(qrpci_pb_field_varint(cut, sizeof(cut), 1, &v), QRPC_EINVAL);
  ck_assert_uint_eq(v, 9);
}
END_TEST

static Suite *pbwire_suite(void) {
  Suite *s = suite_create("pbwire");
  TCase *tc = tcase_create("read");
  tcase_add_test(tc, test_varint);
  tcase_add_test(tc, test_string_with_nul);
  tcase_add_test(tc, test_absent_and_empty);
  tcase_add_test(tc, test_last_value_wins);
  tcase_add_test(tc, test_skips_every_wire_type);
  tcase_add_test(tc, test_malformed);
  tcase_add_test(tc, test_field_varint);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(pbwire_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
