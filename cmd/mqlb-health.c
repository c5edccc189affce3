/* SPDX-License-Identifier: MIT */
/* mqlb-health: probes MQTT brokers, turns their load into weights, and
 * writes vip/real/del records for mqlb-xdp; or, with --agent, reports the
 * load of the host it runs on. */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "health/health.h"
#include "io.h"
#include "log.h"
#include "record.h"
#include "sock.h"

static const char usage[] =
	"usage: mqlb-health [-v] [--quiet] [-o file] [--vip addr:port] [--interval seconds]\n"
	"                   [--fast-interval seconds] [--timeout seconds] [--rise n] [--fall n]\n"
	"                   [--weight n] [--cpu-high percent] [--mem-high percent]\n"
	"                   [--conns-slack n] [--smooth seconds] [--ramp seconds]\n"
	"                   [--remove-after seconds] [--discover] [--once] [-h host] [-p port]\n"
	"                   [-u user] [-P password] [-i id] [-V 5|311] [-k keepalive]\n"
	"                   [--cafile file] [--capath dir] [--cert file] [--key file] [--insecure]\n"
	"                   [--prefix prefix] [--retries n] [--ready-fd n] [--listen path]\n"
	"                   [--socket-mode mode] [--output path] [[id=]broker[:port] ...]\n"
	"       mqlb-health --agent [-v] [--quiet] [-o file] [--name id] [--announce host[:port]]\n"
	"                   [--fake-load cpu=percent,mem=percent] [--interval seconds] [-h host]\n"
	"                   [-p port] [-u user] [-P password] [-i id] [-V 5|311] [-k keepalive]\n"
	"                   [--cafile file] [--capath dir] [--cert file] [--key file] [--insecure]\n"
	"                   [--prefix prefix] [--retries n] [--ready-fd n]\n";

struct hconf H;
struct ev_loop *hloop;

static struct {
	const char *vip[H_MAXVIPS];
	int nvip, fast_set;
	struct in in;
	struct out out;
	struct outconn oc;
	struct srv srv;
	ev_signal sigterm, sigint;
	unsigned long n_bad;
} S;

enum {
	O_VIP = 1, O_INTERVAL, O_FAST, O_TIMEOUT, O_RISE, O_FALL, O_WEIGHT, O_CPUHIGH, O_MEMHIGH,
	O_SLACK, O_SMOOTH, O_RAMP, O_REMOVE, O_DISCOVER, O_ONCE, O_AGENT, O_NAME, O_ANNOUNCE, O_FAKE,
};

static const struct option longopts[] = {
	{ "vip", required_argument, NULL, O_VIP },
	{ "interval", required_argument, NULL, O_INTERVAL },
	{ "fast-interval", required_argument, NULL, O_FAST },
	{ "timeout", required_argument, NULL, O_TIMEOUT },
	{ "rise", required_argument, NULL, O_RISE },
	{ "fall", required_argument, NULL, O_FALL },
	{ "weight", required_argument, NULL, O_WEIGHT },
	{ "cpu-high", required_argument, NULL, O_CPUHIGH },
	{ "mem-high", required_argument, NULL, O_MEMHIGH },
	{ "conns-slack", required_argument, NULL, O_SLACK },
	{ "smooth", required_argument, NULL, O_SMOOTH },
	{ "ramp", required_argument, NULL, O_RAMP },
	{ "remove-after", required_argument, NULL, O_REMOVE },
	{ "discover", no_argument, NULL, O_DISCOVER },
	{ "once", no_argument, NULL, O_ONCE },
	{ "agent", no_argument, NULL, O_AGENT },
	{ "name", required_argument, NULL, O_NAME },
	{ "announce", required_argument, NULL, O_ANNOUNCE },
	{ "fake-load", required_argument, NULL, O_FAKE },
	{ NULL, 0, NULL, 0 },
};

