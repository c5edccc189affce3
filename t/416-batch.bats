#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 416-batch: batches stage by stage on a real broker: credit batch=n, the
# batch record and --batch-wait of mqlb-auction, dones together on
# P/done/group/wid; mqlb-dispatch's one message on P/job/group/wid/batch;
# mqlb-sub finishing spool entries from batched dones.
bats_require_minimum_version 1.5.0
load helpers/common.bash
setup() { mqlb_setup; }
teardown() {
	exec 5>&- 2>/dev/null || true
	mqlb_teardown
}
# feed1 RECORD...: the records in one write (bash's printf writes a line
# at a time), so the stage reads them in one turn of its loop.
feed1() { env printf '%s\n' "$@" >&5; }

# --- mqlb-auction alone: the test plays mqlb-sub (records) and the workers

# auc [OPTIONS]: mqlb-auction reading records written with feed, with the
# group g on jobs/# known to it when this returns.
auc() {
	ready_fifo a
	fed a mqlb-auction -h 127.0.0.1 -p "$BROKER_PORT" --ready-fd 3 --listen "$T/a.sock" "$@"
	wait_ready a
	feed "group g jobs/#"
	wait_for 5 eval '[ -n "$(astat group.g.workers)" ]'
}
astat() { stat_in "$T/a.sock" "$1"; }
a_has() { grep -qxF -- "$1" "$T/a.out"; }
awards_of() { grep -c "^award $1 " "$T/a.out" || true; }
credit() { pub "$PREFIX/credit/$1/$2" "$3" -q 1; }
done_() { pub "$PREFIX/done/$1/$2/$3" "$4" -q 1; }
# credited SLOTS-AND-MORE: worker g/w1 with that credit, counted.
credited() {
	credit g w1 "$1"
	wait_for 5 eval '[ "$(astat credit)" = 1 ]'
}
# msgs N: msg records for U1..UN (jobs/a, jobs/b...), all in one write.
msgs() {
	local recs=() i
	for i in $(seq 1 "$1"); do
		recs+=("msg $(uu "$i") 1 0 jobs/# jobs/$(ab "$i") p$i")
	done
	feed1 "${recs[@]}"
}
uu() { echo "11111111-2222-4333-8444-55555555555$1"; }
ab() { echo abcdefghi | cut -c "$1"; }
award_line() { echo "award $(uu "$1") g w1 1 jobs/$(ab "$1") p$1"; }
# tail_is LINE...: the last lines of the auction's records are these.
tail_is() {
	[ "$(tail -n $# "$T/a.out")" = "$(printf '%s\n' "$@")" ] ||
		{ echo "records:"; cat "$T/a.out"; false; }
}

@test "auction: credit batch=2, two messages in one write: a batch record, then the two awards; batches 1, batched 2" {
	broker_start
	auc
	credited "2 batch=2"
	msgs 2
	wait_for 5 a_has "$(award_line 2)"
	run cat "$T/a.out"
	[ "${#lines[@]}" -eq 3 ]
	[ "${lines[0]}" = "batch g w1 2" ]
	[ "${lines[1]}" = "$(award_line 1)" ]
	[ "${lines[2]}" = "$(award_line 2)" ]
	[ "$(astat batches)" = 1 ]
	[ "$(astat batched)" = 2 ]
}

@test "auction: a credit worker without batch= gets its awards one by one, no batch record" {
	broker_start
	auc
	credited 2
	msgs 2
	wait_for 5 a_has "$(award_line 2)"
	run cat "$T/a.out"
	[ "${#lines[@]}" -eq 2 ]
	[ "${lines[0]}" = "$(award_line 1)" ]
	[ "${lines[1]}" = "$(award_line 2)" ]
	[ "$(astat batches)" = 0 ]
	[ "$(astat batched)" = 0 ]
}

@test "auction: bad batch= in a credit: one warning naming the payload, credit_bad, nothing awarded to that worker" {
	broker_start
	auc
	# a job waits: a credit taken would give w1 it at once
	msgs 1
	wait_for 5 eval '[ "$(astat group.g.waiting)" = 1 ]'
	for p in "1 batch=0" "1 batch=x" "1 batch=70000" "1 batch=" "1 batch=2x"; do
		credit g w1 "$p"
	done
	wait_for 5 eval '[ "$(astat credit_bad)" = 5 ]'
	for p in "1 batch=0" "1 batch=x" "1 batch=70000" "1 batch=" "1 batch=2x"; do
		grep -qxF "mqlb-auction: warning: credit from g/w1: bad payload \"$p\"; ignored" "$T/a.err"
	done
	[ "$(astat credit)" = 0 ]
	# a good credit after them: the job goes there, and only there
	credit g w2 "1 batch=65535"
	wait_for 5 a_has "award $(uu 1) g w2 1 jobs/a p1"
	[ "$(wc -l <"$T/a.out")" -eq 1 ]
	[ "$(astat credit)" = 1 ]
	[ "$(astat credit_bad)" = 5 ]
}

