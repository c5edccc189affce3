#!/usr/bin/env bash
# SPDX-License-Identifier: MIT
# python-vs-rabbitmq.sh: four contrib/examples/worker.py behind the mqlb pipeline against four
# worker-pika.py behind RabbitMQ (prefetch 1, manual acks), same load over MQTT: one table.
set -euo pipefail

usage() {
	cat <<EOF
usage: python-vs-rabbitmq.sh [--bindir dir] [--duration s] [--load f] [--service list]...
                             [--side mqlb|rabbitmq|both] [--nagle] [--auction-opts opts]
                             [--worker-opts opts]
                             [--python path] [--keep] [--smoke]
EOF
}
die_usage() { echo "python-vs-rabbitmq.sh: $1" >&2; usage >&2; exit 2; }

here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
bindir=
duration=30
load=0.7
services=()
side=both
# mosquitto as the README runs it, set_tcp_nodelay true (RabbitMQ sets TCP_NODELAY itself);
# --nagle runs it with its stock setting, Nagle on.
nodelay=true
auction_opts=
worker_opts=
python=
keep=false
grace=10 # seconds without a job done before a run's wait ends
drain=60 # seconds at most after the last publish
while [ $# -gt 0 ]; do
	case $1 in
	--bindir) bindir=${2:?}; shift ;;
	--duration) duration=${2:?}; shift ;;
	--load) load=${2:?}; shift ;;
	--service) services+=("${2:?}"); shift ;;
	--side) side=${2:?}; shift ;;
	--nodelay) nodelay=true ;;
	--nagle) nodelay=false ;;
	--auction-opts) auction_opts=${2?}; shift ;;
	--worker-opts) worker_opts=${2?}; shift ;;
	--python) python=${2:?}; shift ;;
	--keep) keep=true ;;
	--smoke) duration=3; grace=5; drain=15 ;;
	--help) usage; exit 0 ;;
	*) die_usage "unknown option \"$1\"" ;;
	esac
	shift
done
if ! [[ $duration =~ ^[0-9]+$ ]] || [ "$duration" -lt 1 ]; then
	die_usage "--duration: bad number \"$duration\""
fi
if ! [[ $load =~ ^(0?\.[0-9]+|1(\.0*)?)$ ]] || ! awk -v l="$load" 'BEGIN { exit !(l > 0) }'; then
	die_usage "--load: not above 0 and at most 1: \"$load\""
fi
[ ${#services[@]} -gt 0 ] || services=("20,20,20,200" "5,5,5,50")
for s in "${services[@]}"; do
	[[ $s =~ ^[0-9]+(,[0-9]+)*$ ]] || die_usage "--service: not a list of milliseconds: \"$s\""
	awk -v s="$s" 'BEGIN { n = split(s, a, ","); for (i = 1; i <= n; i++) if (a[i] == 0) exit 1 }' ||
		die_usage "--service: 0 ms in \"$s\""
done
case $side in mqlb | rabbitmq | both) ;; *) die_usage "--side: mqlb, rabbitmq or both, not \"$side\"" ;; esac
if [ -n "$bindir" ]; then
	[ -x "$bindir/mqlb-auction" ] || die_usage "--bindir: no mqlb-auction in \"$bindir\""
	bindir=$(cd "$bindir" && pwd)/
fi
# Debian's python3-paho-mqtt and python3-pika serve /usr/bin/python3, which need not be first in PATH.
if [ -z "$python" ]; then
	for p in /usr/bin/python3 python3; do
		"$p" -c 'import paho.mqtt, pika' 2>/dev/null && { python=$p; break; }
	done
	[ -n "$python" ] || { echo "python-vs-rabbitmq.sh: no python3 with paho.mqtt and pika (contrib/deps)" >&2; exit 111; }
fi

