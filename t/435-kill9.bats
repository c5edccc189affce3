#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 435-kill9: mqlb-sub --spool. Each balancer stage killed (kill -9, and
# SIGTERM) under load and the pipeline restarted on the same spool: every
# message published is processed by a worker, once.
# Then the spool itself: its records, replay, corrupt lines, giving up.
load helpers/common.bash
setup() {
	mqlb_setup
	SUBOPTS="-c -i mqlb-sub-k9 --spool $T/spool --listen $T/sub.sock"
	AUCTIONOPTS="--ack-timeout 5 --drain-timeout 2"
	DISPATCHOPTS="-q 1"
}
teardown() {
	local pid c
	while read -r pid; do
		for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
			kill -KILL "$c" 2>/dev/null || true
		done
	done <"$T/pids"
	mqlb_teardown
}

sub_stat() { stat_in "$T/sub.sock" "$1"; }

# killed STAGE SIGNAL: under a steady load, with a backlog in the auction
# (three one-slot workers at 0.1 s a job, 100 messages a second offered),
# signal STAGE, restart the pipeline, and count.
killed() {
	local stage=$1 sig=$2 n=150
	broker_start
	touch "$T/log" "$T/records"
	pipeline
	for w in w1 w2 w3; do worker "$w" 0.1; done
	wait_balanced
	bg publisher publish_paced $n 100
	wait_for 20 eval '[ "$(ended)" -ge 30 ]'
	# a backlog sits in the pipeline, PUBACKed to the broker long ago
	[ "$(sub_stat msg)" -ge $(($(ended) + 10)) ]
	kill "-$sig" "$(cat "$T/$stage.pid")"
	wait_for 10 exited "$(cat "$T/$stage.pid")"
	before=$(ended)
	pipeline_restart
	wait_for 20 exited "$(cat "$T/publisher.pid")"
	wait_for 90 settled $n || { account $n; false; }
	account $n
	account $n | grep -qx 'lost 0'
	account $n | grep -qx 'dropped 0'
	# and none twice: a job a worker still ran, or had ended, when the
	# new run wrote it out again is not awarded again
	account $n | grep -qx 'duplicated 0'
	# the new run wrote out again what the old one had not seen done
	echo "ended before the restart: $before; replayed: $(sub_stat spool_replayed)"
	for s in sub auction dispatch; do kill -0 "$(cat "$T/$s.pid")"; done
}

@test "kill -9 of mqlb-auction under load, pipeline restarted on the spool: nothing lost" {
	killed auction KILL
	[ "$(sub_stat spool_replayed)" -gt 0 ]
}

@test "kill -9 of an idle mqlb-auction: mqlb-sub and mqlb-dispatch stop by themselves, so the three start again as they were" {
	broker_start
	touch "$T/log" "$T/records"
	pipeline
	worker w1 0
	wait_balanced
	publish 5
	wait_for 20 eval '[ "$(ended)" -ge 5 ]'
	# nothing is on its way now: mqlb-sub has no record to write
	kill -KILL "$(cat "$T/auction.pid")"
	wait_for 10 exited "$(cat "$T/sub.pid")"
	wait_for 10 exited "$(cat "$T/dispatch.pid")"
	# the same way again, without stopping anything first: the spool is free
	pipeline
	wait_balanced
	publish 5 6
	wait_for 20 eval '[ "$(ended)" -ge 10 ]'
	account 10 | grep -qx 'lost 0'
}

# held_at_kill SECONDS: w1 runs job-1 (SECONDS long) while three other
# workers are free; mqlb-auction is killed with -9 and mqlb-sub and
# mqlb-dispatch stop by themselves.
held_at_kill() {
	AUCTIONOPTS="$AUCTIONOPTS --listen $T/auction.sock"
	broker_start
	touch "$T/log" "$T/records"
	pipeline
	worker w1 "$1"
	wait_balanced
	publish 1
	wait_for 10 grep -q '^start w1 job-1$' "$T/log"
	for w in w2 w3 w4; do worker "$w" 0; done
	kill -KILL "$(cat "$T/auction.pid")"
	wait_for 10 exited "$(cat "$T/sub.pid")"
	wait_for 10 exited "$(cat "$T/dispatch.pid")"
}

