#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 455-tls-burst: bursts of QoS 1 jobs over TLS, through the pipeline and its workers, from
# mosquitto's own TLS (a record a packet) and through t/helpers/tlspack.py (full records of
# hundreds of packets): every job done once, none left in OpenSSL's buffer until a keepalive.
# $TLS is split into options on purpose.
# shellcheck disable=SC2086
load helpers/common.bash
load helpers/tls.bash

setup_file() { T=$BATS_FILE_TMPDIR tls_certs "$BATS_FILE_TMPDIR/tls"; }

setup() {
	mqlb_setup
	CERTS=$BATS_FILE_TMPDIR/tls
	TLS="--cafile $CERTS/ca.crt"
	# No keepalive in a test's time: a packet that waits for the next
	# byte from the broker would wait for the PINGRESP, and stall the test.
	KEEP=300
	PY=python3
	[ -x /usr/bin/python3 ] && PY=/usr/bin/python3
}

teardown() { mqlb_teardown; }

# tlspack PORT IDLE: t/helpers/tlspack.py in front of the broker on PORT, packing what it
# sends after IDLE seconds of quiet; sets PACK_PORT.
tlspack() {
	bg tlspack "$PY" "$MQLB_SRCDIR/t/helpers/tlspack.py" "$CERTS/server.crt" \
		"$CERTS/server.key" "$1" "$T/tlspack.port" "$2"
	wait_for 10 test -s "$T/tlspack.port"
	PACK_PORT=$(cat "$T/tlspack.port")
}

# suback_spy PORT [OPTIONS]: the subacks to group g, on the broker at PORT.
suback_spy() {
	local port=$1
	shift
	bg tls-suback mosquitto_sub -h 127.0.0.1 -p "$port" "$@" -t "$PREFIX/suback/g" -C 1
}
subacked() { lines_in "$T/tls-suback.out" 1; }
# announced: g announced on jobs/# and its suback seen; announcing again every second until
# then, in case the spy subscribed after the first (more often, tlspack would hold them all).
ANN=0
announced() {
	subacked && return 0
	[ $((ANN++ % 20)) -eq 0 ] && announce g 'jobs/#'
	return 1
}

# burst PORT N [OPTIONS]: job-1..job-N on jobs/a at once, QoS 1, to the broker at PORT.
burst() {
	local port=$1 n=$2
	shift 2
	seq 1 "$n" | sed 's/^/job-/' |
		mosquitto_pub -h 127.0.0.1 -p "$port" "$@" -V 5 -q 1 -t jobs/a -l
}

# balanced PORT: the pipeline and three workers of four slots running true, all on PORT
# with TLS, keepalive $KEEP; returns once the group's suback is out.
balanced() {
	local w
	BROKER_PORT=$1 SUBOPTS="$TLS -k $KEEP" AUCTIONOPTS="$TLS -k $KEEP" \
		DISPATCHOPTS="$TLS -k $KEEP" pipeline
	for w in w1 w2 w3; do
		BROKER_PORT=$1 worker "$w" 0 -j 4 $TLS -k "$KEEP" -- true
	done
	wait_for 15 subacked
}

# done_once N: N jobs done ok, each once, none dropped.
done_once() {
	awk -v n="$1" '$1 == "done" { c[$2]++; k++; if ($NF != "ok") bad = 1 }
		$1 == "drop" { bad = 1 }
		END { for (u in c) if (c[u] != 1) bad = 1; if (k != n || length(c) != n) bad = 1
		      if (bad) print k + 0 " done, " length(c) " jobs"; exit bad }' "$T/records"
}

@test "400 jobs at once over mosquitto's TLS listener: each done once, no keepalive waited for" {
	broker_start b "cafile $CERTS/ca.crt" "certfile $CERTS/server.crt" \
		"keyfile $CERTS/server.key" "set_tcp_nodelay true"
	suback_spy "$BROKER_PORT" $TLS
	balanced "$BROKER_PORT"
	burst "$BROKER_PORT" 400 $TLS
	wait_for 60 lines_in "$T/records" 400 '^done '
	run done_once 400
	echo "$output"
	[ "$status" -eq 0 ]
	pipeline_stop
}

@test "400 jobs at once via a record-packing TLS front: each done once, no keepalive waited for" {
	broker_start b "set_tcp_nodelay true"
	# Quiet for 2 ms, what came leaves: awards and dones go on, bursts
	# leave as full records.
	tlspack "$BROKER_PORT" 0.002
	suback_spy "$BROKER_PORT"
	balanced "$PACK_PORT"
	burst "$BROKER_PORT" 400
	wait_for 60 lines_in "$T/records" 400 '^done '
	run done_once 400
	echo "$output"
	[ "$status" -eq 0 ]
	pipeline_stop
}

@test "mqlb-sub: a burst of 3000 ending in a full TLS record of 780 messages, all read at once" {
	broker_start b "set_tcp_nodelay true"
	tlspack "$BROKER_PORT" 0.2
	suback_spy "$BROKER_PORT"
	ready_fifo sub
	bg sub ready3 "$T/sub.ready" mqlb-sub -h 127.0.0.1 -p "$PACK_PORT" $TLS -k "$KEEP" \
		--ready-fd 3
	wait_ready sub
	wait_for 15 announced
	# All 3000 reach mqlb-sub at once, the last 16 KiB record holding
	# about 780: more than a wake-up reads (MQ_READ_BURST), and a wake-up
	# that left some in OpenSSL's buffer would have no byte from the
	# broker to wake the next (fails with libmosquitto's loop_read made to
	# return after each message, as with errno EAGAIN after a callback).
	burst "$BROKER_PORT" 3000
	wait_for 20 lines_in "$T/sub.out" 3000 '^msg '
	[ "$(grep -c '^msg ' "$T/sub.out")" -eq 3000 ]
}
