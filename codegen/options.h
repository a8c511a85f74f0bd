/*
 * Custom options as the generator sees them: protoc hands them over as
 * extension fields of the *Options messages, which protobuf-c keeps as
 * unknown fields (the generator has no compiled copy of options.proto), so
 * they are read here straight from the wire encoding.
 *
 * The field numbers are those of idl/qrpc/options.proto.
 */
#ifndef CG_OPTIONS_H
#define CG_OPTIONS_H

#include <stddef.h>
#include <stdint.h>

#include "google/protobuf/descriptor.pb-c.h"

/* extend google.protobuf.MethodOptions (idl/qrpc/options.proto). */
#define CG_OPT_METHOD_ID 51001
#define CG_OPT_DATAGRAM 51002
#define CG_OPT_NOTIFY 51003
#define CG_OPT_LATEST_ONLY 51004
#define CG_OPT_MAX_AGE_MS 51005
#define CG_OPT_MAX_MESSAGE_BYTES 51006
#define CG_OPT_SNAPSHOT_RING 51007
#define CG_OPT_SNAPSHOT_KEY 51008

/* extend google.protobuf.FileOptions { ProtobufCFileOptions pb_c_file }
 * (protobuf-c/protobuf-c.proto) and its c_package field, which renames
 * the package in protoc-c's C names. */
#define CG_OPT_PB_C_FILE 1019
#define CG_OPT_PB_C_FILE_C_PACKAGE 6

/* The qrpc options of one method, and the protobuf ones qrpc uses. */
typedef struct cg_method_opts {
  int has_method_id;
  uint32_t method_id;
  int datagram;
  int notify;
  int has_latest_only;
  int latest_only;
  int has_max_age_ms;
  uint32_t max_age_ms;
  int has_max_message_bytes;
  uint32_t max_message_bytes;
  int has_snapshot_ring;
  uint32_t snapshot_ring;
  /* (qrpc.snapshot_key): its bytes, borrowed from opts, not
   * NUL-terminated. */
  int has_snapshot_key;
  const char *snapshot_key;
  size_t snapshot_key_len;
  /* protobuf's own idempotency_level is IDEMPOTENT or NO_SIDE_EFFECTS. */
  int idempotent;
} cg_method_opts;

/* Reads the options of a method (opts may be NULL: no options).
 * Returns 0, or -1 with *why set to a static description when an option
 * is malformed (wrong wire type, a length that does not fit, or a
 * method_id, max_age_ms, max_message_bytes or snapshot_ring beyond 32
 * bits). */
int cg_method_opts_read(const Google__Protobuf__MethodOptions *opts,
                        cg_method_opts *out, const char **why);

/* protoc-c's c_package file option: a new string (free it), or NULL when
 * the file does not set it. *failed is set to 1 when the option is
 * malformed or memory ran out. */
char *cg_file_c_package(const Google__Protobuf__FileOptions *opts, int *failed);

#endif
