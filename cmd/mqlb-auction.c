/* SPDX-License-Identifier: MIT */
/* mqlb-auction: turns msg records into assign records, giving each message
 * to one free worker of every interested group: straight to a token holder
 * when the group has one, else by asking on P/req and taking the first bid.
 * Also tracks done acks, dead workers and deadlines (PROTOCOL.md). */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hist.h"
#include "io.h"
#include "log.h"
#include "mqtt.h"
#include "opt.h"
#include "record.h"
#include "sock.h"

static const char usage[] =
	"usage: mqlb-auction [-v] [--quiet] [-o file] [-h host] [-p port] [-u user] [-P password]\n"
	"                    [-i id] [-V 5|311] [-k keepalive] [--cafile file] [--capath dir]\n"
	"                    [--cert file] [--key file] [--insecure] [--prefix prefix] [--retries n]\n"
	"                    [--ready-fd n] [--listen path] [--socket-mode mode]\n"
	"                    [--token-ttl seconds] [--retry seconds,...] [--deadline seconds]\n"
	"                    [--max-pending n] [--ack-timeout seconds] [--max-attempts n]\n"
	"                    [--drain-timeout seconds] [--scheme soonest|least|first]\n"
	"                    [--credit-ttl seconds]\n";

#define MAX_LEVEL 256 /* group and wid: one topic level */
#define MAX_RETRY 16
#define WSTAT_BUCKETS 1024
#define WSTAT_MAX 65536 /* workers tracked for the stats, at most */
#define MAX_PREV 4 /* earlier holders of a job whose late done still counts */

enum jstate { J_WAIT, J_AWARDED, J_FINISHED };
enum scheme { SCHEME_SOONEST, SCHEME_LEAST, SCHEME_FIRST };
#define EWMA 0.25 /* weight of the newest award-to-done time */
#define PLACE_SCAN 1024 /* waiting jobs looked at per placement, at most */

struct job;
struct group;

/* A queue of jobs, oldest first: a group's waiting jobs, or its awarded
 * jobs in award order (so ack timeouts are found from the head). */
struct jq {
	struct job *head, *tail;
};

/* One worker of a group: what it got and how it went (the stats), its
 * credit if it announced one, and its service time for --scheme soonest. */
struct wstat {
	struct group *g;
	char wid[MAX_LEVEL + 1];
	unsigned long awarded, ok, fail;
	unsigned long inflight; /* jobs awarded here and tracked, no done yet */
	unsigned slots;         /* credit: announced slots; 0: a bidding worker */
	int blocked;            /* credit: said "fail busy"; none until its next done */
	ev_tstamp credit_t;     /* mq_heard() at its last credit message */
	ev_tstamp credit_at;    /* ev_now() then, for lost awards */
	ev_tstamp last_award;
	double svc;             /* award to done, moving average; < 0: none yet */
	struct hist lat;        /* award to done */
	struct job *jobs;       /* its tracked jobs */
	struct wstat *next, *lnext, *gnext; /* hash chain; all, in first-seen order; the group's */
};

struct job {
	struct msg *m;
	struct group *g;
	struct wstat *ws; /* of the worker it is awarded to */
	struct job *wprev, *wnext; /* on ws->jobs while tracked */
	int tracked;      /* counted in ws->inflight, waits for its done */
	int listed;       /* named by the credit message being read */
	enum jstate st;
	int attempts;
	ev_tstamp t; /* when awarded */
	ev_tstamp heard_t; /* mq_heard() then, for --ack-timeout */
	char wid[MAX_LEVEL + 1];
	/* Workers it was taken back from (will, ack timeout): a job may still
	 * finish there, and that worker's done is news, not a forgery. */
	char *prev_wid[MAX_PREV];
	int nprev;
	struct job *prev, *next;
	struct jq *on;
};

struct token {
	char wid[MAX_LEVEL + 1];
	ev_tstamp expires;
	int fresh; /* a bid being placed now: kept (a token) only if it stays */
};

struct group {
	char *name;
	char **filters;
	int nfilters;
	struct jq waiting, awarded;
	struct token *tokens; /* ring */
	unsigned thead, tlen, tcap;
	ev_timer ask; /* the group's round of requests, while jobs wait */
	int ask_idx;  /* requests in this round so far */
	ev_timer replace; /* --scheme soonest: look again when holding stops paying */
	struct wstat *workers;
	struct group *next;
};

/* One original message. Its mtopic, payload and props are kept escaped, as
 * they came, so an assign record copies them out without re-encoding. */
struct msg {
	char uuid[37];
	int qos;
	char *buf;
	size_t cap;
	size_t mt_len, pl_off, pl_len, pr_off, pr_len; /* raw fields in buf */
	char *mtopic;    /* unescaped, for the request topic */
	size_t mtopic_cap;
	struct job *jobs;
	int njobs, jcap, open; /* open: jobs not finished */
	ev_tstamp born; /* mq_heard() at the start of its wait for bids, for --deadline */
	ev_tstamp expires; /* MQTT 5 message expiry, counted from reading; 0: none */
	ev_timer wait;  /* its deadline or expiry, while a job of it waits */
	struct msg *hnext; /* hash chain, or free list */
};

static struct {
	struct conf cf;
	struct ev_loop *loop;
	struct mq mq;
	struct in in;
	struct out out;
	struct srv srv;
	ev_signal sigterm, sigint;
	ev_timer acks, drain, purge;
	struct group *groups;
	struct msg **hash;
	size_t hmask;
	struct wstat *wtab[WSTAT_BUCKETS], *wlist, **wtail;
	unsigned long nwstat, ngroups;
	struct msg *free;
	long npending, max_pending;
	double token_ttl, deadline, ack_timeout, drain_timeout, credit_ttl;
	enum scheme scheme;
	struct cand *cands;
	size_t ncands, ccap;
	double retry[MAX_RETRY];
	int nretry, max_attempts, ready, subs_left, stopping, input_done, finishing, draining;
	size_t plen;
	char *topicbuf;
	size_t topiccap;
	unsigned long n_msg, n_asked, n_retries, n_awarded, n_tokens_used, n_tokens_kept,
		n_tokens_expired, n_bids, n_bids_ignored, n_foreign, n_drop_nobid, n_drop_nogroup,
		n_drop_failed, n_drop_shutdown, n_drop_expired, n_done_ok, n_done_fail, n_done_late,
		n_reawards, n_forged, n_bad_records, n_gone, n_untracked, n_credit, n_credit_bad,
		n_busy, n_held, n_progress, n_lost;
} S;

static void opt(int c, const char *arg)
{
	switch (c) {
	case 1: S.token_ttl = opt_secs("--token-ttl", arg, 0.001, 3600); break;
	case 2: S.nretry = opt_secs_list("--retry", arg, S.retry, MAX_RETRY); break;
	case 3: S.deadline = opt_secs("--deadline", arg, 0.001, 86400 * 7); break;
	case 4: S.max_pending = opt_long("--max-pending", arg, 1, 100000000); break;
	case 5: S.ack_timeout = opt_secs("--ack-timeout", arg, 0, 86400 * 7); break;
	case 6: S.max_attempts = (int)opt_long("--max-attempts", arg, 1, 1000); break;
	case 7: S.drain_timeout = opt_secs("--drain-timeout", arg, 0, 86400); break;
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
	{ NULL, 0, NULL, 0 },
};

static void *xmalloc(size_t n)
{
	void *p = malloc(n);

	if (!p)
		die(EXIT_SYSERR, "out of memory");
	return p;
}

static void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p)
		die(EXIT_SYSERR, "out of memory");
	return p;
}