@test "kill -9 of mqlb-auction while a job runs: started again, the worker's credit keeps it there; no free worker runs it too" {
	held_at_kill 4
	pipeline
	wait_balanced
	wait_for 20 grep -q '^end w1 job-1$' "$T/log"
	[ "$(stat_in "$T/auction.sock" kept)" = 1 ]
	# a second run would have begun by now (HELLO_WAIT after the start)
	[ "$(grep -c ' job-1$' "$T/log")" = 2 ]
	# and the balancer goes on: the next jobs run, job-1 once
	publish 4 2
	wait_for 20 settled 5 || { account 5; false; }
	account 5 | grep -qx 'duplicated 0'
}

@test "kill -9 of mqlb-auction while the only worker runs a job, one more published meanwhile: it waits for that job's end, not awarded into the busy slot" {
	AUCTIONOPTS="$AUCTIONOPTS --listen $T/auction.sock"
	broker_start
	touch "$T/log" "$T/records"
	pipeline
	worker w1 3
	wait_balanced
	publish 1
	wait_for 10 grep -q '^start w1 job-1$' "$T/log"
	kill -KILL "$(cat "$T/auction.pid")"
	wait_for 10 exited "$(cat "$T/sub.pid")"
	wait_for 10 exited "$(cat "$T/dispatch.pid")"
	# kept for mqlb-sub's session
	publish 1 2
	# Started again, the auction first: w1's credit, naming job-1, is in
	# before mqlb-sub starts, whose session then gives job-2 at once;
	# job-1 comes out of the spool only after mqlb-sub's sync.
	m="-h 127.0.0.1 -p $BROKER_PORT"
	rm -f "$T/msgs" "$T/awards"
	mkfifo "$T/msgs" "$T/awards"
	# shellcheck disable=SC2086
	mqlb-dispatch $m $DISPATCHOPTS <"$T/awards" >>"$T/records" 2>>"$T/dispatch.err" &
	echo $! >>"$T/pids"
	# shellcheck disable=SC2086
	mqlb-auction $m $AUCTIONOPTS <>"$T/msgs" >"$T/awards" 2>>"$T/auction.err" &
	echo $! >>"$T/pids"
	wait_for 10 eval '[ "$(stat_in "$T/auction.sock" credit)" -ge 1 ]'
	# shellcheck disable=SC2086
	mqlb-sub $m $SUBOPTS >"$T/msgs" 2>>"$T/sub.err" &
	echo $! >>"$T/pids"
	wait_for 20 grep -q '^end w1 job-2$' "$T/log"
	[ "$(stat_in "$T/auction.sock" busy)" = 0 ]
	! grep -q 'fail%20busy\|fail busy' "$T/records" || false
	[ "$(grep -n '' "$T/log" | tr '\n' ' ')" = "1:start w1 job-1 2:end w1 job-1 3:start w1 job-2 4:end w1 job-2 " ]
}

# ended_while_down: w1's job-1 ends while the stages are down; started
# again, they do not run it again (an ok the restarted stages may have
# missed: mqlb-sub's session kept it, or the workers say their recent dones
# again to the hello; anything written out again had HELLO_WAIT to show).
ended_while_down() {
	held_at_kill 1
	wait_for 10 grep -q '^end w1 job-1$' "$T/log"
	pipeline
	wait_balanced
	publish 4 2
	wait_for 20 settled 5 || { account 5; false; }
	sleep 1.5
	account 5 | grep -qx 'duplicated 0'
}

@test "kill -9 of mqlb-auction while a job runs, which ends before the start again: it does not run again" {
	ended_while_down
}

@test "kill -9 of mqlb-auction while a job runs, which ends before the start again; mqlb-sub without a session (as the systemd unit runs it): it does not run again" {
	SUBOPTS="--spool $T/spool --listen $T/sub.sock"
	ended_while_down
}

@test "kill -9 of mqlb-sub under load, pipeline restarted on the spool: nothing lost" {
	# The auction reads little (--max-pending), the pipe is full: records
	# wait in mqlb-sub's output buffer (2 KB payloads), PUBACKed already.
	AUCTIONOPTS="--ack-timeout 5 --max-pending 10"
	PAD=" $(printf '%2000s' '' | tr ' ' x)" killed sub KILL
	[ "$(sub_stat spool_replayed)" -gt 0 ]
}

@test "kill -9 of mqlb-dispatch under load, pipeline restarted on the spool: nothing lost" {
	killed dispatch KILL
	[ "$(sub_stat spool_replayed)" -gt 0 ]
}

