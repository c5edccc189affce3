#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 810-systemd: the units of contrib/systemd pass systemd-analyze verify and
# its offline security check, and the balancer's pipeline script runs the
# three stages against a real broker and tells NOTIFY_SOCKET when ready.
load helpers/common.bash
load helpers/netns.bash
bats_require_minimum_version 1.5.0
setup() {
	mqlb_setup
	B=$MQLB_BUILDDIR
	UNITS="mqlb-balancer@.service mqlb-worker@.service mqlb-agent.service"
	# Without XDP (configure --disable-xdp) its units are not built.
	[ ! -x "$B/mqlb-xdp" ] || UNITS="$UNITS mqlb-xdp@.socket mqlb-xdp@.service mqlb-health@.service"
}
teardown() {
	[ ! -s "$T/pgid" ] || kill -TERM -- "-$(cat "$T/pgid")" 2>/dev/null || true
	mqlb_teardown
	netns_cleanup
}

need_analyze() {
	command -v systemd-analyze >/dev/null || skip "systemd-analyze missing (Debian: systemd)"
}

# units DIR: the units with the paths of this build tree, as they would be
# installed (the built ones name $(bindir), which may not hold them yet).
units() {
	local u
	mkdir -p "$1"
	for u in $UNITS; do
		if [ -f "$MQLB_SRCDIR/contrib/systemd/$u.in" ]; then
			sed -e "s|@bindir@|$B|g" -e "s|@sbindir@|$B|g" \
				-e "s|@pkglibexecdir@|$B/contrib/systemd|g" \
				"$MQLB_SRCDIR/contrib/systemd/$u.in" >"$1/$u"
		else
			cp "$MQLB_SRCDIR/contrib/systemd/$u" "$1/$u"
		fi
	done
}

@test "the built units name installed paths, nothing left to substitute" {
	local u f
	for u in $UNITS balancer; do
		f=$B/contrib/systemd/$u
		[ -f "$f" ] || f=$MQLB_SRCDIR/contrib/systemd/$u
		[ -f "$f" ]
		! grep -n '@[a-z]*dir@' "$f" || false
		head -n3 "$f" | grep -q 'SPDX-License-Identifier: MIT'
	done
	grep -q "^ExecStart=/.*/mqlb/balancer %i$" "$B/contrib/systemd/mqlb-balancer@.service"
	[ -x "$B/contrib/systemd/balancer" ]
}

@test "systemd-analyze verify: every unit is clean" {
	need_analyze
	units "$T/u"
	local u
	for u in $UNITS; do
		run systemd-analyze verify --man=no "$T/u/$u"
		echo "$u: $output"
		[ "$status" -eq 0 ]
		[ -z "$output" ]
	done
}

@test "systemd-analyze verify catches a broken unit (the check can fail)" {
	need_analyze
	units "$T/u"
	sed -i 's|^ExecStart=[^ ]*/mqlb-health|ExecStart=/nonexistent/mqlb-health|' "$T/u/mqlb-agent.service"
	run systemd-analyze verify --man=no "$T/u/mqlb-agent.service"
	[ "$status" -ne 0 ]
	[[ "$output" == *"/nonexistent/mqlb-health"* ]]
}

@test "systemd-analyze security: every service's exposure is 4.0 or less" {
	need_analyze
	systemd-analyze security --help 2>/dev/null | grep -q -- --offline ||
		skip "this systemd-analyze has no offline security check"
	units "$T/u"
	local u
	for u in $UNITS; do
		case $u in *.service) ;; *) continue ;; esac
		run systemd-analyze security --offline=true --threshold=40 "$T/u/$u"
		echo "$output" | tail -n1
		[ "$status" -eq 0 ]
	done
}

@test "the example options files are accepted by their commands" {
	local E=$MQLB_SRCDIR/contrib/examples s
	for s in sub auction dispatch; do
		run "mqlb-$s" -o "$E/balancer-main.conf" -o "$E/balancer-main.$s.conf" --help
		[ "$status" -eq 0 ]
	done
	run mqlb-worker -o "$E/worker-resize.conf" --help
	[ "$status" -eq 0 ]
	run mqlb-health -o "$E/health-eth0.conf" --help
	[ "$status" -eq 0 ]
	run mqlb-health --agent -o "$E/agent.conf" --help
	[ "$status" -eq 0 ]
	if [ -x "$B/mqlb-xdp" ]; then
		run mqlb-xdp -o "$E/xdp-eth0.conf" --help
		[ "$status" -eq 0 ]
	fi
	# The same check refuses an option a command does not take.
	echo "max-inflight 1" >"$T/bad.conf"
	run mqlb-auction -o "$T/bad.conf" --help
	[ "$status" -eq 2 ]
}

