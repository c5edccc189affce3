# SPDX-License-Identifier: MIT
# spy.bash: the worker protocol seen from outside, for the worker tests with
# mosquitto_pub/mosquitto_sub playing the balancer: three job uuids, a spy on
# every protocol message, and a check of what it saw.

U1=11111111-2222-4333-8444-555555555551
U2=11111111-2222-4333-8444-555555555552
U3=11111111-2222-4333-8444-555555555553

# spy [hex]: every protocol message as "topic|payload" in $T/spy.out (with
# hex, also as "topic|hex payload" in $T/hex.out, for payloads of several
# lines), running before the function returns (a marker it saw proves the
# subscription).
spy() {
	bg spy mosquitto_sub -p "$BROKER_PORT" -h 127.0.0.1 -V 5 -t "$PREFIX/#" -F '%t|%p'
	if [ "${1-}" = hex ]; then
		bg hex mosquitto_sub -p "$BROKER_PORT" -h 127.0.0.1 -V 5 -t "$PREFIX/#" -F '%t|%x'
		wait_for 10 eval "pub $PREFIX/mark m; grep -q '^$PREFIX/mark|' '$T/spy.out' &&
			grep -qx '$PREFIX/mark|6d' '$T/hex.out'"
	else
		wait_for 10 eval "pub $PREFIX/mark m; grep -q '^$PREFIX/mark|' '$T/spy.out'"
	fi
}
seen() { grep -qxF -- "$1" "$T/spy.out"; }
