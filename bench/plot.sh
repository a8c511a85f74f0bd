#!/usr/bin/env bash
# Plots the medians of a results file written by bench/run.sh as one SVG:
# RPC rates, RPC latencies, stream throughput, fan-out deliveries and
# latencies, game deliveries, game latencies and the memory of an idle
# connection, one panel each (panels without data are left out), with the
# peers' figures of bench/peers.tsv beside qrpc's where there are some.
#
#   bench/plot.sh RESULTS.jsonl [OUT.svg]      (default: RESULTS.svg)
#
# Needs gnuplot (Debian: apt-get install gnuplot-nox).
set -euo pipefail

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}
case ${1:-} in
-h | --help) usage; exit 0 ;;
esac
if [ $# -lt 1 ] || [ $# -gt 2 ]; then
  usage >&2
  exit 2
fi
results=$1
out=${2:-${results%.jsonl}.svg}
here=$(cd "$(dirname "$0")" && pwd)

if ! command -v gnuplot >/dev/null; then
  echo "plot.sh: gnuplot is not installed (Debian: apt-get install gnuplot-nox)" >&2
  exit 1
fi
[ -r "$results" ] || { echo "plot.sh: cannot read $results" >&2; exit 1; }

tmp=$(mktemp -d "${TMPDIR:-/tmp}/qrpc-bench-plot.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
awk -f "$here/median.awk" -v mode=tsv "$results" >"$tmp/medians.tsv"

# table FILE PATTERN KEY...: one line per workload matching PATTERN (in
# the results' order) with the medians of KEYs ("-" where missing; a KEY
# "a|b" takes a, or b where a is missing).
table() {
  local file=$1 pattern=$2
  shift 2
  awk -F'\t' -v pat="$pattern" -v keys="$*" '
    $1 ~ pat {
      if (!($1 in seen)) { seen[$1] = 1; order[++n] = $1 }
      v[$1, $2] = $3
    }
    END {
      nk = split(keys, k, " ")
      for (i = 1; i <= n; i++) {
        line = order[i]
        any = 0
        for (j = 1; j <= nk; j++) {
          na = split(k[j], alt, "|")
          val = "-"
          for (a = na; a >= 1; a--)
            if ((order[i], alt[a]) in v) val = v[order[i], alt[a]]
          if (val != "-") any = 1
          line = line " " val
        }
        if (any) print line
      }
    }' "$tmp/medians.tsv" >"$tmp/$file"
}

# peer FILE KEYS PEER: appends to FILE's lines the peer's figure for one
# of KEYS ("a|b") from peers.tsv ("-" where it has none).
peer() {
  awk -v keys="^($2)\$" -v name="$3" '
    FNR == NR {
      split($0, f, "\t")
      if ($0 !~ /^#/ && f[2] ~ keys && f[3] == name) p[f[1]] = f[4]
      next
    }
    { print $0 " " (($1 in p) ? p[$1] : "-") }' "$here/peers.tsv" \
    "$tmp/$1" >"$tmp/$1.tmp"
  mv "$tmp/$1.tmp" "$tmp/$1"
}

table rates.dat '^(unary|connect)' 'ops_per_s|conns_per_s'
peer rates.dat 'ops_per_s|conns_per_s' 'gRPC C++ TLS 1.3'
table rpclat.dat '^(unary|connect)' p50_us p99_us
table pubsub.dat '^pubsub-[0-9]+-max' delivered_per_s
peer pubsub.dat delivered_per_s 'NATS 2.9'
peer pubsub.dat delivered_per_s 'Mosquitto 2.0'
table pubsublat.dat '^pubsub' p50_us p99_us p999_us
table stream.dat '^stream' mb_per_s
peer stream.dat mb_per_s 'gRPC C++ TLS 1.3'
table game.dat '^game' recv_per_s server_recv_per_s
peer game.dat 'recv_per_s|server_recv_per_s' 'ENet 1.3.17'
table gamelat.dat '^game' up_p50_us up_p99_us down_p50_us down_p99_us
table idle.dat '^idle' per_conn_bytes

panels=()
# panel FILE TITLE YLABEL PLOT: adds a panel when FILE has data.
panel() {
  [ -s "$tmp/$1" ] || return 0
  panels+=("set title \"$2\"; set ylabel \"$3\"; plot $4")
}
panel rates.dat "RPC: calls (unary) and connections (connect) per second" \
  "per second" "'$tmp/rates.dat' using 2:xtic(1) title 'qrpc', '' using 3 title 'gRPC C++ TLS 1.3'"
panel rpclat.dat "RPC latency (median of runs)" "microseconds" \
  "'$tmp/rpclat.dat' using 2:xtic(1) title 'p50', '' using 3 title 'p99'"
panel stream.dat "Bidi streams: echoed payload" "MB/s (1e6 bytes/s)" \
  "'$tmp/stream.dat' using 2:xtic(1) title 'qrpc', '' using 3 title 'gRPC C++ TLS 1.3'"
panel pubsub.dat "Fan-out through the broker, 128 B messages" "deliveries/s" \
  "'$tmp/pubsub.dat' using 2:xtic(1) title 'qrpc', '' using 3 title 'NATS 2.9', '' using 4 title 'Mosquitto 2.0'"
panel pubsublat.dat "Fan-out: publish-to-delivery latency" "microseconds" \
  "'$tmp/pubsublat.dat' using 2:xtic(1) title 'p50', '' using 3 title 'p99', '' using 4 title 'p99.9'"
panel game.dat "Game: states per second" "states/s" \
  "'$tmp/game.dat' using 2:xtic(1) title 'qrpc: delivered to clients', '' using 3 title 'qrpc: received by the server', '' using 4 title 'ENet 1.3.17'"
panel gamelat.dat "Game latency" "microseconds" \
  "'$tmp/gamelat.dat' using 2:xtic(1) title 'up p50', '' using 3 title 'up p99', '' using 4 title 'down p50', '' using 5 title 'down p99'"
panel idle.dat "Idle connections: server memory" "bytes per connection" \
  "'$tmp/idle.dat' using 2:xtic(1) title 'per connection'"

if [ ${#panels[@]} -eq 0 ]; then
  echo "plot.sh: no workload in $results has results to plot" >&2
  exit 1
fi
rows=$(((${#panels[@]} + 1) / 2))
{
  echo "set terminal svg size 1200,$((rows * 380)) dynamic font 'sans,10' noenhanced"
  echo "set output '$out'"
  echo "set datafile missing '-'"
  echo "set style data histograms"
  echo "set style histogram clustered gap 1"
  echo "set style fill solid 0.8 border -1"
  echo "set boxwidth 0.9"
  echo "set grid ytics"
  echo "set yrange [0:*]"
  echo "set key top right"
  echo "set xtics nomirror"
  echo "set format y '%.0f'"
  echo "set multiplot layout $rows,2 title 'qrpc-bench: medians of $(basename "$results")'"
  for p in "${panels[@]}"; do echo "$p"; done
  echo "unset multiplot"
} >"$tmp/plot.gp"
gnuplot "$tmp/plot.gp"
echo "plot.sh: wrote $out"
