#!/usr/bin/env bats
# SPDX-License-Identifier: MIT
# 830-cluster: three bridged mosquittos behind an mqlb-xdp VIP in network
# namespaces: connections spread by weight, messages cross the bridges once,
# the balancer on one broker serves workers on the others, and MQTT over
# WebSockets goes through a VIP port of its own.

load helpers/common.bash
load helpers/netns.bash

setup() {
	mqlb_setup
	netns_init
}
teardown() {
	mqlb_teardown
	netns_cleanup
}

lb_stat() { xdp_query "$T/lb.sock" stats | awk -v n="$1" '$1 == "stat" && $2 == n { print $3 }'; }

# cluster [CONFIG-LINE...]: the testbed, three brokers bridged in a star,
# mqlb-xdp serving $TB_VIP:1883 with weights 1/1/2 (and the records in
# $T/more, if any).
cluster() {
	local i
	testbed l2
	for i in 1 2 3; do tb_cluster_broker "$i" "$@"; done
	wait_for 10 tb_bridged
	{
		echo "vip $TB_VIP:1883"
		echo "real $TB_VIP:1883 10.77.0.11 1"
		echo "real $TB_VIP:1883 10.77.0.12 1"
		echo "real $TB_VIP:1883 10.77.0.13 2"
		[ ! -f "$T/more" ] || cat "$T/more"
	} >"$T/records"
	bg_in lb "$T/records" ip netns exec "$(ns lb)" mqlb-xdp -i eth0 --listen "$T/lb.sock"
	wait_for 10 eval "[ \$(xdp_query $T/lb.sock show 2>/dev/null | grep '^mac' | grep -vc unresolved) -eq 3 ]"
}

# clients NAME PORT N TRANSPORT TOPIC: N paho clients (ids NAME-0...) in
# the client namespace, through the VIP ($HOST if set), each subscribed to TOPIC at QoS 1;
# they print "ready" once all are, then "CLIENT PAYLOAD" per message
# received, and "lost CLIENT" if a connection drops. With "pub" after
# TOPIC, client 0 then publishes each "TOPIC PAYLOAD" line of the file $IN
# (QoS 1) and prints "published".
clients() {
	/usr/bin/python3 -c 'import paho.mqtt.client' ||
		{ echo "paho-mqtt missing (Debian: python3-paho-mqtt)" >&2; return 1; }
	cat >"$T/clients.py" <<'EOF'
import sys, threading, paho.mqtt.client as mqtt
name, host, port, n, transport, topic = sys.argv[1:3] + [int(a) for a in sys.argv[3:5]] + sys.argv[5:7]
lock = threading.Lock()
subscribed = threading.Semaphore(0)
def say(s):
    with lock:
        sys.stdout.write(s + "\n")
        sys.stdout.flush()
def on_connect(c, name, flags, rc):
    c.subscribe(topic, 1)
def on_subscribe(c, name, mid, granted):
    subscribed.release()
def on_message(c, name, m):
    say("%s %s" % (name, m.payload.decode()))
def on_disconnect(c, name, rc):
    say("lost %s" % name)
cs = []
for i in range(n):
    c = mqtt.Client(client_id="%s-%d" % (name, i), userdata="c%d" % i, transport=transport)
    c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
    c.on_disconnect = on_disconnect
    c.connect(host, port, keepalive=120)
    c.loop_start()
    cs.append(c)
for i in range(n):
    if not subscribed.acquire(timeout=20):
        sys.exit("only %d of %d subscribed" % (i, n))
say("ready")
if sys.argv[7:] == ["pub"]:
    for line in sys.stdin:
        t, payload = line.rstrip("\n").split(" ", 1)
        cs[0].publish(t, payload, 1).wait_for_publish()
    say("published")
threading.Event().wait()
EOF
	bg_in "$1" "${IN:-/dev/null}" ip netns exec "$(ns cl)" /usr/bin/python3 "$T/clients.py" "$1" "${HOST:-$TB_VIP}" "$2" "$3" "$4" "$5" ${6:+"$6"}
	wait_for 30 grep -qx ready "$T/$1.out"
}

