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
		while read -r n; do
			for p in $(ip netns pids "$n" 2>/dev/null); do kill -TERM "$p" 2>/dev/null || true; done
		done <"$T/netns"
		sleep 0.2
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
