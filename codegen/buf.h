/*
 * Growable text buffers for the generator, with a small template language:
 * cg_emit() copies a template, replacing each $name$ with the value bound
 * to name, so the generated C reads as C in the generator's source.
 *
 * Allocation failures are sticky: the buffer remembers them, later writes
 * do nothing, and cg_buf_failed() reports it once at the end.
 */
#ifndef CG_BUF_H
#define CG_BUF_H

#include <stddef.h>

typedef struct cg_buf {
  char *data; /* NUL-terminated while len > 0 or after cg_buf_take() */
  size_t len;
  size_t cap;
  int failed; /* an allocation failed; the text is incomplete */
} cg_buf;

/* One $name$ binding of a template. */
typedef struct cg_var {
  const char *name;
  const char *value;
} cg_var;

/* A set of bindings, searched last to first so later ones override. */
#define CG_VARS_MAX 32
typedef struct cg_vars {
  cg_var v[CG_VARS_MAX];
  size_t n;
} cg_vars;

void cg_buf_init(cg_buf *b);
void cg_buf_free(cg_buf *b);

/* Appends len bytes, a NUL-terminated string, or printf-formatted text. */
void cg_buf_add(cg_buf *b, const char *s, size_t len);
void cg_buf_puts(cg_buf *b, const char *s);
void cg_buf_printf(cg_buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Returns the text (never NULL; "" when empty) and leaves b empty; the
 * caller frees it. NULL if an allocation failed at any point. */
char *cg_buf_take(cg_buf *b);

int cg_buf_failed(const cg_buf *b);

/* Binds name to value (both borrowed: they must outlive the uses). */
void cg_vars_set(cg_vars *vs, const char *name, const char *value);

/* Appends tmpl with each $name$ replaced by its binding; "$$" is a literal
 * dollar sign. An unbound name is a bug in the generator: it is written as
 * "$name$?" into the output, which then fails to compile loudly, and
 * cg_emit returns -1. */
int cg_emit(cg_buf *b, const cg_vars *vs, const char *tmpl);

/* A newly allocated printf-formatted string, or NULL. */
char *cg_strdup_printf(const char *fmt, ...)
    __attribute__((format(printf, 1, 2)));

#endif
