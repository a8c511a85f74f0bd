#include "options.h"

#include <stdlib.h>
#include <string.h>

enum { WIRE_VARINT = 0, WIRE_64BIT = 1, WIRE_LEN = 2, WIRE_32BIT = 5 };

/* Reads a base-128 varint from [*p, end). Returns 0, or -1 if truncated
 * or longer than 10 bytes. */
static int read_varint(const uint8_t **p, const uint8_t *end, uint64_t *v) {
  uint64_t x = 0;
  for (int shift = 0; shift < 70 && *p < end; shift += 7) {
    uint8_t b = *(*p)++;
    x |= (uint64_t)(b & 0x7f) << shift;
    if ((b & 0x80) == 0) {
      *v = x;
      return 0;
    }
  }
  return -1;
}

/* The last occurrence of field number tag among m's unknown fields, or
 * NULL. Later occurrences of a scalar field override earlier ones. */
static const ProtobufCMessageUnknownField *
last_unknown(const ProtobufCMessage *m, uint32_t tag) {
  const ProtobufCMessageUnknownField *found = NULL;
  for (unsigned i = 0; i < m->n_unknown_fields; i++)
    if (m->unknown_fields[i].tag == tag) found = &m->unknown_fields[i];
  return found;
}

/* Reads a varint option. Returns 1 if present, 0 if absent, -1 if it is
 * not a well-formed varint. */
static int varint_option(const ProtobufCMessage *m, uint32_t tag, uint64_t *v) {
  const ProtobufCMessageUnknownField *f = last_unknown(m, tag);
  if (f == NULL) return 0;
  if (f->wire_type != PROTOBUF_C_WIRE_TYPE_VARINT) return -1;
  const uint8_t *p = f->data;
  if (read_varint(&p, f->data + f->len, v) != 0) return -1;
  return 1;
}

/* Reads a length-delimited option (a string) into *data, *len (borrowed
 * from m). Returns 1 if present, 0 if absent, -1 if malformed. */
static int bytes_option(const ProtobufCMessage *m, uint32_t tag,
                        const char **data, size_t *len) {
  const ProtobufCMessageUnknownField *f = last_unknown(m, tag);
  if (f == NULL) return 0;
  if (f->wire_type != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED) return -1;
  /* protobuf-c keeps a length-prefixed unknown field with its prefix. */
  const uint8_t *p = f->data, *end = f->data + f->len;
  uint64_t n;
  if (read_varint(&p, end, &n) != 0 || n != (uint64_t)(end - p)) return -1;
  *data = (const char *)p;
  *len = (size_t)n;
  return 1;
}

