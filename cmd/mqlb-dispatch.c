/* SPDX-License-Identifier: MIT */
/* mqlb-dispatch: publishes each assign (award) record's payload to the
 * chosen worker's P/work (P/job) topic and writes a sent record once the
 * broker has it; every other record passes through. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"
#include "log.h"
#include "mqtt.h"
#include "opt.h"
#include "props.h"
#include "record.h"
#include "sock.h"
#include "stage.h"

static const char usage[] =
	"usage: mqlb-dispatch [-v] [--quiet] [-o file] [-h host] [-p port] [-u user] [-P password]\n"
	"                     [-i id] [-q qos] [-V 5|311] [-k keepalive] [--cafile file]\n"
	"                     [--capath dir] [--cert file] [--key file] [--insecure]\n"
	"                     [--prefix prefix] [--retries n] [--ready-fd n] [--listen path]\n"
	"                     [--socket-mode mode] [--max-inflight n] [--drain-timeout secs]\n"
	"                     [--batch-qos 0|1|2] [--collect seconds]\n";

/* An award the broker has not acknowledged yet, by message id. */
struct flight {
	char uuid[37];
	char *group, *wid;
	size_t gcap, wcap;
	/* kept for a drop record should the broker refuse it; the buffers
	 * are reused, so a steady stream allocates nothing */
	char *mtopic, *payload, *props;
	size_t mcap, pcap, plen, prcap;
	int used, credit;
	int batch; /* several awards: payload holds their "job ..." lines */
};

/* Awards for one credit worker that takes batches, announced by a batch
 * record and sent as one message on P/job/group/wid/batch, a "job uuid qos
 * mtopic payload [props]" line each. */
struct batch {
	char *group, *wid;
	size_t gcap, wcap;
	char *buf;
	size_t len, cap;
	unsigned long want, have;
	int qos, open;
};

static struct {
	struct conf cf;
	struct stage st;
	struct flight *fl; /* indexed by mid: 16 bits */
	long inflight, max_inflight;
	char *topic;
	size_t topiccap;
	char *props; /* the award's props field as read, for a drop record */
	size_t propscap;
	struct batch b;
	int batch_qos; /* --batch-qos: at most this QoS for a batch message */
	ev_prepare batch_flush;
	unsigned long n_assign, n_sent, n_failed, n_bad, n_passed, n_shutdown, n_handed, n_batches;
} S;

static void opt(int c, const char *arg)
{
	if (c == 1)
		S.max_inflight = opt_long("--max-inflight", arg, 1, 65000);
	else if (c == 2)
		S.st.drain_timeout = opt_secs("--drain-timeout", arg, 0, 86400);
	else if (c == 3)
		S.batch_qos = (int)opt_long("--batch-qos", arg, 0, 2);
}

static const struct option longopts[] = {
	{ "max-inflight", required_argument, NULL, 1 },
	{ "drain-timeout", required_argument, NULL, 2 },
	{ "batch-qos", required_argument, NULL, 3 },
	{ NULL, 0, NULL, 0 },
};

static void keep(char **dst, size_t *cap, const char *s, size_t n)
{
	if (n + 1 > *cap) {
		*cap = n + 32;
		*dst = realloc(*dst, *cap);
		if (!*dst)
			die(EXIT_SYSERR, "out of memory");
	}
	memcpy(*dst, s, n);
	(*dst)[n] = '\0';
}

static void at_exit_warn(void)
{
	if (S.inflight)
		warnl("%ld award%s not acknowledged by the broker at exit", S.inflight,
		      S.inflight == 1 ? "" : "s");
}

/* Stopping or not, input is read to its end: an award left in the pipe at
 * exit would reach nobody, and nobody would know. */
static void flow(void)
{
	if (S.st.input_done && S.inflight == 0)
		stage_finish(&S.st);
	if (S.st.in.paused && !S.st.draining && S.st.mq.connected && S.inflight < S.max_inflight &&
	    !out_full(&S.st.out))
		in_resume(&S.st.in);
}

