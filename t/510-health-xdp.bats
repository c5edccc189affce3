#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 510-health-xdp: mqlb-health driving a real mqlb-xdp through its --listen
# socket, in network namespaces (root): the records are taken as they are,
# a dead broker is drained in the data plane, new connections avoid it, and
# a restarted mqlb-xdp gets the whole state again.

load helpers/common.bash
load helpers/netns.bash

setup() {
	mqlb_setup
	netns_init
}
teardown() {
	mqlb_teardown
	netns_cleanup
}

V=10.77.0.100:1883
lb_stat() { xdp_query "$T/lb.sock" stats | awk -v n="$1" '$1 == "stat" && $2 == n { print $3 }'; }
# shown LINE: mqlb-xdp's show answer has exactly this line.
shown() { xdp_query "$T/lb.sock" show 2>/dev/null | grep -qx -- "$1"; }
xdp() {
	: >"$T/empty"
	bg_in "$1" "$T/empty" ip netns exec "$(ns lb)" mqlb-xdp -i eth0 --listen "$T/lb.sock"
	wait_for 10 eval "xdp_query $T/lb.sock stats 2>/dev/null | grep -q ^ok"
}

@test "mqlb-health --output feeds mqlb-xdp: drain on death, full state after a restart" {
	require_root
	testbed l2
	for i in 1 2 3; do tb_broker "$i"; done
	xdp lb
	bg h ip netns exec "$(ns lb)" mqlb-health --vip "$V" --output "$T/lb.sock" --ramp 0 \
		10.77.0.11 10.77.0.12 10.77.0.13
	for i in 1 2 3; do wait_for 10 shown "real $V 10.77.0.1$i 100"; done
	[ "$(lb_stat bad_records)" = 0 ]
	wait_for 10 eval "[ \$(xdp_query $T/lb.sock show | grep '^mac' | grep -vc unresolved) -eq 3 ]"

	# b3 dies: drained in the data plane; new connections go elsewhere.
	kill -9 "$(pidof_bg b3)"
	wait_for 5 shown "real $V 10.77.0.13 0"
	b3_flows=$(lb_stat real.10.77.0.13.new_flows)
	for i in $(seq 1 12); do
		nsx cl mosquitto_pub -h 10.77.0.100 -t e2e/new -q 1 -m "n$i"
	done
	[ "$(lb_stat real.10.77.0.13.new_flows)" = "$b3_flows" ]
	[ "$(lb_stat "vip.$V.tcp.new_flows")" -ge 12 ]

	# A new mqlb-xdp knows nothing; mqlb-health sends it everything.
	kill -TERM "$(pidof_bg lb)"
	wait_for 5 eval "! kill -0 $(pidof_bg lb) 2>/dev/null"
	xdp lb2
	wait_for 10 shown "vip $V tcp"
	wait_for 10 shown "real $V 10.77.0.11 100"
	shown "real $V 10.77.0.12 100"
	shown "real $V 10.77.0.13 0"
	[ "$(lb_stat bad_records)" = 0 ]

	# b3 is back: weighted again, and takes new connections.
	tb_broker 3
	wait_for 10 shown "real $V 10.77.0.13 100"
	wait_for 10 eval "[ \$(xdp_query $T/lb.sock show | grep '^mac' | grep -vc unresolved) -eq 3 ]"
	for i in $(seq 1 30); do
		nsx cl mosquitto_pub -h 10.77.0.100 -t e2e/new -q 1 -m "m$i"
	done
	[ "$(lb_stat real.10.77.0.13.new_flows)" -gt 0 ]
	kill -0 "$(pidof_bg h)"
}
