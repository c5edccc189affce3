#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 805-top: mqlb-stat --top, the live view, under tmux against a real
# balancer (80x24 and 200x60) and as plain text against canned answers;
# the histograms in --prom; the Grafana dashboard's metrics.
load helpers/common.bash
bats_require_minimum_version 1.5.0
setup() { mqlb_setup; }
teardown() {
	[ ! -S "$T/tmux.sock" ] || tmux -S "$T/tmux.sock" kill-server 2>/dev/null || true
	touch "$T/release" # ends the job that hangs
	mqlb_teardown
}

# balancer: the pipeline with its three stats sockets.
balancer() {
	SUBOPTS="--no-spool --listen $T/sub.sock" AUCTIONOPTS="--listen $T/auction.sock" \
		DISPATCHOPTS="--listen $T/dispatch.sock" pipeline
}
socks() { echo "$T/sub.sock $T/auction.sock $T/dispatch.sock"; }

tm() { tmux -S "$T/tmux.sock" "$@"; }
screen() { tm capture-pane -p -t top >"$T/screen"; }
# first_worker: the first row under the WORKER heading, its mark dropped.
first_worker() { awk '/^  WORKER/ { getline; sub(/^!/, ""); print $1; exit }' "$T/screen"; }
# first_of GROUP: the first worker row of GROUP.
first_of() { awk -v g="$1/" '/^  WORKER/ { on = 1; next } on && index($0, "  " g) == 1 { print $1; exit }' "$T/screen"; }

# view_ok: the header, the group row, every worker row, the slow worker
# first of its group, nothing wider or longer than the window.
view_ok() {
	screen
	local w=$1 h=$2 n
	grep -Eq "^mqlb-stat --top .*  sub up  auction up  dispatch up" "$T/screen" || return 1
	grep -Eq '^in [0-9.]+/s  awards [0-9.]+/s  done [0-9.]+/s  drops [0-9.]+/s  waiting [0-9]+  oldest ' \
		"$T/screen" || return 1
	grep -Eq '^  GROUP +WKRS +SLOTS +WAITING +OLDEST +JOBS/S' "$T/screen" || return 1
	grep -Eq '^  g +4 +[0-4]/4 +[0-9]+ ' "$T/screen" || return 1
	for n in fast1 fast2 fast3 slow; do
		grep -Eq "^  g/$n +[0-1]/1 +([0-9.]+|-) " "$T/screen" || return 1
	done
	[ "$(first_of g)" = g/slow ] || return 1
	n=$(awk 'length($0) > m { m = length($0) } END { print m + 0 }' "$T/screen")
	[ "$n" -le "$w" ] || return 1
	[ "$(wc -l <"$T/screen")" -le "$h" ]
}

