/*
 * The smallest program that uses an installed qrpc: it creates and frees a
 * loop and a TLS config, and prints the version and one error name, so the
 * install test can check it linked against the library it expects.
 */
#include <stdio.h>

#include <qrpc/qrpc.h>

int main(void) {
  qrpc_loop *loop = NULL;
  int rc = qrpc_loop_new(NULL, &loop);
  if (rc != 0) {
    fprintf(stderr, "consumer: qrpc_loop_new failed: %s\n", qrpc_strerror(rc));
    return 1;
  }

  qrpc_tls_config *tls = NULL;
  rc = qrpc_tls_config_new(&tls);
  if (rc != 0) {
    fprintf(stderr, "consumer: qrpc_tls_config_new failed: %s\n",
            qrpc_strerror(rc));
    qrpc_loop_free(loop);
    return 1;
  }

  printf("qrpc %s\n", QRPC_VERSION);
  printf("QRPC_ETLS: %s\n", qrpc_strerror(QRPC_ETLS));

  qrpc_tls_config_free(tls);
  qrpc_loop_free(loop);
  return 0;
}