static void bad(const char *what)
{
	S.n_bad++;
	warnl("line %lu: %s; skipped", S.st.in.lineno, what);
}

/* drop <uuid> <reason> <group> <mtopic> <payload> [<props>]: the fields
 * are decoded (props is kept raw in S.props), so they are escaped again. */
static void drop_fields(const char *uuid, const char *reason, const char *group,
			const char *mtopic, const char *payload, size_t plen, const char *props)
{
	out_raw(&S.st.out, "drop", 4);
	out_raw(&S.st.out, uuid, 36);
	out_str(&S.st.out, reason);
	out_str(&S.st.out, group);
	out_str(&S.st.out, mtopic);
	out_field(&S.st.out, payload, plen);
	if (props && *props)
		out_raw(&S.st.out, props, strlen(props));
	out_end(&S.st.out);
}

static void drop(struct rec *r, const char *reason)
{
	drop_fields(r->f[1], reason, r->f[2], r->f[5], r->f[6], r->len[6], S.props);
}

static void emit_sent(const char *uuid, const char *group, const char *wid)
{
	out_raw(&S.st.out, "sent", 4);
	out_raw(&S.st.out, uuid, 36);
	out_str(&S.st.out, group);
	out_str(&S.st.out, wid);
	out_end(&S.st.out);
}

/* One line about a bad assign or award record. */
static void bad_award(int credit, const char *what)
{
	S.n_bad++;
	warnl("line %lu: %s record%s %s; skipped", S.st.in.lineno, credit ? "award" : "assign",
	      strncmp(what, "needs", 5) ? ":" : "", what);
}

/* assign: to a bidding worker, on P/work/group/wid/mtopic, the uuid in the
 * mqlb-id property (MQTT 5); award: to a credit worker, on
 * P/job/group/wid/uuid/mtopic, which any MQTT version can read. */
/* A credit award the broker will not take goes back to the auction as the
 * worker's failure would: a fail done on the worker's topic, which the
 * auction places again, or drops as failed after --max-attempts (one
 * outcome per job; the auction always waits for a credit worker's done).
 * 0 when it could not be sent either: then a drop record says it. */
static int hand_back(const char *uuid, const char *group, const char *wid, const char *why)
{
	char *t, res[40];
	int rc, n = snprintf(res, sizeof res, "fail %s", why);

	/* libmosquitto would queue it and we may be on our way out: no. */
	if (!S.st.mq.connected)
		return 0;
	if (asprintf(&t, "%s/done/%s/%s/%.36s", S.cf.prefix, group, wid, uuid) < 0)
		die(EXIT_SYSERR, "out of memory");
	rc = mq_publish(&S.st.mq, NULL, t, (size_t)n, res, 1, 0, NULL);
	free(t);
	if (rc == MOSQ_ERR_SUCCESS)
		S.n_handed++;
	return rc == MOSQ_ERR_SUCCESS;
}

/* Check and decode an assign or award record; 0, or -1 when it was bad
 * (said on stderr). The raw props field is kept in S.props. */
