#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 100-sub: mqlb-sub end to end against a private mosquitto: the records it
# writes, subacks, group expiry, topic validation, loop protection,
# retained messages, overlapping filters, --share, -t, reconnects, SIGTERM,
# back-pressure, stats and readiness.
bats_require_minimum_version 1.5.0
load helpers/common.bash
setup() {
	mqlb_setup
	broker_start
}
teardown() { mqlb_teardown; }

# sub NAME [ARGS...]: start mqlb-sub (records in $T/NAME.out, stats socket
# $T/NAME.sock) and wait until it says it is ready.
sub() {
	local name=$1
	shift
	ready_fifo "$name"
	bg "$name" ready3 "$T/$name.ready" mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" \
		--listen "$T/$name.sock" --ready-fd 3 "$@"
	wait_ready "$name"
}

# spy: every message under the prefix as "topic|payload" in $T/spy.out,
# running before the function returns (a marker it saw proves it).
spy() {
	bg spy mosquitto_sub -p "$BROKER_PORT" -h 127.0.0.1 -V 5 -t "$PREFIX/#" -F '%t|%p'
	local i
	for i in $(seq 1 100); do
		pub "$PREFIX/mark" "$i"
		grep -q "^$PREFIX/mark|" "$T/spy.out" && return 0
		sleep 0.1
	done
	return 1
}
subacks() { grep -c "^$PREFIX/suback/$1|$2\$" "$T/spy.out" || true; }
subacks_ge() { [ "$(subacks "$1" "$2")" -ge "$3" ]; }

# stats NAME STAT: one value from the stats socket of mqlb-sub NAME.
stats() {
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
		print $s "stats\n";
		while (<$s>) { last if /^ok/; print }' "$T/$1.sock" | awk -v n="$2" '$2 == n { print $3 }'
}
stat_is() { [ "$(stats "$1" "$2")" = "$3" ]; }

has() { grep -qxF -- "$2" "$T/$1.out"; }
# count NAME PATTERN: lines of NAME's records matching the ERE.
count() { grep -cE -- "$2" "$T/$1.out" || true; }
count_is() { [ "$(count "$1" "$2")" -eq "$3" ]; }
count_ge() { [ "$(count "$1" "$2")" -ge "$3" ]; }
# msgs NAME MTOPIC: the msg records for MTOPIC.
msgs() { awk -v t="$2" '$1 == "msg" && $6 == t' "$T/$1.out"; }
has_msg() { [ -n "$(msgs "$1" "$2")" ]; }

# announce_ok NAME GROUP FILTER: announce and wait for the group record and
# the suback (the spy must run).
announce_ok() {
	local n
	n=$(subacks "$2" "$3")
	announce "$2" "$3"
	wait_for 10 has "$1" "group $2 $3"
	wait_for 10 subacks_ge "$2" "$3" $((n + 1))
}

@test "--ready-fd: one newline once P/sub/+ is acknowledged" {
	ready_fifo s
	bg s ready3 "$T/s.ready" mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" --ready-fd 3
	timeout 10 cat "$T/s.ready" >"$T/ready.out"
	[ "$(od -An -c "$T/ready.out" | tr -d ' ')" = '\n' ]
	# Ready means subscribed: an announce now is not lost.
	announce g1 'jobs/#'
	wait_for 10 has s 'group g1 jobs/#'
}

@test "an announce gives a group record, then a suback once subscribed" {
	spy
	sub s
	announce_ok s g1 'jobs/#'
	# The suback promises the subscription is in place: a message right
	# after it becomes a record.
	pub jobs/a hello -q 1
	wait_for 10 has_msg s jobs/a
	read -r -a f <<<"$(msgs s jobs/a)"
	[ "${#f[@]}" -eq 7 ]
	[ "${f[0]}" = msg ]
	[[ "${f[1]}" =~ ^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$ ]]
	[ "${f[2]}" = 1 ]
	[ "${f[3]}" = 0 ]
	[ "${f[4]}" = 'jobs/#' ]
	[ "${f[5]}" = jobs/a ]
	[ "${f[6]}" = hello ]
	[ "$(count s '^group ')" -eq 1 ]
}

