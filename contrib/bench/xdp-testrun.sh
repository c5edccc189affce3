#!/bin/sh
# SPDX-License-Identifier: MIT
# xdp-testrun.sh: ns per packet of mqlb_xdp through BPF_PROG_TEST_RUN (one
# packet per call, repeat=1, and again with repeat=1000, the program alone,
# for the cases a run repeats alike): an
# established flow, a new flow (SYN: ring lookup and connection-table
# insert), a packet not for a VIP, and a minimal MAC-swap XDP_TX program as
# the floor, all in the same run. Needs root and a built tree.
#
# usage: contrib/bench/xdp-testrun.sh [builddir] [packets]
set -eu
builddir=${1:-.}
n=${2:-200000}
xdptest="$builddir/t/xdptest"
[ -x "$xdptest" ] || { echo "xdp-testrun.sh: no $xdptest (run make check_PROGRAMS=t/xdptest check-am, or make check)" >&2; exit 2; }
[ "$(id -u)" -eq 0 ] || { echo "xdp-testrun.sh: needs root (BPF_PROG_TEST_RUN)" >&2; exit 2; }
echo "# $(uname -r), $(nproc) CPUs, $n packets per case, $(date -u +%FT%TZ)"
"$xdptest" bench "$n" | grep -v '^ok'
