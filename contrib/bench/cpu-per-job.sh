#!/bin/sh
# SPDX-License-Identifier: MIT
# cpu-per-job.sh: mqlb-bench scenario 2 (trivial jobs, max rate) for one side, and the CPU
# time each process spent per job in the middle of the run, from /proc/PID/stat.
set -eu

usage() { echo "usage: cpu-per-job.sh [--bindir dir] [--mqlb | --share | --rabbit] [--duration s] [--batch n]"; }
bindir=
side=--mqlb
duration=12
batch=
while [ $# -gt 0 ]; do
	case $1 in
	--bindir) bindir=$2; shift 2 ;;
	--mqlb | --share | --rabbit) side=$1; shift ;;
	--duration) duration=$2; shift 2 ;;
	--batch) batch=$2; shift 2 ;;
	-h | --help) usage; exit 0 ;;
	*) echo "cpu-per-job.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
	esac
done
[ "$duration" -ge 6 ] 2>/dev/null || { echo "cpu-per-job.sh: --duration: at least 6 seconds" >&2; exit 2; }
bench=${bindir:+$bindir/}mqlb-bench
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

# snap FILE: "pid name utime+stime" of every process of the run, in ticks
snap() {
	for p in $(pgrep -x 'mosquitto|mqlb-sub|mqlb-auction|mqlb-dispatch|mqlb-bench|beam.smp' || true); do
		awk -v p="$p" '{ print p, $2, $14 + $15 }' "/proc/$p/stat" 2>/dev/null || true
	done | sort >"$1"
}

"$bench" --scenario 2 "$side" ${bindir:+--bindir "$bindir"} --duration "$duration" \
	${batch:+--batch "$batch"} >"$tmp/out" 2>&1 &
pid=$!
# the middle of the run: past its start, before its end
sleep 3
snap "$tmp/a"
t0=$(date +%s.%N)
sleep $((duration - 5))
snap "$tmp/b"
t1=$(date +%s.%N)
wait "$pid"
cat "$tmp/out"
rate=$(awk '$1 == "mqlb" || $1 == "share" || $1 == "rabbit" { print $2; exit }' "$tmp/out")
echo "CPU per job (us), at the run's $rate jobs/s:"
join "$tmp/a" "$tmp/b" | awk -v tick="$(getconf CLK_TCK)" -v t0="$t0" -v t1="$t1" -v rate="$rate" '
	{ cpu = ($5 - $3) / tick / (t1 - t0); sum += cpu
	  printf "  %-16s %5.1f%% of a CPU  %6.1f us\n", $2, cpu * 100, cpu / rate * 1e6 }
	END { printf "  %-16s %5.1f%% of a CPU  %6.1f us\n", "all", sum * 100, sum / rate * 1e6 }'