@test "a repeated announce gives another suback but no new group record" {
	spy
	sub s
	announce_ok s g1 'jobs/#'
	announce g1 'jobs/#'
	wait_for 10 subacks_ge g1 'jobs/#' 2
	announce g1 'jobs/#'
	wait_for 10 subacks_ge g1 'jobs/#' 3
	[ "$(count s '^group ')" -eq 1 ]
	stat_is s groups 1
	stat_is s groups_seen 1
	# A second group on the same filter: its own group record and suback.
	announce_ok s g2 'jobs/#'
	[ "$(count s '^group ')" -eq 2 ]
	[ "$(subacks g2 'jobs/#')" -eq 1 ]
}

@test "msg records: QoS, empty and '-' payloads, spaces, all 256 bytes" {
	spy
	sub s -q 2
	announce_ok s g1 'jobs/#'
	pub jobs/q0 a -q 0
	pub jobs/q1 b -q 1
	pub jobs/q2 c -q 2
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t jobs/empty -n
	pub jobs/dash - -q 1
	pub 'jobs/with space' 'a b%c' -q 1
	local i
	for i in $(seq 0 255); do printf "\\$(printf %03o "$i")"; done >"$T/all"
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t jobs/bin -f "$T/all" -q 1
	wait_for 10 has_msg s jobs/bin
	[ "$(msgs s jobs/q0 | cut -d' ' -f3,7)" = "0 a" ]
	[ "$(msgs s jobs/q1 | cut -d' ' -f3,7)" = "1 b" ]
	[ "$(msgs s jobs/q2 | cut -d' ' -f3,7)" = "2 c" ]
	[ "$(msgs s jobs/empty | cut -d' ' -f7)" = "-" ]
	[ "$(msgs s jobs/dash | cut -d' ' -f7)" = "%2D" ]
	[ "$(msgs s 'jobs/with%20space' | cut -d' ' -f7)" = "a%20b%25c" ]
	msgs s jobs/bin | recodec unescape 6 >"$T/all.back"
	cmp "$T/all" "$T/all.back"
	# Every line is one record of 7 fields.
	[ "$(awk '$1 == "msg" && NF != 7' "$T/s.out" | wc -l)" -eq 0 ]
}

@test "a 1 MiB binary payload becomes one record, byte for byte" {
	spy
	sub s
	announce_ok s g1 'jobs/#'
	head -c 1048576 /dev/urandom >"$T/big"
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t jobs/big -f "$T/big" -q 1
	wait_for 20 has_msg s jobs/big
	msgs s jobs/big | recodec unescape 6 >"$T/big.back"
	cmp "$T/big" "$T/big.back"
}

@test "MQTT 5 properties travel in the props field" {
	spy
	sub s
	announce_ok s g1 'jobs/#'
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -V 5 -q 1 -t jobs/p -m x \
		-D publish response-topic 'replies/a b' -D publish correlation-data 'c,d=1' \
		-D publish content-type text/plain -D publish message-expiry-interval 600 \
		-D publish user-property 'k=1' 'v,2'
	pub jobs/none y -q 1
	wait_for 10 has_msg s jobs/none
	read -r -a f <<<"$(msgs s jobs/p)"
	[ "${#f[@]}" -eq 8 ]
	echo "${f[7]}" | recodec props | sort >"$T/props"
	grep -qxF 'rt=replies/a b' "$T/props"
	grep -qxF 'cd=c,d=1' "$T/props"
	grep -qxF 'ct=text/plain' "$T/props"
	grep -qxF 'u.k=1=v,2' "$T/props"
	# The broker counts the expiry down from 600 while the message waits.
	grep -qE '^exp=(59[0-9]|600)$' "$T/props"
	[ "$(wc -l <"$T/props")" -eq 5 ]
	# No properties: no props field.
	[ "$(msgs s jobs/none | awk '{ print NF }')" -eq 7 ]
}

