/*
 * Naming rules of the generator: the C names protoc-c gives to message
 * types (mirrored exactly, since generated stubs refer to them), qrpc's own
 * C prefixes, keyword mangling, and method ids (docs/protocol.md section
 * 5). Every function returning char * returns a new string (free it) or
 * NULL when out of memory.
 */
#ifndef CG_NAMES_H
#define CG_NAMES_H

#include <stddef.h>
#include <stdint.h>

/* The method id of full_name ("package.Service/Method"): 32-bit FNV-1a
 * with the top two bits cleared. */
uint32_t cg_method_id_hash(const char *full_name);

/* protoc-c's C type name of a message or enum: each dot-separated piece of
 * the full name in UpperCamel form (underscores dropped, the letter after
 * each made upper case), joined with "__": "p.q.Outer.in_ner" ->
 * "P__Q__Outer__InNer". */
char *cg_protoc_c_type(const char *full_name);

/* protoc-c's lower-case prefix of a message's functions and descriptor:
 * each piece with an underscore before every upper-case letter that follows
 * a lower-case one, then lowered, joined with "__": "p.q.HelloRequest" ->
 * "p__q__hello_request". */
char *cg_protoc_c_lower(const char *full_name);

/* qrpc's C prefix of a package: dots become underscores ("p.q" -> "p_q");
 * the empty package gives "". */
char *cg_package_prefix(const char *package);

/* 1 if s is a C (C11 or C23) or C++ keyword, or a name the standard C
 * headers included by generated code define as an object-like macro
 * (NULL, EOF, ...), so it cannot be used alone as an identifier. */
int cg_is_reserved_word(const char *s);

/* The C spelling of a method name: the name itself, with "_" appended when
 * it is a reserved word (cg_is_reserved_word) or one of the names the
 * generator uses for service-wide symbols (handlers, register,
 * register_client, user_data). */
char *cg_method_c_name(const char *name);

/* An identifier made from a file name: letters and digits kept, any other
 * byte written as '_' and two hex digits ("a/b-c.proto" ->
 * "a_2fb_2dc_2eproto"), as protoc-c does for its include guards. */
char *cg_file_ident(const char *file_name);

/* The file name without its ".proto" (or ".protodevel") suffix. */
char *cg_strip_proto(const char *file_name);

#endif
