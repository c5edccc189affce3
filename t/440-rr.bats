#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 440-rr: MQTT 5 request/response through the whole balancer: mosquitto_rr
# asks on jobs/x, the pipeline awards the request to one worker, and the
# job's output comes back on the response topic with the correlation data.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }


# worker NAME: a one-slot worker of group g on jobs/# that echoes its input
# and says back.
worker() {
	ready_fifo "$1"
	bg "$1" ready3 "$T/$1.ready" mqlb-worker -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -g g \
		-t 'jobs/#' --wid "$1" --fallback none --ready-fd 3 -- sh -c 'cat; echo back'
	wait_ready "$1"
}

# rr PAYLOAD [RESPONSE-TOPIC]: one request with mosquitto_rr; its reply on
# stdout.
rr() {
	timeout 20 mosquitto_rr -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -t jobs/x -e "${2:-reply/x}" \
		-m "$1" -W 15
}

@test "mosquitto_rr through the pipeline gets the job's output as its reply" {
	broker_start
	pipeline
	worker w1
	wait_balanced
	run rr hi
	echo "$output"
	[ "$status" -eq 0 ]
	[ "$output" = "hiback" ]
	# it went through the balancer: an award, a sent, a done
	wait_for 5 lines_in "$T/records" 1 '^done .* g w1 ok$'
	grep -q '^sent .* g w1$' "$T/records"
}

@test "six requests at once, two workers: each reply matches its request" {
	broker_start
	pipeline
	worker w1
	worker w2
	wait_balanced
	for i in 1 2 3 4 5 6; do
		rr "req$i" "reply/x$i" >"$T/rr$i.out" &
		echo $! >>"$T/pids"
	done
	wait_for 25 eval '[ "$(cat "$T"/rr*.out 2>/dev/null | grep -c back)" -ge 6 ]'
	for i in 1 2 3 4 5 6; do
		[ "$(cat "$T/rr$i.out")" = "req${i}back" ]
	done
	wait_for 5 lines_in "$T/records" 6 '^done .* ok$'
}
