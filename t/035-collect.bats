#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 035-collect: common/collect.c, the stages' --collect following the load, on
# turns of a real libev loop, through the check program t/collectcheck.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

@test "collect: turns that take one message each gather nothing" {
	run collectcheck one-at-a-time
	[ "$output" = "ok one-at-a-time" ]
}

@test "collect: crowded turns gather the limit, idle turns bring it back to none" {
	run collectcheck crowd-then-idle
	[ "$output" = "ok crowd-then-idle" ]
}

@test "collect: the first turn after a pause counts alone: a crowd gone leaves no gathering" {
	run collectcheck pause
	[ "$output" = "ok pause" ]
}

@test "collect: after crowded turns the loop waits the limit before it takes ready input" {
	run collectcheck sleeps
	[ "$output" = "ok sleeps" ]
}

@test "collect: six messages a turn gather 0.1 ms for each past the first" {
	run collectcheck between
	[ "$output" = "ok between" ]
}

@test "collect: --collect 0 never gathers" {
	run collectcheck off
	[ "$output" = "ok off" ]
}

@test "collectcheck: an unknown case fails" {
	run collectcheck nosuch
	[ "$status" -eq 1 ]
	[ "$output" = "FAIL nosuch: no such case" ]
}
