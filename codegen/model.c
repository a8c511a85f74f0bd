#include "model.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"
#include "options.h"
#include "qrpc/dgram.h"

const char *cg_kind_name(cg_kind k) {
  switch (k) {
  case CG_UNARY: return "unary";
  case CG_SERVER_STREAM: return "server streaming";
  case CG_CLIENT_STREAM: return "client streaming";
  case CG_BIDI_STREAM: return "bidirectional streaming";
  case CG_NOTIFY: return "notify (one-way)";
  case CG_DATAGRAM: return "datagram";
  }
  return "?";
}

static const Google__Protobuf__FileDescriptorProto *
find_file(const Google__Protobuf__Compiler__CodeGeneratorRequest *req,
          const char *name) {
  for (size_t i = 0; i < req->n_proto_file; i++)
    if (strcmp(req->proto_file[i]->name, name) == 0) return req->proto_file[i];
  return NULL;
}

/* Resolves a request or reply type; appends an error when it is unknown. */
static const cg_type *method_type(const cg_model *m, const cg_file *f,
                                  const cg_method *me, const char *name,
                                  const char *role, cg_buf *errors) {
  const cg_type *t = cg_symtab_find(&m->types, name);
  if (t == NULL || t->is_enum) {
    cg_buf_printf(errors, "%s: %s: %s type %s is not a known message\n",
                  f->name, me->full, role, name ? name : "(none)");
    return NULL;
  }
  return t;
}

/* Decides the kind of a method from its streaming flags and options;
 * appends an error for combinations that make no sense. */
static int method_kind(const cg_file *f, cg_method *me,
                       const Google__Protobuf__MethodDescriptorProto *md,
                       const cg_method_opts *o, cg_buf *errors) {
  int cs = md->has_client_streaming && md->client_streaming;
  int ss = md->has_server_streaming && md->server_streaming;
  me->kind = cs ? (ss ? CG_BIDI_STREAM : CG_CLIENT_STREAM)
                : (ss ? CG_SERVER_STREAM : CG_UNARY);
  if (o->notify && o->datagram) {
    cg_buf_printf(errors,
                  "%s: %s: (qrpc.notify) and (qrpc.datagram) exclude each "
                  "other\n",
                  f->name, me->full);
    return -1;
  }
  if ((o->notify || o->datagram) && me->kind != CG_UNARY) {
    cg_buf_printf(errors,
                  "%s: %s: (qrpc.%s) needs a method that streams "
                  "in neither direction\n",
                  f->name, me->full, o->notify ? "notify" : "datagram");
    return -1;
  }
  if (!o->datagram &&
      (o->has_latest_only || o->has_max_age_ms || o->has_max_message_bytes ||
       o->has_snapshot_ring || o->has_snapshot_key)) {
    cg_buf_printf(errors,
                  "%s: %s: (qrpc.%s) applies only to (qrpc.datagram) "
                  "methods\n",
                  f->name, me->full,
                  o->has_latest_only         ? "latest_only"
                  : o->has_max_age_ms        ? "max_age_ms"
                  : o->has_max_message_bytes ? "max_message_bytes"
                  : o->has_snapshot_ring     ? "snapshot_ring"
                                             : "snapshot_key");
    return -1;
  }
  if (o->has_snapshot_key && o->snapshot_ring == 0) {
    cg_buf_printf(errors,
                  "%s: %s: (qrpc.snapshot_key) needs (qrpc.snapshot_ring) "
                  "of 1 to %d\n",
                  f->name, me->full, QRPC_DGRAM_MAX_RING);
    return -1;
  }
  if (o->snapshot_ring > QRPC_DGRAM_MAX_RING) {
    cg_buf_printf(errors,
                  "%s: %s: (qrpc.snapshot_ring) is %u; a channel keeps at "
                  "most %d baselines\n",
                  f->name, me->full, (unsigned)o->snapshot_ring,
                  QRPC_DGRAM_MAX_RING);
    return -1;
  }
  if (o->notify) me->kind = CG_NOTIFY;
  if (o->datagram) me->kind = CG_DATAGRAM;
  me->idempotent = o->idempotent;
  me->latest_only = o->latest_only;
  me->max_age_ms = o->max_age_ms;
  me->max_message = o->max_message_bytes;
  me->snapshot_ring = o->snapshot_ring;
  return 0;
}

