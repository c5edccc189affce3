#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 410-auction: mqlb-auction's records and topics, with the test playing both
# mqlb-sub (records on stdin) and the workers (bids, dones, wills).
load helpers/common.bash
setup() { mqlb_setup; }
teardown() {
	exec 5>&- 2>/dev/null || true
	mqlb_teardown
}

# auction [OPTIONS]: mqlb-auction reading records written with feed.
auction() {
	ready_fifo a
	fed a mqlb-auction -h 127.0.0.1 -p "$BROKER_PORT" --ready-fd 3 --listen "$T/a.sock" "$@"
	wait_ready a
}

# spy: the protocol's topics as "topic|payload" in $T/spy.out.
spy() {
	bg spy mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -t "$PREFIX/#" -F '%t|%p'
	local i
	for i in $(seq 1 100); do
		pub "$PREFIX/mark" "$i"
		grep -q "^$PREFIX/mark|" "$T/spy.out" && return 0
		sleep 0.1
	done
	return 1
}
seen() { grep -qxF -- "$1" "$T/spy.out"; }
out_has() { grep -qxF -- "$1" "$T/a.out"; }
stat_of() { stat_in "$T/a.sock" "$1"; }
# reqs UUID MTOPIC N: the request for UUID was published at least N times.
reqs() { [ "$(grep -c "^$PREFIX/req/$1/$2|" "$T/spy.out")" -ge "$3" ]; }
bid() { pub "$PREFIX/rsp/$1/$2/$3/$4" "${5:-}" -V 5; }

@test "bad options: one stderr line naming the option, exit 2" {
	run mqlb-auction --deadline 0
	[ "$status" -eq 2 ]
	[[ "$output" == *"--deadline"* ]]
	run mqlb-auction --retry 0.1,x
	[ "$status" -eq 2 ]
	[[ "$output" == *"--retry"* ]]
	run mqlb-auction --max-pending -1
	[ "$status" -eq 2 ]
	run mqlb-auction --bogus
	[ "$status" -eq 2 ]
	run mqlb-auction extra
	[ "$status" -eq 2 ]
	[[ "$output" == *"unexpected argument"* ]]
	run mqlb-auction --help
	[ "$status" -eq 0 ]
	[[ "$output" == usage:* ]]
}

@test "unreachable broker with --retries: exit 69" {
	# (stdin stays open: at EOF with nothing pending it would just exit)
	run mqlb-auction -h 127.0.0.1 -p 1 --retries 2 < <(sleep 30)
	[ "$status" -eq 69 ]
	[[ "$output" == *unreachable* ]]
}

@test "msg: asks on P/req/{uuid}/{mtopic}; the first bid wins, the record is an assign" {
	broker_start
	spy
	# tokens outlive the test, however slow it runs (430 tests expiry)
	auction --token-ttl 30
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a/b hello%20world"
	wait_for 5 seen "$PREFIX/req/$U1/jobs/a/b|"
	bid g w1 "$U1" jobs/a/b
	bid g w2 "$U1" jobs/a/b
	wait_for 5 out_has "assign $U1 g w1 1 jobs/a/b hello%20world"
	# w2's bid, read too, is kept: no second assign
	wait_for 5 eval '[ "$(stat_of tokens_kept)" = 1 ]'
	[ "$(grep -c '^assign' "$T/a.out")" -eq 1 ]
	# The losing bid is a token: the next message goes to w2 without asking.
	feed "msg $U2 1 0 jobs/# jobs/c x"
	wait_for 5 out_has "assign $U2 g w2 1 jobs/c x"
	! seen "$PREFIX/req/$U2/jobs/c|" || false
	[ "$(stat_of tokens_used)" -ge 1 ]
}