@test "SIGTERM of each stage in turn under load, pipeline restarted each time: nothing lost" {
	broker_start
	touch "$T/log" "$T/records"
	AUCTIONOPTS="--ack-timeout 5 --drain-timeout 1"
	pipeline
	for w in w1 w2 w3; do worker "$w" 0.1; done
	wait_balanced
	first=1
	for stage in sub auction dispatch; do
		bg publisher publish_paced 60 50 "$first"
		wait_for 20 eval '[ "$(ended)" -ge $((first + 10)) ]'
		kill -TERM "$(cat "$T/$stage.pid")"
		wait_for 30 exited "$(cat "$T/$stage.pid")"
		pipeline_restart
		wait_for 20 exited "$(cat "$T/publisher.pid")"
		first=$((first + 60))
	done
	wait_for 90 settled 180 || { account 180; false; }
	account 180
	account 180 | grep -qx 'lost 0'
	account 180 | grep -qx 'dropped 0'
	account 180 | grep -qx 'duplicated 0'
}

# --- the spool itself -----------------------------------------------------------

# sub NAME [OPTIONS]: mqlb-sub alone on the spool, ready.
sub() {
	local name=$1
	shift
	rm -f "$T/$name.ready"
	ready_fifo "$name"
	bg "$name" ready3 "$T/$name.ready" mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" -c -i sub-spool \
		--spool "$T/spool" --listen "$T/sub.sock" --ready-fd 3 "$@"
	wait_ready "$name"
}
# announced NAME GROUP: announce until mqlb-sub NAME wrote the group record.
announced() {
	wait_for 10 eval "announce $2 'jobs/#'; sleep 0.1; grep -q '^group $2 jobs/# *\$' \"\$T/$1.out\""
}
done_ok() { pub "$PREFIX/done/$1/w1/$2" "${3:-ok}" -q 1 -V 5; }
kill9() {
	kill -KILL "$(cat "$T/$1.pid")"
	wait_for 5 exited "$(cat "$T/$1.pid")"
}

@test "spool records: m before the msg leaves, f on ok from every group; a restart writes out the rest, same uuid, same record" {
	broker_start
	sub s1
	announced s1 g
	announced s1 h
	pub jobs/a 'p 1' -q 1
	pub jobs/b 'p 2' -q 1 -V 5 -D publish user-property k v
	pub jobs/c 'p 3' -q 1
	wait_for 5 lines_in "$T/s1.out" 3 '^msg '
	grep '^msg ' "$T/s1.out" >"$T/msgs1"
	u1=$(awk '$6 == "jobs/a" { print $2 }' "$T/msgs1")
	u2=$(awk '$6 == "jobs/b" { print $2 }' "$T/msgs1")
	u3=$(awk '$6 == "jobs/c" { print $2 }' "$T/msgs1")
	cat "$T/spool"
	grep -q "^m $u1 [0-9]* 1 [0-9]* 1 0 jobs/# jobs/a p%201\$" "$T/spool"
	grep -q "^m $u2 [0-9]* 1 [0-9]* 1 0 jobs/# jobs/b p%202 u.k=v\$" "$T/spool"
	# u1 done by both groups; u3 by g only (h still owes it); fails finish nothing
	done_ok g "$u1" "ok free=1"
	done_ok h "$u1"
	done_ok g "$u3"
	done_ok g "$u2" "fail exit 3"
	wait_for 5 grep -q "^f $u1 ok\$" "$T/spool"
	wait_for 5 eval '[ "$(sub_stat dones)" = 4 ]'
	! grep -q "^f $u3" "$T/spool" || false
	[ "$(sub_stat spool_live)" = 2 ]
	kill9 s1

	sub s2
	# nothing is written out before its filter has a group again
	sleep 0.3
	! grep -q '^msg ' "$T/s2.out" || false
	announced s2 g
	wait_for 5 lines_in "$T/s2.out" 2 '^msg '
	cat "$T/s2.out"
	# the same records, for the groups that have not said ok
	grep -qxF "$(grep " $u2 " "$T/msgs1")" "$T/s2.out"
	grep -qxF "$(grep " $u3 " "$T/msgs1")" "$T/s2.out"
	! grep -q " $u1 " "$T/s2.out" || false
	# each right after a replay record naming it (mqlb-auction then keeps
	# it for a worker that still runs it); the first run wrote none
	[ "$(grep -A1 -x "replay $u2" "$T/s2.out" | sed -n 2p | cut -d' ' -f1,2)" = "msg $u2" ]
	[ "$(grep -A1 -x "replay $u3" "$T/s2.out" | sed -n 2p | cut -d' ' -f1,2)" = "msg $u3" ]
	[ "$(grep -c '^replay ' "$T/s2.out")" = 2 ]
	! grep -q '^replay ' "$T/s1.out" || false
	[ "$(sub_stat spool_replayed)" = 2 ]
	# compacted at the start: u1 is gone from the file
	! grep -q "$u1" "$T/spool" || false
	grep -qx "r $u2" "$T/spool"
	done_ok g "$u2"
	wait_for 5 grep -q "^f $u2 ok\$" "$T/spool"
	# written out again to the groups on jobs/# now: g (which had said ok
	# for it in the last run: that is not kept, a duplicate), not h
	done_ok h "$u3"
	sleep 0.3
	! grep -q "^f $u3" "$T/spool" || false
	done_ok g "$u3"
	wait_for 5 grep -q "^f $u3 ok\$" "$T/spool"
	[ "$(sub_stat spool_live)" = 0 ]
	[ "$(sub_stat spool_finished)" = 2 ]
}

