/*
 * Shared pieces of the stub runtime's suites: the loopback environment
 * (a server and one connected client), and the test messages (Text, with
 * bytes that may hold NULs, and Other) built, packed and compared by
 * length.
 *
 * Like tests/support, nothing here asserts except st_setup() and
 * st_pair_start(), which run before a test's body.
 */
#ifndef QT_STUB_FIXTURE_H
#define QT_STUB_FIXTURE_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "harness.h"
#include "qrpc/qrpc.h"
#include "rpc_harness.h"
#include "stub_test.pb-c.h"

typedef Qrpc__Test__Stub__Text Text;
typedef Qrpc__Test__Stub__Other Other;

#define TEXT_DESC (&qrpc__test__stub__text__descriptor)
#define OTHER_DESC (&qrpc__test__stub__other__descriptor)

/* Bytes no message decodes from: a field tag cut short. */
extern const uint8_t st_garbage[3];

/* Data with NUL bytes inside and at the end: what a strlen would cut. */
extern const uint8_t st_nul_data[7];

/* The environment of one test, made by st_setup() (a checked fixture)
 * and released by st_teardown(). */
extern qt_certs st_certs;
extern qrpc_loop *st_loop;
extern qrpc_tls_config *st_stls;
extern qrpc_tls_config *st_ctls;

void st_setup(void);
void st_teardown(void);

/* A server and one connected client on st_loop. */
typedef struct st_pair {
  qrpc_server *srv;
  char addr[64];
  qt_rpc_peers peers;
  qt_rpc_client cl;
} st_pair;

/* Starts the server and connects the client (copts may be NULL for
 * defaults), asserting that both work; the server's peer is then
 * p->peers.last. */
void st_pair_start(st_pair *p, const qrpc_client_opts *copts);

/* Frees both and runs the loop until every connection is released;
 * returns 1 once they are. */
int st_pair_finish(st_pair *p);

/* A Text holding data (len bytes, borrowed) and n. */
Text st_text(const void *data, size_t len, int64_t n);

/* Packs msg into buf; returns its length, or 0 if it needs more than cap
 * bytes. */
size_t st_pack(const ProtobufCMessage *msg, uint8_t *buf, size_t cap);

/* 1 if msg is a Text holding exactly data (len bytes) and n. */
int st_text_is(const ProtobufCMessage *msg, const void *data, size_t len,
               int64_t n);

/* 1 if the len bytes at got are exactly the string want. */
int st_bytes_are(const char *got, size_t len, const char *want);

#endif
