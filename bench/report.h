/*
 * The output of a client run: the workload's parameters and its results,
 * printed as the last stdout line "RESULT k=v ..." (results only) and,
 * with --json, before it as one JSON object on one line (parameters and
 * results).
 */
#ifndef BENCH_REPORT_H
#define BENCH_REPORT_H

#include <stddef.h>
#include <stdint.h>

#define BENCH_REPORT_MAX 48

typedef struct bench_kv {
  char key[32];
  char value[64];
  int is_result; /* in the RESULT line; otherwise a parameter */
  int is_text;   /* quoted in JSON */
} bench_kv;

typedef struct bench_report {
  bench_kv kv[BENCH_REPORT_MAX];
  size_t n;
} bench_report;

void bench_report_init(bench_report *r);
/* Parameters: text, whole numbers and decimals. */
void bench_report_param_text(bench_report *r, const char *key, const char *v);
void bench_report_param_uint(bench_report *r, const char *key, uint64_t v);
void bench_report_param_num(bench_report *r, const char *key, double v);
/* Results: a whole number, or a decimal with the given digits after the
 * point (always plain decimal, never an exponent). */
void bench_report_uint(bench_report *r, const char *key, uint64_t v);
void bench_report_num(bench_report *r, const char *key, double v, int digits);

/* Prints the JSON object (when json) and then the RESULT line to stdout,
 * and flushes it. */
void bench_report_print(const bench_report *r, int json);

/* Prints just "RESULT k=v ..." for a list of results (servers use it). */
void bench_report_print_result(const bench_report *r);

#endif