static char *xstrdup(const char *s) { return strcpy(xmalloc(strlen(s) + 1), s); }

/* --- job queues ---------------------------------------------------------- */

static void jq_remove(struct job *j)
{
	struct jq *q = j->on;

	if (!q)
		return;
	if (j->prev)
		j->prev->next = j->next;
	else
		q->head = j->next;
	if (j->next)
		j->next->prev = j->prev;
	else
		q->tail = j->prev;
	j->prev = j->next = NULL;
	j->on = NULL;
}

static void jq_push(struct jq *q, struct job *j, int front)
{
	jq_remove(j);
	j->on = q;
	if (front) {
		j->prev = NULL;
		j->next = q->head;
		if (q->head)
			q->head->prev = j;
		else
			q->tail = j;
		q->head = j;
	} else {
		j->next = NULL;
		j->prev = q->tail;
		if (q->tail)
			q->tail->next = j;
		else
			q->head = j;
		q->tail = j;
	}
}

/* --- the uuid table ------------------------------------------------------ */

static size_t uuid_hash(const char *u)
{
	size_t h = 14695981039346656037ULL;

	for (int i = 0; i < 36; i++)
		h = (h ^ (unsigned char)u[i]) * 1099511628211ULL;
	return h;
}

/* Uuids of messages finished lately, in two generations of RECENT_MAX
 * each: a bid for one of them is a late bid, a free slot for us; a bid for
 * a uuid we never had answers another balancer's request (--share: every
 * instance sees every bid) and is not ours to use. */
#define RECENT_MAX 32768
#define RECENT_SLOTS (2 * RECENT_MAX)

static struct {
	unsigned long long *cur, *old;
	size_t n;
} R;

static unsigned long long fingerprint(const char *u)
{
	unsigned long long h = uuid_hash(u);

	return h ? h : 1;
}

static int recent_in(const unsigned long long *t, unsigned long long f)
{
	for (size_t i = f & (RECENT_SLOTS - 1); t[i]; i = (i + 1) & (RECENT_SLOTS - 1))
		if (t[i] == f)
			return 1;
	return 0;
}

static void recent_add(const char *uuid)
{
	unsigned long long f = fingerprint(uuid), *t;
	size_t i;

	if (!R.cur) {
		R.cur = calloc(RECENT_SLOTS, sizeof *R.cur);
		R.old = calloc(RECENT_SLOTS, sizeof *R.old);
		if (!R.cur || !R.old)
			die(EXIT_SYSERR, "out of memory");
	}
	if (R.n == RECENT_MAX) {
		t = R.old;
		R.old = R.cur;
		R.cur = t;
		memset(R.cur, 0, RECENT_SLOTS * sizeof *R.cur);
		R.n = 0;
	}
	for (i = f & (RECENT_SLOTS - 1); R.cur[i] && R.cur[i] != f; i = (i + 1) & (RECENT_SLOTS - 1))
		;
	if (!R.cur[i])
		R.n++;
	R.cur[i] = f;
}

static int recent_has(const char *uuid)
{
	unsigned long long f = fingerprint(uuid);

	return R.cur && (recent_in(R.cur, f) || recent_in(R.old, f));
}

static struct msg *msg_find(const char *uuid)
{
	for (struct msg *m = S.hash[uuid_hash(uuid) & S.hmask]; m; m = m->hnext)
		if (!memcmp(m->uuid, uuid, 36))
			return m;
	return NULL;
}

static void msg_unlink(struct msg *m)
{
	for (struct msg **p = &S.hash[uuid_hash(m->uuid) & S.hmask]; *p; p = &(*p)->hnext)
		if (*p == m) {
			*p = m->hnext;
			return;
		}
}

static void maybe_resume(void);

/* Finished with a message: back to the free list with its buffers, so the
 * steady state allocates nothing. */
static void msg_free(struct msg *m)
{
	ev_timer_stop(S.loop, &m->wait);
	for (int i = 0; i < m->njobs; i++)
		jq_remove(&m->jobs[i]);
	recent_add(m->uuid);
	msg_unlink(m);
	m->hnext = S.free;
	S.free = m;
	S.npending--;
	maybe_resume();
}

/* --- output records ------------------------------------------------------- */

static void out_msgfields(const struct msg *m, int with_props)
{
	out_raw(&S.out, m->buf, m->mt_len);
	out_raw(&S.out, m->buf + m->pl_off, m->pl_len);
	if (with_props && m->pr_len)
		out_raw(&S.out, m->buf + m->pr_off, m->pr_len);
}

static void emit_drop(const struct msg *m, const char *reason)
{
	out_raw(&S.out, "drop", 4);
	out_raw(&S.out, m->uuid, 36);
	out_str(&S.out, reason);
	out_msgfields(m, 0);
	out_end(&S.out);
}

/* The props field with exp= counting what is left of the message's life,
 * so time spent waiting here is not granted again at the broker. Names and
 * values are escaped, so ',' and '=' split the raw field safely. */
static void out_props_exp(const struct msg *m)
{
	const char *p = m->buf + m->pr_off, *end = p + m->pr_len;
	ev_tstamp left = m->expires - ev_now(S.loop);
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
	out_raw(&S.out, b, len);
	free(b);
}

/* A credit worker takes its jobs on P/job/group/wid/uuid/mtopic (the
 * award record); a bidding worker on P/work/group/wid/mtopic (assign). */
static void emit_assign(const struct job *j)
{
	if (j->ws && j->ws->slots)
		out_raw(&S.out, "award", 5);
	else
		out_raw(&S.out, "assign", 6);
	out_raw(&S.out, j->m->uuid, 36);
	out_str(&S.out, j->g->name);
	out_str(&S.out, j->wid);
	out_ulong(&S.out, (unsigned long)j->m->qos);
	out_msgfields(j->m, !j->m->expires);
	if (j->m->expires)
		out_props_exp(j->m);
	out_end(&S.out);
}

/* --- tokens --------------------------------------------------------------- */

/* Tokens are added with the same ttl, so the ring is in expiry order:
 * the dead ones are at its head. */
static void tokens_purge(struct group *g, ev_tstamp now)
{
	while (g->tlen && g->tokens[g->thead].expires <= now) {
		g->thead = (g->thead + 1) % g->tcap;
		g->tlen--;
		S.n_tokens_expired++;
	}
}

static void purge_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	for (struct group *g = S.groups; g; g = g->next)
		tokens_purge(g, ev_now(loop));
}

static void token_put(struct group *g, const char *wid, int fresh)
{
	struct token *t;

	tokens_purge(g, ev_now(S.loop));
	if (g->tlen == g->tcap) {
		unsigned ncap = g->tcap ? g->tcap * 2 : 8;
		struct token *n = xmalloc(ncap * sizeof *n);

		for (unsigned i = 0; i < g->tlen; i++)
			n[i] = g->tokens[(g->thead + i) % g->tcap];
		free(g->tokens);
		g->tokens = n;
		g->tcap = ncap;
		g->thead = 0;
	}
	t = &g->tokens[(g->thead + g->tlen++) % g->tcap];
	snprintf(t->wid, sizeof t->wid, "%s", wid);
	t->expires = ev_now(S.loop) + S.token_ttl;
	t->fresh = fresh;
	if (!fresh)
		S.n_tokens_kept++;
}