/* How a field's type reads in a message. */
static const char *
field_type_name(Google__Protobuf__FieldDescriptorProto__Type t) {
  switch (t) {
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_DOUBLE:
    return "double";
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FLOAT:
    return "float";
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FIXED64:
    return "fixed64";
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_FIXED32:
    return "fixed32";
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SFIXED32:
    return "sfixed32";
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SFIXED64:
    return "sfixed64";
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_STRING:
    return "string";
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_BYTES:
    return "bytes";
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_GROUP:
    return "group";
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_MESSAGE:
    return "message";
  default: return "varint";
  }
}

/* The entity key is read from the wire as a varint (src/dgram/delta.h),
 * so only the types encoded as one qualify. */
static int is_varint_type(Google__Protobuf__FieldDescriptorProto__Type t) {
  switch (t) {
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_INT32:
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_INT64:
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_UINT32:
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_UINT64:
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SINT32:
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_SINT64:
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_BOOL:
  case GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_ENUM: return 1;
  default: return 0;
  }
}

static int is_repeated(const Google__Protobuf__FieldDescriptorProto *fd) {
  return fd->has_label &&
         fd->label ==
             GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__LABEL__LABEL_REPEATED;
}

/* Resolves (qrpc.snapshot_key) "FIELD.KEY" against the request type to
 * the field numbers the library's delta works with, since the runtime
 * sees only bytes and cannot check names itself. */
static int snapshot_key(const cg_model *m, const cg_file *f, cg_method *me,
                        const cg_method_opts *o, cg_buf *errors) {
  const char *s = o->snapshot_key;
  size_t n = o->snapshot_key_len;
  const char *dot = n > 0 ? memchr(s, '.', n) : NULL;
  size_t flen = dot ? (size_t)(dot - s) : 0;
  size_t klen = dot ? n - flen - 1 : 0;
  if (dot == NULL || flen == 0 || klen == 0 ||
      memchr(dot + 1, '.', klen) != NULL || memchr(s, '\0', n) != NULL) {
    cg_buf_printf(errors,
                  "%s: %s: (qrpc.snapshot_key) \"%.*s\" is not FIELD.KEY "
                  "(a repeated message field of %s, and a varint field of "
                  "that message)\n",
                  f->name, me->full, (int)n, s, me->in->full);
    return -1;
  }
  const Google__Protobuf__FieldDescriptorProto *ef =
      cg_type_field(me->in, s, flen);
  const char *bad = NULL;
  if (ef == NULL)
    bad = "does not exist";
  else if (!is_repeated(ef))
    bad = "is not repeated";
  else if (!ef->has_type ||
           ef->type !=
               GOOGLE__PROTOBUF__FIELD_DESCRIPTOR_PROTO__TYPE__TYPE_MESSAGE)
    bad = "is not a message field";
  if (bad != NULL) {
    cg_buf_printf(errors,
                  "%s: %s: (qrpc.snapshot_key) \"%.*s\": field %.*s of %s %s; "
                  "FIELD must be a repeated message field\n",
                  f->name, me->full, (int)n, s, (int)flen, s, me->in->full,
                  bad);
    return -1;
  }
  const cg_type *et = cg_symtab_find(&m->types, ef->type_name);
  if (et == NULL || et->is_enum) {
    cg_buf_printf(errors,
                  "%s: %s: (qrpc.snapshot_key) \"%.*s\": type %s of field "
                  "%.*s is not a known message\n",
                  f->name, me->full, (int)n, s,
                  ef->type_name ? ef->type_name : "(none)", (int)flen, s);
    return -1;
  }
  const Google__Protobuf__FieldDescriptorProto *kf =
      cg_type_field(et, dot + 1, klen);
  char why[64] = "";
  if (kf == NULL)
    snprintf(why, sizeof(why), "does not exist");
  else if (is_repeated(kf))
    snprintf(why, sizeof(why), "is repeated");
  else if (!kf->has_type || !is_varint_type(kf->type))
    snprintf(why, sizeof(why), "is a %s field",
             kf->has_type ? field_type_name(kf->type) : "typeless");
  if (why[0] != '\0') {
    cg_buf_printf(errors,
                  "%s: %s: (qrpc.snapshot_key) \"%.*s\": field %.*s of %s "
                  "%s; KEY must be a single uint32, uint64, int32, int64, "
                  "sint32, sint64, bool or enum field\n",
                  f->name, me->full, (int)n, s, (int)klen, dot + 1, et->full,
                  why);
    return -1;
  }
  me->snapshot_entities = (uint32_t)ef->number;
  me->snapshot_key = (uint32_t)kf->number;
  return 0;
}

