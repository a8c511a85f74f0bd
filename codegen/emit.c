#include "emit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "names.h"

/* ---- Declared identifiers ------------------------------------------------ */

static void decl(cg_decls *d, const char *name, const char *suffix,
                 const char *owner) {
  if (d->failed) return;
  if (d->n == d->cap) {
    size_t cap = d->cap ? d->cap * 2 : 128;
    cg_decl *v = realloc(d->v, cap * sizeof(*v));
    if (v == NULL) {
      d->failed = 1;
      return;
    }
    d->v = v;
    d->cap = cap;
  }
  cg_decl *x = &d->v[d->n];
  x->name = cg_strdup_printf("%s%s", name, suffix);
  x->owner = strdup(owner);
  if (x->name == NULL || x->owner == NULL) {
    free(x->name);
    free(x->owner);
    d->failed = 1;
    return;
  }
  d->n++;
}

void cg_decls_free(cg_decls *d) {
  for (size_t i = 0; i < d->n; i++) {
    free(d->v[i].name);
    free(d->v[i].owner);
  }
  free(d->v);
  memset(d, 0, sizeof(*d));
}

static int cmp_decl(const void *a, const void *b) {
  const cg_decl *x = a, *y = b;
  return strcmp(x->name, y->name);
}

int cg_decls_check(cg_decls *d, cg_buf *errors) {
  if (d->failed) {
    errors->failed = 1;
    return -1;
  }
  if (d->n < 2) return 0;
  qsort(d->v, d->n, sizeof(*d->v), cmp_decl);
  int rc = 0;
  for (size_t i = 1; i < d->n; i++) {
    if (strcmp(d->v[i - 1].name, d->v[i].name) != 0) continue;
    cg_buf_printf(errors,
                  "the generated C name %s is needed both for %s and for %s; "
                  "rename one of them\n",
                  d->v[i].name, d->v[i - 1].owner, d->v[i].owner);
    rc = -1;
  }
  return rc;
}

/* Identifiers declared per method, by kind: suffixes of the method's
 * prefix. They must list exactly what the templates below declare. */
static const char *const ids_all[] = {"_METHOD_ID", "_METHOD_NAME", NULL};
static const char *const ids_unary[] = {
    "_FLAGS",   "",      "_peer",     "_sync",   "_reply",  "_error",
    "_done_fn", "__ctx", "__on_done", "__start", "__serve", NULL};
static const char *const ids_server_stream[] = {
    "_FLAGS",  "",        "_peer", "_callbacks", "_item",
    "_end",    "_error",  "__ctx", "__on_item",  "__on_done",
    "__start", "__serve", NULL};
static const char *const ids_client_stream[] = {
    "_FLAGS",        "",        "_peer",   "_callbacks",   "_send",
    "_handlers",     "_reply",  "_error",  "__ctx",        "__on_done",
    "__on_writable", "__start", "__serve", "__serve_item", NULL};
static const char *const ids_bidi_stream[] = {
    "_FLAGS",       "",          "_peer",         "_callbacks", "_send",
    "_handlers",    "_item",     "_end",          "_error",     "__ctx",
    "__on_item",    "__on_done", "__on_writable", "__start",    "__serve",
    "__serve_item", NULL};
static const char *const ids_notify[] = {"_FLAGS", "", "_peer", "__serve",
                                         NULL};
static const char *const ids_datagram[] = {"_LATEST_ONLY",
                                           "_MAX_AGE_MS",
                                           "_MAX_MESSAGE",
                                           "_SNAPSHOT_RING",
                                           "_SNAPSHOT_ENTITIES",
                                           "_SNAPSHOT_KEY",
                                           "_send",
                                           "_encode",
                                           "__recv",
                                           NULL};
/* A snapshot channel sends only from a server's snapshots, so it has no
 * _send or _encode. */
static const char *const ids_snapshot[] = {"_LATEST_ONLY",
                                           "_MAX_AGE_MS",
                                           "_MAX_MESSAGE",
                                           "_SNAPSHOT_RING",
                                           "_SNAPSHOT_ENTITIES",
                                           "_SNAPSHOT_KEY",
                                           "_snapshot_new",
                                           "__recv",
                                           NULL};
static const char *const ids_service[] = {"_handlers",
                                          "_register",
                                          "_register_client",
                                          "_register_with",
                                          "_register_client_with",
                                          "__register_all",
                                          "__register_copy",
                                          NULL};
static const char *const *method_ids(const cg_method *me) {
  switch (me->kind) {
  case CG_UNARY: return ids_unary;
  case CG_SERVER_STREAM: return ids_server_stream;
  case CG_CLIENT_STREAM: return ids_client_stream;
  case CG_BIDI_STREAM: return ids_bidi_stream;
  case CG_NOTIFY: return ids_notify;
  case CG_DATAGRAM: return me->snapshot_ring ? ids_snapshot : ids_datagram;
  }
  return NULL;
}

static void decl_list(cg_decls *d, const char *prefix,
                      const char *const *suffixes, const char *owner) {
  for (size_t i = 0; suffixes != NULL && suffixes[i] != NULL; i++)
    decl(d, prefix, suffixes[i], owner);
}

/* ---- What a file needs --------------------------------------------------- */

/* 1 if f has a method, and so stubs that need the runtime. */
static int has_methods(const cg_file *f) {
  for (size_t i = 0; i < f->n_services; i++)
    if (f->services[i].n_methods > 0) return 1;
  return 0;
}

/* ---- Header -------------------------------------------------------------- */

static const char h_top[] =
    "/*\n"
    " * Generated by protoc-gen-qrpc from $FILE$. Do not edit.\n"
    " *\n"
    " * Typed qrpc stubs for the services of $FILE$ (qrpc's docs/codegen.md\n"
    " * has the whole story). The message types are protoc-c's.\n"
    " *\n"
    " * Per method M of service S in package p.q, every name starts with\n"
    " * p_q_S_M (M gets a trailing '_' if it is a C or C++ keyword, a\n"
    " * standard macro, or handlers, register, register_client, user_data):\n"
    " * - _METHOD_ID, _METHOD_NAME: its id (docs/protocol.md section 5) and\n"
    " *   \"p.q.S/M\"; _FLAGS (not for datagram methods): its QRPC_METHOD_*\n"
    " *   flags, QRPC_METHOD_IDEMPOTENT when its idempotency_level is\n"
    " *   IDEMPOTENT or NO_SIDE_EFFECTS (calls may then go out in 0-RTT, and\n"
    " *   servers run them when they arrive there).\n"
    " * - Callers: p_q_S_M() on a qrpc_client and p_q_S_M_peer() on a\n"
    " *   qrpc_peer (a server calling its client) start a call; unary methods\n"
    " *   also have p_q_S_M_sync(), client and bidi streaming ones\n"
    " *   p_q_S_M_send() for items (end with qrpc_call_end()).\n"
    " * - Servers: a p_q_S_handlers struct registered with p_q_S_register()\n"
    " *   (or p_q_S_register_client() on a client); handlers answer with\n"
    " *   p_q_S_M_reply(), p_q_S_M_item(), p_q_S_M_end(), p_q_S_M_error().\n"
    " * - Datagram methods: the id is the channel (qrpc/dgram.h);\n"
    " *   p_q_S_M_send() sends on a qrpc_peer, p_q_S_M_encode() encodes once\n"
    " *   for qrpc_peer_send_encoded() to many peers, and a member of\n"
    " *   p_q_S_handlers receives, on either side.\n"
    " * - Snapshot channels ((qrpc.snapshot_ring)): only a server sends,\n"
    " *   with p_q_S_M_snapshot_new() and qrpc_peer_send_snapshot(); the\n"
    " *   member gets each tick's whole state, seq being the tick.\n"
    " *\n"
    " * Rules:\n"
    " * - Functions return 0 or a negative QRPC_E* code like the qrpc_*\n"
    " *   functions they wrap; QRPC_EINVAL also for a NULL handle, or a NULL\n"
    " *   message or one of another type (nothing is then sent or answered).\n"
    " * - Messages passed in are borrowed: they are packed before the\n"
    " *   function returns.\n"
    " * - Messages passed to callbacks and handlers are decoded with\n"
    " *   protobuf-c's default allocator and borrowed until the callback\n"
    " *   returns; the generated code frees them. Only the reply of a _sync\n"
    " *   call is the caller's, to free with\n"
    " *   protobuf_c_message_free_unpacked(&reply->base, NULL).\n"
    " * - Each call's on_done (done) fires exactly once, as for the qrpc_*\n"
    " *   calls. A reply or item that does not decode ends the call with\n"
    " *   QRPC_STATUS_INTERNAL (local); a request that does not decode is\n"
    " *   answered with QRPC_STATUS_INVALID_ARGUMENT and reaches no handler.\n"
    " *   A datagram that does not decode is dropped, counted in its\n"
    " *   channel's dropped_undecodable, and reaches no handler.\n"
    " * - qrpc_call_user_data() of these calls, and qrpc_req_user_data() of\n"
    " *   client and bidi streaming requests, belong to the stubs: use the\n"
    " *   user_data the callbacks receive.\n"
    " */\n"
    "#ifndef QRPC_GEN_$IDENT$_INCLUDED\n"
    "#define QRPC_GEN_$IDENT$_INCLUDED\n"
    "\n"
    "#include <stddef.h>\n"
    "#include <stdint.h>\n"
    "\n"
    "#include <protobuf-c/protobuf-c.h>\n"
    "#include <qrpc/dgram.h>\n"
    "#include <qrpc/error.h>\n"
    "#include <qrpc/rpc.h>\n"
    "\n";

