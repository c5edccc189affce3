#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 350-python-worker: contrib/examples/worker.py, the credit-flow worker on python3-paho-mqtt,
# alone against a real mosquitto (the protocol seen from outside) and behind the pipeline.
load helpers/common.bash
setup() {
	mqlb_setup
	# Debian's python3-paho-mqtt serves /usr/bin/python3, which need not be first in PATH.
	PY=
	for p in /usr/bin/python3 python3; do
		"$p" -c 'import paho.mqtt' 2>/dev/null && { PY=$p; break; }
	done
	[ -n "$PY" ] || { echo "no python3 with paho.mqtt (contrib/deps installs python3-paho-mqtt)" >&2; return 1; }
	WORKER=$MQLB_SRCDIR/contrib/examples/worker.py
}
teardown() { mqlb_teardown; }

# spy: every protocol message as "topic|payload" in $T/spy.out, running
# before the function returns (a marker it saw proves the subscription).
spy() {
	bg spy mosquitto_sub -p "$BROKER_PORT" -h 127.0.0.1 -V 5 -t "$PREFIX/#" -t mark -F '%t|%p'
	local i
	for i in $(seq 1 100); do
		pub mark "$i"
		grep -q '^mark|' "$T/spy.out" && return 0
		sleep 0.1
	done
	return 1
}
seen() { grep -qxF -- "$1" "$T/spy.out"; }
# line_of LINE: the number of LINE's first occurrence in $T/spy.out.
line_of() { grep -nxF -- "$1" "$T/spy.out" | head -n1 | cut -d: -f1; }

# pyworker NAME SLOTS [OPTIONS] [-- COMMAND]: worker.py NAME of group g on jobs/#, running
# COMMAND (JOB, logging to $T/log, SVC seconds per job, by default); returns once it has
# published its credit (the spy must run).
pyworker() {
	local name=$1 slots=$2
	shift 2
	local opts=() cmd=$JOB
	while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
	[ "${1:-}" = -- ] && cmd=$2
	LOG=$T/log bg "$name" "$PY" "$WORKER" "${opts[@]}" 127.0.0.1 "$BROKER_PORT" g 'jobs/#' \
		"$name" "$slots" "$cmd"
	wait_for 10 grep -q "^$PREFIX/credit/g/$name|$slots\$" "$T/spy.out"
}

# The most jobs each worker ran at once, from the start and end lines of $T/log: "wid max".
most_at_once() {
	awk '$1 == "start" { if (++n[$2] > m[$2]) m[$2] = n[$2] } $1 == "end" { n[$2]-- }
	     END { for (w in m) print w, m[w] }' "$T/log"
}
ran() { awk -v w="$1" '$1 == "end" && $2 == w' "$T/log" | wc -l; }

@test "bad arguments are usage errors (exit 2); --help prints usage" {
	run "$PY" "$WORKER" 127.0.0.1 1883 g 'jobs/#' w1 0 true
	[ "$status" -eq 2 ]
	[[ "$output" == *"usage: worker.py"* ]]
	[[ "$output" == *"argument slots: not a number from 1 to 10000: '0'"* ]]
	run "$PY" "$WORKER" 127.0.0.1 1883 g/x 'jobs/#' w1 1 true
	[ "$status" -eq 2 ]
	[[ "$output" == *"argument group: not one topic level: 'g/x'"* ]]
	run "$PY" "$WORKER" 127.0.0.1 1883 g 'jobs/#' 'w+' 1 true
	[ "$status" -eq 2 ]
	[[ "$output" == *"argument wid: not one topic level: 'w+'"* ]]
	run "$PY" "$WORKER" 127.0.0.1 70000 g 'jobs/#' w1 1 true
	[ "$status" -eq 2 ]
	[[ "$output" == *"argument port: not a number from 1 to 65535: '70000'"* ]]
	run "$PY" "$WORKER" 127.0.0.1 1883 g 'jobs/#' w1 1
	[ "$status" -eq 2 ]
	[[ "$output" == *"give either a command or --sleep MS"* ]]
	run "$PY" "$WORKER" --sleep 5 127.0.0.1 1883 g 'jobs/#' w1 1 true
	[ "$status" -eq 2 ]
	[[ "$output" == *"give either a command or --sleep MS"* ]]
	run "$PY" "$WORKER" -V 4 127.0.0.1 1883 g 'jobs/#' w1 1 true
	[ "$status" -eq 2 ]
	[[ "$output" == *"argument -V: invalid choice: '4'"* ]]
	run "$PY" "$WORKER" --job-qos 2 127.0.0.1 1883 g 'jobs/#' w1 1 true
	[ "$status" -eq 2 ]
	[[ "$output" == *"argument --job-qos: invalid choice: 2"* ]]
	run "$PY" "$WORKER" --ahead x 127.0.0.1 1883 g 'jobs/#' w1 1 true
	[ "$status" -eq 2 ]
	[[ "$output" == *"argument --ahead: not a number from 0 to 10000: 'x'"* ]]
	run "$PY" "$WORKER" --help
	[ "$status" -eq 0 ]
	[[ "$output" == "usage: worker.py"* ]]
}

