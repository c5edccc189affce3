/* SPDX-License-Identifier: MIT */
/* mqlb-worker: a balanced MQTT worker on libmqlb. Runs COMMAND per job
 * (payload on stdin), or trades work/done records with a coprocess. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "io.h"
#include "log.h"
#include "mqlb.h"
#include "opt.h"
#include "record.h"
#include "sock.h"

static const char usage[] =
	"usage: mqlb-worker -g group -t topic [-v] [--quiet] [-o file] [-j slots]\n"
	"                   [--wid id] [--ahead n] [--batch n] [--bid]\n"
	"                   [--reserve-timeout seconds]\n"
	"                   [--suback-timeout seconds] [--fallback share|direct|none]\n"
	"                   [--queue n] [--drain-timeout seconds] [--reply | --no-reply]\n"
	"                   [-h host] [-p port] [-u user] [-P password] [-i id] [-q qos]\n"
	"                   [-V 5|311] [-k keepalive] [--cafile file] [--capath dir]\n"
	"                   [--cert file] [--key file] [--insecure] [--prefix prefix]\n"
	"                   [--retries n] [--ready-fd n] [--listen path]\n"
	"                   [--socket-mode mode] [-- command [arg ...]]\n";

#define MAX_LINE (64u << 20)
#define MAX_REPLY (16u << 20)

/* One running COMMAND. */
struct child {
	struct child *next;
	char *id;
	pid_t pid;
	ev_child cw;
	ev_io inw, outw;
	const char *payload;
	size_t len, off;
	char *reply;
	size_t rlen, rcap;
	int status, exited, reading, capture;
};

static struct {
	struct conf cf;
	struct mqlb_worker_opts wo;
	struct ev_loop *loop;
	struct mqlb_worker *w;
	struct in in;
	struct out out;
	struct srv srv;
	ev_signal sigterm, sigint;
	char **cmd;
	struct child *children;
	double drain_timeout;
	int reply, stopping;
	unsigned long n_malformed, n_unknown;
} S;

static void opt(int c, const char *arg)
{
	switch (c) {
	case 'g': S.wo.group = opt_level("-g", arg); break;
	case 't':
		if (S.wo.topic)
			opt_usage_error("-t: one topic per worker");
		if (!*arg || mosquitto_sub_topic_check(arg) != MOSQ_ERR_SUCCESS)
			opt_usage_error("-t: \"%s\" is not a valid topic filter", arg);
		if (!strncmp(arg, "$share/", 7))
			opt_usage_error("-t: \"%s\": give the plain filter, not a shared one", arg);
		S.wo.topic = arg;
		break;
	case 'j': S.wo.slots = (int)opt_long("-j", arg, 1, 100000); break;
	case 1: S.wo.wid = opt_level("--wid", arg); break;
	case 2: S.wo.reserve_timeout = opt_secs("--reserve-timeout", arg, 0.01, 3600); break;
	case 3: S.wo.suback_timeout = opt_secs("--suback-timeout", arg, 0.01, 86400); break;
	case 4:
		if (!strcmp(arg, "share"))
			S.wo.fallback = MQLB_FALLBACK_SHARE;
		else if (!strcmp(arg, "direct"))
			S.wo.fallback = MQLB_FALLBACK_DIRECT;
		else if (!strcmp(arg, "none"))
			S.wo.fallback = MQLB_FALLBACK_NONE;
		else
			opt_usage_error("--fallback: \"%s\" is not share, direct or none", arg);
		break;
	case 5: S.wo.queue = (int)opt_long("--queue", arg, 1, 10000000); break;
	case 6: S.drain_timeout = opt_secs("--drain-timeout", arg, 0, 86400); break;
	case 7: S.reply = 1; break;
	case 8: S.reply = 0; break;
	case 9: S.wo.bid = 1; break;
	case 10: S.wo.ahead = (int)opt_long("--ahead", arg, 0, 65535); break;
	case 11: S.wo.batch = (int)opt_long("--batch", arg, 0, 65535); break;
	}
}

static const struct option longopts[] = {
	{ "group", required_argument, NULL, 'g' },
	{ "topic", required_argument, NULL, 't' },
	{ "slots", required_argument, NULL, 'j' },
	{ "wid", required_argument, NULL, 1 },
	{ "reserve-timeout", required_argument, NULL, 2 },
	{ "suback-timeout", required_argument, NULL, 3 },
	{ "fallback", required_argument, NULL, 4 },
	{ "queue", required_argument, NULL, 5 },
	{ "drain-timeout", required_argument, NULL, 6 },
	{ "reply", no_argument, NULL, 7 },
	{ "no-reply", no_argument, NULL, 8 },
	{ "bid", no_argument, NULL, 9 },
	{ "ahead", required_argument, NULL, 10 },
	{ "batch", required_argument, NULL, 11 },
	{ NULL, 0, NULL, 0 },
};

