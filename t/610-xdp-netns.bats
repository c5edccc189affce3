#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 610-xdp-netns: MQTT through a VIP balanced by mqlb-xdp, end to end in
# network namespaces: three bridged mosquittos, a broker dies and is
# drained, survivors keep their connections, new ones avoid it.

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

records() {
	printf '%s\n' "vip $TB_VIP:1883"
	for i in 1 2 3; do printf '%s\n' "real $TB_VIP:1883 10.77.0.1$i 100"; done
}

lb_stat() { xdp_query "$T/lb.sock" stats | awk -v n="$1" '$1 == "stat" && $2 == n { print $3 }'; }

all_got() {
	local i
	for i in $(seq 1 "$NSUB"); do grep -qx "$1" "$T/sub$i.out" || return 1; done
}

# Publish through the VIP until every subscriber has the message (a
# subscription may still be on its way when the first copy goes out).
publish_until_all() {
	local i
	for i in $(seq 1 50); do
		nsx cl mosquitto_pub -h "$TB_VIP" -t e2e/t -q 1 -m "$1" || true
		all_got "$1" && return 0
		sleep 0.2
	done
	return 1
}

e2e() {
	local mode=$1 i p b owner port
	NSUB=24
	testbed "$mode"
	for i in 1 2 3; do tb_broker "$i"; done
	if [ "$mode" = ipip ]; then
		for i in 1 2 3; do
			bg "decap$i" ip netns exec "$(ns "b$i")" mqlb-xdp --decap -i eth0 --listen "$T/decap$i.sock"
		done
		for i in 1 2 3; do wait_for 5 eval "xdp_query $T/decap$i.sock stats 2>/dev/null | grep -q ^ok"; done
	fi
	# The bridges to b1 are up.
	wait_for 10 eval "[ \$(nsx b1 ss -Htn state established '( sport = :1883 )' | grep -c '10\.77\.0\.1[23]:') -ge 2 ]"

	records >"$T/records"
	PIN=$(pin_dir lb)
	bg_in lb "$T/records" ip netns exec "$(ns lb)" mqlb-xdp -i eth0 --encap "$mode" --listen "$T/lb.sock" \
		--pin "$PIN"
	wait_for 10 eval "[ \$(xdp_query $T/lb.sock show 2>/dev/null | grep -c '^real') -eq 3 ]"
	if [ "$mode" = l2 ]; then
		wait_for 10 eval "[ \$(xdp_query $T/lb.sock show | grep '^mac' | grep -vc unresolved) -eq 3 ]"
	fi

	for i in $(seq 1 "$NSUB"); do
		bg "sub$i" ip netns exec "$(ns cl)" mosquitto_sub -h "$TB_VIP" -t e2e/t -q 1 -i "sub$i"
	done
	wait_for 10 eval "[ \$( (tb_clients_on 1; tb_clients_on 2; tb_clients_on 3) | wc -l) -ge $NSUB ]"
	publish_until_all one

	# Which broker holds which subscriber: its local port, seen at the broker.
	nsx cl ss -Htnp state established '( dport = :1883 )' >"$T/cl.ss"
	for b in 1 2 3; do tb_clients_on "$b" >"$T/on$b"; done
	: >"$T/owners"
	for i in $(seq 1 "$NSUB"); do
		p=$(pidof_bg "sub$i")
		port=$(awk -v p="pid=$p," 'index($0, p) { n = split($3, a, ":"); print a[n] }' "$T/cl.ss")
		owner=0
		for b in 1 2 3; do grep -qx "$port" "$T/on$b" && owner=$b; done
		echo "$i $port $owner" >>"$T/owners"
	done
	cat "$T/owners"
	# Spread across brokers (24 flows on one broker of three: p = 3^-23).
	[ "$(awk '{ print $3 }' "$T/owners" | sort -u | grep -vc '^0$')" -ge 2 ]
	! grep -q ' 0$' "$T/owners" || false
	[ "$(lb_stat "vip.$TB_VIP:1883.tcp.new_flows")" -ge "$NSUB" ]
	# Established packets (most of them served from the flow cache) are
	# lru_hits: the VIP's packets less its new flows, summed in the total.
	# One snapshot, as keepalives may arrive between two queries.
	xdp_query "$T/lb.sock" stats >"$T/stats"
	snap() { awk -v n="$1" '$1 == "stat" && $2 == n { print $3 }' "$T/stats"; }
	v=vip.$TB_VIP:1883.tcp
	hits=$(snap "$v.lru_hits") pk=$(snap "$v.packets") nf=$(snap "$v.new_flows")
	echo "packets $pk new_flows $nf lru_hits $hits"
	[ "$hits" -gt "$NSUB" ]
	[ "$hits" -eq $((pk - nf)) ]
	[ "$(snap lru_hits)" -ge "$hits" ]

	# b3 dies; the health loop (here: us) drains it.
	kill -TERM "$(pidof_bg b3)"
	wait_for 5 eval "! kill -0 $(pidof_bg b3) 2>/dev/null"
	xdp_query "$T/lb.sock" "real $TB_VIP:1883 10.77.0.13 0" >/dev/null
	wait_for 5 eval "xdp_query $T/lb.sock show | grep -qx 'real $TB_VIP:1883 10.77.0.13 0'"
	b3_flows=$(lb_stat real.10.77.0.13.new_flows)

	# New connections go to the survivors, every one of them.
	for i in $(seq 1 12); do
		nsx cl mosquitto_pub -h "$TB_VIP" -t e2e/new -q 1 -m "n$i"
	done
	[ "$(lb_stat real.10.77.0.13.new_flows)" -eq "$b3_flows" ]

	survivors_get two

	# A new mqlb-xdp takes over the pinned program and connection table
	# (sent its state again, as a producer does); nobody notices.
	conns=$(xdptest conns "$PIN/conns4")
	[ "$conns" -ge "$NSUB" ]
	kill -TERM "$(pidof_bg lb)"
	wait_for 5 eval "! kill -0 $(pidof_bg lb) 2>/dev/null"
	# The producer's whole state now: b3 drained.
	records | sed 's/10\.77\.0\.13 100$/10.77.0.13 0/' >"$T/records"
	bg_in lb2 "$T/records" ip netns exec "$(ns lb)" mqlb-xdp -i eth0 --encap "$mode" --listen "$T/lb.sock" \
		--pin "$PIN" -v
	wait_for 5 grep -q "took over" "$T/lb2.err"
	wait_for 5 eval "[ \"\$(lb_stat records 2>/dev/null)\" = 4 ]"
	[ "$(lb_stat ring_slots_written)" = 0 ]
	[ "$(xdptest conns "$PIN/conns4")" -ge "$conns" ]
	survivors_get three
}