# got FILE N: FILE holds N "CLIENT PAYLOAD" lines, no two the same.
got() {
	[ "$(grep -vcx 'ready\|published' "$1")" -ge "$2" ] || return 1
	[ -z "$(grep -vx 'ready\|published' "$1" | sort | uniq -d)" ]
}

@test "weights 1/1/2: 200 connections spread by weight; a message published on any broker reaches every subscriber once" {
	require_root
	cluster
	clients subs 1883 200 tcp c/t
	for b in 1 2 3; do on[b]=$(tb_clients_on "$b" | wc -l); done
	echo "# connections on b1 b2 b3: ${on[1]} ${on[2]} ${on[3]} (weights 1 1 2)" >&3
	[ $((on[1] + on[2] + on[3])) -eq 200 ]
	[ "$(lb_stat "vip.$TB_VIP:1883.tcp.new_flows")" -ge 200 ]
	# Expected 50/50/100; each bound is more than 4 standard deviations away.
	[ "${on[1]}" -ge 25 ]
	[ "${on[1]}" -le 75 ]
	[ "${on[2]}" -ge 25 ]
	[ "${on[2]}" -le 75 ]
	[ "${on[3]}" -ge 70 ]
	[ "${on[3]}" -le 130 ]

	# One message published on each broker directly, one through the VIP:
	# every subscriber, wherever it is, gets each exactly once.
	for b in 1 2 3; do nsx cl mosquitto_pub -h "10.77.0.1$b" -t c/t -q 1 -m "from-b$b"; done
	nsx cl mosquitto_pub -h "$TB_VIP" -t c/t -q 1 -m from-vip
	wait_for 20 got "$T/subs.out" 800
	sleep 1
	got "$T/subs.out" 800
	[ "$(grep -vcx ready "$T/subs.out")" -eq 800 ]
	[ "$(grep -c '^lost' "$T/subs.out")" -eq 0 ]
	for m in from-b1 from-b2 from-b3 from-vip; do [ "$(grep -c " $m\$" "$T/subs.out")" -eq 200 ]; done
}

JOB='echo "start $MQLB_WID $(cat)" >>"$LOG"; sleep 0.02'

# worker N ID: a worker in broker bN's namespace, on that broker.
worker() {
	LOG="$T/log" bg "$2" ip netns exec "$(ns "b$1")" mqlb-worker -h 127.0.0.1 -p 1883 -g g -t 'jobs/#' -j 2 \
		--wid "$2" -- sh -c "$JOB"
}

# ran_once PREFIX N: jobs PREFIX1..PREFIXN each ran exactly once.
ran_once() {
	awk -v p="$1" -v n="$2" '$1 == "start" { c[$3]++ }
		END { for (i = 1; i <= n; i++) if (c[p i] != 1) { print p i " ran " c[p i] + 0 " times"; bad = 1 }
		      exit bad }' "$T/log"
}
started() { grep -c '^start' "$T/log" 2>/dev/null || echo 0; }

# balancer: the pipeline fixture on broker b1, run in its namespace (the
# fixture connects to 127.0.0.1); records in $T/records. wait_balanced
# once a worker has announced.
balancer() {
	nsx b1 env T="$T" PREFIX=lb BROKER_PORT=1883 bash -c ". '$BATS_TEST_DIRNAME/helpers/common.bash' && pipeline"
}

@test "the balancer on b1, workers on b2 and b3: jobs published anywhere run once each" {
	require_root
	cluster
	balancer
	worker 2 w2a
	worker 2 w2b
	worker 3 w3a
	worker 3 w3b
	wait_balanced
	# 300 jobs: three batches through the VIP (each one connection, to a
	# broker of the VIP's choice), one straight to each broker.
	for k in 0 1 2 3 4 5; do
		seq $((k * 50 + 1)) $((k * 50 + 50)) | sed 's/^/job-/' >"$T/batch$k"
	done
	for k in 0 1 2; do nsx cl mosquitto_pub -h "$TB_VIP" -q 1 -t jobs/x -l <"$T/batch$k"; done
	for b in 1 2 3; do nsx cl mosquitto_pub -h "10.77.0.1$b" -q 1 -t jobs/x -l <"$T/batch$((b + 2))"; done
	wait_for 40 eval '[ "$(started)" -ge 300 ]'
	sleep 1
	ran_once job- 300
	[ "$(started)" -eq 300 ]
	# Workers on both brokers took part; the balancer heard every job done
	# (the awards' mqlb-id property crossed the bridges) and dropped none.
	grep -q '^start w2' "$T/log"
	grep -q '^start w3' "$T/log"
	wait_for 10 eval '[ "$(grep -c "^done .* ok" "$T/records")" -ge 300 ]'
	[ "$(grep -c '^drop' "$T/records")" -eq 0 ]
	pipeline_stop
}