@test "auction: dones together on P/done/g/w1: a done record a line, the failed job placed again; a bad line warns, the others count" {
	broker_start
	auc
	credited "2 batch=2"
	msgs 2
	wait_for 5 a_has "$(award_line 2)"
	pub "$PREFIX/done/g/w1" "$(uu 1) ok"$'\n'"not-a-uuid ok"$'\n'"$(uu 2) fail oops"$'\n' -q 1
	wait_for 5 eval '[ "$(awards_of "$(uu 2)")" = 2 ]'
	tail_is "done $(uu 1) g w1 ok" "done $(uu 2) g w1 fail%20oops" "$(award_line 2)"
	[ "$(wc -l <"$T/a.out")" -eq 6 ]
	grep -qxF 'mqlb-auction: warning: dones from g/w1: bad line "not-a-uuid ok"; ignored' "$T/a.err"
	[ "$(grep -c 'bad line' "$T/a.err")" = 1 ]
	[ "$(astat done_ok)" = 1 ]
	[ "$(astat done_fail)" = 1 ]
	[ "$(astat forged)" = 1 ]
	# the job placed again alone: no batch record
	[ "$(grep -c '^batch ' "$T/a.out")" = 1 ]
	# and its done on the single topic still counts
	done_ g w1 "$(uu 2)" ok
	wait_for 5 a_has "done $(uu 2) g w1 ok"
	[ "$(astat done_ok)" = 2 ]
}

@test "auction --batch-wait: out of 0..1 or not a number is a usage error" {
	for v in -1 2 x; do
		run --separate-stderr mqlb-auction --batch-wait "$v"
		[ "$status" -eq 2 ]
		[ "${stderr_lines[0]}" = "mqlb-auction: error: --batch-wait: bad duration \"$v\" (seconds, 0 to 1; or with ms)" ]
	done
	# an award held past --ack-timeout would be taken back before it is sent
	run --separate-stderr mqlb-auction --batch-wait 0.5 --ack-timeout 0.5
	[ "$status" -eq 2 ]
	[ "${stderr_lines[0]}" = "mqlb-auction: error: --batch-wait (0.5 s) must be shorter than --ack-timeout (0.5 s)" ]
}

# four jobs for g/w1 (credit 2 batch=2, auction OPTIONS): U1 and U2 out in
# a batch, U3 and U4 waiting.
two_waiting() {
	broker_start
	auc "$@"
	credited "2 batch=2"
	msgs 4
	wait_for 5 a_has "$(award_line 2)"
	[ "$(head -n1 "$T/a.out")" = "batch g w1 2" ]
	[ "$(astat group.g.waiting)" = 2 ]
}
# record_soon LINE: poll for LINE in the auction's records every 10 ms.
record_soon() {
	local i
	for i in $(seq 1 500); do
		a_has "$1" && return 0
		sleep 0.01
	done
	return 1
}

@test "auction --batch-wait 1: while jobs wait, an award is held for the worker's next done; the two go out together" {
	two_waiting --batch-wait 1
	done_ g w1 "$(uu 1)" ok
	record_soon "done $(uu 1) g w1 ok"
	# written in the same turn as the done record had it not been held
	[ "$(awards_of "$(uu 3)")" = 0 ]
	done_ g w1 "$(uu 2)" ok
	wait_for 5 a_has "$(award_line 4)"
	tail_is "done $(uu 1) g w1 ok" "done $(uu 2) g w1 ok" "batch g w1 2" "$(award_line 3)" "$(award_line 4)"
	[ "$(astat batches)" = 2 ]
	[ "$(astat batched)" = 4 ]
}

@test "auction --batch-wait 0: awards made in different loop turns are not held, though jobs wait" {
	two_waiting --batch-wait 0
	done_ g w1 "$(uu 1)" ok
	wait_for 5 a_has "$(award_line 3)"
	done_ g w1 "$(uu 2)" ok
	wait_for 5 a_has "$(award_line 4)"
	tail_is "done $(uu 1) g w1 ok" "$(award_line 3)" "done $(uu 2) g w1 ok" "$(award_line 4)"
	[ "$(astat batches)" = 1 ]
	[ "$(astat batched)" = 2 ]
}

# --- mqlb-dispatch alone: the test writes the auction's records ------------

# dispatch [OPTIONS]: mqlb-dispatch reading records written with feed.
dispatch() {
	fed d mqlb-dispatch -h 127.0.0.1 -p "$BROKER_PORT" --listen "$T/d.sock" "$@"
}
d_has() { grep -qxF -- "$1" "$T/d.out"; }
dstat() { stat_in "$T/d.sock" "$1"; }

