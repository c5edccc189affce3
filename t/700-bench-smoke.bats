#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 700-bench-smoke: mqlb-bench still runs: the 10-second smoke mode drives
# the real pipeline, $share and a private RabbitMQ, and prints its table,
# CSV and plot. No figure is asserted: timing belongs to the benchmark, not
# to tests.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

# The pipeline through a directory of this test's own, so the check for
# leftovers cannot see other tests' processes.
bench() {
	mkdir -p "$T/bin"
	for c in mqlb-sub mqlb-auction mqlb-dispatch; do ln -sf "$MQLB_BUILDDIR/$c" "$T/bin/$c"; done
	"$MQLB_BUILDDIR/mqlb-bench" --bindir "$T/bin" "$@"
}

# The published and done columns of a table row.
row_counts() { awk -v m="$1" '$1 == m { print $5, $6 }' "$T/table"; }

# Each side of $T/table published and finished jobs.
both_sides_ran() {
	local m published done
	for m in mqlb share; do
		read -r published done < <(row_counts "$m")
		echo "$m: published=$published done=$done"
		[ "$published" -gt 0 ] || return 1
		[ "$done" -gt 0 ] || return 1
	done
}

# The RabbitMQ side needs librabbitmq at build time and rabbitmq-server
# (Debian's, run as root; anyone else runs the scripts it wraps).
# MQLB_REQUIRE_RABBITMQ=1 makes a missing one a failure instead of a skip.
require_rabbitmq() {
	local why=
	grep -q '^#define HAVE_LIBRABBITMQ 1' "$MQLB_BUILDDIR/config.h" ||
		why="mqlb-bench built without librabbitmq"
	command -v rabbitmq-server >/dev/null || [ -x /usr/sbin/rabbitmq-server ] ||
		why="no rabbitmq-server"
	[ -z "$why" ] && return 0
	[ "${MQLB_REQUIRE_RABBITMQ:-0}" = 1 ] && { echo "$why" >&2; return 1; }
	skip "$why (set MQLB_REQUIRE_RABBITMQ=1 to make this a failure)"
}

@test "bad arguments are usage errors" {
	run bench --scenario 9
	[ "$status" -eq 2 ]
	[[ "$output" == *'--scenario: bad number "9"'* ]]
	[[ "$output" == *'usage: mqlb-bench'* ]]
	run bench --service 0 --load 0.5
	[ "$status" -eq 2 ]
	[[ "$output" == *'--load needs service times above 0'* ]]
	run bench --drain -1
	[ "$status" -eq 2 ]
	[[ "$output" == *'--drain: bad duration "-1"'* ]]
	run bench --sides mqlb,kafka
	[ "$status" -eq 2 ]
	[[ "$output" == *'--sides: bad side "kafka" (mqlb, share or rabbit)'* ]]
	run bench --help
	[ "$status" -eq 0 ]
	[[ "$output" == 'usage: mqlb-bench'* ]]
}

@test "smoke mode runs both sides and prints the table (and a plot)" {
	plot=()
	command -v gnuplot >/dev/null && plot=(--plot "$T/cdf.png")
	bench --smoke --sides mqlb,share -v "${plot[@]}" >"$T/table" 2>"$T/err"
	grep -q '^mode  *jobs/s' "$T/table"
	both_sides_ran
	if [ "${#plot[@]}" -gt 0 ]; then
		[ "$(head -c 4 "$T/cdf.png" | tail -c 3)" = PNG ]
	fi
	# No child is left behind, nor a side's directory (logs, sockets, spool).
	! pgrep -f "$T/bin/mqlb-" >/dev/null || false
	dirs=$(sed -n 's/.*: broker on 127\.0\.0\.1:[0-9]*, logs in \(.*\)$/\1/p' "$T/err")
	[ "$(wc -w <<<"$dirs")" -eq 2 ]
	for d in $dirs; do [ ! -e "$d" ]; done
}