static int award_parse(struct rec *r, int credit, unsigned long *qos, mosquitto_property **props)
{
	const char *why;

	/* assign|award <uuid> <group> <wid> <qos> <mtopic> <payload> [<props>] */
	if (r->nf != 7 && r->nf != 8)
		return bad_award(credit, "needs 7 or 8 fields"), -1;
	if (!rec_uuid_ok(r->f[1], r->len[1]))
		return bad_award(credit, "bad uuid"), -1;
	if (rec_ulong(r, 4, 2, qos) < 0)
		return bad_award(credit, "bad qos"), -1;
	if (rec_unescape(r, 2) <= 0 || rec_unescape(r, 3) <= 0 || strpbrk(r->f[2], "/+#") ||
	    strpbrk(r->f[3], "/+#") || strlen(r->f[2]) != r->len[2] ||
	    strlen(r->f[3]) != r->len[3])
		return bad_award(credit, "bad group or worker id"), -1;
	if (rec_unescape(r, 5) <= 0 || strlen(r->f[5]) != r->len[5])
		return bad_award(credit, "bad mtopic"), -1;
	if (rec_unescape(r, 6) < 0)
		return bad_award(credit, "bad payload escape"), -1;
	if (r->nf == 8 && rec_is(r, 7, "-"))
		r->nf = 7;
	/* props_parse() decodes the field in place: the raw one is kept for
	 * a drop record. */
	keep(&S.props, &S.propscap, r->nf == 8 ? r->f[7] : "", r->nf == 8 ? r->len[7] : 0);
	if (r->nf == 8 && props_parse(r->f[7], props, &why) < 0)
		return bad_award(credit, why), -1;
	if (*qos > (unsigned long)S.cf.mq.qos)
		*qos = (unsigned long)S.cf.mq.qos;
	return 0;
}

static void batch_reserve(struct batch *b, size_t n)
{
	if (b->len + n > b->cap) {
		b->cap = (b->len + n) * 2;
		if (!(b->buf = realloc(b->buf, b->cap)))
			die(EXIT_SYSERR, "out of memory");
	}
}

static void batch_field(struct batch *b, const void *p, size_t n)
{
	batch_reserve(b, rec_escaped_len(p, n) + 1);
	b->buf[b->len++] = ' ';
	b->len += rec_escape(b->buf + b->len, p, n, NULL);
}

/* An award of the open batch: its line. */
static void batch_add(struct rec *r, unsigned long qos)
{
	struct batch *b = &S.b;
	size_t np = strlen(S.props);

	batch_reserve(b, 48 + np);
	b->len += (size_t)sprintf(b->buf + b->len, "job %.36s %lu", r->f[1], qos);
	batch_field(b, r->f[5], r->len[5]);
	batch_field(b, r->f[6], r->len[6]);
	batch_reserve(b, np + 2);
	if (np) {
		b->buf[b->len++] = ' ';
		memcpy(b->buf + b->len, S.props, np);
		b->len += np;
	}
	b->buf[b->len++] = '\n';
	if ((int)qos > b->qos)
		b->qos = (int)qos < S.batch_qos ? (int)qos : S.batch_qos;
	b->have++;
	S.n_assign++;
}

/* Each job of a batch's lines: sent (why NULL), handed back as a fail
 * (why), or, when that cannot be published (the broker away), dropped
 * (why). Returns the number of jobs. */
static unsigned long batch_each(const char *group, const char *wid, const char *pl, size_t n,
				const char *why)
{
	unsigned long jobs = 0;
	char *buf = malloc(n + 1), *line, *nl;

	if (!buf)
		die(EXIT_SYSERR, "out of memory");
	memcpy(buf, pl, n);
	buf[n] = '\0';
	for (line = buf; *line; line = nl + 1) {
		struct rec r;
		long plen;

		if (!(nl = strchr(line, '\n')))
			break;
		if (rec_split(line, (size_t)(nl - line), &r) != 0 || r.nf < 5)
			continue;
		jobs++;
		if (!why) {
			S.n_sent++;
			emit_sent(r.f[1], group, wid);
			continue;
		}
		if (hand_back(r.f[1], group, wid, why))
			continue;
		rec_unescape(&r, 3);
		plen = rec_unescape(&r, 4);
		drop_fields(r.f[1], why, group, r.f[3], r.f[4], plen < 0 ? 0 : (size_t)plen,
			    r.nf > 5 ? r.f[5] : NULL);
	}
	free(buf);
	return jobs;
}