@test "one assign per interested group; props travel with the assign" {
	broker_start
	spy
	auction
	feed "group g1 jobs/#" "group g2 jobs/#" "group g3 other/#"
	feed "msg $U1 2 0 jobs/# jobs/a %00%FF rt=reply/x,cd=abc"
	wait_for 5 seen "$PREFIX/req/$U1/jobs/a|"
	bid g1 w1 "$U1" jobs/a
	bid g2 w9 "$U1" jobs/a
	bid g3 w5 "$U1" jobs/a
	wait_for 5 out_has "assign $U1 g1 w1 2 jobs/a %00%FF rt=reply/x,cd=abc"
	wait_for 5 out_has "assign $U1 g2 w9 2 jobs/a %00%FF rt=reply/x,cd=abc"
	# g3's bid has been read too: no assign for it
	wait_for 5 eval '[ "$(stat_of bids)" = 3 ]'
	! grep -q "^assign $U1 g3" "$T/a.out" || false
}

@test "no bid: asked again on the --retry schedule, then drop nobid at --deadline" {
	broker_start
	spy
	auction --retry 0.2 --deadline 1
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a pay"
	wait_for 5 out_has "drop $U1 nobid g jobs/a pay"
	[ "$(grep -c "^$PREFIX/req/$U1/jobs/a|" "$T/spy.out")" -ge 3 ]
	[ "$(stat_of drop_nobid)" = 1 ]
}


@test "a message for two groups, one bids: the drop names the other group and keeps rt and cd" {
	broker_start
	auction --retry 0.2 --deadline 1
	feed "group g1 jobs/#" "group g2 jobs/#" "msg $U1 1 0 jobs/# jobs/a pay rt=re/%2Cply,cd=c%01d"
	bid g1 w1 "$U1" jobs/a
	wait_for 5 out_has "assign $U1 g1 w1 1 jobs/a pay rt=re/%2Cply,cd=c%01d"
	wait_for 5 out_has "drop $U1 nobid g2 jobs/a pay rt=re/%2Cply,cd=c%01d"
	[ "$(grep -c '^drop ' "$T/a.out")" = 1 ]
}

@test "SIGTERM with a message for two groups waiting: one drop shutdown per group" {
	broker_start
	auction --retry 0.2 --deadline 30 --drain-timeout 0.2
	feed "group g1 jobs/#" "group g2 jobs/#" "msg $U1 1 0 jobs/# jobs/a p"
	wait_for 5 eval '[ "$(stat_of pending)" = 1 ]'
	kill -TERM "$(pidof_bg a)"
	wait_for 5 out_has "drop $U1 shutdown g2 jobs/a p"
	out_has "drop $U1 shutdown g1 jobs/a p"
}
@test "no group for the filter: drop nogroup; ungroup forgets a group" {
	broker_start
	auction
	feed "msg $U1 0 0 none/# none/a p1"
	wait_for 5 out_has "drop $U1 nogroup - none/a p1"
	feed "group g jobs/#" "ungroup g jobs/#" "msg $U2 0 0 jobs/# jobs/a p2"
	wait_for 5 out_has "drop $U2 nogroup - jobs/a p2"
}

@test "done records, free=n tokens, fail busy re-awarded, fail re-auctioned then drop failed" {
	broker_start
	spy
	auction --max-attempts 2 --retry 0.1 --deadline 5 --token-ttl 30
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p"
	wait_for 5 seen "$PREFIX/req/$U1/jobs/a|"
	bid g w1 "$U1" jobs/a
	wait_for 5 out_has "assign $U1 g w1 1 jobs/a p"
	pub "$PREFIX/done/g/w1/$U1" "ok free=1" -q 1 -V 5
	wait_for 5 out_has "done $U1 g w1 ok"
	# free=1 is a token: no request for the next one.
	feed "msg $U2 1 0 jobs/# jobs/b q"
	wait_for 5 out_has "assign $U2 g w1 1 jobs/b q"
	! seen "$PREFIX/req/$U2/jobs/b|" || false
	# fail busy: not an attempt; the message goes to the next bidder.
	pub "$PREFIX/done/g/w1/$U2" "fail busy" -q 1 -V 5
	wait_for 5 seen "$PREFIX/req/$U2/jobs/b|"
	bid g w2 "$U2" jobs/b
	wait_for 5 out_has "assign $U2 g w2 1 jobs/b q"
	# two real failures: dropped as failed.
	pub "$PREFIX/done/g/w2/$U2" "fail crashed" -q 1 -V 5
	wait_for 5 reqs "$U2" jobs/b 2
	bid g w3 "$U2" jobs/b
	wait_for 5 out_has "assign $U2 g w3 1 jobs/b q"
	pub "$PREFIX/done/g/w3/$U2" "fail crashed" -q 1 -V 5
	wait_for 5 out_has "drop $U2 failed g jobs/b q"
}

