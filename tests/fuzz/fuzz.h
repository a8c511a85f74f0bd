/*
 * Shared pieces of the fuzz targets.
 *
 * Every target defines LLVMFuzzerTestOneInput() (and LLVMFuzzerInitialize())
 * and is built twice: with libFuzzer when the compiler is clang and
 * QRPC_FUZZ is on, and always with replay_main.c, a plain main() that runs
 * the target over its seed corpus, so every compiler and every build checks
 * the corpus (crashes found earlier included) on each test run.
 *
 * A broken property is reported with FZ_CHECK(), which prints where and
 * aborts: libFuzzer records the input as a crash, the replay fails its test.
 */
#ifndef QRPC_FUZZ_H
#define QRPC_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FZ_CHECK(cond)                                                         \
  do {                                                                         \
    if (!(cond)) {                                                             \
      fprintf(stderr, "%s:%d: property failed: %s\n", __FILE__, __LINE__,      \
              #cond);                                                          \
      abort();                                                                 \
    }                                                                          \
  } while (0)

/* Consumes a fuzz input from the front: control bytes first, the rest is
 * the data under test. Reading past the end yields zeros, so every input is
 * valid and short inputs still reach the code under test. */
typedef struct fz_input {
  const uint8_t *p;
  size_t len;
} fz_input;

static inline uint8_t fz_u8(fz_input *in) {
  if (in->len == 0) return 0;
  in->len--;
  return *in->p++;
}

static inline uint16_t fz_u16(fz_input *in) {
  uint16_t hi = fz_u8(in);
  return (uint16_t)(hi << 8 | fz_u8(in));
}

/* Takes up to n bytes; returns how many were taken. */
static inline size_t fz_take(fz_input *in, size_t n, const uint8_t **out) {
  if (n > in->len) n = in->len;
  *out = in->p;
  in->p += n;
  in->len -= n;
  return n;
}

#endif
