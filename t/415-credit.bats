#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 415-credit: the balancer with credit workers (mqlb-worker's default) on a
# real broker: queued jobs outlive --deadline, the schemes, MQTT 3.1.1
# workers under an MQTT 5 pipeline, long jobs, spoofed properties.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

# ran_on NAME: the jobs worker NAME started.
ran_on() { count "^start $1 "; }
# once N: each of job-1..job-N started exactly once.
once() {
	awk -v n="$1" '$1 == "start" { c[$3]++ }
		END { for (i = 1; i <= n; i++) if (c["job-" i] != 1) { print "job-" i " ran " c["job-" i] + 0 " times"; bad = 1 }
		      exit bad }' "$T/log"
}
astat() { stat_in "$T/a.sock" "$1"; }
# started, ended: jobs started, ended so far.
count() { local n; n=$(grep -c "$1" "$T/log" 2>/dev/null); echo "${n:-0}"; }
started() { count '^start '; }
ended() { count '^end '; }
no_drops() { ! grep '^drop ' "$T/records" || false; }

@test "--scheme: a bad name is a usage error" {
	run mqlb-auction --scheme fastest
	[ "$status" -eq 2 ]
	[ "${lines[0]}" = 'mqlb-auction: error: --scheme: "fastest" is not soonest, least or first' ]
	run mqlb-auction --credit-ttl 0
	[ "$status" -eq 2 ]
	run mqlb-auction --ahead 11
	[ "$status" -eq 2 ]
	[ "${lines[0]}" = 'mqlb-auction: error: --ahead: bad duration "11" (seconds, 0 to 10; or with ms)' ]
}

@test "jobs queued for a busy credit worker outlive --deadline: all run, none dropped" {
	broker_start
	pipeline --deadline 1 --retry 0.1
	worker w1 0.6
	wait_balanced
	publish 4
	wait_for 15 eval '[ "$(ended)" -ge 4 ]'
	once 4
	no_drops
}

@test "--scheme soonest: a 10x slower worker gets a job only when waiting for a fast one would take longer" {
	broker_start
	AUCTIONOPTS="--listen $T/a.sock" pipeline
	worker slow 3
	worker f1 0.05
	worker f2 0.05
	worker f3 0.05
	wait_balanced
	# one job each first, so that every worker's time is known
	publish 4
	wait_for 10 eval '[ "$(ended)" -ge 4 ]'
	[ "$(ran_on slow)" = 1 ]
	# 8 jobs at once: the fast three clear them in less than one job's
	# time on the slow one (0.15 s of sleep; more with the round trips,
	# but under any load the fast ones stay 5 times faster, and keep up)
	publish 8 5
	wait_for 20 eval '[ "$(ended)" -ge 12 ]'
	once 12
	[ "$(ran_on slow)" = 1 ]
	[ "$(astat held)" -ge 1 ]
	# a backlog longer than the slow one's time: then it takes work too
	# (and the fast ones cannot keep up with 150 at once)
	publish 150 13
	wait_for 60 eval '[ "$(ended)" -ge 162 ]'
	once 162
	[ "$(ran_on slow)" -ge 2 ]
	no_drops
}

# rworker NAME SLOTS FIRST: a worker of group g on jobs/# in record mode,
# its jobs done by perl as they come (no process per job: its times stay
# short on a loaded machine, however many run), logging to $T/log as JOB
# does; its first job takes FIRST seconds.
rworker() {
	local n=$1
	mkfifo "$T/$n.in" "$T/$n.work"
	ready_fifo "$n"
	# its input opened read-write: no wait for perl to open it
	mqlb-worker -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -g g -t 'jobs/#' --wid "$n" \
		--fallback none -k 5 -j "$2" --ready-fd 3 <>"$T/$n.in" >"$T/$n.work" \
		3>"$T/$n.ready" 2>"$T/$n.err" &
	echo $! >>"$T/pids"
	perl -e '($w, $first, $lf) = @ARGV; @ARGV = (); $| = 1; $n = 0;
		open(L, ">>", $lf) or die; L->autoflush(1);
		while (<STDIN>) { @f = split; next unless $f[0] eq "work";
			print L "start $w $f[4]\n";
			select(undef, undef, undef, $first) if !$n++ && $first > 0;
			print L "end $w $f[4]\n"; print "done $f[1]\n" }' "$n" "$3" "$T/log" \
		<"$T/$n.work" >"$T/$n.in" &
	echo $! >>"$T/pids"
	wait_ready "$n"
}

