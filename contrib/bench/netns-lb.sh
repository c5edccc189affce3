#!/bin/bash
# SPDX-License-Identifier: MIT
# netns-lb.sh: MQTT connections/s and messages/s through a VIP balanced over
# three mosquittos by mqlb-xdp, by nftables DNAT (numgen) and by HAProxy in
# TCP mode, one after the other on one namespace topology in one run
# (issue 7, scenario 5); mode direct, no balancer (each connection to the
# next broker's own address), is the reference. Needs root; see
# contrib/bench/README.
#
# usage: contrib/bench/netns-lb.sh [--smoke] [--rounds n] [--duration s] [--parallel n]
#        [--publishers n] [--window n] [--size bytes] [--modes xdp,nft,haproxy,direct]
#        [--nat-return route|snat] [--client lean|plain] [--keep] [builddir]
set -eu

usage() {
	sed -n 's/^# usage: /usage: /p; s/^# \(       \[.*\)/\1/p' "$0" >&2
	exit 2
}
smoke=0 rounds=3 dur=10 par=64 npub=24 win=16 size=64 modes=xdp,nft,haproxy natret=route client=lean keep=0
# val OPTION VALUE PATTERN: VALUE, if it matches the extended regex.
val() {
	printf '%s\n' "$2" | grep -Eqx "$3" || { echo "netns-lb.sh: $1: bad value \"$2\"" >&2; usage; }
	printf '%s\n' "$2"
}
N='[1-9][0-9]*'
while [ $# -gt 0 ]; do
	case $1 in
	--smoke) smoke=1; shift; continue ;;
	--keep) keep=1; shift; continue ;;
	--help) sed -n 's/^# usage: /usage: /p; s/^# \(       \[.*\)/\1/p' "$0"; exit 0 ;;
	--duration | --rounds | --parallel | --publishers | --window | --size | --modes | --nat-return | \
		--client)
		[ $# -ge 2 ] || { echo "netns-lb.sh: $1 needs a value" >&2; usage; } ;;
	esac
	case $1 in
	--duration) dur=$(val "$1" "$2" '[0-9]+(\.[0-9]+)?') ;;
	--rounds) rounds=$(val "$1" "$2" "$N") ;;
	--parallel) par=$(val "$1" "$2" "$N") ;;
	--publishers) npub=$(val "$1" "$2" "$N") ;;
	--window) win=$(val "$1" "$2" "$N") ;;
	--size) size=$(val "$1" "$2" '[0-9]+') ;;
	--modes) modes=$(val "$1" "$2" '(xdp|nft|haproxy|direct)(,(xdp|nft|haproxy|direct))*') ;;
	--nat-return) natret=$(val "$1" "$2" 'route|snat') ;;
	--client) client=$(val "$1" "$2" 'lean|plain') ;;
	-*) echo "netns-lb.sh: unknown option $1" >&2; usage ;;
	*) break ;;
	esac
	shift 2