static void token_add(struct group *g, const char *wid) { token_put(g, wid, 0); }

static void tokens_drop_wid(struct group *g, const char *wid)
{
	unsigned keep = 0;

	for (unsigned i = 0; i < g->tlen; i++) {
		struct token t = g->tokens[(g->thead + i) % g->tcap];

		if (strcmp(t.wid, wid) != 0)
			g->tokens[(g->thead + keep++) % g->tcap] = t;
	}
	g->tlen = keep;
}

/* --- awarding ------------------------------------------------------------- */

static void job_forget_prev(struct job *j)
{
	for (int i = 0; i < j->nprev; i++)
		free(j->prev_wid[i]);
	j->nprev = 0;
}

/* The job no longer waits for a done from its worker: its slot is free. */
static void job_untrack(struct job *j)
{
	struct wstat *w = j->ws;

	if (!j->tracked)
		return;
	j->tracked = 0;
	if (j->wprev)
		j->wprev->wnext = j->wnext;
	else
		w->jobs = j->wnext;
	if (j->wnext)
		j->wnext->wprev = j->wprev;
	j->wprev = j->wnext = NULL;
	w->inflight--;
}

static void job_track(struct job *j)
{
	struct wstat *w = j->ws;

	j->tracked = 1;
	j->wprev = NULL;
	j->wnext = w->jobs;
	if (w->jobs)
		w->jobs->wprev = j;
	w->jobs = j;
	w->inflight++;
}

static void job_finish(struct job *j)
{
	job_untrack(j);
	jq_remove(j);
	job_forget_prev(j);
	j->st = J_FINISHED;
	if (--j->m->open == 0)
		msg_free(j->m);
}

static int expired(const struct msg *m)
{
	return m->expires && ev_now(S.loop) >= m->expires;
}

/* Dead letter for every job of m still waiting (deadline, expiry,
 * shutdown). The caller must not touch m afterwards: it may be freed. */
static void drop_waiting(struct msg *m, const char *reason)
{
	emit_drop(m, reason);
	/* A freed m stays readable (it goes to the free list), and once freed
	 * no job of it is waiting. */
	for (int i = 0; i < m->njobs; i++)
		if (m->jobs[i].st == J_WAIT)
			job_finish(&m->jobs[i]);
}

static void drop_expired(struct msg *m)
{
	S.n_drop_expired++;
	drop_waiting(m, "expired");
}

/* --- per-worker figures ------------------------------------------------- */

static size_t wstat_hash(const struct group *g, const char *wid)
{
	size_t h = (size_t)g * 31;

	while (*wid)
		h = (h ^ (unsigned char)*wid++) * 16777619u;
	return h % WSTAT_BUCKETS;
}

static struct wstat *wstat_find(const struct group *g, const char *wid)
{
	for (struct wstat *w = S.wtab[wstat_hash(g, wid)]; w; w = w->next)
		if (w->g == g && !strcmp(w->wid, wid))
			return w;
	return NULL;
}

/* The figures of wid in g, made at its first award or credit; NULL past
 * WSTAT_MAX workers (forged wids must not grow memory without end). */
static struct wstat *wstat_of(struct group *g, const char *wid)
{
	size_t h = wstat_hash(g, wid);
	struct wstat *w = wstat_find(g, wid);

	if (w)
		return w;
	if (S.nwstat >= WSTAT_MAX) {
		S.n_untracked++;
		return NULL;
	}
	w = calloc(1, sizeof *w);
	if (!w)
		die(EXIT_SYSERR, "out of memory");
	w->g = g;
	w->svc = -1;
	snprintf(w->wid, sizeof w->wid, "%s", wid);
	w->gnext = g->workers;
	g->workers = w;
	w->next = S.wtab[h];
	S.wtab[h] = w;
	if (!S.wtail)
		S.wtail = &S.wlist;
	*S.wtail = w;
	S.wtail = &w->lnext;
	S.nwstat++;
	return w;
}

static void award(struct job *j, const char *wid)
{
	if (expired(j->m)) {
		/* Too late to be of use: not awarded; the bid's slot is kept. */
		token_add(j->g, wid);
		drop_expired(j->m);
		return;
	}
	snprintf(j->wid, sizeof j->wid, "%s", wid);
	j->st = J_AWARDED;
	j->t = ev_now(S.loop);
	j->heard_t = mq_heard(&S.mq);
	if ((j->ws = wstat_of(j->g, wid))) {
		j->ws->awarded++;
		j->ws->last_award = j->t;
	}
	j->attempts++;
	emit_assign(j);
	S.n_awarded++;
	/* A credit worker's done gives its slot back, whatever MQTT version
	 * either side speaks (the uuid is in the award's topic). A bidding
	 * worker acks only under MQTT 5 (mqlb-id); without acks the award is
	 * the end of our part. */
	if (j->ws && j->ws->slots) {
		job_track(j);
		jq_push(&j->g->awarded, j, 0);
	} else if (S.ack_timeout > 0 && mq_v5(&S.mq)) {
		if (j->ws)
			job_track(j);
		jq_push(&j->g->awarded, j, 0);
	} else {
		job_finish(j);
	}
}

static void group_kick(struct group *g, int now);
static void msg_arm(struct msg *m);
static void place(struct group *g);

/* Put a job back to be awarded again (its worker died, timed out or
 * refused): at the head of its group's queue, placed at once if a worker
 * is free. */
static void reaward(struct job *j)
{
	S.n_reawards++;
	job_untrack(j);
	if (j->st == J_AWARDED) {
		if (j->nprev == MAX_PREV) {
			free(j->prev_wid[0]);
			memmove(j->prev_wid, j->prev_wid + 1, (MAX_PREV - 1) * sizeof *j->prev_wid);
			j->nprev--;
		}
		j->prev_wid[j->nprev++] = xstrdup(j->wid);
	}
	j->st = J_WAIT;
	if (expired(j->m)) {
		drop_expired(j->m);
		return;
	}
	jq_push(&j->g->waiting, j, 1);
	place(j->g);
	if (j->st != J_WAIT)
		return;
	if (!ev_is_active(&j->m->wait)) {
		/* A new wait for bids, with a deadline of its own. */
		j->m->born = mq_heard(&S.mq);
		msg_arm(j->m);
	}
	group_kick(j->g, 1);
}

/* --- placement: which free worker gets the next job ---------------------- */

/* A worker that could take the group's next job: free now (free > 0), or
 * for --scheme soonest a busy credit worker expected free in avail seconds. */
struct cand {
	struct wstat *w; /* NULL for a bidder we have no figures for */
	const char *wid;
	unsigned free;
	int token;   /* free slots are tokens (bids), not credit */
	double avail, svc;
};

static int credit_live(const struct wstat *w)
{
	return w->slots && mq_heard(&S.mq) - w->credit_t < S.credit_ttl;
}

static int group_live(const struct group *g)
{
	for (const struct wstat *w = g->workers; w; w = w->gnext)
		if (credit_live(w))
			return 1;
	return 0;
}