@test "spool: a done the broker kept for the session while mqlb-sub was down ends its entry before anything is written out again" {
	broker_start
	sub s1
	announced s1 g
	pub jobs/a 'p 1' -q 1
	pub jobs/a 'p 2' -q 1
	wait_for 5 lines_in "$T/s1.out" 2 '^msg '
	u1=$(awk '$1 == "msg" && $7 == "p%201" { print $2 }' "$T/s1.out")
	u2=$(awk '$1 == "msg" && $7 == "p%202" { print $2 }' "$T/s1.out")
	kill9 s1
	# kept by the broker for the session, in this order: the group's
	# announce (its filter is subscribed again as it comes), then u1's done
	announce g 'jobs/#'
	done_ok g "$u1"
	sub s2
	wait_for 5 grep -q "^f $u1 ok\$" "$T/spool"
	wait_for 5 grep -q "^msg $u2 " "$T/s2.out"
	! grep -q " $u1 " "$T/s2.out" || false
	[ "$(sub_stat spool_replayed)" = 1 ]
}

@test "spool: an ok for a message written out again is a done record too (mqlb-auction may have missed it); for a new one, none" {
	broker_start
	sub s1
	announced s1 g
	pub jobs/a 'p 1' -q 1
	wait_for 5 lines_in "$T/s1.out" 1 '^msg '
	u1=$(awk '$1 == "msg" { print $2 }' "$T/s1.out")
	kill9 s1
	sub s2
	announced s2 g
	wait_for 5 grep -q "^msg $u1 " "$T/s2.out"
	pub jobs/a 'p 2' -q 1
	wait_for 5 lines_in "$T/s2.out" 2 '^msg '
	u2=$(awk '$1 == "msg" && $7 == "p%202" { print $2 }' "$T/s2.out")
	# a fail finishes nothing and says nothing; an ok, batched or not
	done_ok g "$u1" "fail exit%201"
	pub "$PREFIX/done/g/w%20x" "$u1 ok" -q 1
	done_ok g "$u2"
	wait_for 5 grep -q "^f $u2 ok\$" "$T/spool"
	wait_for 5 grep -q "^f $u1 ok\$" "$T/spool"
	cat "$T/s2.out"
	[ "$(grep -c '^done ' "$T/s2.out")" = 1 ]
	grep -qx "done $u1 g w%2520x ok" "$T/s2.out"
}