@test "MQTT 3.1.1: announces, subacks and msg records work without properties" {
	spy
	sub s -V 311
	announce_ok s g1 'jobs/#'
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -V 5 -q 1 -t jobs/a -m x \
		-D publish user-property k v
	wait_for 10 has_msg s jobs/a
	[ "$(msgs s jobs/a | cut -d' ' -f5-)" = 'jobs/# jobs/a x' ]
}

@test "a group not announced for --group-ttl expires; its topic is unsubscribed" {
	spy
	sub s --group-ttl 3
	announce_ok s g1 'jobs/#'
	wait_for 10 has s 'ungroup g1 jobs/#'
	stat_is s groups 0
	stat_is s groups_expired 1
	# Nobody needs jobs/# now: its messages are not taken any more.
	announce_ok s g2 'other/#'
	pub jobs/late x -q 1
	pub other/mark y -q 1
	wait_for 10 has_msg s other/mark
	! has_msg s jobs/late || false
	# Announcing again brings the group back, with a new group record.
	announce_ok s g1 'jobs/#'
	[ "$(count s '^group g1 jobs/#$')" -eq 2 ]
	pub jobs/again z -q 1
	wait_for 10 has_msg s jobs/again
}

@test "announces keep a group alive; a topic stays while any group wants it" {
	spy
	sub s --group-ttl 2
	announce_ok s g1 'jobs/#'
	announce_ok s g2 'jobs/#'
	# g2 goes on announcing, g1 falls silent.
	local i
	for i in $(seq 1 60); do
		announce g2 'jobs/#'
		has s 'ungroup g1 jobs/#' && break
		sleep 0.2
	done
	has s 'ungroup g1 jobs/#'
	! has s 'ungroup g2 jobs/#' || false
	stat_is s groups 1
	pub jobs/still x -q 1
	wait_for 10 has_msg s jobs/still
}

@test "bad announces: a warning line each, no group, no subscription" {
	spy
	# A retained announce is history, not a live worker.
	pub "$PREFIX/sub/g9" jobs -q 1 -r
	sub s
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -q 1 -t "$PREFIX/sub/g1" -n
	printf 'jobs/\xff\xfe' >"$T/bad-utf8"
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -q 1 -t "$PREFIX/sub/g2" -f "$T/bad-utf8"
	head -c 4097 /dev/zero | tr '\0' a >"$T/long"
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -q 1 -t "$PREFIX/sub/g3" -f "$T/long"
	announce g4 'a/#/b'
	announce g5 "$PREFIX/req/#"
	announce g6 "$PREFIX"
	announce g7 'a+/b'
	announce g8 '$share/x/jobs'
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -q 1 -t "$PREFIX/sub/" -m jobs
	wait_for 10 stat_is s bad_announces 10
	grep -qx "mqlb-sub: warning: group g1: empty topic; ignored" "$T/s.err"
	grep -qx "mqlb-sub: warning: group g2: topic is not valid UTF-8; ignored" "$T/s.err"
	grep -qx "mqlb-sub: warning: group g3: topic too long; ignored" "$T/s.err"
	grep -qx "mqlb-sub: warning: group g4: bad wildcard in topic filter; ignored" "$T/s.err"
	grep -qx "mqlb-sub: warning: group g5: topic filter under the protocol prefix; ignored" "$T/s.err"
	grep -qx "mqlb-sub: warning: group g6: topic filter under the protocol prefix; ignored" "$T/s.err"
	grep -qx "mqlb-sub: warning: group g7: bad wildcard in topic filter; ignored" "$T/s.err"
	grep -q "^mqlb-sub: warning: group g8: .*shared" "$T/s.err"
	grep -qx "mqlb-sub: warning: announce with an empty group; ignored" "$T/s.err"
	grep -q "^mqlb-sub: warning: announce for group \"g9\" is retained; ignored" "$T/s.err"
	[ "$(wc -l <"$T/s.err")" -eq 10 ]
	[ "$(count s '^group ')" -eq 0 ]
	stat_is s groups 0
	# No subacks went out, and a good announce after them still works.
	announce_ok s ok 'jobs/#'
	[ "$(grep -c "^$PREFIX/suback/" "$T/spy.out")" -eq 1 ]
	# A filter of exactly 4096 bytes is still fine.
	head -c 4096 /dev/zero | tr '\0' b >"$T/max"
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -q 1 -t "$PREFIX/sub/g10" -f "$T/max"
	wait_for 10 has s "group g10 $(cat "$T/max")"
}