static const char h_cplusplus_open[] = "\n"
                                       "#ifdef __cplusplus\n"
                                       "extern \"C\" {\n"
                                       "#endif\n";

static const char h_bottom[] = "\n"
                               "#ifdef __cplusplus\n"
                               "}\n"
                               "#endif\n"
                               "\n"
                               "#endif /* QRPC_GEN_$IDENT$_INCLUDED */\n";

static const char h_service_top[] = "\n"
                                    "/* ==== service $SFULL$ ==== */\n";

static const char h_method_ids[] = "\n"
                                   "/* ---- $FULL$: $KIND$ ---- */\n"
                                   "\n"
                                   "#define $PM$_METHOD_ID $ID$u$PINNED$\n"
                                   "#define $PM$_METHOD_NAME \"$FULL$\"\n";

static const char h_method_flags[] = "#define $PM$_FLAGS $FLAGS$\n";

static const char h_unary[] =
    "\n"
    "/* The end of a call: reply is the decoded reply if res->status is\n"
    " * QRPC_STATUS_OK, else NULL. */\n"
    "typedef void (*$PM$_done_fn)(qrpc_call *call, const $OUT$ *reply,\n"
    "    const qrpc_result *res, void *user_data);\n"
    "\n"
    "/* Starts a call. done may be NULL; *out (out may be NULL) is the call,\n"
    " * valid until done returns. */\n"
    "int $PM$(qrpc_client *cli, const $IN$ *request,\n"
    "    const qrpc_call_opts *opts, $PM$_done_fn done, void *user_data,\n"
    "    qrpc_call **out);\n"
    "int $PM$_peer(qrpc_peer *peer, const $IN$ *request,\n"
    "    const qrpc_call_opts *opts, $PM$_done_fn done, void *user_data,\n"
    "    qrpc_call **out);\n"
    "\n"
    "/* Calls and runs loop until the call is over: at most timeout_ms (0:\n"
    " * the client's default, if any) and a second. Not from a callback of\n"
    " * loop. Returns 0 when the call ran, with *status its QRPC_STATUS_* and\n"
    " * *reply (the caller's) set if that is OK, else NULL; a negative\n"
    " * QRPC_E* code when it could not run (*status QRPC_STATUS_UNKNOWN).\n"
    " * reply and status may be NULL. */\n"
    "int $PM$_sync(qrpc_loop *loop, qrpc_client *cli,\n"
    "    const $IN$ *request, uint64_t timeout_ms, $OUT$ **reply,\n"
    "    int *status);\n"
    "\n"
    "/* Answers req (released then), or fails it (status > 0, detail may be\n"
    " * NULL). */\n"
    "int $PM$_reply(qrpc_req *req, const $OUT$ *reply);\n"
    "int $PM$_error(qrpc_req *req, int status, const char *detail);\n";

static const char h_server_stream[] =
    "\n"
    "/* on_item for each item, then on_done once; either may be NULL. */\n"
    "typedef struct $PM$_callbacks {\n"
    "  void (*on_item)(qrpc_call *call, const $OUT$ *item, void *user_data);\n"
    "  void (*on_done)(qrpc_call *call, const qrpc_result *res,\n"
    "      void *user_data);\n"
    "} $PM$_callbacks;\n"
    "\n"
    "/* Starts a call. cbs is copied; *out (out may be NULL) is the call,\n"
    " * valid until on_done returns. */\n"
    "int $PM$(qrpc_client *cli, const $IN$ *request,\n"
    "    const qrpc_call_opts *opts, const $PM$_callbacks *cbs,\n"
    "    void *user_data, qrpc_call **out);\n"
    "int $PM$_peer(qrpc_peer *peer, const $IN$ *request,\n"
    "    const qrpc_call_opts *opts, const $PM$_callbacks *cbs,\n"
    "    void *user_data, qrpc_call **out);\n"
    "\n"
    "/* Sends an item (as qrpc_req_send(): after QRPC_EAGAIN wait for\n"
    " * on_writable, set with qrpc_req_set_callbacks()), ends the call, or\n"
    " * fails it (status > 0). */\n"
    "int $PM$_item(qrpc_req *req, const $OUT$ *item);\n"
    "int $PM$_end(qrpc_req *req);\n"
    "int $PM$_error(qrpc_req *req, int status, const char *detail);\n";

static const char h_client_stream[] =
    "\n"
    "/* on_writable after $PM$_send() returned QRPC_EAGAIN; on_done once,\n"
    " * with the decoded reply if res->status is QRPC_STATUS_OK, else NULL.\n"
    " * Either may be NULL. */\n"
    "typedef struct $PM$_callbacks {\n"
    "  void (*on_done)(qrpc_call *call, const $OUT$ *reply,\n"
    "      const qrpc_result *res, void *user_data);\n"
    "  void (*on_writable)(qrpc_call *call, void *user_data);\n"
    "} $PM$_callbacks;\n"
    "\n"
    "/* Starts a call. cbs is copied; *out (required) is the call, valid\n"
    " * until on_done returns. */\n"
    "int $PM$(qrpc_client *cli, const qrpc_call_opts *opts,\n"
    "    const $PM$_callbacks *cbs, void *user_data, qrpc_call **out);\n"
    "int $PM$_peer(qrpc_peer *peer, const qrpc_call_opts *opts,\n"
    "    const $PM$_callbacks *cbs, void *user_data, qrpc_call **out);\n"
    "\n"
    "/* Sends an item, as qrpc_call_send(). */\n"
    "int $PM$_send(qrpc_call *call, const $IN$ *item);\n";

static const char h_bidi_stream[] =
    "\n"
    "/* on_item for each item, on_writable after $PM$_send() returned\n"
    " * QRPC_EAGAIN, on_done once. Any may be NULL. */\n"
    "typedef struct $PM$_callbacks {\n"
    "  void (*on_item)(qrpc_call *call, const $OUT$ *item, void *user_data);\n"
    "  void (*on_done)(qrpc_call *call, const qrpc_result *res,\n"
    "      void *user_data);\n"
    "  void (*on_writable)(qrpc_call *call, void *user_data);\n"
    "} $PM$_callbacks;\n"
    "\n"
    "/* Starts a call. cbs is copied; *out (required) is the call, valid\n"
    " * until on_done returns. */\n"
    "int $PM$(qrpc_client *cli, const qrpc_call_opts *opts,\n"
    "    const $PM$_callbacks *cbs, void *user_data, qrpc_call **out);\n"
    "int $PM$_peer(qrpc_peer *peer, const qrpc_call_opts *opts,\n"
    "    const $PM$_callbacks *cbs, void *user_data, qrpc_call **out);\n"
    "\n"
    "/* Sends an item, as qrpc_call_send(). */\n"
    "int $PM$_send(qrpc_call *call, const $IN$ *item);\n";

