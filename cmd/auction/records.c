/* SPDX-License-Identifier: MIT */
/* records.c: the records written (assign, award, drop, done) and those read
 * (msg, group, ungroup). */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auction.h"
#include "log.h"
#include "props.h"
#include "record.h"

/* --- output records ------------------------------------------------------- */

static void out_msgfields(struct out *o, const struct msg *m, int with_props)
{
	out_raw(o, m->buf, m->mt_len);
	out_raw(o, m->buf + m->pl_off, m->pl_len);
	if (with_props && m->pr_len)
		out_raw(o, m->buf + m->pr_off, m->pr_len);
}

/* drop <uuid> <reason> <group> <mtopic> <payload> [<props>]: the group
 * whose job failed ("-": none), and the properties, so that whoever reads
 * the dead letters can still answer on the response topic. */
void emit_drop(const struct msg *m, const struct group *g, const char *reason)
{
	out_raw(&S.st.out, "drop", 4);
	out_raw(&S.st.out, m->uuid, 36);
	out_str(&S.st.out, reason);
	if (g)
		out_str(&S.st.out, g->name);
	else
		out_raw(&S.st.out, "-", 1); /* a field of its own: out_str escapes it */
	out_msgfields(&S.st.out, m, 1);
	out_end(&S.st.out);
}

/* The props field with exp= counting what is left of the message's life,
 * so time spent waiting here is not granted again at the broker. Names and
 * values are escaped, so ',' and '=' split the raw field safely. */
static void out_props_exp(struct out *o, const struct msg *m)
{
	const char *p = m->buf + m->pr_off, *end = p + m->pr_len;
	ev_tstamp left = m->expires - ev_now(S.st.loop);
	char num[24];
	size_t len = 0, cap = m->pr_len + sizeof num;
	char *b = xmalloc(cap);

	while (p < end) {
		const char *c = memchr(p, ',', (size_t)(end - p));
		size_t n = c ? (size_t)(c - p) : (size_t)(end - p);

		if (len)
			b[len++] = ',';
		if (n >= 4 && !memcmp(p, "exp=", 4)) {
			int k = snprintf(num, sizeof num, "exp=%lu",
					 left < 1 ? 1UL : (unsigned long)(left + 0.999));

			memcpy(b + len, num, (size_t)k);
			len += (size_t)k;
		} else {
			memcpy(b + len, p, n);
			len += n;
		}
		p += n + 1;
	}
	out_raw(o, b, len);
	free(b);
}

/* The award records held for w, behind "batch group wid n" when there are
 * several: mqlb-dispatch then sends them in one message. */
static void pend_write(struct wstat *w)
{
	if (w->npend > 1) {
		out_raw(&S.st.out, "batch", 5);
		out_str(&S.st.out, w->g->name);
		out_str(&S.st.out, w->wid);
		out_ulong(&S.st.out, w->npend);
		out_end(&S.st.out);
		S.n_batches++;
		S.n_batched += w->npend;
	}
	out_append(&S.st.out, w->pend);
	w->pend->len = 0;
	w->npend = 0;
}

void pend_write_now(struct wstat *w)
{
	if (w->npend)
		pend_write(w);
}

/* The most awards w can take in one message: its batch=n, or fewer when
 * its slots (and jobs ahead) are fewer. */
static unsigned pend_cap(const struct wstat *w)
{
	unsigned can = w->slots + w->ahead;

	return can < w->batch ? can : w->batch;
}

/* Before the loop sleeps, and before the output is flushed (a higher
 * priority): the awards of this iteration, a worker's together. While its
 * group has jobs waiting, and it could take more in the message, a
 * worker's awards wait up to --batch-wait for its next dones: its slots
 * would get those jobs anyway, and one message instead of several is what
 * lets the broker keep up (mqlb-auction(1)). */
void pend_flush_cb(struct ev_loop *loop, ev_prepare *p, int revents)
{
	struct wstat *w, **pp = &S.pending;
	int hold = 0;

	while ((w = *pp)) {
		if (p && S.batch_wait > 0 && w->npend && w->npend < pend_cap(w) &&
		    w->g->waiting.head) {
			hold = 1;
			pp = &w->pnext;
			continue;
		}
		*pp = w->pnext;
		w->listed = 0;
		if (w->npend)
			pend_write(w);
	}
	if (!hold)
		ev_timer_stop(loop, &S.batch_t);
	else if (!ev_is_active(&S.batch_t)) {
		ev_timer_set(&S.batch_t, S.batch_wait, 0);
		ev_timer_start(loop, &S.batch_t);
	}
}

