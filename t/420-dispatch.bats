#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 420-dispatch: mqlb-dispatch publishes assign records to P/work/... and
# writes sent records; everything else passes through.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() {
	exec 5>&- 2>/dev/null || true
	mqlb_teardown
}

# dispatch [OPTIONS]: mqlb-dispatch reading records written with feed.
dispatch() {
	fed d mqlb-dispatch -h 127.0.0.1 -p "${PORT:-$BROKER_PORT}" --listen "$T/d.sock" "$@"
}
out_has() { grep -qxF -- "$1" "$T/d.out"; }

# work [-F FORMAT]: a subscriber to P/work/# printing, by default,
# topic|qos|user properties|payload; subscribed when it returns (a marker it
# printed proves it).
work() {
	bg work mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -q 2 -t "$PREFIX/work/#" \
		-F '%t|%q|%P|%p' "$@"
	wait_for 10 eval 'pub "$PREFIX/work/mark" m; sleep 0.1; grep -q "^$PREFIX/work/mark|" "$T/work.out"'
}
got() { grep -qxF -- "$1" "$T/work.out"; }

@test "bad options: exit 2 with the option named" {
	run mqlb-dispatch --max-inflight 0
	[ "$status" -eq 2 ]
	[[ "$output" == *"--max-inflight"* ]]
	run mqlb-dispatch --drain-timeout soon
	[ "$status" -eq 2 ]
	[[ "$output" == *"--drain-timeout"* ]]
	run mqlb-dispatch -q 3
	[ "$status" -eq 2 ]
	run mqlb-dispatch extra
	[ "$status" -eq 2 ]
	[[ "$output" == *"unexpected argument"* ]]
}

@test "assign: published to P/work/{group}/{wid}/{mtopic} with mqlb-id, then a sent record" {
	broker_start
	work
	dispatch
	feed "assign $U1 g w1 1 jobs/a/b hello%20world"
	wait_for 5 out_has "sent $U1 g w1"
	wait_for 5 got "$PREFIX/work/g/w1/jobs/a/b|1|mqlb-id:$U1|hello world"
}

@test "the record's QoS, capped by -q; QoS 0 is sent at once" {
	broker_start
	work
	dispatch -q 1
	feed "assign $U1 g w1 2 t/a x" "assign $U2 g w1 0 t/b y"
	wait_for 5 out_has "sent $U1 g w1"
	wait_for 5 out_has "sent $U2 g w1"
	wait_for 5 got "$PREFIX/work/g/w1/t/a|1|mqlb-id:$U1|x"
	wait_for 5 got "$PREFIX/work/g/w1/t/b|0|mqlb-id:$U2|y"
}

@test "a binary payload and MQTT 5 properties reach the worker intact" {
	broker_start
	# topic|response topic|correlation data|payload in hex
	work -F '%t|%R|%D|%x'
	dispatch
	feed "assign $U1 g w1 1 t/a %00%01%FF%25%0A- rt=reply/t,cd=abc"
	wait_for 5 out_has "sent $U1 g w1"
	wait_for 5 got "$PREFIX/work/g/w1/t/a|reply/t|abc|0001ff250a2d"
}

@test "MQTT 3.1.1: published without properties" {
	broker_start
	work
	dispatch -V 311
	feed "assign $U1 g w1 1 t/a v3"
	wait_for 5 out_has "sent $U1 g w1"
	wait_for 5 got "$PREFIX/work/g/w1/t/a|1||v3"
}

@test "other records pass through unchanged, in order" {
	broker_start
	dispatch
	feed "drop $U1 nobid t/a p" "done $U2 g w1 ok" "something new %25" "assign $U3 g w1 0 t/a p"
	wait_for 5 out_has "sent $U3 g w1"
	run cat "$T/d.out"
	[ "${lines[0]}" = "drop $U1 nobid t/a p" ]
	[ "${lines[1]}" = "done $U2 g w1 ok" ]
	[ "${lines[2]}" = "something new %25" ]
}

