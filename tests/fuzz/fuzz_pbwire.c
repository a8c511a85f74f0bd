/*
 * Fuzz target: protobuf fields read in place (util/pbwire.h), against
 * protobuf-c. The input is one message.
 *
 * Properties: qrpci_pb_field_bytes() never reads outside its input; and
 * for every string and bytes field of the broker's messages that carry
 * them, whenever protobuf-c decodes the input as that message, the reader
 * walks it too and finds the value protobuf-c kept: the same bytes for a
 * bytes field; for a string, bytes of which protobuf-c's string is the part
 * before the first NUL, so that they are longer than strlen() exactly when
 * they hold a NUL (what the broker refuses on).
 */
#include <stdlib.h>
#include <string.h>

#include "fuzz.h"
#include "qrpc/broker.pb-c.h"
#include "util/pbwire.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
  (void)argc;
  (void)argv;
  return 0;
}

static const ProtobufCMessageDescriptor *const messages[] = {
    &qrpc__broker__hello_request__descriptor,
    &qrpc__broker__subscribe_request__descriptor,
    &qrpc__broker__publish_request__descriptor,
    &qrpc__broker__delivery__descriptor,
    &qrpc__broker__subscription_stats__descriptor,
};

/* The reader's value of field f agrees with m's member. */
static void check_field(const ProtobufCMessage *m,
                        const ProtobufCFieldDescriptor *f, const uint8_t *in,
                        size_t size) {
  const uint8_t *v = NULL;
  size_t n = 0;
  FZ_CHECK(qrpci_pb_field_bytes(in, size, f->id, &v, &n) == 0);
  FZ_CHECK(v != NULL);
  FZ_CHECK(n == 0 || (v >= in && v + n <= in + size));
  const char *member = (const char *)m + f->offset;
  if (f->type == PROTOBUF_C_TYPE_BYTES) {
    const ProtobufCBinaryData *b = (const ProtobufCBinaryData *)member;
    FZ_CHECK(b->len == n);
    FZ_CHECK(n == 0 || memcmp(b->data, v, n) == 0);
    return;
  }
  const char *s = *(char *const *)member;
  size_t k = strlen(s);
  FZ_CHECK(k <= n);
  FZ_CHECK(memcmp(s, v, k) == 0);
  FZ_CHECK((k < n) == (memchr(v, 0, n) != NULL));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  /* An exactly sized copy, so ASan sees a read one byte too far. */
  uint8_t *in = malloc(size ? size : 1);
  FZ_CHECK(in != NULL);
  if (size) memcpy(in, data, size);
  for (size_t i = 0; i < sizeof(messages) / sizeof(messages[0]); i++) {
    const ProtobufCMessageDescriptor *d = messages[i];
    const uint8_t *v;
    size_t n;
    for (unsigned k = 0; k < d->n_fields; k++)
      (void)qrpci_pb_field_bytes(in, size, d->fields[k].id, &v, &n);
    ProtobufCMessage *m = protobuf_c_message_unpack(d, NULL, size, in);
    if (!m) continue;
    for (unsigned k = 0; k < d->n_fields; k++) {
      const ProtobufCFieldDescriptor *f = &d->fields[k];
      if (f->label == PROTOBUF_C_LABEL_NONE &&
          (f->type == PROTOBUF_C_TYPE_STRING ||
           f->type == PROTOBUF_C_TYPE_BYTES))
        check_field(m, f, in, size);
    }
    protobuf_c_message_free_unpacked(m, NULL);
  }
  free(in);
  return 0;
}