void batch_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	pend_flush_cb(loop, NULL, 0);
}

/* A credit worker takes its jobs on P/job/group/wid/uuid/mtopic (the
 * award record); a bidding worker on P/work/group/wid/mtopic (assign). A
 * credit worker that takes batches (batch=n) has its awards held until
 * the loop is about to sleep, so those made together travel together. */
void emit_assign(const struct job *j)
{
	struct wstat *w = j->ws;
	struct out *o = &S.st.out;

	if (w && w->slots && w->batch > 1) {
		if (!w->pend && !(w->pend = calloc(1, sizeof *w->pend)))
			die(EXIT_SYSERR, "out of memory");
		if (!w->listed) {
			w->listed = 1;
			w->pnext = S.pending;
			S.pending = w;
		}
		o = w->pend;
		w->npend++;
	}
	if (w && w->slots)
		out_raw(o, "award", 5);
	else
		out_raw(o, "assign", 6);
	out_raw(o, j->m->uuid, 36);
	out_str(o, j->g->name);
	out_str(o, j->wid);
	out_ulong(o, (unsigned long)j->m->qos);
	out_msgfields(o, j->m, !j->m->expires);
	if (j->m->expires)
		out_props_exp(o, j->m);
	out_end(o);
	if (w && w->npend && w->npend >= pend_cap(w))
		pend_write(w);
}

void emit_done(const struct job *j, const char *result, size_t n)
{
	out_raw(&S.st.out, "done", 4);
	out_raw(&S.st.out, j->m->uuid, 36);
	out_str(&S.st.out, j->g->name);
	out_str(&S.st.out, j->wid);
	out_field(&S.st.out, result, n);
	out_end(&S.st.out);
}

/* --- records in ----------------------------------------------------------- */

struct group *group_find(const char *name, size_t n)
{
	for (struct group *g = S.groups; g; g = g->next)
		if (strlen(g->name) == n && !memcmp(g->name, name, n))
			return g;
	return NULL;
}

struct group *group_new(const char *name)
{
	struct group *g = calloc(1, sizeof *g);

	if (!g)
		die(EXIT_SYSERR, "out of memory");
	g->name = xstrdup(name);
	ev_timer_init(&g->ask, ask_cb, 0, 0);
	g->ask.data = g;
	ev_timer_init(&g->replace, replace_cb, 0, 0);
	g->replace.data = g;
	g->next = S.groups;
	S.groups = g;
	S.ngroups++;
	return g;
}

int group_has(const struct group *g, const char *filter)
{
	for (int i = 0; i < g->nfilters; i++)
		if (!strcmp(g->filters[i], filter))
			return 1;
	return 0;
}

static void bad(const char *what)
{
	S.n_bad_records++;
	warnl("line %lu: %s; skipped", S.st.in.lineno, what);
}

static void rec_group(struct rec *r)
{
	struct group *g;

	if (r->nf != 3 || rec_unescape_from(r, 1) >= 0 || !r->len[1] || !r->len[2] ||
	    strlen(r->f[1]) != r->len[1] || strlen(r->f[2]) != r->len[2] ||
	    strpbrk(r->f[1], "/+#") || r->len[1] > MAX_LEVEL)
		return bad("malformed group record");
	g = group_find(r->f[1], r->len[1]);
	if (!g)
		g = group_new(r->f[1]);
	if (group_has(g, r->f[2]))
		return;
	g->filters = xrealloc(g->filters, (size_t)(g->nfilters + 1) * sizeof *g->filters);
	g->filters[g->nfilters++] = xstrdup(r->f[2]);
}

static void rec_ungroup(struct rec *r)
{
	struct group *g;

	if (r->nf != 3 || rec_unescape_from(r, 1) >= 0)
		return bad("malformed ungroup record");
	if (!(g = group_find(r->f[1], r->len[1])))
		return;
	for (int i = 0; i < g->nfilters; i++)
		if (!strcmp(g->filters[i], r->f[2])) {
			free(g->filters[i]);
			g->filters[i] = g->filters[--g->nfilters];
			break;
		}
	/* Its workers are gone: their offers are worthless now. */
	if (!g->nfilters)
		g->tlen = 0;
}