@test "--max-groups: pairs beyond it are refused with a warning" {
	spy
	sub s --max-groups 2
	announce_ok s g1 a
	announce_ok s g2 b
	announce g3 c
	wait_for 10 stat_is s bad_announces 1
	grep -qx 'mqlb-sub: warning: group g3 on c: over --max-groups 2; ignored' "$T/s.err"
	! has s 'group g3 c' || false
	# Known pairs are still answered.
	announce g1 a
	wait_for 10 subacks_ge g1 a 2
}

@test "loop protection: P/... arriving through a wildcard is not work" {
	spy
	sub s
	announce_ok s g1 '#'
	pub "$PREFIX/req/x/jobs" '' -q 1
	pub "$PREFIX/work/g/w/jobs" x -q 1
	pub jobs/end y -q 1
	wait_for 10 has_msg s jobs/end
	[ -z "$(awk -v p="$PREFIX/" '$1 == "msg" && index($6, p) == 1' "$T/s.out")" ]
	# Its own announces and subacks and the spy's marks came back too.
	[ "$(stats s skipped_loop)" -ge 3 ]
	# With another prefix the same topics are work.
	sub s2 --prefix other
	PREFIX=other announce g1 '#'
	wait_for 10 has s2 'group g1 #'
	pub "$PREFIX/req/x/jobs" '' -q 1
	wait_for 10 has_msg s2 "$PREFIX/req/x/jobs"
}

@test "retained messages are skipped unless --retained" {
	spy
	pub jobs/state on -q 1 -r
	sub s
	announce_ok s g1 'jobs/#'
	pub jobs/live x -q 1
	wait_for 10 has_msg s jobs/live
	! has_msg s jobs/state || false
	stat_is s skipped_retained 1
	sub s2 --retained
	announce g2 'jobs/#'
	wait_for 10 has_msg s2 jobs/state
	[ "$(msgs s2 jobs/state | cut -d' ' -f4,7)" = "1 on" ]
	# A live message sent with the retain flag is work for both.
	pub jobs/live2 y -q 1 -r
	wait_for 10 has_msg s jobs/live2
	wait_for 10 has_msg s2 jobs/live2
}

@test "overlapping filters: one msg per (message, filter), MQTT 5 and 3.1.1" {
	local v
	spy
	for v in 5 311; do
		sub "s$v" -V "$v" --prefix "p$v"
		PREFIX="p$v"
		announce "g1" 'jobs/#'
		announce "g2" 'jobs/+'
		announce "g3" 'jobs/#'
		announce "g4" 'other/#'
		wait_for 10 count_is "s$v" '^group ' 4
		PREFIX=lb
	done
	# Wait until both have their filters in place: a marker reaches both.
	local i
	for i in $(seq 1 100); do
		pub jobs/mark "$i" -q 1
		has_msg s5 jobs/mark && has_msg s311 jobs/mark && break
		sleep 0.1
	done
	pub jobs/a x -q 1
	pub jobs/b/c y -q 1
	pub other/end z -q 1
	for v in 5 311; do
		wait_for 10 has_msg "s$v" other/end
		# jobs/a matches jobs/# and jobs/+: two records, never two for one filter.
		[ "$(msgs "s$v" jobs/a | cut -d' ' -f5 | sort | tr '\n' ' ')" = 'jobs/# jobs/+ ' ]
		[ "$(msgs "s$v" jobs/a | cut -d' ' -f2 | sort -u | wc -l)" -eq 2 ]
		[ "$(msgs "s$v" jobs/b/c | cut -d' ' -f5)" = 'jobs/#' ]
		[ "$(msgs "s$v" other/end | wc -l)" -eq 1 ]
	done
}

