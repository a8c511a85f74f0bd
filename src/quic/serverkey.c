/*
 * Server keys: the one secret a server derives its session-ticket keys,
 * stateless-reset tokens and Retry tokens from, set from bytes or a key
 * file, or made at random on first use.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "qrpc/error.h"
#include "quic/tls.h"
#include "util/log.h"

#define KEY_FILE_MAGIC "qrpc-server-key 1"
/* The magic line, 64 hex digits and their newlines. */
#define KEY_FILE_MAX 128

static const char hexdig[] = "0123456789abcdef";

static int hexval(int ch) {
  if (ch >= '0' && ch <= '9') return ch - '0';
  if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
  return -1;
}

int qrpc_server_key_write(const char *path) {
  if (!path) return QRPC_EINVAL;
  uint8_t key[QRPC_SERVER_KEY_LEN];
  if (qrpci_tls_rand(key, sizeof(key)) != 0) return QRPC_ESYSTEM;
  char text[KEY_FILE_MAX];
  size_t n = (size_t)snprintf(text, sizeof(text), "%s\n", KEY_FILE_MAGIC);
  for (size_t i = 0; i < sizeof(key); i++) {
    text[n++] = hexdig[key[i] >> 4];
    text[n++] = hexdig[key[i] & 15];
  }
  text[n++] = '\n';
  memset(key, 0, sizeof(key));
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0) {
    int e = errno;
    QRPCI_ERROR("tls: cannot create the server key file %s: %s", path,
                strerror(e));
    return e == EEXIST ? QRPC_EADDRINUSE : QRPC_ESYSTEM;
  }
  /* The mode given to open() is masked by the umask; 0600 is what counts. */
  int ok = fchmod(fd, 0600) == 0 && write(fd, text, n) == (ssize_t)n &&
           fsync(fd) == 0;
  int e = errno;
  memset(text, 0, sizeof(text));
  if (close(fd) != 0) ok = 0;
  if (!ok) {
    QRPCI_ERROR("tls: cannot write the server key file %s: %s", path,
                strerror(e));
    unlink(path);
    return QRPC_ESYSTEM;
  }
  return 0;
}

int qrpc_tls_config_set_server_key(qrpc_tls_config *cfg, const void *key,
                                   size_t len) {
  if (!cfg || !key || len != QRPC_SERVER_KEY_LEN) return QRPC_EINVAL;
  if (cfg->in_use) return QRPC_ESTATE;
  memcpy(cfg->server_key, key, len);
  cfg->has_server_key = 1;
  return 0;
}

/* Reads the key file's bytes into text; refuses a file that is not a
 * regular file or that its group or others may read or write. */
static int read_key_file(const char *path, char *text, size_t cap,
                         size_t *len) {
  int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
  if (fd < 0) {
    QRPCI_ERROR("tls: cannot open the server key file %s: %s", path,
                strerror(errno));
    return QRPC_ESYSTEM;
  }
  struct stat st;
  int rv = 0, err = 0;
  if (fstat(fd, &st) != 0) {
    err = errno;
    rv = QRPC_ESYSTEM;
  } else if (!S_ISREG(st.st_mode)) {
    QRPCI_ERROR("tls: the server key file %s is not a regular file", path);
    rv = QRPC_ETLS;
  } else if (st.st_mode & (S_IRWXG | S_IRWXO)) {
    QRPCI_ERROR("tls: the server key file %s may be read or changed by "
                "others (mode %03o); refusing it: chmod 600 it",
                path, (unsigned)(st.st_mode & 0777));
    rv = QRPC_ETLS;
  }
  ssize_t n = rv == 0 ? read(fd, text, cap) : 0;
  if (rv == 0 && n < 0) {
    err = errno;
    rv = QRPC_ESYSTEM;
  }
  close(fd);
  if (rv == QRPC_ESYSTEM)
    QRPCI_ERROR("tls: cannot read the server key file %s: %s", path,
                strerror(err));
  *len = n > 0 ? (size_t)n : 0;
  return rv;
}