@test "spool: compacted while running once dead lines dominate; nothing done is written out again" {
	broker_start
	sub s1
	announced s1 g
	pad=$(printf '%1000s' '' | tr ' ' x)
	seq 1 100 | sed "s/\$/ $pad/" |
		mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -q 1 -t jobs/a -l
	# and one of 300 KB, finished last: the only done that can tip the
	# balance, whenever the once-a-second check runs
	head -c 300000 /dev/zero | tr '\0' y >"$T/big"
	mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -q 1 -t jobs/a -f "$T/big"
	wait_for 10 lines_in "$T/s1.out" 101 '^msg '
	big=$(awk '$1 == "msg" && length($7) == 300000 { print $2 }' "$T/s1.out")
	[ -n "$big" ]
	[ "$(stat -c %s "$T/spool")" -gt 400000 ]
	for u in $(awk -v big="$big" '$1 == "msg" && $2 != big { print $2 }' "$T/s1.out"); do
		done_ok g "$u"
	done
	wait_for 10 eval '[ "$(sub_stat spool_finished)" = 100 ]'
	# 100 KB dead against 300 KB live: not yet
	sleep 1.5
	[ "$(sub_stat spool_compactions)" = 1 ]
	[ "$(stat -c %s "$T/spool")" -gt 400000 ]
	done_ok g "$big"
	wait_for 10 eval '[ "$(sub_stat spool_live)" = 0 ]'
	[ "$(sub_stat spool_finished)" = 101 ]
	# one compaction at the start, one since
	wait_for 5 eval '[ "$(sub_stat spool_compactions)" = 2 ]'
	[ "$(stat -c %s "$T/spool")" -lt 1000 ]
	kill9 s1
	sub s2
	announced s2 g
	sleep 0.3
	! grep -q '^msg ' "$T/s2.out" || false
	[ "$(sub_stat spool_replayed)" = 0 ]
}

@test "spool: a message held for a filter nobody announced yet is spooled as it arrives and survives kill -9" {
	broker_start
	sub s1
	announced s1 g
	kill -TERM "$(cat "$T/s1.pid")"
	wait_for 5 exited "$(cat "$T/s1.pid")"
	# waits at the broker for the persistent session
	pub jobs/a held -q 1
	sub s2
	wait_for 5 eval '[ "$(sub_stat held)" = 1 ]'
	grep -q '^m [0-9a-f-]* [0-9]* 0 [0-9]* 1 0 - jobs/a held$' "$T/spool"
	kill9 s2
	sub s3
	[ "$(sub_stat held)" = 0 ]
	announced s3 g
	wait_for 5 grep -q '^msg [0-9a-f-]* 1 0 jobs/# jobs/a held$' "$T/s3.out"
	[ "$(sub_stat spool_replayed)" = 1 ]
}

@test "spool: the broker has no PUBACK for a job before the spool has it (kill -9 at the spool write: the broker sends the job again)" {
	# libmosquitto writes a PUBACK while it reads, before our message
	# callback; mqlb-sub holds it in user space until the spool line is written.
	# strace kills mqlb-sub at that write, the first to the spool once it is
	# open: before this held PUBACK, the job was lost here.
	command -v strace >/dev/null || { echo "strace is needed: contrib/deps installs it"; false; }
	broker_start
	ready_fifo s1
	bg s1 ready3 "$T/s1.ready" strace -f -qq -o /dev/null -P "$T/spool" -e trace=write \
		-e inject=write:error=EIO:signal=KILL:when=1 \
		mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" -c -i sub-spool --spool "$T/spool" \
		--listen "$T/sub.sock" --ready-fd 3
	wait_ready s1
	announced s1 g
	pub jobs/a once -q 1
	wait_for 10 exited "$(cat "$T/s1.pid")"
	# killed before the line was written
	[ "$(grep -c '^m ' "$T/spool")" = 0 ]
	sub s2
	announced s2 g
	wait_for 10 grep -q '^msg [0-9a-f-]* 1 0 jobs/# jobs/a once$' "$T/s2.out"
	# from the broker, not from the spool
	[ "$(sub_stat spool_replayed)" = 0 ]
	[ "$(grep -c '^msg ' "$T/s2.out")" = 1 ]
}

