#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 310-worker-protocol: mqlb-worker --bid, the bid protocol of mqlb-protocol(7)
# seen from outside, with mosquitto_pub/mosquitto_sub playing the balancer
# on a real broker.
load helpers/common.bash
load helpers/spy.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

# stats NAME: one value from the worker's stats socket.
stats() {
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
		print $s "stats\n";
		while (<$s>) { last if /^ok/; print }' "$T/w.sock" | awk -v n="$1" '$2 == n { print $3 }'
}
stat_is() { [ "$(stats "$1")" = "$2" ]; }
# worker [OPTIONS] [-- COMMAND]: start mqlb-worker w1 of group g1 on jobs/#.
worker() {
	ready_fifo w
	bg w ready3 "$T/w.ready" mqlb-worker --bid -p "$BROKER_PORT" -h 127.0.0.1 -g g1 -t 'jobs/#' \
		--wid w1 --listen "$T/w.sock" --ready-fd 3 "$@"
	wait_ready w
}
# award UUID MTOPIC PAYLOAD [mosquitto_pub options]: what mqlb-dispatch sends.
award() {
	local u=$1 t=$2 p=$3
	shift 3
	pub "$PREFIX/work/g1/w1/$t" "$p" -q 1 -V 5 -D publish user-property mqlb-id "$u" "$@"
}
# A job that writes what it got and waits for $T/go-$MQLB_TOPIC's last level.
JOB='f="$JOBDIR/$MQLB_ID"; { echo "id=$MQLB_ID topic=$MQLB_TOPIC group=$MQLB_GROUP wid=$MQLB_WID"; cat; } >"$f.tmp"; mv "$f.tmp" "$f"; while [ ! -e "$JOBDIR/go-${MQLB_TOPIC##*/}" ]; do sleep 0.05; done; exit ${MQLB_TOPIC##*/x}'

@test "announces its topic at connect" {
	broker_start
	spy
	worker --fallback none -- true
	wait_for 5 seen "lb/sub/g1|jobs/#"
}

@test "after a suback it bids on a request on the exact topic, with free=" {
	broker_start
	spy
	# reservations held for the whole test, however slow it runs
	worker --fallback none -j 3 --reserve-timeout 60 -- true
	pub lb/suback/g1 'jobs/#' -q 1
	pub "lb/req/$U1/jobs/a/b" ""
	wait_for 5 seen "lb/rsp/g1/w1/$U1/jobs/a/b|free=3"
	# Not a uuid: not a request.
	pub "lb/req/not-a-uuid-not-a-uuid-not-a-uuid-xx/jobs/c" ""
	pub "lb/req/$U2/jobs/d" ""
	wait_for 5 seen "lb/rsp/g1/w1/$U2/jobs/d|free=2"
	! grep -q "not-a-uuid" <(grep '^lb/rsp' "$T/spy.out") || false
	# The balancer asking again for the same message is a new request.
	pub "lb/req/$U1/jobs/a/b" ""
	wait_for 5 seen "lb/rsp/g1/w1/$U1/jobs/a/b|free=1"
	[ "$(stats bids)" = 3 ]
}

@test "a topic filter that also matches the protocol's topics (#, fallback direct): one bid, one job" {
	broker_start
	spy
	ready_fifo w
	bg w ready3 "$T/w.ready" mqlb-worker --bid -p "$BROKER_PORT" -h 127.0.0.1 -g g1 -t '#' \
		--wid w1 --listen "$T/w.sock" --ready-fd 3 -j 3 --fallback direct --suback-timeout 0.2 -- true
	wait_ready w
	wait_for 5 stat_is fallback 1
	# lb/req/+/# and # both match: the copy through # is not a job.
	pub "lb/req/$U1/jobs/a" ""
	wait_for 5 seen "lb/rsp/g1/w1/$U1/jobs/a|free=3"
	pub lb/work/g1/w1/jobs/a 'once' -q 1 -V 5 -D publish user-property mqlb-id "$U1"
	wait_for 5 seen "lb/done/g1/w1/$U1|ok free=3"
	[ "$(stats bids)" = 1 ]
	[ "$(stats awards)" = 1 ]
	[ "$(stats fallback_deliveries)" = 0 ]
	[ "$(stats requests)" = 1 ]
}