@test "--scheme soonest: a worker slow once is given a job again later, which measures it anew" {
	broker_start
	AUCTIONOPTS="--listen $T/a.sock" pipeline
	# a's first job takes 2 s, its others no time, like b's; b keeps up
	# alone with what comes
	rworker a 1 2
	rworker b 8 0
	wait_balanced
	# one job each: a is measured at 2 s, b at a few ms
	publish 2
	wait_for 10 eval '[ "$(ended)" -ge 2 ]'
	[ "$(ran_on a)" = 1 ]
	# so b gets everything, until a's time goes stale (200 awards and a
	# second after a's last): a's next job measures it anew
	publish_paced 300 50 3
	wait_for 30 eval '[ "$(ended)" -ge 302 ]'
	once 302
	no_drops
	[ "$(astat probes)" -ge 1 ]
	[ "$(ran_on a)" -ge 2 ]
}

@test "--ahead: a one-slot worker taking one job ahead gets its next job before its done, runs one at a time, each once" {
	broker_start
	AUCTIONOPTS="--listen $T/a.sock --ahead 0.1" pipeline
	worker w1 0.3 --ahead 1 --listen "$T/w1.sock"
	wait_balanced
	publish 6
	wait_for 30 eval '[ "$(ended)" -ge 6 ]'
	once 6
	# awarded ahead by the auction, kept waiting by the worker
	[ "$(astat ahead)" -ge 1 ]
	[ "$(stat_in "$T/w1.sock" ahead)" -ge 1 ]
	[ "$(stat_in "$T/w1.sock" busy)" = 0 ]
	# one at a time, in order: each start follows the end before it
	awk '$1 == "start" { if (run) bad = 1; run = 1 } $1 == "end" { run = 0 } END { exit bad }' "$T/log"
	[ "$(awk '$1 == "start" { print $3 }' "$T/log" | tr '\n' ' ')" = "job-1 job-2 job-3 job-4 job-5 job-6 " ]
	no_drops
}

@test "--ahead: a worker without +ahead in its credit gets no job while its slot runs" {
	broker_start
	AUCTIONOPTS="--listen $T/a.sock --ahead 0.1" pipeline
	worker w1 0.3 --listen "$T/w1.sock"
	wait_balanced
	publish 4
	wait_for 30 eval '[ "$(ended)" -ge 4 ]'
	once 4
	[ "$(astat ahead)" = 0 ]
	[ "$(stat_in "$T/w1.sock" busy)" = 0 ]
	[ "$(stat_in "$T/w1.sock" over_awards)" = 0 ]
}

@test "auction: credit 1+1: once the worker's time is known, its next job is awarded before the done of the running one" {
	broker_start
	auc --ahead 0.2
	feed "group g jobs/#"
	credit g w1 1+1
	wait_for 5 eval '[ "$(astat credit)" = 1 ]'
	feed "msg $U1 1 0 jobs/# jobs/a p1" "msg $U2 1 0 jobs/# jobs/b p2" "msg $U3 1 0 jobs/# jobs/c p3"
	wait_for 5 out_has "award $U1 g w1 1 jobs/a p1"
	# nothing measured yet: no award ahead
	[ "$(awards_of "$U2")" = 0 ]
	sleep 0.3
	done_ g w1 "$U1" ok
	wait_for 5 out_has "award $U2 g w1 1 jobs/b p2"
	# U2 is expected to take 0.3 s: U3 goes 0.2 s before its end
	wait_for 5 out_has "award $U3 g w1 1 jobs/c p3"
	[ "$(astat ahead)" = 1 ]
	grep -q "^done $U1 " "$T/a.out"
	! grep -q "^done $U2 " "$T/a.out" || false
}