D=$(mktemp -d /tmp/mqlb-pvr.XXXXXX)
pids=()
rabbit_pid=
cleanup() {
	local p
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	rabbit_stop
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	if $keep; then echo "# logs kept in $D" >&2; else rm -rf "$D"; fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM
fail() { echo "python-vs-rabbitmq.sh: $1 (logs in $D)" >&2; keep=true; exit 69; }

free_port() { "$python" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
# wait_until SECONDS CMD...: poll CMD every 50 ms.
wait_until() {
	local limit=$(($1 * 20)) i=0
	shift
	until "$@"; do
		i=$((i + 1))
		[ $i -lt $limit ] || return 1
		sleep 0.05
	done
}
# start NAME CMD...: CMD in the background, output in $run/NAME.out and .err.
start() {
	local name=$1
	shift
	"$@" >"$run/$name.out" 2>"$run/$name.err" &
	pids+=($!)
}
stop_all() {
	local p
	for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
	for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
	pids=()
}

# The publisher: RATE jobs/s for DURATION s on TOPIC over MQTT 3.1.1 (RabbitMQ's MQTT plugin
# speaks no 5), QoS 1; payload "SEQ PUBLISH-TIME"; prints how many were published.
cat >"$D/publish.py" <<'EOF'
import sys, time
import paho.mqtt.client as mqtt
host, port, topic, rate, duration = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
c = mqtt.Client()
c.max_inflight_messages_set(0)
c.connect(host, port)
c.loop_start()
n, start, sent = int(rate * duration), time.monotonic(), []
for i in range(1, n + 1):
	delay = start + (i - 1) / rate - time.monotonic()
	if delay > 0: time.sleep(delay)
	sent.append(c.publish(topic, f"{i} {time.time():.6f}", 1))
for m in sent: m.wait_for_publish(60)
print(sum(m.is_published() for m in sent))
c.disconnect()
c.loop_stop()
EOF

# rate SERVICES: jobs/s at --load of the workers' capacity (one slot each).
rate() { awk -v s="$1" -v l="$load" 'BEGIN { n = split(s, a, ","); for (i = 1; i <= n; i++) c += 1000 / a[i]; printf "%.1f", c * l }'; }
done_lines() { cat "$run"/w*.out 2>/dev/null | wc -l; }
# finish PUBLISHED: wait until every job is done, none for $grace s, or $drain s passed.
finish() {
	local n last=-1 idle=0 end=$((SECONDS + drain))
	while n=$(done_lines) && [ "$n" -lt "$1" ] && [ $idle -lt $((grace * 10)) ] && [ $SECONDS -lt $end ]; do
		if [ "$n" = "$last" ]; then idle=$((idle + 1)); else idle=0; last=$n; fi
		sleep 0.1
	done
}
# row SIDE SERVICES PUBLISHED: one line of the table from the workers' lines
# "wid id topic ok FINISH SEQ PUBLISHED-AT" (a job's first run counts; later ones are dup).
# Workers still running write as this reads: a last line without its newline is left out, or
# it would count as a job run twice.
whole_lines() {
	local f l
	for f; do while IFS= read -r l; do printf '%s\n' "$l"; done <"$f"; done
}
row() {
	local per dup m p50 p99
	whole_lines "$run"/w*.out | awk '$4 == "ok" && NF >= 7' >"$run/oks"
	awk '!seen[$6]++' "$run/oks" >"$run/firsts"
	dup=$(($(wc -l <"$run/oks") - $(wc -l <"$run/firsts")))
	awk '{ printf "%.3f\n", ($5 - $7) * 1000 }' "$run/firsts" | sort -n >"$run/latencies"
	m=$(wc -l <"$run/latencies")
	p50=$(awk -v m="$m" 'NR == int((m + 1) / 2) { print }' "$run/latencies")
	p99=$(awk -v m="$m" 'NR == int(m * 0.99 + 0.99) { print }' "$run/latencies")
	per=$(awk '{ n[$1]++ } END { for (w in n) print w "=" n[w] }' "$run/firsts" | sort | tr '\n' ' ')
	printf '%-9s %-13s %8.1f %8.1f %6d %5d %4d  %s\n' "$1" "$2" "${p50:-0}" "${p99:-0}" "$m" \
		$(($3 - m)) "$dup" "$per" >>"$D/table"
}

# --- mqlb: a private mosquitto, mqlb-sub | mqlb-auction | mqlb-dispatch, worker.py ---------------
mqlb_run() {
	local svc=$1 port rate n i ms wid
	run=$D/mqlb-$svc
	mkdir -p "$run"
	port=$(free_port)
	{
		echo "listener $port 127.0.0.1"
		echo "user $(id -un)"
		echo "allow_anonymous true"
		echo "persistence false"
		echo "max_queued_messages 100000"
		! $nodelay || echo "set_tcp_nodelay true"
	} >"$run/mosquitto.conf"
	start broker mosquitto -c "$run/mosquitto.conf"
	wait_until 10 port_open "$port" || fail "mosquitto did not start"
	local m=(-h 127.0.0.1 -p "$port")
	mkfifo "$run/msgs" "$run/awards" "$run/sub.ready" "$run/auction.ready"
	# A spool of this run's own: the default one is the user's, and another run's backlog left
	# there would be published again here.
	"${bindir}mqlb-sub" "${m[@]}" --spool "$run/sub.spool" --ready-fd 3 >"$run/msgs" 2>"$run/sub.err" \
		3>"$run/sub.ready" &
	pids+=($!)
	# shellcheck disable=SC2086
	"${bindir}mqlb-auction" "${m[@]}" --ready-fd 3 $auction_opts <"$run/msgs" >"$run/awards" \
		2>"$run/auction.err" 3>"$run/auction.ready" &
	pids+=($!)
	"${bindir}mqlb-dispatch" "${m[@]}" <"$run/awards" >"$run/records" 2>"$run/dispatch.err" &
	pids+=($!)
	timeout 20 head -n1 "$run/sub.ready" >/dev/null || fail "mqlb-sub did not get ready"
	timeout 20 head -n1 "$run/auction.ready" >/dev/null || fail "mqlb-auction did not get ready"
	# The balancer's suback and every worker's credit seen on the broker: then all are in.
	start spy mosquitto_sub "${m[@]}" -t lb/suback/bench -t 'lb/credit/bench/+' -t pvr/mark -v
	wait_until 5 spy_subscribed "$port" || fail "mosquitto_sub did not subscribe"
	IFS=, read -ra ms <<<"$svc"
	for i in "${!ms[@]}"; do
		wid=w$((i + 1))
		# shellcheck disable=SC2086
		start "$wid" "$python" -u "$src/contrib/examples/worker.py" --stamp --sleep "${ms[$i]}" $worker_opts \
			127.0.0.1 "$port" bench 'jobs/#' "$wid" 1
	done
	wait_until 30 credits_in "${#ms[@]}" || fail "not every worker credited, or no suback, within 30 s"
	rate=$(rate "$svc")
	echo "# mqlb: workers $svc ms, $rate jobs/s for $duration s" >&2
	n=$("$python" "$D/publish.py" 127.0.0.1 "$port" jobs/bench "$rate" "$duration")
	finish "$n"
	row mqlb "$svc" "$n"
	echo "$svc $(grep -c '^drop' "$run/records" || true)" >>"$D/drops"
	stop_all
}
spy_subscribed() { mosquitto_pub -h 127.0.0.1 -p "$1" -t pvr/mark -n -q 1 && grep -q '^pvr/mark' "$run/spy.out"; }
credits_in() {
	grep -q '^lb/suback/bench ' "$run/spy.out" || return 1
	[ "$(awk '$1 ~ /^lb\/credit\// { w[$1] = 1 } END { n = 0; for (x in w) n++; print n }' "$run/spy.out")" -ge "$1" ]
}

# --- RabbitMQ: a private node, its MQTT plugin on, worker-pika.py ----------------------------------
rabbit_start() {
	local r=$D/rabbitmq amqp mqtt dist
	mkdir -p "$r/mnesia" "$r/log"
	amqp=$(free_port)
	mqtt=$(free_port)
	dist=$(free_port)
	echo '[rabbitmq_mqtt].' >"$r/plugins"
	cat >"$r/rabbitmq.conf" <<-EOF
		listeners.tcp.default = 127.0.0.1:$amqp
		mqtt.listeners.tcp.default = 127.0.0.1:$mqtt
		mqtt.allow_anonymous = true
		loopback_users = none
		distribution.listener.port_range.min = $dist
		distribution.listener.port_range.max = $dist
	EOF
	# The server script itself, not Debian's wrapper (which switches to the rabbitmq user):
	# the node runs as whoever runs the bench, everything in $r.
	env HOME="$r" RABBITMQ_NODENAME="mqlbpvr$$@localhost" RABBITMQ_MNESIA_BASE="$r/mnesia" \
		RABBITMQ_LOG_BASE="$r/log" RABBITMQ_PID_FILE="$r/pid" RABBITMQ_FEATURE_FLAGS_FILE="$r/feature_flags" \
		RABBITMQ_ENABLED_PLUGINS_FILE="$r/plugins" RABBITMQ_CONFIG_FILE="$r/rabbitmq" \
		/usr/lib/rabbitmq/bin/rabbitmq-server >"$r/out" 2>&1 &
	rabbit_pid=$!
	echo "# rabbitmq: starting a private node (about 10-20 s)" >&2
	wait_until 90 port_open "$mqtt" || fail "rabbitmq did not open its MQTT port within 90 s"
	wait_until 10 port_open "$amqp" || fail "rabbitmq did not open its AMQP port"
	RABBIT_AMQP=$amqp
	RABBIT_MQTT=$mqtt
}
rabbit_stop() {
	local beam
	[ -n "$rabbit_pid" ] || return 0
	beam=$(cat "$D/rabbitmq/pid" 2>/dev/null || true)
	kill -TERM "$rabbit_pid" ${beam:+"$beam"} 2>/dev/null || true
	wait_until 30 rabbit_gone "$beam" || kill -KILL "$rabbit_pid" ${beam:+"$beam"} 2>/dev/null || true
	wait "$rabbit_pid" 2>/dev/null || true
	rabbit_pid=
}
rabbit_gone() { ! kill -0 "$rabbit_pid" 2>/dev/null && { [ -z "$1" ] || ! kill -0 "$1" 2>/dev/null; }; }

rabbit_run() {
	local svc=$1 k=$2 rate n i ms wid
	run=$D/rabbitmq-$svc
	mkdir -p "$run"
	IFS=, read -ra ms <<<"$svc"
	for i in "${!ms[@]}"; do
		wid=w$((i + 1))
		# A fresh durable queue per run, bound to jobs.# before anything is published.
		start "$wid" "$python" -u "$here/worker-pika.py" --stamp --sleep "${ms[$i]}" \
			127.0.0.1 "$RABBIT_AMQP" "bench$k" 'jobs/#' "$wid" 1
	done
	wait_until 30 consuming "${#ms[@]}" || fail "not every pika worker consuming within 30 s"
	rate=$(rate "$svc")
	echo "# rabbitmq: workers $svc ms, $rate jobs/s for $duration s" >&2
	n=$("$python" "$D/publish.py" 127.0.0.1 "$RABBIT_MQTT" jobs/bench "$rate" "$duration")
	finish "$n"
	row rabbitmq "$svc" "$n"
	stop_all
}
consuming() { [ "$(cat "$run"/w*.err 2>/dev/null | grep -c ' consuming ')" -ge "$1" ]; }

: >"$D/table"
: >"$D/drops"
if [ "$side" != rabbitmq ]; then
	for s in "${services[@]}"; do mqlb_run "$s"; done
fi
if [ "$side" != mqlb ]; then
	rabbit_start
	k=0
	for s in "${services[@]}"; do k=$((k + 1)); rabbit_run "$s" $k; done
	rabbit_stop
fi

commit=$(git -C "$src" describe --always --dirty 2>/dev/null || echo unknown)
echo "# $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, $(uname -sr), mqlb $commit," \
	"$(mosquitto -h 2>/dev/null | sed -n 's/^mosquitto version \([^ ]*\).*/mosquitto \1/p')," \
	"rabbitmq-server $(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || echo '?')"
echo "# 1-slot workers (worker.py: credit flow; worker-pika.py: prefetch 1, manual acks), load $load," \
	"$duration s, jobs over MQTT 3.1.1 QoS 1; mosquitto set_tcp_nodelay $nodelay${auction_opts:+; mqlb-auction $auction_opts}${worker_opts:+; worker.py $worker_opts}"
echo "# publish -> done latency in ms over the jobs done; lost = published, not done $grace s after the last done" \
	"or $drain s after the last publish"
printf '%-9s %-13s %8s %8s %6s %5s %4s  %s\n' side service_ms p50 p99 jobs lost dup per-worker
cat "$D/table"
while read -r s d; do [ "$d" = 0 ] || echo "# mqlb $s: $d dead letters (drop records)"; done <"$D/drops"
