#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 010-options: the option parsing every command shares (common/opt.c), seen
# through mqlb-sub and the other balancer commands: --help, --version,
# usage errors, strict numbers, options files, exit codes.
bats_require_minimum_version 1.5.0
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

# Commands that share common/opt.c and are built here.
commands() {
	local c
	for c in mqlb-sub mqlb-auction mqlb-dispatch mqlb-worker; do
		[ -x "$MQLB_BUILDDIR/$c" ] && echo "$c"
	done
	return 0
}

# usage_error CMD ARGS...: exit 2, nothing on stdout, stderr is one
# "CMD: error: ..." line followed by the usage text; $err is that line.
usage_error() {
	local cmd=$1
	# Options a bug let through would connect and retry forever: bound it.
	run --separate-stderr timeout 10 "$@"
	[ "$status" -eq 2 ] || { echo "$*: exit $status, not 2" >&2; return 1; }
	[ -z "$output" ] || { echo "$*: wrote to stdout: $output" >&2; return 1; }
	err=${stderr%%$'\n'*}
	[[ "$err" == "$cmd: error: "* ]] || { echo "$*: first line: $err" >&2; return 1; }
	# Exactly one diagnostic line: the rest is the usage text, verbatim.
	[ "${stderr#*$'\n'}" = "$("$cmd" --help)" ] || { echo "$*: stderr: $stderr" >&2; return 1; }
}

@test "--help prints the usage on stdout and exits 0" {
	local c
	for c in $(commands); do
		run --separate-stderr "$c" --help
		[ "$status" -eq 0 ]
		[[ "$output" == "usage: $c "* ]]
		[ -z "$stderr" ]
	done
	# Wins wherever it stands, and over options that are fine.
	run --separate-stderr mqlb-sub -p 1883 --help -k 30
	[ "$status" -eq 0 ]
	[[ "$output" == "usage: mqlb-sub "* ]]
}

@test "--version prints the name and version and exits 0" {
	local c
	for c in $(commands); do
		run --separate-stderr "$c" --version
		[ "$status" -eq 0 ]
		[[ "$output" =~ ^$c\ [0-9]+\.[0-9]+ ]]
		[ "${#lines[@]}" -eq 1 ]
		[ -z "$stderr" ]
	done
}

@test "an unknown option is one error line, the usage, and exit 2" {
	local c
	for c in $(commands); do
		usage_error "$c" --bogus
		[ "$err" = "$c: error: unknown option --bogus" ]
		usage_error "$c" -Z
		[ "$err" = "$c: error: unknown option -Z" ]
	done
	# -q (QoS) only where a QoS is the user's to choose.
	for c in mqlb-auction mqlb-health mqlb-stat; do
		usage_error "$c" -q 1
		[ "$err" = "$c: error: unknown option -q" ]
		usage_error "$c" --qos 1
		[ "$err" = "$c: error: unknown option --qos" ]
	done
}

@test "a missing value or a stray argument is a usage error" {
	usage_error mqlb-sub -p
	[ "$err" = 'mqlb-sub: error: -p: needs a value' ]
	usage_error mqlb-sub --prefix
	[ "$err" = 'mqlb-sub: error: --prefix: needs a value' ]
	usage_error mqlb-sub extra
	[ "$err" = 'mqlb-sub: error: unexpected argument "extra"' ]
}

