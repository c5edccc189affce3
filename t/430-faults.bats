#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 430-faults: no accepted message is lost. The auction's own loss windows
# (SIGTERM with input left, late dones, tokens, expiry), then the whole
# pipeline on a real mosquitto with faults injected: every test counts
# published, processed (worker side), duplicated and dropped, and asserts
# lost = 0.
load helpers/common.bash
load helpers/spy.bash
setup() { mqlb_setup; }
teardown() {
	exec 5>&- 2>/dev/null || true
	# jobs still running under our workers (a hung one) go with them;
	# not the child of one in its leak check at exit: that is the checker
	local pid c
	while read -r pid; do
		traced "$pid" && continue
		for c in $(cat /proc/"$pid"/task/*/children 2>/dev/null); do
			kill -KILL "$c" 2>/dev/null || true
		done
	done <"$T/pids"
	mqlb_teardown
}

# --- the auction alone, the test playing mqlb-sub and the workers ----------

# auction [OPTIONS]: mqlb-auction reading records written with feed.
auction() {
	ready_fifo a
	fed a mqlb-auction -h 127.0.0.1 -p "$BROKER_PORT" --ready-fd 3 --listen "$T/a.sock" "$@"
	wait_ready a
}
out_has() { grep -qxF -- "$1" "$T/a.out"; }
stat_of() { stat_in "$T/a.sock" "$1"; }
bid() { pub "$PREFIX/rsp/$1/$2/$3/$4" "${5:-}" -V 5; }
uuid() { printf '11111111-2222-4333-8444-%012d' "$1"; }

@test "auction SIGTERM with input held back (--max-pending) and left in the pipe: every msg becomes drop shutdown" {
	broker_start
	auction --max-pending 2 --drain-timeout 1
	feed "group g jobs/#"
	for i in $(seq 1 20); do feed "msg $(uuid "$i") 1 0 jobs/# jobs/a p$i"; done
	wait_for 5 eval '[ "$(stat_of pending)" = 2 ]'
	kill -TERM "$(cat "$T/a.pid")"
	wait_for 10 exited "$(cat "$T/a.pid")"
	wait "$(cat "$T/a.pid")"
	[ "$(grep -c '^drop .* shutdown g jobs/a p' "$T/a.out")" -eq 20 ]
	for i in $(seq 1 20); do grep -q "^drop $(uuid "$i") shutdown g jobs/a p$i\$" "$T/a.out"; done
}

@test "auction SIGTERM: goes on reading and awarding until EOF, then exits 0" {
	broker_start
	auction --max-pending 1 --drain-timeout 20
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p1" "msg $U2 1 0 jobs/# jobs/b p2"
	wait_for 5 eval '[ "$(stat_of pending)" = 1 ]'
	kill -TERM "$(cat "$T/a.pid")"
	# (several bids: one may arrive before the message it is for)
	for i in 1 2 3; do bid g w1 "$U1" jobs/a; done
	wait_for 5 out_has "assign $U1 g w1 1 jobs/a p1"
	pub "$PREFIX/done/g/w1/$U1" "ok free=1" -q 1 -V 5
	# U2 was held back at SIGTERM: it is read and awarded to the free slot
	wait_for 5 out_has "assign $U2 g w1 1 jobs/b p2"
	pub "$PREFIX/done/g/w1/$U2" "ok" -q 1 -V 5
	wait_for 5 out_has "done $U2 g w1 ok"
	kill -0 "$(cat "$T/a.pid")"
	exec 5>&-
	wait_for 5 exited "$(cat "$T/a.pid")"
	wait "$(cat "$T/a.pid")"
	! grep -q '^drop' "$T/a.out" || false
}

@test "a late done from an earlier holder: ok completes the job, not counted as forged" {
	broker_start
	auction --retry 0.1
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p"
	# a bid for a message it has not read yet would be another balancer's
	wait_for 5 eval '[ "$(stat_of asked)" -ge 1 ]'
	bid g w1 "$U1" jobs/a
	wait_for 5 out_has "assign $U1 g w1 1 jobs/a p"
	pub "$PREFIX/gone/g/w1" "" -q 1
	wait_for 5 eval '[ "$(stat_of gone)" = 1 ]'
	bid g w2 "$U1" jobs/a
	wait_for 5 out_has "assign $U1 g w2 1 jobs/a p"
	# w1 was only cut off: it finished the job after all
	pub "$PREFIX/done/g/w1/$U1" "ok" -q 1 -V 5
	wait_for 5 out_has "done $U1 g w1 ok"
	pub "$PREFIX/done/g/w2/$U1" "ok" -q 1 -V 5
	# No figure counts that done; a bid for a uuid it never had, published
	# after it, does (foreign): once it is counted, the done was read too.
	bid g w2 "$U3" jobs/a
	wait_for 5 eval '[ "$(stat_of foreign)" = 1 ]'
	[ "$(grep -c "^done $U1 " "$T/a.out")" -eq 1 ]
	[ "$(stat_of forged)" = 0 ]
	[ "$(stat_of done_late)" = 1 ]
	[ "$(stat_of pending)" = 0 ]
	# a worker that never held it is still a forger
	feed "msg $U2 1 0 jobs/# jobs/b q"
	wait_for 5 eval '[ "$(stat_of pending)" = 1 ]'
	bid g w3 "$U2" jobs/b
	wait_for 5 out_has "assign $U2 g w3 1 jobs/b q"
	pub "$PREFIX/done/g/w9/$U2" "ok" -q 1 -V 5
	wait_for 5 grep -q "w9, which was not awarded it" "$T/a.err"
	[ "$(stat_of forged)" = 1 ]
}

@test "expired tokens are purged without being taken" {
	broker_start
	auction --token-ttl 0.3
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p"
	wait_for 5 eval '[ "$(stat_of asked)" -ge 1 ]'
	# the first bid wins; the three after it are tokens
	for w in w1 w2 w3 w4; do bid g "$w" "$U1" jobs/a; done
	wait_for 5 grep -q "^assign $U1 g w1 " "$T/a.out"
	wait_for 5 eval '[ "$(stat_of tokens_kept)" = 3 ]'
	wait_for 5 eval '[ "$(stat_of tokens_expired)" = 3 ]'
	[ "$(stat_of tokens)" = 0 ]
	[ "$(stat_of tokens_used)" = 0 ]
}

@test "MQTT 5 message expiry: an expired message is dropped as expired; the award carries what is left" {
	broker_start
	auction --retry 0.2 --deadline 30
	feed "group g jobs/#" "msg $U1 1 0 jobs/# jobs/a p exp=1,u.k=v"
	wait_for 5 out_has "drop $U1 expired g jobs/a p exp=1,u.k=v"
	[ "$(stat_of drop_expired)" = 1 ]
	feed "msg $U2 1 0 jobs/# jobs/b q u.k=v,exp=100"
	sleep 1.2
	bid g w1 "$U2" jobs/b
	wait_for 5 grep -q "^assign $U2 g w1 1 jobs/b q u.k=v,exp=9[89]\$" "$T/a.out"
}

@test "dispatch SIGTERM: publishes its input to the end; at --drain-timeout unpublished awards become drop shutdown" {
	broker_start
	mkfifo "$T/din"
	exec 5<>"$T/din"
	mqlb-dispatch -h 127.0.0.1 -p "$BROKER_PORT" -V 5 --drain-timeout 30 <"$T/din" \
		>"$T/d.out" 2>"$T/d.err" 5>&- &
	echo $! | tee "$T/d.pid" >>"$T/pids"
	feed "assign $U1 g w1 1 jobs/a p1"
	wait_for 5 grep -q "^sent $U1 g w1\$" "$T/d.out"
	kill -TERM "$(cat "$T/d.pid")"
	# still reading: what comes after the signal is published too
	feed "assign $U2 g w1 1 jobs/b p2"
	wait_for 5 grep -q "^sent $U2 g w1\$" "$T/d.out"
	kill -0 "$(cat "$T/d.pid")"
	exec 5>&-
	wait_for 5 exited "$(cat "$T/d.pid")"
	wait "$(cat "$T/d.pid")"

	# broker away: awards are held unread, then handed back at the timeout
	exec 5<>"$T/din"
	mqlb-dispatch -h 127.0.0.1 -p "$BROKER_PORT" -V 5 --drain-timeout 1 <"$T/din" \
		>"$T/d2.out" 2>"$T/d2.err" 5>&- --listen "$T/d2.sock" &
	echo $! | tee "$T/d2.pid" >>"$T/pids"
	feed "assign $U1 g w1 1 jobs/a p1"
	wait_for 5 grep -q "^sent $U1 g w1\$" "$T/d2.out"
	broker_stop
	# it knows: the next awards are not written into a dead socket
	wait_for 10 eval '[ "$(stat_in "$T/d2.sock" connected)" = 0 ]'
	for i in 1 2 3 4 5; do feed "assign $(uuid "$i") g w1 1 jobs/c q$i"; done
	sleep 0.5
	kill -TERM "$(cat "$T/d2.pid")"
	wait_for 10 exited "$(cat "$T/d2.pid")"
	wait "$(cat "$T/d2.pid")"
	for i in 1 2 3 4 5; do grep -q "^drop $(uuid "$i") shutdown g jobs/c q$i\$" "$T/d2.out"; done
}

# --- the whole pipeline under faults ------------------------------------------

# The pipeline (t/helpers/common.bash) with a persistent intake and acks.
SUBOPTS="-c -i mqlb-sub-fixed"
AUCTIONOPTS="--ack-timeout 5"
DISPATCHOPTS="-q 1"

# JOB, worker, publish, ended, account, settled: t/helpers/common.bash.
dropped() { grep -c '^drop ' "$T/records" 2>/dev/null || echo 0; }

# busy_worker: the name of a worker that is in the middle of a job.
busy_worker() {
	touch "$T/dead"
	awk '$1 == "start" { busy[$2] = 1 } $1 == "end" { delete busy[$2] }
	     END { for (w in busy) print w }' "$T/log" | grep -vxF -f "$T/dead" | head -n1
}

# mid_job NAME: the worker has started a job it has not ended.
mid_job() { [ "$(grep -c "^start $1 " "$T/log")" -gt "$(grep -c "^end $1 " "$T/log")" ]; }

# stop_mid_job: SIGSTOP a busy worker and its job; if that job ended before
# it was stopped, let both go on and fail. The stopped one's name in
# $T/victim.
stop_mid_job() {
	local w pid c
	w=$(busy_worker)
	[ -n "$w" ] || return 1
	pid=$(cat "$T/$w.pid")
	kill -STOP "$pid"
	for c in $(cat /proc/"$pid"/task/*/children); do kill -STOP "$c"; done
	if ! mid_job "$w"; then
		for c in $(cat /proc/"$pid"/task/*/children); do kill -CONT "$c"; done
		kill -CONT "$pid"
		return 1
	fi
	echo "$w" >"$T/victim"
}

@test "kill -9 a worker in the middle of a job, again and again: its will re-awards, nothing lost" {
	broker_start
	touch "$T/log" "$T/records"
	pipeline -v
	for w in w1 w2 w3; do worker "$w" 0.3; done
	wait_balanced
	# enough work that some is left for the last round, however slowly
	# the test gets there
	publish 100
	n=4
	for round in 1 2 3 4 5; do
		wait_for 30 stop_mid_job
		victim=$(cat "$T/victim")
		pid=$(cat "$T/$victim.pid")
		# the worker and its job die together, as in a crash of the host
		for c in $(cat /proc/"$pid"/task/*/children); do kill -KILL "$c"; done
		kill -KILL "$pid"
		wait_for 5 exited "$(cat "$T/$victim.pid")"
		echo "$victim" >>"$T/dead"
		worker "w$n" 0.3
		n=$((n + 1))
	done
	wait_for 60 settled 100
	account 100
	account 100 | grep -qx 'lost 0'
	account 100 | grep -qx 'dropped 0'
	# Victims died in the middle of a job
	for w in $(cat "$T/dead"); do mid_job "$w" || { echo "$w was not in a job"; false; }; done
	[ "$(account 100 | awk '$1 == "duplicated" { print $2 }')" -le 5 ]
	[ "$(grep -c "is gone: job .* awarded again" "$T/auction.err")" -ge 5 ]
}