@test "auction: credit 0+1, a worker leaving: no job awarded ahead to it" {
	broker_start
	auc --ahead 0.2
	feed "group g jobs/#"
	credit g w1 1+1
	wait_for 5 eval '[ "$(astat credit)" = 1 ]'
	feed "msg $U1 1 0 jobs/# jobs/a p1"
	wait_for 5 out_has "award $U1 g w1 1 jobs/a p1"
	done_ g w1 "$U1" ok
	wait_for 5 eval '[ "$(astat done_ok)" = 1 ]'
	# its time is known and short: a slot would be expected free at once
	credit g w1 0+1
	wait_for 5 eval '[ "$(astat credit)" = 2 ]'
	feed "msg $U2 1 0 jobs/# jobs/b p2"
	wait_for 5 eval '[ "$(astat waiting)" = 1 ]'
	[ "$(awards_of "$U2")" = 0 ]
	[ "$(astat ahead)" = 0 ]
}

@test "--scheme least: the worker with most free slots first" {
	broker_start
	pipeline --scheme least
	worker a 3
	worker b 3 -j 3
	wait_balanced
	publish 1
	wait_for 5 grep -q '^start b job-1$' "$T/log"
	publish 1 2
	wait_for 5 grep -q '^start b job-2$' "$T/log"
	# now one free slot each: the one least recently awarded
	publish 1 3
	wait_for 5 grep -q '^start a job-3$' "$T/log"
}

@test "an MQTT 3.1.1 worker under an MQTT 5 pipeline: each job once, acked, no dead letter" {
	broker_start
	pipeline --ack-timeout 2
	worker w1 0.02 -V 311
	wait_balanced
	publish 20
	wait_for 15 eval '[ "$(grep -c "^done .* ok$" "$T/records")" -ge 20 ]'
	once 20
	no_drops
	! grep -q 'no done for' "$T/auction.err" || false
}

@test "a bidding MQTT 3.1.1 worker under an MQTT 5 pipeline: each job once, no dead letter; an MQTT 5 bidder is still waited for" {
	broker_start
	pipeline --ack-timeout 2
	worker w1 0.05 -V 311 --bid
	wait_balanced
	publish 10
	wait_for 15 eval '[ "$(ended)" -ge 10 ]'
	# past --ack-timeout with no done ever: taken for a worker without acks
	wait_for 10 grep -q 'no done from g/w1 in 2s, nor ever: taken for a worker that does not ack' "$T/auction.err"
	publish 10 11
	wait_for 15 eval '[ "$(ended)" -ge 20 ]'
	once 20
	no_drops
	! grep -q 'no done for' "$T/auction.err" || false
	# an MQTT 5 bidder says free=n in its bids: its awards are tracked, so
	# its done is news (a done record), not a late one for a finished job
	worker w2 0.05 --bid
	kill -STOP "$(cat "$T/w1.pid")"
	publish 1 21
	wait_for 10 grep -q '^done .* g w2 ok$' "$T/records"
	kill -CONT "$(cat "$T/w1.pid")"
	once 21
}

@test "a job well past --ack-timeout runs once on a live worker (in-progress reports)" {
	broker_start
	# the workers report what they hold every keepalive (-k 5)
	AUCTIONOPTS="--listen $T/a.sock" pipeline --ack-timeout 6
	worker w1 16
	worker w2 16
	wait_balanced
	publish 1
	wait_for 5 eval '[ "$(started)" -ge 1 ]'
	wait_for 25 eval '[ "$(ended)" -ge 1 ]'
	[ "$(started)" = 1 ]
	[ "$(astat reawards)" = 0 ]
	[ "$(astat progress)" -ge 1 ]
	wait_for 5 grep -q '^done .* ok$' "$T/records"
}