@test "numbers are parsed strictly and name the option" {
	usage_error mqlb-sub -p 0
	[ "$err" = 'mqlb-sub: error: -p: bad number "0" (1 to 65535)' ]
	usage_error mqlb-sub -p 70000
	[ "$err" = 'mqlb-sub: error: -p: bad number "70000" (1 to 65535)' ]
	usage_error mqlb-sub -p 12x
	[ "$err" = 'mqlb-sub: error: -p: bad number "12x" (1 to 65535)' ]
	usage_error mqlb-sub -p ''
	usage_error mqlb-sub -p ' 12'
	usage_error mqlb-sub -p +12
	usage_error mqlb-sub -k 0x10
	usage_error mqlb-sub --group-ttl 1e3
	usage_error mqlb-sub --group-ttl ' 3'
	usage_error mqlb-sub --port 99999999999999999999
	usage_error mqlb-sub -k -1
	[[ "$err" == 'mqlb-sub: error: -k: bad number "-1"'* ]]
	usage_error mqlb-sub -q 3
	[[ "$err" == 'mqlb-sub: error: -q: bad number "3"'* ]]
	usage_error mqlb-sub -q 1.0
	usage_error mqlb-sub --retries -1
	[[ "$err" == 'mqlb-sub: error: --retries: bad number "-1"'* ]]
	usage_error mqlb-sub --ready-fd 1
	[[ "$err" == 'mqlb-sub: error: --ready-fd: bad number "1"'* ]]
	usage_error mqlb-sub --max-groups 0
	usage_error mqlb-sub --group-ttl 0
	[[ "$err" == 'mqlb-sub: error: --group-ttl: bad duration "0"'* ]]
	usage_error mqlb-sub --group-ttl 1x
	usage_error mqlb-sub --group-ttl nan
	usage_error mqlb-sub --socket-mode 0999
	[[ "$err" == 'mqlb-sub: error: --socket-mode: bad octal mode "0999"'* ]]
	# The same checks in the other commands: one parser for all.
	local c
	for c in $(commands); do
		usage_error "$c" -p 12x
		[ "$err" = "$c: error: -p: bad number \"12x\" (1 to 65535)" ]
	done
	# --collect: the three stages of the pipeline, and only they
	for c in mqlb-sub mqlb-auction mqlb-dispatch; do
		usage_error "$c" --collect 0.2
		[ "$err" = "$c: error: --collect: bad duration \"0.2\" (seconds, 0 to 0.1; or with ms)" ]
		usage_error "$c" --collect -1
		usage_error "$c" --collect x
		run "$c" --collect 1ms --help
		[ "$status" -eq 0 ]
	done
	usage_error mqlb-worker -g g -t t --collect 0.001
	[ "$err" = "mqlb-worker: error: unknown option --collect" ]
}

@test "choices: -V 5 or 311, and topic levels" {
	usage_error mqlb-sub -V 4
	[ "$err" = 'mqlb-sub: error: -V: unknown protocol version "4" (5 or 311)' ]
	usage_error mqlb-sub -V 3
	usage_error mqlb-sub --prefix a/b
	[[ "$err" == 'mqlb-sub: error: --prefix: "a/b" is not a topic level'* ]]
	usage_error mqlb-sub --prefix ''
	usage_error mqlb-sub --prefix '+'
	usage_error mqlb-sub --share 'x#'
	[[ "$err" == 'mqlb-sub: error: --share: "x#" is not a topic level'* ]]
	usage_error mqlb-sub -t 'a/#/b'
	[ "$err" = 'mqlb-sub: error: -t: "a/#/b" is not a valid topic filter' ]
	usage_error mqlb-sub -t ''
	usage_error mqlb-sub -i ''
	[[ "$err" == 'mqlb-sub: error: -i: bad client id'* ]]
}

@test "TLS options that need each other are checked" {
	usage_error mqlb-sub --cert c.pem
	[ "$err" = 'mqlb-sub: error: --cert and --key go together' ]
	usage_error mqlb-sub --cert c.pem --key k.pem
	[[ "$err" == *'need --cafile or --capath' ]]
	usage_error mqlb-sub --insecure
	usage_error mqlb-sub -c
	[ "$err" = 'mqlb-sub: error: -c needs a client id (-i)' ]
}

@test "-V 5 and 311 are both accepted" {
	# Accepted options get as far as connecting: exit 69, not 2.
	run mqlb-sub -V 311 -h 127.0.0.1 -p 1 --retries 1
	[ "$status" -eq 69 ]
	run mqlb-sub -V mqttv5 -h 127.0.0.1 -p 1 --retries 1
	[ "$status" -eq 69 ]
}

@test "under systemd the error line carries the priority prefix" {
	: >"$T/err"
	id=$(stat -L -c '%d:%i' "$T/err")
	JOURNAL_STREAM=$id mqlb-sub --bogus 2>"$T/err" || status=$?
	[ "$status" -eq 2 ]
	[ "$(head -n1 "$T/err")" = '<3>mqlb-sub: error: unknown option --bogus' ]
	# Inherited by a process whose stderr is elsewhere: no prefix.
	for js in 8:1234 "$id:x" garbage; do
		JOURNAL_STREAM=$js mqlb-sub --bogus 2>"$T/err" || true
		[ "$(head -n1 "$T/err")" = 'mqlb-sub: error: unknown option --bogus' ]
	done
}

