#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 840-demo: contrib/demo, the README's first command, with the commands of
# this build: every job runs once, through the balancer, and the slow worker
# gets fewer than each fast one.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() {
	[ -z "${demo_dir:-}" ] || rm -rf "$demo_dir"
	mqlb_teardown
}

@test "contrib/demo: every job runs once, through the balancer; the slow worker takes less" {
	run env MQLB_BINDIR="$MQLB_BUILDDIR" JOBS=60 RATE=40 "$MQLB_SRCDIR/contrib/demo"
	echo "$output"
	demo_dir=$(sed -n 's/^== broker [0-9.:]*, scratch //p' <<<"$output")
	[ "$status" -eq 0 ]
	[[ "$output" == *"jobs run: 60 of 60 published, 0 run twice"* ]]
	[[ "$output" == *"records: 60 sent, 60 done, 0 dropped"* ]]
	slow=$(awk '$1 == "slow" { print $2 }' <<<"$output")
	for w in fast-1 fast-2; do
		[ "$(awk -v w="$w" '$1 == w { print $2 }' <<<"$output")" -gt "$slow" ]
	done
}
