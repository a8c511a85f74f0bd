/* Payloads as every sending function of the API takes them: bytes, or a
 * protobuf-c message packed in place. */
#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "wire/payload.h"

static size_t pack_abc(const void *msg, uint8_t *out) {
  (void)msg;
  memcpy(out, "abc", 3);
  return 3;
}

/* A pack function that writes fewer bytes than its message declared. */
static size_t pack_short(const void *msg, uint8_t *out) {
  (void)msg;
  out[0] = 'x';
  return 1;
}

START_TEST(test_bytes) {
  uint8_t out[4] = {0};
  qrpci_payload p = qrpci_bytes("wxyz", 4);
  ck_assert(qrpci_payload_valid(&p));
  ck_assert_uint_eq(qrpci_payload_len(&p), 4);
  ck_assert_int_eq(qrpci_payload_write(&p, out), 0);
  ck_assert_mem_eq(out, "wxyz", 4);
}
END_TEST

START_TEST(test_empty_bytes) {
  /* No bytes at all is a valid, empty payload; a NULL pointer with a
   * length is not. */
  qrpci_payload p = qrpci_bytes(NULL, 0);
  ck_assert(qrpci_payload_valid(&p));
  ck_assert_uint_eq(qrpci_payload_len(&p), 0);
  ck_assert_int_eq(qrpci_payload_write(&p, NULL), 0);
  p = qrpci_bytes(NULL, 1);
  ck_assert(!qrpci_payload_valid(&p));
}
END_TEST

START_TEST(test_msg) {
  uint8_t out[3] = {0};
  qrpc_msg m = {.msg = NULL, .size = 3, .pack = pack_abc};
  qrpci_payload p = qrpci_msg(&m);
  ck_assert(qrpci_payload_valid(&p));
  ck_assert_uint_eq(qrpci_payload_len(&p), 3);
  ck_assert_int_eq(qrpci_payload_write(&p, out), 0);
  ck_assert_mem_eq(out, "abc", 3);
}
END_TEST

START_TEST(test_msg_invalid) {
  /* A NULL message must not pass for an empty bytes payload. */
  qrpci_payload p = qrpci_msg(NULL);
  ck_assert(!qrpci_payload_valid(&p));
  qrpc_msg m = {.msg = NULL, .size = 3, .pack = NULL};
  p = qrpci_msg(&m);
  ck_assert(!qrpci_payload_valid(&p));
}
END_TEST

START_TEST(test_msg_size_mismatch) {
  uint8_t out[3] = {0};
  qrpc_msg m = {.msg = NULL, .size = 3, .pack = pack_short};
  qrpci_payload p = qrpci_msg(&m);
  ck_assert_int_eq(qrpci_payload_write(&p, out), QRPC_EINVAL);
}
END_TEST

START_TEST(test_msg_empty) {
  /* An empty message is never packed: pack may not be called on it. */
  qrpc_msg m = {.msg = NULL, .size = 0, .pack = pack_short};
  qrpci_payload p = qrpci_msg(&m);
  ck_assert_int_eq(qrpci_payload_write(&p, NULL), 0);
}
END_TEST

static int releases;
static void *released_owner;

static void count_release(void *owner) {
  releases++;
  released_owner = owner;
}

/* Bytes given away: a payload of their size, written by copying. */
START_TEST(test_given_bytes) {
  uint8_t out[5] = {0};
  qrpc_msg m = {.msg = "hello", .size = 5, .release = count_release,
                .owner = &out};
  qrpci_payload p = qrpci_msg(&m);
  ck_assert(qrpci_payload_valid(&p));
  ck_assert_uint_eq(qrpci_payload_len(&p), 5);
  ck_assert_ptr_eq(qrpci_payload_release(&p), count_release);
  ck_assert_int_eq(qrpci_payload_write(&p, out), 0);
  ck_assert_mem_eq(out, "hello", 5);
  /* Without release the bytes are simply copied and stay the caller's. */
  qrpc_msg lent = {.msg = "hi", .size = 2};
  p = qrpci_msg(&lent);
  ck_assert(qrpci_payload_valid(&p));
  ck_assert_ptr_null(qrpci_payload_release(&p));
  /* A packed message's release is never read. */
  qrpc_msg packed = {.size = 3, .pack = pack_abc, .release = count_release};
  p = qrpci_msg(&packed);
  ck_assert_ptr_null(qrpci_payload_release(&p));
}
END_TEST

/* Settling: given bytes no stream took go back once on success, never on
 * an error (the caller still owns them) and never when a stream took
 * them (it gives them back later). */
START_TEST(test_settle) {
  int owner;
  qrpc_msg m = {.msg = "abc", .size = 3, .release = count_release,
                .owner = &owner};
  releases = 0;
  qrpci_payload p = qrpci_msg(&m);
  ck_assert_int_eq(qrpci_payload_settle(&p, QRPC_EAGAIN), QRPC_EAGAIN);
  ck_assert_int_eq(releases, 0);
  ck_assert_int_eq(qrpci_payload_settle(&p, 0), 0);
  ck_assert_int_eq(releases, 1);
  ck_assert_ptr_eq(released_owner, &owner);
  p.taken = 1;
  ck_assert_int_eq(qrpci_payload_settle(&p, 0), 0);
  ck_assert_int_eq(releases, 1);
  /* Plain bytes and packed messages have nothing to give back. */
  qrpci_payload b = qrpci_bytes("x", 1);
  ck_assert_int_eq(qrpci_payload_settle(&b, 0), 0);
  qrpc_msg packed = {.size = 3, .pack = pack_abc, .release = count_release};
  p = qrpci_msg(&packed);
  ck_assert_int_eq(qrpci_payload_settle(&p, 0), 0);
  /* Nor does an invalid one (its function failed with QRPC_EINVAL). */
  p = qrpci_msg(NULL);
  ck_assert_int_eq(qrpci_payload_settle(&p, QRPC_EINVAL), QRPC_EINVAL);
  ck_assert_int_eq(releases, 1);
}
END_TEST

static Suite *payload_suite(void) {
  Suite *s = suite_create("payload");
  TCase *tc = tcase_create("payload");
  tcase_add_test(tc, test_bytes);
  tcase_add_test(tc, test_empty_bytes);
  tcase_add_test(tc, test_msg);
  tcase_add_test(tc, test_msg_invalid);
  tcase_add_test(tc, test_msg_size_mismatch);
  tcase_add_test(tc, test_given_bytes);
  tcase_add_test(tc, test_settle);
  tcase_add_test(tc, test_msg_empty);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(payload_suite());
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
