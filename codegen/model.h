/*
 * What the generator emits code for: the services of the files protoc asks
 * for, each method with its C names, id, shape and option flags, checked
 * against the rules of docs/codegen.md (method ids unique within the
 * compilation, options used where they make sense, types known).
 */
#ifndef CG_MODEL_H
#define CG_MODEL_H

#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "google/protobuf/compiler/plugin.pb-c.h"
#include "symtab.h"

typedef enum cg_kind {
  CG_UNARY = 0,
  CG_SERVER_STREAM,
  CG_CLIENT_STREAM,
  CG_BIDI_STREAM,
  CG_NOTIFY,   /* unary with (qrpc.notify): one-way, nothing answers */
  CG_DATAGRAM, /* (qrpc.datagram): an unreliable datagram channel */
} cg_kind;

typedef struct cg_method {
  const char *name; /* as in the .proto (borrowed) */
  char *full;       /* "p.q.S/M": what the id hashes */
  char *c_name;     /* name, mangled if reserved (cg_method_c_name) */
  char *prefix;     /* "p_q_S_M": every per-method symbol starts with it */
  uint32_t id;
  int pinned; /* the id comes from (qrpc.method_id) */
  cg_kind kind;
  int idempotent;       /* idempotency_level says it may run twice; not
                           used by datagram stubs */
  int latest_only;      /* datagram: (qrpc.latest_only) */
  uint32_t max_age_ms;  /* datagram: (qrpc.max_age_ms), 0 if unset */
  uint32_t max_message; /* datagram: (qrpc.max_message_bytes), 0 if unset */
  /* Snapshot channels: (qrpc.snapshot_ring), 0 for another datagram
   * method; the field numbers (qrpc.snapshot_key) names, 0 if unset. */
  uint32_t snapshot_ring;
  uint32_t snapshot_entities;
  uint32_t snapshot_key;
  const cg_type *in;
  const cg_type *out; /* not used by datagram and notify stubs */
} cg_method;

typedef struct cg_service {
  const char *name; /* borrowed */
  char *full;       /* "p.q.S" */
  char *prefix;     /* "p_q_S" */
  cg_method *methods;
  size_t n_methods;
} cg_service;

typedef struct cg_file {
  const Google__Protobuf__FileDescriptorProto *fd; /* borrowed */
  const char *name; /* "dir/x.proto" (borrowed) */
  char *base;       /* "dir/x" */
  char *ident;      /* include-guard identifier of the name */
  cg_service *services;
  size_t n_services;
} cg_file;

typedef struct cg_model {
  cg_symtab types;
  cg_file *files; /* the files protoc asked for, in its order */
  size_t n_files;
} cg_model;

/* Builds the model of req. Returns 0; or -1 after appending one line per
 * problem to errors (each naming the file and method concerned), or with
 * errors marked failed when memory ran out. m must be freed either way. */
int cg_model_build(cg_model *m,
                   const Google__Protobuf__Compiler__CodeGeneratorRequest *req,
                   cg_buf *errors);

void cg_model_free(cg_model *m);

/* A short description of a kind for comments: "unary", "server
 * streaming", ... */
const char *cg_kind_name(cg_kind k);

#endif