done
[ $# -le 1 ] || usage
[ "$smoke" = 1 ] && rounds=1 dur=1 par=16 npub=6
B=$(cd "${1:-.}" && pwd)
die() { echo "netns-lb.sh: $*" >&2; exit "${rc:-111}"; }
rc=2
[ "$(id -u)" -eq 0 ] || die "needs root (network namespaces, XDP, nftables)"
for p in "$B/mqlb-connbench" "$B/mqlb-xdp" "$B/t/xdptest"; do
	[ -x "$p" ] || die "no $p (make mqlb-connbench mqlb-xdp t/xdptest in the build tree)"
done
[ -f "$B/bpf/xdp_pass.bpf.o" ] || die "no $B/bpf/xdp_pass.bpf.o (make bpf/xdp_pass.bpf.o)"
for c in ip ethtool nft haproxy mosquitto; do
	command -v "$c" >/dev/null || die "$c missing (contrib/deps installs it)"
done
rc=111

# Addresses: one bridge; client .2 (and .4 for the direct subscribers),
# balancer .3 with the VIP, brokers .11-.13.
NET=10.78.0 VIP=10.78.0.100 PORT=1883
CL=$NET.2 SUBSRC=$NET.4 LB=$NET.3 REALS="$NET.11 $NET.12 $NET.13"
RUN=$(printf '%04x' $((RANDOM)))
T=$(mktemp -d /tmp/netns-lb.XXXXXX)
NSS=
ns() { echo "nlb-$RUN-$1"; }
nsx() {
	local n=$1
	shift
	ip netns exec "$(ns "$n")" "$@"
}
cleanup() {
	local n p
	for n in $NSS; do
		for p in $(ip netns pids "$(ns "$n")" 2>/dev/null); do kill -TERM "$p" 2>/dev/null || true; done
	done
	sleep 0.3
	for n in $NSS; do
		for p in $(ip netns pids "$(ns "$n")" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
		ip netns del "$(ns "$n")" 2>/dev/null || true
	done
	if [ "$keep" = 1 ]; then echo "# logs kept in $T" >&2; else rm -rf "$T"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# wait_for SECS CMD...: poll until CMD succeeds.
wait_for() {
	local end=$((SECONDS + $1))
	shift
	until "$@" 2>/dev/null; do
		[ "$SECONDS" -lt "$end" ] || return 1
		sleep 0.1
	done
}

ns_add() {
	ip netns add "$(ns "$1")"
	NSS="$NSS $1"
	nsx "$1" ip link set lo up
	# Many short connections: the whole port range, TIME_WAIT reuse, and
	# room in the accept queues.
	nsx "$1" sysctl -qw net.ipv4.ip_local_port_range="1024 65535" net.ipv4.tcp_tw_reuse=1 \
		net.core.somaxconn=8192 net.ipv4.tcp_max_syn_backlog=8192
}

topology() {
	local n addr
	ns_add sw
	nsx sw ip link add br0 type bridge
	nsx sw ip link set br0 up
	for n in cl lb b1 b2 b3; do
		case $n in
		cl) addr=$CL ;; lb) addr=$LB ;; b*) addr=$NET.1${n#b} ;;
		esac
		ns_add "$n"
		nsx sw ip link add "p-$n" type veth peer name eth0 netns "$(ns "$n")"
		nsx sw ip link set "p-$n" master br0 up
		nsx "$n" ip link set eth0 up
		nsx "$n" ip addr add "$addr/24" dev eth0
	done
	nsx cl ip addr add "$SUBSRC/24" dev eth0
	# XDP-TESTBED.md trap 1: XDP_TX frames need a NAPI receiver on the
	# peer; trap 2: bounced frames need full checksums (client side).
	nsx sw ip link set dev p-lb xdpdrv obj "$B/bpf/xdp_pass.bpf.o" sec xdp
	nsx cl ethtool -K eth0 tx off >/dev/null
	nsx lb ip addr add "$VIP/32" dev eth0
	nsx lb sysctl -qw net.ipv4.conf.all.send_redirects=0 net.ipv4.conf.eth0.send_redirects=0
	for n in b1 b2 b3; do
		# The VIP on lo for direct server return (mqlb-xdp l2), kept
		# out of ARP.
		nsx "$n" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2 \
			net.ipv4.conf.all.accept_redirects=0
		nsx "$n" ip addr add "$VIP/32" dev lo
	done
}

brokers() {
	local i
	for i in 1 2 3; do
		cat >"$T/b$i.conf" <<-EOF
			listener $PORT
			allow_anonymous true
			persistence false
			user root
			set_tcp_nodelay true
			connection_messages false
			log_type error
			log_dest stderr
		EOF
		ip netns exec "$(ns "b$i")" mosquitto -c "$T/b$i.conf" 2>"$T/b$i.err" &
	done
	for i in 1 2 3; do
		wait_for 10 nsx "b$i" bash -c "exec 3<>/dev/tcp/$NET.1$i/$PORT" || die "broker b$i did not start"
	done
}

vip_up() { wait_for 10 nsx cl bash -c "exec 3<>/dev/tcp/$VIP/$PORT"; }

# Modes: NAME_start wires the balancer, NAME_stop unwires it.
xdp_start() {
	local r
	{
		echo "vip $VIP:$PORT"
		for r in $REALS; do echo "real $VIP:$PORT $r 100"; done
	} >"$T/xdp.records"
	# Not through nsx: $! must be mqlb-xdp itself, not a subshell.
	ip netns exec "$(ns lb)" "$B/mqlb-xdp" -v -i eth0 --encap l2 --listen "$T/xdp.sock" <"$T/xdp.records" \
		>"$T/xdp.out" 2>"$T/xdp.err" &
	XDP_PID=$!
	wait_for 10 eval "[ \$(printf 'show\n' | $B/t/xdptest query $T/xdp.sock | grep '^mac' | grep -vc unresolved) -eq 3 ]" ||
		die "mqlb-xdp: reals not resolved ($(cat "$T/xdp.err"))"
	vip_up || die "no MQTT through the VIP with mqlb-xdp"
}
xdp_info() {
	local flows
	printf 'stats\n' | "$B/t/xdptest" query "$T/xdp.sock" >"$T/xdp.stats"
	flows=$(awk -v n="vip.$VIP:$PORT.tcp.new_flows" '$2 == n { print $3 }' "$T/xdp.stats")
	echo "$(sed -n 's/.*attached to eth0 (\(.*\)).*/\1/p' "$T/xdp.err"), $flows new flows in XDP"
}
xdp_stop() {
	kill -TERM "$XDP_PID"
	wait "$XDP_PID" || true
}

nft_start() {
	local i=0 map='' r n
	for r in $REALS; do map="$map${map:+, }$i : $r"; i=$((i + 1)); done
	nsx lb sysctl -qw net.ipv4.ip_forward=1
	{
		echo "table ip nlb {"
		echo " chain pre { type nat hook prerouting priority dstnat; policy accept;"
		echo "  ip daddr $VIP tcp dport $PORT dnat to numgen inc mod 3 map { $map }"
		echo " }"
		echo " chain post { type nat hook postrouting priority srcnat; policy accept;"
		[ "$natret" = snat ] && echo "  ip daddr { ${REALS// /, } } tcp dport $PORT masquerade"
		echo " }"
		echo "}"
	} >"$T/nft.conf"
	nsx lb nft -f "$T/nft.conf"
	# The answers must pass the balancer to be translated back: the
	# brokers reach the client through it (or see the balancer, snat).
	if [ "$natret" = route ]; then
		for n in b1 b2 b3; do nsx "$n" ip route add "$CL/32" via "$LB"; done
	fi
	vip_up || die "no MQTT through the VIP with nftables"
}
nft_info() {
	echo "numgen inc mod 3, return by $natret, $(nsx lb cat /proc/sys/net/netfilter/nf_conntrack_count) conntrack entries at the end"
}
nft_stop() {
	local n
	nsx lb nft delete table ip nlb
	nsx lb sysctl -qw net.ipv4.ip_forward=0
	if [ "$natret" = route ]; then
		for n in b1 b2 b3; do nsx "$n" ip route del "$CL/32" via "$LB"; done
	fi
}

haproxy_start() {
	local i=1 r
	{
		echo "global"
		echo "  maxconn 8000"
		echo "defaults"
		echo "  mode tcp"
		echo "  timeout connect 5s"
		echo "  timeout client 60s"
		echo "  timeout server 60s"
		echo "frontend mqtt"
		echo "  bind $VIP:$PORT"
		# HAProxy's own ways to save an empty ACK: the one of the
		# client's first data (tcp-smart-accept, on by itself in HTTP
		# mode) and the one that ends the handshake with a broker
		# (tcp-smart-connect), as the lean client saves its own.
		echo "  option tcp-smart-accept"
		echo "  default_backend brokers"
		echo "backend brokers"
		echo "  balance roundrobin"
		echo "  option tcp-smart-connect"
		for r in $REALS; do echo "  server b$i $r:$PORT"; i=$((i + 1)); done
	} >"$T/haproxy.cfg"
	ip netns exec "$(ns lb)" haproxy -db -f "$T/haproxy.cfg" >"$T/haproxy.out" 2>"$T/haproxy.err" &
	HAP_PID=$!
	vip_up || die "no MQTT through the VIP with haproxy ($(cat "$T/haproxy.err"))"
}
haproxy_info() { echo "mode tcp, balance roundrobin, tcp-smart-accept and -connect, $(nsx lb haproxy -vv 2>/dev/null | sed -n 's/^Built with multi-threading support.*/threads/p;s/^HAProxy version \([^ ]*\).*/\1/p' | head -1)"; }
haproxy_stop() {
	kill -TERM "$HAP_PID"
	wait "$HAP_PID" || true
}

# No balancer: the clients connect to the brokers' own addresses in turn,
# what any balancer's figures are to be read against.
direct_start() { :; }
direct_info() { echo "no balancer: each connection, each publisher, to the next broker's address"; }
direct_stop() { :; }
# target MODE: the address(es) mqlb-connbench connects to.
target() { if [ "$1" = direct ]; then echo "${REALS// /,}"; else echo "$VIP"; fi; }

# segs_in NS...: TCP segments received in these namespaces (Tcp InSegs).
# Per message, at the brokers and at the client, it shows how a balancer
# packs publishes and acknowledgements into segments.
segs_in() {
	local n t=0
	for n in "$@"; do
		t=$((t + $(nsx "$n" awk '$1 == "Tcp:" && $2 ~ /^[0-9]/ { print $11 }' /proc/net/snmp)))
	done
	echo "$t"
}
# per_msg SEGS LINE: SEGS per acknowledged message of a msg measure.
per_msg() {
	awk -v g="$1" -v a="$(field acked_s "$2")" -v d="$dur" 'BEGIN { printf "%.2f", (a > 0 ? g / (a * d) : 0) }'
}

# per_conn SEGS LINE: SEGS per connection of a conn measure: what a client
# and the balancer make of the handshake, the CONNECT and the close.
per_conn() {
	awk -v g="$1" -v d="$(field done "$2")" 'BEGIN { printf "%.2f", (d > 0 ? g / d : 0) }'
}

# field NAME LINE: the value of NAME=... in a mqlb-connbench line.
field() { printf '%s\n' "$2" | tr ' ' '\n' | sed -n "s/^$1=//p"; }

topology
brokers
for m in ${modes//,/ }; do
	case $m in xdp | nft | haproxy | direct) ;; *) rc=2 die "unknown mode $m" ;; esac