/* The server side of client and bidi streaming methods. */
static const char h_stream_handlers[] =
    "\n"
    "/* Serving one call, all optional: on_start returns the user_data of\n"
    " * the call's later callbacks (without it: the service's); on_item gets\n"
    " * each item, on_end the caller's end; on_cancel says the call is gone\n"
    " * unanswered (CANCELLED, DEADLINE_EXCEEDED, UNAVAILABLE, or\n"
    " * INVALID_ARGUMENT for an item that did not decode, the call then\n"
    " * failed with it) and req is invalid after it. Answer only with the\n"
    " * functions below: qrpc_req_set_callbacks() or untyped answers would\n"
    " * leak the call's state. */\n"
    "typedef struct $PM$_handlers {\n"
    "  void *(*on_start)(qrpc_req *req, void *user_data);\n"
    "  void (*on_item)(qrpc_req *req, const $IN$ *item, void *user_data);\n"
    "  void (*on_end)(qrpc_req *req, void *user_data);\n"
    "  void (*on_cancel)(qrpc_req *req, int status, void *user_data);\n"
    "$WRITABLE$"
    "} $PM$_handlers;\n";

static const char h_client_stream_answer[] =
    "\n"
    "/* Answers req (released then), or fails it (status > 0). */\n"
    "int $PM$_reply(qrpc_req *req, const $OUT$ *reply);\n"
    "int $PM$_error(qrpc_req *req, int status, const char *detail);\n";

static const char h_bidi_stream_answer[] =
    "\n"
    "/* Sends an item (as qrpc_req_send(): after QRPC_EAGAIN wait for\n"
    " * on_writable), ends the server's side (req lives on until the\n"
    " * caller's end), or fails the call (status > 0; req released). */\n"
    "int $PM$_item(qrpc_req *req, const $OUT$ *item);\n"
    "int $PM$_end(qrpc_req *req);\n"
    "int $PM$_error(qrpc_req *req, int status, const char *detail);\n";

static const char h_notify[] =
    "\n"
    "/* Sends the one-way message (qrpc_client_notify()); nothing answers\n"
    " * it. */\n"
    "int $PM$(qrpc_client *cli, const $IN$ *request);\n"
    "int $PM$_peer(qrpc_peer *peer, const $IN$ *request);\n";

static const char h_datagram_opts[] =
    "\n"
    "/* The channel's options from the IDL, which $S$_register() and\n"
    " * $S$_register_client() apply (qrpc_dgram_opts): (qrpc.latest_only);\n"
    " * (qrpc.max_age_ms), 0: no limit; (qrpc.max_message_bytes), 0: one\n"
    " * datagram per message (64 KiB on a snapshot channel);\n"
    " * (qrpc.snapshot_ring), 0: not a snapshot channel; and the field\n"
    " * numbers (qrpc.snapshot_key) names, 0 if unset. */\n"
    "#define $PM$_LATEST_ONLY $LATEST_ONLY$\n"
    "#define $PM$_MAX_AGE_MS $MAX_AGE_MS$u\n"
    "#define $PM$_MAX_MESSAGE $MAX_MESSAGE$u\n"
    "#define $PM$_SNAPSHOT_RING $SNAPSHOT_RING$u\n"
    "#define $PM$_SNAPSHOT_ENTITIES $SNAPSHOT_ENTITIES$u\n"
    "#define $PM$_SNAPSHOT_KEY $SNAPSHOT_KEY$u\n";

static const char h_datagram[] =
    "\n"
    "/* Sends msg on the channel to peer, packed straight into its\n"
    " * datagram, or into its fragments on a fragmented channel\n"
    " * (qrpc_peer_send_dgram_msg()). Errors: QRPC_EMSGSIZE (larger than\n"
    " * qrpc_peer_max_dgram_payload()), QRPC_ENOBUFS\n"
    " * (the connection's datagram queue is full), QRPC_ENODGRAM (the peer\n"
    " * did not enable datagrams), QRPC_ECLOSED, QRPC_EINVAL, QRPC_ENOMEM. */\n"
    "int $PM$_send(qrpc_peer *peer, const $IN$ *msg);\n"
    "\n"
    "/* Encodes msg once, with srv's next Seq on the channel, for\n"
    " * qrpc_peer_send_encoded() to any number of peers; *out is the\n"
    " * caller's, to free with qrpc_dgram_free(). Errors: QRPC_EINVAL,\n"
    " * QRPC_ENOMEM. */\n"
    "int $PM$_encode(qrpc_server *srv, const $IN$ *msg, qrpc_dgram **out);\n";

static const char h_snapshot[] =
    "\n"
    "/* Makes msg (packed before this returns) srv's state at tick on the\n"
    " * snapshot channel (qrpc_server_snapshot_new_msg()): ticks increase\n"
    " * from call to call. Send *out to each peer with\n"
    " * qrpc_peer_send_snapshot(), which sends what that peer lacks, then\n"
    " * free it with qrpc_snapshot_free() (before srv). Errors: QRPC_EINVAL\n"
    " * (also tick 0 or not above the last), QRPC_EMSGSIZE (over\n"
    " * $PM$_MAX_MESSAGE, or 64 KiB when that is 0), QRPC_ENOMEM. */\n"
    "int $PM$_snapshot_new(qrpc_server *srv, uint64_t tick, const $IN$ *msg,\n"
    "    qrpc_snapshot **out);\n";

static const char h_handlers_top[] =
    "\n"
    "/* ---- Serving $SFULL$ ---- */\n"
    "\n"
    "/* Methods left NULL are not registered (callers get\n"
    " * QRPC_STATUS_UNIMPLEMENTED). Unary, server streaming and notify\n"
    " * handlers get the decoded request, borrowed until they return, and\n"
    " * answer then or later (one that keeps req sets on_cancel with\n"
    " * qrpc_req_set_callbacks()); notify handlers answer nothing, and req\n"
    " * lives only while they run. Datagram channels are always registered,\n"
    " * with their IDL options: a datagram member gets each datagram that\n"
    " * arrives on the channel (seq is its Seq, or on a snapshot channel the\n"
    " * tick of the whole state msg is; msg is borrowed until it returns),\n"
    " * and one left NULL makes the channel send-only here. */\n"
    "typedef struct $S$_handlers {\n"
    "  void *user_data; /* passed to every handler */\n";

static const char h_member_plain[] =
    "  void (*$M$)(qrpc_req *req, const $IN$ *request, void *user_data);\n";
static const char h_member_stream[] = "  $PM$_handlers $M$;\n";
static const char h_member_dgram[] =
    "  void (*$M$)(qrpc_peer *peer, uint64_t seq, const $IN$ *msg,\n"
    "      void *user_data);\n";

static const char h_handlers_bottom[] =
    "} $S$_handlers;\n"
    "\n"
    "/* Registers the methods set in h, and every datagram channel, on srv,\n"
    " * or on cli for its server to call. h is copied (srv or cli keeps the\n"
    " * copy until it is freed), so it may be a temporary, and later changes\n"
    " * to it do not apply. Registering again replaces. Errors: QRPC_EINVAL,\n"
    " * QRPC_ENOMEM (some methods may then be registered). */\n"
    "int $S$_register(qrpc_server *srv, const $S$_handlers *h);\n"
    "int $S$_register_client(qrpc_client *cli, const $S$_handlers *h);\n"
    "\n"
    "/* As $S$_register() and $S$_register_client(), with user_data passed\n"
    " * to the handlers instead of h->user_data: one static const handlers\n"
    " * table serves any number of servers and clients, each with its own\n"
    " * user_data. Errors: as $S$_register(). */\n"
    "int $S$_register_with(qrpc_server *srv, const $S$_handlers *h,\n"
    "    void *user_data);\n"
    "int $S$_register_client_with(qrpc_client *cli, const $S$_handlers *h,\n"
    "    void *user_data);\n";

