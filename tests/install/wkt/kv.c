/*
 * kv: a server and a client of the Store service of kv.proto in one
 * process, over loopback QUIC. The client puts an entry whose fields are
 * well-known types (Put returns google.protobuf.Empty), gets it back and
 * checks every field. Exits 0 when all of it worked, 1 otherwise.
 *
 *   kv CERT_DIR   (CERT_DIR holds ca.pem, server.pem and server-key.pem)
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qrpc/qrpc.h>

#include "google/protobuf/empty.pb-c.h"
#include "kv.qrpc.h"

/* A bound on a hang under sanitizers and load, not a measurement. */
#define TIMEOUT_MS 30000

/* The one entry the server keeps: the last PutRequest, packed. */
static uint8_t *stored;
static size_t stored_len;

static void put(qrpc_req *req, const Kv__PutRequest *request, void *ud) {
  (void)ud;
  free(stored);
  stored_len = kv__put_request__get_packed_size(request);
  stored = malloc(stored_len ? stored_len : 1);
  if (!stored) {
    kv_Store_Put_error(req, QRPC_STATUS_INTERNAL, "out of memory");
    return;
  }
  kv__put_request__pack(request, stored);
  Google__Protobuf__Empty empty = GOOGLE__PROTOBUF__EMPTY__INIT;
  kv_Store_Put_reply(req, &empty);
}

static void get(qrpc_req *req, const Kv__GetRequest *request, void *ud) {
  (void)ud;
  Kv__PutRequest *p =
      stored ? kv__put_request__unpack(NULL, stored_len, stored) : NULL;
  if (!p || strcmp(p->key, request->key) != 0) {
    kv_Store_Get_error(req, QRPC_STATUS_NOT_FOUND, request->key);
  } else {
    Kv__Entry e = KV__ENTRY__INIT;
    e.value = p->value;
    e.written = p->written;
    e.ttl = p->ttl;
    e.note = p->note;
    e.labels = p->labels;
    e.extra = p->extra;
    kv_Store_Get_reply(req, &e);
  }
  if (p) kv__put_request__free_unpacked(p, NULL);
}

static const kv_Store_handlers handlers = {.Put = put, .Get = get};

static int fail(const char *what) {
  fprintf(stderr, "kv: FAILED: %s\n", what);
  return 1;
}

/* Whether the entry holds what run_client() put. */
static int entry_ok(const Kv__Entry *e) {
  return e->value.len == 5 && memcmp(e->value.data, "value", 5) == 0 &&
         e->written && e->written->seconds == 1700000000 &&
         e->written->nanos == 123 && e->ttl && e->ttl->seconds == 60 &&
         e->note && strcmp(e->note->value, "a note") == 0 && e->labels &&
         e->labels->n_fields == 1 &&
         strcmp(e->labels->fields[0]->key, "owner") == 0 &&
         e->labels->fields[0]->value->kind_case ==
             GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE &&
         strcmp(e->labels->fields[0]->value->string_value, "tests") == 0 &&
         e->extra &&
         strcmp(e->extra->type_url,
                "type.googleapis.com/google.protobuf.Empty") == 0;
}

