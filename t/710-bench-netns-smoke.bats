#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 710-bench-netns-smoke: contrib/bench/netns-lb.sh still runs: its smoke
# mode wires mqlb-xdp, nftables and HAProxy in turn on one namespace
# topology and measures connections and messages through each, and without
# a balancer (mode direct, straight to the brokers). No figure
# is asserted beyond "some got through": timing belongs to the benchmark.

load helpers/common.bash
load helpers/netns.bash

setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

netns_lb() { bash "$MQLB_SRCDIR/contrib/bench/netns-lb.sh" "$@"; }

@test "bad arguments are usage errors" {
	run netns_lb --modes
	[ "$status" -eq 2 ]
	run netns_lb --bogus
	[ "$status" -eq 2 ]
	[[ "$output" == *'unknown option --bogus'* ]]
	[[ "$output" == *'usage: contrib/bench/netns-lb.sh'* ]]
	run netns_lb --nat-return nope
	[ "$status" -eq 2 ]
	run netns_lb --modes xdp,dsr
	[ "$status" -eq 2 ]
	[[ "$output" == *'--modes: bad value "xdp,dsr"'* ]]
	run netns_lb --client rude
	[ "$status" -eq 2 ]
	[[ "$output" == *'--client: bad value "rude"'* ]]
	run "$MQLB_BUILDDIR/mqlb-connbench" msg --plain --sub 127.0.0.1
	[ "$status" -eq 2 ]
	[[ "$output" == *'--plain: only for conn'* ]]
}

@test "smoke mode measures the three balancers and direct, and leaves no namespace behind" {
	require_root
	for c in nft haproxy; do
		command -v "$c" >/dev/null || { echo "$c missing (contrib/deps)" >&2; return 1; }
	done
	netns_lb --smoke --modes xdp,nft,haproxy,direct "$MQLB_BUILDDIR" >"$T/out" 2>"$T/err" ||
		{ cat "$T/out" "$T/err"; return 1; }
	cat "$T/out"
	for m in xdp nft haproxy direct; do
		# | mode | conn/s | range | p50 | p99 | errors | msg/s | range | deliv/s |
		awk -F'|' -v m="$m" '$2 ~ "^ *" m " *$" { f = 1; if (!($3 > 0 && $8 > 0 && $10 > 0)) exit 1 } END { exit !f }' "$T/out"
	done
	# mqlb-xdp really carried the first mode's flows.
	grep -Eq '^# xdp: native mode, [1-9][0-9]* new flows in XDP' "$T/out"
	run=$(sed -n 's/.*namespaces \(nlb-[0-9a-f]*\)-\*.*/\1/p' "$T/out")
	[ -n "$run" ]
	! ip netns list | grep -q "^$run-" || false
}

# segs_conn_b OUT: the brokers' segments per connection, column 13 of the
# mode direct's line.
segs_conn_b() { awk -F'|' '$2 ~ /^ *direct *$/ { print $13 + 0 }' "$1"; }

@test "the lean client saves the brokers a segment or more a connection, --client plain does not" {
	require_root
	for c in lean plain; do
		netns_lb --smoke --modes direct --client "$c" "$MQLB_BUILDDIR" >"$T/$c" 2>"$T/$c.err" ||
			{ cat "$T/$c" "$T/$c.err"; return 1; }
		cat "$T/$c"
		grep -q "parallel $c clients" "$T/$c"
	done
	lean=$(segs_conn_b "$T/lean") plain=$(segs_conn_b "$T/plain")
	echo "segments a connection at the brokers: lean $lean, plain $plain"
	# Lean: SYN, CONNECT with the handshake's ACK, DISCONNECT with the
	# FIN, the last ACK. Plain: the ACK, the DISCONNECT and the FIN apart.
	awk -v l="$lean" -v p="$plain" 'BEGIN { exit !(l >= 3.5 && l <= 4.5 && p >= l + 1.5) }'
}