/* ---- Source: the file ---------------------------------------------------- */

static const char c_top[] =
    "/* Generated by protoc-gen-qrpc from $FILE$. Do not edit. */\n"
    "#include \"$BASE$.qrpc.h\"\n";

/* What the stubs share is library code: qrpc/stub.h. */
static const char c_includes[] = "\n"
                                 "#include <stdlib.h>\n"
                                 "\n"
                                 "#include <qrpc/stub.h>\n";

static const char c_no_stubs[] =
    "\n"
    "/* Nothing to generate for $FILE$: a declaration keeps the\n"
    " * translation unit non-empty. */\n"
    "typedef int qrpcg_$IDENT$_is_empty;\n";

/* ---- Source: per method -------------------------------------------------- */

static const char c_method_top[] = "\n"
                                   "/* ---- $FULL$: $KIND$ ---- */\n";

/* Client side of unary calls. */
static const char c_unary_call[] =
    "\n"
    "struct $PM$__ctx {\n"
    "  $PM$_done_fn done;\n"
    "  void *user_data;\n"
    "};\n"
    "\n"
    "static void $PM$__on_done(qrpc_call *call, const qrpc_result *res,\n"
    "    void *user_data) {\n"
    "  struct $PM$__ctx *ctx = user_data;\n"
    "  qrpc_result r = *res;\n"
    "  ProtobufCMessage *reply;\n"
    "  (void)qrpc_stub_result_reply(&r, &$OUT_DESC$,\n"
    "      \"the reply does not decode as $OUT_FULL$\", &reply);\n"
    "  if (ctx->done != NULL)\n"
    "    ctx->done(call, (const $OUT$ *)reply, &r, ctx->user_data);\n"
    "  qrpc_stub_free(reply);\n"
    "  free(ctx);\n"
    "}\n"
    "\n"
    "static int $PM$__start(qrpc_client *cli, qrpc_peer *peer,\n"
    "    const $IN$ *request, const qrpc_call_opts *opts,\n"
    "    $PM$_done_fn done, void *user_data, qrpc_call **out) {\n"
    "  static const qrpc_call_callbacks cbs = {$PM$__on_done, NULL, NULL};\n"
    "  struct $PM$__ctx *ctx;\n"
    "  qrpc_msg m;\n"
    "  int rc = qrpc_stub_msg(&m, (const ProtobufCMessage *)request,\n"
    "                         &$IN_DESC$);\n"
    "  if (rc != 0) return rc;\n"
    "  ctx = malloc(sizeof(*ctx));\n"
    "  if (ctx == NULL) return QRPC_ENOMEM;\n"
    "  ctx->done = done;\n"
    "  ctx->user_data = user_data;\n"
    "  rc = qrpc_stub_call_start(cli, peer, $PM$_METHOD_ID, QRPC_SHAPE_UNARY,\n"
    "                            $PM$_FLAGS, &m, opts, &cbs, ctx, out);\n"
    "  if (rc != 0) free(ctx);\n"
    "  return rc;\n"
    "}\n"
    "\n"
    "int $PM$(qrpc_client *cli, const $IN$ *request,\n"
    "    const qrpc_call_opts *opts, $PM$_done_fn done, void *user_data,\n"
    "    qrpc_call **out) {\n"
    "  if (cli == NULL) return QRPC_EINVAL;\n"
    "  return $PM$__start(cli, NULL, request, opts, done, user_data, out);\n"
    "}\n"
    "\n"
    "int $PM$_peer(qrpc_peer *peer, const $IN$ *request,\n"
    "    const qrpc_call_opts *opts, $PM$_done_fn done, void *user_data,\n"
    "    qrpc_call **out) {\n"
    "  if (peer == NULL) return QRPC_EINVAL;\n"
    "  return $PM$__start(NULL, peer, request, opts, done, user_data, out);\n"
    "}\n"
    "\n"
    "int $PM$_sync(qrpc_loop *loop, qrpc_client *cli,\n"
    "    const $IN$ *request, uint64_t timeout_ms, $OUT$ **reply,\n"
    "    int *status) {\n"
    "  ProtobufCMessage *msg = NULL;\n"
    "  int rc = qrpc_stub_call_sync(loop, cli, $PM$_METHOD_ID, $PM$_FLAGS,\n"
    "      (const ProtobufCMessage *)request, &$IN_DESC$, &$OUT_DESC$,\n"
    "      timeout_ms, reply != NULL ? &msg : NULL, status);\n"
    "  if (reply != NULL) *reply = ($OUT$ *)msg;\n"
    "  return rc;\n"
    "}\n";

/* The handler of unary, server streaming and notify methods. */
static const char c_serve_plain[] =
    "\n"
    "static void $PM$__serve(qrpc_req *req, const uint8_t *payload,\n"
    "    size_t len, void *user_data) {\n"
    "  const $S$_handlers *h = user_data;\n"
    "$NOTIFY_FLAG$"
    "  ProtobufCMessage *request;\n"
    "  if (qrpc_stub_unpack(&$IN_DESC$, payload, len, &request) != 0) {\n"
    "    (void)qrpc_stub_refuse(req,\n"
    "        \"the request does not decode as $IN_FULL$\");\n"
    "    return;\n"
    "  }\n"
    "  h->$M$(req, (const $IN$ *)request, h->user_data);\n"
    "  qrpc_stub_free(request);\n"
    "$NOTIFY_ACK$"
    "}\n";

static const char c_notify_flag[] =
    "  /* Read first: a handler may answer a REQUEST by mistake. */\n"
    "  int notify = qrpc_req_is_notify(req);\n";
static const char c_notify_ack[] =
    "  /* Called as a unary method instead: acknowledge with an empty\n"
    "   * reply. */\n"
    "  if (!notify) qrpc_req_reply(req, NULL, 0);\n";

static const char c_reply_plain[] =
    "\n"
    "int $PM$_reply(qrpc_req *req, const $OUT$ *reply) {\n"
    "  qrpc_msg m;\n"
    "  int rc = qrpc_stub_msg(&m, (const ProtobufCMessage *)reply,\n"
    "                         &$OUT_DESC$);\n"
    "  if (rc != 0) return rc;\n"
    "  if (req == NULL) return QRPC_EINVAL;\n"
    "  return qrpc_req_reply_msg(req, &m);\n"
    "}\n"
    "\n"
    "int $PM$_error(qrpc_req *req, int status, const char *detail) {\n"
    "  return qrpc_req_error(req, status, detail);\n"
    "}\n";

static const char c_item[] =
    "\n"
    "int $PM$_item(qrpc_req *req, const $OUT$ *item) {\n"
    "  qrpc_msg m;\n"
    "  int rc = qrpc_stub_msg(&m, (const ProtobufCMessage *)item,\n"
    "                         &$OUT_DESC$);\n"
    "  if (rc != 0) return rc;\n"
    "  if (req == NULL) return QRPC_EINVAL;\n"
    "  return qrpc_req_send_msg(req, &m);\n"
    "}\n";

static const char c_server_stream_end[] =
    "\n"
    "int $PM$_end(qrpc_req *req) { return qrpc_req_end(req); }\n"
    "\n"
    "int $PM$_error(qrpc_req *req, int status, const char *detail) {\n"
    "  return qrpc_req_error(req, status, detail);\n"
    "}\n";

/* Client side of calls whose callee streams items back (server streaming
 * and bidi). */