@test "a worker's will (P/gone) re-awards its jobs; a missing done re-awards after --ack-timeout" {
	broker_start
	spy
	auction --ack-timeout 1 --retry 0.1
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p" "msg $U2 1 0 jobs/# jobs/b q"
	# one request at a time for the group, for its oldest job; a bid
	# shows free slots, so the next job is asked for at once
	wait_for 5 seen "$PREFIX/req/$U1/jobs/a|"
	! seen "$PREFIX/req/$U2/jobs/b|" || false
	bid g w1 "$U1" jobs/a
	wait_for 5 seen "$PREFIX/req/$U2/jobs/b|"
	bid g w1 "$U2" jobs/b
	wait_for 5 out_has "assign $U2 g w1 1 jobs/b q"
	pub "$PREFIX/gone/g/w1" "" -q 1
	# both are asked again and go to w2
	wait_for 5 reqs "$U1" jobs/a 2
	bid g w2 "$U1" jobs/a
	bid g w2 "$U2" jobs/b
	wait_for 5 out_has "assign $U1 g w2 1 jobs/a p"
	wait_for 5 out_has "assign $U2 g w2 1 jobs/b q"
	pub "$PREFIX/done/g/w2/$U1" "ok" -q 1 -V 5
	# U2 gets no done from w2: after the ack timeout it is asked again
	wait_for 5 grep -q "no done for $U2 from g/w2" "$T/a.err"
	n=$(grep -c "^$PREFIX/req/$U2/jobs/b|" "$T/spy.out")
	wait_for 5 reqs "$U2" jobs/b $((n + 1))
	bid g w3 "$U2" jobs/b
	wait_for 5 out_has "assign $U2 g w3 1 jobs/b q"
}

@test "malformed records: one stderr line each with the line number; the stage goes on" {
	broker_start
	auction
	feed "msg short" "msg not-a-uuid 1 0 a/# a/b p" "msg $U1 7 0 a/# a/b p" \
		"group" "group g/x jobs/#" "ungroup" "verb-we-do-not-know a b" \
		"msg $U2 0 0 none/# none/a $(printf 'raw\tTAB')" "msg $U2 0 0 none/# none/a bad%2" \
		"msg $U3 0 0 none/# none/a last"
	wait_for 5 out_has "drop $U3 nogroup - none/a last"
	out_has "verb-we-do-not-know a b"
	grep -q "line 1: msg record needs 7 or 8 fields" "$T/a.err"
	grep -q "line 2: msg record: bad uuid" "$T/a.err"
	grep -q "line 3: msg record: bad qos" "$T/a.err"
	grep -q "line 4: malformed group record" "$T/a.err"
	grep -q "line 5: malformed group record" "$T/a.err"
	grep -q "line 6: malformed ungroup record" "$T/a.err"
	# copied out as they come, so checked: a raw control byte, a cut escape
	grep -q "line 8: msg record: bad escape in mtopic or payload" "$T/a.err"
	grep -q "line 9: msg record: bad escape in mtopic or payload" "$T/a.err"
	! grep -q "^drop $U2" "$T/a.out" || false
	[ "$(stat_of bad_records)" = 8 ]
}

