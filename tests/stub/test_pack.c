/*
 * The stubs' message helpers (src/stub/pack.c): typed messages checked and
 * described for the _msg functions, payloads decoded (NUL bytes kept, by
 * length), refusals of wrong types, bad bytes and bad arguments, and the
 * results a caller sees when a reply does not decode.
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "qrpc/qrpc.h"
#include "stub_fixture.h"

#define DETAIL "the reply does not decode as qrpc.test.stub.Text"

/* ---- qrpc_stub_msg ---------------------------------------------------- */

START_TEST(test_msg_packs_like_protobuf_c) {
  Text t = st_text(st_nul_data, sizeof(st_nul_data), -42);
  qrpc_msg m;
  uint8_t want[64], got[64];
  size_t n = st_pack(&t.base, want, sizeof(want));
  ck_assert_uint_gt(n, sizeof(st_nul_data));
  ck_assert_int_eq(qrpc_stub_msg(&m, &t.base, TEXT_DESC), 0);
  ck_assert_ptr_eq(m.msg, &t);
  ck_assert_uint_eq(m.size, n);
  ck_assert_ptr_nonnull(m.pack);
  memset(got, 0xaa, sizeof(got));
  ck_assert_uint_eq(m.pack(m.msg, got), n);
  ck_assert_mem_eq(got, want, n);
  /* Exactly size bytes: the engine reserves no more. */
  ck_assert_uint_eq(got[n], 0xaa);
}
END_TEST

START_TEST(test_msg_empty_message) {
  Text t = st_text(NULL, 0, 0);
  qrpc_msg m;
  ck_assert_int_eq(qrpc_stub_msg(&m, &t.base, TEXT_DESC), 0);
  ck_assert_uint_eq(m.size, 0);
}
END_TEST

START_TEST(test_msg_refuses_other_type_and_null) {
  Other o = QRPC__TEST__STUB__OTHER__INIT;
  Text t = st_text(NULL, 0, 1);
  qrpc_msg m, before;
  memset(&m, 0x5a, sizeof(m));
  before = m;
  ck_assert_int_eq(qrpc_stub_msg(&m, &o.base, TEXT_DESC), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_msg(&m, NULL, TEXT_DESC), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_msg(&m, &t.base, NULL), QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_msg(NULL, &t.base, TEXT_DESC), QRPC_EINVAL);
  /* Nothing half-filled for a caller that ignores the error. */
  ck_assert_ptr_eq(m.msg, before.msg);
  ck_assert_uint_eq(m.size, before.size);
  ck_assert_msg(m.pack == before.pack, "pack was set");
}
END_TEST

/* ---- qrpc_stub_unpack and qrpc_stub_free ------------------------------ */

START_TEST(test_unpack_keeps_nul_bytes) {
  Text t = st_text(st_nul_data, sizeof(st_nul_data), 7);
  uint8_t buf[64];
  size_t n = st_pack(&t.base, buf, sizeof(buf));
  ProtobufCMessage *msg = NULL;
  ck_assert_int_eq(qrpc_stub_unpack(TEXT_DESC, buf, n, &msg), 0);
  ck_assert_msg(st_text_is(msg, st_nul_data, sizeof(st_nul_data), 7),
                "the decoded Text differs from what was packed");
  qrpc_stub_free(msg);
}
END_TEST

/* A string field holding a NUL byte, at any depth, does not decode: the
 * handler would see it cut short at the NUL. bytes fields keep theirs. */
