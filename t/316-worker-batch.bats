#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 316-worker-batch: mqlb-worker --batch, batches of mqlb-protocol(7) on the
# worker side, with mosquitto_pub/mosquitto_sub playing the balancer on a
# real broker; then two batch workers behind the real pipeline.
bats_require_minimum_version 1.5.0
load helpers/common.bash
load helpers/spy.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

# hex LINE...: the lines, each ended by a newline, in hex as the spy has them.
hex() { printf '%s\n' "$@" | od -An -v -tx1 | tr -d ' \n'; }
# seen_msg TOPIC LINE...: one message on TOPIC whose payload is exactly LINEs.
seen_msg() {
	local t=$1
	shift
	grep -qxF -- "$t|$(hex "$@")" "$T/hex.out"
}
# msgs TOPIC: how many messages on exactly TOPIC.
msgs() { grep -c -- "^$1|" "$T/hex.out" || true; }
# done_lines: the lines of every message on lb/done/g1/w1, and UNENDED for
# a message whose payload does not end with a newline.
done_lines() {
	perl -ne 'chomp; my ($t, $x) = split /\|/, $_, 2; next unless $t eq "lb/done/g1/w1";
		my $p = pack("H*", $x); print $p; print "UNENDED\n" unless $p =~ /\n\z/' "$T/hex.out"
}
has_done() { done_lines | grep -qxF -- "$1"; }
stats() { stat_in "$T/${WID:-w1}.sock" "$1"; }
stat_is() { [ "$(stats "$1")" = "$2" ]; }
# solo [OPTIONS] [-- COMMAND]: mqlb-worker $WID (w1 unless set) of group g1
# on jobs/#, alone with the test's fake balancer; stats on $T/$WID.sock.
solo() {
	local wid=${WID:-w1}
	ready_fifo "$wid"
	bg "$wid" ready3 "$T/$wid.ready" mqlb-worker -p "$BROKER_PORT" -h 127.0.0.1 -g g1 -t 'jobs/#' \
		--wid "$wid" --listen "$T/$wid.sock" --ready-fd 3 --fallback none "$@"
	wait_ready "$wid"
}
# solo_records [OPTIONS]: w1 in record mode, no command: work records on
# $T/w1.out, done records written to fd 4.
solo_records() {
	mkfifo "$T/in"
	ready_fifo w1
	bg w1 sh -c 'in=$1 ready=$2; shift 2; exec "$@" <"$in" 3>"$ready"' sh "$T/in" "$T/w1.ready" \
		mqlb-worker -p "$BROKER_PORT" -h 127.0.0.1 -g g1 -t 'jobs/#' --wid w1 \
		--listen "$T/w1.sock" --ready-fd 3 --fallback none "$@"
	exec 4>"$T/in"
	wait_ready w1
}
# batch LINE...: one batch award to w1, a line each, as mqlb-dispatch sends it.
batch() {
	printf '%s\n' "$@" >"$T/batch.pl"
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t "$PREFIX/job/g1/${WID:-w1}/batch" -f "$T/batch.pl" -q 0
}
# job UUID MTOPIC PAYLOAD: a single award, as before batches.
job() { pub "$PREFIX/job/g1/w1/$1/$2" "$3" -q 1; }
# RUN: a job that writes what it got (id, topic, payload) to $JOBDIR/<id>;
# HOLD: the same, then waits for $JOBDIR/go-<last level of its topic> (10 s
# at most: none is left behind).
# (JOB is common.bash's, the job of its worker.)
RUN='f="$JOBDIR/$MQLB_ID"; { echo "id=$MQLB_ID topic=$MQLB_TOPIC"; cat; } >"$f.tmp"; mv "$f.tmp" "$f"'
HOLD="$RUN"'; i=0; while [ ! -e "$JOBDIR/go-${MQLB_TOPIC##*/}" ] && [ $((i += 1)) -le 200 ]; do sleep 0.05; done'
# ran UUID MTOPIC PAYLOAD: the job UUID saw exactly that topic and payload.
ran() {
	printf 'id=%s topic=%s\n%s' "$1" "$2" "$3" >"$T/expect"
	cmp "$T/expect" "$T/jobs/$1"
}

@test "--batch 4 -j 2: the credit reads exactly '2 batch=4'; without --batch no batch=" {
	broker_start
	spy hex
	solo --batch 4 -j 2 -- true
	wait_for 5 seen "lb/credit/g1/w1|2 batch=4"
	WID=w2 solo -j 2 -- true
	wait_for 5 seen "lb/credit/g1/w2|2"
	[ "$(grep '^lb/credit/g1/w1|' "$T/spy.out" | sort -u)" = "lb/credit/g1/w1|2 batch=4" ]
	! grep -q '^lb/credit/g1/w2|.*batch' "$T/spy.out" || false
}