static int build_method(cg_model *m, cg_file *f, cg_service *s, cg_method *me,
                        const Google__Protobuf__MethodDescriptorProto *md,
                        cg_buf *errors) {
  me->name = md->name;
  me->full = cg_strdup_printf("%s/%s", s->full, md->name);
  me->c_name = cg_method_c_name(md->name);
  me->prefix =
      me->c_name ? cg_strdup_printf("%s_%s", s->prefix, me->c_name) : NULL;
  if (me->full == NULL || me->prefix == NULL) {
    errors->failed = 1;
    return -1;
  }
  cg_method_opts o;
  const char *why = NULL;
  if (cg_method_opts_read(md->options, &o, &why) != 0) {
    cg_buf_printf(errors, "%s: %s: %s\n", f->name, me->full, why);
    return -1;
  }
  me->pinned = o.has_method_id;
  me->id = o.has_method_id ? o.method_id : cg_method_id_hash(me->full);
  int rc = method_kind(f, me, md, &o, errors);
  me->in = method_type(m, f, me, md->input_type, "request", errors);
  me->out = method_type(m, f, me, md->output_type, "reply", errors);
  if (rc == 0 && me->in != NULL && o.has_snapshot_key &&
      snapshot_key(m, f, me, &o, errors) != 0)
    rc = -1;
  return rc == 0 && me->in && me->out ? 0 : -1;
}

static int build_service(cg_model *m, cg_file *f, cg_service *s,
                         const Google__Protobuf__ServiceDescriptorProto *sd,
                         cg_buf *errors) {
  const char *pkg = f->fd->package ? f->fd->package : "";
  char *pkg_prefix = cg_package_prefix(pkg);
  s->name = sd->name;
  s->full = cg_strdup_printf("%s%s%s", pkg, pkg[0] ? "." : "", sd->name);
  s->prefix = pkg_prefix ? cg_strdup_printf("%s%s%s", pkg_prefix,
                                            pkg_prefix[0] ? "_" : "", sd->name)
                         : NULL;
  free(pkg_prefix);
  s->methods = calloc(sd->n_method ? sd->n_method : 1, sizeof(*s->methods));
  if (s->full == NULL || s->prefix == NULL || s->methods == NULL) {
    errors->failed = 1;
    return -1;
  }
  int rc = 0;
  for (size_t i = 0; i < sd->n_method; i++) {
    s->n_methods++;
    if (build_method(m, f, s, &s->methods[i], sd->method[i], errors) != 0)
      rc = -1;
  }
  return rc;
}

static int build_file(cg_model *m, cg_file *f, cg_buf *errors) {
  f->name = f->fd->name;
  f->base = cg_strip_proto(f->name);
  f->ident = cg_file_ident(f->name);
  f->services =
      calloc(f->fd->n_service ? f->fd->n_service : 1, sizeof(*f->services));
  if (f->base == NULL || f->ident == NULL || f->services == NULL) {
    errors->failed = 1;
    return -1;
  }
  int rc = 0;
  for (size_t i = 0; i < f->fd->n_service; i++) {
    f->n_services++;
    if (build_service(m, f, &f->services[i], f->fd->service[i], errors) != 0)
      rc = -1;
  }
  return rc;
}

/* A method and where it is, for the id check. */
typedef struct id_ref {
  const cg_method *me;
  const cg_file *f;
  size_t order; /* declaration order in the compilation */
} id_ref;