@test "an award runs the command with the payload on stdin and its environment; done carries free=" {
	broker_start
	spy
	export JOBDIR=$T
	worker --fallback none -- sh -c "$JOB"
	touch "$T/go-x0" "$T/go-x3"
	award "$U1" jobs/x0 'hello world'
	wait_for 5 seen "lb/done/g1/w1/$U1|ok free=1"
	[ "$(cat "$T/$U1")" = "id=$U1 topic=jobs/x0 group=g1 wid=w1
hello world" ]
	award "$U2" jobs/x3 'failing'
	wait_for 5 seen "lb/done/g1/w1/$U2|fail exit=3 free=1"
	[ "$(stats done_ok)" = 1 ]
	[ "$(stats done_fail)" = 1 ]
}

@test "a large binary payload reaches the command's stdin byte for byte" {
	broker_start
	export JOBDIR=$T
	worker --fallback none -- sh -c 'cat >"$JOBDIR/got.tmp"; mv "$JOBDIR/got.tmp" "$JOBDIR/got"'
	head -c 700000 /dev/urandom >"$T/big"
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t lb/work/g1/w1/jobs/big -f "$T/big" -q 1 -V 5 \
		-D publish user-property mqlb-id "$U1"
	wait_for 10 test -e "$T/got"
	cmp "$T/big" "$T/got"
	wait_for 5 stat_is done_ok 1
}

@test "a full worker does not bid; its done offers the freed slot instead (MQTT 5)" {
	broker_start
	spy
	export JOBDIR=$T
	worker --fallback none -j 1 --reserve-timeout 60 -- sh -c "$JOB"
	pub lb/suback/g1 'jobs/#' -q 1
	award "$U1" jobs/x0 'busy'
	wait_for 5 test -e "$T/$U1"
	pub "lb/req/$U2/jobs/x0" ""
	wait_for 5 stat_is requests 1
	touch "$T/go-x0"
	wait_for 5 seen "lb/done/g1/w1/$U1|ok free=1"
	wait_for 5 stat_is reserved 1
	! grep -q "^lb/rsp/" "$T/spy.out" || false
	[ "$(stats bids)" = 0 ]
}

@test "a full worker bids late on the newest request when a slot frees (MQTT 3.1.1)" {
	broker_start
	spy
	export JOBDIR=$T
	worker --fallback none -j 1 -V 311 --reserve-timeout 60 -- sh -c "$JOB"
	pub lb/suback/g1 'jobs/#' -q 1
	pub lb/work/g1/w1/jobs/x0 'busy' -q 1
	wait_for 5 test -e "$T/local-1"
	pub "lb/req/$U1/jobs/x0" ""
	pub "lb/req/$U2/jobs/x0" ""
	wait_for 5 stat_is requests 2
	! grep -q "^lb/rsp/" "$T/spy.out" || false
	touch "$T/go-x0"
	wait_for 5 seen "lb/rsp/g1/w1/$U2/jobs/x0|"
	! grep -q "^lb/rsp/g1/w1/$U1" "$T/spy.out" || false
	[ "$(stats late_bids)" = 1 ]
	# No done under MQTT 3.1.1.
	! grep -q "^lb/done/" "$T/spy.out" || false
}

@test "an award with no slot and no reservation is answered fail busy (MQTT 5)" {
	broker_start
	spy
	export JOBDIR=$T
	worker --fallback none -j 1 -- sh -c "$JOB"
	award "$U1" jobs/x0 'first'
	wait_for 5 test -e "$T/$U1"
	award "$U2" jobs/x0 'second'
	wait_for 5 seen "lb/done/g1/w1/$U2|fail busy"
	[ ! -e "$T/$U2" ]
	[ "$(stats over_awards)" = 1 ]
	touch "$T/go-x0"
	wait_for 5 seen "lb/done/g1/w1/$U1|ok free=1"
}

@test "an over-award under MQTT 3.1.1 waits in the queue and runs" {
	broker_start
	export JOBDIR=$T
	worker --fallback none -j 1 -V 311 -- sh -c "$JOB"
	pub lb/work/g1/w1/jobs/x0 'first' -q 1
	pub lb/work/g1/w1/jobs/x0 'second' -q 1
	wait_for 5 test -e "$T/local-1"
	wait_for 5 stat_is queued 1
	[ ! -e "$T/local-2" ]
	touch "$T/go-x0"
	wait_for 5 test -e "$T/local-2"
	[ "$(tail -n1 "$T/local-2")" = second ]
	[ "$(stats over_awards)" = 1 ]
}

@test "no suback: falls back to \$share and takes work; a suback undoes it" {
	broker_start
	spy
	export JOBDIR=$T
	worker --suback-timeout 0.2 -- sh -c "$JOB"
	touch "$T/go-x0"
	wait_for 5 stat_is fallback 1
	pub jobs/x0 'direct one' -q 1
	wait_for 5 test -e "$T/local-1"
	[ "$(tail -n1 "$T/local-1")" = 'direct one' ]
	pub lb/suback/g1 'jobs/#' -q 1
	wait_for 5 stat_is subacks 1
	pub jobs/x0 'not for the worker now' -q 1
	award "$U1" jobs/x0 'through the balancer'
	wait_for 5 test -e "$T/$U1"
	[ ! -e "$T/local-2" ]
	[ "$(stats fallback_deliveries)" = 1 ]
	# Fallback deliveries are not the balancer's: no done for them.
	! grep -q "^lb/done/g1/w1/local" "$T/spy.out" || false
}

@test "fallback deliveries wait for a slot, up to --queue; beyond that they are dropped and counted" {
	broker_start
	export JOBDIR=$T
	worker -j 1 --queue 1 --suback-timeout 0.2 -- sh -c "$JOB"
	wait_for 5 stat_is fallback 1
	pub jobs/x0 'one' -q 1
	wait_for 5 test -e "$T/local-1"
	pub jobs/x0 'two' -q 1
	wait_for 5 stat_is queued 1
	pub jobs/x0 'three' -q 1
	wait_for 5 stat_is dropped 1
	grep -q "mqlb-worker: warning: queue full (--queue 1): job local-3 on jobs/x0 dropped" "$T/w.err"
	touch "$T/go-x0"
	wait_for 5 test -e "$T/local-2"
	[ "$(tail -n1 "$T/local-2")" = two ]
	wait_for 5 stat_is done_ok 2
	[ ! -e "$T/local-3" ]
}

@test "--fallback direct subscribes the topic itself and skips the protocol's own topics" {
	broker_start
	export JOBDIR=$T
	ready_fifo w
	bg w ready3 "$T/w.ready" mqlb-worker --bid -p "$BROKER_PORT" -h 127.0.0.1 -g g1 -t '#' --wid w1 \
		--listen "$T/w.sock" --ready-fd 3 --fallback direct --suback-timeout 0.2 -- sh -c "$JOB"
	wait_ready w
	touch "$T/go-x0"
	wait_for 5 stat_is fallback 1
	pub jobs/x0 'one' -q 1
	wait_for 5 test -e "$T/local-1"
	[ "$(stats fallback_deliveries)" = 1 ]
	[ "$(tail -n1 "$T/local-1")" = one ]
}

@test "--fallback none waits for a balancer" {
	broker_start
	export JOBDIR=$T
	worker --fallback none --suback-timeout 0.2 -- sh -c "$JOB"
	wait_for 5 stat_is fallback 1
	pub jobs/x0 'nobody takes this' -q 1
	award "$U1" jobs/x0 'marker'
	touch "$T/go-x0"
	wait_for 5 test -e "$T/$U1"
	[ ! -e "$T/local-1" ]
	[ "$(stats fallback_deliveries)" = 0 ]
}

@test "kill -9: the broker publishes the last will lb/gone/{group}/{wid}" {
	broker_start
	spy
	worker --fallback none -- true
	kill -KILL "$(pidof_bg w)"
	wait_for 10 seen "lb/gone/g1/w1|"
}

@test "record mode: work records out, done and fail records in" {
	broker_start
	spy
	mkfifo "$T/in"
	ready_fifo w
	bg w sh -c 'exec mqlb-worker --bid -p "$1" -h 127.0.0.1 -g g1 -t "jobs/#" --wid w1 -j 2 \
		--fallback none --listen "$2/w.sock" --ready-fd 3 <"$2/in" 3>"$2/w.ready"' sh "$BROKER_PORT" "$T"
	exec 4>"$T/in"
	wait_ready w
	award "$U1" jobs/a 'two words' -D publish content-type text/plain
	award "$U2" jobs/b ''
	wait_for 5 lines_in "$T/w.out" 2 '^work '
	grep -qxF "work $U1 1 jobs/a two%20words ct=text/plain" "$T/w.out"
	grep -qxF "work $U2 1 jobs/b -" "$T/w.out"
	echo "done $U1" >&4
	echo "fail $U2 no-luck" >&4
	wait_for 5 seen "lb/done/g1/w1/$U1|ok free=1"
	wait_for 5 seen "lb/done/g1/w1/$U2|fail no-luck free=1"
	echo "bogus $U1" >&4
	echo "done $U3" >&4
	echo "fail $U1" >&4
	wait_for 5 grep -q "line 5: fail takes <id> <reason>; skipped" "$T/w.err"
	grep -q "mqlb-worker: warning: line 3: not a done or fail record; skipped" "$T/w.err"
	grep -q "mqlb-worker: warning: line 4: no job $U3 running; ignored" "$T/w.err"
	exec 4>&-
	wait "$(pidof_bg w)"
}

@test "record mode under MQTT 3.1.1 uses worker-local ids" {
	broker_start
	mkfifo "$T/in"
	ready_fifo w
	bg w sh -c 'exec mqlb-worker --bid -V 311 -p "$1" -h 127.0.0.1 -g g1 -t "jobs/#" --wid w1 \
		--fallback none --listen "$2/w.sock" --ready-fd 3 <"$2/in" 3>"$2/w.ready"' sh "$BROKER_PORT" "$T"
	exec 4>"$T/in"
	wait_ready w
	pub lb/work/g1/w1/jobs/a 'x' -q 1
	wait_for 5 grep -qxF "work local-1 1 jobs/a x" "$T/w.out"
	echo "done local-1" >&4
	wait_for 5 stat_is done_ok 1
	exec 4>&-
}

@test "a request with a response topic gets the command's output as reply, with its correlation data" {
	broker_start
	worker --fallback none -- sh -c 'echo "pong $(cat)"'
	ready_fifo rr
	bg rr ready3 "$T/rr.ready" mqlb-sub -p "$BROKER_PORT" -h 127.0.0.1 -t replies/1 --ready-fd 3
	wait_ready rr
	award "$U1" jobs/a 'ping' -D publish response-topic replies/1 -D publish correlation-data c0ffee
	wait_for 5 lines_in "$T/rr.out" 1 '^msg '
	read -r verb id qos retain filter topic payload props <"$T/rr.out"
	[ "$topic $payload" = "replies/1 pong%20ping%0A" ]
	[[ ",$props," == *",cd=c0ffee,"* ]]
	wait_for 5 stat_is done_ok 1
}

@test "--no-reply: no reply is published" {
	broker_start
	worker --fallback none --no-reply -- sh -c 'echo "pong $(cat)"'
	bg rr mosquitto_sub -p "$BROKER_PORT" -h 127.0.0.1 -V 5 -t 'replies/#' -F '%t|%p'
	wait_for 5 eval 'pub replies/start m; grep -q "^replies/start|m$" "$T/rr.out"'
	award "$U1" jobs/a 'ping' -D publish response-topic replies/1
	wait_for 5 stat_is done_ok 1
	pub replies/end m
	wait_for 5 grep -q '^replies/end|m$' "$T/rr.out"
	! grep -q '^replies/1' "$T/rr.out" || false
}

@test "mosquitto_rr gets an answer from a worker on fallback, with no balancer at all" {
	broker_start
	worker --fallback direct --suback-timeout 0.2 -- sh -c 'echo "pong $(cat)"'
	wait_for 5 stat_is fallback 1
	run timeout 10 mosquitto_rr -p "$BROKER_PORT" -h 127.0.0.1 -t jobs/rpc -e replies/rr -m ping -W 5
	[ "$status" -eq 0 ]
	[ "$output" = "pong ping" ]
}

@test "re-announces after a broker restart" {
	broker_start
	worker --fallback none -k 5 -- true
	broker_restart
	spy
	wait_for 15 seen "lb/sub/g1|jobs/#"
	wait_for 5 stat_is connected 1
}

@test "SIGTERM: stops bidding, finishes the running job, exits 0" {
	broker_start
	spy
	export JOBDIR=$T
	worker --fallback none -j 2 -- sh -c "$JOB"
	pub lb/suback/g1 'jobs/#' -q 1
	award "$U1" jobs/x0 'long job'
	wait_for 5 test -e "$T/$U1"
	kill -TERM "$(pidof_bg w)"
	wait_for 5 stat_is draining 1
	pub "lb/req/$U2/jobs/x0" ""
	pub "lb/req/$U3/jobs/x0" ""
	touch "$T/go-x0"
	wait "$(pidof_bg w)"
	wait_for 5 seen "lb/done/g1/w1/$U1|ok free=0"
	[ "$(tail -n1 "$T/$U1")" = "long job" ]
	! grep -q "^lb/rsp/g1/w1/" "$T/spy.out" || false
}

@test "SIGTERM with a hung job: after --drain-timeout the job is handed back and it exits 0" {
	broker_start
	spy
	export JOBDIR=$T
	worker --fallback none --drain-timeout 0.3 -- sh -c "$JOB"
	award "$U1" jobs/x0 'hangs'
	wait_for 5 test -e "$T/$U1"
	kill -TERM "$(pidof_bg w)"
	wait "$(pidof_bg w)"
	wait_for 5 seen "lb/done/g1/w1/$U1|fail drain-timeout free=0"
	grep -q "drain timeout: 1 job not finished" "$T/w.err"
}