# jobs: a subscriber to P/job/# at QoS 2 writing topic|qos|payload in hex,
# a line a message; subscribed when it returns (a marker it got proves it).
jobs() {
	bg jobs mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -q 2 -t "$PREFIX/job/#" -F '%t|%q|%x'
	wait_for 10 eval 'pub "$PREFIX/job/mark" m; sleep 0.1; grep -q "^$PREFIX/job/mark|" "$T/jobs.out"'
}
hex() { printf '%s' "$1" | od -An -tx1 -v | tr -d ' \n'; }
# got TOPIC QOS PAYLOAD: that message reached the subscriber.
got() { grep -qxF -- "$1|$2|$(hex "$3")" "$T/jobs.out"; }
# on TOPIC-PREFIX: the messages got on topics starting so.
on() { grep -c "^$1" "$T/jobs.out" || true; }
# fence: a single award to g/other after the records fed: once it is in,
# everything the dispatch published before it is in too.
fence() {
	feed "award $U3 g other 1 t/fence f"
	wait_for 5 got "$PREFIX/job/g/other/$U3/t/fence" 1 f
}

@test "dispatch: batch g w1 2 and its awards: one message on P/job/g/w1/batch, a line a job, escaped; QoS 0; a sent record each" {
	broker_start
	jobs
	dispatch
	feed1 "batch g w1 2" "award $U1 g w1 1 t/a a%20b%25" "award $U2 g w1 1 t/b -"
	wait_for 5 d_has "sent $U2 g w1"
	wait_for 5 got "$PREFIX/job/g/w1/batch" 0 "job $U1 1 t/a a%20b%25"$'\n'"job $U2 1 t/b -"$'\n'
	fence
	[ "$(on "$PREFIX/job/g/w1/")" = 1 ]
	run cat "$T/d.out"
	[ "${lines[0]}" = "sent $U1 g w1" ]
	[ "${lines[1]}" = "sent $U2 g w1" ]
	[ "${#lines[@]}" -eq 3 ]
	[ "$(dstat batches)" = 1 ]
	[ "$(dstat sent)" = 3 ]
}

@test "dispatch --batch-qos 1: the batch message at QoS 1, sent records after its PUBACK; never above the jobs' QoS" {
	broker_start
	jobs
	dispatch --batch-qos 1
	feed1 "batch g w1 2" "award $U1 g w1 1 t/a p1" "award $U2 g w1 2 t/b p2"
	wait_for 5 d_has "sent $U2 g w1"
	wait_for 5 got "$PREFIX/job/g/w1/batch" 1 "job $U1 1 t/a p1"$'\n'"job $U2 2 t/b p2"$'\n'
	# jobs at QoS 0: the message too
	feed1 "batch g w2 2" "award $U1 g w2 0 t/a p1" "award $U2 g w2 0 t/b p2"
	wait_for 5 d_has "sent $U2 g w2"
	wait_for 5 got "$PREFIX/job/g/w2/batch" 0 "job $U1 0 t/a p1"$'\n'"job $U2 0 t/b p2"$'\n'
	fence
	[ "$(on "$PREFIX/job/g/")" = 3 ]
	[ "$(dstat batches)" = 2 ]
}

@test "dispatch: an award's props field is carried in its batch line" {
	broker_start
	jobs
	dispatch
	feed1 "batch g w1 2" "award $U1 g w1 1 t/a p1 rt=replies/1,cd=abc" "award $U2 g w1 1 t/b p2 -"
	wait_for 5 d_has "sent $U2 g w1"
	wait_for 5 got "$PREFIX/job/g/w1/batch" 0 \
		"job $U1 1 t/a p1 rt=replies/1,cd=abc"$'\n'"job $U2 1 t/b p2"$'\n'
}

@test "dispatch: bad batch records: one stderr line each naming the line; the awards after them go out one by one" {
	broker_start
	jobs
	dispatch
	U4=11111111-2222-4333-8444-555555555554
	feed1 "batch g" "award $U1 g w1 1 t/a p1" "batch g w1 x" "award $U2 g w1 1 t/b p2" \
		"batch g w1 0" "award $U3 g w1 1 t/c p3" "batch g/x w1 2" "award $U4 g w1 1 t/d p4"
	wait_for 5 d_has "sent $U4 g w1"
	for l in 1 3 5 7; do
		grep -qxF "mqlb-dispatch: warning: line $l: batch record: not \"batch group wid n\"; skipped" "$T/d.err"
	done
	[ "$(wc -l <"$T/d.err")" -eq 4 ]
	wait_for 5 got "$PREFIX/job/g/w1/$U1/t/a" 1 p1
	wait_for 5 got "$PREFIX/job/g/w1/$U2/t/b" 1 p2
	wait_for 5 got "$PREFIX/job/g/w1/$U3/t/c" 1 p3
	wait_for 5 got "$PREFIX/job/g/w1/$U4/t/d" 1 p4
	[ "$(on "$PREFIX/job/g/w1/batch")" = 0 ]
	[ "$(dstat batches)" = 0 ]
	[ "$(dstat bad_records)" = 4 ]
	[ "$(wc -l <"$T/d.out")" -eq 4 ]
}