START_TEST(test_unpack_refuses_nul_in_strings) {
  static const struct {
    const ProtobufCMessageDescriptor *desc;
    uint8_t wire[16];
    size_t len;
    int ok;
  } cases[] = {
      {OTHER_DESC, {0x0a, 3, 'a', 'b', 'c'}, 5, 1},
      {OTHER_DESC, {0x0a, 3, 'a', 0, 'b'}, 5, 0},
      {OTHER_DESC, {0x0a, 1, 0}, 3, 0},
      /* Nested.inner.s */
      {&qrpc__test__stub__nested__descriptor,
       {0x0a, 5, 0x0a, 3, 'a', 'b', 'c'}, 7, 1},
      {&qrpc__test__stub__nested__descriptor,
       {0x0a, 5, 0x0a, 3, 'a', 0, 'c'}, 7, 0},
      /* Nested.names, the second of two */
      {&qrpc__test__stub__nested__descriptor,
       {0x12, 1, 'x', 0x12, 2, 'y', 0}, 7, 0},
      {&qrpc__test__stub__nested__descriptor,
       {0x12, 1, 'x', 0x12, 2, 'y', 'z'}, 7, 1},
  };
  for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
    ProtobufCMessage *msg = NULL;
    int rv = qrpc_stub_unpack(cases[i].desc, cases[i].wire, cases[i].len, &msg);
    ck_assert_msg(rv == (cases[i].ok ? 0 : QRPC_EPROTO),
                  "case %zu: %d", i, rv);
    ck_assert(cases[i].ok ? msg != NULL : msg == NULL);
    qrpc_stub_free(msg);
  }
}
END_TEST

START_TEST(test_unpack_empty_payload) {
  ProtobufCMessage *msg = NULL;
  /* The engine hands an empty payload over as NULL. */
  ck_assert_int_eq(qrpc_stub_unpack(TEXT_DESC, NULL, 0, &msg), 0);
  ck_assert_msg(st_text_is(msg, NULL, 0, 0), "not an empty Text");
  qrpc_stub_free(msg);
}
END_TEST

START_TEST(test_unpack_refuses_bad_bytes) {
  ProtobufCMessage *msg = (ProtobufCMessage *)&msg;
  ck_assert_int_eq(
      qrpc_stub_unpack(TEXT_DESC, st_garbage, sizeof(st_garbage), &msg),
      QRPC_EPROTO);
  ck_assert_ptr_null(msg);
}
END_TEST

START_TEST(test_unpack_refuses_bad_arguments) {
  uint8_t byte = 0;
  ProtobufCMessage *msg = (ProtobufCMessage *)&msg;
  ck_assert_int_eq(qrpc_stub_unpack(TEXT_DESC, NULL, 1, &msg), QRPC_EINVAL);
  ck_assert_ptr_null(msg);
  msg = (ProtobufCMessage *)&msg;
  ck_assert_int_eq(qrpc_stub_unpack(NULL, &byte, 0, &msg), QRPC_EINVAL);
  ck_assert_ptr_null(msg);
  ck_assert_int_eq(qrpc_stub_unpack(TEXT_DESC, &byte, 0, NULL), QRPC_EINVAL);
  qrpc_stub_free(NULL);
}
END_TEST

/* ---- Results ---------------------------------------------------------- */

/* 1 if a and b hold the same fields (padding aside). */
static int same_result(const qrpc_result *a, const qrpc_result *b) {
  return a->status == b->status && a->detail == b->detail &&
         a->detail_len == b->detail_len && a->payload == b->payload &&
         a->len == b->len && a->local == b->local;
}

static qrpc_result ok_result(const uint8_t *payload, size_t len) {
  qrpc_result r;
  memset(&r, 0, sizeof(r));
  r.status = QRPC_STATUS_OK;
  r.payload = payload;
  r.len = len;
  return r;
}

START_TEST(test_result_fail) {
  qrpc_result r = ok_result(st_garbage, sizeof(st_garbage));
  qrpc_stub_result_fail(&r, DETAIL);
  ck_assert_int_eq(r.status, QRPC_STATUS_INTERNAL);
  ck_assert_int_eq(r.local, 1);
  ck_assert_msg(st_bytes_are(r.detail, r.detail_len, DETAIL), "detail");
  ck_assert_ptr_null(r.payload);
  ck_assert_uint_eq(r.len, 0);
}
END_TEST

