/*
 * Broker access control: which topics a connection may publish to and
 * which patterns it may subscribe to, by the token it presented. Pure
 * except for qrpci_acl_load(), which reads one file. An acl is immutable
 * once parsed, so any thread may query it while no thread frees it.
 *
 * File format
 * -----------
 * The file is text, read line by line ('\n' ends a line; a '\r' before it
 * is ignored):
 *
 *   # comments start with '#'; blank lines and leading whitespace are ignored
 *   token s3cret-alice            # starts the section of one token
 *     publish chat.> game.*.state # publish patterns: one or more, repeatable
 *     subscribe chat.>            # subscribe patterns
 *   anonymous                     # starts the section of tokenless connections
 *     subscribe public.>
 *
 * - A '#' starts a comment that runs to the end of the line, wherever it
 *   appears, so tokens and patterns written here cannot contain '#'.
 * - Words are separated by spaces and tabs. The first word of a line is a
 *   keyword, matched case-sensitively; an unknown keyword is an error.
 * - "token T" starts the section of the connections that present token T:
 *   1..256 bytes of printable ASCII (0x21..0x7e) other than '#'. A token
 *   that starts a second section is an error.
 * - "anonymous" starts the section of the connections that present no
 *   token (see qrpci_acl_anonymous()). A second anonymous section is an
 *   error.
 * - "publish P..." allows the section to publish to every topic one of the
 *   patterns P matches; "subscribe P..." allows it to subscribe to every
 *   pattern one of the patterns P covers (see qrpci_pattern_covers()). Each
 *   takes one or more patterns (broker/topic.h) and may be repeated; the
 *   patterns add up. Before the first section either is an error, and so
 *   is an invalid pattern (the message names it).
 * - A section without any publish or subscribe line is allowed; it grants
 *   nothing.
 * - A line of more than 4096 bytes, not counting its '\n', is an error.
 * - Whatever is not allowed is denied. A file without any section denies
 *   everything to everyone.
 *
 * Error messages name the file and the line ("acl.conf:7: unknown keyword
 * 'publsh'") and never quote a token, so a secret does not reach a log.
 */
#ifndef QRPCI_BROKER_ACL_H
#define QRPCI_BROKER_ACL_H

#include <stddef.h>

#define QRPCI_ACL_TOKEN_MAX 256
#define QRPCI_ACL_LINE_MAX 4096

typedef struct qrpci_acl qrpci_acl;

/* One section of the file: the permissions of a token, or of connections
 * without one. Owned by its acl and valid until qrpci_acl_free(). */
typedef struct qrpci_acl_identity qrpci_acl_identity;

/* Parses text[0..len), which need not be NUL-terminated, into *out; name
 * (the file's name, or NULL for "acl") prefixes error messages. The acl
 * keeps no pointer into text or name. On error *out is untouched and err,
 * unless NULL, receives "NAME:LINE: what is wrong" (errlen bytes at most,
 * NUL-terminated, truncated if needed). Errors: QRPC_EINVAL (the text
 * breaks a rule of the format), QRPC_ENOMEM. */
int qrpci_acl_parse(const char *text, size_t len, const char *name,
                    qrpci_acl **out, char *err, size_t errlen);

/* Reads the file at path and parses it, with path as the name in messages.
 * Errors: those of qrpci_acl_parse(); QRPC_ESYSTEM if the file cannot be
 * opened or read, with "PATH: reason" in err. Calls strerror(), so it is
 * meant for start-up, not for threads that race with other strerror()
 * callers. */
int qrpci_acl_load(const char *path, qrpci_acl **out, char *err, size_t errlen);

/* Frees acl and its identities. acl may be NULL. */
void qrpci_acl_free(qrpci_acl *acl);

/* Returns the identity of token[0..len), or NULL if no section has it. Every
 * section's token is compared in time that depends only on len, never on
 * where the first differing byte is, and every section is compared. */
const qrpci_acl_identity *qrpci_acl_lookup(const qrpci_acl *acl,
                                           const char *token, size_t len);

/* Returns the anonymous section, or NULL if the file has none: then a
 * connection without a valid token may neither publish nor subscribe. */
const qrpci_acl_identity *qrpci_acl_anonymous(const qrpci_acl *acl);

/* Returns 1 if id may publish to topic[0..len), else 0. 0 when id is NULL
 * or topic is not a valid topic. */
int qrpci_acl_may_publish(const qrpci_acl_identity *id, const char *topic,
                          size_t len);

/* Returns 1 if some subscribe pattern of id covers pattern[0..len), so that
 * every topic the subscription can receive is one id may read; else 0. 0
 * when id is NULL or pattern is not a valid pattern. */
int qrpci_acl_may_subscribe(const qrpci_acl_identity *id, const char *pattern,
                            size_t len);

/* Sections in the acl, the anonymous one included: for logs. */
size_t qrpci_acl_count(const qrpci_acl *acl);

#endif