# Survivors' subscribers: same connection (port at the same broker), and
# the next message arrives on it.
survivors_get() {
	local i port owner
	nsx cl mosquitto_pub -h "$TB_VIP" -t e2e/t -q 1 -m "$1"
	while read -r i port owner; do
		[ "$owner" = 3 ] && continue
		wait_for 5 grep -qx "$1" "$T/sub$i.out"
		tb_clients_on "$owner" | grep -qx "$port"
		kill -0 "$(pidof_bg "sub$i")"
	done <"$T/owners"
}

@test "l2 (direct routing): pub/sub through the VIP, a broker dies, survivors untouched" {
	require_root
	e2e l2
}

@test "ipip through a router, XDP decap on the brokers: same story" {
	require_root
	e2e ipip
	for i in 1 2; do
		[ "$(xdp_query "$T/decap$i.sock" stats | awk '$2 == "decap" { print $3 }')" -gt 0 ]
	done
}

@test "IPv6 VIP, l2: clients spread over the brokers, pub/sub across them" {
	require_root
	testbed l2
	for i in 1 2 3; do tb_broker "$i"; done
	wait_for 10 eval "[ \$(nsx b1 ss -Htn state established '( sport = :1883 )' | grep -c '10\.77\.0\.1[23]:') -ge 2 ]"
	{
		echo "vip [$TB_VIP6]:1883"
		for i in 1 2 3; do echo "real [$TB_VIP6]:1883 fd77::1$i 100"; done
	} >"$T/records"
	bg_in lb "$T/records" ip netns exec "$(ns lb)" mqlb-xdp -i eth0 --listen "$T/lb.sock"
	wait_for 10 eval "[ \$(xdp_query $T/lb.sock show | grep '^mac fd77' | grep -vc unresolved) -eq 3 ]"
	NSUB=12
	for i in $(seq 1 "$NSUB"); do
		bg "sub$i" ip netns exec "$(ns cl)" mosquitto_sub -h "$TB_VIP6" -t e2e/t -q 1 -i "sub$i"
	done
	wait_for 10 eval "[ \$(for b in 1 2 3; do nsx b\$b ss -Htn state established '( sport = :1883 )' | grep -c 'fd77::2\]'; done | awk '{ s += \$1 } END { print s }') -ge $NSUB ]"
	# TB_VIP is the IPv4 VIP in publish_until_all; publish over IPv6 here.
	for i in $(seq 1 50); do
		nsx cl mosquitto_pub -h "$TB_VIP6" -t e2e/t -q 1 -m six || true
		all_got six && break
		sleep 0.2
	done
	all_got six
	used=0
	for b in 1 2 3; do
		[ "$(nsx "b$b" ss -Htn state established '( sport = :1883 )' | grep -c 'fd77::2\]')" -gt 0 ] && used=$((used + 1))
	done
	[ "$used" -ge 2 ]
	[ "$(lb_stat "vip.[$TB_VIP6]:1883.tcp.new_flows")" -ge "$NSUB" ]
}