@test "dispatch: a batch short of its awards still goes out whole: when the loop sleeps, and at EOF" {
	broker_start
	jobs
	dispatch
	feed1 "batch g w1 3" "award $U1 g w1 1 t/a p1" "award $U2 g w1 1 t/b p2"
	wait_for 5 got "$PREFIX/job/g/w1/batch" 0 "job $U1 1 t/a p1"$'\n'"job $U2 1 t/b p2"$'\n'
	wait_for 5 d_has "sent $U2 g w1"
	[ "$(wc -l <"$T/d.out")" -eq 2 ]
	feed1 "batch g w2 3" "award $U1 g w2 1 t/a p1" "award $U2 g w2 1 t/b p2"
	exec 5>&-
	wait_for 5 exited "$(cat "$T/d.pid")"
	run wait "$(cat "$T/d.pid")"
	[ "$status" -eq 0 ]
	wait_for 5 got "$PREFIX/job/g/w2/batch" 0 "job $U1 1 t/a p1"$'\n'"job $U2 1 t/b p2"$'\n'
	d_has "sent $U1 g w2"
	d_has "sent $U2 g w2"
	[ "$(wc -l <"$T/d.out")" -eq 4 ]
	[ "$(on "$PREFIX/job/g/")" = 2 ]
}

@test "dispatch --batch-qos: 3 or not a number is a usage error" {
	run --separate-stderr mqlb-dispatch --batch-qos 3
	[ "$status" -eq 2 ]
	[ "${stderr_lines[0]}" = 'mqlb-dispatch: error: --batch-qos: bad number "3" (0 to 2)' ]
	run --separate-stderr mqlb-dispatch --batch-qos x
	[ "$status" -eq 2 ]
	[[ "${stderr_lines[0]}" == *"--batch-qos"* ]]
}

# --- mqlb-sub: the spool's dones --------------------------------------------

@test "mqlb-sub (default spool): the ok lines of a done on P/done/g/w1 finish their spool entries; dones counts lines" {
	broker_start
	bg spy mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -t "$PREFIX/suback/#" -F '%t|%p'
	wait_for 10 eval 'pub "$PREFIX/suback/mark" m; sleep 0.1; grep -q "^$PREFIX/suback/mark|" "$T/spy.out"'
	ready_fifo s
	bg s ready3 "$T/s.ready" mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" -i sub416 \
		--listen "$T/s.sock" --ready-fd 3
	wait_ready s
	announce g 'jobs/#'
	wait_for 10 grep -qxF "$PREFIX/suback/g|jobs/#" "$T/spy.out"
	pub jobs/a 'p 1' -q 1
	pub jobs/b 'p 2' -q 1
	wait_for 5 lines_in "$T/s.out" 2 '^msg '
	u1=$(awk '$1 == "msg" && $6 == "jobs/a" { print $2 }' "$T/s.out")
	u2=$(awk '$1 == "msg" && $6 == "jobs/b" { print $2 }' "$T/s.out")
	spool=$T/state/mqlb/sub416.spool
	grep -q "^m $u1 " "$spool"
	grep -q "^m $u2 " "$spool"
	[ "$(stat_in "$T/s.sock" spool_live)" = 2 ]
	[ "$(stat_in "$T/s.sock" dones)" = 0 ]
	# u1 ok, u2 failed (the auction tries it again: not finished)
	pub "$PREFIX/done/g/w1" "$u1 ok"$'\n'"$u2 fail oops"$'\n' -q 1
	wait_for 5 grep -qx "f $u1 ok" "$spool"
	wait_for 5 eval '[ "$(stat_in "$T/s.sock" dones)" = 2 ]'
	[ "$(stat_in "$T/s.sock" spool_finished)" = 1 ]
	[ "$(stat_in "$T/s.sock" spool_live)" = 1 ]
	! grep -q "^f $u2" "$spool" || false
	# the rest by a done on the single topic, as before
	pub "$PREFIX/done/g/w1/$u2" ok -q 1
	wait_for 5 grep -qx "f $u2 ok" "$spool"
	[ "$(stat_in "$T/s.sock" spool_live)" = 0 ]
	[ "$(stat_in "$T/s.sock" dones)" = 3 ]
}
