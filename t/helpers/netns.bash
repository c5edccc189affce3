# SPDX-License-Identifier: MIT
# netns.bash: root-only fixtures for the XDP tests: unique network
# namespaces, veths and a bridge per test, always removed in teardown.

# require_root: skip without root, unless MQLB_REQUIRE_ROOT=1 (CI), where a
# test that cannot run is a failure.
require_root() {
	if [ "$(id -u)" -ne 0 ] || ! ip netns list >/dev/null 2>&1; then
		if [ "${MQLB_REQUIRE_ROOT:-}" = 1 ]; then
			echo "MQLB_REQUIRE_ROOT=1 but this test cannot run as root with ip netns" >&2
			return 1
		fi
		skip "needs root (set MQLB_REQUIRE_ROOT=1 to make this a failure)"
	fi
	command -v ethtool >/dev/null || { echo "ethtool missing (Debian: ethtool)" >&2; return 1; }
}

# A run id short enough for interface names (15 bytes), unique per test.
netns_init() {
	NS_RUN=$(printf '%04x%x' $((RANDOM)) $(($$ % 16)))
	: >"$T/netns"
	: >"$T/pins"
}

# ns NAME: create namespace mq-RUN-NAME with lo up; prints nothing.
ns_add() {
	local n="mq-$NS_RUN-$1"
	ip netns add "$n"
	echo "$n" >>"$T/netns"
	ip -n "$n" link set lo up
}
ns() { echo "mq-$NS_RUN-$1"; }
nsx() {
	local n=$1
	shift
	ip netns exec "mq-$NS_RUN-$n" "$@"
}

# pin_dir NAME: a directory on a bpffs of this test's own for --pin ("ip
# netns exec" mounts a fresh /sys, hiding /sys/fs/bpf); unmounted in teardown.
pin_dir() {
	local m="$T/bpffs"
	if ! mountpoint -q "$m"; then
		mkdir -p "$m"
		mount -t bpf bpf "$m"
		echo "$m" >>"$T/pins"
	fi
	echo "$m/$1"
}

netns_cleanup() {
	local n p
	[ -n "${T:-}" ] || return 0
	if [ -s "$T/netns" ]; then
		# (stop_pids: t/helpers/common.bash)
		# shellcheck disable=SC2046
		stop_pids $(while read -r n; do ip netns pids "$n" 2>/dev/null; done <"$T/netns")
		while read -r n; do
			for p in $(ip netns pids "$n" 2>/dev/null); do kill -KILL "$p" 2>/dev/null || true; done
			ip netns del "$n" 2>/dev/null || true
		done <"$T/netns"
		: >"$T/netns"
	fi
	if [ -s "$T/pins" ]; then
		while read -r p; do umount "$p" 2>/dev/null || true; done <"$T/pins"
		: >"$T/pins"
	fi
	return 0
}

# xdp_query SOCKET RECORDS...: send lines to mqlb-xdp's socket, print answers.
xdp_query() {
	local s=$1
	shift
	printf '%s\n' "$@" | xdptest query "$s"
}

# show_has SOCKET PATTERN: mqlb-xdp's show answer matches PATTERN.
show_has() { xdp_query "$1" show 2>/dev/null | grep -q -- "$2"; }

# bg_in NAME FILE CMD...: bg with stdin from FILE (a plain "&" would give
# the command /dev/null).
bg_in() {
	local name=$1 in=$2
	shift 2
	"$@" <"$in" >"$T/$name.out" 2>"$T/$name.err" &
	echo $! >"$T/$name.pid"
	echo $! >>"$T/pids"
}

