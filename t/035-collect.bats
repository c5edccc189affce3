#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 035-collect: common/collect.c, the stages' --collect following the load, on
# turns of a real libev loop, through the check program t/collectcheck.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

@test "collect: turns that take one message each gather nothing" {
	cases collectcheck one-at-a-time
}

@test "collect: crowded turns gather the limit, idle turns bring it back to none" {
	cases collectcheck crowd-then-idle
}

@test "collect: the first turn after a pause counts alone: a crowd gone leaves no gathering" {
	cases collectcheck pause
}

@test "collect: after crowded turns the loop waits the limit before it takes ready input" {
	cases collectcheck sleeps
}

@test "collect: six messages a turn gather 0.1 ms for each past the first" {
	cases collectcheck between
}

@test "collect: --collect 0 never gathers" {
	cases collectcheck off
}

@test "collectcheck: an unknown case fails" {
	run collectcheck nosuch
	[ "$status" -eq 1 ]
	[ "$output" = "FAIL nosuch: no such case" ]
}