# ws_probe: skip, saying why, if mosquitto's websockets listener does not
# start here (a build without websockets); it runs beside a plain listener,
# since mosquitto 2.0 does not count the websockets one as listening.
ws_probe() {
	ns_add probe
	printf '%s\n' "listener 1883" "listener 9001" "protocol websockets" "allow_anonymous true" \
		"user root" "log_dest stderr" >"$T/probe.conf"
	bg probe ip netns exec "$(ns probe)" mosquitto -c "$T/probe.conf"
	if ! wait_for 5 nsx probe bash -c "exec 3<>/dev/tcp/127.0.0.1/9001" 2>/dev/null; then
		cat "$T/probe.err" >&2
		skip "mosquitto's websockets listener does not start: $(grep -m1 -i 'error' "$T/probe.err")"
	fi
	kill "$(pidof_bg probe)"
}

# ws_on N: websockets connections from the client at broker bN.
ws_on() { nsx "b$1" ss -Htn state established '( sport = :9001 )' | grep -c '10\.77\.0\.2\]*:' || true; }

@test "MQTT over WebSockets through a VIP port of its own: messages both ways and jobs" {
	require_root
	ws_probe
	{
		echo "vip $TB_VIP:9001"
		for b in 1 2 3; do echo "real $TB_VIP:9001 10.77.0.1$b 1"; done
	} >"$T/more"
	cluster "listener 9001" "protocol websockets"
	for b in 1 2 3; do wait_for 5 nsx "b$b" bash -c "exec 3<>/dev/tcp/10.77.0.1$b/9001" 2>/dev/null; done
	balancer
	worker 2 w2a
	worker 3 w3a
	wait_balanced
	# A plain subscriber on b3; twelve websockets subscribers through the VIP.
	bg plain ip netns exec "$(ns cl)" mosquitto_sub -h 10.77.0.13 -t c/t -q 1
	wait_for 5 eval '[ "$(tb_clients_on 3 | wc -l)" -ge 1 ]'
	clients wsubs 9001 12 websockets c/t
	# A websockets publisher through the VIP: a message, then 20 jobs.
	{
		echo "c/t ws-hello"
		seq 1 20 | sed 's|^|jobs/x wsjob-|'
	} >"$T/wspub.in"
	IN=$T/wspub.in clients wspub 9001 1 websockets c/t pub
	wait_for 10 grep -qx published "$T/wspub.out"
	wait_for 10 got "$T/wsubs.out" 12
	wait_for 10 grep -qx ws-hello "$T/plain.out"
	# A plain publisher through the plain VIP port reaches them all.
	nsx cl mosquitto_pub -h "$TB_VIP" -t c/t -q 1 -m plain-hello
	wait_for 10 got "$T/wsubs.out" 24
	wait_for 10 grep -qx "c0 plain-hello" "$T/wspub.out"
	sleep 0.5
	got "$T/wsubs.out" 24
	[ "$(grep -c ' ws-hello$' "$T/wsubs.out")" -eq 12 ]
	[ "$(grep -c ' plain-hello$' "$T/wsubs.out")" -eq 12 ]
	[ "$(cat "$T/wsubs.out" "$T/wspub.out" | grep -c '^lost')" -eq 0 ]
	# The websockets connections went through the VIP and were spread.
	[ "$(lb_stat "vip.$TB_VIP:9001.tcp.new_flows")" -ge 13 ]
	echo "# websockets connections on b1 b2 b3: $(ws_on 1) $(ws_on 2) $(ws_on 3)" >&3
	[ $(($(ws_on 1) + $(ws_on 2) + $(ws_on 3))) -eq 13 ]
	used=0
	for b in 1 2 3; do [ "$(ws_on "$b")" -eq 0 ] || used=$((used + 1)); done
	[ "$used" -ge 2 ]
	# The jobs, published over websockets, ran once each on b2's and b3's workers.
	wait_for 20 eval '[ "$(started)" -ge 20 ]'
	sleep 0.5
	ran_once wsjob- 20
	[ "$(started)" -eq 20 ]
	pipeline_stop
}

