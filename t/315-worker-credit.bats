#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 315-worker-credit: mqlb-worker's default protocol, credit flow
# (mqlb-protocol(7)), seen from outside, with mosquitto_pub/mosquitto_sub
# playing the balancer on a real broker, under MQTT 5 and 3.1.1.
load helpers/common.bash
load helpers/spy.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

stats() { stat_in "$T/w.sock" "$1"; }
stat_is() { [ "$(stats "$1")" = "$2" ]; }
# worker [OPTIONS] [-- COMMAND]: start mqlb-worker w1 of group g1 on jobs/#.
worker() {
	ready_fifo w
	bg w ready3 "$T/w.ready" mqlb-worker -p "$BROKER_PORT" -h 127.0.0.1 -g g1 -t 'jobs/#' \
		--wid w1 --listen "$T/w.sock" --ready-fd 3 --fallback none "$@"
	wait_ready w
}
# job UUID MTOPIC PAYLOAD: an award as mqlb-dispatch publishes it to a
# credit worker, at QoS 1, with no properties (MQTT 3.1.1 can read it).
job() { pub "$PREFIX/job/g1/w1/$1/$2" "$3" -q 1; }
# A job that writes what it got and waits for $T/go-<last level of its topic>.
JOB='f="$JOBDIR/$MQLB_ID"; { echo "id=$MQLB_ID topic=$MQLB_TOPIC"; cat; } >"$f.tmp"; mv "$f.tmp" "$f"; while [ ! -e "$JOBDIR/go-${MQLB_TOPIC##*/}" ]; do sleep 0.05; done'

@test "announces, then offers its slots on P/credit once it can take jobs; no bids, no requests" {
	broker_start
	spy
	worker -j 3 -- true
	wait_for 5 seen "lb/sub/g1|jobs/#"
	wait_for 5 seen "lb/credit/g1/w1|3"
	# the credit worker never subscribes to requests: a request draws nothing
	pub "lb/req/$U1/jobs/a" ""
	pub lb/mark2 m
	wait_for 5 grep -q '^lb/mark2|' "$T/spy.out"
	! grep -q '^lb/rsp/' "$T/spy.out" || false
	[ "$(stats requests)" = 0 ]
}

# one_job V: under MQTT V, a job on P/job/group/wid/uuid/mtopic runs once
# and is acked with one done, its uuid taken from the topic.
one_job() {
	local v=$1
	broker_start
	spy
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" worker -V "$v" -j 1 -- sh -c "$JOB"
	wait_for 5 seen "lb/credit/g1/w1|1"
	job "$U1" jobs/a/b 'hello world'
	wait_for 5 test -e "$T/jobs/$U1"
	[ "$(head -n1 "$T/jobs/$U1")" = "id=$U1 topic=jobs/a/b" ]
	[ "$(tail -n1 "$T/jobs/$U1")" = "hello world" ]
	touch "$T/jobs/go-b"
	wait_for 5 seen "lb/done/g1/w1/$U1|ok"
	wait_for 5 stat_is done_ok 1
	# exactly one done, no free= (the done is the credit)
	[ "$(grep -c "^lb/done/" "$T/spy.out")" = 1 ]
}

@test "MQTT 5: a job on P/job/... runs once and is acked with one done, its uuid from the topic" {
	one_job 5
}

@test "MQTT 3.1.1: a job on P/job/... runs once and is acked with one done, its uuid from the topic" {
	one_job 311
}
@test "a failing job is acked fail exit=N; a job beyond its slots is refused fail busy at once" {
	broker_start
	spy
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" worker -V 311 -j 1 -- sh -c "$JOB"' ; exit 3'
	wait_for 5 seen "lb/credit/g1/w1|1"
	job "$U1" jobs/a one
	wait_for 5 test -e "$T/jobs/$U1"
	job "$U2" jobs/b two
	wait_for 5 seen "lb/done/g1/w1/$U2|fail busy"
	[ ! -e "$T/jobs/$U2" ]
	[ "$(stats busy)" = 1 ]
	touch "$T/jobs/go-a"
	wait_for 5 seen "lb/done/g1/w1/$U1|fail exit=3"
}

@test "--ahead 1: credit 1+1; a job awarded while the slot runs waits and starts when it frees; one more is refused fail busy" {
	broker_start
	spy
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" worker -j 1 --ahead 1 -- sh -c "$JOB"
	wait_for 5 seen "lb/credit/g1/w1|1+1"
	job "$U1" jobs/a one
	wait_for 5 test -e "$T/jobs/$U1"
	job "$U2" jobs/b two
	wait_for 5 stat_is ahead 1
	[ "$(stats queued)" = 1 ]
	job "$U3" jobs/c three
	wait_for 5 seen "lb/done/g1/w1/$U3|fail busy"
	# held, both: the credit names the running job and the waiting one
	wait_for 12 eval "grep -qxE 'lb/credit/g1/w1\|1\+1 ($U1 $U2|$U2 $U1)' '$T/spy.out'"
	[ ! -e "$T/jobs/$U2" ]
	touch "$T/jobs/go-a"
	wait_for 5 seen "lb/done/g1/w1/$U1|ok"
	wait_for 5 test -e "$T/jobs/$U2"
	touch "$T/jobs/go-b"
	wait_for 5 seen "lb/done/g1/w1/$U2|ok"
	[ "$(stats busy)" = 1 ]
	[ "$(stats done_ok)" = 2 ]
}

