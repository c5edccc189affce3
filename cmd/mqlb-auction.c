/* SPDX-License-Identifier: MIT */
/* mqlb-auction: turns msg records into assign records, giving each message
 * to one free worker of every interested group: straight to a token holder
 * when the group has one, else by asking on P/req and taking the first bid.
 * Also tracks done acks, dead workers and deadlines (PROTOCOL.md). */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "auction/auction.h"
#include "log.h"
#include "opt.h"

static const char usage[] =
	"usage: mqlb-auction [-v] [--quiet] [-o file] [-h host] [-p port] [-u user] [-P password]\n"
	"                    [-i id] [-V 5|311] [-k keepalive] [--cafile file] [--capath dir]\n"
	"                    [--cert file] [--key file] [--insecure] [--prefix prefix] [--retries n]\n"
	"                    [--ready-fd n] [--listen path] [--socket-mode mode]\n"
	"                    [--token-ttl seconds] [--retry seconds,...] [--deadline seconds]\n"
	"                    [--max-pending n] [--ack-timeout seconds] [--max-attempts n]\n"
	"                    [--drain-timeout seconds] [--scheme soonest|least|first]\n"
	"                    [--credit-ttl seconds] [--ahead seconds] [--batch-wait seconds]\n"
	"                    [--collect seconds]\n";

struct auction S;

static void opt(int c, const char *arg)
{
	switch (c) {
	case 1: S.token_ttl = opt_secs("--token-ttl", arg, 0.001, 3600); break;
	case 2: S.nretry = opt_secs_list("--retry", arg, S.retry, MAX_RETRY); break;
	case 3: S.deadline = opt_secs("--deadline", arg, 0.001, 86400 * 7); break;
	case 4: S.max_pending = opt_long("--max-pending", arg, 1, 100000000); break;
	case 5: S.ack_timeout = opt_secs("--ack-timeout", arg, 0, 86400 * 7); break;
	case 6: S.max_attempts = (int)opt_long("--max-attempts", arg, 1, 1000); break;
	case 7: S.st.drain_timeout = opt_secs("--drain-timeout", arg, 0, 86400); break;
	case 8:
		if (!strcmp(arg, "soonest"))
			S.scheme = SCHEME_SOONEST;
		else if (!strcmp(arg, "least"))
			S.scheme = SCHEME_LEAST;
		else if (!strcmp(arg, "first"))
			S.scheme = SCHEME_FIRST;
		else
			opt_usage_error("--scheme: \"%s\" is not soonest, least or first", arg);
		break;
	case 9: S.credit_ttl = opt_secs("--credit-ttl", arg, 0.001, 86400); break;
	case 10: S.ahead = opt_secs("--ahead", arg, 0, 10); break;
	case 11: S.batch_wait = opt_secs("--batch-wait", arg, 0, 1); break;
	}
}

static const struct option longopts[] = {
	{ "token-ttl", required_argument, NULL, 1 },
	{ "retry", required_argument, NULL, 2 },
	{ "deadline", required_argument, NULL, 3 },
	{ "max-pending", required_argument, NULL, 4 },
	{ "ack-timeout", required_argument, NULL, 5 },
	{ "max-attempts", required_argument, NULL, 6 },
	{ "drain-timeout", required_argument, NULL, 7 },
	{ "scheme", required_argument, NULL, 8 },
	{ "credit-ttl", required_argument, NULL, 9 },
	{ "ahead", required_argument, NULL, 10 },
	{ "batch-wait", required_argument, NULL, 11 },
	{ NULL, 0, NULL, 0 },
};


static void pend_exit(void) { pend_flush_cb(S.st.loop, NULL, 0); }

int main(int argc, char **argv)
{
	static const double default_retry[] = { 0.05, 0.1, 0.2, 0.5, 1 };
	size_t buckets = 1024;

	S.token_ttl = 0.8;
	S.deadline = 30;
	S.max_pending = 10000;
	S.ack_timeout = 60;
	S.max_attempts = 3;
	S.st.drain_timeout = 10;
	S.credit_ttl = 30;
	S.ahead = 0.002;
	S.batch_wait = 0.002;
	opt_parse(&argc, &argv, OPT_MQTT | OPT_LISTEN | OPT_READY | OPT_COLLECT, "", longopts, opt,
		  usage, &S.cf);
	if (optind < argc)
		opt_usage_error("unexpected argument \"%s\"", argv[optind]);
	if (S.ack_timeout > 0 && S.batch_wait >= S.ack_timeout)
		opt_usage_error("--batch-wait (%g s) must be shorter than --ack-timeout (%g s)",
				S.batch_wait, S.ack_timeout);
	if (!S.nretry) {
		memcpy(S.retry, default_retry, sizeof default_retry);
		S.nretry = sizeof default_retry / sizeof *default_retry;
	}
	S.plen = strlen(S.cf.prefix);
	while (buckets < (size_t)S.max_pending * 2 && buckets < (1u << 26))
		buckets <<= 1;
	S.hash = calloc(buckets, sizeof *S.hash);
	if (!S.hash)
		die(EXIT_SYSERR, "out of memory");
	S.hmask = buckets - 1;

	stage_open(&S.st, &S.cf, on_drain, stats_line, signal_cb, drain_cb);
	S.st.out_closed = on_out_closed;
	ev_timer_init(&S.purge, purge_cb, 1, S.token_ttl < 1 ? S.token_ttl : 1);
	ev_timer_start(S.st.loop, &S.purge);
	ev_timer_init(&S.acks, ack_cb, 0.25, S.ack_timeout > 4 ? 1 : S.ack_timeout / 4 + 0.01);
	if (S.ack_timeout > 0)
		ev_timer_start(S.st.loop, &S.acks);
	S.st.at_exit = pend_exit;
	ev_prepare_init(&S.pend_flush, pend_flush_cb);
	ev_set_priority(&S.pend_flush, EV_MAXPRI);
	ev_timer_init(&S.batch_t, batch_cb, 0, 0);
	ev_timer_init(&S.unpark, unpark_cb, 0, 0);
	ev_prepare_start(S.st.loop, &S.pend_flush);
	ev_unref(S.st.loop);
	stage_start(&S.st, &S.cf, &auction_cb, on_line, on_eof);
	ev_run(S.st.loop, 0);
	return EXIT_OK;
}
