/* SPDX-License-Identifier: MIT */
/* mqlb-sub: the balancer's intake. Learns which groups want which topics
 * from worker announces, subscribes those topics, and writes group, ungroup
 * and msg records (PROTOCOL.md). With -t it is a plain record-writing
 * subscriber. Unless told --no-spool, every msg record is kept in a file
 * until its jobs are done, and written again by the next run
 * (common/spool.h). */
#include "config.h"

#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>
#include <uuid/uuid.h>

#include "hash.h"
#include "io.h"
#include "log.h"
#include "mqtt.h"
#include "opt.h"
#include "props.h"
#include "record.h"
#include "sock.h"
#include "spool.h"

static const char usage[] =
	"usage: mqlb-sub [-cv] [--quiet] [-o file] [-h host] [-p port] [-u user] [-P password]\n"
	"                [-i id] [-q qos] [-V 5|311] [-k keepalive] [--cafile file]\n"
	"                [--capath dir] [--cert file] [--key file] [--insecure]\n"
	"                [--prefix prefix] [--retries n] [--ready-fd n] [--listen path]\n"
	"                [--socket-mode mode] [--share name] [--group-ttl seconds]\n"
	"                [--max-groups n] [--retained] [--spool file | --no-spool]\n"
	"                [--spool-sync] [--spool-ttl seconds] [--spool-replays n]\n"
	"                [--collect seconds] [-t filter ...]\n";

/* Subscription identifier of the announce subscription P/sub/+. */
#define SUBID_ANNOUNCE 1
#define MAX_TOPIC 4096
/* A topic level: --prefix and --share (opt_level()), and a group name,
 * which mqlb-auction and mqlb-worker -g refuse beyond this too. */
#define MAX_LEVEL 256
/* Spools of instances without -i: mqlb-sub.spool, mqlb-sub.2.spool... */
#define MAX_ANON_SPOOLS 64

enum fstate { F_NONE, F_PENDING, F_ACKED, F_REFUSED };

struct filt {
	char *topic;  /* the filter as workers announced it */
	int subid;
	int refs;     /* groups that want it */
	int fixed;    /* given with -t */
	int mid;      /* SUBSCRIBE in flight */
	enum fstate state;
	/* The groups on it, as spool_ghash(); rebuilt when dirty. */
	uint64_t *gh;
	int ngh, ghcap, gh_dirty;
	struct filt *next;
};

/* A message that arrived for no filter we know (yet): after a restart, a
 * persistent session delivers what waited for us before any worker has
 * announced again. Held until its filter is back or --group-ttl passes. */
struct orphan {
	struct mosquitto_message m;
	mosquitto_property *props;
	uint32_t subid; /* 0: none (MQTT 3.1.1), matched by topic */
	ev_tstamp since; /* heard() */
	struct spool_ent *e; /* with --spool */
	struct orphan *next;
};

#define MAX_ORPHANS 100000

struct pair {
	char *group;
	struct filt *f;
	ev_tstamp seen; /* heard() */
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
	char announce_filter[MAX_LEVEL + sizeof "/sub/+"];
	char done_filter[MAX_LEVEL + sizeof "/done/#"];
	/* The spool's entries are written out again only once what the broker
	 * kept for our session has come (its dones finish some of them): a
	 * message of ours to ourselves, published after it, marks the end. */
	char sync_topic[MAX_LEVEL + sizeof "/sync/0123456789abcdef"];
	int sync_mid, synced;
	ev_timer sync_t;
	const char *spool_path; /* NULL: no spool */
	int no_spool;
	struct spool sp;
	ev_prepare spool_flusher;
	double spool_ttl;
	long spool_replays;
	int spool_sync;
	ev_tstamp started; /* heard() */
	unsigned long n_msg, n_retained, n_loop, n_bad_announce, n_groups_seen, n_expired,
		n_held, n_replayed, n_drop_nogroup, n_dones;
	int done_mid;
} S;

/* Groups and held messages are timed on mq_heard(): a pause (standard
 * output full) longer than --group-ttl used to forget every group and
 * unsubscribe its filter, and what was published then reached nobody. */
static ev_tstamp heard(void) { return mq_heard(&S.mq); }

