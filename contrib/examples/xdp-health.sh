#!/bin/sh
# SPDX-License-Identifier: MIT
# xdp-health.sh: the load balancer without systemd (run as root): mqlb-health
# probes the brokers and feeds mqlb-xdp on eth0 through a pipe.
# Two services on one cluster, each VIP with its own reals and weights:
# devices connect to 192.0.2.10:1883 (three brokers), backend workers to
# 192.0.2.11:1883 (two brokers, the second one taking twice the share).
set -eu
cat <<RECORDS |
vip 192.0.2.10:1883
real 192.0.2.10:1883 10.0.0.11 100
real 192.0.2.10:1883 10.0.0.12 100
real 192.0.2.10:1883 10.0.0.13 100
vip 192.0.2.11:1883
real 192.0.2.11:1883 10.0.0.14 100
real 192.0.2.11:1883 10.0.0.15 200
RECORDS
	mqlb-health --listen /run/mqlb-health.sock |
	mqlb-xdp -i eth0 --listen /run/mqlb-xdp.sock
# Elsewhere: mqlb-stat /run/mqlb-health.sock /run/mqlb-xdp.sock