@test "a broker that is not there: exit 69" {
	broker_start
	broker_stop
	run "$PY" "$WORKER" 127.0.0.1 "$BROKER_PORT" g 'jobs/#' w1 1 true
	[ "$status" -eq 69 ]
	[[ "$output" == *"worker.py: cannot connect to 127.0.0.1:$BROKER_PORT"* ]]
}

@test "announce and credit once subscribed; a job: payload on stdin, its environment, one done" {
	broker_start
	spy
	export OUT=$T/out
	pyworker w1 2 -- 'cat >"$OUT.tmp"; echo " $MQLB_ID $MQLB_TOPIC $MQLB_GROUP $MQLB_WID" >>"$OUT.tmp"; mv "$OUT.tmp" "$OUT-$MQLB_ID"; exit ${MQLB_TOPIC##*/x}'
	seen "lb/sub/g|jobs/#"
	[ "$(line_of "lb/sub/g|jobs/#")" -lt "$(line_of "lb/credit/g/w1|2")" ]
	pub "lb/job/g/w1/$U1/jobs/a/x0" 'hello world' -q 1
	wait_for 5 seen "lb/done/g/w1/$U1|ok"
	[ "$(cat "$T/out-$U1")" = "hello world $U1 jobs/a/x0 g w1" ]
	pub "lb/job/g/w1/$U2/jobs/x3" 'failing' -q 1
	wait_for 5 seen "lb/done/g/w1/$U2|fail exit"
	# not a uuid: not a job
	pub "lb/job/g/w1/not-a-uuid/jobs/x0" 'no' -q 1
	pub "lb/job/g/w1/$U3/jobs/x0" 'last' -q 1
	wait_for 5 seen "lb/done/g/w1/$U3|ok"
	[ "$(grep -c '^lb/done/' "$T/spy.out")" -eq 3 ]
	wait_for 5 lines_in "$T/w1.out" 3
	[ "$(cat "$T/w1.out")" = "w1 $U1 jobs/a/x0 ok
w1 $U2 jobs/x3 fail exit
w1 $U3 jobs/x0 ok" ]
}

@test "beyond its slots: fail busy; the keepalive credit lists the jobs held; SIGTERM: credit 0, its jobs, gone, exit 0" {
	broker_start
	spy
	export GO=$T/go
	pyworker w1 1 -k 5 -- 'cat >/dev/null; while [ ! -e "$GO" ]; do sleep 0.05; done'
	pub "lb/job/g/w1/$U1/jobs/a" 'long' -q 1
	pub "lb/job/g/w1/$U2/jobs/b" 'beyond' -q 1
	wait_for 5 seen "lb/done/g/w1/$U2|fail busy"
	# a keepalive later (5 s): credit with the uuid of the job held
	wait_for 10 seen "lb/credit/g/w1|1 $U1"
	kill -TERM "$(pidof_bg w1)"
	wait_for 5 seen "lb/credit/g/w1|0 $U1"
	! grep -q '^lb/gone/' "$T/spy.out" || false
	! exited "$(pidof_bg w1)" || false
	# while leaving, a new job is turned away
	pub "lb/job/g/w1/$U3/jobs/c" 'late' -q 1
	wait_for 5 seen "lb/done/g/w1/$U3|fail busy"
	touch "$GO"
	wait_for 5 seen "lb/gone/g/w1|"
	[ "$(line_of "lb/done/g/w1/$U1|ok")" -lt "$(line_of "lb/gone/g/w1|")" ]
	wait_for 10 exited "$(pidof_bg w1)"
	rc=0
	wait "$(pidof_bg w1)" || rc=$?
	[ "$rc" -eq 0 ]
	[ "$(cat "$T/w1.out")" = "w1 $U1 jobs/a ok" ]
	[ "$(grep -c "^lb/done/g/w1/$U1|" "$T/spy.out")" -eq 1 ]
}

@test "P/hello (a balancer that just subscribed): announce and credit at once" {
	broker_start
	spy
	pyworker w1 2 -k 60
	[ "$(grep -cxF "lb/sub/g|jobs/#" "$T/spy.out")" = 1 ]
	pub lb/hello ""
	wait_for 5 eval '[ "$(grep -cxF "lb/credit/g/w1|2" "$T/spy.out")" = 2 ]'
	[ "$(grep -cxF "lb/sub/g|jobs/#" "$T/spy.out")" = 2 ]
}

@test "P/hello: first the ok dones of the last minute again, in one message; not a fail" {
	broker_start
	spy
	pyworker w1 2 -k 60 -- 'cat >/dev/null; [ "$MQLB_TOPIC" != jobs/f ]'
	pub "lb/job/g/w1/$U1/jobs/a" 'one' -q 1
	pub "lb/job/g/w1/$U2/jobs/f" 'two' -q 1
	wait_for 5 seen "lb/done/g/w1/$U1|ok"
	wait_for 5 seen "lb/done/g/w1/$U2|fail exit"
	pub lb/hello ""
	wait_for 5 eval '[ "$(grep -cxF "lb/credit/g/w1|2" "$T/spy.out")" = 2 ]'
	cat "$T/spy.out"
	[ "$(grep -c '^lb/done/g/w1|' "$T/spy.out")" = 1 ]
	again=$(grep -n "^lb/done/g/w1|" "$T/spy.out" | cut -d: -f1)
	[ "$(sed -n "${again}p" "$T/spy.out")" = "lb/done/g/w1|$U1 ok" ]
	[ "$again" -lt "$(grep -nxF "lb/credit/g/w1|2" "$T/spy.out" | tail -n1 | cut -d: -f1)" ]
}

@test "after a broker restart: credit again 5.5 s on, after the ok dones of around the outage, again" {
	broker_start
	spy
	export GO=$T/go
	pyworker w1 1 -k 30 -- 'cat >/dev/null; while [ ! -e "$GO" ]; do sleep 0.05; done'
	pub "lb/job/g/w1/$U1/jobs/a" 'one' -q 1
	touch "$GO"
	wait_for 5 seen "lb/done/g/w1/$U1|ok"
	restart_resync g w1 "$U1"
}

@test "--ahead 1: credit 1+1; a job awarded while the slot runs waits and runs after it; one more is refused fail busy" {
	broker_start
	spy
	export GO=$T/go
	LOG=$T/log bg w1 "$PY" "$WORKER" --ahead 1 127.0.0.1 "$BROKER_PORT" g 'jobs/#' w1 1 \
		'cat >/dev/null; echo "start $MQLB_ID" >>"$LOG"; while [ ! -e "$GO-$MQLB_ID" ]; do sleep 0.05; done'
	wait_for 10 seen "lb/credit/g/w1|1+1"
	pub "lb/job/g/w1/$U1/jobs/a" one -q 1
	pub "lb/job/g/w1/$U2/jobs/b" two -q 1
	pub "lb/job/g/w1/$U3/jobs/c" three -q 1
	wait_for 5 seen "lb/done/g/w1/$U3|fail busy"
	# U2 waits behind U1, not started
	[ "$(cat "$T/log")" = "start $U1" ]
	touch "$T/go-$U1"
	wait_for 5 seen "lb/done/g/w1/$U1|ok"
	wait_for 5 grep -qx "start $U2" "$T/log"
	touch "$T/go-$U2"
	wait_for 5 seen "lb/done/g/w1/$U2|ok"
	wait_for 5 lines_in "$T/w1.out" 2
	[ "$(cat "$T/w1.out")" = "w1 $U1 jobs/a ok
w1 $U2 jobs/b ok" ]
}

@test "behind the pipeline: three workers, one slow: every job once, the slow one only what it can take" {
	broker_start
	spy
	pipeline
	SVC=0.05 pyworker fast-1 2
	SVC=0.05 pyworker fast-2 2
	SVC=0.5 pyworker slow 1
	wait_balanced
	# at once: a backlog the fast ones need 0.75 s for, the slow one 30 s
	publish 60
	wait_for 60 settled 60
	run account 60
	echo "$output"
	[ "${lines[1]}" = "processed 60" ]
	[ "${lines[2]}" = "duplicated 0" ]
	[ "${lines[3]}" = "dropped 0" ]
	wait_for 10 eval '[ "$(grep -c "^lb/done/g/.*|ok$" "$T/spy.out")" -ge 60 ]'
	[ "$(grep -c '^lb/done/' "$T/spy.out")" -eq 60 ]
	! grep -q '|fail busy$' "$T/spy.out" || false
	while read -r w m; do
		case $w in slow) [ "$m" -le 1 ] ;; *) [ "$m" -le 2 ] ;; esac
	done < <(most_at_once)
	echo "ran: fast-1 $(ran fast-1), fast-2 $(ran fast-2), slow $(ran slow); most at once: $(most_at_once | tr '\n' ' ')"
	[ "$(ran slow)" -lt "$(ran fast-1)" ]
	[ "$(ran slow)" -lt "$(ran fast-2)" ]
}

@test "MQTT 3.1.1 and 5 workers (jobs at QoS 0 and 1) behind the pipeline: every job once on each; kill -9: the will" {
	broker_start b "log_type notice"
	spy
	pipeline
	SVC=0.02 pyworker v311 1 -V 311
	SVC=0.02 pyworker v5 1 -V 5 --job-qos 1
	wait_balanced
	grep -q ' as [^ ]* (p2, ' "$T/broker-b/log"
	grep -q ' as [^ ]* (p5, ' "$T/broker-b/log"
	publish_paced 40 30
	wait_for 60 settled 40
	run account 40
	echo "$output"
	[ "${lines[1]}" = "processed 40" ]
	[ "${lines[2]}" = "duplicated 0" ]
	[ "$(ran v311)" -ge 1 ]
	[ "$(ran v5)" -ge 1 ]
	kill -KILL "$(pidof_bg v311)" "$(pidof_bg v5)"
	wait_for 10 seen "lb/gone/g/v311|"
	wait_for 10 seen "lb/gone/g/v5|"
}
