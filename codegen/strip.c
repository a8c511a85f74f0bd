#include "strip.h"

#include <stdlib.h>
#include <string.h>

#include "symtab.h"

/* The files whose types a file makes visible to its importers: itself and,
 * through public imports, transitively, theirs. Marks them in seen. */
static void mark_exports(Google__Protobuf__FileDescriptorSet *set, size_t fi,
                         unsigned char *seen) {
  if (seen[fi]) return;
  seen[fi] = 1;
  const Google__Protobuf__FileDescriptorProto *f = set->file[fi];
  for (size_t i = 0; i < f->n_public_dependency; i++) {
    int32_t d = f->public_dependency[i];
    if (d < 0 || (size_t)d >= f->n_dependency) continue;
    for (size_t j = 0; j < set->n_file; j++)
      if (strcmp(set->file[j]->name, f->dependency[d]) == 0)
        mark_exports(set, j, seen);
  }
}

/* What one file still refers to: the index of the file defining each
 * type, or a note that some reference could not be resolved. */
typedef struct refs {
  const cg_symtab *types;
  unsigned char *used; /* per file of the set */
  int unresolved;
} refs;

static void use_name(refs *r, const char *name) {
  if (name == NULL || name[0] == '\0') return;
  const cg_type *t = cg_symtab_find(r->types, name);
  if (t == NULL)
    r->unresolved = 1;
  else
    r->used[t->file_index] = 1;
}

static void use_fields(refs *r, Google__Protobuf__FieldDescriptorProto **fs,
                       size_t n) {
  for (size_t i = 0; i < n; i++) {
    use_name(r, fs[i]->type_name);
    use_name(r, fs[i]->extendee);
  }
}

static void use_messages(refs *r, Google__Protobuf__DescriptorProto **ms,
                         size_t n) {
  for (size_t i = 0; i < n; i++) {
    use_fields(r, ms[i]->field, ms[i]->n_field);
    use_fields(r, ms[i]->extension, ms[i]->n_extension);
    use_messages(r, ms[i]->nested_type, ms[i]->n_nested_type);
  }
}

static int is_public(const Google__Protobuf__FileDescriptorProto *f,
                     size_t dep) {
  for (size_t i = 0; i < f->n_public_dependency; i++)
    if (f->public_dependency[i] >= 0 && (size_t)f->public_dependency[i] == dep)
      return 1;
  return 0;
}

/* Rewrites an array of dependency indices after the removals; new_index
 * maps old indices to new ones, -1 for removed. */
static void remap(int32_t *v, size_t *n, const int32_t *new_index,
                  size_t n_old) {
  size_t k = 0;
  for (size_t i = 0; i < *n; i++) {
    if (v[i] < 0 || (size_t)v[i] >= n_old || new_index[v[i]] < 0) continue;
    v[k++] = new_index[v[i]];
  }
  *n = k;
}

/* Drops the imports of file fi that nothing in it refers to any more. */
static int drop_unused_imports(Google__Protobuf__FileDescriptorSet *set,
                               size_t fi, const cg_symtab *types) {
  Google__Protobuf__FileDescriptorProto *f = set->file[fi];
  size_t nf = set->n_file, nd = f->n_dependency;
  if (nd == 0) return 0;
  refs r = {types, calloc(nf, 1), 0};
  unsigned char *seen = calloc(nf, 1);
  int32_t *new_index = calloc(nd, sizeof(*new_index));
  if (r.used == NULL || seen == NULL || new_index == NULL) {
    free(r.used);
    free(seen);
    free(new_index);
    return -1;
  }
  use_messages(&r, f->message_type, f->n_message_type);
  use_fields(&r, f->extension, f->n_extension);

  size_t kept = 0;
  for (size_t d = 0; d < nd; d++) {
    int keep = r.unresolved || is_public(f, d);
    for (size_t j = 0; !keep && j < nf; j++) {
      if (strcmp(set->file[j]->name, f->dependency[d]) != 0) continue;
      memset(seen, 0, nf);
      mark_exports(set, j, seen);
      for (size_t k = 0; k < nf && !keep; k++)
        if (seen[k] && r.used[k]) keep = 1;
    }
    if (keep) {
      new_index[d] = (int32_t)kept;
      f->dependency[kept++] = f->dependency[d];
    } else {
      new_index[d] = -1;
      free(f->dependency[d]);
    }
  }
  f->n_dependency = kept;
  remap(f->public_dependency, &f->n_public_dependency, new_index, nd);
  remap(f->weak_dependency, &f->n_weak_dependency, new_index, nd);
  free(r.used);
  free(seen);
  free(new_index);
  return 0;
}

int cg_strip_services(Google__Protobuf__FileDescriptorSet *set, char **why) {
  *why = NULL;
  for (size_t i = 0; i < set->n_file; i++) {
    Google__Protobuf__FileDescriptorProto *f = set->file[i];
    for (size_t j = 0; j < f->n_service; j++)
      protobuf_c_message_free_unpacked(&f->service[j]->base, NULL);
    f->n_service = 0;
    /* Locations would point at what was removed. */
    if (f->source_code_info != NULL) {
      protobuf_c_message_free_unpacked(&f->source_code_info->base, NULL);
      f->source_code_info = NULL;
    }
  }
  cg_symtab types;
  if (cg_symtab_build(&types, set->file, set->n_file, why) != 0) {
    cg_symtab_free(&types);
    return -1;
  }
  int rc = 0;
  for (size_t i = 0; i < set->n_file && rc == 0; i++)
    rc = drop_unused_imports(set, i, &types);
  cg_symtab_free(&types);
  return rc;
}