done
echo "# netns-lb.sh $(date -u +%FT%TZ): $(uname -r), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg);" \
	"$rounds rounds of the modes in turn, $dur s a measure; conn: $par parallel $client clients" \
	"CONNECT/CONNACK/DISCONNECT; msg: $npub publishers QoS 1, window $win, $size-byte payload," \
	"3 subscribers QoS 0 straight to the brokers; namespaces nlb-$RUN-*"
: >"$T/notes"
: >"$T/results"
for round in $(seq 1 "$rounds"); do
	for m in ${modes//,/ }; do
		"${m}_start"
		cg=$(segs_in b1 b2 b3) ck=$(segs_in cl)
		c=$(nsx cl "$B/mqlb-connbench" conn -h "$(target "$m")" -p "$PORT" \
			--parallel "$par" --duration "$dur" $([ "$client" = plain ] && echo --plain)) ||
			die "$m: mqlb-connbench conn failed"
		cg=$(($(segs_in b1 b2 b3) - cg)) ck=$(($(segs_in cl) - ck))
		sleep 0.5
		g=$(segs_in b1 b2 b3) k=$(segs_in cl)
		s=$(nsx cl "$B/mqlb-connbench" msg -h "$(target "$m")" -p "$PORT" -q 1 \
			--publishers "$npub" --window "$win" --size "$size" --duration "$dur" \
			--sub "${REALS// /,}" --sub-source "$SUBSRC") ||
			die "$m: mqlb-connbench msg failed"
		g=$(($(segs_in b1 b2 b3) - g)) k=$(($(segs_in cl) - k))
		[ "$round" = 1 ] && echo "$m: $("${m}_info")" >>"$T/notes"
		"${m}_stop"
		echo "$m $(field conn_s "$c") $(field p50_ms "$c") $(field p99_ms "$c") $(field errors "$c")" \
			"$(field acked_s "$s") $(field delivered_s "$s") $(field per_sub "$s" | tr , /)" \
			"$(per_msg "$g" "$s") $(per_msg "$k" "$s") $(per_conn "$cg" "$c") $(per_conn "$ck" "$c")" |
			tee -a "$T/results" | sed "s/^/# round $round: /"
		# Let this mode's TIME_WAITs not crowd the next one's ports.
		sleep 1
	done
done
sed 's/^/# /' "$T/notes"
# Medians over the rounds (the machine may be shared: rounds in turn, so
# a busy moment hits every mode alike), the range of conn/s and msg/s.
H='| %-7s | %7s | %-15s | %7s | %7s | %6s | %7s | %-15s | %8s | %8s | %8s | %8s | %8s |\n'
# shellcheck disable=SC2059 # the format is $H
printf "$H" mode conn/s "conn/s range" "p50 ms" "p99 ms" errors msg/s "msg/s range" "deliv/s" \
	"segs/msg b" "segs/msg cl" "segs/conn b" "segs/conn cl"
# shellcheck disable=SC2059
printf "$H" --- ---: --- ---: ---: ---: ---: --- ---: ---: ---: ---: ---:
fail=0
for m in ${modes//,/ }; do
	med() { awk -v m="$m" -v k="$1" '$1 == m { print $k }' "$T/results" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
	rng() { awk -v m="$m" -v k="$1" '$1 == m { print $k }' "$T/results" | sort -g | awk 'NR == 1 { a = $1 } { b = $1 } END { printf "%.0f-%.0f", a, b }'; }
	errs=$(awk -v m="$m" '$1 == m { e += $5 } END { print e + 0 }' "$T/results")
	printf '| %-7s | %7.0f | %-15s | %7.2f | %7.2f | %6s | %7.0f | %-15s | %8.0f | %8.2f | %8.2f | %8.2f | %8.2f |\n' "$m" \
		"$(med 2)" "$(rng 2)" "$(med 3)" "$(med 4)" "$errs" "$(med 6)" "$(rng 6)" "$(med 7)" "$(med 9)" \
		"$(med 10)" "$(med 11)" "$(med 12)"
	awk -v m="$m" '$1 == m && !($2 > 0 && $6 > 0) { bad = 1 } END { exit bad }' "$T/results" || fail=1
done
[ "$fail" = 0 ] || { echo "netns-lb.sh: a mode measured no connection or no message" >&2; exit 69; }