static void opt(int c, const char *arg)
{
	switch (c) {
	case 'c': S.cf.mq.clean = 0; S.persistent = 1; break;
	case 't': {
		struct filt *f = calloc(1, sizeof *f);

		if (mosquitto_sub_topic_check(arg) != MOSQ_ERR_SUCCESS || !*arg)
			opt_usage_error("-t: \"%s\" is not a valid topic filter", arg);
		if (strlen(arg) > MAX_TOPIC)
			opt_usage_error("-t: a topic filter is at most %d bytes", MAX_TOPIC);
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
	case 5: S.spool_path = arg; break;
	case 6: S.spool_sync = 1; break;
	case 7: S.spool_ttl = opt_secs("--spool-ttl", arg, 0.1, 86400 * 30); break;
	case 8: S.spool_replays = opt_long("--spool-replays", arg, 0, 1000); break;
	case 9: S.no_spool = 1; break;
	}
}

static const struct option longopts[] = {
	{ "persistent", no_argument, NULL, 'c' },
	{ "topic", required_argument, NULL, 't' },
	{ "share", required_argument, NULL, 1 },
	{ "group-ttl", required_argument, NULL, 2 },
	{ "retained", no_argument, NULL, 3 },
	{ "max-groups", required_argument, NULL, 4 },
	{ "spool", required_argument, NULL, 5 },
	{ "spool-sync", no_argument, NULL, 6 },
	{ "spool-ttl", required_argument, NULL, 7 },
	{ "spool-replays", required_argument, NULL, 8 },
	{ "no-spool", no_argument, NULL, 9 },
	{ NULL, 0, NULL, 0 },
};

static int has_prefix(const char *topic)
{
	return strncmp(topic, S.cf.prefix, S.plen) == 0 && topic[S.plen] == '/';
}

static void replay(struct filt *f);
static void spool_replay(struct filt *f);
static void synced(const char *why);

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
	uint32_t h = fnv32_str(FNV32_BASIS, topic);

	h = SUBID_ANNOUNCE + 1 + h % (268435455u - SUBID_ANNOUNCE - 1);
	while (filt_by_subid(h))
		h = h == 268435455u ? SUBID_ANNOUNCE + 1 : h + 1;
	return (int)h;
}

/* "$share/" name "/" filter */
#define SHARED_MAX (sizeof "$share//" + MAX_LEVEL + MAX_TOPIC)

static void subscribe(struct filt *f)
{
	char buf[SHARED_MAX];
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
	/* What the last run wrote out and saw no done for comes first. */
	if (S.spool_path && S.sp.loaded.head && S.synced)
		spool_replay(f);
	if (S.orphans)
		replay(f);
	if (rc != MOSQ_ERR_SUCCESS && rc != MOSQ_ERR_NO_CONN)
		warnl("cannot subscribe %s: %s", t, mosquitto_strerror(rc));
}

static void unsubscribe(struct filt *f)
{
	char buf[SHARED_MAX];

	if (S.share) {
		snprintf(buf, sizeof buf, "$share/%s/%s", S.share, f->topic);
		mq_unsubscribe(&S.mq, buf);
	} else {
		mq_unsubscribe(&S.mq, f->topic);
	}
}