# testbed MODE: the topology of /work/shared/XDP-TESTBED.md, all in
# namespaces of this test: a switch namespace with a bridge; client (cl,
# 10.77.0.2), balancer (lb, .3, VIP 10.77.0.100 on its eth0), brokers
# b1..b3 (.11-.13, VIP on lo, ARP kept quiet; fd77::N the same in IPv6) and, for MODE ipip, a router
# gw (.1) that the balancer's encapsulated packets go through.
TB_VIP=10.77.0.100 TB_VIP6=fd77::100
testbed() {
	local mode=$1 n addr
	ns_add sw
	ip -n "$(ns sw)" link add br0 type bridge
	ip -n "$(ns sw)" link set br0 up
	for n in cl lb b1 b2 b3 ${mode/l2/}; do
		case $n in
		cl) addr=10.77.0.2 ;; lb) addr=10.77.0.3 ;; ipip) n=gw addr=10.77.0.1 ;;
		b*) addr=10.77.0.1${n#b} ;;
		esac
		ns_add "$n"
		ip -n "$(ns sw)" link add "p-$n" type veth peer name eth0 netns "$(ns "$n")"
		ip -n "$(ns sw)" link set "p-$n" master br0 up
		ip -n "$(ns "$n")" link set eth0 up
		ip -n "$(ns "$n")" addr add "$addr/24" dev eth0
		ip -n "$(ns "$n")" addr add "fd77::${addr##*.}/64" dev eth0 nodad
	done
	# Trap 1: frames sent by XDP_TX on a veth vanish unless the peer
	# receives with NAPI. "ethtool -K gro on" did not do it for a bridge
	# port here; an XDP program that passes everything does.
	ip -n "$(ns sw)" link set dev p-lb xdpdrv obj "$MQLB_BUILDDIR/bpf/xdp_pass.bpf.o" sec xdp
	# Trap 2: bounced frames must carry complete checksums.
	nsx cl ethtool -K eth0 tx off >/dev/null
	ip -n "$(ns lb)" addr add "$TB_VIP/32" dev eth0
	ip -n "$(ns lb)" addr add "$TB_VIP6/128" dev eth0 nodad
	if [ "$mode" = ipip ]; then
		nsx gw sysctl -qw net.ipv4.ip_forward=1
		ip -n "$(ns lb)" route add default via 10.77.0.1
	fi
	for n in b1 b2 b3; do
		nsx "$n" sysctl -qw net.ipv4.conf.all.arp_ignore=1 net.ipv4.conf.all.arp_announce=2
		ip -n "$(ns "$n")" addr add "$TB_VIP/32" dev lo
		# IPv6 answers neighbour solicitations only for the receiving
		# interface's addresses: the VIP on lo stays quiet by itself.
		ip -n "$(ns "$n")" addr add "$TB_VIP6/128" dev lo
	done
}

# tb_broker N: mosquitto in broker namespace bN on port 1883; b2 and b3
# bridge everything to b1, so a message published on any reaches all.
tb_broker() {
	local n=$1 conf="$T/b$1.conf"
	{
		echo "listener 1883"
		echo "allow_anonymous true"
		echo "persistence false"
		echo "user root"
		echo "log_dest stderr"
		if [ "$n" != 1 ]; then
			echo "connection hub$n"
			echo "address 10.77.0.11:1883"
			echo "topic # both 0"
			echo "cleansession true"
		fi
	} >"$conf"
	bg "b$n" ip netns exec "$(ns "b$n")" mosquitto -c "$conf"
	wait_for 5 nsx "b$n" bash -c "exec 3<>/dev/tcp/10.77.0.1$n/1883" 2>/dev/null
}

# tb_clients_on N: client connections (from 10.77.0.2) established at bN.
tb_clients_on() {
	nsx "b$1" ss -Htn state established '( sport = :1883 )' | awk '$4 ~ /^10\.77\.0\.2:/ { sub(/.*:/, "", $4); print $4 }'
}

# tb_cluster_broker N [CONFIG-LINE...]: mosquitto in bN on port 1883 for the
# cluster tests. Bridges form a star around b1, as in tb_broker: mosquitto
# only keeps a message from going back over the bridge it came by, so
# bridges that form a cycle (a full mesh of three) would pass every message
# round it for ever. The bridges speak MQTT 5, so that user properties
# (mqlb-id, the reliability extension) cross them: over MQTT 3.1.1 bridges
# no worker's done reaches the balancer. QoS 1 on the bridges. CONFIG-LINEs
# go into the configuration before the bridge (another listener, say).
tb_cluster_broker() {
	local n=$1 conf="$T/b$1.conf" l
	shift
	{
		echo "listener 1883"
		echo "allow_anonymous true"
		echo "persistence false"
		echo "user root"
		echo "log_dest stderr"
		echo "max_queued_messages 100000"
		for l in "$@"; do echo "$l"; done
		if [ "$n" != 1 ]; then
			echo "connection hub$n"
			echo "address 10.77.0.11:1883"
			echo "bridge_protocol_version mqttv50"
			echo "topic # both 1"
			echo "cleansession true"
		fi
	} >"$conf"
	bg "b$n" ip netns exec "$(ns "b$n")" mosquitto -c "$conf"
	wait_for 5 nsx "b$n" bash -c "exec 3<>/dev/tcp/10.77.0.1$n/1883" 2>/dev/null
}

# tb_bridged: the bridges of b2 and b3 are connected to b1.
tb_bridged() {
	[ "$(nsx b1 ss -Htn state established '( sport = :1883 )' | grep -c '10\.77\.0\.1[23]:')" -ge 2 ]
}