@test "broker restart with persistence under load: nothing lost" {
	broker_start b "persistence true" "persistence_location $T/broker-b/" \
		"autosave_interval 1"
	touch "$T/log" "$T/records"
	pipeline
	for w in w1 w2 w3; do worker "$w" 0.05; done
	wait_balanced
	publish 150
	wait_for 20 eval '[ "$(ended)" -ge 20 ]'
	# 100+ waiting at the broker for mqlb-sub's session, some in the pipeline
	broker_restart
	publish 50 151
	wait_for 60 settled 200
	account 200
	account 200 | grep -qx 'lost 0'
	for s in sub auction dispatch; do kill -0 "$(cat "$T/$s.pid")"; done
}

@test "broker restarted (SIGTERM, persistence) before mqlb-sub's PUBACK of a job reached it: the job it sends again runs once" {
	broker_start b "persistence true" "persistence_location $T/broker-b/"
	touch "$T/log" "$T/records"
	SUBOPTS="$SUBOPTS -v" pipeline
	worker w1 0
	wait_balanced
	publish 1
	wait_for 10 eval 'grep -q "^end w1 job-1$" "$T/log"'
	# mqlb-sub stopped: the broker sends it job-2, which waits unread in its
	# socket, and goes down with no PUBACK for it (kept, with the session)
	sub=$(cat "$T/sub.pid")
	kill -STOP "$sub"
	publish 1 2
	wait_for 10 eval "ss -tnpH state established |
		awk -v p='pid=$sub,' 'index(\$0, p) && \$1 > 0 { f = 1 } END { exit !f }'"
	broker_stop
	broker_run b
	# mqlb-sub reads job-2 from the old connection, then the broker sends it
	# again on the new one
	kill -CONT "$sub"
	wait_for 20 eval 'grep -q "^end w1 job-2$" "$T/log"'
	publish 1 3
	wait_for 15 eval 'grep -q "^end w1 job-3$" "$T/log"'
	grep 'sent again after the reconnect had been taken before' "$T/sub.err"
	account 3
	account 3 | grep -qx 'duplicated 0'
	account 3 | grep -qx 'lost 0'
}

