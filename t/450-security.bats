#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 450-security: the shipped mosquitto ACL (contrib/mosquitto) with accounts
# per group keeps a worker to its own group's work; TLS with a CA made here
# carries a job end to end; control sockets refuse other users.
# as ACCOUNT and $TLS are split into options on purpose.
# shellcheck disable=SC2046,SC2086
load helpers/common.bash
load helpers/tls.bash

setup() {
	mqlb_setup
	# A client run as nobody must reach a socket here, and a broker that
	# drops to its own user must read the password file: a directory
	# anyone may enter (bats' own is 0700).
	PRIV=$(mktemp -d /tmp/mqlb-450.XXXXXX)
	chmod 0755 "$PRIV"
	AUTH=$PRIV/auth
	mkdir -p "$AUTH"
	chmod 0755 "$AUTH"
	cp "$MQLB_SRCDIR/contrib/mosquitto/acl" "$AUTH/acl"
	mosquitto_passwd -c -b "$AUTH/passwd" balancer pw-balancer
	mosquitto_passwd -b "$AUTH/passwd" producer pw-producer
	mosquitto_passwd -b "$AUTH/passwd" A pw-A
	mosquitto_passwd -b "$AUTH/passwd" B pw-B
	chmod 0644 "$AUTH/acl" "$AUTH/passwd"
}

teardown() {
	mqlb_teardown
	rm -rf "$PRIV"
}

# The shipped acl and a password file, on a private broker.
secure_broker() {
	broker_start b "allow_anonymous false" "password_file $AUTH/passwd" \
		"acl_file $AUTH/acl"
}

# as ACCOUNT: the -u/-P options of that account.
as() { echo "-u $1 -P pw-$1"; }

# The balancer's three stages as the balancer account ($TLS: its options).
balancer() {
	SUBOPTS="$(as balancer) ${TLS:-}" AUCTIONOPTS="$(as balancer) ${TLS:-}" \
		DISPATCHOPTS="$(as balancer) ${TLS:-}" pipeline
}

# A job: log its start with the worker id, uuid and payload; with $HOLD,
# wait for the file $HOLD before it ends.
# shellcheck disable=SC2016
JOB='echo "start $MQLB_WID $MQLB_GROUP $MQLB_ID $(cat)" >>"$LOG"
	if [ -n "$HOLD" ]; then i=0; while [ ! -e "$HOLD" ] && [ $i -lt 400 ]; do sleep 0.05; i=$((i + 1)); done; fi
	echo "end $MQLB_WID" >>"$LOG"'

# worker NAME ACCOUNT GROUP TOPIC [OPTIONS]: a one-slot worker running JOB,
# logged in as ACCOUNT, worker id and client id NAME.
worker() {
	local name=$1 account=$2 group=$3 topic=$4
	shift 4
	ready_fifo "$name"
	LOG="$T/log" HOLD=${HOLD:-} bg "$name" ready3 "$T/$name.ready" mqlb-worker -h 127.0.0.1 \
		-p "$BROKER_PORT" $(as "$account") ${TLS:-} -g "$group" -t "$topic" --wid "$name" \
		-i "$name" --ready-fd 3 "$@" -- sh -c "$JOB"
	wait_ready "$name"
}

# suback_spy GROUP: the group's own account watches its subacks (the
# balancer account may write them, not read them).
suback_spy() {
	bg "suback-$1" mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" $(as "$1") ${TLS:-} \
		-i "spy-$1" -t "lb/suback/$1" -v
}
subacked() { lines_in "$T/suback-$1.out" 1; }

# produce TOPIC FIRST LAST: jobs job-FIRST..job-LAST as the producer, QoS 1.
produce() {
	seq "$2" "$3" | sed 's/^/job-/' | mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" \
		$(as producer) ${TLS:-} -q 1 -t "$1" -l
}

# Every job-1..job-N ran exactly once in GROUP, all on worker WID if given.
once_in() {
	awk -v g="$1" -v n="$2" -v w="${3:-}" '$1 == "start" && $3 == g { c[$5]++; if (w != "" && $2 != w) { print $5 " ran on " $2; bad = 1 } }
		END { for (i = 1; i <= n; i++) if (c["job-" i] != 1) { print g ": job-" i " ran " c["job-" i] + 0 " times"; bad = 1 }
		      exit bad }' "$T/log"
}

