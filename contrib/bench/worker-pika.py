#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# worker-pika.py: contrib/examples/worker.py's twin for RabbitMQ (AMQP 0-9-1, pika): a durable
# queue bound to amq.topic, prefetch = slots, manual acks; the comparison in python-vs-rabbitmq.sh.
import argparse, functools, os, re, signal, subprocess, sys, threading, time, queue
import pika

def name(s):
    if not s or re.search("[/+#]", s): raise argparse.ArgumentTypeError(f"not one topic level: {s!r}")
    return s
def number(lo, hi):
    def n(s):
        if not re.fullmatch("[0-9]+", s) or not lo <= int(s) <= hi:
            raise argparse.ArgumentTypeError(f"not a number from {lo} to {hi}: {s!r}")
        return int(s)
    return n
ap = argparse.ArgumentParser(description="A RabbitMQ worker: prefetch = slots, one ack per job.")
for arg, kind in (("host", str), ("port", number(1, 65535)), ("queue", name), ("filter", str),
                  ("wid", name), ("slots", number(1, 10000))): ap.add_argument(arg, type=kind)
ap.add_argument("command", nargs="?", help="shell command run per job, the payload on its stdin")
ap.add_argument("--sleep", type=number(0, 3600000), metavar="MS", help="sleep MS ms per job instead")
ap.add_argument("--stamp", action="store_true", help="end each line with the finish time and payload")
a = ap.parse_args()
if (a.command is None) == (a.sleep is None): ap.error("give either a command or --sleep MS")

# RabbitMQ's MQTT plugin publishes MQTT topic a/b on amq.topic with routing key a.b (+ is *).
key = a.filter.replace(".", "\0").replace("/", ".").replace("+", "*").replace("\0", "/")
try: conn = pika.BlockingConnection(pika.ConnectionParameters(a.host, a.port))
except pika.exceptions.AMQPConnectionError as e:
    print(f"worker-pika.py: cannot connect to {a.host}:{a.port}: {e!r}", file=sys.stderr); sys.exit(69)
ch = conn.channel()
ch.queue_declare(a.queue, durable=True)
ch.queue_bind(a.queue, "amq.topic", routing_key=key)
ch.basic_qos(prefetch_count=a.slots)
jobs, held = queue.Queue(), [0]

def done(tag, rkey, result, stamp):  # on the connection's thread, as pika wants
    if result == "ok": ch.basic_ack(tag)
    else: ch.basic_nack(tag, requeue=False)
    held[0] -= 1
    print(a.wid, tag, rkey.replace(".", "/"), result + stamp, flush=True)
def on_message(ch, method, props, body):
    held[0] += 1
    jobs.put((method.delivery_tag, method.routing_key, body))
def run():  # one thread per slot: the connection's thread never waits for a job
    while True:
        tag, rkey, payload = jobs.get()
        if a.sleep is not None: time.sleep(a.sleep / 1000); result = "ok"
        else:
            env = dict(os.environ, MQLB_TOPIC=rkey.replace(".", "/"), MQLB_WID=a.wid)
            rc = subprocess.run(a.command, shell=True, input=payload, stdout=sys.stderr, env=env).returncode
            result = "ok" if rc == 0 else "fail exit"
        stamp = f" {time.time():.6f} {payload.decode(errors='replace').splitlines()[0]}" if a.stamp and payload else ""
        conn.add_callback_threadsafe(functools.partial(done, tag, rkey, result, stamp))

for _ in range(a.slots): threading.Thread(target=run, daemon=True).start()
for s in (signal.SIGTERM, signal.SIGINT):
    signal.signal(s, lambda *_: conn.add_callback_threadsafe(ch.stop_consuming))
ch.basic_consume(a.queue, on_message)
print(f"worker-pika.py: {a.wid} consuming {a.queue} ({key})", file=sys.stderr, flush=True)
ch.start_consuming()
while held[0]:  # stopped: finish and ack what was delivered, then close
    conn.process_data_events(0.1)
conn.close()
