#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# worker.py: a complete mqlb credit-flow worker (mqlb-protocol(7)) on paho-mqtt 1.6: runs a
# shell command per job with the payload on stdin (or sleeps --sleep MS), one line per job.
import argparse, collections, os, re, signal, socket, subprocess, sys, threading, time, queue
import paho.mqtt.client as mqtt

def level(s):
    if not s or re.search("[/+#]", s): raise argparse.ArgumentTypeError(f"not one topic level: {s!r}")
    return s
def number(lo, hi):
    def n(s):
        if not re.fullmatch("[0-9]+", s) or not lo <= int(s) <= hi:
            raise argparse.ArgumentTypeError(f"not a number from {lo} to {hi}: {s!r}")
        return int(s)
    return n
ap = argparse.ArgumentParser(description="An mqlb worker: credit flow, one done per job.")
for name, kind in (("host", str), ("port", number(1, 65535)), ("group", level), ("filter", str),
                   ("wid", level), ("slots", number(1, 10000))): ap.add_argument(name, type=kind)
ap.add_argument("command", nargs="?", help="shell command run per job, the payload on its stdin")
ap.add_argument("--sleep", type=number(0, 3600000), metavar="MS", help="sleep MS ms per job instead")
ap.add_argument("--ahead", type=number(0, 10000), default=0, metavar="N", help="jobs taken beyond the slots, to wait here")
ap.add_argument("-V", dest="version", choices=("311", "5"), default="311", help="MQTT version")
ap.add_argument("-k", dest="keepalive", type=number(5, 3600), default=10, help="keepalive (s)")
ap.add_argument("--job-qos", type=int, choices=(0, 1), default=0, help="QoS of the job subscription")
ap.add_argument("--prefix", type=level, default="lb", help="the protocol's topic prefix")
ap.add_argument("--stamp", action="store_true", help="end each line with the finish time and payload")
a = ap.parse_args()
if (a.command is None) == (a.sleep is None): ap.error("give either a command or --sleep MS")

me = f"{a.group}/{a.wid}"
c = mqtt.Client(protocol=mqtt.MQTTv5 if a.version == "5" else mqtt.MQTTv311)
c.will_set(f"{a.prefix}/gone/{me}", b"", 1)
c.reconnect_delay_set(1, 5)  # back within 5 s of the broker: the balancer waits 6.5 s for us
c.max_inflight_messages_set(0)  # no queue of ours: the dones leave in the order they were made
lock = threading.Condition()  # held and every publish: a credit never lists a job already done
held, jobs, subscribed, stop, stopping, gone = set(), queue.Queue(), threading.Event(), threading.Event(), False, None
oks, lost_at, replay_until = collections.deque(maxlen=1024), None, 0.0  # see credit()

def credit(hello=False):  # the announce and the credit with the jobs held: after SUBACK, every
    with lock:  # keepalive (0 slots once leaving); first the ok dones of around a reconnect and,
        if gone is not None: return  # on a hello, of the last minute: said gone, no credit after
        since = [time.time() - 60] if hello else []  # a balancer may have been down meanwhile,
        if time.time() < replay_until: since.append(lost_at - 5)  # or the broker lost them
        again = "".join(f"{u} ok\n" for t, u in oks if since and t >= min(since) and u not in held)
        if again: c.publish(f"{a.prefix}/done/{me}", again, 1)
        if not stopping: c.publish(f"{a.prefix}/sub/{a.group}", a.filter, 1)
        slots = "0" if stopping else f"{a.slots}+{a.ahead}" if a.ahead else str(a.slots)
        c.publish(f"{a.prefix}/credit/{me}", " ".join([slots] + sorted(held)), 1)
