# SPDX-License-Identifier: MIT
# common.bash: fixtures for mqlb's bats tests: a private mosquitto on a free
# 127.0.0.1 port, background processes that are always cleaned up, polling.

# Every test gets a scratch directory and a process list cleaned in teardown.
mqlb_setup() {
	T=${BATS_TEST_TMPDIR:?}
	: >"$T/pids"
	PREFIX=lb
	# mqlb-sub spools by default under $STATE_DIRECTORY or
	# $XDG_STATE_HOME/mqlb: the test's own, never the real home's.
	export XDG_STATE_HOME="$T/state"
	unset STATE_DIRECTORY
}

mqlb_teardown() {
	local pids
	[ -n "${BATS_TEST_COMPLETED:-}" ] || show_outputs
	if [ -s "$T/pids" ]; then
		mapfile -t pids <"$T/pids"
		stop_pids "${pids[@]}"
	fi
	broker_stop_all
}

# show_outputs: the last lines of what the background processes wrote
# (bg's $T/NAME.out and .err, and a test's own $T/out or $T/err), for the
# log of a test that failed: a flaky failure in CI then says what the
# processes saw, not only which check.
show_outputs() {
	local f
	for f in "$T"/*out "$T"/*err; do
		[ -f "$f" ] && [ -s "$f" ] || continue
		echo "# --- ${f#"$T"/} (last 15 lines)"
		tail -n 15 "$f" | cut -c1-300 | LC_ALL=C tr -c '[:print:]\t\n' '?' | sed 's/^/#   /'
	done
}

# stop_pids PID...: SIGTERM, 0.2 s to end, then SIGKILL; but not while one
# is still busy ending (up to 10 s more for that). Under the sanitizers,
# ending includes the leak check at exit (the process stopped under a
# tracer, its child, then writing the report): killed in the middle, it
# leaves a stray report ("Unable to get registers from thread N", or an
# empty file) or none. What lingers idle (draining) is killed.
stop_pids() {
	local i
	[ $# -gt 0 ] || return 0
	kill -TERM "$@" 2>/dev/null || true
	for i in $(seq 1 204); do
		all_exited "$@" && return 0
		[ "$i" -gt 4 ] && ! any_ending "$@" && break
		sleep 0.05
	done
	kill -KILL "$@" 2>/dev/null || true
}
all_exited() {
	local p
	for p in "$@"; do exited "$p" || return 1; done
}
# ending PID: running, in disk sleep or stopped under a tracer (not idle).
ending() {
	local st
	{ read -r st <"/proc/$1/stat"; } 2>/dev/null || return 1
	st=${st##*) }
	case ${st%% *} in R | D | t) return 0 ;; esac
	return 1
}
any_ending() {
	local p
	for p in "$@"; do ending "$p" && return 0; done
	return 1
}
# traced PID: stopped under a tracer (LeakSanitizer's, in our tests).
traced() { grep -q '^TracerPid:[[:space:]]*[1-9]' "/proc/$1/status" 2>/dev/null; }

# bg NAME CMD...: run CMD in the background, stdout to $T/NAME.out, stderr
# to $T/NAME.err; its pid goes to $T/NAME.pid.
bg() {
	local name=$1
	shift
	"$@" >"$T/$name.out" 2>"$T/$name.err" &
	echo $! >"$T/$name.pid"
	echo $! >>"$T/pids"
}

pidof_bg() { cat "$T/$1.pid"; }

# wait_for SECONDS CMD...: poll CMD every 50 ms until it succeeds.
wait_for() {
	local limit=$1 i=0
	shift
	while ! "$@"; do
		i=$((i + 1))
		if [ "$i" -ge $((limit * 20)) ]; then
			echo "timed out after ${limit}s waiting for: $*" >&2
			return 1
		fi
		sleep 0.05
	done
}

# lines_in FILE N [PATTERN]: FILE has at least N lines (matching PATTERN).
lines_in() {
	local n
	n=$(grep -c -- "${3:-}" "$1" 2>/dev/null || true)
	[ "${n:-0}" -ge "$2" ]
}

# cases PROG CASE...: the check program PROG (t/sbcheck, t/collectcheck)
# runs its CASEs, says "ok CASE" for each, and exits 0.
cases() {
	local prog=$1
	shift
	run "$prog" "$@"
	echo "$output"
	[ "$status" -eq 0 ] || return 1
	[ "$output" = "$(printf 'ok %s\n' "$@")" ]
}

# exited PID: the process has ended (a zombie of this shell counts).
exited() { ! kill -0 "$1" 2>/dev/null || [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ]; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

# broker_start [NAME] [EXTRA-CONFIG-LINE...]: start mosquitto on a free
# port; sets BROKER_PORT (and BROKER_PORT_<NAME>).
broker_start() {
	local name=${1:-b} try port conf dir
	shift || true
	dir="$T/broker-$name"
	if [ -f "$dir/pid" ]; then
		echo "broker_start: broker $name is running already" >&2
		return 1
	fi
	mkdir -p "$dir"
	for try in $(seq 1 30); do
		port=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
		port_open "$port" && continue
		conf="$dir/mosquitto.conf"
		{
			echo "listener $port 127.0.0.1"
			# Started by root, mosquitto would drop to its own user, which
			# cannot reach $T (mode 0700): no log, no persistence file.
			echo "user $(id -un)"
			echo "allow_anonymous true"
			echo "persistence false"
			echo "log_dest file $dir/log"
			echo "log_type error"
			echo "log_type warning"
			echo "max_queued_messages 100000"
			for l in "$@"; do echo "$l"; done
		} >"$conf"
		echo "$port" >"$dir/port"
		if broker_run "$name"; then
			BROKER_PORT=$port
			eval "BROKER_PORT_$name=$port"
			return 0
		fi
		# Not up in time (or lost the port): never leave it behind.
		broker_stop "$name"
	done
	echo "could not start mosquitto" >&2
	return 1
}

# broker_run NAME: (re)start the broker NAME with its existing config.
broker_run() {
	local dir="$T/broker-$1" port
	port=$(cat "$dir/port")
	mosquitto -c "$dir/mosquitto.conf" >>"$dir/stdout" 2>&1 &
	echo $! >"$dir/pid"
	wait_for 5 port_open "$port" 2>/dev/null && kill -0 "$(cat "$dir/pid")" 2>/dev/null
}

broker_stop() {
	local dir="$T/broker-${1:-b}" pid
	[ -f "$dir/pid" ] || return 0
	pid=$(cat "$dir/pid")
	kill -TERM "$pid" 2>/dev/null || true
	wait_for 5 exited "$pid" 2>/dev/null || kill -KILL "$pid" 2>/dev/null || true
	rm -f "$dir/pid"
}

broker_restart() {
	broker_stop "${1:-b}"
	broker_run "${1:-b}"
}

broker_stop_all() {
	local d
	for d in "$T"/broker-*; do
		[ -d "$d" ] && broker_stop "${d##*/broker-}"
	done
	return 0
}