@test "--top under tmux: header, group, every worker, the slow one first; a stuck one marked; 80x24, 200x60, plain" {
	command -v tmux >/dev/null || skip "no tmux"
	broker_start b "set_tcp_nodelay true"
	balancer
	worker fast1 0.02
	worker fast2 0.02
	worker fast3 0.02
	worker slow 0.4
	wait_balanced
	# A worker of its own group whose fourth job hangs (until teardown).
	bg hsub mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -t "$PREFIX/suback/h" -C 1
	ready_fifo stuck
	bg stuck ready3 "$T/stuck.ready" mqlb-worker -h 127.0.0.1 -p "$BROKER_PORT" -g h -t 'hang/#' \
		--wid stuck --ready-fd 3 -- sh -c 'p=$(cat); [ "$p" = hang ] || exit 0
			for i in $(seq 1 150); do [ ! -e "$0/release" ] || exit 0; sleep 0.2; done' "$T"
	wait_ready stuck
	wait_for 15 exited "$(pidof_bg hsub)"
	for i in 1 2 3; do pub hang/a "q$i" -q 1; done
	# A burst fills every slot (the slow worker gets one), then a steady
	# load, a publisher a job (none is left holding bats' fd 3 when killed).
	publish 8
	bg load sh -c 'exec 3>&-; i=9; while [ $i -lt 300 ]; do
		mosquitto_pub -h 127.0.0.1 -p "$1" -V 5 -q 1 -t jobs/a -m "job-$i"; i=$((i + 1)); sleep 0.03; done' \
		sh "$BROKER_PORT"
	tm new-session -d -s top -x 80 -y 24 "mqlb-stat --top --watch 0.5 $(socks) 2>$T/top.err"
	wait_for 20 view_ok 80 24
	cat "$T/screen"
	[ "$(first_worker)" = g/slow ]
	grep -q "^  h/stuck " "$T/screen"

	# The stuck worker: first, marked, in reverse video.
	pub hang/a hang -q 1
	wait_for 15 eval 'screen; grep -q "^! h/stuck " "$T/screen"'
	cat "$T/screen"
	[ "$(first_worker)" = h/stuck ]
	tm capture-pane -p -e -t top >"$T/screen-e"
	grep -F "h/stuck" "$T/screen-e" | grep -qE $'\e\\[([0-9]+;)*7m'
	grep -Eq '^  h +1 +1/1 ' "$T/screen"

	# Grown to 200x60: the same rows, and the columns that fit now.
	tm resize-window -t top -x 200 -y 60
	wait_for 10 eval 'view_ok 200 60 && grep -Eq "^  WORKER .*DONE +FAIL +ALL50 +ALL99 +AVG +AWARDED$" "$T/screen"'
	cat "$T/screen"
	grep -q "^! h/stuck " "$T/screen"
	[ "$(first_of g)" = g/slow ]
	[ ! -s "$T/top.err" ]
	# the live auction gives a group's wait and publish-to-done
	[ "$(stat_in "$T/auction.sock" group.g.e2e_us_sum)" -gt 0 ]
	[ "$(stat_in "$T/auction.sock" group.g.wait_us_sum)" -gt 0 ]
	grep -Eq '^  GROUP .*WAIT50 +WAIT99 +E2E50 +E2E99' "$T/screen"

	# Not a terminal: plain frames, no escapes, 80 wide; SIGINT ends it, 0.
	COLUMNS='' bg plain mqlb-stat --top --watch 0.2 $(socks)
	wait_for 10 lines_in "$T/plain.out" 2 '^mqlb-stat --top '
	kill -INT "$(pidof_bg plain)"
	wait_for 5 exited "$(pidof_bg plain)"
	run wait "$(pidof_bg plain)"
	[ "$status" -eq 0 ]
	! grep -q $'\e' "$T/plain.out" || false
	grep -Eq '^  g +4 ' "$T/plain.out"
	grep -q '^  g/slow ' "$T/plain.out"
	[ "$(awk 'length($0) > 80' "$T/plain.out" | wc -l)" -eq 0 ]
}