/* Take one live token of wid (expired ones stay for tokens_purge());
 * 1 for a kept token, 0 for a fresh bid, -1 for none. */
static int token_take_wid(struct group *g, const char *wid)
{
	ev_tstamp now = ev_now(S.loop);

	for (unsigned i = 0; i < g->tlen; i++) {
		struct token *t = &g->tokens[(g->thead + i) % g->tcap];
		int kept = !t->fresh;

		if (t->expires <= now || strcmp(t->wid, wid))
			continue;
		for (unsigned k = i; k + 1 < g->tlen; k++)
			g->tokens[(g->thead + k) % g->tcap] = g->tokens[(g->thead + k + 1) % g->tcap];
		g->tlen--;
		return kept;
	}
	return -1;
}

/* The bids placed lately that found no job are tokens now. */
static void tokens_keep_fresh(struct group *g)
{
	for (unsigned i = 0; i < g->tlen; i++) {
		struct token *t = &g->tokens[(g->thead + i) % g->tcap];

		if (t->fresh) {
			t->fresh = 0;
			S.n_tokens_kept++;
		}
	}
}

static struct cand *cand_add(void)
{
	if (S.ncands == S.ccap) {
		S.ccap = S.ccap ? S.ccap * 2 : 64;
		S.cands = xrealloc(S.cands, S.ccap * sizeof *S.cands);
	}
	memset(&S.cands[S.ncands], 0, sizeof *S.cands);
	return &S.cands[S.ncands++];
}

/* Expected time until one of w's jobs ends: a job short of the worker's
 * usual time has what is left of it; one past it is taken to need as long
 * again as it has overrun, so a stuck worker stops being waited for. */
static double next_end(const struct wstat *w, double svc, ev_tstamp now)
{
	double best = -1;

	for (const struct job *j = w->jobs; j; j = j->wnext) {
		double r = svc - (now - j->t);

		if (r < 0)
			r = -r;
		if (best < 0 || r < best)
			best = r;
	}
	return best < 0 ? svc : best;
}

/* The candidates of g: credit workers with free slots (and, for soonest,
 * the busy ones), and bidders holding live tokens. */
static void cands_build(struct group *g)
{
	ev_tstamp now = ev_now(S.loop);
	double known = -1;

	S.ncands = 0;
	for (struct wstat *w = g->workers; w; w = w->gnext)
		if (w->svc >= 0 && (known < 0 || w->svc < known))
			known = w->svc;
	if (known < 0)
		known = 0; /* nothing measured yet: every worker looks fast */
	for (struct wstat *w = g->workers; w; w = w->gnext) {
		struct cand *c;
		unsigned f;

		if (!credit_live(w) || w->blocked)
			continue;
		f = w->slots > w->inflight ? w->slots - (unsigned)w->inflight : 0;
		if (!f && S.scheme != SCHEME_SOONEST)
			continue;
		c = cand_add();
		c->w = w;
		c->wid = w->wid;
		c->free = f;
		c->svc = w->svc >= 0 ? w->svc : known;
		if (!f)
			c->avail = next_end(w, c->svc, now);
	}
	tokens_purge(g, now);
	for (unsigned i = 0; i < g->tlen; i++) {
		const struct token *t = &g->tokens[(g->thead + i) % g->tcap];
		struct cand *c = NULL;

		for (size_t k = 0; k < S.ncands; k++)
			if (S.cands[k].token && !strcmp(S.cands[k].wid, t->wid))
				c = &S.cands[k];
		if (!c) {
			c = cand_add();
			c->token = 1;
			c->wid = t->wid;
			c->w = wstat_find(g, t->wid);
			c->svc = c->w && c->w->svc >= 0 ? c->w->svc : known;
		}
		c->free++;
	}
}

static double cost(const struct cand *c) { return c->free ? c->svc : c->avail + c->svc; }

/* Earlier is better between equals: the least recently awarded. */
static int fresher(const struct cand *a, const struct cand *b)
{
	return (a->w ? a->w->last_award : 0) < (b->w ? b->w->last_award : 0);
}

/* The free candidate the scheme wants, or NULL. */
static struct cand *cand_pick(void)
{
	struct cand *best = NULL;

	for (size_t k = 0; k < S.ncands; k++) {
		struct cand *c = &S.cands[k];

		if (!c->free)
			continue;
		if (!best) {
			best = c;
		} else if (S.scheme == SCHEME_LEAST) {
			if (c->free > best->free || (c->free == best->free && fresher(c, best)))
				best = c;
		} else if (S.scheme == SCHEME_SOONEST) {
			if (c->svc < best->svc || (c->svc == best->svc && fresher(c, best)))
				best = c;
		} else if (c->token != best->token) {
			/* first: bids in the order they came (the ring), then credit */
			if (c->token)
				best = c;
		} else if (!c->token && fresher(c, best)) {
			best = c;
		}
	}
	return best;
}

/* The busy credit worker whose next job would end soonest, if that beats
 * free's own time. */
static struct cand *cand_wait(const struct cand *free)
{
	struct cand *best = NULL;

	for (size_t k = 0; k < S.ncands; k++) {
		struct cand *c = &S.cands[k];

		if (!c->free && cost(c) < cost(free) && (!best || cost(c) < cost(best)))
			best = c;
	}
	return best;
}

static void give(struct cand *c, struct job *j)
{
	if (c->token && token_take_wid(j->g, c->wid) == 1)
		S.n_tokens_used++;
	c->free--;
	jq_remove(j);
	award(j, c->wid);
	if (c->free)
		return;
	if (c->token || !c->w || !c->w->slots)
		c->avail = 1e9; /* a bidder with no token left is no one to wait for */
	else
		c->avail = next_end(c->w, c->svc, ev_now(S.loop));
}

/* Give g's waiting jobs, oldest first, to free workers as the scheme says.
 * soonest: a job goes to a free worker unless waiting for a busy one
 * (its expected end plus its own time) would finish it sooner; such a job
 * stays at the head, and a timer looks again when waiting stops paying. */
static void place(struct group *g)
{
	struct job *j, *next;
	double flip = -1;
	int scanned = 0;

	if (!g->waiting.head)
		return;
	cands_build(g);
	for (j = g->waiting.head; j && scanned < PLACE_SCAN; j = next, scanned++) {
		struct cand *c = cand_pick(), *w;

		next = j->next;
		if (!c)
			break;
		if (S.scheme == SCHEME_SOONEST && (w = cand_wait(c))) {
			double d = cost(c) - cost(w);

			if (flip < 0 || d < flip)
				flip = d;
			w->avail += w->svc / (w->w && w->w->slots ? w->w->slots : 1);
			S.n_held++;
			continue;
		}
		give(c, j);
	}
	if (flip >= 0 && g->waiting.head) {
		ev_timer_stop(S.loop, &g->replace);
		ev_timer_set(&g->replace, flip > 0.001 ? flip : 0.001, 0);
		ev_timer_start(S.loop, &g->replace);
	}
}

static void replace_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct group *g = w->data;

	place(g);
	if (g->waiting.head)
		group_kick(g, 0);
}

/* --- requests and retries ------------------------------------------------- */