@test "--nagle: the brokers keep mosquitto's stock setting (Nagle on), and both sides finish" {
	bench --smoke --sides mqlb,share --nagle --keep -v >"$T/table" 2>"$T/err"
	cat "$T/table" "$T/err"
	dirs=$(grep -o 'kept /tmp/mqlb-bench\.[A-Za-z0-9]*' "$T/err" | cut -d' ' -f2)
	for d in $dirs; do cp "$d/mosquitto.conf" "$T/conf.$(basename "$d")"; rm -rf "$d"; done
	[ "$(grep -c 'kept /tmp/mqlb-bench' "$T/err")" -eq 2 ]
	[ "$(cat "$T"/conf.* | grep -c '^set_tcp_nodelay false$')" -eq 2 ]
	grep -q '^# mqlb-bench: .*, mosquitto without set_tcp_nodelay$' "$T/table"
	both_sides_ran
	# without it, the brokers set TCP_NODELAY (what the README asks)
	bench --smoke --share --keep -v >"$T/table" 2>"$T/err"
	d=$(grep -o 'kept /tmp/mqlb-bench\.[A-Za-z0-9]*' "$T/err" | cut -d' ' -f2)
	cp "$d/mosquitto.conf" "$T/conf.default"
	rm -rf "$d"
	grep -qx 'set_tcp_nodelay true' "$T/conf.default"
}

@test "--csv prints a header and one row per mode" {
	bench --smoke --share --csv >"$T/csv" 2>"$T/err"
	head -n1 "$T/csv" | grep -q '^label,mode,ok,workers,slots,'
	[ "$(wc -l <"$T/csv")" -eq 2 ]
	grep -q '^,share,1,4,1,' "$T/csv"
}

@test "--parallel runs both sides at once, each on its own broker" {
	bench --smoke --sides mqlb,share --parallel -v >"$T/table" 2>"$T/err" &
	pid=$!
	# Both sides' brokers run at the same time, one of them under the
	# forked child: count the mosquittos among the bench's descendants.
	most=0
	while kill -0 "$pid" 2>/dev/null; do
		n=0 todo=("$pid")
		while [ "${#todo[@]}" -gt 0 ]; do
			p=${todo[0]} todo=("${todo[@]:1}")
			[[ "$(cat /proc/$p/comm 2>/dev/null)" == mosquitto ]] && n=$((n + 1))
			todo+=($(pgrep -P "$p" || true))
		done
		[ "$n" -gt "$most" ] && most=$n
		sleep 0.1
	done
	wait "$pid"
	echo "brokers at once: $most"
	[ "$most" -eq 2 ]
	grep -q 'both sides at once' "$T/table"
	[ "$(grep -c 'broker on 127.0.0.1' "$T/err")" -eq 2 ]
	both_sides_ran
	! pgrep -f "$T/bin/mqlb-" >/dev/null || false
	# --serial after --scenario undoes the scenario's --parallel.
	bench --scenario 1 --smoke --serial --sides share,mqlb >"$T/table" 2>"$T/err"
	! grep -q 'both sides at once' "$T/table" || false
	read -r published done < <(row_counts share)
	[ "$done" -gt 0 ]
}

@test "--parallel: a side that cannot run fails the run with its reason" {
	run bench --smoke --sides mqlb,share --parallel --broker /nonexistent/mosquitto
	echo "$output"
	# the logs it keeps for the user are this test's to remove
	for d in $(grep -o '/tmp/mqlb-bench\.[A-Za-z0-9]*' <<<"$output" | sort -u); do rm -rf "$d"; done
	[ "$status" -ne 0 ]
	[[ "$output" == *'cannot start /nonexistent/mosquitto'* ]]
	! pgrep -f "$T/bin/mqlb-" >/dev/null || false
}

