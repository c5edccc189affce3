#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 300-worker-options: mqlb-worker's usage errors, --help, and the checks on
# group, topic and numbers (no broker needed).
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

usage_error() {
	run mqlb-worker "$@"
	[ "$status" -eq 2 ]
	[ "${lines[0]#mqlb-worker: error: }" != "${lines[0]}" ]
	[[ "$output" == *"usage: mqlb-worker -g group -t topic"* ]]
}

@test "--help prints the usage on stdout and exits 0" {
	run --separate-stderr mqlb-worker --help
	[ "$status" -eq 0 ]
	[[ "$output" == "usage: mqlb-worker -g group -t topic"* ]]
	[ -z "$stderr" ]
}

@test "-g and -t are required" {
	usage_error -t jobs
	[ "${lines[0]}" = "mqlb-worker: error: -g group is required" ]
	usage_error -g g1
	[ "${lines[0]}" = "mqlb-worker: error: -t topic is required" ]
}

@test "a group or wid must be one topic level" {
	usage_error -g a/b -t jobs
	[[ "${lines[0]}" == *'-g: "a/b" is not a topic level'* ]]
	usage_error -g g -t jobs --wid 'w+'
	[[ "${lines[0]}" == *'--wid: "w+" is not a topic level'* ]]
}

@test "bad topic filters are refused" {
	usage_error -g g -t 'a/#/b'
	[[ "${lines[0]}" == *'-t: "a/#/b" is not a valid topic filter'* ]]
	usage_error -g g -t '$share/x/jobs'
	usage_error -g g -t 'lb/req/x'
	[[ "${lines[0]}" == *'under the protocol prefix lb/'* ]]
	usage_error -g g -t a -t b
	[[ "${lines[0]}" == *'one topic per worker'* ]]
}

@test "numbers and choices are checked strictly" {
	usage_error -g g -t jobs -j 0
	[[ "${lines[0]}" == *'-j: bad number "0"'* ]]
	usage_error -g g -t jobs -j 2x
	usage_error -g g -t jobs --reserve-timeout soon
	[[ "${lines[0]}" == *'--reserve-timeout: bad duration "soon"'* ]]
	usage_error -g g -t jobs --fallback maybe
	[[ "${lines[0]}" == *'--fallback: "maybe" is not share, direct or none'* ]]
	usage_error -g g -t jobs --queue -1
	usage_error -g g -t jobs --drain-timeout -1
	usage_error -g g -t jobs --bogus
	[ "${lines[0]}" = "mqlb-worker: error: unknown option --bogus" ]
	usage_error -g g -t jobs --ahead -1
	[ "${lines[0]}" = 'mqlb-worker: error: --ahead: bad number "-1" (0 to 65535)' ]
	usage_error -g g -t jobs --ahead 65536
	usage_error -g g -t jobs --ahead 1 --bid
	[ "${lines[0]}" = "mqlb-worker: error: --ahead is for credit workers, not with --bid" ]
}

@test "an unreachable broker ends with 69 after --retries" {
	run mqlb-worker -g g -t jobs -h 127.0.0.1 -p 1 --retries 1 -- true
	[ "$status" -eq 69 ]
	[[ "$output" == *"unreachable after 2 attempts"* ]]
}
