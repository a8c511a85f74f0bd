/*
 * Call metadata in the engine: building the pairs a call or an answer
 * sends, and turning received pairs into qrpc_md arrays.
 */
#include <stdlib.h>
#include <string.h>

#include "qrpc/error.h"
#include "rpc/engine.h"
#include "wire/metadata.h"

const qrpc_md *qrpc_md_find(const qrpc_md *md, size_t n, const char *key) {
  if (!md || !key) return NULL;
  size_t kl = strlen(key);
  for (size_t i = 0; i < n; i++) {
    size_t l = md[i].key_len ? md[i].key_len : strlen(md[i].key);
    if (l == kl && memcmp(md[i].key, key, kl) == 0) return &md[i];
  }
  return NULL;
}

int qrpci_mdbuf_add(qrpci_mdbuf *b, const char *key, size_t key_len,
                    const void *value, size_t value_len, size_t limit) {
  if (!key) return QRPC_EINVAL;
  if (key_len == 0) key_len = strlen(key);
  if (!qrpci_md_key_valid((const uint8_t *)key, key_len) ||
      (value_len != 0 && value == NULL))
    return QRPC_EINVAL;
  if (value_len > limit || key_len + value_len > limit - b->total)
    return QRPC_EMSGSIZE;
  size_t n = qrpci_md_pair_len(key_len, value_len);
  if (n == 0) return QRPC_EMSGSIZE;
  if (b->cap - b->len < n) {
    size_t cap = b->cap ? b->cap * 2 : 64;
    while (cap - b->len < n) cap *= 2;
    uint8_t *p = realloc(b->p, cap);
    if (!p) return QRPC_ENOMEM;
    b->p = p;
    b->cap = cap;
  }
  b->len += qrpci_md_put(b->p + b->len, (const uint8_t *)key, key_len, value,
                         value_len);
  b->total += key_len + value_len;
  return 0;
}

int qrpci_mdbuf_add_list(qrpci_mdbuf *b, const qrpc_md *md, size_t n,
                         size_t limit) {
  if (n != 0 && md == NULL) return QRPC_EINVAL;
  for (size_t i = 0; i < n; i++) {
    int rv = qrpci_mdbuf_add(b, md[i].key, md[i].key_len, md[i].value,
                             md[i].value_len, limit);
    if (rv != 0) return rv;
  }
  return 0;
}

void qrpci_mdbuf_free(qrpci_mdbuf *b) {
  free(b->p);
  memset(b, 0, sizeof(*b));
}

int qrpci_md_parse(const uint8_t *pairs, size_t len, qrpc_md **out,
                   size_t *count) {
  size_t n = 0;
  *out = NULL;
  *count = 0;
  if (qrpci_md_check(pairs, len, &n, NULL) != QRPCI_MD_OK) return QRPC_EINVAL;
  if (n == 0) return 0;
  /* One block: the array, then a copy of the bytes it points into. */
  qrpc_md *md = malloc(n * sizeof(*md) + len);
  if (!md) return QRPC_ENOMEM;
  uint8_t *copy = (uint8_t *)(md + n);
  memcpy(copy, pairs, len);
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    qrpci_md_pair pr;
    o += qrpci_md_next(copy + o, len - o, &pr);
    md[i].key = (const char *)pr.key;
    md[i].key_len = pr.key_len;
    md[i].value = pr.value;
    md[i].value_len = pr.value_len;
  }
  *out = md;
  *count = n;
  return 0;
}
