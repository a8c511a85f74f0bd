/*
 * The message and enum types of a set of .proto files, with the C names
 * protoc-c gives them, so generated stubs can name request and reply
 * types and their descriptors.
 */
#ifndef CG_SYMTAB_H
#define CG_SYMTAB_H

#include <stddef.h>

#include "google/protobuf/descriptor.pb-c.h"

typedef struct cg_type {
  char *full;        /* "p.q.Outer.Inner", no leading dot */
  char *c_type;      /* protoc-c's struct name: "P__Q__Outer__Inner" */
  char *c_lower;     /* protoc-c's prefix: "p__q__outer__inner" */
  const char *file;  /* the .proto defining it (borrowed) */
  size_t file_index; /* its index in the set given to cg_symtab_build */
  int is_enum;
  /* The message's descriptor (borrowed from the request), for its
   * fields; NULL for an enum. */
  const Google__Protobuf__DescriptorProto *msg;
} cg_type;

typedef struct cg_symtab {
  cg_type *types;
  size_t n;
  size_t cap;
} cg_symtab;

/* Collects every message and enum type of files[0..n). Returns 0, or -1
 * with *why set when memory runs out or a c_package option is malformed
 * (then *why names the file, and is a new string the caller frees). */
int cg_symtab_build(cg_symtab *t,
                    Google__Protobuf__FileDescriptorProto *const *files,
                    size_t n, char **why);

void cg_symtab_free(cg_symtab *t);

/* The type named name (with or without the leading dot), or NULL. */
const cg_type *cg_symtab_find(const cg_symtab *t, const char *name);

/* The field of message type t whose name is the len bytes at name, or
 * NULL (also for an enum). */
const Google__Protobuf__FieldDescriptorProto *
cg_type_field(const cg_type *t, const char *name, size_t len);

#endif