@test "bids for unknown uuids and forged dones are ignored; dones for a group not known yet, quietly" {
	broker_start
	auction
	feed "group g jobs/#"
	# a bid for a message it never had (another balancer's) and one from
	# a group it does not know
	bid g w1 "$U1" jobs/a
	bid nog w1 "$U2" jobs/a
	wait_for 5 eval '[ "$(stat_of bids)" = 2 ]'
	[ "$(stat_of foreign)" = 1 ]
	[ "$(stat_of bids_ignored)" = 1 ]
	# a done for a uuid it never had; then two with bad topics, which it
	# counts, and one for a group whose announce has not come through
	# mqlb-sub yet (a worker answering P/hello): once that one is counted,
	# the others have been read too
	pub "$PREFIX/done/g/w1/$U1" "ok" -q 1 -V 5
	pub "$PREFIX/done/g/w1/not-a-uuid" "ok" -q 1 -V 5
	pub "$PREFIX/done/g/w1/$U1/more" "ok" -q 1 -V 5
	pub "$PREFIX/done/nog/w1/$U2" "ok" -q 1 -V 5
	pub "$PREFIX/done/nog/w1" "$U2 ok" -q 1 -V 5
	wait_for 5 eval '[ "$(stat_of done_nogroup)" = 2 ]'
	[ "$(stat_of forged)" = 2 ]
	# each warning names the whole topic; the unknown group's, none
	grep -qF "bad done topic $PREFIX/done/g/w1/not-a-uuid; ignored" "$T/a.err"
	grep -qF "bad done topic $PREFIX/done/g/w1/$U1/more; ignored" "$T/a.err"
	! grep -q nog "$T/a.err" || false
	# nothing awarded or done, and the foreign bid is not a token
	[ "$(stat_of awarded)" = 0 ]
	[ "$(stat_of done_ok)" = 0 ]
	[ "$(stat_of tokens)" = 0 ]
	! grep -q '^\(assign\|done\) ' "$T/a.out" || false
	# and it goes on: a message of its own is asked for and awarded
	feed "msg $U3 1 0 jobs/# jobs/a p"
	wait_for 5 eval '[ "$(stat_of asked)" -ge 1 ]'
	bid g w1 "$U3" jobs/a
	wait_for 5 out_has "assign $U3 g w1 1 jobs/a p"
}

@test "bids and free= slots for uuids it never had are another balancer's: no tokens" {
	broker_start
	spy
	auction --ack-timeout 5 --token-ttl 30
	feed "group g jobs/#"
	# another instance's request and job (balancers sharing intake)
	bid g w1 "$U3" jobs/x
	pub "$PREFIX/done/g/w1/$U3" "ok free=2" -q 1 -V 5
	wait_for 5 eval '[ "$(stat_of foreign)" = 2 ]'
	[ "$(stat_of tokens)" = 0 ]
	# so the next message is asked for, not handed to w1 unasked
	feed "msg $U1 1 0 jobs/# jobs/a p"
	wait_for 5 seen "$PREFIX/req/$U1/jobs/a|"
	! grep -q "^assign $U1" "$T/a.out" || false
	bid g w1 "$U1" jobs/a
	wait_for 5 out_has "assign $U1 g w1 1 jobs/a p"
	pub "$PREFIX/done/g/w1/$U1" "ok" -q 1 -V 5
	wait_for 5 out_has "done $U1 g w1 ok"
	# a late bid on a message it finished is still a free slot: a token
	bid g w2 "$U1" jobs/a
	wait_for 5 eval '[ "$(stat_of tokens)" = 1 ]'
	[ "$(stat_of foreign)" = 2 ]
}

@test "kept tokens of two bidders: each award goes to the worker whose token it takes" {
	# A candidate's wid pointed into the token ring, which closes up when
	# a token is taken: the award went to the bidder whose token came next,
	# which then got a job with no slot for it (fail busy).
	broker_start
	spy
	auction --ack-timeout 5 --token-ttl 30
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p"
	wait_for 5 seen "$PREFIX/req/$U1/jobs/a|"
	bid g w0 "$U1" jobs/a
	wait_for 5 out_has "assign $U1 g w0 1 jobs/a p"
	# bids that come after the award are free slots: tokens, w1's first
	bid g w1 "$U1" jobs/a
	wait_for 5 eval '[ "$(stat_of tokens)" = 1 ]'
	bid g w2 "$U1" jobs/a
	wait_for 5 eval '[ "$(stat_of tokens)" = 2 ]'
	feed "msg $U2 1 0 jobs/# jobs/b p"
	wait_for 5 eval '[ "$(stat_of tokens)" = 1 ]'
	feed "msg $U3 1 0 jobs/# jobs/c p"
	wait_for 5 eval '[ "$(stat_of tokens)" = 0 ]'
	wait_for 5 eval '[ "$(grep -c "^assign" "$T/a.out")" = 3 ]'
	[ "$(grep -c "^assign [^ ]* g w1 " "$T/a.out")" = 1 ]
	[ "$(grep -c "^assign [^ ]* g w2 " "$T/a.out")" = 1 ]
}