@test "--share NAME: balancers sharing intake get each message once" {
	spy
	sub s1 --share intake
	sub s2 --share intake
	announce g1 'jobs/#'
	wait_for 10 has s1 'group g1 jobs/#'
	wait_for 10 has s2 'group g1 jobs/#'
	# Both confirmed: each sends its own suback.
	wait_for 10 subacks_ge g1 'jobs/#' 2
	local i
	for i in $(seq 1 20); do echo "m$i"; done | mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t jobs/x -q 1 -l
	wait_for 10 eval '[ $(( $(count s1 "^msg ") + $(count s2 "^msg ") )) -ge 20 ]'
	sleep 0.5
	[ $(($(count s1 '^msg ') + $(count s2 '^msg '))) -eq 20 ]
	# Every message exactly once across the two.
	cat "$T/s1.out" "$T/s2.out" | awk '$1 == "msg" { print $7 }' | sort | uniq -d >"$T/dups"
	[ ! -s "$T/dups" ]
}

@test "stand-alone -t: subscribes directly, no groups, ready once subscribed" {
	sub s -t 'a/#' -t 'b/+'
	pub a/x 1 -q 1
	pub b/y 2 -q 1
	pub c/z 3 -q 1
	announce g1 'c/#'
	pub a/end 4 -q 1
	wait_for 10 has_msg s a/end
	[ "$(msgs s a/x | cut -d' ' -f5-)" = 'a/# a/x 1' ]
	[ "$(msgs s b/y | cut -d' ' -f5-)" = 'b/+ b/y 2' ]
	! has_msg s c/z || false
	# Announces are not listened to in this mode.
	[ "$(count s '^group ')" -eq 0 ]
	[ "$(count s '^msg ')" -eq 3 ]
}

@test "reconnect after a broker restart: announces answered, messages flow" {
	spy
	sub s
	announce_ok s g1 'jobs/#'
	kill "$(pidof_bg spy)"
	broker_restart
	wait_for 20 stat_is s connected 1
	spy
	# The group is still known: a new announce gets a suback, not a record.
	announce g1 'jobs/#'
	wait_for 20 subacks_ge g1 'jobs/#' 1
	local i
	for i in $(seq 1 100); do
		pub jobs/after "$i" -q 1
		has_msg s jobs/after && break
		sleep 0.1
	done
	has_msg s jobs/after
	[ "$(count s '^group ')" -eq 1 ]
	# A new group after the restart works from scratch.
	announce_ok s g2 'new/#'
	pub new/x y -q 1
	wait_for 10 has_msg s new/x
}

@test "SIGTERM: records flushed, exit 0" {
	spy
	sub s
	announce_ok s g1 'jobs/#'
	seq 1 500 | mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t jobs/n -q 1 -l
	wait_for 20 stat_is s msg 500
	kill -TERM "$(pidof_bg s)"
	wait "$(pidof_bg s)" && rc=0 || rc=$?
	[ "$rc" -eq 0 ]
	[ "$(count s '^msg ')" -eq 500 ]
	[ "$(tail -c1 "$T/s.out" | od -An -c | tr -d ' ')" = '\n' ]
}