int cg_method_opts_read(const Google__Protobuf__MethodOptions *opts,
                        cg_method_opts *out, const char **why) {
  memset(out, 0, sizeof(*out));
  if (opts == NULL) return 0;
  const ProtobufCMessage *m = &opts->base;
  uint64_t v;
  int rc = varint_option(m, CG_OPT_METHOD_ID, &v);
  if (rc < 0 || (rc > 0 && v > UINT32_MAX)) {
    *why = "(qrpc.method_id) is not a 32-bit unsigned integer";
    return -1;
  }
  if (rc > 0) {
    out->has_method_id = 1;
    out->method_id = (uint32_t)v;
  }
  if ((rc = varint_option(m, CG_OPT_DATAGRAM, &v)) < 0) {
    *why = "(qrpc.datagram) is not a bool";
    return -1;
  }
  out->datagram = rc > 0 && v != 0;
  if ((rc = varint_option(m, CG_OPT_NOTIFY, &v)) < 0) {
    *why = "(qrpc.notify) is not a bool";
    return -1;
  }
  out->notify = rc > 0 && v != 0;
  if ((rc = varint_option(m, CG_OPT_LATEST_ONLY, &v)) < 0) {
    *why = "(qrpc.latest_only) is not a bool";
    return -1;
  }
  out->has_latest_only = rc > 0;
  out->latest_only = rc > 0 && v != 0;
  rc = varint_option(m, CG_OPT_MAX_AGE_MS, &v);
  if (rc < 0 || (rc > 0 && v > UINT32_MAX)) {
    *why = "(qrpc.max_age_ms) is not a 32-bit unsigned integer";
    return -1;
  }
  if (rc > 0) {
    out->has_max_age_ms = 1;
    out->max_age_ms = (uint32_t)v;
  }
  rc = varint_option(m, CG_OPT_MAX_MESSAGE_BYTES, &v);
  if (rc < 0 || (rc > 0 && v > UINT32_MAX)) {
    *why = "(qrpc.max_message_bytes) is not a 32-bit unsigned integer";
    return -1;
  }
  if (rc > 0) {
    out->has_max_message_bytes = 1;
    out->max_message_bytes = (uint32_t)v;
  }
  rc = varint_option(m, CG_OPT_SNAPSHOT_RING, &v);
  if (rc < 0 || (rc > 0 && v > UINT32_MAX)) {
    *why = "(qrpc.snapshot_ring) is not a 32-bit unsigned integer";
    return -1;
  }
  if (rc > 0) {
    out->has_snapshot_ring = 1;
    out->snapshot_ring = (uint32_t)v;
  }
  rc = bytes_option(m, CG_OPT_SNAPSHOT_KEY, &out->snapshot_key,
                    &out->snapshot_key_len);
  if (rc < 0) {
    *why = "(qrpc.snapshot_key) is not a string";
    return -1;
  }
  out->has_snapshot_key = rc > 0;
  /* A side-effect-free method is idempotent too. */
  out->idempotent =
      opts->has_idempotency_level &&
      (opts->idempotency_level ==
           GOOGLE__PROTOBUF__METHOD_OPTIONS__IDEMPOTENCY_LEVEL__IDEMPOTENT ||
       opts->idempotency_level ==
           GOOGLE__PROTOBUF__METHOD_OPTIONS__IDEMPOTENCY_LEVEL__NO_SIDE_EFFECTS);
  return 0;
}

/* Skips one field value of the given wire type. Returns 0 or -1. */
static int skip_value(const uint8_t **p, const uint8_t *end, int wire) {
  uint64_t v;
  switch (wire) {
  case WIRE_VARINT: return read_varint(p, end, &v);
  case WIRE_64BIT:
    if (end - *p < 8) return -1;
    *p += 8;
    return 0;
  case WIRE_32BIT:
    if (end - *p < 4) return -1;
    *p += 4;
    return 0;
  case WIRE_LEN:
    if (read_varint(p, end, &v) != 0 || v > (uint64_t)(end - *p)) return -1;
    *p += v;
    return 0;
  default: return -1;
  }
}

char *cg_file_c_package(const Google__Protobuf__FileOptions *opts,
                        int *failed) {
  char *found = NULL;
  if (opts == NULL) return NULL;
  const ProtobufCMessage *m = &opts->base;
  /* Embedded messages given several times merge: the last c_package in
   * any of them wins. */
  for (unsigned i = 0; i < m->n_unknown_fields; i++) {
    const ProtobufCMessageUnknownField *f = &m->unknown_fields[i];
    if (f->tag != CG_OPT_PB_C_FILE) continue;
    if (f->wire_type != PROTOBUF_C_WIRE_TYPE_LENGTH_PREFIXED) goto bad;
    /* protobuf-c keeps a length-prefixed unknown field with its prefix. */
    const uint8_t *p = f->data, *end = f->data + f->len;
    uint64_t total;
    if (read_varint(&p, end, &total) != 0 || total != (uint64_t)(end - p))
      goto bad;
    while (p < end) {
      uint64_t key, len;
      if (read_varint(&p, end, &key) != 0) goto bad;
      int wire = (int)(key & 7);
      if ((key >> 3) == CG_OPT_PB_C_FILE_C_PACKAGE && wire == WIRE_LEN) {
        if (read_varint(&p, end, &len) != 0 || len > (uint64_t)(end - p))
          goto bad;
        free(found);
        found = strndup((const char *)p, (size_t)len);
        if (found == NULL) goto bad;
        p += len;
      } else if (skip_value(&p, end, wire) != 0) {
        goto bad;
      }
    }
  }
  return found;
bad:
  free(found);
  *failed = 1;
  return NULL;
}