static void track(int mid, int credit, const char *uuid, const char *group, const char *wid)
{
	struct flight *f = &S.fl[mid & 0xffff];

	if (f->used)
		warnl("message id %d reused while in flight", mid);
	else
		S.inflight++;
	f->used = 1;
	f->credit = credit;
	f->batch = uuid == NULL;
	if (uuid) {
		memcpy(f->uuid, uuid, 36);
		f->uuid[36] = '\0';
	}
	keep(&f->group, &f->gcap, group, strlen(group));
	keep(&f->wid, &f->wcap, wid, strlen(wid));
}

/* Publish the open batch: one message for all its awards. */
static void batch_send(void)
{
	struct batch *b = &S.b;
	char *t;
	int mid = 0, rc;

	if (!b->open)
		return;
	b->open = 0;
	if (!b->have)
		return;
	if (b->have < b->want)
		debugl("batch for %s/%s: %lu of %lu awards", b->group, b->wid, b->have, b->want);
	if (!S.st.mq.connected) {
		/* At the drain deadline with the broker away: handed back as
		 * the awards still in the pipe are. */
		S.n_shutdown += batch_each(b->group, b->wid, b->buf, b->len, "shutdown");
		return;
	}
	if (asprintf(&t, "%s/job/%s/%s/batch", S.cf.prefix, b->group, b->wid) < 0)
		die(EXIT_SYSERR, "out of memory");
	S.n_batches++;
	rc = mq_publish(&S.st.mq, &mid, t, b->len, b->buf, b->qos, 0, NULL);
	free(t);
	if (rc != MOSQ_ERR_SUCCESS) {
		S.n_failed += b->have;
		warnl("batch of %lu awards to %s/%s: %s", b->have, b->group, b->wid,
		      mosquitto_strerror(rc));
		batch_each(b->group, b->wid, b->buf, b->len, "unpublishable");
		return;
	}
	if (b->qos == 0) {
		batch_each(b->group, b->wid, b->buf, b->len, NULL);
		return;
	}
	track(mid, 1, NULL, b->group, b->wid);
	struct flight *f = &S.fl[mid & 0xffff];

	keep(&f->payload, &f->pcap, b->buf, b->len);
	f->plen = b->len;
}

/* Before the loop sleeps, what the open batch holds; not while the broker
 * is away (the rest of the input waits for it too). */
static void batch_flush_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
	/* A batch record whose awards are still in the pipe (read apart)
	 * holds nothing yet: it stays open for them. */
	if (S.st.mq.connected && S.b.have)
		batch_send();
}

/* batch <group> <wid> <n>: the next n records are awards to that worker,
 * which takes them in one message. */
static void rec_batch(struct rec *r)
{
	unsigned long n;

	batch_send();
	if (r->nf != 4 || rec_ulong(r, 3, 65535, &n) < 0 || n < 1 || rec_unescape(r, 1) <= 0 ||
	    rec_unescape(r, 2) <= 0 || strpbrk(r->f[1], "/+#") || strpbrk(r->f[2], "/+#") ||
	    strlen(r->f[1]) != r->len[1] || strlen(r->f[2]) != r->len[2])
		return bad("batch record: not \"batch group wid n\"");
	keep(&S.b.group, &S.b.gcap, r->f[1], r->len[1]);
	keep(&S.b.wid, &S.b.wcap, r->f[2], r->len[2]);
	S.b.want = n;
	S.b.have = 0;
	S.b.len = 0;
	S.b.qos = 0;
	S.b.open = 1;
}