@test "spool: kill -9 after the spool has a job, before the broker has its PUBACK: the broker's resend is dropped, the job written out once" {
	# The spool line is written, the PUBACK not yet: with --spool-sync,
	# strace kills mqlb-sub at the fdatasync between the two (without it the
	# gap is the same, and narrower). The broker sends the job again, with
	# the same packet identifier; the spool has it too (its i line).
	command -v strace >/dev/null || { echo "strace is needed: contrib/deps installs it"; false; }
	broker_start
	ready_fifo s1
	bg s1 ready3 "$T/s1.ready" strace -f -qq -o /dev/null -P "$T/spool" -e trace=fdatasync \
		-e inject=fdatasync:signal=KILL:when=1 \
		mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" -c -i sub-spool --spool "$T/spool" --spool-sync \
		--listen "$T/sub.sock" --ready-fd 3
	wait_ready s1
	announced s1 g
	pub jobs/a once -q 1
	wait_for 10 exited "$(cat "$T/s1.pid")"
	cat "$T/spool"
	[ "$(grep -c '^m .* jobs/a once$' "$T/spool")" = 1 ]
	u=$(awk '$1 == "m" { print $2 }' "$T/spool")
	grep -qx "i $u [1-9][0-9]* [0-9a-f]\{16\}" "$T/spool"
	sub s2 -v
	grep -q ": 1 message without a PUBACK when the last run ended: a resend from the broker is dropped" "$T/s2.err"
	announced s2 g
	wait_for 10 grep -q "^msg $u 1 0 jobs/# jobs/a once\$" "$T/s2.out"
	wait_for 10 grep -q '1 message the broker sent again after the reconnect had been taken before: dropped' "$T/s2.err"
	# once: from the spool, not again from the broker
	pub jobs/a after -q 1
	wait_for 10 grep -q '^msg [0-9a-f-]* 1 0 jobs/# jobs/a after$' "$T/s2.out"
	cat "$T/s2.out"
	[ "$(grep -c '^msg .* jobs/a once$' "$T/s2.out")" = 1 ]
	[ "$(sub_stat spool_replayed)" = 1 ]
	# its PUBACK and the next message's went out: an "a" line after their
	# i lines says so, and a run after a kill now expects no resend
	wait_for 5 eval '[ "$(tail -n1 "$T/spool")" = a ]'
	cat "$T/spool"
	kill9 s2
	sub s3 -v
	! grep -q 'without a PUBACK' "$T/s3.err" || false
	announced s3 g
	pub jobs/a once -q 1
	wait_for 10 eval '[ "$(grep -c "^msg .* jobs/a once\$" "$T/s3.out")" = 2 ]'
	cat "$T/s3.out"
	# the spool's two, not done, again; and the new one, not dropped
	[ "$(grep -c '^replay ' "$T/s3.out")" = 2 ]
}

@test "spool: killed in that gap, then again at the next run's first spool write: the job still written out once" {
	# The next run must keep the i line open until the broker's resend of
	# it is over and its PUBACK has left, not close it at its first a line.
	command -v strace >/dev/null || { echo "strace is needed: contrib/deps installs it"; false; }
	broker_start
	killed_at_fdatasync() {
		bg "$1" strace -f -qq -o /dev/null -P "$T/spool" -e trace=fdatasync \
			-e inject=fdatasync:signal=KILL:when=1 \
			mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" -c -i sub-spool --spool "$T/spool" \
			--spool-sync --listen "$T/sub.sock" -v
	}
	killed_at_fdatasync s1
	announced s1 g
	pub jobs/a once -q 1
	wait_for 10 exited "$(cat "$T/s1.pid")"
	cat "$T/spool"
	killed_at_fdatasync s2
	wait_for 10 exited "$(cat "$T/s2.pid")"
	cat "$T/spool" "$T/s2.err"
	grep -q ': 1 message without a PUBACK when the last run ended' "$T/s2.err"
	sub s3 -v
	announced s3 g
	pub jobs/a after -q 1
	wait_for 10 grep -q '^msg [0-9a-f-]* 1 0 jobs/# jobs/a after$' "$T/s3.out"
	cat "$T/s2.out" "$T/s3.out"
	[ "$(cat "$T/s2.out" "$T/s3.out" | grep -c '^msg .* jobs/a once$')" = 1 ]
}

@test "spool: killed in that gap, the job given up by the next run (--spool-replays 0): the broker's resend is dropped too" {
	command -v strace >/dev/null || { echo "strace is needed: contrib/deps installs it"; false; }
	broker_start
	bg s1 strace -f -qq -o /dev/null -P "$T/spool" -e trace=fdatasync \
		-e inject=fdatasync:signal=KILL:when=1 \
		mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" -c -i sub-spool --spool "$T/spool" \
		--spool-sync --listen "$T/sub.sock" -v
	announced s1 g
	pub jobs/a once -q 1
	wait_for 10 exited "$(cat "$T/s1.pid")"
	sub s2 -v --spool-replays 0
	grep -q 'gave up on .* (topic jobs/a)' "$T/s2.err"
	grep -q ': 1 message without a PUBACK when the last run ended' "$T/s2.err"
	announced s2 g
	pub jobs/a after -q 1
	wait_for 10 grep -q '^msg [0-9a-f-]* 1 0 jobs/# jobs/a after$' "$T/s2.out"
	cat "$T/s2.out" "$T/s2.err"
	grep -q '1 message the broker sent again after the reconnect had been taken before: dropped' "$T/s2.err"
	! grep -q '^msg .* jobs/a once$' "$T/s2.out" || false
}