int qrpc_tls_config_load_server_key(qrpc_tls_config *cfg, const char *path) {
  if (!cfg || !path) return QRPC_EINVAL;
  if (cfg->in_use) return QRPC_ESTATE;
  char text[KEY_FILE_MAX + 1];
  size_t len = 0;
  int rv = read_key_file(path, text, sizeof(text), &len);
  if (rv != 0) return rv;
  size_t mlen = strlen(KEY_FILE_MAGIC);
  uint8_t key[QRPC_SERVER_KEY_LEN];
  const char *hex = text + mlen + 1;
  int ok = len >= mlen + 1 + 2 * sizeof(key) &&
           memcmp(text, KEY_FILE_MAGIC, mlen) == 0 && text[mlen] == '\n';
  for (size_t i = 0; ok && i < sizeof(key); i++) {
    int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
    ok = hi >= 0 && lo >= 0;
    key[i] = (uint8_t)(ok ? hi << 4 | lo : 0);
  }
  /* Only a final newline may follow. */
  size_t end = mlen + 1 + 2 * sizeof(key);
  if (ok && len > end) ok = len == end + 1 && text[end] == '\n';
  memset(text, 0, sizeof(text));
  if (!ok) {
    QRPCI_ERROR("tls: %s is not a server key file (a line \"%s\" and 64 hex "
                "digits; qrpc_server_key_write() makes one)",
                path, KEY_FILE_MAGIC);
    return QRPC_ETLS;
  }
  rv = qrpc_tls_config_set_server_key(cfg, key, sizeof(key));
  memset(key, 0, sizeof(key));
  if (rv == 0) cfg->server_key_from_file = 1;
  return rv;
}

int qrpc_tls_config_use_server_key_file(qrpc_tls_config *cfg,
                                        const char *path) {
  if (!cfg || !path) return QRPC_EINVAL;
  if (cfg->in_use) return QRPC_ESTATE;
  if (access(path, F_OK) != 0 && errno == ENOENT) {
    int rv = qrpc_server_key_write(path);
    /* Another process made it first: that key is the one to share. */
    if (rv != 0 && rv != QRPC_EADDRINUSE) return rv;
    if (rv == 0) QRPCI_INFO("tls: wrote a new server key to %s", path);
  }
  return qrpc_tls_config_load_server_key(cfg, path);
}

/* The key, made at random on first use when none was set. */
static const uint8_t *server_key(qrpc_tls_config *cfg) {
  pthread_mutex_lock(&cfg->mu);
  if (!cfg->has_server_key &&
      qrpci_tls_rand(cfg->server_key, sizeof(cfg->server_key)) == 0)
    cfg->has_server_key = 1;
  pthread_mutex_unlock(&cfg->mu);
  return cfg->has_server_key ? cfg->server_key : NULL;
}

int qrpci_tls_derive(qrpc_tls_config *cfg, const char *label, uint64_t n,
                     uint8_t *out, size_t len) {
  const uint8_t *key = server_key(cfg);
  if (!key) return QRPC_ESYSTEM;
  /* HKDF-Expand (RFC 5869) with info = label || n (8 bytes, big-endian):
   * T(i) = HMAC(key, T(i-1) || info || i). */
  size_t llen = strlen(label);
  uint8_t in[QRPCI_HMAC_LEN + 64 + 8 + 1];
  if (llen > 64 || len > 255 * QRPCI_HMAC_LEN) return QRPC_EINVAL;
  uint8_t t[QRPCI_HMAC_LEN];
  size_t tlen = 0, done = 0;
  for (uint8_t i = 1; done < len; i++) {
    size_t m = 0;
    memcpy(in, t, tlen);
    m += tlen;
    memcpy(in + m, label, llen);
    m += llen;
    for (int b = 7; b >= 0; b--) in[m++] = (uint8_t)(n >> (8 * b));
    in[m++] = i;
    if (qrpci_tlsb_hmac(key, QRPC_SERVER_KEY_LEN, in, m, t) != 0)
      return QRPC_ESYSTEM;
    tlen = sizeof(t);
    size_t take = len - done < tlen ? len - done : tlen;
    memcpy(out + done, t, take);
    done += take;
  }
  memset(t, 0, sizeof(t));
  memset(in, 0, sizeof(in));
  return 0;
}
