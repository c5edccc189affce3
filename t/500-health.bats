#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 500-health: mqlb-health against real mosquitto brokers on 127.0.0.2-4
# (one port, like reals behind a VIP): weights, failover and ramp, agents,
# discovery, output reconnect, bad input and bad options.
bats_require_minimum_version 1.5.0
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

VIP=10.99.0.1

# reals: three brokers r2 r3 r4 on 127.0.0.2-4, all on port $RP.
reals() {
	local k try busy
	for try in $(seq 1 30); do
		RP=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
		busy=0
		for k in 2 3 4; do
			(exec 3<>"/dev/tcp/127.0.0.$k/$RP") 2>/dev/null && busy=1
		done
		[ "$busy" = 0 ] && break
	done
	for k in 2 3 4; do
		broker_start "r$k" "listener $RP 127.0.0.$k" "sys_interval 1"
	done
	V=$VIP:$RP
}

# health [OPTIONS] [BROKERS]: mqlb-health in the background, ready when its
# initial state is out; records in $T/h.out.
ready3() {
	local f=$1
	shift
	exec "$@" 3>"$f" </dev/null
}
health() {
	ready_fifo h
	bg h ready3 "$T/h.ready" mqlb-health --ready-fd 3 --listen "$T/h.sock" "$@"
	wait_ready h
}
# weight ADDR [FILE]: the last weight written for that real ("del" if deleted).
weight() {
	grep -E "^(real|del) $V $1( |\$)" "${2:-$T/h.out}" | tail -n1 |
		awk '$1 == "del" { print "del"; next } { print $4 }'
}
weight_is() { [ "$(weight "$1" "${3:-}")" = "$2" ]; }
stats() {
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
		print $s "stats\n";
		while (<$s>) { last if /^ok/; print }' "$T/h.sock" | awk -v n="$1" '$2 == n { print $3 }'
}
stat_is() { [ "$(stats "$1")" = "$2" ]; }
now() { date +%s.%N; }
# less A B: A < B for decimals
less() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a < b) }'; }

usage_error() {
	run mqlb-health "$@"
	[ "$status" -eq 2 ]
	[ "${lines[0]#mqlb-health: error: }" != "${lines[0]}" ]
	[[ "$output" == *"usage: mqlb-health"* ]]
}

@test "--help prints the usage on stdout and exits 0" {
	run --separate-stderr mqlb-health --help
	[ "$status" -eq 0 ]
	[[ "$output" == "usage: mqlb-health [-v]"* ]]
	[[ "$output" == *"mqlb-health --agent"* ]]
	[ -z "$stderr" ]
}

@test "bad options exit 2 with a line naming the fault" {
	usage_error --bogus
	[ "${lines[0]}" = "mqlb-health: error: unknown option --bogus" ]
	usage_error 127.0.0.1
	[[ "${lines[0]}" == *"need a --vip"* ]]
	usage_error --vip 10.0.0.1 127.0.0.1
	[[ "${lines[0]}" == *'--vip: bad VIP address:port "10.0.0.1"'* ]]
	usage_error --vip 10.0.0.1:1883 --interval 0
	[[ "${lines[0]}" == *'--interval: bad duration "0"'* ]]
	usage_error --vip 10.0.0.1:1883 --rise x 127.0.0.1
	[[ "${lines[0]}" == *'--rise: bad number "x"'* ]]
	usage_error --vip 10.0.0.1:1883 --cpu-high 101
	usage_error --vip 10.0.0.1:1883 --weight 70000
	usage_error --vip 10.0.0.1:1883 --interval 1 --fast-interval 2
	[[ "${lines[0]}" == *"--fast-interval is longer than --interval"* ]]
	usage_error --vip 10.0.0.1:1883 127.0.0.1:99999
	[[ "${lines[0]}" == *'broker port: bad number "99999"'* ]]
	usage_error --vip 10.0.0.1:1883 127.0.0.1 127.0.0.1
	[[ "${lines[0]}" == *"broker 127.0.0.1 given twice"* ]]
	usage_error --vip 10.0.0.1:1883 'a/b=127.0.0.1'
	usage_error --agent --vip 10.0.0.1:1883
	[[ "${lines[0]}" == *"--agent takes no brokers"* ]]
	usage_error --fake-load cpu=50
	[[ "${lines[0]}" == *"go with --agent"* ]]
	usage_error --agent --fake-load cpu=500
	[[ "${lines[0]}" == *'--fake-load: bad load "cpu=500"'* ]]
	usage_error --agent --fake-load disk=5
	usage_error --once --output "$BATS_TEST_TMPDIR/x" --vip 10.0.0.1:1883
}