@test "a batch of two: both jobs run with their topics and payloads (unescaped); their dones come as lines on P/done/group/wid" {
	broker_start
	spy hex
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" solo --batch 4 -j 2 -- sh -c "$RUN"
	wait_for 5 seen "lb/credit/g1/w1|2 batch=4"
	batch "job $U1 1 jobs/a hello" "job $U2 1 jobs/b/c wor%20ld"
	wait_for 5 test -e "$T/jobs/$U1"
	wait_for 5 test -e "$T/jobs/$U2"
	ran "$U1" jobs/a hello
	ran "$U2" jobs/b/c 'wor ld'
	wait_for 5 has_done "$U1 ok"
	wait_for 5 has_done "$U2 ok"
	[ "$(done_lines | wc -l)" = 2 ]
	# none on the single done topics
	! grep -q '^lb/done/g1/w1/' "$T/hex.out" || false
	[ "$(stats batches)" = 1 ]
	[ "$(stats awards)" = 2 ]
	[ "$(stats done_ok)" = 2 ]
}

@test "record mode: a batch of two gives two work records; dones read in one go leave as ONE message on P/done/group/wid" {
	broker_start
	spy hex
	solo_records --batch 4 -j 2
	wait_for 5 seen "lb/credit/g1/w1|2 batch=4"
	batch "job $U1 1 jobs/a hello" "job $U2 0 jobs/b wor%20ld"
	wait_for 5 lines_in "$T/w1.out" 2 '^work '
	[ "$(sed -n 1p "$T/w1.out")" = "work $U1 1 jobs/a hello" ]
	[ "$(sed -n 2p "$T/w1.out")" = "work $U2 0 jobs/b wor%20ld" ]
	# one write, so one read: both dones end in one turn of the loop
	printf 'done %s\ndone %s\n' "$U1" "$U2" >"$T/dones"
	cat "$T/dones" >&4
	wait_for 5 stat_is done_ok 2
	wait_for 5 eval 'seen_msg lb/done/g1/w1 "$U1 ok" "$U2 ok" || seen_msg lb/done/g1/w1 "$U2 ok" "$U1 ok"'
	[ "$(msgs lb/done/g1/w1)" = 1 ]
	! grep -q '^lb/done/g1/w1/' "$T/hex.out" || false
	exec 4>&-
	wait "$(pidof_bg w1)"
}

@test "a batch of two to a one-slot worker: the first runs, the second is answered 'fail busy' on P/done/group/wid" {
	broker_start
	spy hex
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" solo --batch 4 -j 1 -- sh -c "$HOLD"
	wait_for 5 seen "lb/credit/g1/w1|1 batch=4"
	batch "job $U1 1 jobs/a one" "job $U2 1 jobs/b two"
	wait_for 5 seen_msg lb/done/g1/w1 "$U2 fail busy"
	wait_for 5 test -e "$T/jobs/$U1"
	ran "$U1" jobs/a one
	[ "$(stats busy)" = 1 ]
	[ "$(stats running)" = 1 ]
	touch "$T/jobs/go-a"
	wait_for 5 seen_msg lb/done/g1/w1 "$U1 ok"
	[ ! -e "$T/jobs/$U2" ]
	[ "$(msgs lb/done/g1/w1)" = 2 ]
	! grep -q '^lb/done/g1/w1/' "$T/hex.out" || false
}

@test "bad lines in a batch: one warning each, naming the line; the good lines still run" {
	broker_start
	spy hex
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" solo --batch 4 -j 2 -- sh -c "$RUN"
	wait_for 5 seen "lb/credit/g1/w1|2 batch=4"
	batch "job $U1 1 jobs/a one" "job not-a-uuid 1 jobs/b two" "job $U3 1 jobs/c" \
		"job $U2 1 jobs/d four"
	wait_for 5 has_done "$U1 ok"
	wait_for 5 has_done "$U2 ok"
	ran "$U1" jobs/a one
	ran "$U2" jobs/d four
	grep -qxF 'mqlb-worker: warning: batch award on lb/job/g1/w1/batch, line 2: bad uuid; skipped' "$T/w1.err"
	grep -qxF 'mqlb-worker: warning: batch award on lb/job/g1/w1/batch, line 3: not "job uuid qos mtopic payload [props]"; skipped' "$T/w1.err"
	[ "$(grep -c 'batch award' "$T/w1.err")" = 2 ]
	[ ! -e "$T/jobs/$U3" ]
	[ "$(done_lines | wc -l)" = 2 ]
	[ "$(stats awards)" = 2 ]
}