@test "the credit message repeats every keepalive with the jobs it holds (in progress)" {
	broker_start
	spy
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" worker -k 5 -j 2 -- sh -c "$JOB"
	wait_for 5 seen "lb/credit/g1/w1|2"
	job "$U1" jobs/a one
	job "$U2" jobs/b two
	wait_for 5 test -e "$T/jobs/$U1"
	wait_for 5 test -e "$T/jobs/$U2"
	wait_for 12 eval "grep -qxE 'lb/credit/g1/w1\|2 ($U1 $U2|$U2 $U1)' '$T/spy.out'"
	touch "$T/jobs/go-a" "$T/jobs/go-b"
	wait_for 5 stat_is done_ok 2
	n=$(wc -l <"$T/spy.out")
	wait_for 12 eval "tail -n +$((n + 1)) '$T/spy.out' | grep -qxF 'lb/credit/g1/w1|2'"
}

@test "a will on P/gone/group/wid under MQTT 3.1.1 too: kill -9 makes the broker say it" {
	broker_start
	spy
	worker -V 311 -k 5 -- true
	wait_for 5 seen "lb/credit/g1/w1|1"
	kill -KILL "$(pidof_bg w)"
	wait_for 10 seen "lb/gone/g1/w1|"
}

@test "SIGTERM: credit 0, the running job finishes and is acked, then gone; exit 0" {
	broker_start
	spy
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" worker -j 1 -- sh -c "$JOB"
	wait_for 5 seen "lb/credit/g1/w1|1"
	job "$U3" jobs/c three
	wait_for 5 test -e "$T/jobs/$U3"
	kill -TERM "$(pidof_bg w)"
	wait_for 5 seen "lb/credit/g1/w1|0 $U3"
	touch "$T/jobs/go-c"
	wait_for 5 seen "lb/done/g1/w1/$U3|ok"
	wait_for 5 seen "lb/gone/g1/w1|"
	wait_for 5 exited "$(pidof_bg w)"
	wait "$(pidof_bg w)"
}

# leaving_with_job: worker w1 (keepalive 5, --drain-timeout 60) runs job
# U3, which waits for $T/jobs/go-c, and has been sent SIGTERM: it leaves,
# with credit 0 naming the job.
leaving_with_job() {
	broker_start
	spy
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" worker -k 5 -j 1 --drain-timeout 60 -- sh -c "$JOB"
	wait_for 5 seen "lb/credit/g1/w1|1"
	job "$U3" jobs/c three
	wait_for 5 test -e "$T/jobs/$U3"
	kill -TERM "$(pidof_bg w)"
	wait_for 5 seen "lb/credit/g1/w1|0 $U3"
}

@test "SIGTERM during a long job: credit 0 naming it every keepalive, after a broker restart too, until its done" {
	leaving_with_job
	# a keepalive later, again: the job is still in progress
	wait_for 10 eval '[ "$(grep -cxF "lb/credit/g1/w1|0 $U3" "$T/spy.out")" -ge 2 ]'
	# and after the broker comes back, again 5 s on (not only at once)
	broker_restart
	t0=$(date +%s.%N)
	spy
	bg ts mosquitto_sub -p "$BROKER_PORT" -h 127.0.0.1 -t "$PREFIX/credit/g1/w1" -F '%U %p'
	wait_for 20 eval "awk -v t=$t0 -v c='0 $U3' '\$1 >= t + 4 && substr(\$0, index(\$0, \" \") + 1) == c { f = 1 }
		END { exit !f }' '$T/ts.out'"
	! grep -q "^lb/sub/" "$T/spy.out" || false
	touch "$T/jobs/go-c"
	wait_for 5 seen "lb/done/g1/w1/$U3|ok"
	wait_for 5 seen "lb/gone/g1/w1|"
	wait_for 5 exited "$(pidof_bg w)"
	wait "$(pidof_bg w)"
}

@test "a second SIGTERM while leaving: the running job is handed back (fail drain-timeout) at once, then gone; exit 0" {
	leaving_with_job
	kill -TERM "$(pidof_bg w)"
	wait_for 5 seen "lb/done/g1/w1/$U3|fail drain-timeout"
	wait_for 5 seen "lb/gone/g1/w1|"
	wait_for 5 exited "$(pidof_bg w)"
	wait "$(pidof_bg w)"
	grep -q 'drain timeout: 1 job not finished' "$T/w.err"
}

