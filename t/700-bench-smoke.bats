#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 700-bench-smoke: mqlb-bench still runs: the 10-second smoke mode drives
# the real pipeline and $share and prints its table, CSV and plot. No
# figure is asserted: timing belongs to the benchmark, not to tests.
load helpers/common.bash
setup() { mqlb_setup; }
teardown() { mqlb_teardown; }

# The pipeline through a directory of this test's own, so the check for
# leftovers cannot see other tests' processes.
bench() {
	mkdir -p "$T/bin"
	for c in mqlb-sub mqlb-auction mqlb-dispatch; do ln -sf "$MQLB_BUILDDIR/$c" "$T/bin/$c"; done
	"$MQLB_BUILDDIR/mqlb-bench" --bindir "$T/bin" "$@"
}

# The published and done columns of a table row.
row_counts() { awk -v m="$1" '$1 == m { print $5, $6 }' "$T/table"; }

# Each side of $T/table published and finished jobs.
both_sides_ran() {
	local m published done
	for m in mqlb share; do
		read -r published done < <(row_counts "$m")
		echo "$m: published=$published done=$done"
		[ "$published" -gt 0 ] && [ "$done" -gt 0 ] || return 1
	done
}

@test "bad arguments are usage errors" {
	run bench --scenario 9
	[ "$status" -eq 2 ]
	[[ "$output" == *'--scenario: bad number "9"'* ]]
	[[ "$output" == *'usage: mqlb-bench'* ]]
	run bench --service 0 --load 0.5
	[ "$status" -eq 2 ]
	[[ "$output" == *'--load needs service times above 0'* ]]
	run bench --drain -1
	[ "$status" -eq 2 ]
	[[ "$output" == *'--drain: bad duration "-1"'* ]]
	run bench --help
	[ "$status" -eq 0 ]
	[[ "$output" == 'usage: mqlb-bench'* ]]
}

@test "smoke mode runs both sides and prints the table (and a plot)" {
	plot=()
	command -v gnuplot >/dev/null && plot=(--plot "$T/cdf.png")
	bench --smoke "${plot[@]}" >"$T/table" 2>"$T/err"
	grep -q '^mode  *jobs/s' "$T/table"
	both_sides_ran
	if [ "${#plot[@]}" -gt 0 ]; then
		[ "$(head -c 4 "$T/cdf.png" | tail -c 3)" = PNG ]
	fi
	# No child is left behind.
	! pgrep -f "$T/bin/mqlb-" >/dev/null || false
}

@test "--csv prints a header and one row per mode" {
	bench --smoke --share --csv >"$T/csv" 2>"$T/err"
	head -n1 "$T/csv" | grep -q '^label,mode,ok,workers,slots,'
	[ "$(wc -l <"$T/csv")" -eq 2 ]
	grep -q '^,share,1,4,1,' "$T/csv"
}

@test "--parallel runs both sides at once, each on its own broker" {
	bench --smoke --parallel -v >"$T/table" 2>"$T/err" &
	pid=$!
	# Both sides' brokers run at the same time, one of them under the
	# forked child: count the mosquittos among the bench's descendants.
	most=0
	while kill -0 "$pid" 2>/dev/null; do
		n=0 todo=("$pid")
		while [ "${#todo[@]}" -gt 0 ]; do
			p=${todo[0]} todo=("${todo[@]:1}")
			[[ "$(cat /proc/$p/comm 2>/dev/null)" == mosquitto ]] && n=$((n + 1))
			todo+=($(pgrep -P "$p" || true))
		done
		[ "$n" -gt "$most" ] && most=$n
		sleep 0.1
	done
	wait "$pid"
	echo "brokers at once: $most"
	[ "$most" -eq 2 ]
	grep -q 'both sides at once' "$T/table"
	[ "$(grep -c 'broker on 127.0.0.1' "$T/err")" -eq 2 ]
	both_sides_ran
	! pgrep -f "$T/bin/mqlb-" >/dev/null || false
	# --serial after --scenario undoes the scenario's --parallel.
	bench --scenario 1 --smoke --serial >"$T/table" 2>"$T/err"
	! grep -q 'both sides at once' "$T/table" || false
	read -r published done < <(row_counts share)
	[ "$done" -gt 0 ]
}

@test "--parallel: a side that cannot run fails the run with its reason" {
	run bench --smoke --parallel --broker /nonexistent/mosquitto
	echo "$output"
	[ "$status" -ne 0 ]
	[[ "$output" == *'cannot start /nonexistent/mosquitto'* ]]
	! pgrep -f "$T/bin/mqlb-" >/dev/null || false
}