static void rec_assign(struct rec *r, int credit)
{
	mosquitto_property *props = NULL;
	unsigned long qos;
	size_t need;
	int mid = 0, rc;

	if (award_parse(r, credit, &qos, &props) < 0) {
		mosquitto_property_free_all(&props);
		return;
	}
	if (S.b.open) {
		if (credit && !strcmp(r->f[2], S.b.group) && !strcmp(r->f[3], S.b.wid)) {
			mosquitto_property_free_all(&props);
			batch_add(r, qos);
			if (S.b.have >= S.b.want)
				batch_send();
			return;
		}
		batch_send();
	}
	if (mq_v5(&S.st.mq) && !credit) {
		char id[37];

		memcpy(id, r->f[1], 36);
		id[36] = '\0';
		mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "mqlb-id", id);
	}
	need = strlen(S.cf.prefix) + r->len[2] + r->len[3] + r->len[5] + 64;
	if (need > S.topiccap) {
		S.topiccap = need * 2;
		S.topic = realloc(S.topic, S.topiccap);
		if (!S.topic)
			die(EXIT_SYSERR, "out of memory");
	}
	if (credit)
		snprintf(S.topic, S.topiccap, "%s/job/%s/%s/%.36s/%s", S.cf.prefix, r->f[2], r->f[3],
			 r->f[1], r->f[5]);
	else
		snprintf(S.topic, S.topiccap, "%s/work/%s/%s/%s", S.cf.prefix, r->f[2], r->f[3], r->f[5]);
	S.n_assign++;
	rc = mq_publish(&S.st.mq, &mid, S.topic, r->len[6], r->f[6], (int)qos, 0, props);
	mosquitto_property_free_all(&props);
	if (rc != MOSQ_ERR_SUCCESS) {
		S.n_failed++;
		warnl("award %.36s to %s/%s: %s", r->f[1], r->f[2], r->f[3], mosquitto_strerror(rc));
		if (!credit || !hand_back(r->f[1], r->f[2], r->f[3], "unpublishable"))
			drop(r, "unpublishable");
		return;
	}
	if (qos == 0) {
		/* No acknowledgement will come: written is as sent as it gets. */
		S.n_sent++;
		emit_sent(r->f[1], r->f[2], r->f[3]);
		return;
	}
	track(mid, credit, r->f[1], r->f[2], r->f[3]);
	struct flight *f = &S.fl[mid & 0xffff];

	keep(&f->mtopic, &f->mcap, r->f[5], r->len[5]);
	keep(&f->payload, &f->pcap, r->f[6], r->len[6]);
	f->plen = r->len[6];
	keep(&f->props, &f->prcap, S.props, strlen(S.props));
}

static void on_line(struct in *in, char *line, size_t n, void *arg)
{
	struct rec r;
	int rc, credit;

	/* Hold awards while the broker is away: the line is read again later. */
	if (!S.st.mq.connected && !S.st.draining) {
		in_unread(in);
		in_pause(in);
		return;
	}
	rc = rec_split(line, n, &r);
	if (rc == 1)
		return;
	if (rc < 0)
		return bad("too many fields");
	credit = rec_is(&r, 0, "award");
	if ((credit || rec_is(&r, 0, "assign")) && S.st.draining) {
		/* Read at the drain deadline: handed back, not lost. */
		if (r.nf < 7 || r.nf > 8 || !rec_uuid_ok(r.f[1], r.len[1]) ||
		    rec_unescape(&r, 2) <= 0 || rec_unescape(&r, 5) < 0 || rec_unescape(&r, 6) < 0)
			return bad_award(credit, "malformed");
		keep(&S.props, &S.propscap, r.nf == 8 ? r.f[7] : "", r.nf == 8 ? r.len[7] : 0);
		S.n_shutdown++;
		drop(&r, "shutdown");
	} else if (credit || rec_is(&r, 0, "assign")) {
		rec_assign(&r, credit);
	} else if (rec_is(&r, 0, "batch")) {
		rec_batch(&r);
	} else {
		batch_send();
		S.n_passed++;
		out_rec(&S.st.out, &r);
	}
	if (!S.st.draining && (S.inflight >= S.max_inflight || out_full(&S.st.out)))
		in_pause(in);
}

static void on_eof(struct in *in, int err, void *arg)
{
	if (err)
		warnl("reading records: %s", strerror(err));
	batch_send();
	S.st.input_done = 1;
	flow();
}