@test "malformed assign records: one stderr line each; the stage goes on" {
	broker_start
	dispatch
	feed "assign $U1 g w1 1 t/a" "assign short g w1 1 t/a p" "assign $U1 g w1 3 t/a p" \
		"assign $U1 g/x w1 1 t/a p" "assign $U1 g w%00x 1 t/a p" "assign $U1 g w1 1 t/%00 p" \
		"assign $U2 g w1 0 t/ok p"
	wait_for 5 out_has "sent $U2 g w1"
	grep -q "line 1: assign record needs 7 or 8 fields" "$T/d.err"
	grep -q "line 2: assign record: bad uuid" "$T/d.err"
	grep -q "line 3: assign record: bad qos" "$T/d.err"
	grep -q "line 4: assign record: bad group or worker id" "$T/d.err"
	grep -q "line 5: assign record: bad group or worker id" "$T/d.err"
	grep -q "line 6: assign record: bad mtopic" "$T/d.err"
	[ "$(wc -l <"$T/d.out")" -eq 1 ]
}

@test "broker away: awards wait, then go out once it is up" {
	broker_start
	broker_stop
	PORT=$BROKER_PORT dispatch
	feed "assign $U1 g w1 1 t/a late"
	sleep 1
	[ ! -s "$T/d.out" ]
	broker_run b
	wait_for 15 out_has "sent $U1 g w1"
}

@test "EOF: waits for the acknowledgements, exits 0; SIGTERM exits 0" {
	broker_start
	dispatch
	feed "assign $U1 g w1 1 t/a p"
	exec 5>&-
	wait_for 5 exited "$(cat "$T/d.pid")"
	wait "$(cat "$T/d.pid")"
	out_has "sent $U1 g w1"
	rm "$T/d.in"
	dispatch
	sleep 0.5
	kill -TERM "$(cat "$T/d.pid")"
	# A signalled dispatch still takes what is in its pipe, up to the end.
	sleep 0.3
	kill -0 "$(cat "$T/d.pid")"
	exec 5>&-
	wait_for 5 exited "$(cat "$T/d.pid")"
	wait "$(cat "$T/d.pid")"
}

@test "SIGTERM with the broker gone: gives up after --drain-timeout, names what was unacknowledged" {
	broker_start
	ready_fifo d
	dispatch --drain-timeout 0.5 --ready-fd 3
	# connected: the award goes into the socket of a broker that is stopped
	wait_ready d
	kill -STOP "$(cat "$T/broker-b/pid")"
	feed "assign $U1 g w1 1 t/a p"
	sleep 0.3
	kill -TERM "$(cat "$T/d.pid")"
	wait_for 5 exited "$(cat "$T/d.pid")"
	kill -CONT "$(cat "$T/broker-b/pid")"
	wait "$(cat "$T/d.pid")"
	grep -q "1 award not acknowledged by the broker at exit" "$T/d.err"
}

@test "stats on --listen" {
	broker_start
	dispatch
	feed "assign $U1 g w1 0 t/a p" "x y"
	wait_for 5 out_has "sent $U1 g w1"
	run perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
		print $s "stats\n"; while (<$s>) { print; last if /^ok/ }' "$T/d.sock"
	[ "$status" -eq 0 ]
	[[ "$output" == *"stat sent 1"* ]]
	[[ "$output" == *"stat passed 1"* ]]
	[[ "$output" == *ok* ]]
}

@test "an assign the broker refuses: drop refused naming the group, with rt and cd; an unpublishable one too" {
	printf 'topic readwrite #\ntopic deny %s/work/g/bad/#\n' "$PREFIX" >"$T/acl"
	broker_start b "acl_file $T/acl"
	dispatch
	feed "assign $U1 g bad 1 t/a p rt=re/x,cd=c%01d" "assign $U2 g good 1 t/b q rt=re/y"
	wait_for 5 out_has "drop $U1 refused g t/a p rt=re/x,cd=c%01d"
	wait_for 5 out_has "sent $U2 g good"
	# a topic MQTT cannot carry (not UTF-8): unpublishable; the record
	# carries the byte as it came (fields escape only what splits them)
	feed "assign $U3 g good 1 t/%FF r rt=re/z"
	wait_for 5 out_has "drop $U3 unpublishable g t/"$'\xff'" r rt=re/z"
	[ "$(grep -c '^drop ' "$T/d.out")" = 2 ]
}