# proxy_start: a TCP proxy to the broker on $PROXY_PORT (picked the first
# time), for a stage to connect through; proxy_cut: it stops and so do the
# connections through it, as when that stage loses the broker.
proxy_start() {
	local try
	for try in $(seq 1 30); do
		[ -n "${PROXY_PORT:-}" ] && break
		PROXY_PORT=$((20000 + (RANDOM * 32768 + RANDOM) % 40000))
		port_open "$PROXY_PORT" && PROXY_PORT=
	done
	bg proxy socat "TCP-LISTEN:$PROXY_PORT,bind=127.0.0.1,reuseaddr,fork" \
		"TCP:127.0.0.1:$BROKER_PORT"
	wait_for 5 port_open "$PROXY_PORT"
}
proxy_cut() {
	local pid
	pid=$(cat "$T/proxy.pid")
	pkill -KILL -P "$pid" socat || true
	kill -KILL "$pid"
	wait_for 5 exited "$pid"
}

@test "broker kill -9 mid-job, the auction back only after the worker's done: the done comes again, the job runs once" {
	broker_start
	touch "$T/log" "$T/records"
	proxy_start
	AUCTIONOPTS="--ack-timeout 30 -p $PROXY_PORT" pipeline
	worker w1 3 --listen "$T/w1.sock"
	wait_balanced
	publish 1
	wait_for 10 eval 'grep -q "^start w1 job-1" "$T/log"'
	# the broker restarts, empty; the worker, connected again, ends its
	# job while the auction cannot reach the broker: its done reaches
	# nobody
	proxy_cut
	kill -KILL "$(cat "$T/broker-b/pid")"
	wait_for 5 exited "$(cat "$T/broker-b/pid")"
	broker_run b
	spy
	wait_for 15 eval 'grep -q "^$PREFIX/done/g/w1/.*|ok$" "$T/spy.out"'
	proxy_start
	# the worker names the done again once it is back, before its credit
	wait_for 30 eval 'grep -q "^done .* g w1 ok" "$T/records"'
	[ "$(grep -c '^start ' "$T/log")" = 1 ]
	[ "$(stat_in "$T/w1.sock" replayed)" -ge 1 ]
}