/* Command mode ----------------------------------------------------------- */

static void child_finish(struct child *c)
{
	char reason[32];
	int ok = 0;

	if (!c->exited || c->reading)
		return;
	ev_io_stop(S.loop, &c->inw);
	if (c->inw.fd >= 0)
		close(c->inw.fd);
	if (WIFEXITED(c->status) && WEXITSTATUS(c->status) == 0)
		ok = 1;
	else if (WIFEXITED(c->status))
		snprintf(reason, sizeof reason, "exit=%d", WEXITSTATUS(c->status));
	else
		snprintf(reason, sizeof reason, "signal=%d", WTERMSIG(c->status));
	for (struct child **pp = &S.children; *pp; pp = &(*pp)->next)
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	mqlb_worker_done(S.w, c->id, ok, ok ? NULL : reason, c->capture ? (c->reply ? c->reply : "") : NULL,
			 c->rlen);
	free(c->reply);
	free(c->id);
	free(c);
}

static void child_cb(struct ev_loop *loop, ev_child *cw, int revents)
{
	struct child *c = cw->data;

	ev_child_stop(loop, cw);
	c->status = cw->rstatus;
	c->exited = 1;
	child_finish(c);
}

static void stdin_cb(struct ev_loop *loop, ev_io *iw, int revents)
{
	struct child *c = iw->data;
	ssize_t n = write(iw->fd, c->payload + c->off, c->len - c->off);

	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0)
		c->off += (size_t)n;
	/* Done, or the command does not read its stdin (EPIPE): close it. */
	if (n < 0 || c->off == c->len) {
		ev_io_stop(loop, iw);
		close(iw->fd);
		iw->fd = -1;
	}
}

static void stdout_cb(struct ev_loop *loop, ev_io *ow, int revents)
{
	struct child *c = ow->data;
	ssize_t n;

	if (c->rcap - c->rlen < 4096) {
		c->rcap = c->rcap ? c->rcap * 2 : 8192;
		if (!(c->reply = realloc(c->reply, c->rcap)))
			die(EXIT_SYSERR, "out of memory");
	}
	n = read(ow->fd, c->reply + c->rlen, c->rcap - c->rlen);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n > 0 && c->rlen + (size_t)n <= MAX_REPLY) {
		c->rlen += (size_t)n;
		return;
	}
	if (n > 0)
		warnl("job %s: reply longer than %u bytes, cut", c->id, MAX_REPLY);
	ev_io_stop(loop, ow);
	close(ow->fd);
	c->reading = 0;
	child_finish(c);
}

/* Does the props field hold a response topic? */
static int has_rt(const char *props)
{
	return props && (!strncmp(props, "rt=", 3) || strstr(props, ",rt="));
}

static void exec_child(const char *id, const char *mtopic, int in, int out)
{
	dup2(in, STDIN_FILENO);
	if (out >= 0)
		dup2(out, STDOUT_FILENO);
	/* The broker socket, --listen and the pipes are not the command's. */
	close_range(3, ~0U, 0);
	setenv("MQLB_ID", id, 1);
	setenv("MQLB_TOPIC", mtopic, 1);
	setenv("MQLB_GROUP", S.wo.group, 1);
	setenv("MQLB_WID", mqlb_worker_wid(S.w), 1);
	signal(SIGPIPE, SIG_DFL);
	execvp(S.cmd[0], S.cmd);
	fprintf(stderr, "mqlb-worker: error: cannot run %s: %s\n", S.cmd[0], strerror(errno));
	_exit(127);
}