static const char c_items_in[] =
    "\n"
    "static void $PM$__on_item(qrpc_call *call, const uint8_t *data,\n"
    "    size_t len, void *user_data) {\n"
    "  struct $PM$__ctx *ctx = user_data;\n"
    "  ProtobufCMessage *item;\n"
    "  if (ctx->bad != NULL) return;\n"
    "  if (qrpc_stub_unpack(&$OUT_DESC$, data, len, &item) != 0) {\n"
    "    ctx->bad = \"an item does not decode as $OUT_FULL$\";\n"
    "    qrpc_call_cancel(call);\n"
    "    return;\n"
    "  }\n"
    "  if (ctx->cbs.on_item != NULL)\n"
    "    ctx->cbs.on_item(call, (const $OUT$ *)item, ctx->user_data);\n"
    "  qrpc_stub_free(item);\n"
    "}\n"
    "\n"
    "static void $PM$__on_done(qrpc_call *call, const qrpc_result *res,\n"
    "    void *user_data) {\n"
    "  struct $PM$__ctx *ctx = user_data;\n"
    "  qrpc_result r = *res;\n"
    "  if (ctx->bad != NULL) qrpc_stub_result_fail(&r, ctx->bad);\n"
    "  if (ctx->cbs.on_done != NULL) ctx->cbs.on_done(call, &r, "
    "ctx->user_data);\n"
    "  free(ctx);\n"
    "}\n";

/* Client side of client streaming calls: the decoded reply. */
static const char c_reply_in[] =
    "\n"
    "static void $PM$__on_done(qrpc_call *call, const qrpc_result *res,\n"
    "    void *user_data) {\n"
    "  struct $PM$__ctx *ctx = user_data;\n"
    "  qrpc_result r = *res;\n"
    "  ProtobufCMessage *reply;\n"
    "  (void)qrpc_stub_result_reply(&r, &$OUT_DESC$,\n"
    "      \"the reply does not decode as $OUT_FULL$\", &reply);\n"
    "  if (ctx->cbs.on_done != NULL)\n"
    "    ctx->cbs.on_done(call, (const $OUT$ *)reply, &r, ctx->user_data);\n"
    "  qrpc_stub_free(reply);\n"
    "  free(ctx);\n"
    "}\n";

static const char c_writable[] =
    "\n"
    "static void $PM$__on_writable(qrpc_call *call, void *user_data) {\n"
    "  struct $PM$__ctx *ctx = user_data;\n"
    "  if (ctx->cbs.on_writable != NULL)\n"
    "    ctx->cbs.on_writable(call, ctx->user_data);\n"
    "}\n";

static const char c_stream_ctx[] =
    "\n"
    "struct $PM$__ctx {\n"
    "  $PM$_callbacks cbs;\n"
    "  void *user_data;\n"
    "  const char *bad; /* why an item was refused; the call is cancelled */\n"
    "};\n";

/* Starting a streaming call; REQ_PARAM, REQ_ARG and MSG differ between
 * server streaming (a request) and the others (items later). */
static const char c_stream_start[] =
    "\n"
    "static int $PM$__start(qrpc_client *cli, qrpc_peer *peer,\n"
    "    $REQ_PARAM$const qrpc_call_opts *opts, const $PM$_callbacks *cbs,\n"
    "    void *user_data, qrpc_call **out) {\n"
    "  static const qrpc_call_callbacks ccbs = {$CCBS$};\n"
    "  struct $PM$__ctx *ctx;\n"
    "$MSG_DECL$"
    "  int rc;\n"
    "  if (cbs == NULL$OUT_CHECK$) return QRPC_EINVAL;\n"
    "$MSG_FILL$"
    "  ctx = calloc(1, sizeof(*ctx));\n"
    "  if (ctx == NULL) return QRPC_ENOMEM;\n"
    "  ctx->cbs = *cbs;\n"
    "  ctx->user_data = user_data;\n"
    "  rc = qrpc_stub_call_start(cli, peer, $PM$_METHOD_ID, $SHAPE$,\n"
    "                            $PM$_FLAGS, $MSG_ARG$, opts, &ccbs, ctx,\n"
    "                            out);\n"
    "  if (rc != 0) free(ctx);\n"
    "  return rc;\n"
    "}\n"
    "\n"
    "int $PM$(qrpc_client *cli, $REQ_PARAM$const qrpc_call_opts *opts,\n"
    "    const $PM$_callbacks *cbs, void *user_data, qrpc_call **out) {\n"
    "  if (cli == NULL) return QRPC_EINVAL;\n"
    "  return $PM$__start(cli, NULL, $REQ_ARG$opts, cbs, user_data, out);\n"
    "}\n"
    "\n"
    "int $PM$_peer(qrpc_peer *peer, $REQ_PARAM$const qrpc_call_opts *opts,\n"
    "    const $PM$_callbacks *cbs, void *user_data, qrpc_call **out) {\n"
    "  if (peer == NULL) return QRPC_EINVAL;\n"
    "  return $PM$__start(NULL, peer, $REQ_ARG$opts, cbs, user_data, out);\n"
    "}\n";

static const char c_send[] =
    "\n"
    "int $PM$_send(qrpc_call *call, const $IN$ *item) {\n"
    "  qrpc_msg m;\n"
    "  int rc = qrpc_stub_msg(&m, (const ProtobufCMessage *)item,\n"
    "                         &$IN_DESC$);\n"
    "  if (rc != 0) return rc;\n"
    "  if (call == NULL) return QRPC_EINVAL;\n"
    "  return qrpc_call_send_msg(call, &m);\n"
    "}\n";

/* Server side of client and bidi streaming methods: the runtime keeps the
 * call's state and hands each decoded item to __serve_item. */
static const char c_serve_stream[] =
    "\n"
    "static void $PM$__serve_item(qrpc_req *req,\n"
    "    const ProtobufCMessage *item, const void *handlers,\n"
    "    void *user_data) {\n"
    "  const $PM$_handlers *mh = handlers;\n"
    "  if (mh->on_item != NULL)\n"
    "    mh->on_item(req, (const $IN$ *)item, user_data);\n"
    "}\n"
    "\n"
    "static void $PM$__serve(qrpc_req *req, const uint8_t *payload,\n"
    "    size_t len, void *user_data) {\n"
    "  const $S$_handlers *h = user_data;\n"
    "  const qrpc_stub_stream_handlers cbs = {h->$M$.on_start,\n"
    "      h->$M$.on_end, h->$M$.on_cancel, $SERVE_WRITABLE$};\n"
    "  (void)payload;\n"
    "  (void)len;\n"
    "  (void)qrpc_stub_sreq_start(req, &$IN_DESC$,\n"
    "      \"an item does not decode as $IN_FULL$\", $PM$__serve_item,\n"
    "      &h->$M$, &cbs, h->user_data);\n"
    "}\n";

static const char c_client_stream_answer[] =
    "\n"
    "int $PM$_reply(qrpc_req *req, const $OUT$ *reply) {\n"
    "  qrpc_msg m;\n"
    "  int rc = qrpc_stub_msg(&m, (const ProtobufCMessage *)reply,\n"
    "                         &$OUT_DESC$);\n"
    "  if (rc != 0) return rc;\n"
    "  return qrpc_stub_sreq_reply(req, &m);\n"
    "}\n"
    "\n"
    "int $PM$_error(qrpc_req *req, int status, const char *detail) {\n"
    "  return qrpc_stub_sreq_error(req, status, detail);\n"
    "}\n";

static const char c_bidi_stream_answer[] =
    "\n"
    "int $PM$_end(qrpc_req *req) { return qrpc_stub_sreq_end(req); }\n"
    "\n"
    "int $PM$_error(qrpc_req *req, int status, const char *detail) {\n"
    "  return qrpc_stub_sreq_error(req, status, detail);\n"
    "}\n";