@test "EOF on stdin: finishes what is pending, then exits 0" {
	broker_start
	spy
	auction
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p"
	exec 5>&-
	wait_for 5 seen "$PREFIX/req/$U1/jobs/a|"
	kill -0 "$(pidof_bg a)"
	bid g w1 "$U1" jobs/a
	wait_for 5 out_has "assign $U1 g w1 1 jobs/a p"
	# Awarded is not finished under MQTT 5: it waits for the done.
	sleep 0.5
	kill -0 "$(pidof_bg a)"
	pub "$PREFIX/done/g/w1/$U1" "ok" -q 1 -V 5
	wait_for 10 exited "$(pidof_bg a)"
	wait "$(pidof_bg a)"
}

@test "SIGTERM: what still waits for a bid becomes drop shutdown after --drain-timeout; exit 0" {
	broker_start
	auction --drain-timeout 0.5
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p"
	wait_for 5 eval '[ "$(stat_of pending)" = 1 ]'
	kill -TERM "$(pidof_bg a)"
	wait_for 5 out_has "drop $U1 shutdown g jobs/a p"
	wait "$(pidof_bg a)"
}

@test "after a broker restart it subscribes again and goes on" {
	broker_start
	spy
	auction
	feed "group g jobs/#"
	broker_restart
	kill "$(pidof_bg spy)"
	spy
	feed "msg $U1 1 0 jobs/# jobs/a p"
	wait_for 10 seen "$PREFIX/req/$U1/jobs/a|"
	bid g w1 "$U1" jobs/a
	wait_for 5 out_has "assign $U1 g w1 1 jobs/a p"
}

@test "standard output behind: bids and dones wait at the broker, and that time counts towards neither --deadline nor --ack-timeout" {
	broker_start
	# stdout into a pipe that is not read until `echo go >"$T/gate"`
	mkfifo "$T/a.fifo" "$T/gate" "$T/a.in"
	bg r sh -c 'exec <"$2"; read -r _ <"$1"; exec cat' sh "$T/gate" "$T/a.fifo"
	ready_fifo a
	exec 5<>"$T/a.in"
	mqlb-auction -h 127.0.0.1 -p "$BROKER_PORT" --ready-fd 3 --listen "$T/a.sock" \
		--deadline 5 --ack-timeout 8 <"$T/a.in" >"$T/a.fifo" 2>"$T/a.err" 3>"$T/a.ready" 5>&- &
	echo $! | tee "$T/a.pid" >>"$T/pids"
	wait_ready a
	# 1210 messages of 1 KB; 1200 bids award more than 1 MiB of records
	pay=$(head -c 1000 /dev/zero | tr '\0' x)
	feed "group g jobs/#"
	for i in $(seq 1 1210); do
		printf 'msg 11111111-2222-4333-8444-%012d 1 0 jobs/# jobs/a %s\n' "$i" "$pay"
	done >&5
	wait_for 10 eval '[ "$(stat_of pending)" = 1210 ]'
	bids() {
		for i in $(seq 1 "$1"); do echo free=1; done |
			mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -l \
				-t "$PREFIX/rsp/g/w1/11111111-2222-4333-8444-000000000001/jobs/a"
	}
	bids 1200
	wait_for 10 eval '[ "$(stat_of paused)" = 1 ]'
	# paused past both timeouts; the last bids come meanwhile
	sleep 9
	bids 10
	[ "$(stat_of paused)" = 1 ]
	[ "$(stat_of drop_nobid)" = 0 ]
	[ "$(stat_of reawards)" = 0 ]
	[ "$(stat_of awarded)" -lt 1200 ]
	echo go >"$T/gate"
	wait_for 10 eval '[ "$(stat_of awarded)" = 1210 ]'
	[ "$(stat_of drop_nobid)" = 0 ]
	[ "$(stat_of reawards)" = 0 ]
	[ "$(stat_of paused)" = 0 ]
	wait_for 10 eval '[ "$(grep -c "^assign " "$T/r.out")" = 1210 ]'
	! grep -q '^drop ' "$T/r.out" || false
}