@test "accounts per group with the shipped acl: both groups balanced, every job done once per group" {
	secure_broker
	balancer
	suback_spy A
	suback_spy B
	worker wa1 A A 'jobs/#' --fallback none
	worker wa2 A A 'jobs/#' --fallback none
	worker wb1 B B 'jobs/#' --fallback none
	wait_for 15 subacked A
	wait_for 15 subacked B
	produce jobs/x 1 20
	wait_for 30 lines_in "$T/records" 40 '^done '
	run once_in A 20
	echo "$output"
	[ "$status" -eq 0 ]
	run once_in B 20 wb1
	echo "$output"
	[ "$status" -eq 0 ]
	# Both of A's workers took some.
	grep -q '^start wa1 ' "$T/log"
	grep -q '^start wa2 ' "$T/log"
	[ "$(grep -c '^done .* ok$' "$T/records")" -eq 40 ]
	! grep -q '^drop ' "$T/records" || false
	pipeline_stop
}

@test "an account cannot take another group's work, nor bid, finish or die for its workers" {
	secure_broker
	balancer
	suback_spy A
	suback_spy B
	# What reaches the balancer's account on done and gone.
	bg acks mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" $(as balancer) -i spy-acks \
		-t lb/done/# -t lb/gone/# -v
	worker wa1 A A 'jobs/#' --fallback none
	HOLD=$T/go worker wb1 B B 'jobs/#' --fallback none
	# Group A's account posing as a worker of B on a topic of its own:
	# announce, requests, bids and, with no suback, the shared fallback.
	worker evil A B 'jobs/evil/#' --suback-timeout 0.3 --fallback share
	wait_for 15 subacked A
	wait_for 15 subacked B

	produce jobs/evil/1 1 1
	wait_for 15 lines_in "$T/log" 1 '^start wb1 B '
	uuid=$(awk '$1 == "start" && $2 == "wb1" { print $4; exit }' "$T/log")
	[ "${#uuid}" -eq 36 ]
	# With job-1 in wb1's hands, A's account forges its done, its will, a
	# bid for evil, and B's account a done from another client id.
	forge() {
		local account=$1 id=$2 topic=$3
		shift 3
		mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" $(as "$account") -i "$id" -V 5 -q 1 \
			-t "$topic" "$@" 2>&1
	}
	run forge A forger "lb/done/B/wb1/$uuid" -m "fail forged"
	echo "$output"
	[[ "$output" == *"Not authorized"* ]]
	run forge A forger "lb/gone/B/wb1" -n
	[[ "$output" == *"Not authorized"* ]]
	run forge A forger "lb/rsp/B/evil/$uuid/jobs/evil/1" -n
	[[ "$output" == *"Not authorized"* ]]
	run forge A forger "lb/sub/B" -m "jobs/forged/#"
	[[ "$output" == *"Not authorized"* ]]
	run forge B wb1x "lb/done/B/wb1/$uuid" -m "fail forged"
	[[ "$output" == *"Not authorized"* ]]
	# The legitimate path is open: wb1's own done comes through.
	touch "$T/go"
	wait_for 15 lines_in "$T/acks.out" 1 "^lb/done/B/wb1/$uuid ok"

	produce jobs/evil/x 2 10
	wait_for 30 lines_in "$T/records" 20 '^done '
	sleep 0.5
	# Every job once in each group, B's all on wb1; nothing forged arrived.
	run once_in B 10 wb1
	echo "$output"
	[ "$status" -eq 0 ]
	run once_in A 10
	echo "$output"
	[ "$status" -eq 0 ]
	! grep -q '^start evil' "$T/log" || false
	! grep -q 'forged' "$T/records" "$T/acks.out" || false
	! grep -q '^lb/gone/' "$T/acks.out" || false
	! grep -E -q '^(assign|sent|done) [^ ]+ B evil' "$T/records" || false
	! grep -E -q '^group B jobs/(evil|forged)/' "$T/records" || false
	[ "$(grep -c "^done $uuid B wb1 ok" "$T/records")" -eq 1 ]
	! grep -q '^drop ' "$T/records" || false
	# And the intruder never saw a suback or an award: it is still alive,
	# waiting.
	kill -0 "$(pidof_bg evil)"
	[ ! -s "$T/evil.out" ]
	pipeline_stop
}