# notify_listen: a datagram socket at $T/notify; what arrives goes, one
# message a line, to $T/notify.out.
notify_listen() {
	perl -MIO::Socket::UNIX -MSocket -e '
		my $s = IO::Socket::UNIX->new(Type => SOCK_DGRAM, Local => $ARGV[0]) or die "$!";
		$| = 1;
		while (defined $s->recv(my $m, 4096)) { print "$m\n" }' "$T/notify" >"$T/notify.out" &
	echo $! >>"$T/pids"
	wait_for 5 test -S "$T/notify"
}

# balancer NAME: the pipeline script as the unit runs it, in its own
# process group (systemd signals the whole cgroup; the test, the group).
balancer() {
	MQLB_CONFDIR=$T/etc RUNTIME_DIRECTORY=$T/run MQLB_BINDIR=$B NOTIFY_SOCKET=$T/notify \
		setsid "$B/contrib/systemd/balancer" "$1" >"$T/bal.out" 2>"$T/bal.err" &
	echo $! >"$T/pgid"
}

@test "balancer: READY=1 once all three stages are up; stats on each; a job goes through" {
	broker_start
	mkdir -p "$T/etc" "$T/run"
	printf 'host 127.0.0.1\nport %s\n' "$BROKER_PORT" >"$T/etc/balancer-t.conf"
	printf '# only the auction has its own file\ndeadline 20\n' >"$T/etc/balancer-t.auction.conf"
	notify_listen
	balancer t
	wait_for 15 grep -qx READY=1 "$T/notify.out"
	run mqlb-stat "$T/run/sub.sock" "$T/run/auction.sock" "$T/run/dispatch.sock"
	[ "$status" -eq 0 ]
	[ "$(awk '$1 == "connected" { print $2 $3 $4 }' <<<"$output")" = 111 ]
	# A worker takes a job through the three stages.
	mqlb-worker -h 127.0.0.1 -p "$BROKER_PORT" -g g -t 'jobs/#' -- cat >"$T/w.out" 2>"$T/w.err" &
	echo $! >>"$T/pids"
	wait_for 15 eval 'mqlb-stat "$T/run/sub.sock" | grep -q "^groups  *1$"'
	pub jobs/1 hello -q 1
	wait_for 15 grep -qx hello "$T/w.out"
	[ "$(grep -c . "$T/notify.out")" -eq 1 ]
	# One award went out; its "sent" record is kept out of the journal.
	[ "$(mqlb-stat "$T/run/dispatch.sock" | awk '$1 == "sent" { print $2 }')" = 1 ]
	! grep -q '^sent ' "$T/bal.out" || false
	# SIGTERM to every stage: all of them end, the script too, with 0.
	local pid
	pid=$(cat "$T/pgid")
	kill -TERM -- "-$pid"
	wait_for 15 eval '! pgrep -g "$pid" >/dev/null'
	: >"$T/pgid"
	run wait "$pid"
	[ "$status" -eq 0 ]
}

@test "balancer: a bad option in a stage's file fails the unit without READY=1" {
	broker_start
	mkdir -p "$T/etc" "$T/run"
	printf 'port %s\n' "$BROKER_PORT" >"$T/etc/balancer-t.conf"
	echo "no-such-option 1" >"$T/etc/balancer-t.sub.conf"
	notify_listen
	balancer t
	local pid
	pid=$(cat "$T/pgid")
	wait_for 15 exited "$pid"
	run wait "$pid"
	[ "$status" -ne 0 ]
	grep -q "unknown option --no-such-option" "$T/bal.err"
	grep -q "ended before it was ready" "$T/bal.err"
	[ ! -s "$T/notify.out" ]
	wait_for 15 eval '! pgrep -g "$pid" >/dev/null'
	: >"$T/pgid"
}

@test "balancer: usage and a missing options file exit 2" {
	run "$B/contrib/systemd/balancer"
	[ "$status" -eq 2 ]
	[ "$output" = "usage: balancer INSTANCE" ]
	JOURNAL_STREAM= MQLB_CONFDIR=$T/none run "$B/contrib/systemd/balancer" x
	[ "$status" -eq 2 ]
	[ "$output" = "balancer: cannot read $T/none/balancer-x.conf" ]
}

