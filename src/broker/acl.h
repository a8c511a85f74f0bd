/*
 * Broker access control: which topics a connection may publish to and
 * which patterns it may subscribe to, by the token it presented or by the
 * identity of its verified client certificate. Pure except for
 * qrpci_acl_load(), which reads one file. An acl is immutable once parsed,
 * so any thread may query it while no thread frees it.
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
 *   cert uri spiffe://example.org/sensor # the section of a certificate
 *     publish sensors.>
 *   cert subject "CN=sensor 7,O=Example" # values with spaces are quoted
 *     publish sensors.7.>
 *   anonymous                     # starts the section of tokenless connections
 *     subscribe public.>
 *
 * - A '#' starts a comment that runs to the end of the line, wherever it
 *   appears outside the quoted value of a cert line, so tokens and patterns
 *   written here cannot contain '#'.
 * - Words are separated by spaces and tabs. The first word of a line is a
 *   keyword, matched case-sensitively; an unknown keyword is an error.
 * - "token T" starts the section of the connections that present token T:
 *   1..256 bytes of printable ASCII (0x21..0x7e) other than '#'. A token
 *   that starts a second section is an error.
 * - "cert KIND VALUE" starts the section of the connections whose verified
 *   client certificate carries VALUE (see qrpci_acl_lookup_cert()). KIND
 *   is "subject" (the subject's distinguished name as an RFC 4514 string,
 *   as qrpc_conn_peer_identity() gives it: "CN=alice,O=Example"), or a
 *   subjectAltName type: "dns", "uri", "email" or "ip". VALUE is one word
 *   without '#' or '"', or a double-quoted string in which '#' is part of
 *   the value and "" stands for one '"'; it is 1..1024 bytes without
 *   control characters (0x00..0x1f, 0x7f). An ip VALUE is an IPv4 or IPv6
 *   address, kept in the form inet_ntop() writes ("::1" for
 *   "0:0:0:0:0:0:0:1"). A KIND and VALUE that start a second section are
 *   an error. Values are compared byte for byte: case matters, and there
 *   are no wildcards.
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
 *
 * Which section a connection gets is the caller's choice (the broker's
 * rule is in docs/broker.md): qrpci_acl_lookup() finds a token's,
 * qrpci_acl_lookup_cert() a certificate's, qrpci_acl_anonymous() the
 * anonymous one.
 */
#ifndef QRPCI_BROKER_ACL_H
#define QRPCI_BROKER_ACL_H

#include <stddef.h>

#include "qrpc/quic.h"

#define QRPCI_ACL_TOKEN_MAX 256
#define QRPCI_ACL_LINE_MAX 4096
/* The longest VALUE of a cert line, after unquoting. */
#define QRPCI_ACL_CERT_VALUE_MAX 1024

typedef struct qrpci_acl qrpci_acl;

/* One section of the file: the permissions of a token, of a certificate
 * identity, or of connections without a token. Owned by its acl and valid
 * until qrpci_acl_free(). */
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

/* Returns the first cert section, in the file's order, whose KIND and VALUE
 * the certificate identity peer carries (its subject, or one of its
 * subjectAltName entries of that type), or NULL if none does or peer is
 * NULL. Compares by length and bytes, so a NUL byte in a certificate's
 * string is one more byte that must match. */
const qrpci_acl_identity *qrpci_acl_lookup_cert(const qrpci_acl *acl,
                                                const qrpc_identity *peer);

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

/* Sections in the acl, the anonymous one included, and how many of them
 * are cert sections: for logs. */
size_t qrpci_acl_count(const qrpci_acl *acl);
size_t qrpci_acl_cert_count(const qrpci_acl *acl);

/* The line of the file that starts id's section: for logs. */
unsigned long qrpci_acl_line(const qrpci_acl_identity *id);

#endif