static const char c_notify[] =
    "\n"
    "int $PM$(qrpc_client *cli, const $IN$ *request) {\n"
    "  qrpc_msg m;\n"
    "  int rc = qrpc_stub_msg(&m, (const ProtobufCMessage *)request,\n"
    "                         &$IN_DESC$);\n"
    "  if (rc != 0) return rc;\n"
    "  if (cli == NULL) return QRPC_EINVAL;\n"
    "  return qrpc_client_notify_msg(cli, $PM$_METHOD_ID, &m);\n"
    "}\n"
    "\n"
    "int $PM$_peer(qrpc_peer *peer, const $IN$ *request) {\n"
    "  qrpc_msg m;\n"
    "  int rc = qrpc_stub_msg(&m, (const ProtobufCMessage *)request,\n"
    "                         &$IN_DESC$);\n"
    "  if (rc != 0) return rc;\n"
    "  if (peer == NULL) return QRPC_EINVAL;\n"
    "  return qrpc_peer_notify_msg(peer, $PM$_METHOD_ID, &m);\n"
    "}\n";

static const char c_datagram[] =
    "\n"
    "int $PM$_send(qrpc_peer *peer, const $IN$ *msg) {\n"
    "  qrpc_msg m;\n"
    "  int rc = qrpc_stub_msg(&m, (const ProtobufCMessage *)msg,\n"
    "                         &$IN_DESC$);\n"
    "  if (rc != 0) return rc;\n"
    "  if (peer == NULL) return QRPC_EINVAL;\n"
    "  return qrpc_peer_send_dgram_msg(peer, $PM$_METHOD_ID, &m);\n"
    "}\n"
    "\n"
    "int $PM$_encode(qrpc_server *srv, const $IN$ *msg, qrpc_dgram **out) {\n"
    "  qrpc_msg m;\n"
    "  int rc = qrpc_stub_msg(&m, (const ProtobufCMessage *)msg,\n"
    "                         &$IN_DESC$);\n"
    "  if (rc != 0) return rc;\n"
    "  if (srv == NULL || out == NULL) return QRPC_EINVAL;\n"
    "  return qrpc_server_dgram_encode_msg(srv, $PM$_METHOD_ID, &m, out);\n"
    "}\n";

static const char c_snapshot[] =
    "\n"
    "int $PM$_snapshot_new(qrpc_server *srv, uint64_t tick, const $IN$ *msg,\n"
    "    qrpc_snapshot **out) {\n"
    "  qrpc_msg m;\n"
    "  int rc = qrpc_stub_msg(&m, (const ProtobufCMessage *)msg,\n"
    "                         &$IN_DESC$);\n"
    "  if (rc != 0) return rc;\n"
    "  if (srv == NULL || out == NULL) return QRPC_EINVAL;\n"
    "  return qrpc_server_snapshot_new_msg(srv, $PM$_METHOD_ID, tick, &m,\n"
    "                                      out);\n"
    "}\n";

/* The receiving side of every datagram channel: on a snapshot channel seq
 * is the tick and the payload the whole state, so nothing differs. */
static const char c_datagram_recv[] =
    "\n"
    "/* Registered only while the handler is set. */\n"
    "static void $PM$__recv(qrpc_peer *peer, uint32_t channel, uint64_t seq,\n"
    "    const uint8_t *payload, size_t len, void *user_data) {\n"
    "  const $S$_handlers *h = user_data;\n"
    "  ProtobufCMessage *msg;\n"
    "  if (qrpc_stub_unpack(&$IN_DESC$, payload, len, &msg) != 0) {\n"
    "    qrpc_peer_dgram_count_undecodable(peer, channel);\n"
    "    return;\n"
    "  }\n"
    "  h->$M$(peer, seq, (const $IN$ *)msg, h->user_data);\n"
    "  qrpc_stub_free(msg);\n"
    "}\n";

/* ---- Source: per service ------------------------------------------------- */

static const char c_register_top[] =
    "\n"
    "/* ---- Serving $SFULL$ ---- */\n"
    "\n"
    "static int $S$__register_all(qrpc_server *srv, qrpc_client *cli,\n"
    "    const $S$_handlers *h) {\n";
static const char c_register_empty[] = "  (void)srv;\n"
                                       "  (void)cli;\n"
                                       "  (void)h;\n"
                                       "  return 0;\n"
                                       "}\n";
static const char c_register_vars[] = "  int rc;\n";
static const char c_register_plain[] =
    "  if (h->$M$ != NULL &&\n"
    "      (rc = qrpc_stub_register(srv, cli, $PM$_METHOD_ID, $SHAPE$,\n"
    "                               $PM$_FLAGS, $PM$__serve, h)) != 0)\n"
    "    return rc;\n";
static const char c_register_stream[] =
    "  if ((h->$M$.on_start != NULL || h->$M$.on_item != NULL ||\n"
    "       h->$M$.on_end != NULL) &&\n"
    "      (rc = qrpc_stub_register(srv, cli, $PM$_METHOD_ID, $SHAPE$,\n"
    "                               $PM$_FLAGS, $PM$__serve, h)) != 0)\n"
    "    return rc;\n";
static const char c_register_dgram[] =
    "  if ((rc = qrpc_stub_register_dgram_frag(srv, cli, $PM$_METHOD_ID,\n"
    "           $PM$_LATEST_ONLY, $PM$_MAX_AGE_MS, $PM$_MAX_MESSAGE,\n"
    "           h->$M$ != NULL ? $PM$__recv : NULL, h)) != 0)\n"
    "    return rc;\n";
static const char c_register_snapshot[] =
    "  if ((rc = qrpc_stub_register_dgram_snapshot(srv, cli, $PM$_METHOD_ID,\n"
    "           $PM$_LATEST_ONLY, $PM$_MAX_AGE_MS, $PM$_MAX_MESSAGE,\n"
    "           $PM$_SNAPSHOT_RING, $PM$_SNAPSHOT_ENTITIES, "
    "$PM$_SNAPSHOT_KEY,\n"
    "           h->$M$ != NULL ? $PM$__recv : NULL, h)) != 0)\n"
    "    return rc;\n";
static const char c_register_bottom[] = "  return 0;\n"
                                        "}\n";
static const char c_register_public[] =
    "\n"
    "/* Registers a copy of h that srv or cli owns. */\n"
    "static int $S$__register_copy(qrpc_server *srv, qrpc_client *cli,\n"
    "    const $S$_handlers *h, int set_user_data, void *user_data) {\n"
    "  const void *copy = NULL;\n"
    "  int rc = qrpc_stub_handlers_copy(srv, cli, h, sizeof(*h),\n"
    "      offsetof($S$_handlers, user_data), set_user_data, user_data,\n"
    "      &copy);\n"
    "  if (rc != 0) return rc;\n"
    "  return $S$__register_all(srv, cli, (const $S$_handlers *)copy);\n"
    "}\n"
    "\n"
    "int $S$_register(qrpc_server *srv, const $S$_handlers *h) {\n"
    "  if (srv == NULL || h == NULL) return QRPC_EINVAL;\n"
    "  return $S$__register_copy(srv, NULL, h, 0, NULL);\n"
    "}\n"
    "\n"
    "int $S$_register_client(qrpc_client *cli, const $S$_handlers *h) {\n"
    "  if (cli == NULL || h == NULL) return QRPC_EINVAL;\n"
    "  return $S$__register_copy(NULL, cli, h, 0, NULL);\n"
    "}\n"
    "\n"
    "int $S$_register_with(qrpc_server *srv, const $S$_handlers *h,\n"
    "    void *user_data) {\n"
    "  if (srv == NULL || h == NULL) return QRPC_EINVAL;\n"
    "  return $S$__register_copy(srv, NULL, h, 1, user_data);\n"
    "}\n"
    "\n"
    "int $S$_register_client_with(qrpc_client *cli, const $S$_handlers *h,\n"
    "    void *user_data) {\n"
    "  if (cli == NULL || h == NULL) return QRPC_EINVAL;\n"
    "  return $S$__register_copy(NULL, cli, h, 1, user_data);\n"
    "}\n";