static const char *topic(const char *fmt, const char *a, const char *b)
{
	size_t need = S.plen + strlen(fmt) + strlen(a) + (b ? strlen(b) : 0) + 8;

	if (need > S.topiccap) {
		S.topiccap = need * 2;
		S.topicbuf = xrealloc(S.topicbuf, S.topiccap);
	}
	snprintf(S.topicbuf, S.topiccap, fmt, S.cf.prefix, a, b);
	return S.topicbuf;
}

static int msg_waiting(const struct msg *m)
{
	for (int i = 0; i < m->njobs; i++)
		if (m->jobs[i].st == J_WAIT)
			return 1;
	return 0;
}

/* Bids are fungible within a group (PROTOCOL.md), so a group with jobs
 * waiting needs one request at a time, for its oldest job, not one per
 * message: whatever bids it draws serve the queue from its head. Under a
 * backlog that keeps every worker busy, the requests follow the --retry
 * back-off and the work flows on the tokens that dones carry. */
static void group_ask(struct group *g)
{
	struct job *j = g->waiting.head;
	double next = S.retry[g->ask_idx < S.nretry ? g->ask_idx : S.nretry - 1];

	if (!j) {
		g->ask_idx = 0;
		return;
	}
	if (mq_publish(&S.mq, NULL, topic("%s/req/%s/%s", j->m->uuid, j->m->mtopic), 0, NULL, 0, 0,
		       NULL) == MOSQ_ERR_SUCCESS) {
		S.n_asked++;
		if (g->ask_idx)
			S.n_retries++;
	}
	g->ask_idx++;
	ev_timer_set(&g->ask, next, 0);
	ev_timer_start(S.loop, &g->ask);
}

static void ask_cb(struct ev_loop *loop, ev_timer *w, int revents) { group_ask(w->data); }

/* Jobs wait on g: ask now if no round is under way; with now set, start a
 * new round even so (a bid showed free slots, or a job came back), on the
 * next loop iteration, so that a burst of bids makes one request. */
static void group_kick(struct group *g, int now)
{
	if (!g->waiting.head || (ev_is_active(&g->ask) && !now))
		return;
	if (now && ev_is_active(&g->ask)) {
		if (g->ask_idx == 0)
			return; /* already due */
		ev_timer_stop(S.loop, &g->ask);
	}
	g->ask_idx = 0;
	if (now) {
		ev_timer_set(&g->ask, 0, 0);
		ev_timer_start(S.loop, &g->ask);
	} else {
		group_ask(g);
	}
}

/* A message waits for bids until --deadline, or its expiry if sooner.
 * The deadline runs on mq_heard(): bids sit unread while reading is paused
 * (our output is full), and a worker we could not hear is not missing. */
static void msg_arm(struct msg *m)
{
	ev_tstamp left = m->born + S.deadline - mq_heard(&S.mq);

	/* Paused, the deadline stands still: look again now and then rather
	 * than in a loop of timers due at once. */
	if (S.mq.read_paused && left < 1)
		left = 1;
	if (m->expires && m->expires - ev_now(S.loop) < left)
		left = m->expires - ev_now(S.loop);
	ev_timer_stop(S.loop, &m->wait);
	ev_timer_set(&m->wait, left > 0 ? left : 0, 0);
	ev_timer_start(S.loop, &m->wait);
}

static void wait_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct msg *m = w->data;

	if (!msg_waiting(m))
		return;
	if (expired(m))
		return drop_expired(m);
	for (int i = 0; i < m->njobs; i++)
		if (m->jobs[i].st == J_WAIT && group_live(m->jobs[i].g)) {
			/* Queued for a live credit worker's slot: someone will
			 * take it; the deadline counts from when none is left. */
			m->born = mq_heard(&S.mq);
			return msg_arm(m);
		}
	if (mq_heard(&S.mq) - m->born >= S.deadline) {
		/* Nobody could take it in time: a dead letter, never a silent loss. */
		S.n_drop_nobid++;
		return drop_waiting(m, "nobid");
	}
	msg_arm(m);
}

/* --- records in ----------------------------------------------------------- */

static struct group *group_find(const char *name, size_t n)
{
	for (struct group *g = S.groups; g; g = g->next)
		if (strlen(g->name) == n && !memcmp(g->name, name, n))
			return g;
	return NULL;
}

static struct group *group_new(const char *name)
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

static int group_has(const struct group *g, const char *filter)
{
	for (int i = 0; i < g->nfilters; i++)
		if (!strcmp(g->filters[i], filter))
			return 1;
	return 0;
}

