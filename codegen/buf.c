#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void cg_buf_init(cg_buf *b) { memset(b, 0, sizeof(*b)); }

void cg_buf_free(cg_buf *b) {
  free(b->data);
  cg_buf_init(b);
}

static int reserve(cg_buf *b, size_t extra) {
  if (b->failed) return -1;
  if (b->len + extra + 1 <= b->cap) return 0;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1) cap *= 2;
  char *p = realloc(b->data, cap);
  if (p == NULL) {
    b->failed = 1;
    return -1;
  }
  b->data = p;
  b->cap = cap;
  return 0;
}

void cg_buf_add(cg_buf *b, const char *s, size_t len) {
  if (reserve(b, len) != 0) return;
  memcpy(b->data + b->len, s, len);
  b->len += len;
  b->data[b->len] = '\0';
}

void cg_buf_puts(cg_buf *b, const char *s) { cg_buf_add(b, s, strlen(s)); }

void cg_buf_printf(cg_buf *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) {
    b->failed = 1;
    return;
  }
  if (reserve(b, (size_t)n) != 0) return;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
}

char *cg_buf_take(cg_buf *b) {
  if (b->failed) {
    cg_buf_free(b);
    return NULL;
  }
  char *s = b->data;
  if (s == NULL) s = calloc(1, 1);
  cg_buf_init(b);
  return s;
}

int cg_buf_failed(const cg_buf *b) { return b->failed; }

void cg_vars_set(cg_vars *vs, const char *name, const char *value) {
  for (size_t i = 0; i < vs->n; i++) {
    if (strcmp(vs->v[i].name, name) == 0) {
      vs->v[i].value = value;
      return;
    }
  }
  if (vs->n < CG_VARS_MAX) {
    vs->v[vs->n].name = name;
    vs->v[vs->n].value = value;
    vs->n++;
  }
}

static const char *lookup(const cg_vars *vs, const char *name, size_t len) {
  for (size_t i = vs->n; i-- > 0;) {
    if (strlen(vs->v[i].name) == len && memcmp(vs->v[i].name, name, len) == 0)
      return vs->v[i].value;
  }
  return NULL;
}

int cg_emit(cg_buf *b, const cg_vars *vs, const char *tmpl) {
  int rc = 0;
  const char *p = tmpl;
  while (*p != '\0') {
    const char *d = strchr(p, '$');
    if (d == NULL) {
      cg_buf_puts(b, p);
      break;
    }
    cg_buf_add(b, p, (size_t)(d - p));
    const char *end = strchr(d + 1, '$');
    if (end == NULL) {
      cg_buf_puts(b, d);
      return -1;
    }
    if (end == d + 1) {
      cg_buf_add(b, "$", 1);
    } else {
      const char *value = lookup(vs, d + 1, (size_t)(end - d - 1));
      if (value != NULL) {
        cg_buf_puts(b, value);
      } else {
        cg_buf_add(b, d, (size_t)(end - d + 1));
        cg_buf_puts(b, "?");
        rc = -1;
      }
    }
    p = end + 1;
  }
  return rc;
}

char *cg_strdup_printf(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0) return NULL;
  char *s = malloc((size_t)n + 1);
  if (s == NULL) return NULL;
  va_start(ap, fmt);
  vsnprintf(s, (size_t)n + 1, fmt, ap);
  va_end(ap);
  return s;
}