/* replay <uuid>: the msg record after it was written out by an earlier run
 * of mqlb-sub (replay_park). */
static void rec_replay(struct rec *r)
{
	if (r->nf != 2 || !rec_uuid_ok(r->f[1], r->len[1]))
		return bad("malformed replay record");
	memcpy(S.replay_uuid, r->f[1], 36);
	S.replay_next = 1;
}

/* done <uuid> <group> <wid> ok: mqlb-sub saw this ok for a message it wrote
 * out again (replay), which we may have missed: not subscribed yet when
 * it was sent. It ends the job if it still waits here for its worker to
 * name it, or is that worker's; else it says nothing new. */
static void rec_done(struct rec *r)
{
	struct group *g;
	struct msg *m;
	char ok[] = "ok";

	if (r->nf != 5 || !rec_uuid_ok(r->f[1], r->len[1]) || rec_unescape_from(r, 2) >= 0 ||
	    !r->len[2] || !r->len[3] || strlen(r->f[2]) != r->len[2] ||
	    strlen(r->f[3]) != r->len[3] || strcmp(r->f[4], "ok"))
		return bad("malformed done record");
	if (!(g = group_find(r->f[2], r->len[2])) || !(m = msg_find(r->f[1])) || !m->replayed)
		return;
	for (int i = 0; i < m->njobs; i++) {
		struct job *j = &m->jobs[i];

		if (j->g == g && (j->st == J_WAIT || (j->st == J_AWARDED && !strcmp(j->wid, r->f[3]))))
			return on_done(g, r->f[3], m->uuid, ok, 2);
	}
}