static void bad(const char *what)
{
	S.n_bad_records++;
	warnl("line %lu: %s; skipped", S.in.lineno, what);
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

static struct msg *msg_new(void)
{
	struct msg *m = S.free;

	if (m) {
		S.free = m->hnext;
	} else {
		m = calloc(1, sizeof *m);
		if (!m)
			die(EXIT_SYSERR, "out of memory");
		ev_timer_init(&m->wait, wait_cb, 0, 0);
		m->wait.data = m;
	}
	m->njobs = m->open = 0;
	m->expires = 0;
	return m;
}

static void rec_msg(struct rec *r)
{
	unsigned long qos, retain;
	struct msg *m;
	size_t need;
	long mtl;

	/* msg <uuid> <qos> <retain> <filter> <mtopic> <payload> [<props>] */
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
		warnl("line %lu: msg %.36s seen before; skipped", S.in.lineno, r->f[1]);
		return;
	}
	m = msg_new();
	memcpy(m->uuid, r->f[1], 36);
	m->uuid[36] = '\0';
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
					m->expires = ev_now(S.loop) + (ev_tstamp)e;
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
	if (S.draining) {
		/* Read at the drain deadline: handed back, never dropped in silence. */
		emit_drop(m, "shutdown");
		S.n_drop_shutdown++;
		m->hnext = S.free;
		S.free = m;
		return;
	}

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
	S.n_msg++;
	m->born = mq_heard(&S.mq);
	S.npending++;
	m->hnext = S.hash[uuid_hash(m->uuid) & S.hmask];
	S.hash[uuid_hash(m->uuid) & S.hmask] = m;
	if (m->njobs == 0) {
		emit_drop(m, "nogroup");
		S.n_drop_nogroup++;
		msg_free(m);
		return;
	}
	m->open = m->njobs;
	for (int i = 0; i < m->njobs; i++) {
		m->jobs[i].st = J_WAIT;
		jq_push(&m->jobs[i].g->waiting, &m->jobs[i], 0);
	}
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

/* --- messages from the broker: bids, dones, wills -------------------------- */

static struct job *job_of(struct msg *m, const struct group *g, enum jstate st)
{
	for (int i = 0; m && i < m->njobs; i++)
		if (m->jobs[i].g == g && m->jobs[i].st == st)
			return &m->jobs[i];
	return NULL;
}

/* A free slot of worker wid in group g: the bid's own message if it still
 * waits on g, else the oldest message waiting on g, else a token. */
static void offer(struct group *g, const char *wid, const char *uuid)
{
	struct job *j = uuid ? job_of(msg_find(uuid), g, J_WAIT) : NULL;

	if (S.scheme != SCHEME_FIRST) {
		/* The slot joins the others; the scheme picks among them. */
		token_put(g, wid, 1);
		place(g);
		tokens_keep_fresh(g);
		return;
	}
	if (!j)
		j = g->waiting.head;
	if (j) {
		jq_remove(j);
		award(j, wid);
		return;
	}
	token_add(g, wid);
}

/* The job of m for group g, if wid held it before it was taken back. */
static struct job *job_late(struct msg *m, const struct group *g, const char *wid)
{
	for (int i = 0; m && i < m->njobs; i++) {
		struct job *j = &m->jobs[i];

		if (j->g != g || j->st == J_FINISHED)
			continue;
		for (int k = 0; k < j->nprev; k++)
			if (!strcmp(j->prev_wid[k], wid))
				return j;
	}
	return NULL;
}

static void emit_done(const struct job *j, const char *result, size_t n)
{
	out_raw(&S.out, "done", 4);
	out_raw(&S.out, j->m->uuid, 36);
	out_str(&S.out, j->g->name);
	out_str(&S.out, j->wid);
	out_field(&S.out, result, n);
	out_end(&S.out);
}

static void on_done(struct group *g, const char *wid, const char *uuid, char *payload, size_t n)
{
	struct msg *m = msg_find(uuid);
	struct job *j = NULL, *late;
	struct wstat *w;
	unsigned long free_slots = 0;
	char *fs;

	/* "ok", "fail <reason>", either optionally followed by " free=<n>" */
	if ((fs = strstr(payload, " free=")) || !strncmp(payload, "free=", 5)) {
		char *end, *v = fs ? fs + 6 : payload + 5;

		free_slots = strtoul(v, &end, 10);
		if (*end || end == v || free_slots > 65535) {
			S.n_forged++;
			warnl("done from %s/%s: bad free count \"%s\"; ignored", g->name, wid, v);
			return;
		}
		if (fs)
			*fs = '\0';
		else
			*payload = '\0';
		n = strlen(payload);
	}
	for (int i = 0; m && i < m->njobs; i++)
		if (m->jobs[i].g == g && m->jobs[i].st == J_AWARDED && !strcmp(m->jobs[i].wid, wid))
			j = &m->jobs[i];
	if (!j && n && (late = job_late(m, g, wid))) {
		/* Taken back from this worker (its will fired, or no done in
		 * time), yet it finished. An ok means the job ran: done, even if
		 * it was awarded again meanwhile (that run is the duplicate). A
		 * late fail changes nothing: the job is already elsewhere. */
		if (!strcmp(payload, "ok")) {
			S.n_done_late++;
			infol("late done for %s from %s/%s, which had lost it: accepted", uuid, g->name, wid);
			snprintf(late->wid, sizeof late->wid, "%s", wid);
			emit_done(late, payload, n);
			job_finish(late);
		} else {
			debugl("late \"%s\" for %s from %s/%s: the job is elsewhere", payload, uuid, g->name, wid);
		}
	} else if (!j && n) {
		if (m && job_of(m, g, J_AWARDED)) {
			S.n_forged++;
			warnl("done for %s from %s/%s, which was not awarded it; ignored", uuid, g->name, wid);
		} else {
			debugl("done for %s from %s/%s: not pending (late or duplicate)", uuid, g->name, wid);
		}
	} else if (j && !strcmp(payload, "ok")) {
		S.n_done_ok++;
		if (j->ws) {
			double t = ev_now(S.loop) - j->t;

			j->ws->ok++;
			hist_add(&j->ws->lat, t);
			j->ws->svc = j->ws->svc < 0 ? t : j->ws->svc + EWMA * (t - j->ws->svc);
		}
		emit_done(j, payload, n);
		job_finish(j);
	} else if (j && !strncmp(payload, "fail", 4)) {
		S.n_done_fail++;
		if (j->ws)
			j->ws->fail++;
		emit_done(j, payload, n);
		if (!strcmp(payload, "fail busy")) {
			/* Its slots are taken by another balancer's jobs: none from
			 * us until it says it has one again (a done or credit). */
			S.n_busy++;
			if (j->ws && j->ws->slots)
				j->ws->blocked = 1;
			j->attempts--; /* refused, not tried: no attempt spent */
			reaward(j);
		} else if (j->attempts >= S.max_attempts) {
			emit_drop(m, "failed");
			S.n_drop_failed++;
			job_finish(j);
		} else {
			reaward(j);
		}
	} else if (j) {
		S.n_forged++;
		warnl("done for %s from %s/%s: bad result \"%s\"; ignored", uuid, g->name, wid, payload);
	}
	/* Slots freed by a job another balancer awarded are that one's. */
	if (free_slots && !m && !recent_has(uuid)) {
		S.n_foreign++;
		free_slots = 0;
	}
	while (free_slots--)
		offer(g, wid, NULL);
	if ((w = wstat_find(g, wid)) && w->slots) {
		/* A credit worker's done, ours or another balancer's, frees a
		 * slot there; with a refusal it is busy elsewhere. */
		if (strcmp(payload, "fail busy"))
			w->blocked = 0;
		place(g);
	} else if (g->waiting.head) {
		/* A bidder that finished may be free: ask now rather than after
		 * the retry back-off. */
		group_kick(g, 1);
	}
}

/* P/credit/group/wid: "slots [uuid ...]", the slots of a credit worker and
 * the jobs it holds. The jobs named are in progress: their --ack-timeout
 * starts again, so a long job is not taken back from a live worker. */
static void on_credit(struct group *g, const char *wid, char *payload)
{
	struct wstat *w;
	unsigned long slots;
	char *end, *u;

	slots = strtoul(payload, &end, 10);
	if (end == payload || (*end && *end != ' ') || slots > 65535 || *payload == '-' ||
	    *payload == '+') {
		S.n_credit_bad++;
		warnl("credit from %s/%s: bad payload \"%.40s\"; ignored", g->name, wid, payload);
		return;
	}
	if (!(w = wstat_of(g, wid)))
		return;
	S.n_credit++;
	w->slots = (unsigned)slots;
	w->credit_t = mq_heard(&S.mq);
	w->blocked = 0;
	for (struct job *j = w->jobs; j; j = j->wnext)
		j->listed = 0;
	while ((u = strtok_r(end, " ", &end)))
		for (struct job *j = w->jobs; j; j = j->wnext)
			if (strlen(u) == 36 && !memcmp(j->m->uuid, u, 36)) {
				S.n_progress++;
				j->listed = 1;
				j->heard_t = mq_heard(&S.mq);
				jq_push(&g->awarded, j, 0);
				break;
			}
	/* A job awarded before the last credit message came had reached the
	 * worker by the time it wrote this one, or was lost on the way (an
	 * award at QoS 0 the broker dropped): not named, it is not there. */
	for (struct job *j = w->jobs, *next; j; j = next) {
		next = j->wnext;
		if (!j->listed && w->credit_at && j->t < w->credit_at) {
			S.n_lost++;
			warnl("job %s is not with %s/%s, which had it awarded: awarded again", j->m->uuid,
			      g->name, wid);
			reaward(j);
		}
	}
	w->credit_at = ev_now(S.loop);
	place(g);
}

static void on_gone(struct group *g, const char *wid)
{
	struct job *j, *next;
	struct wstat *w;

	S.n_gone++;
	tokens_drop_wid(g, wid);
	if ((w = wstat_find(g, wid))) {
		w->slots = 0; /* no credit: no more jobs until it announces again */
		w->blocked = 0;
		w->credit_at = 0;
	}
	/* From the newest: each goes back to the front of the queue, so the
	 * oldest ends up first again. */
	for (j = g->awarded.tail; j; j = next) {
		next = j->prev;
		if (!strcmp(j->wid, wid)) {
			infol("worker %s/%s is gone: job %s awarded again", g->name, wid, j->m->uuid);
			reaward(j);
		}
	}
}

/* Split "a/b/rest" after the prefix: up to n levels, the rest in *rest. */
static int levels(char *t, char **lv, int n, char **rest)
{
	int k = 0;

	while (k < n) {
		char *s = strchr(t, '/');

		lv[k++] = t;
		if (!s) {
			*rest = NULL;
			return k;
		}
		*s = '\0';
		t = s + 1;
	}
	*rest = t;
	return k;
}

static void on_message(struct mq *mq, const struct mosquitto_message *msg,
		       const mosquitto_property *props, void *arg)
{
	char *t, *lv[4], *rest;
	struct group *g;
	int k;

	if (strncmp(msg->topic, S.cf.prefix, S.plen) || msg->topic[S.plen] != '/')
		return;
	t = msg->topic + S.plen + 1;
	if (!strncmp(t, "rsp/", 4)) {
		/* rsp/{group}/{wid}/{uuid}/{mtopic} */
		S.n_bids++;
		k = levels(t + 4, lv, 3, &rest);
		if (k < 3 || !(g = group_find(lv[0], strlen(lv[0]))) || !g->nfilters || !*lv[1] ||
		    strlen(lv[1]) > MAX_LEVEL || !rec_uuid_ok(lv[2], strlen(lv[2]))) {
			S.n_bids_ignored++;
			return;
		}
		if (!msg_find(lv[2]) && !recent_has(lv[2])) {
			S.n_foreign++;
			return;
		}
		offer(g, lv[1], lv[2]);
		/* A bid shows free slots: more of the queue may find takers. */
		group_kick(g, 1);
	} else if (!strncmp(t, "done/", 5)) {
		k = levels(t + 5, lv, 3, &rest);
		if (k != 3 || rest || !(g = group_find(lv[0], strlen(lv[0]))) || !*lv[1] ||
		    strlen(lv[1]) > MAX_LEVEL || !rec_uuid_ok(lv[2], strlen(lv[2]))) {
			S.n_forged++;
			warnl("bad done topic %s; ignored", msg->topic);
			return;
		}
		on_done(g, lv[1], lv[2], msg->payload ? msg->payload : "", (size_t)msg->payloadlen);
	} else if (!strncmp(t, "credit/", 7)) {
		k = levels(t + 7, lv, 2, &rest);
		if (k != 2 || rest || !*lv[0] || !*lv[1] || strlen(lv[0]) > MAX_LEVEL ||
		    strlen(lv[1]) > MAX_LEVEL || strpbrk(lv[0], "+#") || strpbrk(lv[1], "+#")) {
			S.n_credit_bad++;
			warnl("bad credit topic %s; ignored", msg->topic);
			return;
		}
		/* The credit may come before mqlb-sub's group record does. */
		if (!(g = group_find(lv[0], strlen(lv[0])))) {
			if (S.ngroups >= WSTAT_MAX) {
				S.n_credit_bad++;
				return;
			}
			g = group_new(lv[0]);
		}
		on_credit(g, lv[1], msg->payload ? msg->payload : "");
	} else if (!strncmp(t, "gone/", 5)) {
		k = levels(t + 5, lv, 2, &rest);
		if (k == 2 && !rest && (g = group_find(lv[0], strlen(lv[0]))))
			on_gone(g, lv[1]);
	}
	if (out_full(&S.out))
		mq_pause_read(&S.mq, 1);
}

/* On mq_heard() too: a done we did not read is not a missing done. */
static void ack_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	ev_tstamp now = mq_heard(&S.mq);

	for (struct group *g = S.groups; g; g = g->next)
		while (g->awarded.head && now - g->awarded.head->heard_t >= S.ack_timeout) {
			struct job *j = g->awarded.head;

			warnl("no done for %s from %s/%s in %gs", j->m->uuid, g->name, j->wid, S.ack_timeout);
			if (j->attempts >= S.max_attempts) {
				emit_drop(j->m, "noack");
				S.n_drop_failed++;
				job_finish(j);
			} else {
				reaward(j);
			}
		}
}

