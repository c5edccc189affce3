#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 105-sub-spool-default: mqlb-sub spools unless told --no-spool: where the
# default spool lives (STATE_DIRECTORY, XDG_STATE_HOME, HOME), its name
# from -i, one mqlb-sub per spool, and the README's balancer line killed
# with kill -9 and started again the same way: every job runs.
bats_require_minimum_version 1.5.0
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

sub_stat() { stat_in "$T/sub.sock" "$1"; }

# sub NAME [ARGS...]: mqlb-sub alone, ready; stats on $T/NAME.sock.
sub() {
	local name=$1
	shift
	rm -f "$T/$name.ready"
	ready_fifo "$name"
	bg "$name" ready3 "$T/$name.ready" mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" \
		--listen "$T/$name.sock" --ready-fd 3 "$@"
	wait_ready "$name"
}
spool_of() { stat_in "$T/$1.sock" spool_bytes; }

@test "the README's balancer line, kill -9 of the whole pipeline 300 jobs in, started again the same way: all 300 run" {
	broker_start
	touch "$T/log" "$T/records"
	# README: mqlb-sub -c -i mqlb-sub-1 | mqlb-auction | mqlb-dispatch
	SUBOPTS="-c -i mqlb-sub-1 --listen $T/sub.sock"
	pipeline
	worker w1 0.02
	worker w2 0.02
	wait_balanced
	publish 300
	# 0.5 s after: jobs have run, and a backlog sits in the pipeline,
	# PUBACKed to the broker long ago
	sleep 0.5
	[ "$(sub_stat msg)" -ge $(($(ended) + 50)) ]
	echo "ended before kill -9: $(ended) of 300; mqlb-sub took $(sub_stat msg)"
	# all three at once, as a supervisor's kill of the unit would
	kill -KILL "$(cat "$T/sub.pid")" "$(cat "$T/auction.pid")" "$(cat "$T/dispatch.pid")"
	for s in sub auction dispatch; do wait_for 5 exited "$(cat "$T/$s.pid")"; done
	# the default spool, named after the client id
	[ -s "$T/state/mqlb/mqlb-sub-1.spool" ]
	[ "$(stat -c %a "$T/state/mqlb")" = 700 ]
	[ "$(stat -c %a "$T/state/mqlb/mqlb-sub-1.spool")" = 600 ]
	pipeline
	wait_for 60 settled 300 || { account 300; false; }
	account 300
	account 300 | grep -qx 'lost 0'
	account 300 | grep -qx 'dropped 0'
	[ "$(sub_stat spool_replayed)" -gt 0 ]
	for s in sub auction dispatch; do kill -0 "$(cat "$T/$s.pid")"; done
}

@test "the default spool: \$STATE_DIRECTORY, else \$XDG_STATE_HOME/mqlb, else ~/.local/state/mqlb; named after -i; made mode 0700" {
	broker_start
	mkdir "$T/sd"
	STATE_DIRECTORY=$T/sd:$T/other sub a -i 'lb/one two'
	[ -n "$(spool_of a)" ]
	[ -f "$T/sd/lb%2fone%20two.spool" ]
	[ ! -e "$T/other" ]
	[ ! -e "$T/state" ]
	sub b -i b1
	[ -f "$T/state/mqlb/b1.spool" ]
	[ "$(stat -c %a "$T/state")" = 700 ]
	[ "$(stat -c %a "$T/state/mqlb")" = 700 ]
	mkdir -p "$T/home"
	XDG_STATE_HOME= HOME=$T/home sub c -i c1
	[ -f "$T/home/.local/state/mqlb/c1.spool" ]
	[ "$(stat -c %a "$T/home/.local/state/mqlb")" = 700 ]
	# a client id too long for a file name: cut, and told apart by a hash
	long=$(printf '%300s' '' | tr ' ' i)
	sub d -i "$long"
	[ -n "$(spool_of d)" ]
	[ "$(find "$T/state/mqlb" -name 'iiii*.spool' | wc -l)" -eq 1 ]
	[ "$(find "$T/state/mqlb" -name 'iiii*.spool' -printf '%f' | wc -c)" -le 255 ]
}

@test "without -i: mqlb-sub.spool, and a second instance at once takes mqlb-sub.2.spool" {
	broker_start
	sub a
	sub b
	[ -f "$T/state/mqlb/mqlb-sub.spool" ]
	[ -f "$T/state/mqlb/mqlb-sub.2.spool" ]
	[ -n "$(spool_of a)" ]
	[ -n "$(spool_of b)" ]
	# the first ends: the next one takes its spool again
	kill -TERM "$(cat "$T/a.pid")"
	wait_for 5 exited "$(cat "$T/a.pid")"
	sub c -v
	grep -q "spool $T/state/mqlb/mqlb-sub.spool" "$T/c.err"
}

@test "two mqlb-sub with the same -i: the second says the spool is in use, exit 111" {
	broker_start
	sub a -i same
	run --separate-stderr mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" -i same
	echo "$stderr"
	[ "$status" -eq 111 ]
	[ "$stderr" = "mqlb-sub: error: spool $T/state/mqlb/same.spool is in use by another mqlb-sub" ]
	kill -0 "$(cat "$T/a.pid")"
}

@test "a spool directory that cannot be made: one error line, exit 111" {
	: >"$T/file"
	XDG_STATE_HOME=$T/file/x run --separate-stderr mqlb-sub -h 127.0.0.1 -p 1 -i x
	echo "$stderr"
	[ "$status" -eq 111 ]
	[ "$stderr" = "mqlb-sub: error: cannot make the spool directory $T/file/x/mqlb: Not a directory" ]
	XDG_STATE_HOME= HOME= run --separate-stderr mqlb-sub -h 127.0.0.1 -p 1 -i x
	echo "$stderr"
	[ "$status" -eq 111 ]
	[ "$stderr" = "mqlb-sub: error: no place for the spool: set STATE_DIRECTORY, XDG_STATE_HOME or HOME, or give --spool FILE or --no-spool" ]
}

@test "--no-spool: no file, no spool stats; -t has no spool either" {
	broker_start
	sub a -i a1 --no-spool
	sub b -t 'x/#'
	[ ! -e "$T/state" ]
	[ -z "$(spool_of a)" ]
	[ -z "$(spool_of b)" ]
	[ -n "$(stat_in "$T/a.sock" msg)" ]
}

@test "--no-spool: bad usage" {
	run --separate-stderr mqlb-sub --no-spool --spool "$T/s"
	[ "$status" -eq 2 ]
	[[ "$stderr" == *"--spool and --no-spool: choose one"* ]]
	run --separate-stderr mqlb-sub --no-spool --spool-sync
	[ "$status" -eq 2 ]
	[[ "$stderr" == *"--spool-sync, --spool-ttl and --spool-replays need a spool"* ]]
	run --separate-stderr mqlb-sub -t 'a/#' --spool-ttl 5
	[ "$status" -eq 2 ]
	[[ "$stderr" == *"need a spool"* ]]
}
