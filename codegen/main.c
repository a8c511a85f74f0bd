/*
 * protoc-gen-qrpc: the protoc plugin that turns services in .proto files
 * into typed C stubs on qrpc's RPC engine (docs/codegen.md).
 *
 *   protoc --plugin=protoc-gen-qrpc=PATH --qrpc_out=[all_files:]DIR x.proto
 *     Plugin mode (no arguments): reads a CodeGeneratorRequest on stdin and
 *     writes a CodeGeneratorResponse to stdout with NAME.qrpc.h and
 *     NAME.qrpc.c for each requested file that defines a service (with the
 *     all_files parameter, for every requested file, so a build system can
 *     list the outputs in advance). Problems go into the response's error
 *     field, which protoc prints, naming the file and methods concerned.
 *
 *   protoc-gen-qrpc --strip-services IN OUT
 *     Reads the FileDescriptorSet IN (protoc --include_imports
 *     --descriptor_set_out) and writes it to OUT without services and the
 *     imports only they used, for protoc-c (see strip.h).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "emit.h"
#include "google/protobuf/compiler/plugin.pb-c.h"
#include "model.h"
#include "strip.h"

#define PROG "protoc-gen-qrpc"

/* CodeGeneratorResponse.Feature.FEATURE_PROTO3_OPTIONAL: the generator does
 * not look at fields, so proto3 optional fields are no concern of it. */
#define FEATURE_PROTO3_OPTIONAL 1

/* Reads all of f. Returns 0, or -1 with errno set. */
static int read_all(FILE *f, uint8_t **data, size_t *len) {
  size_t cap = 65536, n = 0;
  uint8_t *buf = malloc(cap);
  if (buf == NULL) return -1;
  for (;;) {
    if (n == cap) {
      uint8_t *p = realloc(buf, cap * 2);
      if (p == NULL) {
        free(buf);
        return -1;
      }
      buf = p;
      cap *= 2;
    }
    size_t got = fread(buf + n, 1, cap - n, f);
    n += got;
    if (got == 0) break;
  }
  if (ferror(f)) {
    free(buf);
    errno = EIO;
    return -1;
  }
  *data = buf;
  *len = n;
  return 0;
}

static int write_all(FILE *f, const uint8_t *data, size_t len) {
  if (fwrite(data, 1, len, f) != len) return -1;
  return fflush(f) == 0 ? 0 : -1;
}

/* Parameters of --qrpc_out (comma-separated before the colon). */
typedef struct params {
  int all_files;
} params;

static int parse_params(const char *s, params *p, cg_buf *errors) {
  memset(p, 0, sizeof(*p));
  if (s == NULL || s[0] == '\0') return 0;
  int rc = 0;
  const char *start = s;
  for (;;) {
    const char *end = strchr(start, ',');
    size_t len = end ? (size_t)(end - start) : strlen(start);
    if (len == strlen("all_files") && strncmp(start, "all_files", len) == 0) {
      p->all_files = 1;
    } else if (len > 0) {
      cg_buf_printf(errors, "unknown parameter '%.*s' (known: all_files)\n",
                    (int)len, start);
      rc = -1;
    }
    if (end == NULL) break;
    start = end + 1;
  }
  return rc;
}

/* The response under construction. */
typedef struct response {
  Google__Protobuf__Compiler__CodeGeneratorResponse msg;
  Google__Protobuf__Compiler__CodeGeneratorResponse__File **files;
  size_t n;
} response;

static int add_file(response *r, const char *base, const char *ext,
                    char *content) {
  Google__Protobuf__Compiler__CodeGeneratorResponse__File *f =
      malloc(sizeof(*f));
  void *p = realloc(r->files, (r->n + 1) * sizeof(*r->files));
  char *name = cg_strdup_printf("%s%s", base, ext);
  if (p != NULL) r->files = p;
  if (f == NULL || p == NULL || name == NULL) {
    free(f);
    free(name);
    free(content);
    return -1;
  }
  google__protobuf__compiler__code_generator_response__file__init(f);
  f->name = name;
  f->content = content;
  r->files[r->n++] = f;
  return 0;
}

static void response_free(response *r) {
  for (size_t i = 0; i < r->n; i++) {
    free(r->files[i]->name);
    free(r->files[i]->content);
    free(r->files[i]);
  }
  free(r->files);
}

/* Generates every requested file into r; appends problems to errors. */
static int generate(const Google__Protobuf__Compiler__CodeGeneratorRequest *req,
                    const params *p, response *r, cg_buf *errors) {
  cg_model m;
  cg_decls d;
  memset(&d, 0, sizeof(d));
  int rc = cg_model_build(&m, req, errors);
  for (size_t i = 0; rc == 0 && i < m.n_files; i++) {
    const cg_file *f = &m.files[i];
    if (f->n_services == 0 && !p->all_files) continue;
    cg_buf h, c;
    cg_buf_init(&h);
    cg_buf_init(&c);
    if (cg_emit_file(f, &d, &h, &c) != 0) {
      cg_buf_free(&h);
      cg_buf_free(&c);
      errors->failed = 1;
      rc = -1;
      break;
    }
    /* add_file takes the text, freeing it if it fails. */
    char *hs = cg_buf_take(&h), *cs = cg_buf_take(&c);
    if (hs == NULL || cs == NULL) {
      free(hs);
      free(cs);
      hs = cs = NULL;
    }
    if (hs == NULL || add_file(r, f->base, ".qrpc.h", hs) != 0) {
      free(cs);
      cs = NULL;
    }
    if (cs == NULL || add_file(r, f->base, ".qrpc.c", cs) != 0) {
      errors->failed = 1;
      rc = -1;
    }
  }
  if (rc == 0 && cg_decls_check(&d, errors) != 0) rc = -1;
  cg_decls_free(&d);
  cg_model_free(&m);
  return rc;
}