static void run_command(struct mqlb_worker *w, const char *id, int qos, const char *mtopic,
			const void *payload, size_t len, const char *props, void *arg)
{
	struct child *c = calloc(1, sizeof *c);
	int pin[2], pout[2] = { -1, -1 };

	if (!c || !(c->id = strdup(id)))
		die(EXIT_SYSERR, "out of memory");
	c->capture = S.reply && has_rt(props);
	if (pipe2(pin, O_CLOEXEC) < 0 || (c->capture && pipe2(pout, O_CLOEXEC) < 0))
		die(EXIT_SYSERR, "pipe: %s", strerror(errno));
	c->pid = fork();
	if (c->pid < 0)
		die(EXIT_SYSERR, "fork: %s", strerror(errno));
	if (c->pid == 0)
		exec_child(id, mtopic, pin[0], pout[1]);
	close(pin[0]);
	if (pout[1] >= 0)
		close(pout[1]);
	c->payload = payload;
	c->len = len;
	fd_nonblock(pin[1]);
	ev_io_init(&c->inw, stdin_cb, pin[1], EV_WRITE);
	c->inw.data = c;
	if (len) {
		ev_io_start(S.loop, &c->inw);
	} else {
		close(pin[1]);
		c->inw.fd = -1;
	}
	if (c->capture) {
		fd_nonblock(pout[0]);
		ev_io_init(&c->outw, stdout_cb, pout[0], EV_READ);
		c->outw.data = c;
		ev_io_start(S.loop, &c->outw);
		c->reading = 1;
	}
	/* Started before the loop runs again, so no exit is missed. */
	ev_child_init(&c->cw, child_cb, c->pid, 0);
	c->cw.data = c;
	ev_child_start(S.loop, &c->cw);
	c->next = S.children;
	S.children = c;
}

/* Record mode ------------------------------------------------------------ */

static void write_work(struct mqlb_worker *w, const char *id, int qos, const char *mtopic,
		       const void *payload, size_t len, const char *props, void *arg)
{
	out_raw(&S.out, "work", 4);
	out_str(&S.out, id);
	out_ulong(&S.out, (unsigned long)qos);
	out_str(&S.out, mtopic);
	out_field(&S.out, payload, len);
	if (props)
		out_raw(&S.out, props, strlen(props));
	out_end(&S.out);
}

static const char *check_record(struct rec *r, int ok)
{
	if (ok ? r->nf < 2 || r->nf > 3 : r->nf != 3)
		return ok ? "done takes <id> [<reply>]" : "fail takes <id> <reason>";
	if (rec_unescape_from(r, 1) >= 0)
		return "bad escape";
	if (!*r->f[1])
		return "empty id";
	if (!ok && (!*r->f[2] || strpbrk(r->f[2], " \t")))
		return "the reason must be one word";
	return NULL;
}

static void on_record(struct in *in, char *line, size_t n, void *arg)
{
	const char *why = NULL;
	struct rec r;
	int rc, ok;

	if ((rc = rec_split(line, n, &r)) == 1)
		return;
	ok = rc == 0 && rec_is(&r, 0, "done");
	if (rc < 0)
		why = "too many fields";
	else if (!ok && !rec_is(&r, 0, "fail"))
		why = "not a done or fail record";
	else
		why = check_record(&r, ok);
	if (why) {
		S.n_malformed++;
		warnl("line %lu: %s; skipped", in->lineno, why);
		return;
	}
	if (mqlb_worker_done(S.w, r.f[1], ok, ok ? NULL : r.f[2], ok && r.nf == 3 ? r.f[2] : NULL,
			     ok && r.nf == 3 ? r.len[2] : 0) < 0) {
		S.n_unknown++;
		warnl("line %lu: no job %s running; ignored", in->lineno, r.f[1]);
	}
}

static void stop(void);

static void on_eof(struct in *in, int err, void *arg)
{
	if (err)
		errl("cannot read records: %s", strerror(err));
	/* Nobody is left to finish what runs: hand it back at once. */
	infol("input closed; stopping");
	S.drain_timeout = 0;
	stop();
}

static void on_out_error(struct out *o, void *arg)
{
	if (o->err != EPIPE)
		errl("cannot write records: %s", strerror(o->err));
	S.drain_timeout = 0;
	stop();
}

/* Life cycle ------------------------------------------------------------- */

static void on_ready(struct mqlb_worker *w, void *arg) { ready_notify(S.cf.ready_fd); }

static void on_drained(struct mqlb_worker *w, int left, void *arg)
{
	/* What is still running was handed back to the balancer. */
	for (struct child *c = S.children; c; c = c->next)
		kill(c->pid, SIGTERM);
	mqlb_worker_free(S.w);
	if (!S.cmd)
		out_drain_blocking(&S.out);
	exit(EXIT_OK);
}

static void stop(void)
{
	/* Paused, not closed: we may be inside the reader's own callback. */
	if (!S.cmd && !S.in.eof)
		in_pause(&S.in);
	S.stopping++;
	mqlb_worker_drain(S.w, S.drain_timeout);
}

static void signal_cb(struct ev_loop *loop, ev_signal *sw, int revents)
{
	infol("signal %d: %s", sw->signum, S.stopping ? "stopping now" : "draining");
	stop();
}