static void suback(const struct pair *p)
{
	/* prefix and group are topic levels (opt_level(), announce()) */
	char topic[MAX_LEVEL + sizeof "/suback/" + MAX_LEVEL];

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
	free(f->gh);
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
	if (strlen(group) > MAX_LEVEL) {
		/* The auction would refuse its group record: no stage takes it. */
		S.n_bad_announce++;
		warnl("group %.32s...: a name of %zu bytes, over %d; ignored", group, strlen(group),
		      MAX_LEVEL);
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
		p->seen = heard();
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
	f->gh_dirty = 1;
	p->f = f;
	p->seen = heard();
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

/* A random (version 4) uuid. uuid_generate_random makes six system calls
 * for each; one getrandom(2) of 4 KiB serves 256 of them here. */
static void new_uuid(char id[37])
{
	static unsigned char pool[4096];
	static size_t used = sizeof pool;
	uuid_t u;

	if (used == sizeof pool) {
		size_t got = 0;

		while (got < sizeof pool) {
			ssize_t n = getrandom(pool + got, sizeof pool - got, 0);

			if (n < 0 && errno != EINTR) {
				uuid_generate_random(u);
				uuid_unparse_lower(u, id);
				return;
			}
			got += n > 0 ? (size_t)n : 0;
		}
		used = 0;
	}
	memcpy(u, pool + used, sizeof u);
	used += sizeof u;
	u[6] = (unsigned char)((u[6] & 0x0f) | 0x40); /* version 4 */
	u[8] = (unsigned char)((u[8] & 0x3f) | 0x80); /* RFC 4122 variant */
	uuid_unparse_lower(u, id);
}

/* The groups on f now, the set whose dones finish a spool entry. */
static const uint64_t *filt_groups(struct filt *f, int *n)
{
	if (f->gh_dirty) {
		f->ngh = 0;
		for (struct pair *p = S.pairs; p; p = p->next) {
			if (p->f != f)
				continue;
			if (f->ngh == f->ghcap) {
				f->ghcap = f->ghcap ? f->ghcap * 2 : 4;
				f->gh = realloc(f->gh, (size_t)f->ghcap * sizeof *f->gh);
				if (!f->gh)
					die(EXIT_SYSERR, "out of memory");
			}
			f->gh[f->ngh++] = spool_ghash(p->group, strlen(p->group));
		}
		f->gh_dirty = 0;
	}
	*n = f->ngh;
	return f->gh;
}

/* A QoS 1 message of a persistent session: its packet identifier goes to
 * the spool with it, so that a run after a kill before its PUBACK left
 * knows the broker's resend (see seed_resends). */
static void spool_note_mid(struct spool_ent *e, const struct mosquitto_message *m)
{
	/* From the backlog of a pause, its PUBACK left long ago (and its
	 * first entry, spooled as it came, has the line). */
	if (m->qos == 1 && !S.cf.mq.clean && S.cf.mq.id && !mq_held_tag(&S.mq))
		spool_mid(&S.sp, e, m->mid, mq_msg_hash(&S.mq));
}

/* The msg record of m just written (at offset at of the output) goes to
 * the spool: a new entry, or one held or loaded that is written out again. */
static void spool_msg(const struct mosquitto_message *m, struct filt *f, struct spool_ent *e,
		      size_t at)
{
	int ng;
	const uint64_t *g = filt_groups(f, &ng);

	if (!e) {
		/* "msg " uuid " " then the fields from qos on, and "\n" */
		const char *rec = S.out.buf + S.out.off + at;
		size_t n = S.out.len - S.out.off - at;

		out_raw(spool_begin(&S.sp, rec + 4, (uint32_t)f->subid, 1), rec + 41, n - 42);
		e = spool_end(&S.sp);
		spool_note_mid(e, m);
	}
	if (ng)
		spool_out(&S.sp, e, g, ng);
	else
		spool_finish(&S.sp, e, "nogroup"); /* the auction drops it so */
}

static void emit_msg(const struct mosquitto_message *m, const mosquitto_property *props,
		     struct filt *f, struct spool_ent *e)
{
	char id[37];
	size_t at = S.out.len - S.out.off;

	if (e) {
		memcpy(id, e->uuid, 36);
		id[36] = '\0';
	} else {
		new_uuid(id);
	}
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
	if (S.spool_path)
		spool_msg(m, f, e, at);
}

/* drop <uuid> nogroup - <mtopic> <payload> [<props>]: no group took it. */
static void drop_nogroup(const struct mosquitto_message *m, const mosquitto_property *props,
			 struct spool_ent *e)
{
	char id[37];

	if (e) {
		memcpy(id, e->uuid, 36);
		id[36] = '\0';
	} else {
		new_uuid(id);
	}
	out_raw(&S.out, "drop", 4);
	out_raw(&S.out, id, 36);
	out_str(&S.out, "nogroup");
	out_raw(&S.out, "-", 1);
	out_str(&S.out, m->topic);
	out_field(&S.out, m->payload, (size_t)m->payloadlen);
	props_write(&S.out, props);
	out_end(&S.out);
	S.n_drop_nogroup++;
	if (e)
		spool_finish(&S.sp, e, "nogroup");
}

/* --- the spool: what an earlier run left --------------------------------- */

/* A loaded entry of a held message without subscription identifier (MQTT
 * 3.1.1) belongs to f if its topic matches. */
static int spool_matches(const struct spool_ent *e, const struct filt *f, struct rec *r)
{
	struct rec t = { .nf = 1 };
	bool hit = false;
	char *copy;

	if (e->subid)
		return e->subid == (uint32_t)f->subid;
	if (!(copy = strndup(r->f[SPF_MTOPIC], r->len[SPF_MTOPIC])))
		die(EXIT_SYSERR, "out of memory");
	t.f[0] = copy;
	t.len[0] = r->len[SPF_MTOPIC];
	if (rec_unescape(&t, 0) >= 0)
		mosquitto_topic_matches_sub(f->topic, copy, &hit);
	free(copy);
	return hit;
}

/* f has a group again: write out once more each entry of the last run that
 * is for f, for those of its groups that did not report ok yet. */
static void spool_replay(struct filt *f)
{
	static uint64_t *left;
	static int cap;
	struct spool_ent *e, *next;
	int ng, nleft;
	const uint64_t *g = filt_groups(f, &ng);

	if (!ng)
		return; /* (a reconnect of a filter no group wants any more) */
	if (ng > cap) {
		cap = ng;
		if (!(left = realloc(left, (size_t)cap * sizeof *left)))
			die(EXIT_SYSERR, "out of memory");
	}
	for (e = S.sp.loaded.head; e; e = next) {
		struct rec r;

		next = e->next;
		if (e->subid && e->subid != (uint32_t)f->subid)
			continue;
		if (spool_read(&S.sp, e, &r) < 0) {
			spool_finish(&S.sp, e, "unreadable");
			continue;
		}
		if (!spool_matches(e, f, &r))
			continue;
		nleft = 0;
		for (int i = 0; i < ng; i++) {
			int acked = 0;

			for (int k = 0; k < e->ng; k++)
				acked |= e->g[k] == g[i];
			if (!acked)
				left[nleft++] = g[i];
		}
		if (!nleft) {
			spool_finish(&S.sp, e, "ok");
			continue;
		}
		/* An earlier run wrote it out: a worker may run it still, and
		 * names it in its credit (mqlb-auction keeps it there). */
		out_raw(&S.out, "replay", 6);
		out_raw(&S.out, e->uuid, 36);
		out_end(&S.out);
		out_raw(&S.out, "msg", 3);
		out_raw(&S.out, e->uuid, 36);
		out_raw(&S.out, r.f[SPF_QOS], r.len[SPF_QOS]);
		out_raw(&S.out, r.f[SPF_RETAIN], r.len[SPF_RETAIN]);
		out_str(&S.out, f->topic);
		for (int i = SPF_MTOPIC; i < r.nf; i++)
			out_raw(&S.out, r.f[i], r.len[i]);
		out_end(&S.out);
		S.n_msg++;
		spool_out(&S.sp, e, left, nleft);
	}
}

/* Entries of the last run whose filter nobody announced within --group-ttl
 * of the start: dead letters, as held messages are. */
static void spool_expire_loaded(ev_tstamp now)
{
	struct spool_ent *e;

	if (now - S.started < S.group_ttl)
		return;
	while ((e = S.sp.loaded.head)) {
		struct rec r;

		if (spool_read(&S.sp, e, &r) == 0) {
			out_raw(&S.out, "drop", 4);
			out_raw(&S.out, e->uuid, 36);
			out_str(&S.out, "nogroup");
			out_raw(&S.out, "-", 1);
			out_raw(&S.out, r.f[SPF_MTOPIC], r.len[SPF_MTOPIC]);
			out_raw(&S.out, r.f[SPF_PAYLOAD], r.len[SPF_PAYLOAD]);
			if (r.nf > SPF_PROPS)
				out_raw(&S.out, r.f[SPF_PROPS], r.len[SPF_PROPS]);
			out_end(&S.out);
			S.n_drop_nogroup++;
		}
		spool_finish(&S.sp, e, "nogroup");
	}
}

/* "ok", maybe followed by " free=n" */
static int result_ok(const char *pl, size_t n)
{
	return n >= 2 && !memcmp(pl, "ok", 2) && (n == 2 || pl[2] == ' ');
}

/* An ok for the job of group g (gn bytes) of uuid, from worker w (wn). Its
 * entry written out again from an earlier run's file, the record "done
 * uuid group wid ok" tells mqlb-auction, which may have started after
 * the done was sent (it keeps no session) and waits for the job's worker
 * to name it before it awards it again. */
static void done_ok(const char *uuid, const char *g, size_t gn, const char *w, size_t wn)
{
	if (!spool_ok(&S.sp, uuid, spool_ghash(g, gn)) || !wn)
		return;
	out_raw(&S.out, "done", 4);
	out_raw(&S.out, uuid, 36);
	out_field(&S.out, g, gn);
	out_field(&S.out, w, wn);
	out_raw(&S.out, "ok", 2);
	out_end(&S.out);
}

/* P/done/{group}/{wid}/{uuid}: "ok" (maybe " free=n") finishes the job for
 * that group; a fail is retried by the auction, so it finishes nothing.
 * P/done/{group}/{wid}: the dones of batched jobs, a line "uuid result"
 * each. */
static void on_done(const struct mosquitto_message *m)
{
	const char *g = m->topic + S.plen + 6, *w = strchr(g, '/'), *u = w ? strchr(w + 1, '/') : NULL;
	const char *pl = m->payload, *end = pl + m->payloadlen;
	size_t wn;

	if (!w || w == g || !w[1])
		return;
	wn = u ? (size_t)(u - w - 1) : strlen(w + 1);
	if (u) {
		S.n_dones++;
		if (strlen(u + 1) == 36 && result_ok(pl, (size_t)m->payloadlen))
			done_ok(u + 1, g, (size_t)(w - g), w + 1, wn);
		return;
	}
	while (pl < end) {
		const char *nl = memchr(pl, '\n', (size_t)(end - pl));
		size_t n = nl ? (size_t)(nl - pl) : (size_t)(end - pl);
		char id[37];

		if (n)
			S.n_dones++;
		if (n > 37 && pl[36] == ' ' && result_ok(pl + 37, n - 37)) {
			memcpy(id, pl, 36);
			id[36] = '\0';
			done_ok(id, g, (size_t)(w - g), w + 1, wn);
		}
		pl += n + 1;
	}
}

/* A message's spool entry, written now: fields from qos on, an empty filter
 * (the one it is written out for is not known yet). */
static struct spool_ent *spool_held(const struct mosquitto_message *m,
				    const mosquitto_property *props, uint32_t subid)
{
	struct spool_ent *e;
	char id[37];
	struct out *w;

	new_uuid(id);
	w = spool_begin(&S.sp, id, subid, 0);
	out_ulong(w, (unsigned long)m->qos);
	out_ulong(w, m->retain ? 1 : 0);
	out_str(w, "");
	out_str(w, m->topic);
	out_field(w, m->payload, (size_t)m->payloadlen);
	props_write(w, props);
	e = spool_end(&S.sp);
	spool_note_mid(e, m);
	return e;
}

/* e: its spool entry if it has one already (read while paused). */
static void hold(const struct mosquitto_message *m, const mosquitto_property *props,
		 uint32_t subid, struct spool_ent *e)
{
	struct orphan *o;

	if (S.norphans >= MAX_ORPHANS) {
		warnl("%ld messages held for filters nobody announced; %s dropped", S.norphans,
		      m->topic);
		drop_nogroup(m, props, e);
		return;
	}
	o = calloc(1, sizeof *o);
	if (!o || mosquitto_message_copy(&o->m, m) != MOSQ_ERR_SUCCESS ||
	    (props && mosquitto_property_copy_all(&o->props, props) != MOSQ_ERR_SUCCESS))
		die(EXIT_SYSERR, "out of memory");
	o->subid = subid;
	o->since = heard();
	/* PUBACKed already: kept in the spool until written out and done. */
	o->e = e ? e : S.spool_path ? spool_held(m, props, subid) : NULL;
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
static void replay(struct filt *f)
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
		emit_msg(&o->m, o->props, f, o->e);
		S.n_replayed++;
		orphan_free(pp);
	}
}

/* Held longer than --group-ttl: nobody wants it; a dead letter. */
static void expire_orphans(ev_tstamp now)
{
	while (S.orphans && now - S.orphans->since >= S.group_ttl) {
		drop_nogroup(&S.orphans->m, S.orphans->props, S.orphans->e);
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
	/* read while paused: spooled then (on_held), written out now */
	struct spool_ent *e = mq_held_tag(mq);

	if (S.spool_path && has_prefix(m->topic) && !strncmp(m->topic + S.plen + 1, "done/", 5)) {
		on_done(m);
		return;
	}
	if (S.spool_path && !strcmp(m->topic, S.sync_topic)) {
		synced("");
		return;
	}
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
			emit_msg(m, props, f, e);
		else
			hold(m, props, id, e);
		e = NULL; /* a second filter's copy is an entry of its own */
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
					emit_msg(m, props, f, e);
					e = NULL;
					hits++;
				}
			}
			if (!hits) {
				hold(m, props, 0, e);
				e = NULL;
			}
		}
	}
	if (e) /* on_held() spools only what is taken as a job here */
		spool_finish(&S.sp, e, "nogroup");
	/* The spool lines of this loop turn are written by spool_prepare_cb
	 * before the loop sleeps, and only then are their PUBACKs released
	 * (mq_hold_acks): one write for the whole turn. */
	if (out_full(&S.out))
		mq_pause_read(&S.mq, 1);
}