static void rec_msg(struct rec *r)
{
	unsigned long qos, retain;
	struct msg *m;
	size_t need;
	long mtl;
	int replayed = S.replay_next;

	/* msg <uuid> <qos> <retain> <filter> <mtopic> <payload> [<props>] */
	S.replay_next = 0;
	if (r->nf != 7 && r->nf != 8)
		return bad("msg record needs 7 or 8 fields");
	if (!rec_uuid_ok(r->f[1], r->len[1]))
		return bad("msg record: bad uuid");
	if (rec_ulong(r, 2, 2, &qos) < 0)
		return bad("msg record: bad qos");
	if (rec_ulong(r, 3, 1, &retain) < 0)
		return bad("msg record: bad retain flag");
	if (rec_unescape(r, 4) < 0 || !r->len[4])
		return bad("msg record: bad filter");
	/* mtopic and payload are copied out as they came: they must be
	 * escaped right, or the assign record would be malformed. */
	if (!rec_field_ok(r, 5) || !rec_field_ok(r, 6))
		return bad("msg record: bad escape in mtopic or payload");
	if (msg_find(r->f[1])) {
		S.n_bad_records++;
		warnl("line %lu: msg %.36s seen before; skipped", S.st.in.lineno, r->f[1]);
		return;
	}
	m = msg_new();
	memcpy(m->uuid, r->f[1], 36);
	m->uuid[36] = '\0';
	m->replayed = replayed && !memcmp(S.replay_uuid, m->uuid, 36);
	m->qos = (int)qos;
	need = r->len[5] + r->len[6] + (r->nf == 8 ? r->len[7] : 0);
	if (need > m->cap) {
		m->cap = need + 64;
		m->buf = xrealloc(m->buf, m->cap);
	}
	memcpy(m->buf, r->f[5], r->len[5]);
	m->mt_len = r->len[5];
	m->pl_off = m->mt_len;
	memcpy(m->buf + m->pl_off, r->f[6], r->len[6]);
	m->pl_len = r->len[6];
	m->pr_off = m->pl_off + m->pl_len;
	m->pr_len = 0;
	if (r->nf == 8 && !(r->len[7] == 1 && r->f[7][0] == '-')) {
		char *cur = r->f[7], *name, *val, *end;
		size_t nl, vl;
		int rc;

		memcpy(m->buf + m->pr_off, r->f[7], r->len[7]);
		m->pr_len = r->len[7];
		/* exp is what was left of the message's life when mqlb-sub got
		 * it; reading the record is as close to that as we can see. As
		 * at the broker (mosquitto), 0 means it does not expire. */
		while ((rc = props_next(&cur, &name, &nl, &val, &vl)) == 1)
			if (!strcmp(name, "exp")) {
				unsigned long e = strtoul(val, &end, 10);

				if (*end || end == val || e > 0xffffffffUL)
					rc = -1;
				else if (e)
					m->expires = ev_now(S.st.loop) + (ev_tstamp)e;
				break;
			}
		if (rc < 0) {
			m->hnext = S.free;
			S.free = m;
			return bad("msg record: bad props");
		}
	}
	/* The request topic needs the mtopic decoded; the record keeps it raw. */
	if ((mtl = rec_unescape(r, 5)) <= 0 || memchr(r->f[5], '+', (size_t)mtl) ||
	    memchr(r->f[5], '#', (size_t)mtl) || strlen(r->f[5]) != (size_t)mtl) {
		m->hnext = S.free;
		S.free = m;
		return bad("msg record: bad mtopic");
	}
	if ((size_t)mtl + 1 > m->mtopic_cap) {
		m->mtopic_cap = (size_t)mtl + 64;
		m->mtopic = xrealloc(m->mtopic, m->mtopic_cap);
	}
	memcpy(m->mtopic, r->f[5], (size_t)mtl + 1);
	for (struct group *g = S.groups; g; g = g->next) {
		if (!group_has(g, r->f[4]))
			continue;
		if (m->njobs == m->jcap) {
			m->jcap = m->jcap ? m->jcap * 2 : 4;
			m->jobs = xrealloc(m->jobs, (size_t)m->jcap * sizeof *m->jobs);
		}
		memset(&m->jobs[m->njobs], 0, sizeof m->jobs[0]);
		m->jobs[m->njobs].m = m;
		m->jobs[m->njobs].g = g;
		m->njobs++;
	}
	if (S.st.draining) {
		/* Read at the drain deadline: handed back to every group that
		 * wanted it, never dropped in silence. */
		for (int i = 0; i < m->njobs; i++)
			emit_drop(m, m->jobs[i].g, "shutdown");
		if (m->njobs == 0)
			emit_drop(m, NULL, "shutdown");
		S.n_drop_shutdown++;
		m->hnext = S.free;
		S.free = m;
		return;
	}
	S.n_msg++;
	m->born = m->arrived = mq_heard(&S.st.mq);
	S.npending++;
	m->hnext = S.hash[uuid_hash(m->uuid) & S.hmask];
	S.hash[uuid_hash(m->uuid) & S.hmask] = m;
	if (m->njobs == 0) {
		emit_drop(m, NULL, "nogroup");
		S.n_drop_nogroup++;
		msg_free(m);
		return;
	}
	m->open = m->njobs;
	for (int i = 0; i < m->njobs; i++) {
		m->jobs[i].st = J_WAIT;
		jq_push(&m->jobs[i].g->waiting, &m->jobs[i], 0);
		group_arrival(m->jobs[i].g);
	}
	if (m->replayed)
		replay_park(m);
	/* Free workers get it at once; the rest wait for bids or for a slot.
	 * Only the last award can free m, and only when nothing is left
	 * waiting; a freed m stays readable (it is on the free list). */
	int waiting = 0;

	for (int i = 0; i < m->njobs; i++) {
		struct job *j = &m->jobs[i];

		if (j->st == J_WAIT)
			place(j->g);
		if (j->st == J_WAIT) {
			group_kick(j->g, 0);
			waiting++;
		}
	}
	if (waiting)
		msg_arm(m);
}

void on_line(struct in *in, char *line, size_t n, void *arg)
{
	struct rec r;
	int rc = rec_split(line, n, &r);

	if (rc == 1)
		return;
	if (rc < 0)
		return bad("too many fields");
	if (rec_is(&r, 0, "msg"))
		rec_msg(&r);
	else if (rec_is(&r, 0, "replay"))
		rec_replay(&r);
	else if (rec_is(&r, 0, "done"))
		rec_done(&r);
	else if (rec_is(&r, 0, "group"))
		rec_group(&r);
	else if (rec_is(&r, 0, "ungroup"))
		rec_ungroup(&r);
	else
		out_rec(&S.st.out, &r);
	if (!S.st.draining && (S.npending >= S.max_pending || out_full(&S.st.out)))
		in_pause(in);
}
