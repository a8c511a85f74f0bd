# Medians per workload of a qrpc-bench results file (one flat JSON object
# per line, as bench/run.sh writes them).
#
#   awk -f median.awk -v mode=summary FILE   one line per workload: the
#                                            medians of its RESULT keys
#   awk -f median.awk -v mode=tsv FILE       workload, key, median, runs
#                                            for every numeric key
#
# Only flat objects with plain strings and numbers are understood, which
# is all run.sh writes.

function numeric(v) { return v ~ /^-?[0-9]+(\.[0-9]+)?$/ }

# Splits the object in line into key[i], val[i]; returns the count.
function parse(line,    rest, kv, k, v, n) {
  n = 0
  rest = line
  while (match(rest, /"[^"]*":("[^"]*"|[^,}]*)/)) {
    kv = substr(rest, RSTART, RLENGTH)
    rest = substr(rest, RSTART + RLENGTH)
    k = kv
    sub(/":.*/, "", k)
    sub(/^"/, "", k)
    v = kv
    sub(/^"[^"]*":/, "", v)
    gsub(/^"|"$/, "", v)
    n++
    key[n] = k
    val[n] = v
  }
  return n
}

function median(w, k,    n, i, j, t, a) {
  n = count[w, k]
  for (i = 1; i <= n; i++) a[i] = sample[w, k, i] + 0
  for (i = 2; i <= n; i++) {
    t = a[i]
    for (j = i - 1; j >= 1 && a[j] > t; j--) a[j + 1] = a[j]
    a[j + 1] = t
  }
  if (n % 2) return a[(n + 1) / 2]
  return (a[n / 2] + a[n / 2 + 1]) / 2
}

/^\{/ {
  n = parse($0)
  w = ""
  for (i = 1; i <= n; i++) if (key[i] == "workload") w = val[i]
  if (w == "") next
  if (!(w in seen)) {
    seen[w] = 1
    order[++nw] = w
  }
  runs[w]++
  for (i = 1; i <= n; i++) {
    if (key[i] == "result_keys" && !(w in rkeys)) rkeys[w] = val[i]
    if (!numeric(val[i]) || key[i] == "run") continue
    if (!((w, key[i]) in count)) keys[w] = keys[w] " " key[i]
    c = ++count[w, key[i]]
    sample[w, key[i], c] = val[i]
  }
}

END {
  for (x = 1; x <= nw; x++) {
    w = order[x]
    if (mode == "tsv") {
      nk = split(keys[w], ks, " ")
      for (i = 1; i <= nk; i++)
        printf "%s\t%s\t%.3f\t%d\n", w, ks[i], median(w, ks[i]), count[w, ks[i]]
      continue
    }
    list = rkeys[w]
    if ((w, "server_recv_per_s") in count) list = list " server_recv_per_s"
    line = sprintf("%-14s runs=%d", w, runs[w])
    nk = split(list, ks, " ")
    for (i = 1; i <= nk; i++)
      if ((w, ks[i]) in count)
        line = line sprintf(" %s=%.1f", ks[i], median(w, ks[i]))
    print line
  }
}
