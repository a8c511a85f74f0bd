#include "report.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

void bench_report_init(bench_report *r) { memset(r, 0, sizeof(*r)); }

static bench_kv *add(bench_report *r, const char *key, int is_result) {
  if (r->n >= BENCH_REPORT_MAX) return NULL;
  bench_kv *kv = &r->kv[r->n++];
  snprintf(kv->key, sizeof(kv->key), "%s", key);
  kv->is_result = is_result;
  kv->is_text = 0;
  return kv;
}

/* Plain decimal whatever the magnitude: %f never uses an exponent, and
 * non-finite values (a rate over an empty window) become 0. */
static void format_num(char *buf, size_t cap, double v, int digits) {
  if (!isfinite(v)) v = 0;
  snprintf(buf, cap, "%.*f", digits, v);
}

void bench_report_param_text(bench_report *r, const char *key, const char *v) {
  bench_kv *kv = add(r, key, 0);
  if (kv == NULL) return;
  snprintf(kv->value, sizeof(kv->value), "%s", v);
  kv->is_text = 1;
}

void bench_report_param_uint(bench_report *r, const char *key, uint64_t v) {
  bench_kv *kv = add(r, key, 0);
  if (kv != NULL)
    snprintf(kv->value, sizeof(kv->value), "%llu", (unsigned long long)v);
}

void bench_report_param_num(bench_report *r, const char *key, double v) {
  bench_kv *kv = add(r, key, 0);
  if (kv != NULL) format_num(kv->value, sizeof(kv->value), v, 3);
}

void bench_report_uint(bench_report *r, const char *key, uint64_t v) {
  bench_kv *kv = add(r, key, 1);
  if (kv != NULL)
    snprintf(kv->value, sizeof(kv->value), "%llu", (unsigned long long)v);
}

void bench_report_num(bench_report *r, const char *key, double v, int digits) {
  bench_kv *kv = add(r, key, 1);
  if (kv != NULL) format_num(kv->value, sizeof(kv->value), v, digits);
}

/* Writes s as a JSON string body; keys and values are ours, but a host
 * name or a path could still hold a quote or a backslash. */
static void json_string(const char *s) {
  putchar('"');
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if (c == '"' || c == '\\')
      printf("\\%c", c);
    else if (c < 0x20)
      printf("\\u%04x", c);
    else
      putchar(c);
  }
  putchar('"');
}

void bench_report_print_result(const bench_report *r) {
  fputs("RESULT", stdout);
  for (size_t i = 0; i < r->n; i++)
    if (r->kv[i].is_result) printf(" %s=%s", r->kv[i].key, r->kv[i].value);
  putchar('\n');
  fflush(stdout);
}

void bench_report_print(const bench_report *r, int json) {
  if (json) {
    putchar('{');
    for (size_t i = 0; i < r->n; i++) {
      if (i > 0) putchar(',');
      json_string(r->kv[i].key);
      putchar(':');
      if (r->kv[i].is_text)
        json_string(r->kv[i].value);
      else
        fputs(r->kv[i].value, stdout);
    }
    puts("}");
  }
  bench_report_print_result(r);
}
