#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 820-ha: balancer high availability on one broker: two balancer instances
# (the unit's pipeline script) with mqlb-sub --share, three workers; each
# message runs once, and a killed instance leaves the other one serving.
load helpers/common.bash
bats_require_minimum_version 1.5.0
setup() {
	mqlb_setup
	B=$MQLB_BUILDDIR
	: >"$T/pgids"
}
teardown() {
	local g
	while read -r g; do kill -KILL -- "-$g" 2>/dev/null || true; done <"$T/pgids"
	mqlb_teardown
}

# balancer NAME: one instance, as mqlb-balancer@NAME runs it, sharing intake.
balancer() {
	mkdir -p "$T/etc" "$T/run-$1"
	printf 'host 127.0.0.1\nport %s\n' "$BROKER_PORT" >"$T/etc/balancer-$1.conf"
	printf 'share balancers\n' >"$T/etc/balancer-$1.sub.conf"
	printf 'ack-timeout 3\n' >"$T/etc/balancer-$1.auction.conf"
	mkdir -p "$T/state-$1"
	MQLB_CONFDIR=$T/etc RUNTIME_DIRECTORY=$T/run-$1 STATE_DIRECTORY=$T/state-$1 MQLB_BINDIR=$B \
		setsid "$B/contrib/systemd/balancer" "$1" >"$T/bal-$1.out" 2>"$T/bal-$1.err" &
	echo $! >"$T/pgid-$1"
	echo $! >>"$T/pgids"
	wait_for 15 eval "mqlb-stat $T/run-$1/dispatch.sock >/dev/null 2>&1"
}

JOB='echo "start $MQLB_WID $(cat)" >>"$LOG"; sleep 0.05'

# worker NAME [OPTIONS]: a two-slot worker (credit flow unless --bid).
worker() {
	LOG="$T/log" bg "$1" mqlb-worker -h 127.0.0.1 -p "$BROKER_PORT" -g g -t 'jobs/#' -j 2 \
		--wid "$1" --listen "$T/$1.sock" "${@:2}" -- sh -c "$JOB"
}

publish() {
	seq "$2" $(($2 + $1 - 1)) | sed 's/^/job-/' |
		mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -q 1 -t jobs/x -l
}

started() { grep -c '^start' "$T/log" 2>/dev/null || echo 0; }
runs_at_least() { [ "$(started)" -ge "$1" ]; }
# ran FIRST LAST: every job of that range ran exactly once.
ran_once() {
	awk -v a="$1" -v b="$2" '$1 == "start" { c[$3]++ }
		END { for (i = a; i <= b; i++) if (c["job-" i] != 1) { print "job-" i " ran " c["job-" i] + 0 " times"; bad = 1 }
		      exit bad }' "$T/log"
}
# Both sub stages have taken on the topic (their subacks seen by the workers).
# ran_all A B: every one of job-A .. job-B started at least once.
ran_all() {
	awk -v a="$1" -v b="$2" '$1 == "start" { c[$3] = 1 }
		END { for (i = a; i <= b; i++) if (!c["job-" i]) exit 1 }' "$T/log"
}
groups_on() { [ "$(mqlb-stat "$T/run-$1/sub.sock" | awk '$1 == "groups" { print $2 }')" = 1 ]; }
# auction_stat NAME STAT: one figure of that instance's mqlb-auction.
auction_stat() { mqlb-stat "$T/run-$1/auction.sock" | awk -v s="$2" '$1 == s { print $2 }'; }

# shared_intake [WORKER-OPTIONS]: two balancers, three workers, 300 jobs:
# each runs once, each message reached one auction only, and both had a
# share.
shared_intake() {
	broker_start
	balancer a
	balancer b
	worker w1 "$@"
	worker w2 "$@"
	worker w3 "$@"
	wait_for 15 groups_on a
	wait_for 15 groups_on b
	publish 300 1
	wait_for 60 runs_at_least 300
	sleep 0.5
	ran_once 1 300
	[ "$(started)" -eq 300 ]
	# Each message reached one auction only, and both had a share.
	mqlb-stat "$T/run-a/auction.sock" "$T/run-b/auction.sock" >&3
	[ "$(auction_stat a msg)" -gt 0 ]
	[ "$(auction_stat b msg)" -gt 0 ]
	[ $(($(auction_stat a msg) + $(auction_stat b msg))) -eq 300 ]
}

@test "two balancers sharing intake, credit workers: every message runs once, both take part" {
	shared_intake
	# Each balancer sees a worker's whole credit; the worker refuses (fail
	# busy) a job it has no slot for, and that balancer places it again:
	# every award but the refused ones is a job run.
	[ "$(auction_stat a credit)" -gt 0 ]
	[ "$(auction_stat b credit)" -gt 0 ]
	[ $(($(auction_stat a awarded) + $(auction_stat b awarded) - $(auction_stat a busy) - $(auction_stat b busy))) -eq 300 ]
	[ $(($(auction_stat a drop_failed) + $(auction_stat b drop_failed))) -eq 0 ]
}

@test "two balancers sharing intake, bidding workers: every message runs once, awarded once" {
	# A bid's reservation outlives the balancer's token (--token-ttl 0.8 s)
	# by 1.2 s rather than the default 0.2, so that a loaded machine does
	# not make an award late. The refusals (fail busy) this test used to
	# see once in a few runs were not that but an award to the wrong
	# bidder (place.c, fixed; t/410 has the case). What this test guards is
	# that no balancer uses another's bids.
	shared_intake --bid --reserve-timeout 2
	# neither takes the other's bids or free slots
	[ $(($(auction_stat a awarded) + $(auction_stat b awarded))) -eq 300 ]
	[ $(($(auction_stat a foreign) + $(auction_stat b foreign))) -gt 0 ]
}

@test "a killed balancer: the other one serves everything published after; restarted, it loses nothing and runs nothing twice" {
	broker_start
	balancer a
	balancer b
	worker w1
	worker w2
	worker w3
	wait_for 15 groups_on a
	wait_for 15 groups_on b
	publish 200 1
	wait_for 30 runs_at_least 20
	kill -KILL -- "-$(cat "$T/pgid-a")"
	wait_for 10 eval '! pgrep -g "$(cat "$T/pgid-a")" >/dev/null'
	publish 200 1001
	wait_for 60 eval 'ran_once 1001 1200 >/dev/null'
	sleep 0.5
	ran_once 1001 1200
	# What a held when it died is in its spool: restarted, it writes it out
	# again, so every one of the first 200 runs, once: a job of a's still
	# running is named in its worker's credit, and one that ended while a
	# was down (its mqlb-sub keeps no session) in the ok dones the workers
	# say again to a's hello.
	local held dup
	held=$(awk '$1 == "start" { c[$3]++ } END { n = 0; for (i = 1; i <= 200; i++) if (!c["job-" i]) n++; print n }' "$T/log")
	[ "$held" -gt 0 ]
	balancer a
	wait_for 60 ran_all 1 200
	[ "$(auction_stat a msg)" -ge "$held" ]
	dup=$(awk '$1 == "start" { c[$3]++ } END { n = 0; for (k in c) if (c[k] > 1) n += c[k] - 1; print n }' "$T/log")
	echo "# held by the killed instance: $held of 200, all run after its restart; run twice: $dup" >&3
	[ "$dup" = 0 ]
}
