#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 030-sockbuf: common/sockbuf.c, the buffers under libmosquitto's reads and
# writes, on a socket pair, through the check program t/sbcheck.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

@test "sockbuf: read(2) and write(2) of a program linked with libcommon are its own" {
	cases sbcheck active
}

@test "sockbuf: writes wait for sb_flush, then leave in order, counted as sent" {
	cases sbcheck write-waits
}

@test "sockbuf: held writes stay until released; closed while held, they are never sent" {
	cases sbcheck hold close-held-discards
}

@test "sockbuf: close(2) sends what waits; the fd's next file is not buffered" {
	cases sbcheck close-sends fd-reused
}

@test "sockbuf: one read(2) serves many small reads, then EAGAIN as the socket says" {
	cases sbcheck read-buffers
}

@test "sockbuf: a read that emptied the socket makes the next EAGAIN until it is readable" {
	cases sbcheck dry full-read dry-direct
}

@test "sockbuf: a forked child that closes the socket sends nothing of the parent's" {
	cases sbcheck fork
}

@test "sockbuf: libmosquitto's wake-up socket pair takes every byte and sends none" {
	cases sbcheck wakeup
}

@test "sbcheck: an unknown case fails" {
	run sbcheck nosuch
	[ "$status" -eq 1 ]
	[ "$output" = "FAIL nosuch: no such case" ]
}
