#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 600-xdp-unit: mqlb-xdp's arguments and records, and the XDP programs run
# on crafted packets through BPF_PROG_TEST_RUN (t/xdptest.c).

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

usage_error() {
	[ "$status" -eq 2 ]
	[[ "${lines[0]}" == "mqlb-xdp: error: $1"* ]]
	[[ "$output" == *"usage: mqlb-xdp"* ]]
}

@test "--help prints the usage on stdout" {
	run mqlb-xdp --help 2>/dev/null
	[ "$status" -eq 0 ]
	[[ "$output" == "usage: mqlb-xdp "* ]]
	[[ "$output" == *"--decap -i iface"* ]]
}

@test "bad arguments are usage errors naming the option" {
	run mqlb-xdp
	usage_error "-i: which interface?"
	run mqlb-xdp -i lo --mode turbo
	usage_error '--mode: "turbo" is neither native nor generic'
	run mqlb-xdp -i lo --encap gre
	usage_error '--encap: "gre" is neither l2 nor ipip'
	run mqlb-xdp -i lo --ring-size 65536
	usage_error "--ring-size: 65536 is not a prime"
	run mqlb-xdp -i lo --ring-size 12x
	usage_error '--ring-size: bad number "12x"'
	run mqlb-xdp -i lo --gateway-mac 02:00:00:00:00
	usage_error '--gateway-mac: bad MAC address "02:00:00:00:00"'
	run mqlb-xdp -i lo --stats-interval 0
	usage_error '--stats-interval: bad duration "0"'
	run mqlb-xdp -i no-such-if0
	usage_error '-i: no interface "no-such-if0"'
	run mqlb-xdp -i lo --decap --encap ipip
	usage_error "--decap takes only"
	run mqlb-xdp -i lo --frobnicate
	usage_error "unknown option --frobnicate"
	run mqlb-xdp -i lo extra
	usage_error 'unexpected argument "extra"'
}