static int plugin_main(void) {
  uint8_t *in = NULL;
  size_t in_len = 0;
  if (read_all(stdin, &in, &in_len) != 0) {
    fprintf(stderr, PROG ": cannot read the request on stdin: %s\n",
            strerror(errno));
    return 1;
  }
  Google__Protobuf__Compiler__CodeGeneratorRequest *req =
      google__protobuf__compiler__code_generator_request__unpack(NULL, in_len,
                                                                 in);
  free(in);
  if (req == NULL) {
    fprintf(stderr, PROG ": stdin is not a CodeGeneratorRequest (run this "
                         "program through protoc --qrpc_out)\n");
    return 1;
  }

  response r;
  memset(&r, 0, sizeof(r));
  google__protobuf__compiler__code_generator_response__init(&r.msg);
  r.msg.has_supported_features = 1;
  r.msg.supported_features = FEATURE_PROTO3_OPTIONAL;
  cg_buf errors;
  cg_buf_init(&errors);
  params p;
  if (parse_params(req->parameter, &p, &errors) == 0)
    generate(req, &p, &r, &errors);
  google__protobuf__compiler__code_generator_request__free_unpacked(req, NULL);

  char *error_text = NULL;
  if (errors.failed) {
    error_text = strdup("protoc-gen-qrpc ran out of memory");
  } else if (errors.len > 0) {
    /* protoc prints the text after "--qrpc_out: "; drop the last newline. */
    errors.data[--errors.len] = '\0';
    error_text = cg_buf_take(&errors);
  }
  cg_buf_free(&errors);
  if (error_text != NULL) {
    /* An error replaces every file: nothing half-generated is written. */
    r.msg.error = error_text;
  } else {
    r.msg.n_file = r.n;
    r.msg.file = r.files;
  }

  int status = 0;
  size_t out_len =
      google__protobuf__compiler__code_generator_response__get_packed_size(
          &r.msg);
  uint8_t *out = malloc(out_len ? out_len : 1);
  if (out == NULL) {
    fprintf(stderr, PROG ": out of memory\n");
    status = 1;
  } else {
    google__protobuf__compiler__code_generator_response__pack(&r.msg, out);
    if (write_all(stdout, out, out_len) != 0) {
      fprintf(stderr, PROG ": cannot write the response: %s\n",
              strerror(errno));
      status = 1;
    }
  }
  free(out);
  free(error_text);
  response_free(&r);
  return status;
}

static int strip_main(const char *in_path, const char *out_path) {
  FILE *f = fopen(in_path, "rb");
  uint8_t *in = NULL;
  size_t in_len = 0;
  if (f == NULL || read_all(f, &in, &in_len) != 0) {
    fprintf(stderr, PROG ": cannot read %s: %s\n", in_path, strerror(errno));
    if (f != NULL) fclose(f);
    return 1;
  }
  fclose(f);
  Google__Protobuf__FileDescriptorSet *set =
      google__protobuf__file_descriptor_set__unpack(NULL, in_len, in);
  free(in);
  if (set == NULL) {
    fprintf(stderr, PROG ": %s is not a FileDescriptorSet\n", in_path);
    return 1;
  }
  char *why = NULL;
  int status = 1;
  uint8_t *out = NULL;
  if (cg_strip_services(set, &why) != 0) {
    fprintf(stderr, PROG ": %s\n", why ? why : "out of memory");
    goto done;
  }
  size_t out_len = google__protobuf__file_descriptor_set__get_packed_size(set);
  out = malloc(out_len ? out_len : 1);
  if (out == NULL) {
    fprintf(stderr, PROG ": out of memory\n");
    goto done;
  }
  google__protobuf__file_descriptor_set__pack(set, out);
  FILE *o = fopen(out_path, "wb");
  if (o == NULL || write_all(o, out, out_len) != 0) {
    fprintf(stderr, PROG ": cannot write %s: %s\n", out_path, strerror(errno));
    if (o != NULL) fclose(o);
    goto done;
  }
  if (fclose(o) != 0) {
    fprintf(stderr, PROG ": cannot write %s: %s\n", out_path, strerror(errno));
    goto done;
  }
  status = 0;
done:
  free(why);
  free(out);
  google__protobuf__file_descriptor_set__free_unpacked(set, NULL);
  return status;
}

static void usage(FILE *f) {
  fprintf(f, "usage: protoc --plugin=protoc-gen-qrpc=PATH "
             "--qrpc_out=[all_files:]DIR FILE.proto...\n"
             "       " PROG " --strip-services IN.desc OUT.desc\n"
             "\n"
             "Without arguments, " PROG " is a protoc plugin: it writes\n"
             "NAME.qrpc.h and NAME.qrpc.c, typed qrpc stubs, for each .proto\n"
             "file with services (every file with all_files). With\n"
             "--strip-services it rewrites a FileDescriptorSet for protoc-c\n"
             "without services and the imports only they used.\n");
}

int main(int argc, char **argv) {
  if (argc == 1) return plugin_main();
  if (argc == 2 &&
      (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
    usage(stdout);
    return 0;
  }
  if (argc == 4 && strcmp(argv[1], "--strip-services") == 0)
    return strip_main(argv[2], argv[3]);
  fprintf(stderr, PROG ": unexpected arguments\n");
  usage(stderr);
  return 2;
}