# restart_resync GROUP WID UUID: restart the broker; then worker WID (of
# GROUP, started with a long keepalive, -k 30) credits again 5.5 s after
# its reconnect, and names its ok done of UUID again on P/done/GROUP/WID
# before that credit. Uses the test file's spy (every message in
# $T/spy.out as "topic|payload"), which comes up after the worker may have
# sent its first credit; a spy of its own stamps the credits.
restart_resync() {
	local t0
	broker_restart
	t0=$(date +%s.%N)
	spy
	bg ts mosquitto_sub -p "$BROKER_PORT" -h 127.0.0.1 -t "$PREFIX/credit/$1/$2" -F %U
	wait_for 20 eval "awk -v t=$t0 '\$1 >= t + 5 { f = 1 } END { exit !f }' '$T/ts.out'"
	awk -v d="$PREFIX/done/$1/$2|$3 ok" -v c="$PREFIX/credit/" \
		'$0 == d && !seen { r = 1 } index($0, c) == 1 { seen = 1 } END { exit !r }' "$T/spy.out"
}

# pub TOPIC PAYLOAD [mosquitto_pub options]: publish one message.
pub() {
	local topic=$1 payload=$2
	shift 2
	mosquitto_pub -p "$BROKER_PORT" -h 127.0.0.1 -t "$topic" -m "$payload" "$@"
}