@test "the auction away from the broker for longer than --ack-timeout: that time does not count, the running job stays" {
	broker_start
	touch "$T/log" "$T/records"
	proxy_start
	AUCTIONOPTS="--ack-timeout 3 -p $PROXY_PORT --listen $T/a.sock" pipeline
	# announced until the spy sees the suback (it may subscribe late)
	wait_for 15 eval 'announce g "jobs/#"; sleep 0.2; exited "$(cat "$T/suback.pid")"'
	# the test is worker w1: one slot, then a credit naming its job every
	# second, so that the gaps on either side of the cut stay short
	pub "$PREFIX/credit/g/w1" 1 -q 1
	wait_for 5 eval '[ "$(stat_of credit)" = 1 ]'
	publish 1
	wait_for 10 eval 'grep -q "^sent .* g w1$" "$T/records"'
	u=$(awk '$1 == "sent" { print $2; exit }' "$T/records")
	bg creditor sh -c 'while :; do mosquitto_pub -p "$1" -h 127.0.0.1 -t "$2" -m "1 $3" -q 1
		sleep 1; done' sh "$BROKER_PORT" "$PREFIX/credit/g/w1" "$u"
	proxy_cut
	sleep 5 # away for longer than --ack-timeout: what the test is about
	p=$(stat_of progress)
	proxy_start
	# back, and hearing the credit again
	wait_for 20 eval '[ "$(stat_of progress)" -ge $((p + 2)) ]'
	pub "$PREFIX/done/g/w1/$u" ok -q 1
	wait_for 10 eval 'grep -q "^done $u g w1 ok$" "$T/records"'
	! grep 'no done for' "$T/auction.err" || false
	[ "$(grep -c "^sent $u " "$T/records")" = 1 ]
}