@test "a publisher's own mqlb-id is not ours: the job runs once (bidding worker)" {
	broker_start
	pipeline --ack-timeout 2
	worker w1 0.02 --bid
	wait_balanced
	mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -q 1 -t jobs/a -m job-1 \
		-D publish user-property mqlb-id 11111111-2222-4333-8444-555555555555
	wait_for 5 grep -q '^done .* ok$' "$T/records"
	wait_for 5 eval '[ "$(ended)" -ge 1 ]'
	once 1
	! grep -q 'mqlb-id' "$T/records" || false
	no_drops
}


# --- mqlb-auction alone: the test plays mqlb-sub (records) and the workers

# auc [OPTIONS]: mqlb-auction reading records written with feed.
auc() {
	ready_fifo a
	fed a mqlb-auction -h 127.0.0.1 -p "$BROKER_PORT" --ready-fd 3 --listen "$T/a.sock" "$@"
	wait_ready a
}
out_has() { grep -qxF -- "$1" "$T/a.out"; }
awards_of() { grep -c "^award $1 " "$T/a.out" || true; }
credit() { pub "$PREFIX/credit/$1/$2" "$3" -q 1; }
done_() { pub "$PREFIX/done/$1/$2/$3" "$4" -q 1; }
U1=11111111-2222-4333-8444-555555555551
U2=11111111-2222-4333-8444-555555555552
U3=11111111-2222-4333-8444-555555555553

@test "auction: credit gives award records without asking; a done gives the slot back" {
	broker_start
	auc
	feed "group g jobs/#"
	credit g w1 1
	wait_for 5 eval '[ "$(astat credit)" = 1 ]'
	feed "msg $U1 1 0 jobs/# jobs/a p1" "msg $U2 0 0 jobs/# jobs/b p2"
	wait_for 5 out_has "award $U1 g w1 1 jobs/a p1"
	! grep -q "^award $U2 " "$T/a.out" || false
	done_ g w1 "$U1" ok
	wait_for 5 out_has "done $U1 g w1 ok"
	wait_for 5 out_has "award $U2 g w1 0 jobs/b p2"
	[ "$(astat awarded)" = 2 ]
}

@test "auction: fail busy blocks a credit worker until its next done; the job goes elsewhere" {
	broker_start
	auc
	feed "group g jobs/#"
	credit g w1 1
	wait_for 5 eval '[ "$(astat credit)" = 1 ]'
	feed "msg $U1 1 0 jobs/# jobs/a p1"
	wait_for 5 out_has "award $U1 g w1 1 jobs/a p1"
	# busy with another balancer's job: refused, not an attempt
	done_ g w1 "$U1" "fail busy"
	wait_for 5 eval '[ "$(astat busy)" = 1 ]'
	credit g w2 1
	wait_for 5 out_has "award $U1 g w2 1 jobs/a p1"
	feed "msg $U2 1 0 jobs/# jobs/b p2"
	# w1 is blocked and w2 full: U2 waits, until a done from w1 (for a job
	# this balancer never had) shows w1 free again
	done_ g w1 "$U3" ok
	wait_for 5 out_has "award $U2 g w1 1 jobs/b p2"
	[ "$(awards_of "$U1")" = 2 ]
	! grep -q '^drop ' "$T/a.out" || false
}

@test "auction: an award its worker does not name two credit messages on is lost: awarded again" {
	broker_start
	auc
	feed "group g jobs/#"
	credit g w1 1
	wait_for 5 eval '[ "$(astat credit)" = 1 ]'
	feed "msg $U1 1 0 jobs/# jobs/a p1"
	wait_for 5 out_has "award $U1 g w1 1 jobs/a p1"
	# the award may still be on its way when the next credit is written
	credit g w1 1
	wait_for 5 eval '[ "$(astat credit)" = 2 ]'
	[ "$(astat lost)" = 0 ]
	# but not by the one after
	credit g w1 1
	wait_for 5 eval '[ "$(astat lost)" = 1 ]'
	wait_for 5 eval '[ "$(awards_of "$U1")" = 2 ]'
	grep -q "job $U1 is not with g/w1, which had it awarded: awarded again" "$T/a.err"
	# named, it stays
	credit g w1 "1 $U1"
	credit g w1 "1 $U1"
	wait_for 5 eval '[ "$(astat credit)" = 5 ]'
	[ "$(astat lost)" = 1 ]
	[ "$(astat progress)" = 2 ]
}

