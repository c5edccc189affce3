#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 020-man: every man page is clean under mandoc -Tlint, and the options in a
# command's SYNOPSIS are exactly the ones its --help prints and its page
# describes. A page that is still empty fails here; it is never skipped.
load helpers/common.bash
setup() {
	mqlb_setup
	[ -n "${MQLB_MANS:-}" ] || { echo "MQLB_MANS is not set (run through make check)" >&2; return 1; }
	: "${MQLB_SRCDIR:?}" "${MQLB_BUILDDIR:?}"
}
teardown() { mqlb_teardown; }

# lint PAGE: mandoc's complaints about PAGE, minus two kinds that depend on
# the machine, not on the page: "referenced manual not found" (STYLE) for
# an Xr to a page of ours, which mandoc looks up in the installed manual
# database where the pages are not before `make install`; and "outdated
# mandoc.db lacks ..." for an Xr to a system page (exit(3), mosquitto(8))
# when the host's database was not rebuilt. Everything else counts,
# STYLE included.
lint() {
	local out rc=0
	out=$(mandoc -Tlint "$1" 2>&1) || rc=$?
	printf '%s\n' "$out" | grep -v -e ': STYLE: referenced manual not found: Xr ' \
		-e '^mandoc: outdated mandoc.db lacks ' | grep . || true
	# Exit 1 is "only STYLE messages"; 2 and up are warnings and errors.
	[ "$rc" -le 1 ] || echo "$1: mandoc -Tlint exit status $rc"
}

# synopsis PAGE: the SYNOPSIS section as rendered text.
synopsis() {
	mandoc -Tascii -Owidth=400 "$1" | col -bx |
		awk '/^[A-Z]/ { on = ($0 == "SYNOPSIS"); next } on'
}

# longs/shorts: the option names in the text on stdin, sorted, one a line.
longs() { grep -oE -- '--[a-z0-9][a-z0-9-]*' | sort -u; }
shorts() {
	grep -oE -- '(^|[[ |])-[A-Za-z0-9]+' | sed 's/^[[ |]*-//' | fold -w1 | sort -u
}

# Pages of sections 1 and 8 whose command was built here.
command_pages() {
	local m cmd
	for m in $MQLB_MANS; do
		case $m in *.1 | *.8) ;; *) continue ;; esac
		cmd=${m##*/}
		cmd=${cmd%.*}
		[ -x "$MQLB_BUILDDIR/$cmd" ] && echo "$m $cmd"
	done
	return 0
}

@test "every page in MQLB_MANS exists, has a body, and is lint-clean" {
	local m bad=0 out
	for m in $MQLB_MANS; do
		if [ ! -s "$MQLB_SRCDIR/$m" ]; then
			echo "$m: missing or empty" >&2
			bad=1
			continue
		fi
		out=$(lint "$MQLB_SRCDIR/$m")
		if [ -n "$out" ]; then
			printf '%s\n' "$out" >&2
			bad=1
		fi
		head -n1 "$MQLB_SRCDIR/$m" | grep -q 'SPDX-License-Identifier' ||
			{ echo "$m: no SPDX line at the top" >&2; bad=1; }
	done
	[ "$bad" -eq 0 ]
}

@test "the lint filter still catches real faults" {
	# A page with an unknown macro and a missing date must not pass.
	printf '.Dt X 1\n.Os\n.Sh NAME\n.Nm x\n.Nd y\n.Zz bogus\n' >"$T/bad.1"
	[ -n "$(lint "$T/bad.1")" ]
	# An empty page, like a placeholder, must not pass either.
	: >"$T/empty.1"
	[ -n "$(lint "$T/empty.1")" ]
}

# The programs make install puts in bin and sbin (not check programs).
installed() {
	# -o Makefile: never remake the Makefile (and print its commands) here.
	printf 'print-progs:\n\t@echo PROGS: $(bin_PROGRAMS) $(sbin_PROGRAMS)\n' |
		env -u MAKEFLAGS -u MFLAGS -u MAKELEVEL make -s -o Makefile -C "$MQLB_BUILDDIR" \
			-f Makefile -f - print-progs | sed -n 's/^PROGS: //p' |
		tr ' ' '\n' | sed 's/\.exe$//' | grep .
}

@test "there is a page for every installed command" {
	local c bad=0 n=0
	for c in $(installed); do
		n=$((n + 1))
		case " $MQLB_MANS " in
		*"/$c.1 "* | *"/$c.8 "*) ;;
		*) echo "no man page for $c in MQLB_MANS" >&2; bad=1 ;;
		esac
	done
	[ "$n" -gt 0 ]
	[ "$bad" -eq 0 ]
}

@test "SYNOPSIS options equal the options --help prints" {
	local m cmd bad=0 n=0
	while read -r m cmd; do
		n=$((n + 1))
		"$cmd" --help >"$T/help" || { echo "$cmd --help failed" >&2; bad=1; continue; }
		synopsis "$MQLB_SRCDIR/$m" >"$T/syn"
		if [ ! -s "$T/syn" ]; then
			echo "$m: no SYNOPSIS" >&2
			bad=1
			continue
		fi
		longs <"$T/help" >"$T/help.l"
		longs <"$T/syn" >"$T/syn.l"
		shorts <"$T/help" >"$T/help.s"
		shorts <"$T/syn" >"$T/syn.s"
		if ! diff -u --label "$cmd --help" --label "$m SYNOPSIS" "$T/help.l" "$T/syn.l" >&2; then
			bad=1
		fi
		if ! diff -u --label "$cmd --help (letters)" --label "$m SYNOPSIS (letters)" \
			"$T/help.s" "$T/syn.s" >&2; then
			bad=1
		fi
	done < <(command_pages)
	[ "$n" -gt 0 ]
	[ "$bad" -eq 0 ]
}

@test "every option --help prints is described in the page" {
	local m cmd o bad=0
	while read -r m cmd; do
		# The body: every macro line after SYNOPSIS that names options.
		awk '/^\.Sh/ { body = body || syn; syn = ($2 == "SYNOPSIS"); next }
			body && /^\.(It|Fl)|[ ]Fl[ ]/' "$MQLB_SRCDIR/$m" >"$T/body"
		"$cmd" --help | longs >"$T/help.l"
		while read -r o; do
			grep -qE -- "(^|[^a-z-])-${o#--}([^a-z0-9-]|\$)" "$T/body" ||
				{ echo "$m: $o is in --help but not described" >&2; bad=1; }
		done <"$T/help.l"
		"$cmd" --help | shorts >"$T/help.s"
		while read -r o; do
			grep -qE -- "(Fl|,) $o( |\$)" "$T/body" ||
				{ echo "$m: -$o is in --help but not described" >&2; bad=1; }
		done <"$T/help.s"
	done < <(command_pages)
	[ "$bad" -eq 0 ]
}

@test "the option extraction sees what a reader sees" {
	printf '%s\n' '.Dd November 25, 2026' '.Dt X 1' '.Os' '.Sh NAME' '.Nm x' '.Nd y' \
		'.Sh SYNOPSIS' '.Nm' '.Op Fl cv' '.Op Fl p Ar port' '.Op Fl -reply | -no-reply' \
		'.Op Fl -group-ttl Ar seconds' '.Sh DESCRIPTION' 'Not here:' '.Fl -other .' >"$T/x.1"
	synopsis "$T/x.1" >"$T/syn"
	[ "$(longs <"$T/syn" | tr '\n' ' ')" = "--group-ttl --no-reply --reply " ]
	[ "$(shorts <"$T/syn" | tr '\n' ' ')" = "c p v " ]
}