@test "mqlb-xdp loads and attaches with the unit's capability set alone (root, netns)" {
	[ -x "$B/mqlb-xdp" ] || skip "built without XDP"
	require_root
	command -v setpriv >/dev/null || skip "setpriv missing (Debian: util-linux)"
	netns_init
	local caps
	# "CAP_BPF CAP_NET_ADMIN ..." as setpriv's "+bpf,+net_admin,...".
	caps=$(sed -n 's/^CapabilityBoundingSet=//p' "$MQLB_SRCDIR/contrib/systemd/mqlb-xdp@.service.in" |
		tr 'A-Z ' 'a-z,' | sed 's/cap_/+/g')
	[[ "$caps" == +bpf,+net_admin* ]]
	ns_add x
	ip -n "$(ns x)" link add va type veth peer name vb
	ip -n "$(ns x)" link set va up
	ip -n "$(ns x)" link set vb up
	ready_fifo x
	# uid 0 as in the unit: what it may do is bounded by the set.
	ip netns exec "$(ns x)" setpriv --bounding-set="-all,$caps" --inh-caps="-all,$caps" \
		--ambient-caps="-all,$caps" mqlb-xdp -i va --listen "$T/x.sock" --ready-fd 3 \
		</dev/null >"$T/x.out" 2>"$T/x.err" 3>"$T/x.ready" &
	echo $! >>"$T/pids"
	wait_ready x || { cat "$T/x.err"; false; }
	# Bits 12, 38, 39: CAP_NET_ADMIN, CAP_PERFMON, CAP_BPF and nothing else.
	grep -qx "CapBnd:.000000c000001000" "/proc/$(tail -n1 "$T/pids")/status"
	run mqlb-stat "$T/x.sock"
	[ "$status" -eq 0 ]
	[ "$(awk '$1 == "records" { print $2 }' <<<"$output")" = 0 ]
	ip -n "$(ns x)" link show va | grep -q xdp
}

@test "socket activation: mqlb-health --output starts mqlb-xdp on its socket (root, netns)" {
	[ -x "$B/mqlb-xdp" ] || skip "built without XDP"
	require_root
	command -v systemd-socket-activate >/dev/null || skip "systemd-socket-activate missing (Debian: systemd)"
	netns_init
	broker_start
	ns_add x
	ip -n "$(ns x)" link add va type veth peer name vb
	ip -n "$(ns x)" link set va up
	ip -n "$(ns x)" link set vb up
	# As mqlb-xdp@va.socket and .service: the socket first, mqlb-xdp on the
	# first connection, with the socket in LISTEN_FDS.
	bg act ip netns exec "$(ns x)" systemd-socket-activate -l "$T/xdp.sock" \
		mqlb-xdp -i va --mode generic
	wait_for 5 test -S "$T/xdp.sock"
	! pgrep -f "mqlb-xdp -i va --mode generic" -P "$(pidof_bg act)" >/dev/null || false
	bg health mqlb-health --vip 10.9.0.1:1883 --output "$T/xdp.sock" "b1=127.0.0.1:$BROKER_PORT"
	wait_for 15 eval 'mqlb-stat "$T/xdp.sock" 2>/dev/null | grep -q "^vip\.10\.9\.0\.1:1883\.tcp\."'
	run mqlb-stat "$T/xdp.sock"
	[ "$status" -eq 0 ]
	[ "$(awk '$1 == "records" { print $2 }' <<<"$output")" -ge 2 ]
	[ "$(awk '$1 == "bad_records" { print $2 }' <<<"$output")" = 0 ]
	ip -n "$(ns x)" link show va | grep -q xdp
}

@test "balancer: its own errors carry <3> only when stderr is the journal's stream" {
	: >"$T/err"
	local id
	id=$(stat -L -c '%d:%i' "$T/err")
	JOURNAL_STREAM=$id MQLB_CONFDIR=$T/none "$B/contrib/systemd/balancer" x 2>"$T/err" || true
	[ "$(cat "$T/err")" = "<3>balancer: cannot read $T/none/balancer-x.conf" ]
	# Inherited by a process whose stderr is elsewhere: no prefix.
	JOURNAL_STREAM=1:2 MQLB_CONFDIR=$T/none "$B/contrib/systemd/balancer" x 2>"$T/err" || true
	[ "$(cat "$T/err")" = "balancer: cannot read $T/none/balancer-x.conf" ]
}