@test "wrong password, unknown account, no account: refused at CONNECT, exit 69, one clear line" {
	secure_broker
	run timeout 30 mqlb-worker -h 127.0.0.1 -p "$BROKER_PORT" -u B -P wrong -g B -t 'jobs/#' -- true
	echo "$output"
	[ "$status" -eq 69 ]
	[ "$output" = "mqlb-worker: error: broker 127.0.0.1:$BROKER_PORT refused the connection: Not authorized" ]
	run timeout 30 mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" -u nobody-here -P x -V 311
	echo "$output"
	[ "$status" -eq 69 ]
	[ "$output" = "mqlb-sub: error: broker 127.0.0.1:$BROKER_PORT refused the connection: Connection Refused: not authorised." ]
	run timeout 30 mqlb-worker -h 127.0.0.1 -p "$BROKER_PORT" -g B -t 'jobs/#' -- true
	echo "$output"
	[ "$status" -eq 69 ]
	[ "$output" = "mqlb-worker: error: broker 127.0.0.1:$BROKER_PORT refused the connection: Not authorized" ]
}

@test "TLS with a CA made here, the shipped mosquitto.conf and acl: a job end to end; a wrong CA or name is a clear error" {
	TLSDIR=$PRIV/tls
	tls_certs "$TLSDIR"
	# The shipped example, on our port and files: its TLS listener becomes
	# broker_start's, its plain one goes, and client certificates are required.
	local conf=()
	while IFS= read -r l; do conf+=("$l"); done < <(
		sed -e '/^#/d; /^$/d; /^listener /d; /^log_/d; /^persistence/d' \
			-e "s|/etc/mosquitto/ca_certificates/ca.crt|$TLSDIR/ca.crt|" \
			-e "s|/etc/mosquitto/certs/|$TLSDIR/|" \
			-e "s|/etc/mosquitto/passwd|$AUTH/passwd|" \
			-e "s|/etc/mosquitto/mqlb.acl|$AUTH/acl|" \
			"$MQLB_SRCDIR/contrib/mosquitto/mosquitto.conf")
	printf '%s\n' "${conf[@]}"
	[ "${#conf[@]}" -ge 7 ]
	broker_start b "${conf[@]}" "require_certificate true"
	TLS="--cafile $TLSDIR/ca.crt --cert $TLSDIR/client.crt --key $TLSDIR/client.key"
	# Plain MQTT is no longer spoken there.
	run timeout 10 mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" $(as producer) -t jobs/x -m x
	[ "$status" -ne 0 ]

	balancer
	suback_spy B
	worker wb1 B B 'jobs/#' --fallback none
	wait_for 15 subacked B
	produce jobs/tls 1 3
	wait_for 30 lines_in "$T/records" 3 '^done .* B wb1 ok$'
	run once_in B 3 wb1
	echo "$output"
	[ "$status" -eq 0 ]

	# A CA that did not sign the server's certificate.
	run timeout 30 mqlb-worker -h 127.0.0.1 -p "$BROKER_PORT" $(as B) --cafile "$TLSDIR/other.crt" \
		--retries 1 -g B -t 'jobs/#' -- true
	echo "$output"
	[ "$status" -eq 69 ]
	[[ "$output" == *"mqlb-worker: warning: broker 127.0.0.1:$BROKER_PORT: TLS: certificate verify failed; retrying"* ]]
	[[ "$output" == *"mqlb-worker: error: broker 127.0.0.1:$BROKER_PORT unreachable after 2 attempts: TLS: certificate verify failed" ]]
	# The right CA, but a name the certificate does not carry: refused,
	# unless --insecure.
	run timeout 30 mqlb-sub -h localhost -p "$BROKER_PORT" $(as balancer) $TLS --retries 1 -i sub-localhost
	echo "$output"
	[ "$status" -eq 69 ]
	[[ "$output" == *"TLS: certificate verify failed"* ]]
	ready_fifo insecure
	bg insecure ready3 "$T/insecure.ready" mqlb-sub -h localhost -p "$BROKER_PORT" \
		$(as balancer) $TLS --insecure --retries 1 -i sub-insecure --ready-fd 3
	wait_ready insecure
	kill -0 "$(pidof_bg insecure)"
	# No client certificate: the broker refuses the handshake.
	run timeout 30 mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" $(as balancer) --cafile "$TLSDIR/ca.crt" \
		--retries 1 -i sub-nocert
	echo "$output"
	[ "$status" -eq 69 ]
	pipeline_stop
}

