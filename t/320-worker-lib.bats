#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 320-worker-lib: libmqlb from C: the shipped example worker (built against
# mqlb.h and libmqlb only) takes an award and reports done; the library
# exports nothing but its API.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

U1=11111111-2222-4333-8444-555555555551

@test "the example C worker announces, takes an award and reports done" {
	broker_start
	bg spy mosquitto_sub -p "$BROKER_PORT" -h 127.0.0.1 -V 5 -t 'lb/#' -F '%t|%p'
	wait_for 5 eval "pub lb/mark m; grep -q '^lb/mark' '$T/spy.out'"
	bg ex "$MQLB_BUILDDIR/t/example-worker" 127.0.0.1 "$BROKER_PORT" cg 'jobs/#'
	wait_for 5 grep -q "^lb/sub/cg|jobs/#$" "$T/spy.out"
	# The wid is hostname-pid by default.
	wid="$(hostname)-$(pidof_bg ex)"
	# It offers its two slots (credit) once it can take jobs.
	wait_for 5 grep -qxF "lb/credit/cg/$wid|2" "$T/spy.out"
	pub "lb/job/cg/$wid/$U1/jobs/a" 'hello' -q 1
	wait_for 5 grep -qxF "job $U1 jobs/a hello" "$T/ex.out"
	wait_for 5 grep -qxF "lb/done/cg/$wid/$U1|ok" "$T/spy.out"
}

@test "libmqlb exports only mqlb_* symbols" {
	lib=$(ls "$MQLB_BUILDDIR"/.libs/libmqlb.so.*.*.* | head -n1)
	[ -n "$lib" ]
	nm -D --defined-only "$lib" | awk '$2 ~ /^[TDBR]$/ { print $3 }' >"$T/syms"
	grep -q '^mqlb_worker_new$' "$T/syms"
	! grep -v '^mqlb_' "$T/syms" || false
}
