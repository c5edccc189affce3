#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 800-stat: mqlb-stat against the stats sockets of real mqlb-auction,
# mqlb-worker and mqlb-health processes: table, --prom, --json, --watch,
# failures.
load helpers/common.bash
bats_require_minimum_version 1.5.0
setup() { mqlb_setup; }
teardown() {
	exec 5>&- 2>/dev/null || true
	mqlb_teardown
}

# auction: mqlb-auction with its stats on $T/a.sock, records fed on fd 5.
auction() {
	ready_fifo a
	fed a mqlb-auction -h 127.0.0.1 -p "$BROKER_PORT" --ready-fd 3 --listen "$T/a.sock"
	wait_ready a
}

# worker NAME SLOTS [OPTIONS]: an mqlb-worker of group g with its socket.
worker() {
	local name=$1 slots=$2
	shift 2
	ready_fifo "$name"
	# (the fifo opened by the background job, not here: that would block)
	mqlb-worker -h 127.0.0.1 -p "$BROKER_PORT" -g g -t 'jobs/#' -j "$slots" \
		--listen "$T/$name.sock" --ready-fd 3 "$@" -- cat \
		>"$T/$name.out" 2>"$T/$name.err" 3>"$T/$name.ready" &
	echo $! >>"$T/pids"
	wait_ready "$name"
}

# cell STAT COLUMN: the value in the table output $output.
cell() { awk -v s="$1" -v c="$2" '$1 == s { print $(c + 1) }' <<<"$output"; }

@test "usage: no socket, bad numbers, unknown option: exit 2; --help on stdout" {
	run mqlb-stat
	[ "$status" -eq 2 ]
	[[ "$output" == *"mqlb-stat: error: which socket?"* ]]
	[[ "$output" == *"usage: mqlb-stat"* ]]
	run mqlb-stat --watch 0 "$T/x.sock"
	[ "$status" -eq 2 ]
	[[ "$output" == *"--watch: bad duration \"0\""* ]]
	run mqlb-stat --timeout x "$T/x.sock"
	[ "$status" -eq 2 ]
	[[ "$output" == *"--timeout: bad duration"* ]]
	run mqlb-stat --bogus "$T/x.sock"
	[ "$status" -eq 2 ]
	run --separate-stderr mqlb-stat --help
	[ "$status" -eq 0 ]
	[[ "$output" == "usage: mqlb-stat"* ]]
	[ -z "$stderr" ]
}

@test "a socket that does not answer: one stderr line, exit 1" {
	run --separate-stderr mqlb-stat "$T/none.sock"
	[ "$status" -eq 1 ]
	[ "$stderr" = "mqlb-stat: error: $T/none.sock: connect: No such file or directory" ]
	# A listener that never answers: the timeout.
	perl -MIO::Socket::UNIX -e 'my $s = IO::Socket::UNIX->new(Local => $ARGV[0], Listen => 1) or die; sleep 30' \
		"$T/mute.sock" &
	echo $! >>"$T/pids"
	wait_for 5 test -S "$T/mute.sock"
	run --separate-stderr mqlb-stat --timeout 0.3 "$T/mute.sock"
	[ "$status" -eq 1 ]
	[ "$stderr" = "mqlb-stat: error: $T/mute.sock: no answer within 0.3 seconds" ]
}

@test "table: one column per socket, the figures of a real auction and two workers" {
	broker_start
	auction
	worker w1 3
	worker w2 1
	# One record through the auction: no group wants it, a dead letter.
	feed "msg $U1 0 0 none/# none/a p1"
	wait_for 5 grep -q "^drop $U1 nogroup" "$T/a.out"
	run --separate-stderr mqlb-stat "$T/a.sock" "$T/w1.sock" "$T/w2.sock"
	[ "$status" -eq 0 ]
	[ -z "$stderr" ]
	[ "$(head -n1 <<<"$output" | tr -s ' ')" = "stat $T/a.sock $T/w1.sock $T/w2.sock" ]
	[ "$(cell msg 1)" = 1 ]
	[ "$(cell drop_nogroup 1)" = 1 ]
	[ "$(cell connected 1)" = 1 ]
	[ "$(cell connected 2)" = 1 ]
	[ "$(cell connected 3)" = 1 ]
	# Stats of the workers alone: "-" in the auction's column.
	[ "$(cell slots 1)" = - ]
	[ "$(cell slots 2)" = 3 ]
	[ "$(cell slots 3)" = 1 ]
	# Every row has a cell for each of the three sockets.
	awk 'NF != 4 { exit 1 }' <<<"$output"

	# One socket down among answering ones: left out, named, exit 1.
	run --separate-stderr mqlb-stat "$T/w1.sock" "$T/gone.sock"
	[ "$status" -eq 1 ]
	[ "$(head -n1 <<<"$output" | tr -s ' ')" = "stat $T/w1.sock" ]
	[ "$(cell slots 1)" = 3 ]
	[ "$stderr" = "mqlb-stat: error: $T/gone.sock: connect: No such file or directory" ]
}