# gated_sub N: mqlb-sub writing into a pipe whose reader reads nothing
# until `echo go >"$T/gate"` (records then in $T/r.out), announced on
# jobs/#, and N records of about 1 KiB published to it. KEEPALIVE and
# GROUP_TTL set those options.
gated_sub() {
	spy
	mkfifo "$T/out.fifo" "$T/gate"
	bg r sh -c 'exec <"$2"; read -r _ <"$1"; exec cat' sh "$T/gate" "$T/out.fifo"
	ready_fifo s
	ready3 "$T/s.ready" mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" --listen "$T/s.sock" \
		--ready-fd 3 -k "${KEEPALIVE:-60}" ${GROUP_TTL:+--group-ttl "$GROUP_TTL"} \
		>"$T/out.fifo" 2>"$T/s.err" &
	echo $! >"$T/s.pid"
	echo $! >>"$T/pids"
	wait_ready s
	announce g1 'jobs/#'
	wait_for 10 subacks_ge g1 'jobs/#' 1
	local pay i
	pay=$(head -c 1000 /dev/zero | tr '\0' x)
	for i in $(seq 1 "$1"); do echo "$i$pay"; done |
		mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t jobs/n -q 1 -l
	# The broker accepted them all (QoS 1); give mqlb-sub time to take
	# what it will.
	sleep 1
}

@test "a full stdout pauses intake; nothing is lost" {
	# Three times what the pipe and the 1 MiB output buffer hold.
	gated_sub 3000
	local n
	n=$(stats s msg)
	[ "$n" -gt 0 ]
	[ "$n" -lt 2000 ]
	stat_is s connected 1
	# Open the gate: everything arrives, none twice.
	echo go >"$T/gate"
	wait_for 30 eval '[ "$(grep -c "^msg " "$T/r.out")" -ge 3000 ]'
	[ "$(awk '$1 == "msg" { print $7 + 0 }' "$T/r.out" | sort -n | uniq | wc -l)" -eq 3000 ]
	kill -TERM "$(cat "$T/s.pid")"
	wait "$(cat "$T/s.pid")" && rc=0 || rc=$?
	[ "$rc" -eq 0 ]
}

@test "a pause longer than the keepalive keeps the connection and loses nothing" {
	# libmosquitto's keepalive alone closed it after two keepalives of
	# pause: its PINGRESP waited unread behind the messages held off.
	KEEPALIVE=5 gated_sub 3000
	sleep 12
	stat_is s connected 1
	echo go >"$T/gate"
	wait_for 30 eval '[ "$(grep -c "^msg " "$T/r.out")" -ge 3000 ]'
	[ "$(awk '$1 == "msg" { print $7 + 0 }' "$T/r.out" | sort -n | uniq | wc -l)" -eq 3000 ]
	! grep -q 'connection lost' "$T/s.err" || false
	stat_is s connected 1
}

@test "a pause longer than --group-ttl forgets no group: what is published meanwhile is taken too" {
	GROUP_TTL=2 gated_sub 3000
	# The worker goes on announcing; its announces wait, unread, behind
	# the messages held off.
	bg announcer sh -c 'while :; do mosquitto_pub -p "$1" -h 127.0.0.1 -q 1 -t "$2/sub/g1" \
		-m "jobs/#"; sleep 0.5; done' sh "$BROKER_PORT" "$PREFIX"
	# Paused (its output full) for longer than --group-ttl: the wait for
	# the pause is an event (slow under sanitizers), the 3 s after it the
	# point of the test.
	wait_for 30 stat_is s paused 1
	sleep 3
	stat_is s paused 1
	stat_is s groups 1
	stat_is s groups_expired 0
	seq 3001 3010 | mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t jobs/n -q 1 -l
	echo go >"$T/gate"
	wait_for 30 eval '[ "$(grep -c "^msg " "$T/r.out")" -ge 3010 ]'
	[ "$(awk '$1 == "msg" { print $7 + 0 }' "$T/r.out" | sort -n | uniq | wc -l)" -eq 3010 ]
	! grep -q '^ungroup ' "$T/r.out" || false
	stat_is s groups_expired 0
	stat_is s paused 0
}

