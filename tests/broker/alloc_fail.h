/*
 * Allocation failures on demand for the broker's pure suites: a suite
 * linked with alloc_fail.c and -Wl,--wrap=malloc,--wrap=calloc,
 * --wrap=realloc sees every allocation of the code under test pass here,
 * and can make the n-th one from now fail.
 */
#ifndef QT_ALLOC_FAIL_H
#define QT_ALLOC_FAIL_H

/* Lets n more allocations succeed and fails the next ones; -1 never
 * fails. */
void qt_alloc_fail_after(long n);

#endif