@test "--once: the state of three brokers with equal weights" {
	reals
	run --separate-stderr mqlb-health --once --vip "$V" 127.0.0.2 127.0.0.3 127.0.0.4 </dev/null
	[ "$status" -eq 0 ]
	[ "${lines[0]}" = "vip $V" ]
	[ "${lines[1]}" = "real $V 127.0.0.2 100" ]
	[ "${lines[2]}" = "real $V 127.0.0.3 100" ]
	[ "${lines[3]}" = "real $V 127.0.0.4 100" ]
	[ "${#lines[@]}" -eq 4 ]
	[ -z "$stderr" ]
	broker_stop r2
	broker_stop r3
	broker_stop r4
	run --separate-stderr mqlb-health --once --vip "$V" --weight 7 127.0.0.2 </dev/null
	[ "$status" -eq 1 ]
	[ "$output" = "vip $V
real $V 127.0.0.2 0" ]
	[[ "$stderr" == *"broker 127.0.0.2:$RP: down: connect: Connection refused"* ]]
}

@test "a stopped broker is drained within 2 x interval + timeout, and ramps back" {
	reals
	health --vip "$V" --interval 1 --timeout 0.5 --ramp 3 127.0.0.2 127.0.0.3 127.0.0.4
	weight_is 127.0.0.2 100
	weight_is 127.0.0.3 100
	weight_is 127.0.0.4 100
	t0=$(now)
	broker_stop r3
	wait_for 5 weight_is 127.0.0.3 0
	t1=$(now)
	less "$(awk -v a="$t0" -v b="$t1" 'BEGIN { print b - a }')" 2.5
	weight_is 127.0.0.2 100
	weight_is 127.0.0.4 100
	grep -q "broker 127.0.0.3:$RP: down" "$T/h.err"
	broker_run r3
	wait_for 15 weight_is 127.0.0.3 100
	grep -q "broker 127.0.0.3:$RP: up again" "$T/h.err"
	# it came back through smaller weights: 0, then at least two ramp steps
	ramp=$(grep "^real $V 127.0.0.3 " "$T/h.out" | awk '{ print $4 }' | tr '\n' ' ')
	[[ "$ramp" =~ ^100\ 0\ ([1-9][0-9]?\ ){2,}100\ $ ]]
	stat_is "broker.$V.127.0.0.3.up" 1
	stat_is up 3
}

@test "kill -9: weight 0 fast, stats show it down; --remove-after deletes it" {
	reals
	health --vip "$V" --remove-after 2 127.0.0.2 127.0.0.3 127.0.0.4
	kill -9 "$(cat "$T/broker-r2/pid")"
	wait_for 3 weight_is 127.0.0.2 0
	stat_is "broker.$V.127.0.0.2.up" 0
	stat_is "broker.$V.127.0.0.2.weight" 0
	wait_for 10 weight_is 127.0.0.2 del
	weight_is 127.0.0.3 100
	# back again: listed again, ramping
	broker_run r2
	wait_for 10 grep -qE "^real $V 127.0.0.2 [1-9]" "$T/h.out"
}

@test "an agent's CPU lowers the weight; above --cpu-high the broker drains" {
	reals
	health --vip "$V" --smooth 0 --ramp 0 --conns-slack 1000 r2=127.0.0.2 r3=127.0.0.3 127.0.0.4
	bg a mqlb-health --agent --name r2 -h 127.0.0.2 -p "$RP" --interval 0.2 --fake-load cpu=50,mem=20
	wait_for 10 weight_is 127.0.0.2 50
	stat_is "broker.$V.r2.cpu" 50
	stat_is "broker.$V.r2.mem" 20
	weight_is 127.0.0.3 100
	kill "$(pidof_bg a)"
	bg a2 mqlb-health --agent --name r2 -h 127.0.0.2 -p "$RP" --interval 0.2 --fake-load cpu=95
	wait_for 10 weight_is 127.0.0.2 0
	grep -q "r2 (127.0.0.2:$RP): draining: cpu 95.0%" "$T/h.err"
	stat_is "broker.$V.r2.drained" 1
	stat_is "broker.$V.r2.up" 1
	kill "$(pidof_bg a2)"
	# mem counts too, and the broker is back once under the mark
	bg a3 mqlb-health --agent --name r2 -h 127.0.0.2 -p "$RP" --interval 0.2 --fake-load cpu=10,mem=30
	wait_for 10 weight_is 127.0.0.2 70
	# an agent for another id changes nothing here
	weight_is 127.0.0.3 100
}

@test "with smoothing, a load change moves the weight in steps" {
	reals
	health --vip "$V" --smooth 2 --ramp 0 --conns-slack 1000 --interval 0.2 r2=127.0.0.2 127.0.0.3
	bg a mqlb-health --agent --name r2 -h 127.0.0.2 -p "$RP" --interval 0.2 --fake-load cpu=80
	wait_for 15 weight_is 127.0.0.2 20
	steps=$(grep -c "^real $V 127.0.0.2 " "$T/h.out")
	[ "$steps" -ge 4 ]
}

@test "a broker holding more than its share of connections gets less weight" {
	reals
	health --vip "$V" --ramp 0 --smooth 0 --conns-slack 0 --interval 0.2 127.0.0.2 127.0.0.3 127.0.0.4
	for i in $(seq 1 12); do
		bg "s$i" mosquitto_sub -h 127.0.0.2 -p "$RP" -t x
	done
	wait_for 10 eval '[ "$(weight 127.0.0.2)" -lt 60 ]'
	# (a probe counted in a $SYS sample may dip the others for a second)
	wait_for 10 weight_is 127.0.0.3 100
	wait_for 10 weight_is 127.0.0.4 100
	# all 12 subscribers counted, once the last one's connection is in a
	# $SYS sample (under load some connect after the weight has dropped)
	wait_for 10 eval '[ "$(stats "broker.$V.127.0.0.2.conns")" -ge 12 ]'
	for i in $(seq 1 12); do kill "$(pidof_bg "s$i")"; done
	wait_for 10 weight_is 127.0.0.2 100
}

@test "discovery: an announcement adds a real, its will removes it" {
	reals
	broker_start ctl
	health --vip "$V" --discover -h 127.0.0.1 -p "$BROKER_PORT_ctl" --ramp 0
	[ "$(cat "$T/h.out")" = "vip $V" ]
	bg a mqlb-health --agent --name r3 -h 127.0.0.1 -p "$BROKER_PORT_ctl" --announce "127.0.0.3:$RP" \
		--fake-load cpu=0,mem=0
	wait_for 10 weight_is 127.0.0.3 100
	# announced by hand, retained, with a weight
	mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT_ctl" -t lb/broker/r4 -r -m "127.0.0.4 50"
	wait_for 10 weight_is 127.0.0.4 50
	# the same announcement again changes nothing; a new weight is taken
	n=$(grep -c " 127.0.0.4 " "$T/h.out")
	mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT_ctl" -t lb/broker/r4 -r -m "127.0.0.4 50"
	mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT_ctl" -t lb/broker/r4 -r -m "127.0.0.4 80"
	wait_for 10 weight_is 127.0.0.4 80
	[ "$(grep -c " 127.0.0.4 " "$T/h.out")" -eq $((n + 1)) ]
	# the agent dies: its will takes the announcement back
	kill -9 "$(pidof_bg a)"
	wait_for 10 weight_is 127.0.0.3 del
	grep -q "broker r3: gone" "$T/h.err"
	weight_is 127.0.0.4 80
	mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT_ctl" -t lb/broker/r4 -r -n
	wait_for 10 weight_is 127.0.0.4 del
	# an agent stopped on purpose takes its announcement back too
	bg a2 mqlb-health --agent --name r2 -h 127.0.0.1 -p "$BROKER_PORT_ctl" --announce 127.0.0.2
	wait_for 10 grep -q "^real $V 127.0.0.2 " "$T/h.out"
	kill -TERM "$(pidof_bg a2)"
	wait_for 10 weight_is 127.0.0.2 del
	[ -z "$(mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT_ctl" -t lb/broker/+ -W 1 2>/dev/null)" ]
}

@test "a restarted health loop sees retained announcements in its first state" {
	reals
	broker_start ctl
	mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT_ctl" -t lb/broker/r2 -r -m "127.0.0.2"
	mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT_ctl" -t lb/broker/bad -r -m "127.0.0.2:http"
	health --vip "$V" --discover -h 127.0.0.1 -p "$BROKER_PORT_ctl"
	[ "$(cat "$T/h.out")" = "vip $V
real $V 127.0.0.2 100" ]
	grep -q 'lb/broker/bad: bad port in "http"; ignored' "$T/h.err"
	# and so does --once
	run --separate-stderr mqlb-health --once --vip "$V" --discover -h 127.0.0.1 -p "$BROKER_PORT_ctl" </dev/null
	[ "$status" -eq 0 ]
	[ "$output" = "vip $V
real $V 127.0.0.2 100" ]
}

@test "output reconnect: a restarted consumer gets the whole state" {
	reals
	listener() {
		bg "$1" perl -MIO::Socket::UNIX -e '
			$| = 1;
			my $l = IO::Socket::UNIX->new(Local => $ARGV[0], Listen => 5) or die "$!";
			my $c = $l->accept; print while <$c>;' "$T/c.sock"
		wait_for 5 test -S "$T/c.sock"
	}
	listener c1
	ready_fifo h
	bg h ready3 "$T/h.ready" mqlb-health --ready-fd 3 --output "$T/c.sock" --vip "$V" --ramp 0 \
		127.0.0.2 127.0.0.3
	wait_ready h
	wait_for 5 weight_is 127.0.0.3 100 "$T/c1.out"
	[ "$(cat "$T/c1.out")" = "vip $V
real $V 127.0.0.2 100
real $V 127.0.0.3 100" ]
	# Nothing changes meanwhile: the peer's end alone must be noticed.
	kill "$(pidof_bg c1)"
	rm -f "$T/c.sock"
	wait_for 5 grep -q "output $T/c.sock" "$T/h.err"
	listener c2
	wait_for 10 weight_is 127.0.0.3 100 "$T/c2.out"
	[ "$(cat "$T/c2.out")" = "vip $V
real $V 127.0.0.2 100
real $V 127.0.0.3 100" ]
	# and changes follow
	broker_stop r2
	wait_for 10 weight_is 127.0.0.2 0 "$T/c2.out"
}

@test "records in: vip, real, del; bad records get one line each and the loop goes on" {
	reals
	cat >"$T/in" <<-EOF
		# a comment
		vip $V
		real $V 127.0.0.2 300
		real $V 127.0.0.3
		real 10.1.1.1:$RP 127.0.0.3 5
		vip nonsense
		real $V 127.0.0.3 70000
		del $V 127.0.0.9
		note passes through
		real $V 127.0.0.3 30
		real $V 127.0.0.5 30
		real $V nonexistent.invalid 30
	EOF
	ready_fifo h
	bg h sh -c 'exec mqlb-health --ready-fd 3 --listen "$1/h.sock" 3>"$1/h.ready" <"$1/in"' - "$T"
	wait_ready h
	# in the initial state: full weights at once, no ramp
	[ "$(grep -c "^real $V 127.0.0.3 " "$T/h.out")" -eq 1 ]
	weight_is 127.0.0.3 30
	weight_is 127.0.0.2 300
	weight_is 127.0.0.5 0
	grep -q "^note passes through$" "$T/h.out"
	grep -q "warning: line 4: real needs a VIP, an address and a weight; skipped" "$T/h.err"
	grep -q "warning: line 5: no such VIP (send its vip record first); skipped" "$T/h.err"
	grep -q "warning: line 6: bad VIP address:port; skipped" "$T/h.err"
	grep -q "warning: line 7: bad weight (0 to 65535); skipped" "$T/h.err"
	grep -q "warning: line 8: no such real; skipped" "$T/h.err"
	grep -q "broker 127.0.0.5:$RP: down: connect: Connection refused" "$T/h.err"
	[ "$(grep -c "nonexistent.invalid" "$T/h.err")" -eq 1 ]
	grep -q "broker nonexistent.invalid:$RP: down: cannot resolve nonexistent.invalid" "$T/h.err"
	# and on the socket: records and the stats query
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
		print $s "del $ARGV[1] 127.0.0.2\nreal $ARGV[1] 127.0.0.4\n"; close $s' "$T/h.sock" "$V"
	wait_for 5 weight_is 127.0.0.2 del
	wait_for 5 grep -q "warning: socket line 2: real needs a VIP" "$T/h.err"
	stat_is bad_records 6
	stat_is brokers 3
	# del of the VIP takes everything
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
		print $s "del $ARGV[1]\n"; close $s' "$T/h.sock" "$V"
	wait_for 5 grep -qx "del $V" "$T/h.out"
	wait_for 5 stat_is brokers 0
	kill -0 "$(pidof_bg h)"
}