@test "SIGTERM while stdout is full: every message taken is written, those held while paused too; exit 0" {
	gated_sub 3000
	local n pid
	# all 3000 taken from the broker: written out, or held read while paused
	wait_for 10 eval '[ $(($(stats s msg) + $(stats s backlog))) -eq 3000 ]'
	[ "$(stats s backlog)" -gt 0 ]
	n=3000
	pid=$(cat "$T/s.pid")
	kill -TERM "$pid"
	# It waits for its reader rather than drop what it holds.
	sleep 0.5
	kill -0 "$pid"
	echo go >"$T/gate"
	wait "$pid" && rc=0 || rc=$?
	[ "$rc" -eq 0 ]
	wait_for 10 eval '[ "$(grep -c "^msg " "$T/r.out")" -ge '"$n"' ]'
	[ "$(grep -c '^msg ' "$T/r.out")" -eq "$n" ]
	[ "$(tail -c1 "$T/r.out" | od -An -c | tr -d ' ')" = '\n' ]
}

@test "EPIPE on stdout ends mqlb-sub cleanly, as soon as the reader is gone" {
	spy
	mkfifo "$T/p"
	bg h sh -c 'exec head -n1 <"$1"' sh "$T/p"
	ready_fifo s
	ready3 "$T/s.ready" mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" --ready-fd 3 >"$T/p" 2>"$T/s.err" &
	echo $! >"$T/s.pid"
	echo $! >>"$T/pids"
	wait_ready s
	# head takes the group record and is gone; mqlb-sub, with nothing more
	# to write, notices the closed pipe by itself (it may stop before its
	# subscription is even acknowledged).
	announce g1 'jobs/#'
	local pid rc
	pid=$(cat "$T/s.pid")
	wait_for 10 exited "$pid"
	wait "$pid" && rc=0 || rc=$?
	[ "$rc" -eq 0 ]
	[ "$(cat "$T/h.out")" = 'group g1 jobs/#' ]
}

@test "stats: the counters (the spool's too, by default), then ok; other queries are errors; socket mode 0600" {
	spy
	sub s
	[ "$(stat -c %a "$T/s.sock")" = 600 ]
	announce_ok s g1 'jobs/#'
	pub jobs/a x -q 1
	wait_for 10 stat_is s msg 1
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
		print $s "stats\nbogus\n";
		while (<$s>) { print; last if /^error/ }' "$T/s.sock" >"$T/stats"
	cut -d' ' -f1,2 "$T/stats" >"$T/names"
	cat >"$T/want" <<-'EOF'
		stat groups
		stat groups_seen
		stat groups_expired
		stat msg
		stat skipped_retained
		stat skipped_loop
		stat bad_announces
		stat held
		stat held_total
		stat replayed
		stat drop_nogroup
		stat connected
		stat paused
		stat backlog
		stat backlog_max
		stat spooled
		stat spool_finished
		stat spool_replayed
		stat spool_given_up
		stat spool_live
		stat spool_bad_lines
		stat spool_errors
		stat spool_compactions
		stat spool_bytes
		stat dones
		ok
		error unknown-query
	EOF
	diff -u "$T/want" "$T/names"
	grep -qx 'stat groups 1' "$T/stats"
	grep -qx 'stat connected 1' "$T/stats"
	grep -qx 'stat paused 0' "$T/stats"
	grep -qx 'stat backlog 0' "$T/stats"
}