# conns_to VIP N: connections from the client to VIP:1883 held by broker bN.
conns_to() {
	nsx "b$2" ss -Htn state established '( sport = :1883 )' | awk -v v="$1:1883" '$3 == v && $4 ~ /^10\.77\.0\.2:/' | wc -l
}

@test "two services on one cluster: VIPs with their own reals and weights, each fed by its own health loop" {
	require_root
	VIP2=10.77.0.101
	testbed l2
	for b in 1 2 3; do
		tb_cluster_broker "$b"
		ip -n "$(ns "b$b")" addr add "$VIP2/32" dev lo
	done
	ip -n "$(ns lb)" addr add "$VIP2/32" dev eth0
	wait_for 10 tb_bridged
	bg_in lb /dev/null ip netns exec "$(ns lb)" mqlb-xdp -i eth0 --listen "$T/lb.sock"
	wait_for 5 eval "xdp_query $T/lb.sock stats 2>/dev/null | grep -q ^ok"
	# Devices on every broker; backend workers on b2 and b3, b3 taking
	# twice b2's share. Each health loop writes into mqlb-xdp's socket.
	bg devices ip netns exec "$(ns lb)" mqlb-health --vip "$TB_VIP:1883" 10.77.0.11 10.77.0.12 10.77.0.13 \
		--output "$T/lb.sock"
	printf '%s\n' "vip $VIP2:1883" "real $VIP2:1883 10.77.0.12 100" "real $VIP2:1883 10.77.0.13 200" >"$T/backend.in"
	bg_in backend "$T/backend.in" ip netns exec "$(ns lb)" mqlb-health --output "$T/lb.sock"
	wait_for 15 eval "[ \$(xdp_query $T/lb.sock show | grep -c '^real .* [1-9][0-9]*\$') -eq 5 ]"
	wait_for 10 eval "[ \$(xdp_query $T/lb.sock show | grep '^mac' | grep -vc unresolved) -eq 3 ]"
	xdp_query "$T/lb.sock" show | sed "s/^/# /" >&3
	[ "$(xdp_query "$T/lb.sock" show | grep -c "^real $VIP2:1883 10.77.0.11 ")" -eq 0 ]

	clients dev 1883 40 tcp svc/t
	HOST=$VIP2 clients back 1883 40 tcp svc/t
	for b in 1 2 3; do
		d[b]=$(conns_to "$TB_VIP" "$b")
		k[b]=$(conns_to "$VIP2" "$b")
	done
	echo "# devices on b1 b2 b3: ${d[1]} ${d[2]} ${d[3]}; backend: ${k[1]} ${k[2]} ${k[3]}" >&3
	[ $((d[1] + d[2] + d[3])) -eq 40 ]
	[ $((k[1] + k[2] + k[3])) -eq 40 ]
	[ "${d[1]}" -gt 0 ]
	[ "${d[2]}" -gt 0 ]
	[ "${d[3]}" -gt 0 ]
	[ "${k[1]}" -eq 0 ]
	[ "${k[2]}" -gt 0 ]
	[ "${k[3]}" -gt 0 ]
	# One cluster: what a device publishes reaches the backend's clients.
	nsx cl mosquitto_pub -h "$TB_VIP" -t svc/t -q 1 -m from-device
	wait_for 10 got "$T/back.out" 40
	wait_for 10 got "$T/dev.out" 40
	[ "$(cat "$T/dev.out" "$T/back.out" | grep -c '^lost')" -eq 0 ]
}