@test "per-worker figures of the auction: jobs in flight, counts, award-to-done latency" {
	broker_start
	auction
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p1" "msg $U2 1 0 jobs/# jobs/b p2"
	# w1 bids for both (a bid is fungible), then finishes one after 0.3 s
	t0=$(date +%s%N)
	pub "$PREFIX/rsp/g/w1/$U1/jobs/a" "" -V 5
	pub "$PREFIX/rsp/g/w1/$U2/jobs/b" "" -V 5
	wait_for 5 grep -q "^assign $U2 g w1" "$T/a.out"
	run mqlb-stat "$T/a.sock"
	[ "$(cell worker.g/w1.inflight 1)" = 2 ]
	[ "$(cell worker.g/w1.awarded 1)" = 2 ]
	[ "$(cell worker.g/w1.us_p50 1)" = 0 ]
	sleep 0.3
	pub "$PREFIX/done/g/w1/$U1" "ok" -q 1 -V 5
	pub "$PREFIX/done/g/w1/$U2" "fail crashed" -q 1 -V 5
	wait_for 5 grep -q "^done $U2 g w1 fail" "$T/a.out"
	took=$((($(date +%s%N) - t0) / 1000))
	run mqlb-stat "$T/a.sock"
	[ "$(cell worker.g/w1.done_ok 1)" = 1 ]
	[ "$(cell worker.g/w1.done_fail 1)" = 1 ]
	# U2 failed once: it waits for a new bid, so w1 holds nothing now
	[ "$(cell worker.g/w1.inflight 1)" = 0 ]
	# 0.3 s and more, but not more than the test took (plus the
	# histogram's 3.2%: it reports a bucket's upper bound)
	p50=$(cell worker.g/w1.us_p50 1)
	echo "p50 $p50 us, the test took $took us"
	[ "$p50" -ge 300000 ]
	[ "$p50" -le $((took * 1032 / 1000 + 1)) ]
	[ "$(cell worker.g/w1.us_p99 1)" = "$p50" ]
	# Prometheus: the worker is a label of one family per field
	run mqlb-stat --prom "$T/a.sock"
	[[ "$output" == *"mqlb_worker_done_ok{socket=\"$T/a.sock\",worker=\"g/w1\"} 1"* ]]
}

@test "--prom: mqlb_NAME{socket=...}, mqlb_up, each metric's samples together" {
	broker_start
	auction
	worker w1 3
	run --separate-stderr mqlb-stat --prom "$T/a.sock" "$T/w1.sock" "$T/down.sock"
	[ "$status" -eq 1 ]
	[ "$stderr" = "mqlb-stat: error: $T/down.sock: connect: No such file or directory" ]
	grep -qxF "mqlb_up{socket=\"$T/a.sock\"} 1" <<<"$output"
	grep -qxF "mqlb_up{socket=\"$T/w1.sock\"} 1" <<<"$output"
	grep -qxF "mqlb_up{socket=\"$T/down.sock\"} 0" <<<"$output"
	grep -qxF "mqlb_slots{socket=\"$T/w1.sock\"} 3" <<<"$output"
	grep -qxF "mqlb_connected{socket=\"$T/a.sock\"} 1" <<<"$output"
	grep -qxF "mqlb_connected{socket=\"$T/w1.sock\"} 1" <<<"$output"
	# Every line is a comment or a sample of the text format.
	grep -v '^#' <<<"$output" | grep -Evx '[a-zA-Z_][a-zA-Z0-9_]*\{socket="[^"]*"(,[a-zA-Z_][a-zA-Z0-9_]*="[^"]*")*\} [0-9]+' && false
	# No metric name comes back after another one started.
	grep -v '^#' <<<"$output" | sed 's/{.*//' | uniq | sort | uniq -d | grep . && false
	true
}

@test "--prom: a dotted stat of mqlb-health becomes a label" {
	broker_start
	ready_fifo h
	mqlb-health --vip 192.0.2.10:1883 --listen "$T/h.sock" --ready-fd 3 \
		"b1=127.0.0.1:$BROKER_PORT" >"$T/h.out" 2>"$T/h.err" 3>"$T/h.ready" &
	echo $! >>"$T/pids"
	wait_ready h
	wait_for 10 grep -q "^real 192.0.2.10:1883 127.0.0.1 [1-9]" "$T/h.out"
	run mqlb-stat --prom "$T/h.sock"
	[ "$status" -eq 0 ]
	grep -qxF "mqlb_broker_up{socket=\"$T/h.sock\",broker=\"192.0.2.10:1883.b1\"} 1" <<<"$output"
	grep -qxF "mqlb_brokers{socket=\"$T/h.sock\"} 1" <<<"$output"
	run mqlb-stat "$T/h.sock"
	[ "$(cell broker.192.0.2.10:1883.b1.up 1)" = 1 ]
}

