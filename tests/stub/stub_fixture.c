#include "stub_fixture.h"

#include <check.h>
#include <string.h>

const uint8_t st_garbage[3] = {0xff, 0xff, 0xff};
const uint8_t st_nul_data[7] = {'a', 0, 'b', 0, 0, 'c', 0};

qt_certs st_certs;
qrpc_loop *st_loop;
qrpc_tls_config *st_stls;
qrpc_tls_config *st_ctls;

void st_setup(void) {
  ck_assert_int_eq(qt_env_setup(&st_certs, &st_loop, &st_stls, &st_ctls), 0);
}

void st_teardown(void) {
  qt_env_teardown(&st_certs, &st_loop, &st_stls, &st_ctls);
}

void st_pair_start(st_pair *p, const qrpc_client_opts *copts) {
  qrpc_server_opts o;
  memset(p, 0, sizeof(*p));
  qrpc_server_opts_default(&o);
  qt_rpc_peers_install(&o, &p->peers);
  ck_assert_int_eq(qt_rpc_server_start(st_loop, "127.0.0.1:0", st_stls, &o,
                                       &p->srv, p->addr, sizeof(p->addr)),
                   0);
  ck_assert_int_eq(
      qt_rpc_client_start(&p->cl, st_loop, p->addr, st_ctls, copts), 0);
  ck_assert_msg(qt_rpc_client_wait_connects(&p->cl, 1, QT_WAIT_MS),
                "client did not connect");
  ck_assert_msg(qt_run_until_count(st_loop, &p->peers.opened, 1, QT_WAIT_MS),
                "server saw no peer");
}

/* The closing period lasts three PTOs, which grow with the RTT measured
 * during the handshake: under valgrind on a busy machine that is seconds,
 * longer than an ordinary wait. */
#define ST_RELEASE_MS (4 * QT_WAIT_MS)

int st_pair_finish(st_pair *p) {
  qt_rpc_client_free(&p->cl);
  qrpc_server_free(p->srv);
  p->srv = NULL;
  return qt_run_until_released(st_loop, ST_RELEASE_MS);
}

Text st_text(const void *data, size_t len, int64_t n) {
  Text t = QRPC__TEST__STUB__TEXT__INIT;
  t.data.data = (uint8_t *)data;
  t.data.len = len;
  t.n = n;
  return t;
}

size_t st_pack(const ProtobufCMessage *msg, uint8_t *buf, size_t cap) {
  size_t n = protobuf_c_message_get_packed_size(msg);
  if (n > cap) return 0;
  return protobuf_c_message_pack(msg, buf);
}

int st_text_is(const ProtobufCMessage *msg, const void *data, size_t len,
               int64_t n) {
  const Text *t = (const Text *)msg;
  if (msg == NULL || msg->descriptor != TEXT_DESC) return 0;
  if (t->n != n || t->data.len != len) return 0;
  return len == 0 || memcmp(t->data.data, data, len) == 0;
}

int st_bytes_are(const char *got, size_t len, const char *want) {
  return len == strlen(want) && memcmp(got, want, len) == 0;
}
