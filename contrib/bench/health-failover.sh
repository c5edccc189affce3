#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# health-failover.sh: time from a broker's death to mqlb-health's weight-0
# record for it, over N deaths, with mqlb-health's default intervals.
#
#   contrib/bench/health-failover.sh [kill|stop] [N]
#
# kill: kill -9 (the kernel closes its sockets: the load connection sees it).
# stop: SIGSTOP (a hung broker: nothing closes, only probe timeouts tell).
# Three mosquitto brokers on 127.0.0.2-4, one port; mqlb-health and
# mosquitto from PATH. Prints each time in ms, then min, median, max.
# Measured 2026-11-25 (loopback, 20 deaths each): kill median 252 ms
# (251-253), stop median 1676 ms (1291-2127).
set -eu
mode=${1:-kill}
n=${2:-20}
case $mode in kill | stop) ;; *) echo "usage: $0 [kill|stop] [N]" >&2; exit 2 ;; esac
dir=$(mktemp -d)
port=$((20000 + RANDOM % 40000))
vip=10.99.0.1:$port
pids=()
cleanup() {
	local p
	for p in "${pids[@]}" ${hpid:-}; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
	rm -rf "$dir"
}
trap cleanup EXIT

start_broker() {
	printf 'listener %s 127.0.0.%s\nallow_anonymous true\nlog_dest none\n' "$port" "$1" >"$dir/m$1.conf"
	mosquitto -c "$dir/m$1.conf" &
	pids[$1]=$!
	disown # no "Killed" notice from the shell
	for _ in $(seq 1 100); do
		(exec 3<>"/dev/tcp/127.0.0.$1/$port") 2>/dev/null && return 0
		sleep 0.05
	done
	echo "mosquitto on 127.0.0.$1:$port did not start" >&2
	exit 111
}
for k in 2 3 4; do start_broker "$k"; done

coproc H { exec mqlb-health --quiet --vip "$vip" 127.0.0.2 127.0.0.3 127.0.0.4 </dev/null; }
hpid=$H_PID
# until LINE-REGEX: read records until one matches (30 s at most).
until_rec() {
	local line
	while IFS= read -r -t 30 -u "${H[0]}" line; do
		[[ $line =~ $1 ]] && return 0
	done
	echo "no record matching $1" >&2
	exit 1
}
until_rec "^real $vip 127.0.0.4 "

times=()
for i in $(seq 1 "$n"); do
	# Settle (up, its load connection back, a few probes in), then die at a
	# random point of the probe interval.
	sleep "2.$((RANDOM % 1000))"
	if [ "$mode" = kill ]; then
		t0=$EPOCHREALTIME
		kill -9 "${pids[2]}"
	else
		t0=$EPOCHREALTIME
		kill -STOP "${pids[2]}"
	fi
	until_rec "^real $vip 127.0.0.2 0\$"
	t1=$EPOCHREALTIME
	ms=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.0f", (b - a) * 1000 }')
	times+=("$ms")
	echo "death $i: ${ms} ms"
	if [ "$mode" = kill ]; then
		while kill -0 "${pids[2]}" 2>/dev/null; do sleep 0.01; done
		start_broker 2
	else
		kill -CONT "${pids[2]}"
	fi
	until_rec "^real $vip 127.0.0.2 [1-9]"
done
printf '%s\n' "${times[@]}" | sort -n | awk -v mode="$mode" '
	{ t[NR] = $1 }
	END {
		med = NR % 2 ? t[(NR + 1) / 2] : (t[NR / 2] + t[NR / 2 + 1]) / 2
		printf "%s: n=%d min=%d ms median=%g ms max=%d ms\n", mode, NR, t[1], med, t[NR]
	}'