@test "broker restarted (SIGTERM: it sends every worker's will) while jobs run: each runs once" {
	broker_start
	touch "$T/log" "$T/records"
	AUCTIONOPTS="$AUCTIONOPTS --listen $T/a.sock" pipeline -v
	# 8 s jobs: a worker back before the auction has its first credit
	# lost, and names its job again 5.5 s later, still before its done
	for w in w1 w2; do worker "$w" 8 -j 2; done
	wait_balanced
	publish 2
	wait_for 10 eval '[ "$(grep -c "^start " "$T/log")" = 2 ]'
	broker_restart
	wait_for 30 eval '[ "$(grep -c "^done .* ok$" "$T/records")" -ge 2 ]'
	# the wills took both jobs back; their workers' credit named them
	[ "$(stat_of kept)" = 2 ]
	publish 1 3
	wait_for 15 eval 'grep -q "^end .* job-3$" "$T/log"'
	account 3
	account 3 | grep -qx 'duplicated 0'
	account 3 | grep -qx 'lost 0'
}

@test "broker restarted (SIGTERM) and a worker dead meanwhile: its job, kept for it a while, goes to another" {
	broker_start
	touch "$T/log" "$T/records"
	AUCTIONOPTS="$AUCTIONOPTS --listen $T/a.sock" pipeline -v
	worker w1 30
	wait_balanced
	publish 1
	wait_for 10 eval 'grep -q "^start w1 job-1$" "$T/log"'
	worker w2 0
	broker_stop
	pid=$(cat "$T/w1.pid")
	for c in $(cat /proc/"$pid"/task/*/children); do kill -KILL "$c"; done
	kill -KILL "$pid"
	wait_for 5 exited "$pid"
	broker_run b
	# w1's will is gone with the old broker: its job waits for its credit
	# some seconds after the auction is back, then goes to w2
	wait_for 30 eval 'grep -q "^end w2 job-1$" "$T/log"'
	[ "$(stat_of kept)" = 0 ]
	account 1 | grep -qx 'lost 0'
}

@test "broker restarted (SIGTERM), the worker back later than --deadline after the auction: its job is kept, not dropped" {
	broker_start
	touch "$T/log" "$T/records"
	proxy_start
	AUCTIONOPTS="$AUCTIONOPTS --listen $T/a.sock --deadline 1" pipeline -v
	# the worker reaches the broker through the proxy, the stages not
	worker w1 4 -p "$PROXY_PORT"
	wait_balanced
	publish 1
	wait_for 10 eval 'grep -q "^start w1 job-1$" "$T/log"'
	# the broker goes down, sending the wills; the worker cannot come back
	broker_stop
	proxy_cut
	broker_run b
	# the auction is back, the worker not yet: longer than --deadline
	wait_for 15 eval 'grep -q "connected" "$T/auction.err"'
	sleep 2
	proxy_start
	wait_for 30 eval 'grep -q "^done .* g w1 ok$" "$T/records"'
	! grep -q '^drop ' "$T/records" || false
	[ "$(stat_of kept)" = 1 ]
	[ "$(grep -c '^start ' "$T/log")" = 1 ]
}

@test "a worker stopped (SIGTERM) during a job longer than --ack-timeout: it runs once, never awarded again" {
	broker_start
	touch "$T/log" "$T/records"
	# keepalive 5 (the helper's -k 5); --ack-timeout more than twice that
	AUCTIONOPTS="$AUCTIONOPTS --ack-timeout 11" pipeline -v
	worker w1 14 --drain-timeout 60
	wait_balanced
	publish 1
	wait_for 10 eval 'grep -q "^start w1 job-1$" "$T/log"'
	kill -TERM "$(cat "$T/w1.pid")"
	# another worker, free all along, to take the job if it were taken back
	worker w2 0
	wait_for 30 eval 'grep -q "^done .* g w1 ok$" "$T/records"'
	wait_for 10 exited "$(cat "$T/w1.pid")"
	! grep 'no done for' "$T/auction.err" || false
	[ "$(grep -c '^start ' "$T/log")" = 1 ]
	account 1 | grep -qx 'lost 0'
}

@test "balancer pipeline stopped with SIGTERM under load: what it held is handed on, nothing lost" {
	broker_start
	touch "$T/log" "$T/records"
	pipeline
	for w in w1 w2; do worker "$w" 0.05; done
	wait_balanced
	publish 60
	wait_for 20 eval '[ "$(ended)" -ge 10 ]'
	pipeline_stop
	for s in sub auction dispatch; do wait "$(cat "$T/$s.pid")"; done
	# what the stages held was awarded before they exited; let it finish
	wait_for 20 settled 60 || { account 60; false; }
	account 60
	account 60 | grep -qx 'lost 0'
	account 60 | grep -qx 'dropped 0'
	# and a new pipeline on the same session takes over, once the
	# workers' next announce has reached it
	pipeline
	wait_balanced
	publish 20 61
	wait_for 30 settled 80
	account 80 | grep -qx 'lost 0'
}

@test "balancer pipeline restarted: messages published while it is down wait at the broker" {
	# The broker hands the restarted mqlb-sub the queued messages under
	# their subscription identifier before any worker has announced again:
	# mqlb-sub holds them until the filter is announced (same identifier,
	# every run) and then passes them on.
	broker_start
	touch "$T/log" "$T/records"
	pipeline
	for w in w1 w2; do worker "$w" 0.05; done
	wait_balanced
	publish 20
	wait_for 20 settled 20
	pipeline_stop
	for s in sub auction dispatch; do wait "$(cat "$T/$s.pid")"; done
	publish 20 21
	pipeline
	wait_for 60 settled 40 || { account 40; false; }
	account 40 | grep -qx 'lost 0'
}

@test "two balancers sharing intake (--share), one stopped with SIGTERM under load: nothing lost" {
	broker_start
	touch "$T/log" "$T/records"
	SUBOPTS="--share lbs" PL=A pipeline
	SUBOPTS="--share lbs" PL=B pipeline
	for w in w1 w2 w3; do worker "$w" 0.05; done
	PL=A wait_balanced
	PL=B wait_balanced
	publish 100
	wait_for 20 eval '[ "$(ended)" -ge 20 ]'
	PL=A pipeline_stop
	publish 50 101
	wait_for 60 settled 150 || { account 150; false; }
	account 150
	account 150 | grep -qx 'lost 0'
	account 150 | grep -qx 'dropped 0'
	# both took part
	grep -q '^sent ' "$T/recordsA"
	grep -q '^sent ' "$T/recordsB"
}

@test "kill -9 of mqlb-dispatch: the auction names every message it held, none goes without a word" {
	broker_start
	touch "$T/log" "$T/records"
	pipeline --retry 0.2 --listen "$T/a.sock"
	# a group, but no worker to bid yet: the messages wait in the auction
	# (announced until the spy sees the suback: it may subscribe late)
	wait_for 15 eval 'announce g "jobs/#"; sleep 0.2; exited "$(cat "$T/suback.pid")"'
	publish 5
	wait_for 10 eval '[ "$(stat_of pending)" = 5 ]'
	kill -KILL "$(cat "$T/dispatch.pid")"
	wait_for 5 exited "$(cat "$T/dispatch.pid")"
	# the auction sees its output closed (at once, or at the award a
	# worker's bid brings) and names what it held
	worker w1 0.05
	wait_for 10 exited "$(cat "$T/auction.pid")"
	run wait "$(cat "$T/auction.pid")"
	[ "$status" -eq 111 ]
	cat "$T/auction.err"
	[ "$(grep -c 'lost at exit, output closed: .* jobs/a' "$T/auction.err")" -eq 5 ]
}

@test "a worker that always fails: each message is tried --max-attempts times, then drop failed" {
	broker_start
	touch "$T/log" "$T/records"
	pipeline --max-attempts 3 --retry 0.1 --listen "$T/a.sock"
	worker f1 0 -- sh -c 'cat >/dev/null; echo "fail $MQLB_WID" >>"$LOG"; exit 3'
	worker f2 0 -- sh -c 'cat >/dev/null; echo "fail $MQLB_WID" >>"$LOG"; exit 3'
	wait_balanced
	publish 5
	wait_for 30 eval '[ "$(dropped)" -ge 5 ]'
	account 5
	account 5 | grep -qx 'lost 0'
	[ "$(grep -c '^drop .* failed g jobs/a job-' "$T/records")" -eq 5 ]
	[ "$(grep -c '^fail ' "$T/log")" -eq 15 ]
	[ "$(grep -c '^done .* fail' "$T/records")" -eq 15 ]
	# a fail is a done too: the time since the last one is known
	[ "$(stat_of worker.g/f1.last_done_us)" -lt 60000000 ]
}

@test "a worker that hangs forever: --ack-timeout takes its job back, nothing lost" {
	broker_start
	touch "$T/log" "$T/records"
	pipeline --ack-timeout 2 --max-attempts 5
	worker hang 0 -- sh -c 'cat >/dev/null; echo "hang $MQLB_WID" >>"$LOG"; exec sleep 60'
	worker w1 0.05
	wait_balanced
	publish 10
	wait_for 30 settled 10 || { account 10; false; }
	account 10 | grep -qx 'lost 0'
	account 10 | grep -qx 'dropped 0'
	grep -q '^hang hang$' "$T/log"
	grep -q 'no done for .* from g/hang' "$T/auction.err"
}

@test "overload, twice the workers' capacity: input pushed back, nothing dropped, all processed" {
	broker_start
	touch "$T/log" "$T/records"
	pipeline --max-pending 20 --listen "$T/a.sock"
	worker w1 0.1
	worker w2 0.1
	# 2 workers x 10 jobs/s; offered 40/s for 5 s
	wait_balanced
	for i in $(seq 1 200); do echo "job-$i"; sleep 0.025; done |
		mosquitto_pub -h 127.0.0.1 -p "$BROKER_PORT" -V 5 -q 1 -t jobs/a -l
	# the backlog waits at the broker, not in the auction
	pending=$(perl -MIO::Socket::UNIX -e '
		my $s = IO::Socket::UNIX->new(Peer => $ARGV[0]) or exit 1;
		print $s "stats\n";
		while (<$s>) { last if /^ok/; print }' "$T/a.sock" | awk '$2 == "pending" { print $3 }')
	echo "pending at the end of publishing: $pending"
	[ "$pending" -le 20 ]
	wait_for 60 settled 200 || { account 200; false; }
	account 200
	account 200 | grep -qx 'lost 0'
	account 200 | grep -qx 'dropped 0'
}

@test "hostile input: random bytes, NULs, long lines; auction and dispatch report, survive and go on" {
	broker_start
	garbage() {
		head -c 200000 /dev/urandom
		printf '\nmsg \0\0 1 0 a/# a/b p\n'
		printf 'assign %s g\0x w 1 a/b p\n' "$U1"
		printf 'msg %s 1 0 a/# a/b ' "$U1"
		head -c 3000000 /dev/zero | tr '\0' x
		printf '\n%%%%%% %%zz\n'
		printf 'assign %s g w 9 a/b p\n' "$U1"
		printf 'assign %s g w 1 a/+ p\n' "$U1"
		printf 'msg %s 1 0 a/# a/b p not%%2Cprops\n' "$U2"
	}
	{ garbage; echo "msg $U2 1 0 none/# none/a last"; } |
		mqlb-auction -h 127.0.0.1 -p "$BROKER_PORT" >"$T/a.out" 2>"$T/a.err"
	grep -q "^drop $U2 nogroup - none/a last\$" "$T/a.out"
	grep -q 'line [0-9]*: ' "$T/a.err"
	{ garbage; echo "sent $U2 g w"; } |
		mqlb-dispatch -h 127.0.0.1 -p "$BROKER_PORT" >"$T/d.out" 2>"$T/d.err"
	grep -q "^sent $U2 g w\$" "$T/d.out"
	grep -q 'line [0-9]*: assign record: bad qos' "$T/d.err"
	grep -q 'line [0-9]*: assign record: bad group or worker id' "$T/d.err"
	# nothing was awarded or published from garbage: the auction made no
	# assign (there is no group), it only passed on the three it was fed
	[ "$(grep -ac '^assign' "$T/a.out")" -eq 3 ]
	! grep -q '^sent .* g w$' <(grep -v "^sent $U2 g w\$" "$T/d.out") || false
}