static void stats_line(struct conn *c, char *line, size_t n, void *arg)
{
	struct mqlb_worker_stats st;

	if (!srv_stats_query(c, line, n))
		return;
	mqlb_worker_stats(S.w, &st);
	out_stat(&c->out, "slots", st.slots);
	out_stat(&c->out, "running", st.running);
	out_stat(&c->out, "reserved", st.reserved);
	out_stat(&c->out, "queued", st.queued);
	out_stat(&c->out, "requests", st.requests);
	out_stat(&c->out, "bids", st.bids);
	out_stat(&c->out, "late_bids", st.late_bids);
	out_stat(&c->out, "awards", st.awards);
	out_stat(&c->out, "over_awards", st.over_awards);
	out_stat(&c->out, "ahead", st.ahead);
	out_stat(&c->out, "batches", st.batches);
	out_stat(&c->out, "replayed", st.replayed);
	out_stat(&c->out, "busy", st.busy);
	out_stat(&c->out, "fallback", st.fallback);
	out_stat(&c->out, "fallback_deliveries", st.fallback_deliveries);
	out_stat(&c->out, "dropped", st.dropped);
	out_stat(&c->out, "done_ok", st.done_ok);
	out_stat(&c->out, "done_fail", st.done_fail);
	out_stat(&c->out, "subacks", st.subacks);
	out_stat(&c->out, "malformed", S.n_malformed);
	out_stat(&c->out, "connected", st.connected);
	out_stat(&c->out, "draining", (unsigned long)(S.stopping > 0));
	out_raw(&c->out, "ok", 2);
	out_end(&c->out);
}

static void setup_opts(void)
{
	const struct mq_opts *m = &S.cf.mq;

	S.wo.host = m->host;
	S.wo.port = m->port;
	S.wo.username = m->user;
	S.wo.password = m->pass;
	S.wo.client_id = m->id;
	S.wo.mqtt_version = m->version == MQTT_PROTOCOL_V311 ? 311 : 5;
	S.wo.keepalive = m->keepalive;
	S.wo.qos = m->qos;
	S.wo.cafile = m->cafile;
	S.wo.capath = m->capath;
	S.wo.certfile = m->cert;
	S.wo.keyfile = m->key;
	S.wo.tls_insecure = m->insecure;
	S.wo.retries = m->retries;
	S.wo.prefix = S.cf.prefix;
	S.wo.no_reply = !S.reply;
}

int main(int argc, char **argv)
{
	struct mqlb_worker_cb cb = { .ready = on_ready, .drained = on_drained };

	S.cf.mq.qos = 1;
	S.reply = 1;
	S.drain_timeout = 30;
	opt_parse(&argc, &argv, OPT_MQTT | OPT_QOS | OPT_LISTEN | OPT_READY, "g:t:j:", longopts, opt, usage, &S.cf);
	if (!S.wo.group)
		opt_usage_error("-g group is required");
	if (!S.wo.topic)
		opt_usage_error("-t topic is required");
	if (!strncmp(S.wo.topic, S.cf.prefix, strlen(S.cf.prefix)) &&
	    (S.wo.topic[strlen(S.cf.prefix)] == '/' || !S.wo.topic[strlen(S.cf.prefix)]))
		opt_usage_error("-t: \"%s\" is under the protocol prefix %s/", S.wo.topic, S.cf.prefix);
	if (S.wo.ahead && S.wo.bid)
		opt_usage_error("--ahead is for credit workers, not with --bid");
	if (S.wo.batch && S.wo.bid)
		opt_usage_error("--batch is for credit workers, not with --bid");
	if (optind < argc)
		S.cmd = argv + optind;
	setup_opts();

	signal(SIGPIPE, SIG_IGN);
	S.loop = EV_DEFAULT;
	cb.job = S.cmd ? run_command : write_work;
	if (!(S.w = mqlb_worker_new(S.loop, &S.wo, &cb, NULL)))
		die(EXIT_USAGE, "bad worker settings");
	if (!S.cmd) {
		out_init(&S.out, S.loop, STDOUT_FILENO, 1 << 20);
		S.out.on_error = on_out_error;
		in_init(&S.in, S.loop, STDIN_FILENO, MAX_LINE, on_record, on_eof, NULL);
	}
	srv_listen(&S.srv, S.loop, S.cf.listen, S.cf.socket_mode, stats_line);
	ev_signal_init(&S.sigterm, signal_cb, SIGTERM);
	ev_signal_init(&S.sigint, signal_cb, SIGINT);
	ev_signal_start(S.loop, &S.sigterm);
	ev_signal_start(S.loop, &S.sigint);

	mqlb_worker_start(S.w);
	ev_run(S.loop, 0);
	return EXIT_OK;
}