/* ---- Driving the templates ----------------------------------------------- */

/* Bindings of one method; the strings live in the struct. */
typedef struct method_vars {
  cg_vars v;
  char id[16];
  char max_age_ms[16];
  char max_message[16];
  char snapshot_ring[16];
  char snapshot_entities[16];
  char snapshot_key[16];
  char in_desc[512];
  char out_desc[512];
} method_vars;

static const char *shape_name(cg_kind k) {
  switch (k) {
  case CG_SERVER_STREAM: return "QRPC_SHAPE_SERVER_STREAM";
  case CG_CLIENT_STREAM: return "QRPC_SHAPE_CLIENT_STREAM";
  case CG_BIDI_STREAM: return "QRPC_SHAPE_BIDI_STREAM";
  default: return "QRPC_SHAPE_UNARY";
  }
}

/* Returns -1 if a name is too long for the fixed buffers. */
static int bind_method(method_vars *mv, const cg_vars *base,
                       const cg_method *me) {
  mv->v = *base;
  snprintf(mv->id, sizeof(mv->id), "0x%08x", (unsigned)me->id);
  snprintf(mv->max_age_ms, sizeof(mv->max_age_ms), "%u",
           (unsigned)me->max_age_ms);
  snprintf(mv->max_message, sizeof(mv->max_message), "%u",
           (unsigned)me->max_message);
  snprintf(mv->snapshot_ring, sizeof(mv->snapshot_ring), "%u",
           (unsigned)me->snapshot_ring);
  snprintf(mv->snapshot_entities, sizeof(mv->snapshot_entities), "%u",
           (unsigned)me->snapshot_entities);
  snprintf(mv->snapshot_key, sizeof(mv->snapshot_key), "%u",
           (unsigned)me->snapshot_key);
  int a = snprintf(mv->in_desc, sizeof(mv->in_desc), "%s__descriptor",
                   me->in->c_lower);
  int b = snprintf(mv->out_desc, sizeof(mv->out_desc), "%s__descriptor",
                   me->out->c_lower);
  if (a < 0 || (size_t)a >= sizeof(mv->in_desc) || b < 0 ||
      (size_t)b >= sizeof(mv->out_desc))
    return -1;
  cg_vars_set(&mv->v, "PM", me->prefix);
  cg_vars_set(&mv->v, "M", me->c_name);
  cg_vars_set(&mv->v, "FULL", me->full);
  cg_vars_set(&mv->v, "KIND",
              me->snapshot_ring ? "snapshot datagram" : cg_kind_name(me->kind));
  cg_vars_set(&mv->v, "ID", mv->id);
  cg_vars_set(&mv->v, "PINNED", me->pinned ? " /* pinned */" : "");
  cg_vars_set(&mv->v, "SHAPE", shape_name(me->kind));
  cg_vars_set(&mv->v, "FLAGS",
              me->idempotent ? "QRPC_METHOD_IDEMPOTENT" : "0u");
  cg_vars_set(&mv->v, "LATEST_ONLY", me->latest_only ? "1" : "0");
  cg_vars_set(&mv->v, "MAX_AGE_MS", mv->max_age_ms);
  cg_vars_set(&mv->v, "MAX_MESSAGE", mv->max_message);
  cg_vars_set(&mv->v, "SNAPSHOT_RING", mv->snapshot_ring);
  cg_vars_set(&mv->v, "SNAPSHOT_ENTITIES", mv->snapshot_entities);
  cg_vars_set(&mv->v, "SNAPSHOT_KEY", mv->snapshot_key);
  cg_vars_set(&mv->v, "IN", me->in->c_type);
  cg_vars_set(&mv->v, "IN_FULL", me->in->full);
  cg_vars_set(&mv->v, "IN_DESC", mv->in_desc);
  cg_vars_set(&mv->v, "OUT", me->out->c_type);
  cg_vars_set(&mv->v, "OUT_FULL", me->out->full);
  cg_vars_set(&mv->v, "OUT_DESC", mv->out_desc);
  return 0;
}

/* Template errors are generator bugs; they are counted and reported. */
typedef struct emitter {
  cg_buf *h;
  cg_buf *c;
  int bad_template;
} emitter;

static void eh(emitter *e, const cg_vars *v, const char *t) {
  if (cg_emit(e->h, v, t) != 0) e->bad_template = 1;
}

static void ec(emitter *e, const cg_vars *v, const char *t) {
  if (cg_emit(e->c, v, t) != 0) e->bad_template = 1;
}

static void emit_method_header(emitter *e, const cg_vars *base,
                               const cg_method *me) {
  cg_kind k = me->kind;
  cg_vars wv = *base;
  const cg_vars *v = base;
  cg_vars_set(&wv, "WRITABLE",
              k == CG_BIDI_STREAM
                  ? "  void (*on_writable)(qrpc_req *req, void *user_data);\n"
                  : "");
  eh(e, v, h_method_ids);
  if (k != CG_DATAGRAM) eh(e, v, h_method_flags);
  switch (k) {
  case CG_UNARY: eh(e, v, h_unary); break;
  case CG_SERVER_STREAM: eh(e, v, h_server_stream); break;
  case CG_CLIENT_STREAM:
    eh(e, v, h_client_stream);
    eh(e, &wv, h_stream_handlers);
    eh(e, v, h_client_stream_answer);
    break;
  case CG_BIDI_STREAM:
    eh(e, v, h_bidi_stream);
    eh(e, &wv, h_stream_handlers);
    eh(e, v, h_bidi_stream_answer);
    break;
  case CG_NOTIFY: eh(e, v, h_notify); break;
  case CG_DATAGRAM:
    eh(e, v, h_datagram_opts);
    eh(e, v, me->snapshot_ring ? h_snapshot : h_datagram);
    break;
  }
}

static void emit_stream_start(emitter *e, const cg_vars *base, cg_kind k) {
  cg_vars v = *base;
  int has_request = k == CG_SERVER_STREAM;
  cg_vars_set(&v, "REQ_PARAM", has_request ? "const $IN$ *request, " : "");
  cg_vars_set(&v, "REQ_ARG", has_request ? "request, " : "");
  cg_vars_set(&v, "MSG_DECL", has_request ? "  qrpc_msg m;\n" : "");
  cg_vars_set(&v, "MSG_FILL",
              has_request ? "  if ((rc = qrpc_stub_msg(&m,\n"
                            "           (const ProtobufCMessage *)request,\n"
                            "           &$IN_DESC$)) != 0)\n"
                            "    return rc;\n"
                          : "");
  cg_vars_set(&v, "MSG_ARG", has_request ? "&m" : "NULL");
  cg_vars_set(&v, "OUT_CHECK", has_request ? "" : " || out == NULL");
  cg_vars_set(&v, "CCBS",
              k == CG_SERVER_STREAM ? "$PM$__on_done, $PM$__on_item, NULL"
              : k == CG_CLIENT_STREAM
                  ? "$PM$__on_done, NULL, $PM$__on_writable"
                  : "$PM$__on_done, $PM$__on_item, $PM$__on_writable");
  /* Two passes: the values above contain $IN$ and $PM$ themselves. */
  cg_buf tmp;
  cg_buf_init(&tmp);
  if (cg_emit(&tmp, &v, c_stream_start) != 0) e->bad_template = 1;
  char *once = cg_buf_take(&tmp);
  if (once == NULL) {
    e->c->failed = 1;
    return;
  }
  ec(e, base, once);
  free(once);
}

