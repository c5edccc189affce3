#!/bin/sh
# SPDX-License-Identifier: MIT
# one-box.sh: the whole balancer on one machine without systemd: the
# pipeline, its stats sockets, two workers; mqlb-stat shows them all.
# usage: one-box.sh [broker-port]   (a mosquitto must listen there)
set -eu
port=${1:-1883}
run=${TMPDIR:-/tmp}/mqlb-one-box.$$
mkdir -m 700 "$run"
trap 'kill $(jobs -p) 2>/dev/null; wait; rm -rf "$run"' EXIT INT TERM
mqlb-sub -p "$port" --listen "$run/sub.sock" |
	mqlb-auction -p "$port" --listen "$run/auction.sock" |
	mqlb-dispatch -p "$port" --listen "$run/dispatch.sock" &
# Two workers of group "jobs", two slots each; the payload goes to cat.
mqlb-worker -p "$port" -g jobs -t 'jobs/#' -j 2 --listen "$run/w1.sock" -- cat &
mqlb-worker -p "$port" -g jobs -t 'jobs/#' -j 2 --listen "$run/w2.sock" -- cat &
echo "publish with: mosquitto_pub -p $port -t jobs/1 -m hello" >&2
sleep 1
mqlb-stat --watch 2 "$run"/*.sock