# announce GROUP TOPIC: what a worker says to the balancer.
announce() { pub "$PREFIX/sub/$1" "$2" -q 1; }

# ready_fifo NAME: make a fifo for --ready-fd; wait_ready NAME blocks (10 s
# at most) until the command wrote its readiness line.
ready_fifo() { mkfifo "$T/$1.ready"; }
wait_ready() { timeout 10 head -n1 "$T/$1.ready" >/dev/null; }

# --- a stage fed by the test ------------------------------------------------
# Uuids for hand-written records.
U1=11111111-2222-4333-8444-555555555551
U2=11111111-2222-4333-8444-555555555552
U3=11111111-2222-4333-8444-555555555553

# fed NAME CMD...: run CMD reading records the test writes with feed (fd 5),
# output in $T/NAME.out and .err, pid in $T/NAME.pid; fd 3 on the fifo of
# `ready_fifo NAME` if there is one. Closing fd 5 (`exec 5>&-`) is its end
# of input. Not bg: a background job's stdin would be /dev/null.
fed() {
	local name=$1 ready=/dev/null
	shift
	[ -p "$T/$name.ready" ] && ready=$T/$name.ready
	mkfifo "$T/$name.in"
	# Read-write: opening does not wait for the reader.
	exec 5<>"$T/$name.in"
	"$@" <"$T/$name.in" >"$T/$name.out" 2>"$T/$name.err" 3>"$ready" 5>&- &
	echo $! | tee "$T/$name.pid" >>"$T/pids"
}
feed() { printf '%s\n' "$@" >&5; }

# stat_in SOCKET NAME: one figure from a command's stats socket.
stat_in() {
	perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
		print $s "stats\n";
		while (<$s>) { last if /^ok/; print }' "$1" | awk -v n="$2" '$2 == n { print $3 }'
}

# --- the balancer pipeline ---------------------------------------------------
# ready3 FIFO CMD...: run CMD with fd 3 on FIFO (opened in the background,
# where blocking until wait_ready reads it is harmless).
ready3() {
	local f=$1
	shift
	exec "$@" 3>"$f"
}

# pipeline [AUCTION-OPTIONS...]: mqlb-sub $SUBOPTS | mqlb-auction
# $AUCTIONOPTS OPTIONS | mqlb-dispatch $DISPATCHOPTS joined by fifos (so
# each has its own pid, $T/sub.pid...), records appended to $T/records;
# $PL suffixes every file name (two pipelines at once). Can be run again
# after the stages ended. Data fifos are opened before the readiness ones:
# else each stage would wait for the other.
pipeline() {
	local m="-h 127.0.0.1 -p $BROKER_PORT" n=${PL:-}
	rm -f "$T/msgs$n" "$T/awards$n" "$T/sub$n.ready" "$T/auction$n.ready"
	mkfifo "$T/msgs$n" "$T/awards$n"
	ready_fifo "sub$n"
	ready_fifo "auction$n"
	# shellcheck disable=SC2086
	mqlb-sub $m ${SUBOPTS:-} --ready-fd 3 >"$T/msgs$n" \
		3>"$T/sub$n.ready" 2>>"$T/sub$n.err" &
	echo $! | tee "$T/sub$n.pid" >>"$T/pids"
	# shellcheck disable=SC2086
	mqlb-auction $m --ready-fd 3 ${AUCTIONOPTS:-} "$@" <"$T/msgs$n" \
		>"$T/awards$n" 3>"$T/auction$n.ready" 2>>"$T/auction$n.err" &
	echo $! | tee "$T/auction$n.pid" >>"$T/pids"
	# shellcheck disable=SC2086
	mqlb-dispatch $m ${DISPATCHOPTS:-} <"$T/awards$n" >>"$T/records$n" 2>>"$T/dispatch$n.err" &
	echo $! | tee "$T/dispatch$n.pid" >>"$T/pids"
	wait_ready "sub$n"
	wait_ready "auction$n"
	# a spy on the subacks to group g: see wait_balanced
	bg "suback$n" mosquitto_sub -h 127.0.0.1 -p "$BROKER_PORT" -t "$PREFIX/suback/g" -C 1
}