@test "spool: messages read while stdout is full are spooled as they arrive and survive kill -9" {
	broker_start
	# s1 writes into a pipe nobody reads: it pauses and holds what comes
	mkfifo "$T/full.fifo"
	bg reader sh -c 'exec <"$1"; exec sleep 600' sh "$T/full.fifo"
	ready_fifo s1
	ready3 "$T/s1.ready" mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" -c -i sub-spool \
		--spool "$T/spool" --listen "$T/sub.sock" --ready-fd 3 >"$T/full.fifo" 2>"$T/s1.err" &
	echo $! >"$T/s1.pid"
	echo $! >>"$T/pids"
	wait_ready s1
	wait_for 10 eval 'announce g "jobs/#"; sleep 0.1; [ "$(sub_stat groups)" = 1 ]'
	local pay
	pay=$(head -c 1000 /dev/zero | tr '\0' x)
	seq 1 2000 | sed "s/\$/ $pay/" | mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t jobs/n -q 1 -l
	wait_for 10 eval '[ $(($(sub_stat msg) + $(sub_stat backlog))) -eq 2000 ]'
	[ "$(sub_stat backlog)" -gt 0 ]
	kill9 s1
	sub s2
	announced s2 g
	wait_for 10 eval '[ "$(grep -c "^msg " "$T/s2.out")" -ge 2000 ]'
	[ "$(awk '$1 == "msg" { print $7 }' "$T/s2.out" | sort -un | wc -l)" -eq 2000 ]
}

@test "spool: each bad line is one warning naming it, the rest is written out again" {
	broker_start
	good() { printf 'm 11111111-2222-4333-8444-55555555555%s 1700000000 1 0 1 0 jobs/# jobs/a %s\n' "$1" "$2"; }
	{
		echo '# mqlb-sub spool 1'
		good 1 first
		echo 'garbage here'
		echo 'm not-a-uuid 1700000000 1 0 1 0 jobs/# jobs/a x'
		echo 'm 11111111-2222-4333-8444-555555555553 1700000000 1 0 7 0 jobs/# jobs/a badqos'
		good 2 second
		printf 'r 11111111-2222-4333-8444-555555555551\n'
		printf 'i 11111111-2222-4333-8444-555555555552 65536\n'
		printf 'i 11111111-2222-4333-8444-555555555552 0\n'
		printf 'm 11111111-2222-4333-8444-555555555554 1700000000 1 0 1 0 jobs/# jobs/a cut'
	} >"$T/spool"
	sub s1
	cat "$T/s1.err"
	[ "$(grep -c 'warning: spool' "$T/s1.err")" -eq 6 ]
	grep -q "spool $T/spool line 3: unknown line; skipped\$" "$T/s1.err"
	grep -q "spool $T/spool line 4: bad uuid; skipped\$" "$T/s1.err"
	grep -q "spool $T/spool line 5: bad qos; skipped\$" "$T/s1.err"
	grep -q "spool $T/spool line 8: bad packet identifier; skipped\$" "$T/s1.err"
	grep -q "spool $T/spool line 9: bad packet identifier; skipped\$" "$T/s1.err"
	grep -q "spool $T/spool line 10: cut short (no end of line); skipped\$" "$T/s1.err"
	[ "$(sub_stat spool_bad_lines)" = 6 ]
	announced s1 g
	wait_for 5 lines_in "$T/s1.out" 2 '^msg '
	grep -qx "msg ${U1} 1 0 jobs/# jobs/a first" "$T/s1.out"
	grep -qx "msg ${U2} 1 0 jobs/# jobs/a second" "$T/s1.out"
	[ "$(grep -c '^msg ' "$T/s1.out")" -eq 2 ]
	# the bad lines are not kept
	! grep -q 'garbage\|badqos\|cut' "$T/spool" || false
}

