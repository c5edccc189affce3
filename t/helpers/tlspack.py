#!/usr/bin/env python3
# SPDX-License-Identifier: MIT
# tlspack.py: a TLS front for a plain MQTT broker that packs what the broker sends into full
# TLS records, hundreds of MQTT packets each (mosquitto's own TLS sends a record a packet).
# usage: tlspack.py CERT KEY BROKER-PORT PORT-FILE [IDLE-SECONDS]
# Listens on a free 127.0.0.1 port, written to PORT-FILE once it accepts. What the broker
# sends waits until it has been quiet IDLE seconds (0.2), or for 2 s, then leaves as full
# 16 KiB records, the short one first: a burst ends with a full record, as from a TLS
# terminator that buffers.
import os
import select
import socket
import ssl
import sys
import threading
import time

REC = 16384  # the largest TLS record's plaintext
HOLD_MAX = 2.0  # seconds: a steady trickle leaves too


def pack(tls, buf):
    """Send buf as records of REC bytes, the remainder first."""
    first = len(buf) % REC
    if first:
        tls.sendall(buf[:first])
    for i in range(first, len(buf), REC):
        tls.sendall(buf[i:i + REC])


def serve(ctx, conn, broker_port, idle):
    try:
        tls = ctx.wrap_socket(conn, server_side=True)
        up = socket.create_connection(("127.0.0.1", broker_port))
    except (OSError, ssl.SSLError):
        conn.close()
        return
    held = b""
    since = 0.0
    try:
        while True:
            wait = None
            if held:
                wait = max(0.0, min(idle, since + HOLD_MAX - time.monotonic()))
            r, _, _ = select.select([tls, up], [], [], wait)
            if held and (not r or time.monotonic() >= since + HOLD_MAX):
                pack(tls, held)
                held = b""
            if not r:
                continue
            if tls in r:
                # All the plaintext OpenSSL has, not only what select saw.
                data = tls.recv(65536)
                while data and tls.pending():
                    data += tls.recv(tls.pending())
                if not data:
                    break
                up.sendall(data)
            if up in r:
                data = up.recv(65536)
                if not data:
                    break
                if not held:
                    since = time.monotonic()
                held += data
                if len(held) >= 64 * REC:
                    pack(tls, held)
                    held = b""
    except (OSError, ssl.SSLError):
        pass
    finally:
        for s in (tls, up):
            try:
                s.close()
            except OSError:
                pass


def main():
    cert, key, broker_port, port_file = sys.argv[1:5]
    idle = float(sys.argv[5]) if len(sys.argv) > 5 else 0.2
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    lsn = socket.socket()
    lsn.bind(("127.0.0.1", 0))
    lsn.listen(16)
    with open(port_file + ".tmp", "w") as f:
        f.write("%d\n" % lsn.getsockname()[1])
    os.rename(port_file + ".tmp", port_file)
    while True:
        conn, _ = lsn.accept()
        threading.Thread(target=serve, args=(ctx, conn, int(broker_port), idle),
                         daemon=True).start()


if __name__ == "__main__":
    main()