# as_nobody CMD...: run CMD as uid/gid 65534 with no groups.
as_nobody() { setpriv --reuid=65534 --regid=65534 --clear-groups "$@"; }

# query_stats SOCKET: print what a "stats" query gets back (to "ok").
query_stats() {
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or die "connect: $!\n";
		print $s "stats\n";
		while (<$s>) { print; last if /^ok/ }' "$1"
}
export -f query_stats

@test "control sockets: mode 0600; another uid can neither connect nor, where the mode lets it, get an answer" {
	if [ "$(id -u)" -ne 0 ]; then
		[ "${MQLB_REQUIRE_ROOT:-}" != 1 ] || false
		skip "needs root to run a client as another uid"
	fi
	# In $PRIV, which every uid may enter: only the socket's own mode stands
	# in the way.
	SOCKDIR=$PRIV
	broker_start
	ready_fifo s1
	bg s1 ready3 "$T/s1.ready" mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" --listen "$SOCKDIR/s1.sock" --ready-fd 3
	wait_ready s1
	[ "$(stat -c %a "$SOCKDIR/s1.sock")" = 600 ]
	run query_stats "$SOCKDIR/s1.sock"
	[ "$status" -eq 0 ]
	[[ "$output" == *$'\nok' ]]
	run as_nobody bash -c 'query_stats "$1"' - "$SOCKDIR/s1.sock"
	echo "$output"
	[ "$status" -ne 0 ]
	[[ "$output" == *"connect: Permission denied"* ]]

	# A mode that lets everyone connect (--socket-mode, or a systemd .socket
	# unit's SocketMode=): the peer's uid is still refused.
	ready_fifo s2
	bg s2 ready3 "$T/s2.ready" mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" --listen "$SOCKDIR/s2.sock" \
		--socket-mode 0666 --ready-fd 3
	wait_ready s2
	[ "$(stat -c %a "$SOCKDIR/s2.sock")" = 666 ]
	run as_nobody bash -c 'query_stats "$1"' - "$SOCKDIR/s2.sock"
	echo "$output"
	[[ "$output" != *stat* ]]
	wait_for 5 lines_in "$T/s2.err" 1 'refused a socket peer of uid 65534'
	run query_stats "$SOCKDIR/s2.sock"
	[[ "$output" == *$'\nok' ]]

	# Socket activation, the socket made 0666 as by SocketMode=0666: the
	# same refusal.
	ready_fifo s3
	bg s3 sh -c 'exec "$@" 4>"$0"' "$T/s3.ready" perl -MIO::Socket::UNIX -MPOSIX -e '
		my $p = shift;
		my $s = IO::Socket::UNIX->new(Local => $p, Listen => 5) or die "listen: $!\n";
		chmod 0666, $p;
		POSIX::dup2(fileno($s), 3) or die "dup2: $!\n";
		@ENV{qw(LISTEN_FDS LISTEN_PID)} = (1, $$);
		exec @ARGV or die "exec: $!\n"' "$SOCKDIR/s3.sock" \
		mqlb-sub -h 127.0.0.1 -p "$BROKER_PORT" --ready-fd 4
	wait_ready s3
	[ "$(stat -c %a "$SOCKDIR/s3.sock")" = 666 ]
	run as_nobody bash -c 'query_stats "$1"' - "$SOCKDIR/s3.sock"
	echo "$output"
	[[ "$output" != *stat* ]]
	wait_for 5 lines_in "$T/s3.err" 1 'refused a socket peer of uid 65534'
	run query_stats "$SOCKDIR/s3.sock"
	[[ "$output" == *$'\nok' ]]

	# The shipped .socket units ask for 0600 too.
	for u in "$MQLB_SRCDIR"/contrib/systemd/*.socket*; do
		grep -q '^SocketMode=0600$' "$u"
	done
}