# A fake stage: answers "stats" with $T/round1, then $T/round2 ever after.
fake() {
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Local => shift, Listen => 5) or die "$!";
		my $n = 0;
		while (my $c = $s->accept) {
			<$c>;
			open(my $f, "<", $ARGV[$n < $#ARGV ? $n : $#ARGV]) or die;
			print $c $_ while <$f>;
			print $c "ok\n";
			close $c;
			$n++;
		}' "$T/auction.sock" "$T/round1" "$T/round2" &
	echo $! >>"$T/pids"
	wait_for 5 test -S "$T/auction.sock"
}

# cell FILE ROW COLUMN: the cell of the second frame's ROW under COLUMN.
cell() {
	awk -v r="$2" -v c="$3" '
		/^mqlb-stat --top/ { frame++ }
		frame != 2 { next }
		/^  (GROUP|WORKER) / { delete at; for (i = 2; i <= NF; i++) at[$i] = i; next }
		{ s = $0; sub(/^!/, " ", s); n = split(s, f, " ") }
		n && f[1] == r && (c in at) { print f[at[c]] }' "$1"
}

@test "--top: windowed percentiles in ms from the buckets, wait and publish-to-done when given, stuck first" {
	local common='stat tokens_used 0
stat awarded 100
stat done_ok 90
stat done_fail 0
stat msg 100
stat drop_nobid 0
stat waiting 2
stat oldest_us 1500000
stat group.g.workers 3
stat group.g.workers_live 3
stat group.g.slots 4
stat group.g.inflight 2
stat group.g.waiting 2
stat group.g.oldest_us 1500000
stat group.g.wait_us_b1024 50
stat group.g.e2e_us_b20480 50
stat worker.g/stuck.inflight 1
stat worker.g/stuck.slots 1
stat worker.g/stuck.svc_us 10000
stat worker.g/stuck.done_ok 5
stat worker.g/stuck.us_p99 12288
stat worker.g/stuck.held_us 5000000
stat worker.g/stuck.last_done_us 5000000
stat worker.g/stuck.lat_us_b12288 5
stat worker.g/slow.inflight 1
stat worker.g/slow.slots 1
stat worker.g/slow.svc_us 300000
stat worker.g/slow.done_ok 5
stat worker.g/slow.held_us 100000
stat worker.g/slow.last_done_us 200000
stat worker.g/slow.lat_us_b303104 5
stat worker.g/fast.inflight 0
stat worker.g/fast.slots 2
stat worker.g/fast.svc_us 20000
stat worker.g/fast.us_p50 20480
stat worker.g/fast.us_p99 204800
stat worker.g/fast.last_done_us 3000'
	printf '%s\nstat worker.g/fast.done_ok 80\nstat worker.g/fast.lat_us_b20480 80\n' "$common" >"$T/round1"
	# Since round 1: 10 jobs of 0.2 s on fast, 10 waits of 3 ms, 10 of 53 ms publish to done.
	printf '%s\n' "$common" 'stat worker.g/fast.done_ok 90' 'stat worker.g/fast.lat_us_b20480 80' \
		'stat worker.g/fast.lat_us_b204800 10' 'stat worker.g/fast.lat_us_sum 3648000' \
		'stat group.g.wait_us_b3072 10' 'stat group.g.e2e_us_b53248 10' >"$T/round2"
	fake
	COLUMNS=200 bg top mqlb-stat --top --watch 0.2 "$T/auction.sock" "$T/sub.sock"
	# The second frame (complete once the third starts) has the windows.
	wait_for 10 lines_in "$T/top.out" 3 '^mqlb-stat --top '
	kill -TERM "$(pidof_bg top)"
	wait_for 5 exited "$(pidof_bg top)"
	cat "$T/top.out"
	local out="$T/top.out"
	# The header: the stage that is down, named with why.
	grep -q '^mqlb-stat --top .*  auction up  sub DOWN$' "$out"
	grep -q '^sub: connect: No such file or directory$' "$out"
	grep -Eq '^in 0.0/s  awards 0.0/s  done 0.0/s  drops 0.0/s  waiting 2  oldest 1.5s$' "$out"
	# Workers: the stuck one first and marked, then the slowest.
	[ "$(awk '/^  WORKER/ { n++ } n == 2 && /^[! ] g\// { print (/^!/ ? "!" : "") substr($0, 3, index(substr($0, 3), " ") - 1) }' \
		"$out" | tr '\n' ' ')" = "!g/stuck g/slow g/fast " ]
	# fast: its 10 jobs since the round before, 0.2 s (two digits, in ms);
	# all of them: the stage's own percentiles
	[ "$(cell "$out" g/fast SVC50)" = 200 ]
	[ "$(cell "$out" g/fast SVC99)" = 200 ]
	[ "$(cell "$out" g/fast ALL50)" = 20 ]
	[ "$(cell "$out" g/fast ALL99)" = 200 ]
	[ "$(cell "$out" g/fast AVG)" = 20 ]
	[ "$(cell "$out" g/fast LAST)" = 3.0ms ]
	[ "$(cell "$out" g/fast SLOTS)" = 0/2 ]
	# nothing done since the round before: no window
	[ "$(cell "$out" g/slow SVC50)" = - ]
	[ "$(cell "$out" g/stuck HELD)" = 5.0s ]
	# The group: waits and publish to done since the round before, and
	# the award-to-done window of all its workers.
	[ "$(cell "$out" g WAIT50)" = 3.1 ]
	[ "$(cell "$out" g WAIT99)" = 3.1 ]
	[ "$(cell "$out" g E2E50)" = 53 ]
	[ "$(cell "$out" g SVC50)" = 200 ]
	[ "$(cell "$out" g SLOTS)" = 2/4 ]
	[ "$(cell "$out" g WAITING)" = 2 ]
	[ "$(cell "$out" g OLDEST)" = 1.5s ]

	# The table leaves the buckets out; --prom makes them a histogram.
	run --separate-stderr mqlb-stat "$T/auction.sock"
	[ "$status" -eq 0 ]
	! grep -q '_us_b\|_us_sum' <<<"$output" || false
	grep -q '^worker.g/fast.us_p50 ' <<<"$output"
	run --separate-stderr mqlb-stat --prom "$T/auction.sock"
	[ "$status" -eq 0 ]
	local l="socket=\"$T/auction.sock\",worker=\"g/fast\""
	grep -qxF "# TYPE mqlb_worker_lat_seconds histogram" <<<"$output"
	grep -qxF "mqlb_worker_lat_seconds_bucket{$l,le=\"0.01\"} 0" <<<"$output"
	grep -qxF "mqlb_worker_lat_seconds_bucket{$l,le=\"0.025\"} 80" <<<"$output"
	grep -qxF "mqlb_worker_lat_seconds_bucket{$l,le=\"0.25\"} 90" <<<"$output"
	grep -qxF "mqlb_worker_lat_seconds_bucket{$l,le=\"+Inf\"} 90" <<<"$output"
	grep -qxF "mqlb_worker_lat_seconds_sum{$l} 3.648000" <<<"$output"
	grep -qxF "mqlb_worker_lat_seconds_count{$l} 90" <<<"$output"
	grep -qxF "mqlb_group_wait_seconds_count{socket=\"$T/auction.sock\",group=\"g\"} 60" <<<"$output"
	# each metric's samples together, as before
	grep -v '^#' <<<"$output" | sed 's/{.*//' | uniq | sort | uniq -d | grep . && false
	true
}

@test "--top: usage errors" {
	run mqlb-stat --top --prom "$T/x.sock"
	[ "$status" -eq 2 ]
	[[ "$output" == *"one of --prom, --top and --json"* ]]
	run mqlb-stat --top --json "$T/x.sock"
	[ "$status" -eq 2 ]
	run mqlb-stat --top --metrics-interval 1 "$T/x.sock"
	[ "$status" -eq 2 ]
	[[ "$output" == *"no --top with it"* ]]
	run mqlb-stat --top
	[ "$status" -eq 2 ]
	[[ "$output" == *"which socket?"* ]]
}

@test "contrib/grafana: every metric the dashboard names is one mqlb-stat --prom writes" {
	local dash="$BATS_TEST_DIRNAME/../contrib/grafana/mqlb.json"
	python3 -c 'import json, sys; json.load(open(sys.argv[1]))' "$dash"
	broker_start b "set_tcp_nodelay true"
	balancer
	worker w1 0.01
	wait_balanced
	publish 3
	wait_for 10 eval '[ "$(stat_in "$T/auction.sock" done_ok)" = 3 ]'
	run --separate-stderr mqlb-stat --prom $(socks)
	[ "$status" -eq 0 ]
	grep -v '^#' <<<"$output" | sed 's/{.*//' | sort -u >"$T/written"
	grep -o 'mqlb_[a-z0-9_]*' "$dash" | sort -u >"$T/named"
	[ "$(wc -l <"$T/named")" -ge 10 ]
	comm -23 "$T/named" "$T/written" >"$T/unknown"
	cat "$T/unknown"
	[ ! -s "$T/unknown" ]
}
