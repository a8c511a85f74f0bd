/*
 * Emits NAME.qrpc.h and NAME.qrpc.c for one .proto file of the model, and
 * records every C identifier the generated code declares, so names that
 * clash (two methods whose derived names coincide, say Foo_sync and Foo's
 * blocking variant) are refused with an error naming both, instead of
 * generating code that does not compile.
 */
#ifndef CG_EMIT_H
#define CG_EMIT_H

#include <stddef.h>

#include "buf.h"
#include "model.h"

typedef struct cg_decl {
  char *name;  /* the C identifier */
  char *owner; /* "p.q.S/M (x.proto)", what made the generator declare it */
} cg_decl;

typedef struct cg_decls {
  cg_decl *v;
  size_t n;
  size_t cap;
  int failed; /* memory ran out */
} cg_decls;

void cg_decls_free(cg_decls *d);

/* Appends one error line per identifier declared for two owners. Returns
 * 0 if there are none, else -1. */
int cg_decls_check(cg_decls *d, cg_buf *errors);

/* Writes the header and source text of f into header and source and adds
 * its identifiers to d. Returns 0, or -1 when memory ran out. */
int cg_emit_file(const cg_file *f, cg_decls *d, cg_buf *header, cg_buf *source);

#endif