@test "P/hello (a balancer that just subscribed): announce and credit at once; while leaving, the credit 0 alone" {
	broker_start
	spy
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" worker -k 60 -j 1 -- sh -c "$JOB"
	wait_for 5 seen "lb/credit/g1/w1|1"
	[ "$(grep -cxF "lb/sub/g1|jobs/#" "$T/spy.out")" = 1 ]
	pub lb/hello ""
	wait_for 5 eval '[ "$(grep -cxF "lb/credit/g1/w1|1" "$T/spy.out")" = 2 ]'
	[ "$(grep -cxF "lb/sub/g1|jobs/#" "$T/spy.out")" = 2 ]
	job "$U3" jobs/c three
	wait_for 5 test -e "$T/jobs/$U3"
	kill -TERM "$(pidof_bg w)"
	wait_for 5 seen "lb/credit/g1/w1|0 $U3"
	pub lb/hello ""
	wait_for 5 eval '[ "$(grep -cxF "lb/credit/g1/w1|0 $U3" "$T/spy.out")" = 2 ]'
	[ "$(grep -cxF "lb/sub/g1|jobs/#" "$T/spy.out")" = 2 ]
	touch "$T/jobs/go-c"
	wait_for 5 seen "lb/gone/g1/w1|"
	wait_for 5 exited "$(pidof_bg w)"
	wait "$(pidof_bg w)"
}

@test "P/hello: first the ok dones of the last minute again, in one message (a balancer down meanwhile missed them); not a fail, not a job held" {
	broker_start
	spy
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" worker -k 60 -j 2 -- sh -c "$JOB"' && [ "$MQLB_TOPIC" != jobs/f ]'
	wait_for 5 seen "lb/credit/g1/w1|2"
	job "$U1" jobs/a one
	job "$U2" jobs/f two
	touch "$T/jobs/go-a" "$T/jobs/go-f"
	wait_for 5 seen "lb/done/g1/w1/$U1|ok"
	wait_for 5 seen "lb/done/g1/w1/$U2|fail exit=1"
	job "$U3" jobs/c three
	wait_for 5 test -e "$T/jobs/$U3"
	pub lb/hello ""
	wait_for 5 seen "lb/credit/g1/w1|2 $U3"
	cat "$T/spy.out"
	# "uuid ok\n": its line, then the empty one after the newline
	[ "$(grep -c '^lb/done/g1/w1|' "$T/spy.out")" = 1 ]
	again=$(grep -n "^lb/done/g1/w1|" "$T/spy.out" | cut -d: -f1)
	[ "$(sed -n "${again}p" "$T/spy.out")" = "lb/done/g1/w1|$U1 ok" ]
	[ "$(sed -n "$((again + 1))p" "$T/spy.out")" = "" ]
	[ "$again" -lt "$(grep -nxF "lb/credit/g1/w1|2 $U3" "$T/spy.out" | cut -d: -f1)" ]
}

@test "an award topic without a uuid: one warning, ignored; the worker goes on" {
	broker_start
	spy
	worker -- true
	wait_for 5 seen "lb/credit/g1/w1|1"
	pub "lb/job/g1/w1/not-a-uuid/jobs/a" x -q 1
	wait_for 5 grep -q "mqlb-worker: warning: award on lb/job/g1/w1/not-a-uuid/jobs/a: no uuid in the topic; ignored" "$T/w.err"
	job "$U1" jobs/a ok
	wait_for 5 seen "lb/done/g1/w1/$U1|ok"
}

@test "the same award again while its job runs: the copy is dropped with one warning; one run, one done" {
	broker_start
	spy
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" worker -j 2 -- sh -c "$JOB"' ; echo ran >>"$JOBDIR/runs"'
	wait_for 5 seen "lb/credit/g1/w1|2"
	job "$U1" jobs/a one
	wait_for 5 test -e "$T/jobs/$U1"
	job "$U1" jobs/a one
	wait_for 5 grep -q "mqlb-worker: warning: job $U1 awarded again while it is here; the copy is dropped" "$T/w.err"
	job "$U2" jobs/b two
	touch "$T/jobs/go-a" "$T/jobs/go-b"
	wait_for 5 seen "lb/done/g1/w1/$U2|ok"
	wait_for 5 seen "lb/done/g1/w1/$U1|ok"
	[ "$(grep -c "^lb/done/g1/w1/$U1|" "$T/spy.out")" = 1 ]
	[ "$(wc -l <"$T/jobs/runs")" = 2 ]
	[ "$(stats awards)" = 2 ]
}

@test "after a broker restart: credit again 5.5 s on, each time after the ok dones of around the outage, again" {
	broker_start
	spy
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" worker -k 30 -j 1 -- sh -c "$JOB"
	wait_for 5 seen "lb/credit/g1/w1|1"
	job "$U1" jobs/a one
	wait_for 5 test -e "$T/jobs/$U1"
	touch "$T/jobs/go-a"
	wait_for 5 seen "lb/done/g1/w1/$U1|ok"
	restart_resync g1 w1 "$U1"
	[ "$(stats replayed)" -ge 1 ]
}
