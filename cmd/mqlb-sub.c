/* SPDX-License-Identifier: MIT */
/* mqlb-sub: the balancer's intake. Learns which groups want which topics
 * from worker announces, subscribes those topics, and writes group, ungroup
 * and msg records (PROTOCOL.md). With -t it is a plain record-writing
 * subscriber. */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uuid/uuid.h>

#include "io.h"
#include "log.h"
#include "mqtt.h"
#include "opt.h"
#include "props.h"
#include "record.h"
#include "sock.h"

static const char usage[] =
	"usage: mqlb-sub [-cv] [--quiet] [-o file] [-h host] [-p port] [-u user] [-P password]\n"
	"                [-i id] [-q qos] [-V 5|311] [-k keepalive] [--cafile file]\n"
	"                [--capath dir] [--cert file] [--key file] [--insecure]\n"
	"                [--prefix prefix] [--retries n] [--ready-fd n] [--listen path]\n"
	"                [--socket-mode mode] [--share name] [--group-ttl seconds]\n"
	"                [--max-groups n] [--retained] [-t filter ...]\n";

/* Subscription identifier of the announce subscription P/sub/+. */
#define SUBID_ANNOUNCE 1
#define MAX_TOPIC 4096

enum fstate { F_NONE, F_PENDING, F_ACKED, F_REFUSED };

struct filt {
	char *topic;  /* the filter as workers announced it */
	int subid;
	int refs;     /* groups that want it */
	int fixed;    /* given with -t */
	int mid;      /* SUBSCRIBE in flight */
	enum fstate state;
	struct filt *next;
};

/* A message that arrived for no filter we know (yet): after a restart, a
 * persistent session delivers what waited for us before any worker has
 * announced again. Held until its filter is back or --group-ttl passes. */
struct orphan {
	struct mosquitto_message m;
	mosquitto_property *props;
	uint32_t subid; /* 0: none (MQTT 3.1.1), matched by topic */
	ev_tstamp since;
	struct orphan *next;
};

#define MAX_ORPHANS 100000

struct pair {
	char *group;
	struct filt *f;
	ev_tstamp seen;
	struct pair *next;
};

static struct {
	struct conf cf;
	struct ev_loop *loop;
	struct mq mq;
	struct out out;
	struct srv srv;
	ev_timer expiry;
	ev_signal sigterm, sigint;
	struct filt *filts;
	struct pair *pairs;
	struct orphan *orphans, **orphans_tail;
	long norphans;
	int announce_mid, announce_acked, ready;
	const char *share;
	double group_ttl;
	long max_groups, ngroups;
	int retained, standalone, persistent;
	size_t plen; /* strlen(prefix) */
	char announce_filter[300];
	unsigned long n_msg, n_retained, n_loop, n_bad_announce, n_groups_seen, n_expired,
		n_held, n_replayed, n_drop_nogroup;
} S;

static void opt(int c, const char *arg)
{
	switch (c) {
	case 'c': S.cf.mq.clean = 0; S.persistent = 1; break;
	case 't': {
		struct filt *f = calloc(1, sizeof *f);

		if (mosquitto_sub_topic_check(arg) != MOSQ_ERR_SUCCESS || !*arg)
			opt_usage_error("-t: \"%s\" is not a valid topic filter", arg);
		if (!f || !(f->topic = strdup(arg)))
			die(EXIT_SYSERR, "out of memory");
		f->fixed = 1;
		f->next = S.filts;
		S.filts = f;
		break;
	}
	case 1: S.share = opt_level("--share", arg); break;
	case 2: S.group_ttl = opt_secs("--group-ttl", arg, 0.1, 86400); break;
	case 3: S.retained = 1; break;
	case 4: S.max_groups = opt_long("--max-groups", arg, 1, 10000000); break;
	}
}

static const struct option longopts[] = {
	{ "persistent", no_argument, NULL, 'c' },
	{ "topic", required_argument, NULL, 't' },
	{ "share", required_argument, NULL, 1 },
	{ "group-ttl", required_argument, NULL, 2 },
	{ "retained", no_argument, NULL, 3 },
	{ "max-groups", required_argument, NULL, 4 },
	{ NULL, 0, NULL, 0 },
};

static int has_prefix(const char *topic)
{
	return strncmp(topic, S.cf.prefix, S.plen) == 0 && topic[S.plen] == '/';
}