START_TEST(test_result_reply_decodes) {
  Text t = st_text(st_nul_data, sizeof(st_nul_data), 3);
  uint8_t buf[64];
  qrpc_result r = ok_result(buf, st_pack(&t.base, buf, sizeof(buf)));
  qrpc_result before = r;
  ProtobufCMessage *reply = NULL;
  ck_assert_int_eq(qrpc_stub_result_reply(&r, TEXT_DESC, DETAIL, &reply), 0);
  ck_assert_msg(st_text_is(reply, st_nul_data, sizeof(st_nul_data), 3),
                "reply");
  ck_assert_msg(same_result(&r, &before), "the result changed");
  qrpc_stub_free(reply);
}
END_TEST

START_TEST(test_result_reply_undecodable) {
  qrpc_result r = ok_result(st_garbage, sizeof(st_garbage));
  ProtobufCMessage *reply = (ProtobufCMessage *)&reply;
  ck_assert_int_eq(qrpc_stub_result_reply(&r, TEXT_DESC, DETAIL, &reply),
                   QRPC_EPROTO);
  ck_assert_ptr_null(reply);
  ck_assert_int_eq(r.status, QRPC_STATUS_INTERNAL);
  ck_assert_int_eq(r.local, 1);
  ck_assert_msg(st_bytes_are(r.detail, r.detail_len, DETAIL), "detail");
  ck_assert_uint_eq(r.len, 0);
}
END_TEST

START_TEST(test_result_reply_of_failed_call) {
  /* A failed call's payload is not a reply, whatever it holds. */
  static const char detail[] = {'n', 0, 'o'};
  qrpc_result r = ok_result(st_garbage, sizeof(st_garbage));
  r.status = QRPC_STATUS_DEADLINE_EXCEEDED;
  r.detail = detail;
  r.detail_len = sizeof(detail);
  r.local = 1;
  qrpc_result before = r;
  ProtobufCMessage *reply = (ProtobufCMessage *)&reply;
  ck_assert_int_eq(qrpc_stub_result_reply(&r, TEXT_DESC, DETAIL, &reply), 0);
  ck_assert_ptr_null(reply);
  ck_assert_msg(same_result(&r, &before), "the result changed");
}
END_TEST

START_TEST(test_result_reply_refuses_bad_arguments) {
  qrpc_result r = ok_result(NULL, 0);
  qrpc_result before = r;
  ProtobufCMessage *reply = (ProtobufCMessage *)&reply;
  ck_assert_int_eq(qrpc_stub_result_reply(NULL, TEXT_DESC, DETAIL, &reply),
                   QRPC_EINVAL);
  ck_assert_ptr_null(reply);
  ck_assert_int_eq(qrpc_stub_result_reply(&r, NULL, DETAIL, &reply),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_result_reply(&r, TEXT_DESC, NULL, &reply),
                   QRPC_EINVAL);
  ck_assert_int_eq(qrpc_stub_result_reply(&r, TEXT_DESC, DETAIL, NULL),
                   QRPC_EINVAL);
  ck_assert_msg(same_result(&r, &before), "the result changed");
}
END_TEST

static Suite *pack_suite(void) {
  Suite *s = suite_create("stub_pack");
  TCase *tc = tcase_create("pack");
  tcase_add_test(tc, test_msg_packs_like_protobuf_c);
  tcase_add_test(tc, test_msg_empty_message);
  tcase_add_test(tc, test_msg_refuses_other_type_and_null);
  tcase_add_test(tc, test_unpack_keeps_nul_bytes);
  tcase_add_test(tc, test_unpack_refuses_nul_in_strings);
  tcase_add_test(tc, test_unpack_empty_payload);
  tcase_add_test(tc, test_unpack_refuses_bad_bytes);
  tcase_add_test(tc, test_unpack_refuses_bad_arguments);
  tcase_add_test(tc, test_result_fail);
  tcase_add_test(tc, test_result_reply_decodes);
  tcase_add_test(tc, test_result_reply_undecodable);
  tcase_add_test(tc, test_result_reply_of_failed_call);
  tcase_add_test(tc, test_result_reply_refuses_bad_arguments);
  suite_add_tcase(s, tc);
  return s;
}

int main(void) {
  SRunner *sr = srunner_create(pack_suite());
  int failed;
  srunner_run_all(sr, CK_NORMAL);
  failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