/* A job message read while reading is paused: in the spool now, before
 * its PUBACK leaves; written out as a record when the pause ends (or at
 * shutdown). */
static void *on_held(struct mq *mq, const struct mosquitto_message *m,
		     const mosquitto_property *props, void *arg)
{
	uint32_t id = 0;

	if (!S.spool_path || has_prefix(m->topic) || (m->retain && !S.retained))
		return NULL;
	mosquitto_property_read_varint(props, MQTT_PROP_SUBSCRIPTION_IDENTIFIER, &id, false);
	/* written with the rest of the loop turn's, as in on_message */
	return spool_held(m, props, id == SUBID_ANNOUNCE ? 0 : id);
}

/* What the broker kept for our session has all come (why: "", or why we
 * stop waiting): the spool's entries go out now, to the filters we have. */
static void synced(const char *why)
{
	if (S.synced)
		return;
	if (*why)
		warnl("%s; the spool is written out again now", why);
	S.synced = 1;
	ev_timer_stop(S.loop, &S.sync_t);
	for (struct filt *f = S.filts; f && S.sp.loaded.head; f = f->next)
		if (f->state == F_PENDING || f->state == F_ACKED)
			spool_replay(f);
}

static void sync_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	synced("no echo on the sync topic in 5 s (an ACL?)");
}

