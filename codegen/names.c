#include "names.h"

#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

#define FNV32_OFFSET 2166136261u
#define FNV32_PRIME 16777619u
/* Ids fit in 30 bits, so they are QUIC varints of at most 4 bytes. */
#define METHOD_ID_MASK 0x3fffffffu

uint32_t cg_method_id_hash(const char *full_name) {
  uint32_t h = FNV32_OFFSET;
  for (const unsigned char *p = (const unsigned char *)full_name; *p; p++) {
    h ^= *p;
    h *= FNV32_PRIME;
  }
  return h & METHOD_ID_MASK;
}

/* Calls piece(out, s, len) for each non-empty dot-separated piece of name,
 * writing "__" between them, as protoc-c's FullNameTo* helpers do. */
static char *join_pieces(const char *name,
                         void (*piece)(cg_buf *out, const char *s,
                                       size_t len)) {
  cg_buf b;
  cg_buf_init(&b);
  int first = 1;
  const char *p = name;
  while (*p != '\0') {
    while (*p == '.') p++;
    const char *start = p;
    while (*p != '\0' && *p != '.') p++;
    if (p == start) continue;
    if (!first) cg_buf_puts(&b, "__");
    first = 0;
    piece(&b, start, (size_t)(p - start));
  }
  return cg_buf_take(&b);
}

/* protoc-c's ToCamel. */
static void piece_camel(cg_buf *out, const char *s, size_t len) {
  int next_upper = 1;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    if (c == '_') {
      next_upper = 1;
    } else if (next_upper) {
      c = (char)toupper((unsigned char)c);
      cg_buf_add(out, &c, 1);
      next_upper = 0;
    } else {
      cg_buf_add(out, &c, 1);
    }
  }
}

/* protoc-c's CamelToLower. */
static void piece_lower(cg_buf *out, const char *s, size_t len) {
  int was_upper = 1;
  for (size_t i = 0; i < len; i++) {
    char c = s[i];
    int is_upper = isupper((unsigned char)c) != 0;
    if (is_upper) {
      if (!was_upper) cg_buf_add(out, "_", 1);
      c = (char)tolower((unsigned char)c);
    }
    cg_buf_add(out, &c, 1);
    was_upper = is_upper;
  }
}

char *cg_protoc_c_type(const char *full_name) {
  return join_pieces(full_name, piece_camel);
}

char *cg_protoc_c_lower(const char *full_name) {
  return join_pieces(full_name, piece_lower);
}

char *cg_package_prefix(const char *package) {
  char *s = strdup(package ? package : "");
  if (s == NULL) return NULL;
  for (char *p = s; *p; p++)
    if (*p == '.') *p = '_';
  return s;
}

static const char *const reserved_words[] = {
    /* C11 */
    "auto",
    "break",
    "case",
    "char",
    "const",
    "continue",
    "default",
    "do",
    "double",
    "else",
    "enum",
    "extern",
    "float",
    "for",
    "goto",
    "if",
    "inline",
    "int",
    "long",
    "register",
    "restrict",
    "return",
    "short",
    "signed",
    "sizeof",
    "static",
    "struct",
    "switch",
    "typedef",
    "union",
    "unsigned",
    "void",
    "volatile",
    "while",
    "_Alignas",
    "_Alignof",
    "_Atomic",
    "_Bool",
    "_Complex",
    "_Generic",
    "_Imaginary",
    "_Noreturn",
    "_Static_assert",
    "_Thread_local",
    /* C23 */
    "alignas",
    "alignof",
    "bool",
    "constexpr",
    "false",
    "nullptr",
    "static_assert",
    "thread_local",
    "true",
    "typeof",
    "typeof_unqual",
    /* C++ */
    "and",
    "and_eq",
    "asm",
    "bitand",
    "bitor",
    "catch",
    "char8_t",
    "char16_t",
    "char32_t",
    "class",
    "co_await",
    "co_return",
    "co_yield",
    "compl",
    "concept",
    "const_cast",
    "consteval",
    "constinit",
    "decltype",
    "delete",
    "dynamic_cast",
    "explicit",
    "export",
    "friend",
    "mutable",
    "namespace",
    "new",
    "noexcept",
    "not",
    "not_eq",
    "operator",
    "or",
    "or_eq",
    "private",
    "protected",
    "public",
    "reinterpret_cast",
    "requires",
    "static_cast",
    "template",
    "this",
    "throw",
    "try",
    "typeid",
    "typename",
    "using",
    "virtual",
    "wchar_t",
    "xor",
    "xor_eq",
    /* Object-like macros of the standard headers generated code includes
     * (stddef.h, stdint.h, stdlib.h, string.h) and of their usual
     * companions. */
    "NULL",
    "EOF",
    "errno",
    "stdin",
    "stdout",
    "stderr",
    "offsetof",
    "EXIT_SUCCESS",
    "EXIT_FAILURE",
    "RAND_MAX",
    "MB_CUR_MAX",
    "SIZE_MAX",
    "PTRDIFF_MIN",
    "PTRDIFF_MAX",
    "INTPTR_MIN",
    "INTPTR_MAX",
    "UINTPTR_MAX",
    "INTMAX_MIN",
    "INTMAX_MAX",
    "UINTMAX_MAX",
    "INT8_MIN",
    "INT8_MAX",
    "UINT8_MAX",
    "INT16_MIN",
    "INT16_MAX",
    "UINT16_MAX",
    "INT32_MIN",
    "INT32_MAX",
    "UINT32_MAX",
    "INT64_MIN",
    "INT64_MAX",
    "UINT64_MAX",
};

/* Names of service-wide symbols: a method so named would collide. */
static const char *const service_words[] = {"handlers", "register",
                                            "register_client", "user_data"};

static int in_list(const char *s, const char *const *list, size_t n) {
  for (size_t i = 0; i < n; i++)
    if (strcmp(s, list[i]) == 0) return 1;
  return 0;
}

int cg_is_reserved_word(const char *s) {
  return in_list(s, reserved_words,
                 sizeof(reserved_words) / sizeof(reserved_words[0]));
}

char *cg_method_c_name(const char *name) {
  int mangle = cg_is_reserved_word(name) ||
               in_list(name, service_words,
                       sizeof(service_words) / sizeof(service_words[0]));
  return cg_strdup_printf("%s%s", name, mangle ? "_" : "");
}

char *cg_file_ident(const char *file_name) {
  cg_buf b;
  cg_buf_init(&b);
  for (const unsigned char *p = (const unsigned char *)file_name; *p; p++) {
    if (isalnum(*p))
      cg_buf_add(&b, (const char *)p, 1);
    else
      cg_buf_printf(&b, "_%02x", *p);
  }
  return cg_buf_take(&b);
}

char *cg_strip_proto(const char *file_name) {
  static const char *const suffixes[] = {".protodevel", ".proto"};
  size_t len = strlen(file_name);
  for (size_t i = 0; i < 2; i++) {
    size_t n = strlen(suffixes[i]);
    if (len > n && strcmp(file_name + len - n, suffixes[i]) == 0)
      return strndup(file_name, len - n);
  }
  return strdup(file_name);
}