@test "messages for a filter nobody announced (yet) are held, then replayed, or dropped as nogroup after --group-ttl" {
	sub s1 -c -i sub-held -q 1
	announce g 'jobs/#'
	wait_for 5 lines_in "$T/s1.out" 1 '^group g jobs/#$'
	kill -TERM "$(pidof_bg s1)"
	wait_for 5 exited "$(pidof_bg s1)"
	# While mqlb-sub is away its persistent session keeps these for it.
	pub jobs/a while-away -q 1
	sub s2 -c -i sub-held -q 1
	# Nobody has announced jobs/# in this run yet: held, not lost.
	sleep 0.5
	! grep -q '^msg ' "$T/s2.out" || false
	announce g 'jobs/#'
	wait_for 5 lines_in "$T/s2.out" 1 ' 1 0 jobs/# jobs/a while-away$'
	kill -TERM "$(pidof_bg s2)"
	wait_for 5 exited "$(pidof_bg s2)"
	pub jobs/b nobody-wants-me -q 1
	# No announce this time: a dead letter once the group TTL has passed.
	sub s3 -c -i sub-held -q 1 --group-ttl 1
	wait_for 10 lines_in "$T/s3.out" 1 ' nogroup - jobs/b nobody-wants-me$'
	grep -q '^drop [0-9a-f-]\{36\} nogroup - jobs/b nobody-wants-me$' "$T/s3.out"
}

@test "group names up to 256 bytes, as in every stage: the suback topic whole, even under a 256-byte --prefix; 257 bytes refused with one warning" {
	local g256 h257 p256
	g256=$(printf '%256s' '' | tr ' ' g)
	h257=$(printf '%257s' '' | tr ' ' h)
	p256=$(printf '%256s' '' | tr ' ' p)
	spy
	sub s
	announce_ok s "$g256" 'jobs/#'
	announce "$h257" 'jobs/#'
	wait_for 10 stat_is s bad_announces 1
	cat "$T/s.err"
	grep -qx "mqlb-sub: warning: group ${h257:0:32}...: a name of 257 bytes, over 256; ignored" "$T/s.err"
	[ "$(wc -l <"$T/s.err")" -eq 1 ]
	stat_is s groups 1
	# a suback for it would have gone out before the next one for g256
	announce_ok s "$g256" 'jobs/#'
	[ "$(grep -c "^$PREFIX/suback/h" "$T/spy.out")" -eq 0 ]
	[ "$(count s '^group ')" -eq 1 ]
	# prefix and group at their longest: a suback topic of 520 bytes
	bg spy2 mosquitto_sub -p "$BROKER_PORT" -h 127.0.0.1 -t "$p256/suback/#" -F '%t|%p'
	sub s2 --prefix "$p256"
	wait_for 10 eval "PREFIX=$p256 announce $g256 'jobs/#'; sleep 0.2; grep -q . \"\$T/spy2.out\""
	head -n1 "$T/spy2.out" | cut -c1-600
	[ "$(head -n1 "$T/spy2.out")" = "$p256/suback/$g256|jobs/#" ]
}

@test "a 256-byte group end to end: mqlb-sub | mqlb-auction | mqlb-dispatch to its worker" {
	local g256
	g256=$(printf '%256s' '' | tr ' ' g)
	touch "$T/log" "$T/records"
	pipeline
	ready_fifo w1
	LOG="$T/log" SVC=0 bg w1 ready3 "$T/w1.ready" mqlb-worker -h 127.0.0.1 -p "$BROKER_PORT" \
		-g "$g256" -t 'jobs/#' --wid w1 --fallback none --listen "$T/w1.sock" --ready-fd 3 \
		-- sh -c "$JOB"
	wait_ready w1
	wait_for 15 eval '[ "$(stat_in "$T/w1.sock" subacks)" -ge 1 ]'
	publish 3
	wait_for 15 settled 3 || { account 3; false; }
	account 3 | grep -qx 'processed 3'
	! grep -q '^drop ' "$T/records" || false
	! grep -q 'warning' "$T/auction.err" "$T/sub.err" || false
}
