/*
 * main() for the regression build of a fuzz target: runs
 * LLVMFuzzerTestOneInput() once on every file named on the command line
 * (directories are walked one level deep, in name order, so runs are
 * reproducible). Exits 0 when every input ran; a broken property aborts.
 */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "fuzz.h"

static int run_file(const char *path) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    perror(path);
    return -1;
  }
  size_t cap = 4096, len = 0, n;
  uint8_t *buf = malloc(cap);
  while (buf && (n = fread(buf + len, 1, cap - len, f)) > 0) {
    len += n;
    if (len == cap) {
      uint8_t *nb = realloc(buf, cap * 2);
      if (!nb) {
        free(buf);
        buf = NULL;
        break;
      }
      buf = nb;
      cap *= 2;
    }
  }
  int err = ferror(f) || !buf;
  fclose(f);
  if (err) {
    fprintf(stderr, "%s: cannot read\n", path);
    free(buf);
    return -1;
  }
  /* An exact-size copy, so reading one byte too far is caught by ASan. */
  uint8_t *exact = malloc(len ? len : 1);
  if (!exact) {
    free(buf);
    return -1;
  }
  memcpy(exact, buf, len);
  free(buf);
  LLVMFuzzerTestOneInput(exact, len);
  free(exact);
  return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) {
  return strcmp((*a)->d_name, (*b)->d_name);
}

static int skip_entry(const struct dirent *e) { return e->d_name[0] != '.'; }

static int run_path(const char *path, int *count) {
  struct stat st;
  if (stat(path, &st) != 0) {
    perror(path);
    return -1;
  }
  if (!S_ISDIR(st.st_mode)) {
    (*count)++;
    return run_file(path);
  }
  struct dirent **names;
  int n = scandir(path, &names, skip_entry, by_name);
  if (n < 0) {
    perror(path);
    return -1;
  }
  int rv = 0;
  for (int i = 0; i < n; i++) {
    char full[4096];
    snprintf(full, sizeof(full), "%s/%s", path, names[i]->d_name);
    if (stat(full, &st) == 0 && S_ISREG(st.st_mode)) {
      (*count)++;
      if (run_file(full) != 0) rv = -1;
    }
    free(names[i]);
  }
  free(names);
  return rv;
}

int main(int argc, char **argv) {
  int count = 0, rv = 0;
  if (argc < 2) {
    fprintf(stderr, "usage: %s FILE|DIR...\n", argv[0]);
    return 2;
  }
  LLVMFuzzerInitialize(&argc, &argv);
  for (int i = 1; i < argc; i++)
    if (run_path(argv[i], &count) != 0) rv = 1;
  printf("%s: %d inputs replayed%s\n", argv[0], count, rv ? " (errors)" : "");
  if (count == 0) {
    fprintf(stderr, "%s: no inputs found\n", argv[0]);
    return 1;
  }
  return rv;
}