# wait_balanced: mqlb-sub has subscribed the group's topic (a worker is
# ready once its own subscriptions are, which can be earlier: a message
# published then would reach no one).
wait_balanced() { wait_for 15 exited "$(cat "$T/suback${PL:-}.pid")"; }

pipeline_stop() {
	local s n=${PL:-}
	kill -TERM "$(cat "$T/sub$n.pid")" "$(cat "$T/auction$n.pid")" "$(cat "$T/dispatch$n.pid")"
	for s in sub auction dispatch; do wait_for 30 exited "$(cat "$T/$s$n.pid")"; done
}

# --- jobs counted on the worker side ----------------------------------------
# A job: log its start and end with the worker id and the payload.
JOB='p=$(cat); echo "start $MQLB_WID $p" >>"$LOG"; sleep "$SVC"; echo "end $MQLB_WID $p" >>"$LOG"'

# worker NAME SECONDS [OPTIONS] [-- COMMAND]: a one-slot worker of group g
# on jobs/#, running JOB (logging to $T/log) unless a command is given.
worker() {
	local name=$1 svc=$2
	shift 2
	local cmd=(sh -c "$JOB")
	local opts=()
	while [ $# -gt 0 ] && [ "$1" != -- ]; do opts+=("$1"); shift; done
	[ "${1:-}" = -- ] && { shift; cmd=("$@"); }
	rm -f "$T/$name.ready"
	ready_fifo "$name"
	LOG="$T/log" SVC=$svc bg "$name" ready3 "$T/$name.ready" mqlb-worker -h 127.0.0.1 \
		-p "$BROKER_PORT" -V 5 -g g -t 'jobs/#' --wid "$name" --fallback none -k 5 \
		--ready-fd 3 "${opts[@]}" -- "${cmd[@]}"
	wait_ready "$name"
}

# publish N [FIRST]: payloads job-FIRST.. job-(FIRST+N-1) on jobs/a, QoS 1.
publish() {
	local n=$1 first=${2:-1}
	seq "$first" $((first + n - 1)) | sed 's/^/job-/' |
		mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -q 1 -t jobs/a -l
}

# publish_paced N PER-SECOND [FIRST]: job-FIRST.. job-(FIRST+N-1) on jobs/a,
# QoS 1, a steady load; $PAD, if set, is appended to each payload.
publish_paced() {
	local n=$1 rate=$2 first=${3:-1}
	perl -e '$| = 1; for ($ARGV[2] .. $ARGV[2] + $ARGV[0] - 1) { print "job-$_$ENV{PAD}\n";
		select(undef, undef, undef, 1 / $ARGV[1]) }' "$n" "$rate" "$first" |
		mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -q 1 -t jobs/a -l
}

ended() { grep -c '^end ' "$T/log" 2>/dev/null || echo 0; }

# account N: published, processed (distinct jobs run to their end),
# duplicated (runs beyond the first), dropped and lost, one per line.
account() {
	awk -v n="$1" '
		FILENAME ~ /log$/ && $1 == "end" { runs[$3]++ }
		FILENAME ~ /records[^\/]*$/ && $1 == "drop" { drop[$6]++ }
		END {
			for (i = 1; i <= n; i++) {
				j = "job-" i
				if (j in runs) { done++; dup += runs[j] - 1 }
				else if (j in drop) dropped++
				else { lost++; if (lost <= 10) missing = missing " " j }
			}
			printf "published %d\nprocessed %d\nduplicated %d\ndropped %d\nlost %d\n", n, done, dup, dropped, lost
			if (missing != "") print "missing" missing
		}' "$T/log" "$T"/records* 2>/dev/null
}

# settled N: every one of N jobs ran to its end or was dropped.
settled() { [ "$(account "$1" | awk '$1 == "lost" { print $2 }')" = 0 ]; }

# pipeline_restart [AUCTION-OPTIONS...]: what a supervisor does when a
# stage died: stop the others (SIGTERM), wait for all three, start again.
pipeline_restart() {
	local s n=${PL:-}
	for s in sub auction dispatch; do kill -TERM "$(cat "$T/$s$n.pid")" 2>/dev/null || true; done
	for s in sub auction dispatch; do wait_for 60 exited "$(cat "$T/$s$n.pid")"; done
	pipeline "$@"
}