@test "l2: SYN to a VIP leaves with the real's MAC, all else byte for byte" {
	require_root
	run xdptest l2
	echo "$output"
	[ "$status" -eq 0 ]
	run xdptest l2v6
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "ipip: outer IPv4 header (checksum), IPv6-in-IPv6, oversize dropped" {
	require_root
	run xdptest ipip
	echo "$output"
	[ "$status" -eq 0 ]
	run xdptest ipip6
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "not for a VIP: XDP_PASS, unchanged; fragments and options to a VIP dropped" {
	require_root
	run xdptest pass
	echo "$output"
	[ "$status" -eq 0 ]
	run xdptest frag
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "SYN vs established: the connection table wins over a changed ring" {
	require_root
	run xdptest syn
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "source hashing keeps a client on one real; UDP flows follow the table" {
	require_root
	run xdptest srchash
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "drain: weight 0 takes no new flows and keeps its own; del moves them" {
	require_root
	run xdptest drain
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "reuse: a removed VIP's flows do not ride their entries into the slot's next VIP" {
	require_root
	run xdptest reuse
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "readd: an IPv4 VIP removed and added again keeps flows on reals still serving it; IPv6 not" {
	require_root
	run xdptest readd
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "window: mqlb-xdp's del of a real, a packet after each map write: the flow leaves the real" {
	require_root
	run xdptest window
	echo "$output"
	[ "$status" -eq 0 ]
	[[ "$output" == *'del-real: after write 2: '* ]]
}

@test "collide: two flows of one 64-bit hash, to two VIPs: the check keeps their entries apart" {
	require_root
	run xdptest collide
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "two CPUs: a flow keeps its real on either; a SYN reusing a 5-tuple moves it on both" {
	require_root
	[ "$(nproc)" -ge 2 ] || skip "needs two CPUs"
	run xdptest cpus
	echo "$output"
	[ "$status" -eq 0 ]
	[[ "$output" == *'two CPUs: '* ]]
}

@test "a real's new MAC: its established IPv4 flows follow, entries kept" {
	require_root
	run xdptest mac
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "a full bucket: a SYN again takes its own entry, a new flow the least recently used" {
	require_root
	run xdptest bucket
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "stamp: a bump goes on from an older loader's epoch; a tick changes the age only" {
	require_root
	run xdptest stamp
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "a torn entry (a flow's key, another's val): a miss, the flow not sent to the other's real" {
	require_root
	run xdptest torn
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "weights: 10k flows within 5% of weights 100:200:300" {
	require_root
	run xdptest weights
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "ring update: a 5th real moves at most 1/5 + 2% of new flows" {
	require_root
	run xdptest moves
	echo "$output"
	[ "$status" -eq 0 ]
}

@test "decap: IPIP and IPv6-in-IPv6 become the inner packet" {
	require_root
	run xdptest decap
	echo "$output"
	[ "$status" -eq 0 ]
}

# One namespace with a veth pair to attach to.
veth_ns() {
	ns_add x
	ip -n "$(ns x)" link add veth0 type veth peer name veth1
	ip -n "$(ns x)" link set veth0 up
	ip -n "$(ns x)" link set veth1 up
	ip -n "$(ns x)" addr add 10.66.0.1/24 dev veth0
}

@test "records: vip/real/del applied, others passed through, bad ones reported by line" {
	require_root
	veth_ns
	cat >"$T/in" <<-'EOR'
	# comment
	vip 10.66.0.100:1883
	real 10.66.0.100:1883 10.66.0.11 100
	group g topic
	real 10.66.0.100:1883 10.66.0.12 bogus
	real 10.66.0.100:1883 10.66.0.12 65536
	real 10.66.0.100:1883 10.66.0.12 50
	real 10.66.0.99:1883 10.66.0.12 50
	vip 10.66.0.100:1883 sctp
	vip 10.66.0.100 tcp
	vip [fd00::100]:8883 udp
	real [fd00::100]:8883 fd00::11 7
	real [fd00::100]:8883 fd00::12 0
	vip 10.66.0.101:1883
	real 10.66.0.101:1883 10.66.0.13 1
	del 10.66.0.101:1883
	del 10.66.0.100:1883 10.66.0.11
	EOR
	bg_in xdp "$T/in" ip netns exec "$(ns x)" mqlb-xdp -i veth0 --encap ipip \
		--gateway-mac 02:00:00:00:00:fe --listen "$T/sock"
	wait_for 5 show_has "$T/sock" "real 10.66.0.100:1883 10.66.0.12 50"
	run xdp_query "$T/sock" show
	[ "${lines[0]}" = "vip 10.66.0.100:1883 tcp" ]
	[ "${lines[1]}" = "real 10.66.0.100:1883 10.66.0.12 50" ]
	[ "${lines[2]}" = "vip [fd00::100]:8883 udp" ]
	[ "${lines[3]}" = "real [fd00::100]:8883 fd00::11 7" ]
	[ "${lines[4]}" = "real [fd00::100]:8883 fd00::12 0" ]
	[ "${lines[-1]}" = "ok" ]
	[ "$(grep -c '^vip' <<<"$output")" -eq 2 ]
	[ "$(grep -c '^real' <<<"$output")" -eq 3 ]
	# Records sent to the socket count too; stats answers with stat records.
	xdp_query "$T/sock" "real 10.66.0.100:1883 10.66.0.14 5" >/dev/null
	run xdp_query "$T/sock" stats
	echo "$output"
	[[ "$output" == *"stat records 16"* ]]
	[[ "$output" == *"stat bad_records 5"* ]]
	[[ "$output" == *"stat vip.10.66.0.100:1883.tcp.packets 0"* ]]
	[ "${lines[-1]}" = "ok" ]
	# The unknown verb went to stdout, byte for byte.
	wait_for 5 grep -q '^group g topic$' "$T/xdp.out"
	[ "$(wc -l <"$T/xdp.out")" -eq 1 ]
	grep -q '^mqlb-xdp: warning: line 5: bad weight (0 to 65535)$' "$T/xdp.err"
	grep -q '^mqlb-xdp: warning: line 6: bad weight (0 to 65535)$' "$T/xdp.err"
	grep -q '^mqlb-xdp: warning: line 8: no such VIP' "$T/xdp.err"
	grep -q '^mqlb-xdp: warning: line 9: protocol is neither tcp nor udp$' "$T/xdp.err"
	grep -q '^mqlb-xdp: warning: line 10: bad VIP address:port$' "$T/xdp.err"
	# Still attached after the end of input, until SIGTERM detaches.
	ip -n "$(ns x)" link show veth0 | grep -q xdp
	kill -TERM "$(pidof_bg xdp)"
	wait_for 5 eval "! kill -0 $(pidof_bg xdp) 2>/dev/null"
	! ip -n "$(ns x)" link show veth0 | grep -q xdp || false
}

@test "native mode refused by the driver: a clear error and a hint" {
	require_root
	ns_add d
	# A bridge device has no native XDP.
	ip -n "$(ns d)" link add br0 type bridge
	run ip netns exec "$(ns d)" mqlb-xdp -i br0 --encap ipip --gateway-mac 02:00:00:00:00:fe \
		</dev/null
	echo "$output"
	[ "$status" -eq 111 ]
	[[ "$output" == *"cannot attach to br0 in native mode"*"try --mode generic"* ]]
	bg gen ip netns exec "$(ns d)" mqlb-xdp -i br0 --mode generic --encap ipip \
		--gateway-mac 02:00:00:00:00:fe --listen "$T/sock"
	wait_for 5 show_has "$T/sock" "^ok"
	ip -n "$(ns d)" link show br0 | grep -q xdpgeneric
}

@test "--pin: a successor takes over program and state, flows kept" {
	require_root
	veth_ns
	pin=$(pin_dir lb)
	printf '%s\n' "vip 10.66.0.100:1883" "real 10.66.0.100:1883 10.66.0.11 10" \
		"real 10.66.0.100:1883 10.66.0.12 0" >"$T/in"
	bg_in a "$T/in" ip netns exec "$(ns x)" mqlb-xdp -i veth0 --encap ipip \
		--gateway-mac 02:00:00:00:00:fe --pin "$pin" --listen "$T/sock"
	wait_for 5 show_has "$T/sock" "10.66.0.12 0"
	before=$(ip -n "$(ns x)" -d link show veth0 | grep -o 'prog/xdp id [0-9]*')
	kill -TERM "$(pidof_bg a)"
	wait_for 5 eval "! kill -0 $(pidof_bg a) 2>/dev/null"
	# Pinned: the program stays attached while nobody runs.
	ip -n "$(ns x)" link show veth0 | grep -q xdp
	for f in link conns4 conns6 vipgen ring; do
		[ -e "$pin/$f" ] || { echo "not pinned: $pin/$f"; false; }
	done
	bg b ip netns exec "$(ns x)" mqlb-xdp -i veth0 --encap ipip \
		--gateway-mac 02:00:00:00:00:fe --pin "$pin" --listen "$T/sock2" -v
	wait_for 5 show_has "$T/sock2" "^ok"
	run xdp_query "$T/sock2" show
	[ "${lines[0]}" = "vip 10.66.0.100:1883 tcp" ]
	[ "${lines[1]}" = "real 10.66.0.100:1883 10.66.0.11 10" ]
	[ "${lines[2]}" = "real 10.66.0.100:1883 10.66.0.12 0" ]
	after=$(ip -n "$(ns x)" -d link show veth0 | grep -o 'prog/xdp id [0-9]*')
	[ "$before" != "$after" ]
	grep -q "took over" "$T/b.err"
	# Nothing changed, so no ring slot was rewritten.
	xdp_query "$T/sock2" "real 10.66.0.100:1883 10.66.0.11 10" >/dev/null
	run xdp_query "$T/sock2" stats
	[[ "$output" == *"stat ring_slots_written 0"* ]]
}

@test "--max-conns n: the IPv4 table is n / 4 buckets of one cache line" {
	require_root
	command -v bpftool >/dev/null || skip "no bpftool"
	veth_ns
	pin=$(pin_dir lb)
	printf '%s\n' "vip 10.66.0.100:1883" >"$T/in"
	bg_in a "$T/in" ip netns exec "$(ns x)" mqlb-xdp -i veth0 --encap ipip \
		--gateway-mac 02:00:00:00:00:fe --max-conns 4096 --pin "$pin" --listen "$T/sock"
	wait_for 5 show_has "$T/sock" "^ok"
	run bpftool map show pinned "$pin/conns4"
	echo "$output"
	[ "$status" -eq 0 ]
	[[ "$output" == *"value 64B  max_entries 1024 "* ]]
}

@test "--stats-interval writes stat records to stdout" {
	require_root
	veth_ns
	bg xdp ip netns exec "$(ns x)" mqlb-xdp -i veth0 --encap ipip \
		--gateway-mac 02:00:00:00:00:fe --stats-interval 0.2
	wait_for 5 lines_in "$T/xdp.out" 2 '^stat records 0$'
	grep -q '^stat forwarded 0$' "$T/xdp.out"
	! grep -qv '^stat ' "$T/xdp.out" || false
}

@test "systemd socket activation: records and queries on the passed socket" {
	require_root
	command -v systemd-socket-activate >/dev/null || skip "no systemd-socket-activate"
	veth_ns
	bg sa systemd-socket-activate -l "$T/sa.sock" \
		ip netns exec "$(ns x)" mqlb-xdp -i veth0 --encap ipip \
		--gateway-mac 02:00:00:00:00:fe
	wait_for 5 test -S "$T/sa.sock"
	xdp_query "$T/sa.sock" "vip 10.66.0.100:1883" "real 10.66.0.100:1883 10.66.0.11 3" \
		>/dev/null
	wait_for 5 show_has "$T/sa.sock" "^real 10.66.0.100:1883 10.66.0.11 3$"
	run xdp_query "$T/sa.sock" stats
	[[ "$output" == *"stat records 2"* ]]
}

@test "xdp-testrun.sh (the bench's scenario 5 figures) still runs and prints every case" {
	require_root
	run sh "$MQLB_SRCDIR/contrib/bench/xdp-testrun.sh" "$MQLB_BUILDDIR" 2000
	echo "$output"
	[ "$status" -eq 0 ]
	for c in established new-flow non-vip-pass floor-macswap-tx established-alone \
		new-flow-alone non-vip-pass-alone floor-macswap-tx-alone; do
		grep -Eq "^$c [0-9]+\.[0-9] ns/packet$" <<<"$output"
	done
}