static void replay(const struct filt *f);

static struct filt *filt_by_subid(uint32_t id)
{
	for (struct filt *f = S.filts; f; f = f->next)
		if ((uint32_t)f->subid == id)
			return f;
	return NULL;
}

/* The same filter gets the same identifier in every run, so what a
 * persistent session kept for us still names its filter after a restart
 * (FNV-1a, probing on the rare collision). */
static int subid_for(const char *topic)
{
	uint32_t h = 2166136261u;

	for (const unsigned char *c = (const unsigned char *)topic; *c; c++)
		h = (h ^ *c) * 16777619u;
	h = SUBID_ANNOUNCE + 1 + h % (268435455u - SUBID_ANNOUNCE - 1);
	while (filt_by_subid(h))
		h = h == 268435455u ? SUBID_ANNOUNCE + 1 : h + 1;
	return (int)h;
}

static void subscribe(struct filt *f)
{
	char buf[MAX_TOPIC + 300];
	const char *t = f->topic;
	int rc;

	if (S.share) {
		snprintf(buf, sizeof buf, "$share/%s/%s", S.share, f->topic);
		t = buf;
	}
	if (!f->subid)
		f->subid = subid_for(f->topic);
	rc = mq_subscribe(&S.mq, &f->mid, t, S.cf.mq.qos, f->subid);
	f->state = rc == MOSQ_ERR_SUCCESS ? F_PENDING : F_NONE;
	if (S.orphans)
		replay(f);
	if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN)
		warnl("cannot subscribe %s: %s", t, mosquitto_strerror(rc));
}

static void unsubscribe(struct filt *f)
{
	char buf[MAX_TOPIC + 300];

	if (S.share) {
		snprintf(buf, sizeof buf, "$share/%s/%s", S.share, f->topic);
		mq_unsubscribe(&S.mq, buf);
	} else {
		mq_unsubscribe(&S.mq, f->topic);
	}
}

static void suback(const struct pair *p)
{
	char topic[512];

	snprintf(topic, sizeof topic, "%s/suback/%s", S.cf.prefix, p->group);
	mq_publish(&S.mq, NULL, topic, strlen(p->f->topic), p->f->topic, 1, 0, NULL);
}

static void record2(const char *verb, const char *a, const char *b)
{
	out_raw(&S.out, verb, strlen(verb));
	out_str(&S.out, a);
	out_str(&S.out, b);
	out_end(&S.out);
}

static struct filt *filt_find(const char *topic)
{
	for (struct filt *f = S.filts; f; f = f->next)
		if (!strcmp(f->topic, topic))
			return f;
	return NULL;
}

static void filt_release(struct filt *f)
{
	if (--f->refs > 0 || f->fixed)
		return;
	if (f->state == F_PENDING || f->state == F_ACKED)
		unsubscribe(f);
	for (struct filt **pp = &S.filts; *pp; pp = &(*pp)->next)
		if (*pp == f) {
			*pp = f->next;
			break;
		}
	free(f->topic);
	free(f);
}

static const char *bad_filter(const char *t, int len)
{
	if (len == 0)
		return "empty topic";
	if (len > MAX_TOPIC)
		return "topic too long";
	if (mosquitto_validate_utf8(t, len) != MOSQ_ERR_SUCCESS || (int)strlen(t) != len)
		return "topic is not valid UTF-8";
	if (mosquitto_sub_topic_check(t) != MOSQ_ERR_SUCCESS)
		return "bad wildcard in topic filter";
	if (!strncmp(t, "$share/", 7))
		return "a shared-subscription filter cannot be balanced";
	if (has_prefix(t) || (!strncmp(t, S.cf.prefix, S.plen) && t[S.plen] == '\0'))
		return "topic filter under the protocol prefix";
	return NULL;
}