static void opt(int c, const char *arg)
{
	switch (c) {
	case O_VIP:
		if (S.nvip == H_MAXVIPS)
			opt_usage_error("--vip: at most %d", H_MAXVIPS);
		S.vip[S.nvip++] = arg;
		break;
	case O_INTERVAL: H.interval = opt_secs("--interval", arg, 0.01, 3600); break;
	case O_FAST: H.fast = opt_secs("--fast-interval", arg, 0.01, 3600); S.fast_set = 1; break;
	case O_TIMEOUT: H.timeout = opt_secs("--timeout", arg, 0.01, 3600); break;
	case O_RISE: H.rise = (int)opt_long("--rise", arg, 1, 1000); break;
	case O_FALL: H.fall = (int)opt_long("--fall", arg, 1, 1000); break;
	case O_WEIGHT: H.weight = (unsigned long)opt_long("--weight", arg, 0, 65535); break;
	case O_CPUHIGH: H.cpu_high = (double)opt_long("--cpu-high", arg, 1, 100); break;
	case O_MEMHIGH: H.mem_high = (double)opt_long("--mem-high", arg, 1, 100); break;
	case O_SLACK: H.conns_slack = (unsigned long)opt_long("--conns-slack", arg, 0, 100000000); break;
	case O_SMOOTH: H.smooth = opt_secs("--smooth", arg, 0, 3600); break;
	case O_RAMP: H.ramp = opt_secs("--ramp", arg, 0, 3600); break;
	case O_REMOVE: H.remove_after = opt_secs("--remove-after", arg, 0, 1e6); break;
	case O_DISCOVER: H.discover = 1; break;
	case O_ONCE: H.once = 1; break;
	case O_AGENT: H.agent = 1; break;
	case O_NAME: H.name = opt_level("--name", arg); break;
	case O_ANNOUNCE:
		if (!*arg || strpbrk(arg, " \t\n"))
			opt_usage_error("--announce: bad address \"%s\" (host[:port])", arg);
		H.announce = arg;
		break;
	case O_FAKE:
		if (parse_fake_load(arg) < 0)
			opt_usage_error("--fake-load: bad load \"%s\" (cpu=percent,mem=percent)", arg);
		break;
	}
}

/* [id=]host[:port], host an IPv6 address in brackets when a port follows. */
static void add_arg_broker(char *spec)
{
	char *id = NULL, *host = spec, *eq = strchr(spec, '='), *colon = NULL, *end;
	long port = 0;

	if (eq) {
		*eq = '\0';
		id = (char *)opt_level("broker id", spec);
		host = eq + 1;
	}
	if (*host == '[') {
		char *rb = strchr(host, ']');

		if (!rb || (rb[1] && rb[1] != ':'))
			opt_usage_error("bad broker \"%s\"", host);
		*rb = '\0';
		colon = rb[1] ? rb + 1 : NULL;
		host++;
	} else if ((colon = strchr(host, ':')) && strchr(colon + 1, ':')) {
		colon = NULL; /* a bare IPv6 address */
	}
	if (colon) {
		*colon = '\0';
		port = opt_long("broker port", colon + 1, 1, 65535);
	}
	if (!*host || strlen(host) > 255)
		opt_usage_error("bad broker \"%s\"", spec);
	(void)end;
	for (int i = 0; i < S.nvip; i++) {
		int vn = vip_find(S.vip[i]);

		if (broker_find(vn, host))
			opt_usage_error("broker %s given twice", host);
		broker_add(vn, id, host, (int)port, H.weight, ORIGIN_ARG);
	}
}

static void handle(char *line, size_t n, unsigned long lineno, const char *who)
{
	struct rec r;
	int rc = rec_split(line, n, &r);
	const char *err;

	if (rc == 1)
		return;
	err = rc < 0 ? "too many fields" : state_record(&r);
	if (err) {
		S.n_bad++;
		warnl("%sline %lu: %s; skipped", who, lineno, err);
	}
}

static void stdin_line(struct in *in, char *line, size_t n, void *arg)
{
	handle(line, n, in->lineno, "");
}

/* Brokers in the records that are there at start belong to the initial
 * state (no ramp): it waits for the end of input, or --timeout. */
static ev_timer stdin_grace;
static int stdin_holds;

static void stdin_release(void)
{
	if (!stdin_holds)
		return;
	stdin_holds = 0;
	ev_timer_stop(hloop, &stdin_grace);
	state_block_ready(-1);
}

static void stdin_grace_cb(struct ev_loop *loop, ev_timer *w, int revents) { stdin_release(); }

static void stdin_eof(struct in *in, int err, void *arg)
{
	if (err)
		warnl("stdin: %s", strerror(err));
	in_close(in);
	stdin_release();
}

static void sock_line(struct conn *c, char *line, size_t n, void *arg)
{
	if (n == 5 && !memcmp(line, "stats", 5)) {
		state_stats(&c->out);
		out_stat(&c->out, "bad_records", S.n_bad);
		out_raw(&c->out, "ok", 2);
		out_end(&c->out);
		return;
	}
	handle(line, n, c->in.lineno, "socket ");
}

static void out_error(struct out *o, void *arg)
{
	if (o->err != EPIPE)
		die(EXIT_SYSERR, "cannot write records: %s", strerror(o->err));
	exit(EXIT_OK);
}

/* outconn notices a gone peer only when a write fails, and a health loop
 * with nothing changing may not write for hours: watch the socket for the
 * peer's EOF too, so a restarted mqlb-xdp gets the state at once. */
static ev_io peer_w;
static out_fn *outconn_error;

static void peer_gone(struct out *o, void *arg)
{
	ev_io_stop(hloop, &peer_w);
	outconn_error(o, arg);
}

static void peer_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	char buf[4096];
	ssize_t r = read(w->fd, buf, sizeof buf);

	/* Whatever the peer says is not for us; only its end matters. */
	if (r > 0 || (r < 0 && (errno == EAGAIN || errno == EINTR)))
		return;
	S.oc.out.err = r == 0 ? EPIPE : errno;
	peer_gone(&S.oc.out, S.oc.out.arg);
}