@test "--json: one object a round, every figure of each socket, the ones down with why" {
	broker_start
	auction
	worker w1 3
	feed "msg $U1 0 0 none/# none/a p1"
	wait_for 5 grep -q "^drop $U1 nogroup" "$T/a.out"
	run --separate-stderr mqlb-stat --json "$T/a.sock" "$T/w1.sock" "$T/gone.sock"
	[ "$status" -eq 1 ]
	[ "$(wc -l <<<"$output")" -eq 1 ]
	python3 -c '
import json, sys
d = json.loads(sys.stdin.read())
a, w, g = d["sockets"]
assert isinstance(d["time"], float)
assert a["path"] == sys.argv[1] and a["up"] is True and a["stats"]["msg"] == 1, a
assert a["stats"]["drop_nogroup"] == 1
assert w["up"] is True and w["stats"]["slots"] == 3, w
assert g == {"path": sys.argv[2], "up": False, "error": "connect: No such file or directory"}, g
' "$T/a.sock" "$T/gone.sock" <<<"$output"
	# With --watch: one line a round, no escapes.
	bg js mqlb-stat --json --watch 0.1 "$T/w1.sock"
	wait_for 10 lines_in "$T/js.out" 3
	kill -INT "$(pidof_bg js)"
	wait_for 5 exited "$(pidof_bg js)"
	! grep -q $'\e' "$T/js.out" || false
	head -n 3 "$T/js.out" | python3 -c 'import json, sys; [json.loads(l) for l in sys.stdin]'
}

@test "--watch: redraws with a clear screen, growth per second, until SIGINT, then exit 0" {
	broker_start
	worker w1 2
	auction
	mqlb-stat --watch 0.2 "$T/w1.sock" "$T/a.sock" >"$T/watch.out" 2>"$T/watch.err" &
	local pid=$!
	echo $pid >>"$T/pids"
	wait_for 10 eval '[ "$(grep -o $'"'"'\e\[H\e\[2J'"'"' "$T/watch.out" | wc -l)" -ge 3 ]'
	grep -q "^slots  *2  *-$" "$T/watch.out"
	# Records keep coming: the auction's msg count shows its growth.
	(
		for i in $(seq 1 400); do
			printf 'msg 11111111-2222-4333-8444-%012d 0 0 none/# none/a p\n' "$i" >&5
			sleep 0.02
		done
	) &
	echo $! >>"$T/pids"
	wait_for 15 grep -Eq '^msg  +-  +[0-9]+ \(\+[0-9]+\.[0-9]/s\)$' "$T/watch.out"
	# A figure that did not grow has no rate.
	! grep -q '^slots .*/s' "$T/watch.out" || false
	kill -INT "$pid"
	wait_for 5 exited "$pid"
	run wait "$pid"
	[ "$status" -eq 0 ]
	[ ! -s "$T/watch.err" ]
}

@test "--metrics-interval: each socket's figures retained on P/metrics/{component}/{id}" {
	broker_start
	worker w1 3
	local host
	host=$(hostname | tr '/+#' '___')
	bg pubstat mqlb-stat --metrics-interval 0.2 -h 127.0.0.1 -p "$BROKER_PORT" \
		"worker/one=$T/w1.sock" "$T/w1.sock" "$T/gone.sock"
	# Retained: a client that comes later sees the figures at once.
	wait_for 10 eval 'mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -t "$PREFIX/metrics/#" -v -W 1 -C 2 \
		>"$T/m.out" 2>/dev/null; [ "$(grep -c "^$PREFIX/metrics/" "$T/m.out")" -eq 2 ]'
	grep -qx "$PREFIX/metrics/worker/one stat slots 3" "$T/m.out"
	grep -qx "$PREFIX/metrics/w1/$host stat slots 3" "$T/m.out"
	run mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -t "$PREFIX/metrics/worker/one" -C 1 -W 5
	[ "$status" -eq 0 ]
	grep -qx "stat connected 1" <<<"$output"
	grep -qx "stat slots 3" <<<"$output"
	# The socket that is not there: one line, not one per round (five
	# more rounds, each publishing the figures before it asks gone.sock).
	bg rounds mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -t "$PREFIX/metrics/worker/one" -v -C 6
	wait_for 10 exited "$(pidof_bg rounds)"
	[ "$(grep -c "^$PREFIX/metrics/worker/one " "$T/rounds.out")" -eq 6 ]
	[ "$(grep -c "gone.sock: connect: No such file or directory" "$T/pubstat.err")" -eq 1 ]
	kill -TERM "$(pidof_bg pubstat)"
	wait_for 5 exited "$(pidof_bg pubstat)"
	run wait "$(pidof_bg pubstat)"
	[ "$status" -eq 0 ]
}

@test "--metrics-interval: bad levels and --prom with it are usage errors" {
	run mqlb-stat --metrics-interval 1 "a+b/x=$T/s.sock"
	[ "$status" -eq 2 ]
	[[ "$output" == *'component: "a+b" is not a topic level'* ]]
	run mqlb-stat --metrics-interval 1 --prom "$T/s.sock"
	[ "$status" -eq 2 ]
	[[ "$output" == *"no --prom or --watch with it"* ]]
	run mqlb-stat --metrics-interval 0 "$T/s.sock"
	[ "$status" -eq 2 ]
}