/* By id, then in declaration order, so messages are deterministic. */
static int cmp_id_ref(const void *a, const void *b) {
  const id_ref *x = a, *y = b;
  if (x->me->id != y->me->id) return x->me->id < y->me->id ? -1 : 1;
  return x->order < y->order ? -1 : x->order > y->order;
}

/* Refuses two methods of the compilation with the same id, naming both. */
static int check_ids(const cg_model *m, cg_buf *errors) {
  size_t n = 0;
  for (size_t i = 0; i < m->n_files; i++)
    for (size_t j = 0; j < m->files[i].n_services; j++)
      n += m->files[i].services[j].n_methods;
  if (n < 2) return 0;
  id_ref *refs = malloc(n * sizeof(*refs));
  if (refs == NULL) {
    errors->failed = 1;
    return -1;
  }
  size_t k = 0;
  for (size_t i = 0; i < m->n_files; i++)
    for (size_t j = 0; j < m->files[i].n_services; j++)
      for (size_t l = 0; l < m->files[i].services[j].n_methods; l++) {
        refs[k] =
            (id_ref){&m->files[i].services[j].methods[l], &m->files[i], k};
        k++;
      }
  qsort(refs, n, sizeof(*refs), cmp_id_ref);
  int rc = 0;
  for (size_t a = 0; a < n;) {
    size_t b = a + 1;
    while (b < n && refs[b].me->id == refs[a].me->id) b++;
    /* Each later method of a group is reported against the first. */
    for (size_t c = a + 1; c < b; c++) {
      const id_ref *x = &refs[a], *y = &refs[c];
      int same_file = strcmp(x->f->name, y->f->name) == 0;
      cg_buf_printf(errors,
                    "%s: method id %u (0x%08x) of %s%s is also the id of "
                    "%s%s%s%s; pin another (qrpc.method_id) on one of them\n",
                    y->f->name, (unsigned)y->me->id, (unsigned)y->me->id,
                    y->me->full, y->me->pinned ? " (pinned)" : "", x->me->full,
                    x->me->pinned ? " (pinned)" : "", same_file ? "" : " in ",
                    same_file ? "" : x->f->name);
      rc = -1;
    }
    a = b;
  }
  free(refs);
  return rc;
}

int cg_model_build(cg_model *m,
                   const Google__Protobuf__Compiler__CodeGeneratorRequest *req,
                   cg_buf *errors) {
  memset(m, 0, sizeof(*m));
  char *why = NULL;
  if (cg_symtab_build(&m->types, req->proto_file, req->n_proto_file, &why) !=
      0) {
    if (why != NULL)
      cg_buf_printf(errors, "%s\n", why);
    else
      errors->failed = 1;
    free(why);
    return -1;
  }
  size_t n = req->n_file_to_generate;
  m->files = calloc(n ? n : 1, sizeof(*m->files));
  if (m->files == NULL) {
    errors->failed = 1;
    return -1;
  }
  int rc = 0;
  for (size_t i = 0; i < n; i++) {
    const Google__Protobuf__FileDescriptorProto *fd =
        find_file(req, req->file_to_generate[i]);
    if (fd == NULL) {
      cg_buf_printf(errors, "%s: not among the files protoc sent\n",
                    req->file_to_generate[i]);
      rc = -1;
      continue;
    }
    cg_file *f = &m->files[m->n_files++];
    f->fd = fd;
    if (build_file(m, f, errors) != 0) rc = -1;
  }
  if (rc == 0 && check_ids(m, errors) != 0) rc = -1;
  return errors->failed ? -1 : rc;
}

void cg_model_free(cg_model *m) {
  for (size_t i = 0; i < m->n_files; i++) {
    cg_file *f = &m->files[i];
    for (size_t j = 0; j < f->n_services; j++) {
      cg_service *s = &f->services[j];
      for (size_t k = 0; k < s->n_methods; k++) {
        free(s->methods[k].full);
        free(s->methods[k].c_name);
        free(s->methods[k].prefix);
      }
      free(s->methods);
      free(s->full);
      free(s->prefix);
    }
    free(f->services);
    free(f->base);
    free(f->ident);
  }
  free(m->files);
  cg_symtab_free(&m->types);
  memset(m, 0, sizeof(*m));
}