static int run_client(qrpc_loop *loop, qrpc_client *cli) {
  Google__Protobuf__Timestamp written = GOOGLE__PROTOBUF__TIMESTAMP__INIT;
  written.seconds = 1700000000;
  written.nanos = 123;
  Google__Protobuf__Duration ttl = GOOGLE__PROTOBUF__DURATION__INIT;
  ttl.seconds = 60;
  Google__Protobuf__StringValue note = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
  note.value = "a note";
  Google__Protobuf__Value owner = GOOGLE__PROTOBUF__VALUE__INIT;
  owner.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
  owner.string_value = "tests";
  Google__Protobuf__Struct__FieldsEntry field =
      GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
  field.key = "owner";
  field.value = &owner;
  Google__Protobuf__Struct__FieldsEntry *fields[] = {&field};
  Google__Protobuf__Struct labels = GOOGLE__PROTOBUF__STRUCT__INIT;
  labels.n_fields = 1;
  labels.fields = fields;
  Google__Protobuf__Any extra = GOOGLE__PROTOBUF__ANY__INIT;
  extra.type_url = "type.googleapis.com/google.protobuf.Empty";

  Kv__PutRequest put_req = KV__PUT_REQUEST__INIT;
  put_req.key = "k";
  put_req.value.data = (uint8_t *)"value";
  put_req.value.len = 5;
  put_req.written = &written;
  put_req.ttl = &ttl;
  put_req.note = &note;
  put_req.labels = &labels;
  put_req.extra = &extra;
  Google__Protobuf__Empty *empty = NULL;
  int status = -1;
  if (kv_Store_Put_sync(loop, cli, &put_req, TIMEOUT_MS, &empty, &status) !=
          0 ||
      status != QRPC_STATUS_OK || !empty)
    return fail("Put");
  protobuf_c_message_free_unpacked(&empty->base, NULL);

  char *paths[] = {"value", "written"};
  Google__Protobuf__FieldMask mask = GOOGLE__PROTOBUF__FIELD_MASK__INIT;
  mask.n_paths = 2;
  mask.paths = paths;
  Kv__GetRequest get_req = KV__GET_REQUEST__INIT;
  get_req.key = "k";
  get_req.fields = &mask;
  Kv__Entry *entry = NULL;
  if (kv_Store_Get_sync(loop, cli, &get_req, TIMEOUT_MS, &entry, &status) !=
          0 ||
      status != QRPC_STATUS_OK || !entry)
    return fail("Get");
  int ok = entry_ok(entry);
  protobuf_c_message_free_unpacked(&entry->base, NULL);
  if (!ok) return fail("the entry read back differs from the one written");
  printf("kv: Put returned google.protobuf.Empty; Get returned the entry "
         "with its Timestamp, Duration, StringValue, Struct and Any\n");
  return 0;
}

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: kv CERT_DIR\n");
    return 2;
  }
  char ca[4096], cert[4096], key[4096];
  snprintf(ca, sizeof(ca), "%s/ca.pem", argv[1]);
  snprintf(cert, sizeof(cert), "%s/server.pem", argv[1]);
  snprintf(key, sizeof(key), "%s/server-key.pem", argv[1]);

  qrpc_loop *loop = NULL;
  qrpc_tls_config *stls = NULL, *ctls = NULL;
  qrpc_server *srv = NULL;
  qrpc_client *cli = NULL;
  int status = 1;
  if (qrpc_loop_new(NULL, &loop) != 0 || qrpc_tls_config_new(&stls) != 0 ||
      qrpc_tls_config_set_cert_files(stls, cert, key) != 0 ||
      qrpc_tls_config_new(&ctls) != 0 ||
      qrpc_tls_config_set_ca_file(ctls, ca) != 0) {
    fail("loop or TLS setup");
    goto out;
  }
  if (qrpc_server_new(loop, "127.0.0.1:0", stls, NULL, &srv) != 0 ||
      kv_Store_register(srv, &handlers) != 0) {
    fail("server");
    goto out;
  }
  char addr[64];
  snprintf(addr, sizeof(addr), "127.0.0.1:%u", qrpc_server_port(srv));
  qrpc_client_opts co;
  qrpc_client_opts_default(&co);
  co.server_name = "localhost";
  if (qrpc_client_new(loop, addr, ctls, &co, &cli) != 0) {
    fail("client");
    goto out;
  }
  status = run_client(loop, cli);
out:
  qrpc_client_free(cli);
  qrpc_server_free(srv);
  qrpc_tls_config_free(ctls);
  qrpc_tls_config_free(stls);
  qrpc_loop_free(loop);
  free(stored);
  return status;
}