@test "the RabbitMQ side: all three sides at once, nothing lost, the node stopped" {
	require_rabbitmq
	plot=()
	command -v gnuplot >/dev/null && plot=(--plot "$T/cdf.png")
	# About 20 s: RabbitMQ takes about 10 s to accept connections.
	bench --smoke --parallel -v "${plot[@]}" >"$T/table" 2>"$T/err"
	cat "$T/table"
	grep -q 'all three sides at once' "$T/table"
	for m in mqlb share rabbit; do
		read -r published done lost < <(awk -v m="$m" '$1 == m { print $5, $6, $7 }' "$T/table")
		echo "$m: published=$published done=$done lost=$lost"
		[ "$published" -gt 0 ]
		[ "$done" -gt 0 ]
		[ "$lost" -eq 0 ]
	done
	grep -q '^# mqlb vs rabbit: ' "$T/table"
	if [ "${#plot[@]}" -gt 0 ]; then
		[ "$(head -c 4 "$T/cdf.png" | tail -c 3)" = PNG ]
	fi
	# The node was stopped and its directory removed (each node: one that
	# lost a port before it listened starts again on others).
	grep -q 'rabbit: starting node ' "$T/err"
	while read -r node dir; do
		! pgrep -f -- "$node" >/dev/null || false
		[ ! -e "$dir" ]
	done < <(sed -n 's/.*rabbit: starting node \([^ ]*\) .*logs in \(.*\)$/\1 \2/p' "$T/err")
	! pgrep -f "$T/bin/mqlb-" >/dev/null || false
}

@test "the RabbitMQ side: a missing or failing rabbitmq-server is exit 69" {
	if ! grep -q '^#define HAVE_LIBRABBITMQ 1' "$MQLB_BUILDDIR/config.h"; then
		run bench --smoke --rabbit
		[ "$status" -eq 69 ]
		[[ "$output" == *'built without librabbitmq'* ]]
		return
	fi
	run bench --smoke --rabbit --rabbitmq-server /nonexistent/rabbitmq-server
	echo "$output"
	[ "$status" -eq 69 ]
	[[ "$output" == *'the RabbitMQ side: /nonexistent/rabbitmq-server not found'* ]]
	# One that ends before it accepts connections: the others still run,
	# the table says why, the node's logs are kept.
	mkdir -p "$T/fake"
	printf '#!/bin/sh\necho "no broker today"\nexit 3\n' >"$T/fake/rabbitmq-server"
	chmod +x "$T/fake/rabbitmq-server"
	run bench --smoke --sides share,rabbit --rabbitmq-server "$T/fake/rabbitmq-server"
	echo "$output"
	[ "$status" -eq 69 ]
	[[ "$output" == *'rabbit failed: '*'rabbitmq-server exited with status 3 before it accepted connections: "no broker today"'* ]]
	dir=$(echo "$output" | sed -n 's/^rabbit failed: .*(logs in \(.*\))$/\1/p')
	[ -d "$dir" ]
	rm -rf "$dir"
	read -r published done < <(echo "$output" | awk '$1 == "share" { print $5, $6 }')
	[ "$done" -gt 0 ]
}

@test "the RabbitMQ side: a node that loses a port before it listens starts again, 3 times at most" {
	grep -q '^#define HAVE_LIBRABBITMQ 1' "$MQLB_BUILDDIR/config.h" || skip "built without librabbitmq"
	# A server that says eaddrinuse and exits, as a node does whose port
	# another program took between the bench's pick and its bind.
	mkdir -p "$T/fake"
	printf '#!/bin/sh\necho start >>"%s"\necho "{error,{listen_error,eaddrinuse}}"\nexit 1\n' \
		"$T/fake/starts" >"$T/fake/rabbitmq-server"
	chmod +x "$T/fake/rabbitmq-server"
	run bench --smoke --sides share,rabbit -v --rabbitmq-server "$T/fake/rabbitmq-server"
	echo "$output"
	[ "$status" -eq 69 ]
	[ "$(wc -l <"$T/fake/starts")" -eq 3 ]
	[ "$(grep -c 'a port was taken before it listened (eaddrinuse); again on other ports' \
		<<<"$output")" -eq 2 ]
	[[ "$output" == *'rabbit failed: '*'exited with status 1 before it accepted connections'* ]]
	# Only the last node's directory is kept, for its logs.
	mapfile -t dirs < <(sed -n 's/.*rabbit: starting node [^ ]* .*logs in \(.*\)$/\1/p' <<<"$output")
	[ "${#dirs[@]}" -eq 3 ]
	[ ! -e "${dirs[0]}" ]
	[ ! -e "${dirs[1]}" ]
	[ -d "${dirs[2]}" ]
	rm -rf "${dirs[2]}"
}