/* --- input, flow control, shutdown ---------------------------------------- */

static void finish_cb(int revents, void *arg)
{
	mq_disconnect(&S.mq);
	if (out_drain_blocking(&S.out) < 0 && S.out.err != EPIPE)
		exit(EXIT_SYSERR);
	exit(EXIT_OK);
}

/* Exit from the loop, never from inside a libmosquitto callback. */
static void finish(void)
{
	if (!S.finishing)
		ev_once(S.loop, -1, 0, 0, finish_cb, NULL);
	S.finishing = 1;
}

/* Stopping or not, input is read to its end: a record left in the pipe
 * at exit would be lost without a word. */
static void maybe_resume(void)
{
	if (S.input_done && S.npending == 0) {
		finish();
		return;
	}
	if (S.in.paused && !S.draining && S.npending < S.max_pending && !out_full(&S.out))
		in_resume(&S.in);
}

static void on_line(struct in *in, char *line, size_t n, void *arg)
{
	struct rec r;
	int rc = rec_split(line, n, &r);

	if (rc == 1)
		return;
	if (rc < 0)
		return bad("too many fields");
	if (rec_is(&r, 0, "msg"))
		rec_msg(&r);
	else if (rec_is(&r, 0, "group"))
		rec_group(&r);
	else if (rec_is(&r, 0, "ungroup"))
		rec_ungroup(&r);
	else
		out_rec(&S.out, &r);
	if (!S.draining && (S.npending >= S.max_pending || out_full(&S.out)))
		in_pause(in);
}

static void on_eof(struct in *in, int err, void *arg)
{
	if (err)
		warnl("reading records: %s", strerror(err));
	S.input_done = 1;
	maybe_resume();
}

static void on_drain(struct out *o, void *arg)
{
	mq_pause_read(&S.mq, 0);
	maybe_resume();
}

static void on_out_error(struct out *o, void *arg)
{
	if (o->err != EPIPE)
		die(EXIT_SYSERR, "cannot write records: %s", strerror(o->err));
	/* Downstream is gone: awards can no longer reach anyone. Name each
	 * message on the way out, so none goes without a word. */
	if (S.npending)
		warnl("output closed with %ld messages pending; stopping", S.npending);
	for (size_t i = 0; i <= S.hmask; i++)
		for (struct msg *m = S.hash[i]; m; m = m->hnext)
			errl("lost at exit, output closed: %s %s (%s)", m->uuid, m->mtopic,
			     msg_waiting(m) ? "not awarded" : "awarded, no done yet");
	exit(S.npending ? EXIT_SYSERR : EXIT_OK);
}

/* Read every record the input holds right now, without waiting for more;
 * in draining mode each msg becomes a drop record. Bounded in time, in
 * case the writer keeps writing. */
static void drain_input(void)
{
	struct pollfd p = { .fd = S.in.fd, .events = POLLIN };
	ev_tstamp until = ev_time() + 2;

	if (S.in.eof || S.input_done)
		return;
	S.in.paused = 0;
	/* in's callback hands out the lines it holds, then reads once */
	do
		ev_invoke(S.loop, &S.in.w, EV_READ);
	while (!S.in.eof && poll(&p, 1, 0) > 0 && ev_time() < until);
	in_pause(&S.in);
}

