/*
 * Test certificates, generated at run time in memory with GnuTLS, so no
 * private key is ever stored in the repository.
 *
 * One call makes a test CA and, signed by it, a server certificate (DNS
 * "localhost", IP 127.0.0.1 and IP ::1, usable for TLS server auth), a
 * client certificate (usable for TLS client auth, subject and names below)
 * and a client certificate with an iPAddress entry that is no address; a
 * second CA and a client certificate it signed, for tests that must see a
 * chain rejected; and a certificate whose validity lies entirely in the
 * past, for tests of bad input. All keys are ECDSA P-256.
 */
#ifndef QT_CERTS_H
#define QT_CERTS_H

#include <stddef.h>

/* The client certificate's subject (O, then CN: RFC 4514 writes it
 * "CN=qrpc-test-client,O=qrpc tests") and subjectAltNames; its IP address
 * is 127.0.0.2. The other CA's client certificate has the same O and names
 * and CN "qrpc-other-client". */
#define QT_CLIENT_CN "qrpc-test-client"
#define QT_CLIENT_ORG "qrpc tests"
#define QT_CLIENT_DNS "client.test"
#define QT_CLIENT_URI "spiffe://qrpc.test/client"
#define QT_CLIENT_EMAIL "client@qrpc.test"

typedef struct qt_certs {
  char *ca_pem;          /* test CA certificate */
  char *ca_key_pem;      /* its key: a key that does not match the server's */
  char *server_cert_pem; /* server certificate, signed by the test CA */
  char *server_key_pem;
  unsigned char *server_cert_der; /* the same server certificate, DER */
  size_t server_cert_der_len;
  char *other_ca_pem; /* an unrelated CA */

  /* Client certificate and key, signed by the test CA. */
  char *client_cert_pem;
  char *client_key_pem;
  unsigned char *client_cert_der; /* the same client certificate, DER */
  size_t client_cert_der_len;

  /* A client certificate and key signed by the unrelated CA. */
  char *other_client_cert_pem;
  char *other_client_key_pem;

  /* A client certificate signed by the test CA whose first iPAddress
   * entry is 8 bytes (a subnet, not an address), then IP 127.0.0.2. */
  char *odd_ip_cert_pem;
  char *odd_ip_key_pem;

  /* Signed by the test CA, expired a day ago. */
  char *expired_cert_pem;
  char *expired_key_pem;
} qt_certs;

/* Fills *c with freshly generated certificates (NUL-terminated PEM strings,
 * owned by *c). Returns 0, or a negative GnuTLS error code with *c left
 * empty. */
int qt_certs_generate(qt_certs *c);

/* Releases everything qt_certs_generate() allocated. */
void qt_certs_free(qt_certs *c);

/* Creates a fresh private directory under $TMPDIR (or the system temporary
 * directory) and writes its path into dir. Returns 0 or -1 with errno. */
int qt_tmpdir_make(char *dir, size_t cap);

/* Removes the regular files directly inside dir, then dir itself. Test
 * directories are flat, so nothing recursive is needed. */
void qt_tmpdir_remove(const char *dir);

/* Writes text to a new file at path (mode 0600), replacing any file there.
 * Returns 0 or -1 with errno. */
int qt_file_write(const char *path, const char *text);

typedef struct qt_cert_files {
  char dir[256];
  char ca_path[320];   /* the test CA */
  char cert_path[320]; /* the server certificate */
  char key_path[320];  /* the server key (mode 0600) */
} qt_cert_files;

/* Writes the CA, server certificate and server key of c into a new
 * temporary directory, for tests of the file-loading API. Returns 0 or -1
 * with errno; on failure nothing is left on disk. */
int qt_cert_files_write(const qt_certs *c, qt_cert_files *f);

/* Deletes the files and the directory written by qt_cert_files_write(). */
void qt_cert_files_remove(qt_cert_files *f);

#endif