# A msg after a replay record was written out by an earlier run of
# mqlb-sub: an earlier mqlb-auction may have awarded it, and a worker may
# run it still.
@test "auction: replay: a job a credit named before its msg came is that worker's, with no award; a free worker gets the next" {
	broker_start
	auc
	feed "group g jobs/#"
	credit g w1 "1 $U1"
	credit g w2 1
	wait_for 5 eval '[ "$(astat credit)" = 2 ]'
	feed "replay $U1" "msg $U1 1 0 jobs/# jobs/a p1" "msg $U2 1 0 jobs/# jobs/b p2"
	wait_for 5 out_has "award $U2 g w2 1 jobs/b p2"
	[ "$(astat kept)" = 1 ]
	[ "$(astat replayed)" = 1 ]
	done_ g w1 "$U1" ok
	wait_for 5 out_has "done $U1 g w1 ok"
	[ "$(awards_of "$U1")" = 0 ]
}

@test "auction: replay: a job a credit names before its msg came takes that worker's slot: the next msg waits for a free one" {
	broker_start
	auc
	feed "group g jobs/#"
	credit g w1 "1 $U1"
	wait_for 5 eval '[ "$(astat credit)" = 1 ]'
	[ "$(astat worker.g/w1.inflight)" = 1 ]
	[ "$(astat group.g.inflight)" = 1 ]
	# U2 comes before U1 is written out again: w1 runs U1 all the same
	feed "msg $U2 1 0 jobs/# jobs/b p2"
	credit g w2 1
	wait_for 5 out_has "award $U2 g w2 1 jobs/b p2"
	[ "$(awards_of "$U2")" = 1 ]
	# U1 comes: w1's, a job of its now; U3 waits for a slot
	feed "replay $U1" "msg $U1 1 0 jobs/# jobs/a p1" "msg $U3 1 0 jobs/# jobs/c p3"
	wait_for 5 eval '[ "$(astat kept)" = 1 ]'
	[ "$(astat worker.g/w1.inflight)" = 1 ]
	# w1's done (no credit message after it) frees the slot: U3 goes there
	done_ g w1 "$U1" ok
	wait_for 5 out_has "award $U3 g w1 1 jobs/c p3"
	[ "$(awards_of "$U1")" = 0 ]
	[ "$(awards_of "$U3")" = 1 ]
}

@test "auction: replay: a done for a job a credit named, whose msg never came, frees the slot it took" {
	broker_start
	auc
	feed "group g jobs/#"
	credit g w1 "1 $U1"
	wait_for 5 eval '[ "$(astat credit)" = 1 ]'
	feed "msg $U2 1 0 jobs/# jobs/b p2"
	wait_for 5 eval '[ "$(astat msg)" = 1 ]'
	# mqlb-sub had U1's done: it does not write U1 out again
	done_ g w1 "$U1" ok
	wait_for 5 out_has "award $U2 g w1 1 jobs/b p2"
	[ "$(awards_of "$U2")" = 1 ]
}