@test "props in a batch line: rt= and cd= make the job a request, answered on replies/1 with its correlation data" {
	broker_start
	spy hex
	solo -V 5 --reply --batch 4 -- sh -c 'echo "pong $(cat)"'
	wait_for 5 seen "lb/credit/g1/w1|1 batch=4"
	ready_fifo rr
	bg rr ready3 "$T/rr.ready" mqlb-sub -p "$BROKER_PORT" -h 127.0.0.1 -t replies/1 --ready-fd 3
	wait_ready rr
	batch "job $U1 1 jobs/a ping rt=replies/1,cd=abc"
	wait_for 5 lines_in "$T/rr.out" 1 '^msg '
	read -r verb id qos retain filter topic payload props <"$T/rr.out"
	[ "$topic $payload" = "replies/1 pong%20ping%0A" ]
	[[ ",$props," == *",cd=abc,"* ]]
	wait_for 5 has_done "$U1 ok"
}

@test "--batch: bad values and --bid are usage errors, exit 2" {
	run --separate-stderr mqlb-worker -g g1 -t 'jobs/#' --batch -1
	[ "$status" -eq 2 ]
	[ "${stderr_lines[0]}" = 'mqlb-worker: error: --batch: bad number "-1" (0 to 65535)' ]
	run --separate-stderr mqlb-worker -g g1 -t 'jobs/#' --batch 70000
	[ "$status" -eq 2 ]
	[ "${stderr_lines[0]}" = 'mqlb-worker: error: --batch: bad number "70000" (0 to 65535)' ]
	run --separate-stderr mqlb-worker -g g1 -t 'jobs/#' --batch x
	[ "$status" -eq 2 ]
	[ "${stderr_lines[0]}" = 'mqlb-worker: error: --batch: bad number "x" (0 to 65535)' ]
	run --separate-stderr mqlb-worker -g g1 -t 'jobs/#' --batch 2 --bid
	[ "$status" -eq 2 ]
	[ "${stderr_lines[0]}" = 'mqlb-worker: error: --batch is for credit workers, not with --bid' ]
	[ -z "$output" ]
}

@test "without --batch: a message on P/job/group/wid/batch is ignored with a warning and runs nothing" {
	broker_start
	spy hex
	mkdir "$T/jobs"
	JOBDIR="$T/jobs" solo -j 2 -- sh -c "$RUN"
	wait_for 5 seen "lb/credit/g1/w1|2"
	batch "job $U1 1 jobs/a one"
	wait_for 5 grep -qxF "mqlb-worker: warning: award on lb/job/g1/w1/batch: no uuid in the topic; ignored" "$T/w1.err"
	# a single award after it still runs, and acks on its own topic
	job "$U2" jobs/b two
	wait_for 5 seen "lb/done/g1/w1/$U2|ok"
	ran "$U2" jobs/b two
	[ ! -e "$T/jobs/$U1" ]
	[ "$(stats awards)" = 1 ]
	[ "$(stats batches)" = 0 ]
	[ "$(msgs lb/done/g1/w1)" = 0 ]
}

# once N: each of job-1..job-N started exactly once.
once() {
	awk -v n="$1" '$1 == "start" { c[$3]++ }
		END { for (i = 1; i <= n; i++) if (c["job-" i] != 1) { print "job-" i " ran " c["job-" i] + 0 " times"; bad = 1 }
		      exit bad }' "$T/log"
}
sub_stat() { stat_in "$T/sub.sock" "$1"; }

@test "end to end: two --batch 4 -j 4 workers behind the pipeline, 200 jobs in a burst: each runs once, in batches, and the spool empties" {
	broker_start
	touch "$T/log" "$T/records"
	SUBOPTS="--listen $T/sub.sock" AUCTIONOPTS="--listen $T/a.sock" pipeline
	worker w1 0 --batch 4 -j 4 --listen "$T/w1.sock"
	worker w2 0 --batch 4 -j 4 --listen "$T/w2.sock"
	wait_balanced
	publish 200
	wait_for 30 settled 200 || { account 200; false; }
	once 200
	account 200 | grep -qx 'dropped 0'
	[ "$(stat_in "$T/a.sock" batches)" -gt 0 ]
	[ "$(($(stat_in "$T/w1.sock" batches) + $(stat_in "$T/w2.sock" batches)))" -gt 0 ]
	# no worker was sent more than it could take
	[ "$(stat_in "$T/w1.sock" busy)" = 0 ]
	[ "$(stat_in "$T/w2.sock" busy)" = 0 ]
	! grep -q ' fail ' "$T/records" || false
	# every done, all of them lines of P/done/g/wid messages, reached mqlb-sub
	wait_for 10 eval '[ "$(sub_stat spool_live)" = 0 ]'
	[ "$(sub_stat spool_finished)" = 200 ]
	[ "$(sub_stat dones)" = 200 ]
}