static void on_published(struct mq *mq, int mid, int reason, void *arg)
{
	struct flight *f = &S.fl[mid & 0xffff];

	if (!f->used)
		return;
	f->used = 0;
	S.inflight--;
	if (f->batch) {
		unsigned long jobs = batch_each(f->group, f->wid, f->payload, f->plen,
						reason >= 0x80 ? "refused" : NULL);

		if (reason >= 0x80) {
			warnl("batch of %lu awards to %s/%s refused by the broker (reason %d)", jobs,
			      f->group, f->wid, reason);
			S.n_failed += jobs;
		}
	} else if (reason >= 0x80) {
		S.n_failed++;
		warnl("award %s to %s/%s refused by the broker (reason %d)", f->uuid, f->group, f->wid, reason);
		if (f->credit && hand_back(f->uuid, f->group, f->wid, "refused")) {
			flow();
			return;
		}
		drop_fields(f->uuid, "refused", f->group, f->mtopic, f->payload, f->plen, f->props);
	} else {
		S.n_sent++;
		emit_sent(f->uuid, f->group, f->wid);
	}
	flow();
}

static void on_connected(struct mq *mq, int first, void *arg)
{
	if (first)
		ready_notify(S.cf.ready_fd);
	flow();
}

static void on_drain(struct out *o, void *arg) { flow(); }

/* Out of time: every award the input holds right now becomes a drop
 * record (bounded in time, in case the writer keeps writing). */
static void drain_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	batch_send();
	S.st.draining = 1;
	stage_read_rest(&S.st);
	stage_finish(&S.st);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	/* The first: publish the rest of the input and wait for the broker's
	 * acknowledgements, but not forever. Asked twice: the deadline is now. */
	if (stage_stop(&S.st))
		flow();
}

static void stats_line(struct conn *c, char *line, size_t n, void *arg)
{
	if (!srv_stats_query(c, line, n))
		return;
	out_stat(&c->out, "inflight", (unsigned long)S.inflight);
	out_stat(&c->out, "assign", S.n_assign);
	out_stat(&c->out, "sent", S.n_sent);
	out_stat(&c->out, "failed", S.n_failed);
	out_stat(&c->out, "handed_back", S.n_handed);
	out_stat(&c->out, "batches", S.n_batches);
	out_stat(&c->out, "passed", S.n_passed);
	out_stat(&c->out, "drop_shutdown", S.n_shutdown);
	out_stat(&c->out, "bad_records", S.n_bad);
	out_stat(&c->out, "connected", (unsigned long)S.st.mq.connected);
	out_raw(&c->out, "ok", 2);
	out_end(&c->out);
}

static const struct mq_cb callbacks = {
	.connected = on_connected,
	.published = on_published,
};

int main(int argc, char **argv)
{

	S.cf.mq.qos = 2;
	S.max_inflight = 1000;
	S.st.drain_timeout = 10;
	opt_parse(&argc, &argv, OPT_MQTT | OPT_QOS | OPT_LISTEN | OPT_READY | OPT_COLLECT, "",
		  longopts, opt, usage, &S.cf);
	if (optind < argc)
		opt_usage_error("unexpected argument \"%s\"", argv[optind]);
	S.fl = calloc(65536, sizeof *S.fl);
	if (!S.fl)
		die(EXIT_SYSERR, "out of memory");

	stage_open(&S.st, &S.cf, on_drain, stats_line, signal_cb, drain_cb);
	S.st.at_exit = at_exit_warn;
	/* Before mq's prepare watcher writes out what is queued. */
	ev_prepare_init(&S.batch_flush, batch_flush_cb);
	ev_set_priority(&S.batch_flush, EV_MAXPRI);
	ev_prepare_start(S.st.loop, &S.batch_flush);
	ev_unref(S.st.loop);
	stage_start(&S.st, &S.cf, &callbacks, on_line, on_eof);
	/* Nothing to publish to until the broker answers. */
	in_pause(&S.st.in);
	ev_run(S.st.loop, 0);
	return EXIT_OK;
}
