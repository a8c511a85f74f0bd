/*
 * Test selection for the valgrind runs of the end-to-end suites: linked
 * with -Wl,--wrap=_tcase_add_test into copies of those suites, it drops
 * the tests named in QRPC_MEMCHECK_SKIP (comma-separated) when they are
 * added to their test case, so the rest of a suite runs under memcheck
 * without its few long loops. Check selects whole suites and test cases
 * only (CK_RUN_SUITE, CK_RUN_CASE); this is the per-test choice.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void __real__tcase_add_test(TCase *tc, const TTest *ttest, int sig,
                            int allowed_exit_value, int start, int end);
void __wrap__tcase_add_test(TCase *tc, const TTest *ttest, int sig,
                            int allowed_exit_value, int start, int end);

static int listed(const char *list, const char *name) {
  size_t n = strlen(name);
  const char *p = list;
  while (p && *p) {
    const char *end = strchr(p, ',');
    size_t len = end ? (size_t)(end - p) : strlen(p);
    if (len == n && strncmp(p, name, n) == 0) return 1;
    p = end ? end + 1 : NULL;
  }
  return 0;
}

void __wrap__tcase_add_test(TCase *tc, const TTest *ttest, int sig,
                            int allowed_exit_value, int start, int end) {
  const char *skip = getenv("QRPC_MEMCHECK_SKIP");
  if (skip && ttest && listed(skip, ttest->name)) {
    printf("memcheck: skipping %s\n", ttest->name);
    return;
  }
  __real__tcase_add_test(tc, ttest, sig, allowed_exit_value, start, end);
}
