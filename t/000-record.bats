#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 000-record: the line-record codec of PROTOCOL.md section 2 (escape,
# unescape, split, props), driven through the check program t/recodec.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

# esc STRING: the escaped form of STRING's bytes (printf %b escapes allowed).
esc() { printf '%b' "$1" | recodec escape; }

@test "escape: spaces, controls, % and DEL become upper-case %XX" {
	[ "$(esc 'a b')" = "a%20b" ]
	[ "$(esc 'a\tb\nc\rd')" = "a%09b%0Ac%0Dd" ]
	[ "$(esc '100%')" = "100%25" ]
	[ "$(esc '\x7f\x01\x00x')" = "%7F%01%00x" ]
	[ "$(esc '\x1f\x20\x21')" = "%1F%20!" ]
}

@test "escape: UTF-8, high bytes and printable ASCII pass as they are" {
	[ "$(esc 'héllo/wörld/+/#')" = "héllo/wörld/+/#" ]
	[ "$(esc 'a,b=c;d"e')" = 'a,b=c;d"e' ]
	# A lone 0x80 or 0xff is not UTF-8, yet travels unescaped.
	[ "$(esc '\x80\xff' | od -An -tx1 | tr -d ' ')" = "80ff0a" ]
}

@test "escape: empty is '-', a lone '-' is %2D, other dashes stay" {
	[ "$(printf '' | recodec escape)" = "-" ]
	[ "$(esc '-')" = "%2D" ]
	[ "$(esc '--')" = "--" ]
	[ "$(esc '-x')" = "-x" ]
	[ "$(esc 'a-')" = "a-" ]
}

@test "unescape: '-' is empty, %2D is '-', lower-case hex is accepted" {
	[ "$(echo 'v - x' | recodec unescape 1 | od -An -c | tr -d ' ')" = "" ]
	[ "$(echo 'v %2D x' | recodec unescape 1)" = "-" ]
	[ "$(echo 'v %2d x' | recodec unescape 1)" = "-" ]
	[ "$(echo 'v a%20b%0a x' | recodec unescape 1 | od -An -tx1 | tr -d ' ')" = "6120620a" ]
	[ "$(echo 'v -- x' | recodec unescape 1)" = "--" ]
	# The verb is a field like any other.
	[ "$(echo 'v%25 x' | recodec unescape 0)" = "v%" ]
}

@test "unescape: a bad escape makes the record malformed" {
	run recodec split <<-'EOF'
		v a%4
		v %G1
		v %
		v a%2
		v ok%41
	EOF
	[ "$status" -eq 0 ]
	[ "${lines[0]}" = "error" ]
	[ "${lines[1]}" = "error" ]
	[ "${lines[2]}" = "error" ]
	[ "${lines[3]}" = "error" ]
	[ "${lines[4]}" = "2 [v] [okA]" ]
}

@test "all 256 byte values survive escape and unescape" {
	local i
	for i in $(seq 0 255); do printf "\\$(printf %03o "$i")"; done >"$T/all"
	[ "$(stat -c %s "$T/all")" -eq 256 ]
	recodec escape <"$T/all" >"$T/all.esc"
	# One line, no byte an awk or cut split would trip on.
	[ "$(wc -l <"$T/all.esc")" -eq 1 ]
	! LC_ALL=C grep -q '[[:cntrl:] ]' <(head -c -1 "$T/all.esc") || false
	# Every byte 0x00-0x20, % and 0x7F is escaped, nothing else.
	[ "$(LC_ALL=C grep -o '%[0-9A-F][0-9A-F]' "$T/all.esc" | tr -d '\n')" = \
		"$(for i in $(seq 0 32) 37 127; do printf '%%%02X' "$i"; done)" ]
	[ "$(stat -c %s "$T/all.esc")" -eq $((256 + 2 * 35 + 1)) ]
	{ printf 'msg x '; cat "$T/all.esc"; } | recodec unescape 2 >"$T/all.back"
	cmp "$T/all" "$T/all.back"
}

@test "every single byte value round-trips on its own" {
	local i b
	for i in $(seq 0 255); do
		printf "\\$(printf %03o "$i")" >"$T/b"
		b=$(recodec escape <"$T/b")
		printf 'v %s\n' "$b" | recodec unescape 1 >"$T/b.back"
		cmp "$T/b" "$T/b.back" || { echo "byte $i: escaped as $b" >&2; return 1; }
	done
}

@test "a 1 MiB binary payload travels byte for byte" {
	head -c 1048576 /dev/urandom >"$T/big"
	# Make sure the worst bytes are there, and a run of '-' too.
	printf '\0\n\r %%-\x7f' >>"$T/big"
	recodec escape <"$T/big" >"$T/big.esc"
	[ "$(wc -l <"$T/big.esc")" -eq 1 ]
	printf 'msg 7e57 1 0 jobs/# jobs/a ' >"$T/rec"
	cat "$T/big.esc" >>"$T/rec"
	recodec unescape 6 <"$T/rec" >"$T/big.back"
	cmp "$T/big" "$T/big.back"
	# awk and cut see the same 7 fields.
	[ "$(LC_ALL=C awk '{ print NF }' "$T/rec")" = 7 ]
	[ "$(cut -d' ' -f5 "$T/rec")" = "jobs/#" ]
}

@test "split: fields, runs of spaces, CR, blank and comment lines" {
	run recodec split <<-'EOF'
		group g1 jobs/#

		# a comment
		msg  id   1 0 jobs/+ jobs/a -
		   # an indented comment
		  lead trail  
		drop id no-bidder a%20b %2D
		v #not-a-comment
	EOF
	[ "$status" -eq 0 ]
	[ "${#lines[@]}" -eq 5 ]
	[ "${lines[0]}" = "3 [group] [g1] [jobs/#]" ]
	[ "${lines[1]}" = "7 [msg] [id] [1] [0] [jobs/+] [jobs/a] []" ]
	[ "${lines[2]}" = "2 [lead] [trail]" ]
	[ "${lines[3]}" = "5 [drop] [id] [no-bidder] [a b] [-]" ]
	[ "${lines[4]}" = "2 [v] [#not-a-comment]" ]
	run recodec split < <(printf 'ungroup g t\r\nv x%%0D\r\n')
	[ "${lines[0]}" = "3 [ungroup] [g] [t]" ]
	[ "$(printf 'v x%%0D\r\n' | recodec unescape 1 | od -An -tx1 | tr -d ' ')" = "780d" ]
}

@test "split: verbs no stage knows split like any other record" {
	run recodec split <<-'EOF'
		frobnicate a b%20c -
		x
		vip 10.0.0.1:1883 tcp
	EOF
	[ "${lines[0]}" = "4 [frobnicate] [a] [b c] []" ]
	[ "${lines[1]}" = "1 [x]" ]
	[ "${lines[2]}" = "3 [vip] [10.0.0.1:1883] [tcp]" ]
}

@test "split: 16 fields is the most a record may have" {
	run recodec split < <(echo "v $(seq -s ' ' 2 16)"; echo "v $(seq -s ' ' 2 17)")
	[ "${lines[0]}" = "16 [v] $(seq -f '[%g]' -s ' ' 2 16)" ]
	[ "${lines[1]}" = "error" ]
}

@test "props: name=value pairs, names and values unescaped" {
	run recodec props <<<'rt=replies/a%2Cb,ct=text%2Fplain,exp=30,u.k%3Dx=v%2Cw,u.empty='
	[ "$status" -eq 0 ]
	[ "${lines[0]}" = "rt=replies/a,b" ]
	[ "${lines[1]}" = "ct=text/plain" ]
	[ "${lines[2]}" = "exp=30" ]
	[ "${lines[3]}" = "u.k=x=v,w" ]
	[ "${lines[4]}" = "u.empty=" ]
	[ "${#lines[@]}" -eq 5 ]
}

@test "props: binary correlation data comes back byte for byte" {
	recodec props <<<'cd=%00%01%20%2C%3D%FF,rt=r' | od -An -tx1 | tr -s ' \n' ' ' >"$T/od"
	[ "$(cat "$T/od")" = " 63 64 3d 00 01 20 2c 3d ff 0a 72 74 3d 72 0a " ]
}

@test "props: malformed pairs are refused" {
	run recodec props <<<'rt'
	[ "${lines[0]}" = "error" ]
	run recodec props <<<'=v'
	[ "${lines[0]}" = "error" ]
	run recodec props <<<'rt=a%4'
	[ "${lines[0]}" = "error" ]
	run recodec props <<<'rt=a,,ct=b'
	[ "${lines[0]}" = "rt=a" ]
	[ "${lines[1]}" = "error" ]
	run recodec props <<<''
	[ -z "$output" ]
}

@test "props: parsed into MQTT 5 properties and written back the same" {
	local f
	for f in 'rt=replies/a%2Cb' 'cd=%00%01%20%2C%3D%25%7F' 'ct=application/json' \
		'exp=4294967295' 'u.k%3D%2C=v%2C%3D' 'u.a=1,u.a=2,u.b=-,u.c=%2D' \
		'rt=r,cd=x,ct=t,exp=0,u.n=v'; do
		[ "$(echo "$f" | recodec reprops)" = "$f" ] || { echo "$f" >&2; return 1; }
	done
	# Inside props, as in fields, an empty value is written '-'.
	[ "$(echo 'u.b=,rt=x' | recodec reprops)" = "u.b=-,rt=x" ]
	[ "$(echo 'u.b=-,u.c=%2D' | recodec props)" = "$(printf 'u.b=\nu.c=-')" ]
	# High bytes are written as they are, like in any field.
	[ "$(echo 'cd=%ff%FE' | recodec reprops)" = "$(printf 'cd=\xff\xfe')" ]
	# Absent properties are '-' both ways.
	[ "$(echo - | recodec reprops)" = "-" ]
}

@test "props: unknown names and bad values are refused" {
	[ "$(echo 'zz=1' | recodec reprops)" = "error: unknown property" ]
	[ "$(echo 'u.=1' | recodec reprops)" = "error: unknown property" ]
	[ "$(echo 'exp=soon' | recodec reprops)" = "error: bad property value" ]
	[ "$(echo 'exp=4294967296' | recodec reprops)" = "error: bad property value" ]
	# MQTT strings cannot hold NUL; only correlation data is binary.
	[ "$(echo 'rt=a%00b' | recodec reprops)" = "error: bad property value" ]
	[ "$(echo 'rt' | recodec reprops)" = "error: malformed properties" ]
}