@test "auction: replay: a waiting job a credit names is that worker's; a done for one ends it; after a fail it goes to anyone" {
	broker_start
	auc
	feed "group g jobs/#"
	# no worker free: they wait, whatever the time
	feed "replay $U1" "msg $U1 1 0 jobs/# jobs/a p1"
	feed "replay $U2" "msg $U2 1 0 jobs/# jobs/b p2"
	feed "replay $U3" "msg $U3 1 0 jobs/# jobs/c p3"
	wait_for 5 eval '[ "$(astat replayed)" = 3 ]'
	credit g w1 "1 $U1"
	wait_for 5 eval '[ "$(astat kept)" = 1 ]'
	done_ g w2 "$U2" ok
	wait_for 5 out_has "done $U2 g w2 ok"
	done_ g w3 "$U3" "fail exit%201"
	credit g w3 1
	wait_for 5 out_has "award $U3 g w3 1 jobs/c p3"
	done_ g w1 "$U1" ok
	wait_for 5 out_has "done $U1 g w1 ok"
	[ "$(awards_of "$U1")" = 0 ]
	[ "$(awards_of "$U2")" = 0 ]
	! grep -q '^drop ' "$T/a.out" || false
}

@test "auction: replay: mqlb-sub's done record for it ends a job no worker named; for a job awarded elsewhere, or malformed, nothing" {
	broker_start
	auc
	feed "group g jobs/#"
	feed "replay $U1" "msg $U1 1 0 jobs/# jobs/a p1"
	feed "msg $U2 1 0 jobs/# jobs/b p2"
	wait_for 5 eval '[ "$(astat replayed)" = 1 ]'
	feed "done $U1 g w1 ok"
	wait_for 5 out_has "done $U1 g w1 ok"
	# not a replayed message: ignored; it goes to the worker free now
	feed "done $U2 g w1 ok"
	credit g w2 1
	wait_for 5 out_has "award $U2 g w2 1 jobs/b p2"
	feed "done $U3 g w1 ok" "done $U1 g w1 fail%20x"
	wait_for 5 grep -q 'line 8: malformed done record; skipped' "$T/a.err"
	[ "$(grep -c '^done ' "$T/a.out")" = 1 ]
	[ "$(awards_of "$U1")" = 0 ]
}

@test "auction: replay: a job no worker names goes to a free one after a moment; a msg without a replay record at once" {
	broker_start
	auc
	feed "group g jobs/#"
	credit g w1 2
	wait_for 5 eval '[ "$(astat credit)" = 1 ]'
	feed "replay $U1" "msg $U1 1 0 jobs/# jobs/a p1"
	wait_for 5 out_has "award $U1 g w1 1 jobs/a p1"
	# a replay record for another uuid does not hold the msg after it
	feed "replay $U3" "msg $U2 1 0 jobs/# jobs/b p2"
	wait_for 5 out_has "award $U2 g w1 1 jobs/b p2"
	[ "$(astat replayed)" = 1 ]
	# a malformed one: a warning, and the stage goes on
	feed "replay nope"
	wait_for 5 grep -q 'malformed replay record; skipped' "$T/a.err"
}

@test "auction: bad credit: one warning line each, counted; the stage goes on" {
	broker_start
	auc
	feed "group g jobs/#"
	credit g w1 x
	credit g w1 -1
	credit g w1 70000
	credit g w1 1+x
	credit g w1 1+
	credit g w1 1+70000
	pub "$PREFIX/credit/g" 1 -q 1
	wait_for 5 eval '[ "$(astat credit_bad)" = 7 ]'
	grep -qF 'credit from g/w1: bad payload "1+x"; ignored' "$T/a.err"
	grep -qF 'credit from g/w1: bad payload "x"; ignored' "$T/a.err"
	grep -qF 'credit from g/w1: bad payload "70000"; ignored' "$T/a.err"
	grep -qF "bad credit topic $PREFIX/credit/g; ignored" "$T/a.err"
	credit g w1 1
	feed "msg $U1 1 0 jobs/# jobs/a p1"
	wait_for 5 out_has "award $U1 g w1 1 jobs/a p1"
}