# Jobs at QoS 0 by default: the done is the one packet a job costs, with no PUBACK ahead of it to
# wait out Nagle. A clean session loses what was in flight at a disconnect at either QoS; the
# balancer takes back after --ack-timeout what no credit lists as held.
def on_connect(cl, ud, flags, rc, props=None):
    global replay_until
    if rc != 0: return
    c.subscribe([(f"{a.prefix}/hello", 0), (f"{a.prefix}/job/{me}/#", a.job_qos)])
    if lost_at is not None:  # a reconnect: credit again once every balancer is back too
        replay_until = time.time() + 5.5 + a.keepalive + 0.5
        t = threading.Timer(5.5, lambda: subscribed.is_set() and credit())
        t.daemon = True
        t.start()
def on_subscribe(cl, ud, mid, granted, props=None): subscribed.set(); credit()  # (both at once)
def on_disconnect(cl, ud, rc, props=None):
    global lost_at
    subscribed.clear()
    if time.time() >= replay_until: lost_at = time.time()  # else the replays of the last loss go on
def on_message(cl, ud, m):  # P/job/group/wid/UUID/MTOPIC
    quickack()
    if m.topic == f"{a.prefix}/hello": return credit(True)  # a balancer (re)started: it missed ours
    uuid, mtopic = m.topic[len(f"{a.prefix}/job/{me}/"):][:36], m.topic[len(f"{a.prefix}/job/{me}/") + 37:]
    if not re.fullmatch("[0-9a-f-]{36}", uuid): return
    with lock:
        if uuid in held: return  # a second copy of a job running here
        if len(held) >= a.slots + a.ahead or stopping: c.publish(f"{a.prefix}/done/{me}/{uuid}", "fail busy", 1); return
        held.add(uuid)
    jobs.put((uuid, mtopic, m.payload))
def quickack(*_):  # ACK a PUBACK or a job now, or a broker with Nagle on (mosquitto's default)
    sock = c.socket()  # holds the next job behind it until our delayed ACK, up to 40 ms
    if sock and hasattr(socket, "TCP_QUICKACK"): sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
def run():  # one thread per slot: paho's network thread never waits for a job
    while True:
        uuid, mtopic, payload = jobs.get()
        if a.sleep is not None: time.sleep(a.sleep / 1000); result = "ok"
        else:
            env = dict(os.environ, MQLB_ID=uuid, MQLB_TOPIC=mtopic, MQLB_GROUP=a.group, MQLB_WID=a.wid)
            rc = subprocess.run(a.command, shell=True, input=payload, stdout=sys.stderr, env=env).returncode
            result = "ok" if rc == 0 else "fail exit"
        stamp = f" {time.time():.6f} {payload.decode(errors='replace').splitlines()[0]}" if a.stamp and payload else ""
        with lock:
            held.discard(uuid)
            c.publish(f"{a.prefix}/done/{me}/{uuid}", result, 1)
            if result == "ok": oks.append((time.time(), uuid))
            print(a.wid, uuid, mtopic, result + stamp, flush=True)
            lock.notify_all()

c.on_connect, c.on_subscribe, c.on_disconnect, c.on_message, c.on_publish = on_connect, on_subscribe, on_disconnect, on_message, quickack
for s in (signal.SIGTERM, signal.SIGINT): signal.signal(s, lambda *_: stop.set())
try: c.connect(a.host, a.port, a.keepalive)
except OSError as e: print(f"worker.py: cannot connect to {a.host}:{a.port}: {e}", file=sys.stderr); sys.exit(69)
for _ in range(a.slots): threading.Thread(target=run, daemon=True).start()
c.loop_start()
while not stop.wait(a.keepalive):
    if subscribed.is_set(): credit()
with lock:  # credit 0, finish the jobs held (a new one is answered "fail busy"), then say gone
    stopping = True
    if subscribed.is_set(): credit()
    while not lock.wait_for(lambda: not held, a.keepalive):
        if subscribed.is_set(): credit()
    gone = c.publish(f"{a.prefix}/gone/{me}", b"", 1)
try: gone.wait_for_publish(5)
except (RuntimeError, ValueError): pass  # the broker is away: the will says it
c.disconnect()
c.loop_stop()