static void announce(const struct mosquitto_message *m)
{
	const char *group = m->topic + S.plen + 5; /* P/sub/ */
	const char *topic = m->payload ? m->payload : "";
	const char *why;
	struct pair *p;
	struct filt *f;

	if (m->retain) {
		/* A retained announce is history, not a live worker. */
		S.n_bad_announce++;
		warnl("announce for group \"%s\" is retained; ignored", group);
		return;
	}
	if (!*group) {
		S.n_bad_announce++;
		warnl("announce with an empty group; ignored");
		return;
	}
	if ((why = bad_filter(topic, m->payloadlen))) {
		S.n_bad_announce++;
		warnl("group %s: %s; ignored", group, why);
		return;
	}
	for (p = S.pairs; p; p = p->next)
		if (!strcmp(p->group, group) && !strcmp(p->f->topic, topic))
			break;
	if (p) {
		p->seen = ev_now(S.loop);
		if (p->f->state == F_ACKED)
			suback(p);
		else if (p->f->state == F_REFUSED || p->f->state == F_NONE)
			subscribe(p->f); /* try the broker again */
		return;
	}
	if (S.ngroups >= S.max_groups) {
		S.n_bad_announce++;
		warnl("group %s on %s: over --max-groups %ld; ignored", group, topic, S.max_groups);
		return;
	}
	p = calloc(1, sizeof *p);
	if (!p || !(p->group = strdup(group)))
		die(EXIT_SYSERR, "out of memory");
	f = filt_find(topic);
	if (!f) {
		f = calloc(1, sizeof *f);
		if (!f || !(f->topic = strdup(topic)))
			die(EXIT_SYSERR, "out of memory");
		f->next = S.filts;
		S.filts = f;
	}
	f->refs++;
	p->f = f;
	p->seen = ev_now(S.loop);
	p->next = S.pairs;
	S.pairs = p;
	S.ngroups++;
	S.n_groups_seen++;
	record2("group", group, topic);
	if (f->state == F_ACKED)
		suback(p);
	else if (f->state != F_PENDING)
		subscribe(f);
}

static void emit_msg(const struct mosquitto_message *m, const mosquitto_property *props,
		     const struct filt *f)
{
	uuid_t u;
	char id[37];

	uuid_generate_random(u);
	uuid_unparse_lower(u, id);
	out_raw(&S.out, "msg", 3);
	out_raw(&S.out, id, 36);
	out_ulong(&S.out, (unsigned long)m->qos);
	out_ulong(&S.out, m->retain ? 1 : 0);
	out_str(&S.out, f->topic);
	out_str(&S.out, m->topic);
	out_field(&S.out, m->payload, (size_t)m->payloadlen);
	props_write(&S.out, props);
	out_end(&S.out);
	S.n_msg++;
}

static void drop_nogroup(const struct mosquitto_message *m)
{
	uuid_t u;
	char id[37];

	uuid_generate_random(u);
	uuid_unparse_lower(u, id);
	out_raw(&S.out, "drop", 4);
	out_raw(&S.out, id, 36);
	out_str(&S.out, "nogroup");
	out_str(&S.out, m->topic);
	out_field(&S.out, m->payload, (size_t)m->payloadlen);
	out_end(&S.out);
	S.n_drop_nogroup++;
}

static void hold(const struct mosquitto_message *m, const mosquitto_property *props,
		 uint32_t subid)
{
	struct orphan *o;

	if (S.norphans >= MAX_ORPHANS) {
		warnl("%ld messages held for filters nobody announced; %s dropped", S.norphans,
		      m->topic);
		drop_nogroup(m);
		return;
	}
	o = calloc(1, sizeof *o);
	if (!o || mosquitto_message_copy(&o->m, m) != MOSQ_ERR_SUCCESS ||
	    (props && mosquitto_property_copy_all(&o->props, props) != MOSQ_ERR_SUCCESS))
		die(EXIT_SYSERR, "out of memory");
	o->subid = subid;
	o->since = ev_now(S.loop);
	*S.orphans_tail = o;
	S.orphans_tail = &o->next;
	S.norphans++;
	S.n_held++;
}

static void orphan_free(struct orphan **pp)
{
	struct orphan *o = *pp;

	*pp = o->next;
	if (S.orphans_tail == &o->next)
		S.orphans_tail = pp;
	mosquitto_message_free_contents(&o->m);
	mosquitto_property_free_all(&o->props);
	free(o);
	S.norphans--;
}

/* A filter is subscribed: the messages held for it are its first. */
static void replay(const struct filt *f)
{
	for (struct orphan **pp = &S.orphans; *pp;) {
		struct orphan *o = *pp;
		bool hit = o->subid == (uint32_t)f->subid;

		if (!o->subid)
			mosquitto_topic_matches_sub(f->topic, o->m.topic, &hit);
		if (!hit) {
			pp = &o->next;
			continue;
		}
		emit_msg(&o->m, o->props, f);
		S.n_replayed++;
		orphan_free(pp);
	}
}

