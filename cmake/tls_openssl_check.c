/* Configure-time check of -DQRPC_TLS=openssl (cmake/QrpcTls.cmake): the
 * calls the OpenSSL backend starts with must compile and link against the
 * chosen OpenSSL and ngtcp2. */
#include <ngtcp2/ngtcp2.h>
#include <ngtcp2/ngtcp2_crypto_ossl.h>
#include <openssl/ssl.h>

int main(void) {
  SSL_CTX *ctx;
  if (ngtcp2_crypto_ossl_init() != 0) return 1;
  ctx = SSL_CTX_new(TLS_method());
  if (ctx == NULL) return 1;
  SSL_CTX_free(ctx);
  return ngtcp2_version(0) == NULL;
}