@test "auction: a done from a bidding worker while jobs wait asks at once, not after the back-off" {
	broker_start
	auc --retry 30 --ack-timeout 60
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p1" "msg $U2 1 0 jobs/# jobs/b p2"
	wait_for 5 eval '[ "$(astat asked)" = 1 ]'
	pub "$PREFIX/rsp/g/w1/$U1/jobs/a" "" -V 5
	wait_for 5 out_has "assign $U1 g w1 1 jobs/a p1"
	# the bid started a round for U2 at once; the next is 30 s away
	wait_for 5 eval '[ "$(astat asked)" = 2 ]'
	pub "$PREFIX/done/g/w1/$U1" ok -q 1 -V 5
	wait_for 5 out_has "done $U1 g w1 ok"
	wait_for 5 eval '[ "$(astat asked)" = 3 ]'
}

# refusing_broker: a broker whose ACL refuses awards to worker bad (its
# P/job topic), and lets everything else through.
refusing_broker() {
	printf 'topic readwrite #\ntopic deny %s/job/g/bad/#\n' "$PREFIX" >"$T/acl"
	broker_start b "acl_file $T/acl"
}

@test "an award the broker refuses goes back to the auction (fail refused): it runs elsewhere, no drop" {
	refusing_broker
	DISPATCHOPTS="--listen $T/d.sock" AUCTIONOPTS="--listen $T/a.sock" pipeline
	worker bad 0.02
	worker good 0.02
	wait_balanced
	publish 6
	wait_for 15 eval '[ "$(ended)" -ge 6 ]'
	once 6
	[ "$(ran_on bad)" = 0 ]
	wait_for 5 eval '[ "$(stat_in "$T/d.sock" handed_back)" -ge 1 ]'
	grep -q '^done .* g bad fail%20refused$' "$T/records"
	no_drops
}

@test "an award the broker always refuses: one outcome, drop failed after --max-attempts, no drop refused" {
	refusing_broker
	DISPATCHOPTS="--listen $T/d.sock" AUCTIONOPTS="--listen $T/a.sock" pipeline --max-attempts 2
	worker bad 0.02
	wait_balanced
	publish 1
	# blocked after the first refusal: the second attempt waits for its
	# next credit message (every keepalive, -k 5)
	wait_for 15 grep -q '^drop .* failed g jobs/a job-1$' "$T/records"
	[ "$(grep -c '^done .* g bad fail%20refused$' "$T/records")" = 2 ]
	[ "$(grep -c '^drop ' "$T/records")" = 1 ]
	[ "$(started)" = 0 ]
}

@test "auction: no done and no in-progress report: awarded again after --ack-timeout, then drop noack once" {
	broker_start
	auc --ack-timeout 1 --max-attempts 2
	feed "group g jobs/#"
	credit g w1 1
	wait_for 5 eval '[ "$(astat credit)" = 1 ]'
	feed "msg $U1 1 0 jobs/# jobs/a p1"
	wait_for 5 out_has "award $U1 g w1 1 jobs/a p1"
	wait_for 10 grep -q "^drop $U1 noack g jobs/a p1$" "$T/a.out"
	[ "$(awards_of "$U1")" = 2 ]
	[ "$(grep -c '^drop ' "$T/a.out")" = 1 ]
	[ "$(grep -c "no done for $U1 from g/w1 in 1s" "$T/a.err")" = 2 ]
}

# bid_on_newest TAKEN OTHER [AUCTION-OPTIONS]: two messages wait (U1 on
# jobs/a, U2 on jobs/b), a bid names U2; job TAKEN (a or b) is the one
# awarded, OTHER is not.
bid_on_newest() {
	local taken=$1 other=$2
	shift 2
	broker_start
	auc "$@"
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p1" "msg $U2 1 0 jobs/# jobs/b p2"
	wait_for 5 eval '[ "$(astat pending)" = 2 ]'
	pub "$PREFIX/rsp/g/w1/$U2/jobs/b" "" -V 5
	wait_for 5 grep -q "^assign .* g w1 1 jobs/$taken " "$T/a.out"
	! grep -q "^assign .* jobs/$other " "$T/a.out" || false
}

@test "auction: --scheme first gives a bid its own message first" {
	bid_on_newest b a --scheme first
}

@test "auction: --scheme soonest (the default) gives a bid the oldest message waiting" {
	bid_on_newest a b
}