/* Held longer than --group-ttl: nobody wants it; a dead letter. */
static void expire_orphans(ev_tstamp now)
{
	while (S.orphans && now - S.orphans->since >= S.group_ttl) {
		drop_nogroup(&S.orphans->m);
		orphan_free(&S.orphans);
	}
}

static void on_message(struct mq *mq, const struct mosquitto_message *m,
		       const mosquitto_property *props, void *arg)
{
	const mosquitto_property *p;
	struct filt *f;
	uint32_t id;
	int any = 0;

	/* Announces arrive by subscription id 1 or, without ids, by topic. */
	for (p = props; (p = mosquitto_property_read_varint(p, MQTT_PROP_SUBSCRIPTION_IDENTIFIER, &id, any));) {
		any = 1;
		if (id == SUBID_ANNOUNCE) {
			announce(m);
			continue;
		}
		if (has_prefix(m->topic))
			S.n_loop++;
		else if (m->retain && !S.retained)
			S.n_retained++;
		else if ((f = filt_by_subid(id)))
			emit_msg(m, props, f);
		else
			hold(m, props, id);
	}
	if (!any) {
		bool announced = false;

		if (!S.standalone)
			mosquitto_topic_matches_sub(S.announce_filter, m->topic, &announced);
		if (announced)
			announce(m);
		else if (has_prefix(m->topic))
			S.n_loop++;
		else if (m->retain && !S.retained)
			S.n_retained++;
		else {
			/* No identifiers (MQTT 3.1.1): match the filters ourselves. */
			int hits = 0;

			for (f = S.filts; f; f = f->next) {
				bool hit = false;

				if (f->state == F_ACKED || f->state == F_PENDING)
					mosquitto_topic_matches_sub(f->topic, m->topic, &hit);
				if (hit) {
					emit_msg(m, props, f);
					hits++;
				}
			}
			if (!hits)
				hold(m, props, 0);
		}
	}
	if (out_full(&S.out))
		mq_pause_read(&S.mq, 1);
}

static void on_connected(struct mq *mq, int first, void *arg)
{
	/* A clean session forgot everything: subscribe all over again. */
	if (!S.standalone) {
		int rc = mq_subscribe(mq, &S.announce_mid, S.announce_filter, 1, SUBID_ANNOUNCE);

		if (rc != MOSQ_ERR_SUCCESS)
			warnl("cannot subscribe %s: %s", S.announce_filter, mosquitto_strerror(rc));
	}
	for (struct filt *f = S.filts; f; f = f->next)
		subscribe(f);
}

static void on_disconnected(struct mq *mq, void *arg)
{
	for (struct filt *f = S.filts; f; f = f->next)
		f->state = F_NONE;
	S.announce_acked = 0;
}

static void maybe_ready(void)
{
	if (S.ready)
		return;
	if (!S.standalone && !S.announce_acked)
		return;
	for (struct filt *f = S.filts; f; f = f->next)
		if (f->fixed && f->state != F_ACKED)
			return;
	S.ready = 1;
	ready_notify(S.cf.ready_fd);
}

static void on_subscribed(struct mq *mq, int mid, int n, const int *granted, void *arg)
{
	int ok = n > 0 && granted[0] < 0x80;

	if (mid == S.announce_mid && !S.standalone) {
		if (!ok)
			die(EXIT_UNREACH, "the broker refused the subscription to %s", S.announce_filter);
		S.announce_acked = 1;
		maybe_ready();
		return;
	}
	for (struct filt *f = S.filts; f; f = f->next) {
		if (f->mid != mid || f->state != F_PENDING)
			continue;
		if (!ok) {
			f->state = F_REFUSED;
			warnl("the broker refused the subscription to %s (reason %d)", f->topic,
			      n > 0 ? granted[0] : -1);
			if (f->fixed)
				die(EXIT_UNREACH, "cannot subscribe -t %s", f->topic);
			return;
		}
		f->state = F_ACKED;
		/* Only now can workers rely on us: confirm to every group on it. */
		for (struct pair *p = S.pairs; p; p = p->next)
			if (p->f == f)
				suback(p);
		maybe_ready();
		return;
	}
}

