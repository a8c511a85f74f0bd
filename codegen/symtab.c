#include "symtab.h"

#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "names.h"
#include "options.h"

/* Where the types of one file are being added. */
typedef struct walk {
  cg_symtab *t;
  const char *file;
  size_t file_index;
  const char *package;   /* the proto package */
  const char *c_package; /* what protoc-c uses in its place */
} walk;

/* Adds the type whose name relative to the package is rel. */
static int add_type(walk *w, const char *rel,
                    const Google__Protobuf__DescriptorProto *msg) {
  cg_symtab *t = w->t;
  if (t->n == t->cap) {
    size_t cap = t->cap ? t->cap * 2 : 64;
    cg_type *p = realloc(t->types, cap * sizeof(*p));
    if (p == NULL) return -1;
    t->types = p;
    t->cap = cap;
  }
  cg_type *ty = &t->types[t->n];
  memset(ty, 0, sizeof(*ty));
  const char *dot = w->package[0] ? "." : "";
  const char *cdot = w->c_package[0] ? "." : "";
  char *c_full = cg_strdup_printf("%s%s%s", w->c_package, cdot, rel);
  ty->full = cg_strdup_printf("%s%s%s", w->package, dot, rel);
  ty->c_type = c_full ? cg_protoc_c_type(c_full) : NULL;
  ty->c_lower = c_full ? cg_protoc_c_lower(c_full) : NULL;
  free(c_full);
  ty->file = w->file;
  ty->file_index = w->file_index;
  ty->is_enum = msg == NULL;
  ty->msg = msg;
  t->n++;
  return ty->full && ty->c_type && ty->c_lower ? 0 : -1;
}

static int add_enums(walk *w, const char *scope,
                     Google__Protobuf__EnumDescriptorProto *const *enums,
                     size_t n) {
  for (size_t i = 0; i < n; i++) {
    char *rel =
        cg_strdup_printf("%s%s%s", scope, scope[0] ? "." : "", enums[i]->name);
    int rc = rel ? add_type(w, rel, NULL) : -1;
    free(rel);
    if (rc != 0) return -1;
  }
  return 0;
}

static int add_messages(walk *w, const char *scope,
                        Google__Protobuf__DescriptorProto *const *msgs,
                        size_t n) {
  for (size_t i = 0; i < n; i++) {
    const Google__Protobuf__DescriptorProto *m = msgs[i];
    char *rel = cg_strdup_printf("%s%s%s", scope, scope[0] ? "." : "", m->name);
    int rc = rel ? add_type(w, rel, m) : -1;
    if (rc == 0) rc = add_messages(w, rel, m->nested_type, m->n_nested_type);
    if (rc == 0) rc = add_enums(w, rel, m->enum_type, m->n_enum_type);
    free(rel);
    if (rc != 0) return -1;
  }
  return 0;
}

int cg_symtab_build(cg_symtab *t,
                    Google__Protobuf__FileDescriptorProto *const *files,
                    size_t n, char **why) {
  memset(t, 0, sizeof(*t));
  *why = NULL;
  for (size_t i = 0; i < n; i++) {
    const Google__Protobuf__FileDescriptorProto *f = files[i];
    int bad = 0;
    char *c_package = cg_file_c_package(f->options, &bad);
    if (bad) {
      *why = cg_strdup_printf("%s: malformed (pb_c_file).c_package option",
                              f->name);
      return -1;
    }
    walk w = {t, f->name, i, f->package ? f->package : "",
              c_package ? c_package : (f->package ? f->package : "")};
    int rc = add_messages(&w, "", f->message_type, f->n_message_type);
    if (rc == 0) rc = add_enums(&w, "", f->enum_type, f->n_enum_type);
    free(c_package);
    if (rc != 0) {
      *why = cg_strdup_printf("out of memory");
      return -1;
    }
  }
  return 0;
}

void cg_symtab_free(cg_symtab *t) {
  for (size_t i = 0; i < t->n; i++) {
    free(t->types[i].full);
    free(t->types[i].c_type);
    free(t->types[i].c_lower);
  }
  free(t->types);
  memset(t, 0, sizeof(*t));
}

const cg_type *cg_symtab_find(const cg_symtab *t, const char *name) {
  if (name == NULL) return NULL;
  if (name[0] == '.') name++;
  for (size_t i = 0; i < t->n; i++)
    if (strcmp(t->types[i].full, name) == 0) return &t->types[i];
  return NULL;
}

const Google__Protobuf__FieldDescriptorProto *
cg_type_field(const cg_type *t, const char *name, size_t len) {
  if (t == NULL || t->msg == NULL) return NULL;
  for (size_t i = 0; i < t->msg->n_field; i++) {
    const Google__Protobuf__FieldDescriptorProto *f = t->msg->field[i];
    if (f->name != NULL && strlen(f->name) == len &&
        memcmp(f->name, name, len) == 0)
      return f;
  }
  return NULL;
}