@test "-o reads one option per line, with comments and blank lines" {
	cat >"$T/opts" <<-'EOF'
		# the broker
		host 127.0.0.1

		  port 1
		--retries 1
		# single letters get one dash
		V 311
	EOF
	run --separate-stderr mqlb-sub -o "$T/opts"
	[ "$status" -eq 69 ]
	[[ "$stderr" == *'broker 127.0.0.1:1 unreachable after 2 attempts'* ]]
	# Later arguments win over the file, earlier ones lose to it.
	run --separate-stderr mqlb-sub -o "$T/opts" -p 2
	[ "$status" -eq 69 ]
	[[ "$stderr" == *'broker 127.0.0.1:2 unreachable'* ]]
	run --separate-stderr mqlb-sub -p 2 -o "$T/opts"
	[[ "$stderr" == *'broker 127.0.0.1:1 unreachable'* ]]
	# --help from a file works like on the command line.
	echo help >"$T/help"
	run --separate-stderr mqlb-sub -o "$T/help"
	[ "$status" -eq 0 ]
	[[ "$output" == "usage: mqlb-sub "* ]]
}

@test "-o: a bad line is a usage error" {
	echo 'bogus 1' >"$T/o1"
	usage_error mqlb-sub -o "$T/o1"
	[ "$err" = 'mqlb-sub: error: unknown option --bogus' ]
	printf '# fine\nport 70000\n' >"$T/o2"
	usage_error mqlb-sub -o "$T/o2"
	[ "$err" = 'mqlb-sub: error: -p: bad number "70000" (1 to 65535)' ]
	echo 'port' >"$T/o3"
	usage_error mqlb-sub -o "$T/o3"
	[ "$err" = 'mqlb-sub: error: --port: needs a value' ]
	# A comment goes on a line of its own.
	echo 'port 1883 # broker' >"$T/o4"
	usage_error mqlb-sub -o "$T/o4"
	[[ "$err" == 'mqlb-sub: error: -p: bad number "1883 # broker"'* ]]
	usage_error mqlb-sub -o "$T/missing"
	[[ "$err" == "mqlb-sub: error: -o: cannot open $T/missing: "* ]]
	usage_error mqlb-sub -o
	# A file that includes itself stops, it does not eat all memory.
	echo "o $T/loop" >"$T/loop"
	usage_error mqlb-sub -o "$T/loop"
	[[ "$err" == *'more than 16 options files'* ]]
}

@test "exit codes follow common/log.h" {
	local h="$MQLB_SRCDIR/common/log.h"
	# The table itself: the tests below rely on these values.
	grep -qE 'EXIT_OK = 0,' "$h"
	grep -qE 'EXIT_USAGE = 2,' "$h"
	grep -qE 'EXIT_UNREACH = 69,' "$h"
	grep -qE 'EXIT_SYSERR = 111,' "$h"
	# 0: --help; 2: usage error.
	run mqlb-sub --help
	[ "$status" -eq 0 ]
	run mqlb-sub -q 9
	[ "$status" -eq 2 ]
	# 69: no broker after the retries allowed.
	run --separate-stderr mqlb-sub -h 127.0.0.1 -p 1 --retries 2
	[ "$status" -eq 69 ]
	[ "$(grep -c 'retrying' <<<"$stderr")" -eq 1 ]
	[[ "${stderr##*$'\n'}" == 'mqlb-sub: error: broker 127.0.0.1:1 unreachable after 3 attempts'* ]]
	# 111: a system error (here, a socket it cannot create).
	run --separate-stderr mqlb-sub --listen "$T/no/such/dir/sock" -h 127.0.0.1 -p 1 --retries 1
	[ "$status" -eq 111 ]
	[[ "$stderr" == "mqlb-sub: error: --listen $T/no/such/dir/sock: "* ]]
}

@test "the exit-code table in mqlb(7) matches common/log.h" {
	local code
	[ -s "$MQLB_SRCDIR/man/mqlb.7" ]
	for code in $(sed -n 's/^\t*EXIT_[A-Z]* = \([0-9]*\),.*/\1/p' "$MQLB_SRCDIR/common/log.h"); do
		grep -qE "^\.It (Li |Sy )?$code\$" "$MQLB_SRCDIR/man/mqlb.7" ||
			{ echo "exit code $code is not in mqlb.7" >&2; return 1; }
	done
}
