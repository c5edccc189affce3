#!/bin/sh
# SPDX-License-Identifier: MIT
# cluster.sh: several services on one cluster of bridged mosquittos, each
# with a VIP of its own (run as root on the host that holds the VIPs):
#   devices, MQTT        192.0.2.10:1883  10.0.0.11-13, equal weights
#   devices, WebSockets  192.0.2.10:9001  the same brokers
#   backend workers      192.0.2.11:1883  10.0.0.12, and 10.0.0.13 taking
#                                         twice its share
# One mqlb-xdp serves the three; one health loop per set of brokers writes
# into its socket. The brokers hold both VIPs on lo (arp_ignore=1,
# arp_announce=2); 10.0.0.12 and .13 bridge to 10.0.0.11 as in
# mosquitto-spoke.conf, and the balancer connects to 10.0.0.11.
set -eu
S=/run/mqlb-xdp.sock
mqlb-xdp -i eth0 --listen "$S" </dev/null &
while [ ! -S "$S" ]; do sleep 0.1; done
# The probes speak plain MQTT: the websockets VIP's brokers are probed on
# their plain port.
mqlb-health --vip 192.0.2.10:1883 --vip 192.0.2.10:9001 \
	10.0.0.11:1883 10.0.0.12:1883 10.0.0.13:1883 --output "$S" </dev/null &
cat <<RECORDS |
vip 192.0.2.11:1883
real 192.0.2.11:1883 10.0.0.12 100
real 192.0.2.11:1883 10.0.0.13 200
RECORDS
	mqlb-health --output "$S" &
wait
# Elsewhere: mqlb-stat /run/mqlb-xdp.sock