@test "spool: entries given up (--spool-replays at the start, --spool-ttl while running) warn, are counted and not written out again" {
	broker_start
	{
		printf 'm %s 1700000000 3 0 1 0 jobs/# jobs/a thrice\n' "$U1"
		printf 'r %s\n' "$U1"
		printf 'm %s 1700000000 1 0 1 0 jobs/# jobs/a once\n' "$U2"
	} >"$T/spool"
	sub s1 --spool-replays 3 --spool-ttl 1
	grep -q "warning: spool: gave up on $U1 (topic jobs/a): written out 4 times without a done (--spool-replays 3)" "$T/s1.err"
	[ "$(sub_stat spool_given_up)" = 1 ]
	announced s1 g
	wait_for 5 grep -qx "msg $U2 1 0 jobs/# jobs/a once" "$T/s1.out"
	! grep -q "$U1" "$T/s1.out" || false
	# no done for U2, nor for a new message, within 1 s
	pub jobs/a new -q 1
	wait_for 5 eval '[ "$(sub_stat spool_given_up)" = 3 ]'
	grep -q "warning: spool: gave up on $U2 (topic jobs/a): no done within --spool-ttl 1s" "$T/s1.err"
	[ "$(grep -c 'gave up on' "$T/s1.err")" -eq 3 ]
	[ "$(sub_stat spool_live)" = 0 ]
	kill9 s1
	sub s2
	announced s2 g
	sleep 0.5
	! grep -q '^msg ' "$T/s2.out" || false
}

@test "spool: an entry whose filter nobody announces within --group-ttl becomes drop nogroup" {
	broker_start
	printf 'm %s 1700000000 1 0 1 0 jobs/# jobs/a lonely\n' "$U1" >"$T/spool"
	sub s1 --group-ttl 0.5
	wait_for 5 grep -qx "drop $U1 nogroup - jobs/a lonely" "$T/s1.out"
	wait_for 5 grep -qx "f $U1 nogroup" "$T/spool"
}

@test "spool: a group that expires owes no done any more" {
	broker_start
	sub s1 --group-ttl 3
	announced s1 g
	announced s1 h
	pub jobs/a p -q 1
	wait_for 5 lines_in "$T/s1.out" 1 '^msg '
	u=$(awk '$1 == "msg" { print $2 }' "$T/s1.out")
	# h stays, g goes quiet
	done_ok h "$u"
	wait_for 10 eval 'announce h "jobs/#"; sleep 0.2; grep -q "^ungroup g jobs/#" "$T/s1.out"'
	wait_for 5 grep -qx "f $u nogroup" "$T/spool"
	[ "$(sub_stat spool_live)" = 0 ]
}

@test "spool: cannot write it (file size limit): one error line, the records read go out, exit 111" {
	broker_start
	ready_fifo s1
	bg s1 sh -c 'f=$1; shift; ulimit -f 8; exec "$@" 3>"$f"' sh "$T/s1.ready" mqlb-sub \
		-h 127.0.0.1 -p "$BROKER_PORT" -c -i sub-spool --spool "$T/spool" --ready-fd 3
	wait_ready s1
	announced s1 g
	pad=$(printf '%1000s' '' | tr ' ' x)
	seq 1 20 | sed "s/\$/ $pad/" | mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -q 1 -t jobs/a -l
	wait_for 10 exited "$(cat "$T/s1.pid")"
	run wait "$(cat "$T/s1.pid")"
	[ "$status" -eq 111 ]
	cat "$T/s1.err"
	grep -q "mqlb-sub: error: cannot write the spool $T/spool: File too large" "$T/s1.err"
	# every message spooled went out
	[ "$(grep -c '^msg ' "$T/s1.out")" -ge "$(grep -c '^m ' "$T/spool")" ]
}

@test "spool: bad usage, and one mqlb-sub per spool" {
	run mqlb-sub --spool "$T/s" -t 'a/#'
	[ "$status" -eq 2 ]
	[[ "${lines[0]}" == *"--spool: a stand-alone subscriber (-t) has no jobs to spool"* ]]
	run mqlb-sub --no-spool --spool-ttl 5
	[ "$status" -eq 2 ]
	[[ "${lines[0]}" == *"need a spool"* ]]
	run mqlb-sub --spool "$T/s" --spool-ttl 0
	[ "$status" -eq 2 ]
	broker_start
	sub s1
	run mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" --spool "$T/spool"
	[ "$status" -eq 111 ]
	[ "$output" = "mqlb-sub: error: spool $T/spool is in use by another mqlb-sub" ]
}