static void emit_method_source(emitter *e, const cg_vars *v,
                               const cg_method *me) {
  cg_kind k = me->kind;
  cg_vars sv = *v;
  ec(e, v, c_method_top);
  switch (k) {
  case CG_UNARY:
    ec(e, v, c_unary_call);
    cg_vars_set(&sv, "NOTIFY_FLAG", "");
    cg_vars_set(&sv, "NOTIFY_ACK", "");
    ec(e, &sv, c_serve_plain);
    ec(e, v, c_reply_plain);
    break;
  case CG_SERVER_STREAM:
    ec(e, v, c_stream_ctx);
    ec(e, v, c_items_in);
    emit_stream_start(e, v, k);
    cg_vars_set(&sv, "NOTIFY_FLAG", "");
    cg_vars_set(&sv, "NOTIFY_ACK", "");
    ec(e, &sv, c_serve_plain);
    ec(e, v, c_item);
    ec(e, v, c_server_stream_end);
    break;
  case CG_CLIENT_STREAM:
    ec(e, v, c_stream_ctx);
    ec(e, v, c_reply_in);
    ec(e, v, c_writable);
    emit_stream_start(e, v, k);
    ec(e, v, c_send);
    cg_vars_set(&sv, "SERVE_WRITABLE", "NULL");
    ec(e, &sv, c_serve_stream);
    ec(e, v, c_client_stream_answer);
    break;
  case CG_BIDI_STREAM:
    ec(e, v, c_stream_ctx);
    ec(e, v, c_items_in);
    ec(e, v, c_writable);
    emit_stream_start(e, v, k);
    ec(e, v, c_send);
    cg_vars_set(&sv, "SERVE_WRITABLE", "h->$M$.on_writable");
    {
      /* SERVE_WRITABLE names $M$ itself: expand it first. */
      cg_buf tmp;
      cg_buf_init(&tmp);
      if (cg_emit(&tmp, &sv, c_serve_stream) != 0) e->bad_template = 1;
      char *once = cg_buf_take(&tmp);
      if (once == NULL) {
        e->c->failed = 1;
        return;
      }
      ec(e, v, once);
      free(once);
    }
    ec(e, v, c_item);
    ec(e, v, c_bidi_stream_answer);
    break;
  case CG_NOTIFY:
    ec(e, v, c_notify);
    cg_vars_set(&sv, "NOTIFY_FLAG", c_notify_flag);
    cg_vars_set(&sv, "NOTIFY_ACK", c_notify_ack);
    ec(e, &sv, c_serve_plain);
    break;
  case CG_DATAGRAM:
    ec(e, v, me->snapshot_ring ? c_snapshot : c_datagram);
    ec(e, v, c_datagram_recv);
    break;
  }
}

/* The template of a method's member in the handlers struct. */
static const char *member_template(cg_kind k) {
  switch (k) {
  case CG_CLIENT_STREAM:
  case CG_BIDI_STREAM: return h_member_stream;
  case CG_DATAGRAM: return h_member_dgram;
  default: return h_member_plain;
  }
}

/* The template registering a method in $S$__register_all. */
static const char *register_template(const cg_method *me) {
  switch (me->kind) {
  case CG_CLIENT_STREAM:
  case CG_BIDI_STREAM: return c_register_stream;
  case CG_DATAGRAM:
    return me->snapshot_ring ? c_register_snapshot : c_register_dgram;
  default: return c_register_plain;
  }
}

static void emit_handlers(emitter *e, const cg_vars *sv, const cg_service *s,
                          const method_vars *mvs) {
  eh(e, sv, h_handlers_top);
  for (size_t i = 0; i < s->n_methods; i++)
    eh(e, &mvs[i].v, member_template(s->methods[i].kind));
  eh(e, sv, h_handlers_bottom);

  ec(e, sv, c_register_top);
  if (s->n_methods == 0) {
    ec(e, sv, c_register_empty);
  } else {
    ec(e, sv, c_register_vars);
    for (size_t i = 0; i < s->n_methods; i++)
      ec(e, &mvs[i].v, register_template(&s->methods[i]));
    ec(e, sv, c_register_bottom);
  }
  ec(e, sv, c_register_public);
}

/* Appends file to the include list unless it is there already. */
static int include_once(emitter *e, const char ***seen, size_t *n, size_t *cap,
                        const char *file) {
  for (size_t k = 0; k < *n; k++)
    if (strcmp((*seen)[k], file) == 0) return 0;
  if (*n == *cap) {
    size_t c = *cap ? *cap * 2 : 8;
    const char **p = realloc(*seen, c * sizeof(*p));
    if (p == NULL) return -1;
    *seen = p;
    *cap = c;
  }
  (*seen)[(*n)++] = file;
  char *base = cg_strip_proto(file);
  if (base == NULL) return -1;
  cg_buf_printf(e->h, "#include \"%s.pb-c.h\"\n", base);
  free(base);
  return 0;
}

/* Includes the file's own protoc-c header, then that of every other file
 * defining a type the stubs use, each once, in the order first used. */
static void emit_includes(emitter *e, const cg_file *f) {
  const char **seen = NULL;
  size_t n = 0, cap = 0;
  int rc = include_once(e, &seen, &n, &cap, f->name);
  for (size_t i = 0; rc == 0 && i < f->n_services; i++) {
    const cg_service *s = &f->services[i];
    for (size_t j = 0; rc == 0 && j < s->n_methods; j++) {
      const cg_method *me = &s->methods[j];
      rc = include_once(e, &seen, &n, &cap, me->in->file);
      /* Notify and datagram stubs never decode a reply. */
      if (rc == 0 && me->kind != CG_NOTIFY && me->kind != CG_DATAGRAM)
        rc = include_once(e, &seen, &n, &cap, me->out->file);
    }
  }
  if (rc != 0) e->h->failed = 1;
  free(seen);
}

static void emit_service(emitter *e, const cg_vars *fv, const cg_file *f,
                         const cg_service *s, cg_decls *d) {
  cg_vars sv = *fv;
  cg_vars_set(&sv, "S", s->prefix);
  cg_vars_set(&sv, "SFULL", s->full);
  char *owner = cg_strdup_printf("service %s (%s)", s->full, f->name);
  method_vars *mvs = calloc(s->n_methods ? s->n_methods : 1, sizeof(*mvs));
  if (owner == NULL || mvs == NULL) {
    free(owner);
    free(mvs);
    e->h->failed = 1;
    return;
  }
  decl_list(d, s->prefix, ids_service, owner);
  eh(e, &sv, h_service_top);
  for (size_t i = 0; i < s->n_methods; i++) {
    const cg_method *me = &s->methods[i];
    char *mowner = cg_strdup_printf("%s (%s)", me->full, f->name);
    if (mowner == NULL || bind_method(&mvs[i], &sv, me) != 0) {
      free(mowner);
      e->h->failed = 1;
      break;
    }
    decl_list(d, me->prefix, ids_all, mowner);
    decl_list(d, me->prefix, method_ids(me), mowner);
    free(mowner);
    emit_method_header(e, &mvs[i].v, me);
    emit_method_source(e, &mvs[i].v, me);
  }
  if (!e->h->failed) emit_handlers(e, &sv, s, mvs);
  free(mvs);
  free(owner);
}

int cg_emit_file(const cg_file *f, cg_decls *d, cg_buf *header,
                 cg_buf *source) {
  emitter e = {header, source, 0};
  cg_vars fv = {.n = 0};
  cg_vars_set(&fv, "FILE", f->name);
  cg_vars_set(&fv, "BASE", f->base);
  cg_vars_set(&fv, "IDENT", f->ident);

  eh(&e, &fv, h_top);
  emit_includes(&e, f);
  eh(&e, &fv, h_cplusplus_open);

  ec(&e, &fv, c_top);
  ec(&e, &fv, has_methods(f) ? c_includes : c_no_stubs);

  for (size_t i = 0; i < f->n_services; i++)
    emit_service(&e, &fv, f, &f->services[i], d);

  eh(&e, &fv, h_bottom);
  if (e.bad_template) {
    /* A generator bug: say so rather than emit code that cannot build. */
    fprintf(stderr,
            "protoc-gen-qrpc: internal error: unbound template "
            "variable while generating %s\n",
            f->name);
    return -1;
  }
  return header->failed || source->failed ? -1 : 0;
}