static void out_connected(struct outconn *oc, void *arg)
{
	if (!outconn_error) {
		outconn_error = oc->out.on_error;
		oc->out.on_error = peer_gone;
	}
	ev_io_stop(hloop, &peer_w);
	ev_io_init(&peer_w, peer_cb, oc->out.fd, EV_READ);
	ev_io_start(hloop, &peer_w);
	state_full();
}

static void on_ready(void)
{
	struct out *o = H.cf.output ? &S.oc.out : &S.out;

	if (H.once) {
		if (out_drain_blocking(o) < 0 && o->err != EPIPE)
			die(EXIT_SYSERR, "cannot write records: %s", strerror(o->err));
		exit(state_any_up() ? EXIT_OK : EXIT_NEGATIVE);
	}
	/* Ready means written: a reader woken by it finds the whole state in
	 * the file or pipe, not an empty one (the loop flushes only later). */
	if (!H.cf.output)
		out_flush(o);
	ready_notify(H.cf.ready_fd);
}

static void stop(struct ev_loop *loop, ev_signal *w, int revents)
{
	control_stop();
	out_drain_blocking(H.cf.output ? &S.oc.out : &S.out);
	exit(EXIT_OK);
}

static void validate(int nargs)
{
	const char *err;

	if (H.agent) {
		if (nargs || S.nvip || H.discover || H.once || H.cf.output || H.cf.listen)
			opt_usage_error("--agent takes no brokers, --vip, --discover, --once, --output or --listen");
		return;
	}
	if (H.name || H.announce || H.fake)
		opt_usage_error("--name, --announce and --fake-load go with --agent");
	if ((nargs || H.discover) && !S.nvip)
		opt_usage_error("brokers and --discover need a --vip");
	if (H.fast > H.interval)
		opt_usage_error("--fast-interval is longer than --interval");
	if (H.once && H.cf.output)
		opt_usage_error("--once writes to standard output, not --output");
	for (int i = 0; i < S.nvip; i++)
		if (vip_add(S.vip[i], 0, &err) < 0)
			opt_usage_error("--vip: %s \"%s\"", err, S.vip[i]);
}

static void setup_io(void)
{

	if (H.cf.output) {
		state_set_output(&S.oc.out);
		outconn_init(&S.oc, hloop, H.cf.output, 1 << 20, out_connected, NULL);
	} else {
		out_init(&S.out, hloop, STDOUT_FILENO, 1 << 20);
		S.out.on_error = out_error;
		state_set_output(&S.out);
	}
	srv_listen(&S.srv, hloop, H.cf.listen, H.cf.socket_mode, sock_line);
	/* Records may come on stdin; a terminal is not a record stream. */
	if (!isatty(STDIN_FILENO)) {
		in_init(&S.in, hloop, STDIN_FILENO, 1 << 16, stdin_line, stdin_eof, NULL);
		stdin_holds = 1;
		state_block_ready(1);
		if (!H.once) {
			ev_timer_init(&stdin_grace, stdin_grace_cb, H.timeout, 0);
			ev_timer_start(hloop, &stdin_grace);
		}
	}
	ev_signal_init(&S.sigterm, stop, SIGTERM);
	ev_signal_init(&S.sigint, stop, SIGINT);
	ev_signal_start(hloop, &S.sigterm);
	ev_signal_start(hloop, &S.sigint);
}

int main(int argc, char **argv)
{
	static char host[256];
	int first;

	H.interval = 1;
	H.fast = -1;
	H.timeout = 0.5;
	H.rise = H.fall = 2;
	H.weight = 100;
	H.cpu_high = H.mem_high = 90;
	H.conns_slack = 100;
	H.smooth = 3;
	H.ramp = 10;
	H.remove_after = 30;
	H.cf.mq.keepalive = 5;
	first = opt_parse(&argc, &argv, OPT_MQTT | OPT_LISTEN | OPT_OUTPUT | OPT_READY, "", longopts,
			  opt, usage, &H.cf);
	if (!S.fast_set)
		H.fast = H.interval / 4;
	validate(argc - first);
	signal(SIGPIPE, SIG_IGN);
	hloop = EV_DEFAULT;
	if (H.agent) {
		if (!H.name) {
			if (gethostname(host, sizeof host - 1) < 0 || !*host)
				die(EXIT_SYSERR, "cannot get the host name: %s", strerror(errno));
			H.name = opt_level("host name", host);
		}
		return agent_run();
	}
	for (int i = first; i < argc; i++)
		add_arg_broker(argv[i]);
	state_on_ready = on_ready;
	setup_io();
	if (H.discover)
		control_start();
	brokers_start();
	ev_run(hloop, 0);
	return EXIT_OK;
}