static void on_connected(struct mq *mq, int first, void *arg)
{
	/* A clean session forgot everything: subscribe all over again. */
	if (!S.standalone) {
		int rc = mq_subscribe(mq, &S.announce_mid, S.announce_filter, 1, SUBID_ANNOUNCE);

		if (rc != MOSQ_ERR_SUCCESS)
			warnl("cannot subscribe %s: %s", S.announce_filter, mosquitto_strerror(rc));
	}
	if (S.spool_path) {
		char old[MAX_LEVEL + sizeof "/done/+/+/+"];
		int rc;

		/* A persistent session of an older mqlb-sub keeps its narrower
		 * subscription, and would get each done twice. */
		snprintf(old, sizeof old, "%s/done/+/+/+", S.cf.prefix);
		mq_unsubscribe(mq, old);
		rc = mq_subscribe(mq, &S.done_mid, S.done_filter, 1, 0);

		if (rc != MOSQ_ERR_SUCCESS)
			warnl("cannot subscribe %s: %s", S.done_filter, mosquitto_strerror(rc));
		if (!S.synced && mq_subscribe(mq, &S.sync_mid, S.sync_topic, 1, 0) != MOSQ_ERR_SUCCESS)
			synced("cannot subscribe the sync topic");
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
		char hello[MAX_LEVEL + sizeof "/hello"];

		if (!ok)
			die(EXIT_UNREACH, "the broker refused the subscription to %s", S.announce_filter);
		S.announce_acked = 1;
		/* Workers that announced before we listened (they started
		 * first, or the broker lost our session) announce again now,
		 * not a keepalive later: until then their jobs reach nobody. */
		snprintf(hello, sizeof hello, "%s/hello", S.cf.prefix);
		mq_publish(mq, NULL, hello, 0, NULL, 1, 0, NULL);
		maybe_ready();
		return;
	}
	if (S.spool_path && mid == S.sync_mid && !S.synced) {
		/* After every message the broker kept for us, in order. */
		if (!ok || mq_publish(mq, NULL, S.sync_topic, 0, NULL, 1, 0, NULL) != MOSQ_ERR_SUCCESS)
			return synced("the broker refused the sync topic");
		ev_timer_stop(S.loop, &S.sync_t);
		ev_timer_start(S.loop, &S.sync_t);
		return;
	}
	if (S.spool_path && mid == S.done_mid) {
		if (!ok)
			warnl("the broker refused the subscription to %s: the spool sees no done",
			      S.done_filter);
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
	ev_tstamp now = heard();

	expire_orphans(now);
	if (S.spool_path) {
		spool_expire_loaded(now);
		/* what was written out waits for a done: wall-clock time */
		spool_expire(&S.sp, ev_now(loop), S.spool_ttl);
		spool_maybe_compact(&S.sp);
	}
	for (struct pair **pp = &S.pairs; *pp;) {
		struct pair *p = *pp;

		if (now - p->seen < S.group_ttl) {
			pp = &p->next;
			continue;
		}
		*pp = p->next;
		record2("ungroup", p->group, p->f->topic);
		p->f->gh_dirty = 1;
		if (S.spool_path)
			spool_forget_group(&S.sp, spool_ghash(p->group, strlen(p->group)),
					   (uint32_t)p->f->subid);
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
	/* What was read is in the spool before the broker hears it was
	 * received; if it cannot be, the acks die with the connection. */
	if (S.spool_path && spool_flush(&S.sp) < 0) {
		code = EXIT_SYSERR;
	} else if (mq_release_acks(&S.mq) && S.spool_path) {
		spool_acked(&S.sp);
	}
	mq_disconnect(&S.mq);
	/* Taken from the broker during a pause: written out too. */
	mq_deliver_backlog(&S.mq);
	if (S.spool_path && spool_flush(&S.sp) < 0)
		code = EXIT_SYSERR;
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
	out_stat(&c->out, "paused", (unsigned long)S.mq.read_paused);
	out_stat(&c->out, "backlog", S.mq.backlog_n);
	out_stat(&c->out, "backlog_max", S.mq.backlog_max_seen);
	if (S.spool_path) {
		out_stat(&c->out, "spooled", S.sp.n_spooled);
		out_stat(&c->out, "spool_finished", S.sp.n_finished);
		out_stat(&c->out, "spool_replayed", S.sp.n_replayed);
		out_stat(&c->out, "spool_given_up", S.sp.n_given_up);
		out_stat(&c->out, "spool_live", (unsigned long)spool_live(&S.sp));
		out_stat(&c->out, "spool_bad_lines", S.sp.n_bad_lines);
		out_stat(&c->out, "spool_errors", S.sp.n_errors);
		out_stat(&c->out, "spool_compactions", S.sp.n_compactions);
		out_stat(&c->out, "spool_bytes", (unsigned long)S.sp.size);
		out_stat(&c->out, "dones", S.n_dones);
	}
	out_raw(&c->out, "ok", 2);
	out_end(&c->out);
}

/* The spool is written before the records it covers leave (ahead of the
 * output's own flush by priority, and of its write-ready callback), and
 * before the broker has the PUBACKs of what was read. */
static void spool_prepare_cb(struct ev_loop *loop, ev_prepare *w, int revents)
{
	/* Unspooled records still go out, then we stop: a supervisor's
	 * restart finds the spool as it was, the rest waits at the broker. */
	if (spool_flush(&S.sp) < 0)
		shutdown_now(EXIT_SYSERR);
	if (mq_release_acks(&S.mq))
		spool_acked(&S.sp);
}

static void out_ready_cb(struct ev_loop *loop, ev_io *w, int revents)
{
	if (spool_flush(&S.sp) < 0)
		shutdown_now(EXIT_SYSERR);
	out_flush(&S.out);
}

/* <prefix>/sync/<16 hex digits>: of the client id, the same in every run
 * (the session keeps the subscription); a clean session without one is
 * new each time, and so is its topic. */
static void sync_topic(void)
{
	char pid[32];
	const char *id = S.cf.mq.id;

	if (!id) {
		snprintf(pid, sizeof pid, "%ld.%ld", (long)getpid(), (long)time(NULL));
		id = pid;
	}
	snprintf(S.sync_topic, sizeof S.sync_topic, "%s/sync/%016llx", S.cf.prefix,
		 (unsigned long long)fnv64_str(FNV64_BASIS, id));
}

/* The spool named by --spool, else the default one: named after the client
 * id, or without -i the first of mqlb-sub.spool, mqlb-sub.2.spool... that no
 * other mqlb-sub holds (instances without -i are alike: clean sessions on
 * the same broker, as a rule). */
static void open_spool(void)
{
	char *dir, *path, base[32];
	int sync = S.spool_sync, replays = (int)S.spool_replays;

	if (S.spool_path) {
		if (spool_open(&S.sp, S.loop, S.spool_path, sync, replays) < 0)
			die(EXIT_SYSERR, "spool %s is in use by another mqlb-sub", S.spool_path);
		return;
	}
	dir = spool_default_dir();
	if (S.cf.mq.id) {
		path = spool_name(dir, S.cf.mq.id);
		if (spool_open(&S.sp, S.loop, path, sync, replays) < 0)
			die(EXIT_SYSERR, "spool %s is in use by another mqlb-sub", path);
		S.spool_path = path;
		free(dir);
		return;
	}
	for (int i = 1; i <= MAX_ANON_SPOOLS; i++) {
		snprintf(base, sizeof base, i == 1 ? "mqlb-sub" : "mqlb-sub.%d", i);
		path = spool_name(dir, base);
		if (spool_open(&S.sp, S.loop, path, sync, replays) == 0) {
			S.spool_path = path;
			free(dir);
			return;
		}
		free(path);
	}
	die(EXIT_SYSERR, "spools %s/mqlb-sub.spool to mqlb-sub.%d.spool are all in use; give -i",
	    dir, MAX_ANON_SPOOLS);
}

/* The broker's resends are over: the last run's open i lines close with
 * the next a line (spool_seeds_done). */
static void on_resends_over(struct mq *mq, void *arg)
{
	if (S.spool_path)
		spool_seeds_done(&S.sp);
}

static const struct mq_cb callbacks = {
	.connected = on_connected,
	.disconnected = on_disconnected,
	.message = on_message,
	.held = on_held,
	.subscribed = on_subscribed,
	.resends_over = on_resends_over,
};

/* The spool's messages from a run killed before their PUBACKs left (after
 * its last "a" line): the broker sends them again, with the same packet
 * identifiers, first thing on the session; they are written out from the
 * spool, and the resends dropped (mq_seen_add). */
static void seed_resends(void)
{
	for (size_t i = 0; i < S.sp.nseeds; i++)
		mq_seen_add(&S.mq, S.sp.seeds[i].mid, S.sp.seeds[i].h);
	if (S.sp.nseeds)
		infol("spool %s: %zu message%s without a PUBACK when the last run ended: a resend "
		      "from the broker is dropped", S.sp.path, S.sp.nseeds, S.sp.nseeds == 1 ? "" : "s");
}

int main(int argc, char **argv)
{

	S.cf.mq.qos = 1;
	S.cf.mq.clean = 1;
	S.max_groups = 100000;
	S.orphans_tail = &S.orphans;
	S.spool_replays = -1;
	opt_parse(&argc, &argv, OPT_MQTT | OPT_QOS | OPT_LISTEN | OPT_READY | OPT_COLLECT, "ct:",
		  longopts, opt, usage, &S.cf);
	if (optind < argc)
		opt_usage_error("unexpected argument \"%s\"", argv[optind]);
	/* opt_parse() turns a session without an id back to clean: ask first. */
	if (S.persistent && !S.cf.mq.id)
		opt_usage_error("-c needs a client id (-i)");
	S.plen = strlen(S.cf.prefix);
	S.standalone = S.filts != NULL;
	if (S.spool_path && S.no_spool)
		opt_usage_error("--spool and --no-spool: choose one");
	if (S.spool_path && S.standalone)
		opt_usage_error("--spool: a stand-alone subscriber (-t) has no jobs to spool");
	if ((S.no_spool || S.standalone) && (S.spool_sync || S.spool_ttl > 0 || S.spool_replays >= 0))
		opt_usage_error("--spool-sync, --spool-ttl and --spool-replays need a spool "
				"(not with --no-spool or -t)");
	if (S.spool_ttl == 0)
		S.spool_ttl = 3600;
	if (S.spool_replays < 0)
		S.spool_replays = 3;
	if (S.group_ttl == 0)
		S.group_ttl = 3.0 * S.cf.mq.keepalive;
	snprintf(S.announce_filter, sizeof S.announce_filter, "%s/sub/+", S.cf.prefix);
	snprintf(S.done_filter, sizeof S.done_filter, "%s/done/#", S.cf.prefix);
	sync_topic();

	signal(SIGPIPE, SIG_IGN);
	/* A file size limit on the spool is a write error, not a kill. */
	signal(SIGXFSZ, SIG_IGN);
	S.loop = EV_DEFAULT;
	opt_collect(&S.cf, S.loop);
	out_init(&S.out, S.loop, STDOUT_FILENO, 1 << 20);
	S.out.on_drain = on_drain;
	S.out.on_error = on_out_error;
	if (!S.no_spool && !S.standalone) {
		open_spool();
		ev_prepare_init(&S.spool_flusher, spool_prepare_cb);
		ev_set_priority(&S.spool_flusher, EV_MAXPRI);
		ev_prepare_start(S.loop, &S.spool_flusher);
		ev_unref(S.loop);
		ev_set_cb(&S.out.w, out_ready_cb);
	}
	ev_now_update(S.loop); /* loading a long spool takes time */
	srv_listen(&S.srv, S.loop, S.cf.listen, S.cf.socket_mode, stats_line);
	ev_signal_init(&S.sigterm, signal_cb, SIGTERM);
	ev_signal_init(&S.sigint, signal_cb, SIGINT);
	ev_signal_start(S.loop, &S.sigterm);
	ev_signal_start(S.loop, &S.sigint);
	ev_timer_init(&S.sync_t, sync_cb, 5, 0);
	ev_timer_init(&S.expiry, expire_cb, 1, S.group_ttl < 4 ? S.group_ttl / 4 : 1);
	if (!S.standalone)
		ev_timer_start(S.loop, &S.expiry);

	mq_init(&S.mq, S.loop, &S.cf.mq, &callbacks, NULL);
	/* A job's PUBACK waits until spool_prepare_cb has written it. */
	if (S.spool_path) {
		mq_hold_acks(&S.mq);
		seed_resends();
	}
	S.started = heard();
	mq_start(&S.mq);
	ev_run(S.loop, 0);
	return EXIT_OK;
}