static void expire_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	ev_tstamp now = ev_now(loop);

	expire_orphans(now);
	for (struct pair **pp = &S.pairs; *pp;) {
		struct pair *p = *pp;

		if (now - p->seen < S.group_ttl) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		record2("ungroup", p->group, p->f->topic);
		S.n_expired++;
		S.ngroups--;
		filt_release(p->f);
		free(p->group);
		free(p);
	}
}

static void on_drain(struct out *o, void *arg) { mq_pause_read(&S.mq, 0); }

static void shutdown_now(int code)
{
	if (S.cf.mq.clean)
		for (struct filt *f = S.filts; f; f = f->next)
			if (f->state == F_ACKED || f->state == F_PENDING)
				unsubscribe(f);
	mq_disconnect(&S.mq);
	if (out_drain_blocking(&S.out) < 0 && S.out.err != EPIPE)
		code = EXIT_SYSERR;
	exit(code);
}

static void on_out_error(struct out *o, void *arg)
{
	if (o->err != EPIPE)
		errl("cannot write records: %s", strerror(o->err));
	else
		infol("output closed; stopping");
	shutdown_now(o->err == EPIPE ? EXIT_OK : EXIT_SYSERR);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	infol("signal %d: stopping", w->signum);
	shutdown_now(EXIT_OK);
}

static void stats_line(struct conn *c, char *line, size_t n, void *arg)
{
	if (!srv_stats_query(c, line, n))
		return;
	out_stat(&c->out, "groups", (unsigned long)S.ngroups);
	out_stat(&c->out, "groups_seen", S.n_groups_seen);
	out_stat(&c->out, "groups_expired", S.n_expired);
	out_stat(&c->out, "msg", S.n_msg);
	out_stat(&c->out, "skipped_retained", S.n_retained);
	out_stat(&c->out, "skipped_loop", S.n_loop);
	out_stat(&c->out, "bad_announces", S.n_bad_announce);
	out_stat(&c->out, "held", (unsigned long)S.norphans);
	out_stat(&c->out, "held_total", S.n_held);
	out_stat(&c->out, "replayed", S.n_replayed);
	out_stat(&c->out, "drop_nogroup", S.n_drop_nogroup);
	out_stat(&c->out, "connected", (unsigned long)S.mq.connected);
	out_raw(&c->out, "ok", 2);
	out_end(&c->out);
}

static const struct mq_cb callbacks = {
	.connected = on_connected,
	.disconnected = on_disconnected,
	.message = on_message,
	.subscribed = on_subscribed,
};

int main(int argc, char **argv)
{

	S.cf.mq.qos = 1;
	S.cf.mq.clean = 1;
	S.max_groups = 100000;
	S.orphans_tail = &S.orphans;
	opt_parse(&argc, &argv, OPT_MQTT | OPT_LISTEN | OPT_READY, "ct:", longopts, opt, usage, &S.cf);
	if (optind < argc)
		opt_usage_error("unexpected argument \"%s\"", argv[optind]);
	/* opt_parse() turns a session without an id back to clean: ask first. */
	if (S.persistent && !S.cf.mq.id)
		opt_usage_error("-c needs a client id (-i)");
	S.plen = strlen(S.cf.prefix);
	S.standalone = S.filts != NULL;
	if (S.group_ttl == 0)
		S.group_ttl = 3.0 * S.cf.mq.keepalive;
	snprintf(S.announce_filter, sizeof S.announce_filter, "%s/sub/+", S.cf.prefix);

	signal(SIGPIPE, SIG_IGN);
	S.loop = EV_DEFAULT;
	out_init(&S.out, S.loop, STDOUT_FILENO, 1 << 20);
	S.out.on_drain = on_drain;
	S.out.on_error = on_out_error;
	srv_listen(&S.srv, S.loop, S.cf.listen, S.cf.socket_mode, stats_line);
	ev_signal_init(&S.sigterm, signal_cb, SIGTERM);
	ev_signal_init(&S.sigint, signal_cb, SIGINT);
	ev_signal_start(S.loop, &S.sigterm);
	ev_signal_start(S.loop, &S.sigint);
	ev_timer_init(&S.expiry, expire_cb, 1, S.group_ttl < 4 ? S.group_ttl / 4 : 1);
	if (!S.standalone)
		ev_timer_start(S.loop, &S.expiry);

	mq_init(&S.mq, S.loop, &S.cf.mq, &callbacks, NULL);
	mq_start(&S.mq);
	ev_run(S.loop, 0);
	return EXIT_OK;
}