static void drain_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	unsigned long awarded = 0;

	/* Out of time: what still waits for a bid, and every msg still in the
	 * pipe, is handed back as a drop record, never lost without a word. */
	S.draining = 1;
	for (size_t i = 0; i <= S.hmask; i++)
		for (struct msg *m = S.hash[i], *next; m; m = next) {
			next = m->hnext;
			if (msg_waiting(m)) {
				S.n_drop_shutdown++;
				drop_waiting(m, "shutdown");
			}
		}
	drain_input();
	for (struct group *g = S.groups; g; g = g->next)
		for (struct job *j = g->awarded.head; j; j = j->next)
			awarded++;
	if (awarded)
		warnl("exiting with %lu award%s not acknowledged: left with the workers", awarded,
		      awarded == 1 ? "" : "s");
	finish();
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	if (S.stopping) {
		/* Asked twice: what still waits becomes drop records now. */
		if (!S.draining)
			drain_cb(loop, &S.drain, 0);
		return;
	}
	infol("signal %d: stopping after %ld pending messages and the rest of the input",
	      w->signum, S.npending);
	S.stopping = 1;
	ev_timer_set(&S.drain, S.drain_timeout, 0);
	ev_timer_start(loop, &S.drain);
	maybe_resume();
}

/* "worker.GROUP/WID.FIELD" per worker ever awarded a job: the kind.key.field
 * form mqlb-stat turns into a labelled Prometheus metric. */
static void worker_stats(struct out *o)
{
	char name[2 * MAX_LEVEL + 32];

	for (struct wstat *w = S.wlist; w; w = w->lnext) {
#define WSTAT(field, v) \
	(snprintf(name, sizeof name, "worker.%s/%s." field, w->g->name, w->wid), out_stat(o, name, v))
		WSTAT("inflight", w->inflight);
		WSTAT("slots", credit_live(w) ? w->slots : 0);
		WSTAT("svc_us", w->svc < 0 ? 0 : (unsigned long)(w->svc * 1e6));
		WSTAT("awarded", w->awarded);
		WSTAT("done_ok", w->ok);
		WSTAT("done_fail", w->fail);
		WSTAT("us_p50", hist_quantile_us(&w->lat, 0.5));
		WSTAT("us_p99", hist_quantile_us(&w->lat, 0.99));
#undef WSTAT
	}
}

static void stats_line(struct conn *c, char *line, size_t n, void *arg)
{
	unsigned long tokens = 0, waiting = 0, awarded = 0;

	if (!srv_stats_query(c, line, n))
		return;
	for (struct group *g = S.groups; g; g = g->next) {
		tokens_purge(g, ev_now(S.loop));
		tokens += g->tlen;
		for (struct job *j = g->waiting.head; j; j = j->next)
			waiting++;
		for (struct job *j = g->awarded.head; j; j = j->next)
			awarded++;
	}
#define STAT(name, v) out_stat(&c->out, name, (unsigned long)(v))
	STAT("pending", S.npending);
	STAT("waiting", waiting);
	STAT("unacked", awarded);
	STAT("tokens", tokens);
	STAT("msg", S.n_msg);
	STAT("asked", S.n_asked);
	STAT("retries", S.n_retries);
	STAT("awarded", S.n_awarded);
	STAT("tokens_used", S.n_tokens_used);
	STAT("tokens_kept", S.n_tokens_kept);
	STAT("tokens_expired", S.n_tokens_expired);
	STAT("bids", S.n_bids);
	STAT("bids_ignored", S.n_bids_ignored);
	STAT("foreign", S.n_foreign);
	STAT("done_ok", S.n_done_ok);
	STAT("done_fail", S.n_done_fail);
	STAT("reawards", S.n_reawards);
	STAT("gone", S.n_gone);
	STAT("forged", S.n_forged);
	STAT("drop_nobid", S.n_drop_nobid);
	STAT("drop_nogroup", S.n_drop_nogroup);
	STAT("drop_failed", S.n_drop_failed);
	STAT("drop_shutdown", S.n_drop_shutdown);
	STAT("drop_expired", S.n_drop_expired);
	STAT("done_late", S.n_done_late);
	STAT("bad_records", S.n_bad_records);
	STAT("connected", S.mq.connected);
	STAT("paused", S.mq.read_paused);
	STAT("workers_untracked", S.n_untracked);
	STAT("credit", S.n_credit);
	STAT("credit_bad", S.n_credit_bad);
	STAT("busy", S.n_busy);
	STAT("held", S.n_held);
	STAT("progress", S.n_progress);
	STAT("lost", S.n_lost);
#undef STAT
	worker_stats(&c->out);
	out_raw(&c->out, "ok", 2);
	out_end(&c->out);
}

static void on_connected(struct mq *mq, int first, void *arg)
{
	static const char *subs[] = { "rsp/#", "done/#", "gone/#", "credit/#" };

	S.subs_left = 4;
	for (int i = 0; i < 4; i++) {
		char t[300];

		snprintf(t, sizeof t, "%s/%s", S.cf.prefix, subs[i]);
		mq_subscribe(mq, NULL, t, i == 0 ? 0 : 1, 0);
	}
}

static void on_subscribed(struct mq *mq, int mid, int n, const int *granted, void *arg)
{
	if (n < 1 || granted[0] >= 0x80)
		die(EXIT_UNREACH, "the broker refused a subscription under %s/", S.cf.prefix);
	if (--S.subs_left == 0 && !S.ready) {
		S.ready = 1;
		ready_notify(S.cf.ready_fd);
	}
}

static const struct mq_cb callbacks = {
	.connected = on_connected,
	.message = on_message,
	.subscribed = on_subscribed,
};

int main(int argc, char **argv)
{
	static const double default_retry[] = { 0.05, 0.1, 0.2, 0.5, 1 };
	size_t buckets = 1024;

	S.token_ttl = 0.8;
	S.deadline = 30;
	S.max_pending = 10000;
	S.ack_timeout = 60;
	S.max_attempts = 3;
	S.drain_timeout = 10;
	S.credit_ttl = 30;
	opt_parse(&argc, &argv, OPT_MQTT | OPT_LISTEN | OPT_READY, "", longopts, opt, usage, &S.cf);
	if (optind < argc)
		opt_usage_error("unexpected argument \"%s\"", argv[optind]);
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
	ev_timer_init(&S.drain, drain_cb, 0, 0);
	ev_timer_init(&S.purge, purge_cb, 1, S.token_ttl < 1 ? S.token_ttl : 1);
	ev_timer_start(S.loop, &S.purge);
	ev_timer_init(&S.acks, ack_cb, 0.25, S.ack_timeout > 4 ? 1 : S.ack_timeout / 4 + 0.01);
	if (S.ack_timeout > 0)
		ev_timer_start(S.loop, &S.acks);

	mq_init(&S.mq, S.loop, &S.cf.mq, &callbacks, NULL);
	mq_start(&S.mq);
	in_init(&S.in, S.loop, STDIN_FILENO, 256u << 20, on_line, on_eof, NULL);
	ev_run(S.loop, 0);
	return EXIT_OK;
}
