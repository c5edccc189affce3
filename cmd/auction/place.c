/* SPDX-License-Identifier: MIT */
/* place.c: placement: which free worker gets the next job (--scheme), the
 * award, and the award again of a job taken back. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auction.h"
#include "log.h"

/* --- awarding ------------------------------------------------------------- */

void award(struct job *j, const char *wid)
{
	if (expired(j->m)) {
		/* Too late to be of use: not awarded; the bid's slot is kept. */
		token_add(j->g, wid);
		drop_expired(j->m);
		return;
	}
	snprintf(j->wid, sizeof j->wid, "%s", wid);
	j->st = J_AWARDED;
	j->ahead = 0;
	j->begun = 0;
	j->t = ev_now(S.st.loop);
	j->heard_t = mq_heard(&S.st.mq);
	if ((j->ws = wstat_of(j->g, wid))) {
		j->ws->awarded++;
		j->ws->last_award = j->t;
		j->ws->award_no = j->g->awards + 1;
	}
	j->g->awards++;
	j->attempts++;
	if (j->attempts == 1)
		hist_add(&j->g->wait, j->heard_t - j->m->arrived);
	emit_assign(j);
	S.n_awarded++;
	/* A credit worker's done gives its slot back, whatever MQTT version
	 * either side speaks (the uuid is in the award's topic). A bidding
	 * worker acks only under MQTT 5 (mqlb-id), and only one that showed it
	 * does is waited for; without acks the award is the end of our part. */
	if (j->ws && j->ws->slots) {
		job_track(j);
		jq_push(&j->g->awarded, j, 0);
	} else if (S.ack_timeout > 0 && mq_v5(&S.st.mq) && !(j->ws && j->ws->acks < 0)) {
		if (j->ws)
			job_track(j);
		jq_push(&j->g->awarded, j, 0);
	} else {
		job_finish(j);
	}
}


/* Put a job back to be awarded again (its worker died, timed out or
 * refused): at the head of its group's queue, placed at once if a worker
 * is free. */
void reaward(struct job *j)
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
		j->m->born = mq_heard(&S.st.mq);
		msg_arm(j->m);
	}
	group_kick(j->g, 1);
}

/* A waiting job w says it runs (its credit names it): w's, with no award.
 * Either its will came from a broker going down and w runs it still, or an
 * earlier run of ours awarded it and mqlb-sub wrote it out again. */
void job_attach(struct job *j, struct wstat *w)
{
	infol("job %s is with %s/%s: kept there", j->m->uuid, j->g->name, w->wid);
	jq_remove(j);
	snprintf(j->wid, sizeof j->wid, "%s", w->wid);
	j->st = J_AWARDED;
	j->ws = w;
	j->ahead = 0;
	j->begun = 0;
	j->park_until = 0;
	if (!j->attempts) {
		/* never awarded here: it was, by the run before */
		j->attempts = 1;
		j->t = ev_now(S.st.loop);
	} /* else j->t stays: its award's time */
	j->heard_t = mq_heard(&S.st.mq);
	j->listed = 1;
	job_track(j);
	jq_push(&j->g->awarded, j, 0);
	S.n_kept++;
}

/* m came after a replay record: an earlier run of ours may have awarded
 * it, and a worker may run it still. A worker whose credit named it
 * keeps it; for the others, it waits HELLO_WAIT (or, while we are not
 * connected, until we are and then that long) for a credit or done to
 * name it before it goes to anyone. */
void replay_park(struct msg *m)
{
	S.n_replayed++;
	for (int i = 0; i < m->njobs; i++) {
		struct job *j = &m->jobs[i];
		struct wstat *w = claimant(j->g, m->uuid);

		if (w) {
			job_attach(j, w);
			claim_drop(w, m->uuid);
		} else
			j->park_until = S.st.mq.connected && S.ready ? ev_now(S.st.loop) + HELLO_WAIT
								      : PARKED;
	}
}

/* --- placement: which free worker gets the next job ---------------------- */

/* A worker that could take the group's next job: free now (free > 0), or
 * for --scheme soonest a busy credit worker expected free in avail seconds. */
struct cand {
	struct wstat *w; /* NULL for a bidder we have no figures for */
	/* A copy: a token's wid moves in its ring as tokens are taken. */
	char wid[MAX_LEVEL + 1];
	unsigned free;
	unsigned ahead; /* busy: jobs it would still keep waiting (credit +ahead) */
	int token;   /* free slots are tokens (bids), not credit */
	int overrun; /* busy, and its soonest job is past the worker's usual time */
	int stale;   /* free, and its time too old to go by: counts as the fastest */
	double avail, svc;
};

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
static double next_end(const struct wstat *w, double svc, ev_tstamp now, int *overrun)
{
	double best = -1;
	unsigned waiting = 0;

	*overrun = 0;
	for (const struct job *j = w->jobs; j; j = j->wnext) {
		double r = svc - (now - j->t);
		int over = r < 0;

		/* Awarded ahead: it starts when a slot comes free, and takes
		 * that slot for its own time. */
		if (j->ahead) {
			if (!j->begun) {
				waiting++;
				continue;
			}
			r = svc - (now - j->begun);
			over = r < 0;
		}
		if (over)
			r = -r;
		if (best < 0 || r < best) {
			best = r;
			*overrun = over;
		}
	}
	return (best < 0 ? svc : best) + waiting * svc / (w->slots ? w->slots : 1);
}

/* A worker's time is stale once its group has made this many awards and
 * this many seconds have passed since its own last one: the next job it
 * is free for measures it anew. Without it a worker that was slow once (a
 * cold first job, a noisy round trip) would never be given the job that
 * shows it is fast again. A worker benched for being truly slow gets one
 * job in STALE_AWARDS at most. */
#define STALE_AWARDS 200
#define STALE_T 1.0

static int stale(const struct wstat *w, ev_tstamp now)
{
	return w->svc >= 0 && !wstat_busy(w) && w->g->awards - w->award_no >= STALE_AWARDS &&
	       now - w->last_award >= STALE_T;
}

/* The candidates of g: credit workers with free slots (and, for soonest,
 * the busy ones), and bidders holding live tokens. */
static void cands_build(struct group *g)
{
	ev_tstamp now = ev_now(S.st.loop);
	double known = -1;

	S.ncands = 0;
	for (struct wstat *w = g->workers; w; w = w->gnext)
		if (w->svc >= 0 && (known < 0 || w->svc < known))
			known = w->svc;
	if (known < 0)
		known = 0; /* nothing measured yet: every worker looks fast */
	for (struct wstat *w = g->workers; w; w = w->gnext) {
		struct cand *c;
		unsigned f, over;
		unsigned long busy = wstat_busy(w); /* a claim takes a slot too */

		if (!credit_live(w) || w->blocked)
			continue;
		f = w->slots > busy ? w->slots - (unsigned)busy : 0;
		if (!f && S.scheme != SCHEME_SOONEST)
			continue;
		c = cand_add();
		c->w = w;
		snprintf(c->wid, sizeof c->wid, "%s", w->wid);
		c->free = f;
		c->svc = w->svc >= 0 ? w->svc : known;
		if (f && S.scheme == SCHEME_SOONEST && stale(w, now)) {
			c->stale = 1;
			c->svc = known;
		}
		if (!f)
			c->avail = next_end(w, c->svc, now, &c->overrun);
		/* Jobs it may still keep waiting once its slots are taken; only
		 * on a time of its own, measured. */
		over = busy > w->slots ? (unsigned)busy - w->slots : 0;
		if (w->svc >= 0 && over < w->ahead)
			c->ahead = w->ahead - over;
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
			snprintf(c->wid, sizeof c->wid, "%s", t->wid);
			c->w = wstat_find(g, t->wid);
			c->svc = c->w && c->w->svc >= 0 ? c->w->svc : known;
		}
		c->free++;
	}
}

/* Expected times closer than this factor count as equal. */
#define SAME 1.25

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
			/* Times within a quarter of each other are equal: such
			 * workers share the work, and each one's time stays
			 * measured (one slow first job must not bench it). */
			if (c->svc * SAME < best->svc || (c->svc <= best->svc * SAME && fresher(c, best)))
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

		if (!c->free && cost(c) * SAME < cost(free) && (!best || cost(c) < cost(best)))
			best = c;
	}
	return best;
}

/* The group's arrival rate: a count that decays over RATE_TAU seconds. */
#define RATE_TAU 2.0
/* Held for faster workers only while they can take this much of the load. */
#define HOLD_LOAD 0.9

static double group_rate(const struct group *g)
{
	return g->rate / (1 + (ev_now(S.st.loop) - g->rate_t) / RATE_TAU);
}

void group_arrival(struct group *g)
{
	g->rate = group_rate(g) + 1 / RATE_TAU;
	g->rate_t = ev_now(S.st.loop);
}

/* Jobs a second that the credit workers faster than c take at their usual
 * times. */
static double faster_capacity(const struct cand *c)
{
	double cap = 0;

	for (size_t k = 0; k < S.ncands; k++) {
		const struct cand *o = &S.cands[k];

		if (o != c && o->svc < c->svc && o->w && o->w->slots)
			cap += o->w->slots / (o->svc > 1e-4 ? o->svc : 1e-4);
	}
	return cap;
}

static void give(struct cand *c, struct job *j)
{
	if (c->token && token_take_wid(j->g, c->wid) == 1)
		S.n_tokens_used++;
	c->free--;
	jq_remove(j);
	award(j, c->wid);
	if (c->stale) {
		/* Its job measures it anew; until then it is what it was. */
		c->stale = 0;
		c->svc = c->w->svc;
		if (j->st == J_AWARDED) {
			c->w->probe = 1;
			S.n_probes++;
		}
	}
	if (c->free)
		return;
	if (c->token || !c->w || !c->w->slots)
		c->avail = 1e9; /* a bidder with no token left is no one to wait for */
	else
		c->avail = next_end(c->w, c->svc, ev_now(S.st.loop), &c->overrun);
}

/* --ahead: the busy credit worker to award j now, though all its slots
 * run: the one whose next slot the job would wait for anyway (the best
 * busy one, or one within a quarter of it), if it keeps jobs waiting
 * (+ahead), its soonest job is not overdue, and that slot is expected free
 * within --ahead. The job then starts when the slot frees, without the
 * round trip of a done and an award between. Else *later: when to look
 * again. */
static struct cand *cand_ahead(const struct cand *wait, double *later)
{
	struct cand *best = NULL;
	const struct cand *any = NULL;

	for (size_t k = 0; k < S.ncands; k++) {
		struct cand *c = &S.cands[k];

		if (c->free || c->token || !c->w)
			continue;
		if (!any || cost(c) < cost(any))
			any = c;
		if (c->ahead && !c->overrun && (!best || cost(c) < cost(best)))
			best = c;
	}
	if (wait)
		any = wait;
	if (!best || cost(best) > cost(any) * SAME)
		return NULL;
	if (best->avail <= S.ahead)
		return best;
	if (*later < 0 || best->avail - S.ahead < *later)
		*later = best->avail - S.ahead;
	return NULL;
}

void ahead_begins(struct wstat *w)
{
	struct job *first = NULL;

	for (struct job *j = w->jobs; j; j = j->wnext)
		if (j->ahead && !j->begun && (!first || j->t < first->t))
			first = j;
	if (first)
		first->begun = ev_now(S.st.loop);
}

static void give_ahead(struct cand *c, struct job *j)
{
	c->ahead--;
	jq_remove(j);
	award(j, c->wid);
	if (j->st != J_AWARDED)
		return;
	j->ahead = 1;
	S.n_ahead++;
	/* Its next slot goes to this job: the one after comes later. */
	c->avail += c->svc / c->w->slots;
}

/* Give g's waiting jobs, oldest first, to free workers as the scheme says.
 * soonest: a job goes to a free worker unless waiting for a busy one
 * (its expected end plus its own time) would finish it sooner; such a job
 * stays at the head, and a timer looks again when waiting stops paying.
 * But when the faster workers cannot keep up with the jobs coming in, a
 * queue held for them only grows: then a free slower one takes work. */
void place(struct group *g)
{
	struct job *j, *next;
	double flip = -1, rate;
	int scanned = 0;

	if (!g->waiting.head)
		return;
	cands_build(g);
	rate = group_rate(g);
	for (j = g->waiting.head; j && scanned < PLACE_SCAN; j = next, scanned++) {
		struct cand *c, *w, *a;

		next = j->next;
		if (j->park_until > ev_now(S.st.loop)) {
			double d = j->park_until - ev_now(S.st.loop);

			if (j->park_until < PARKED && (flip < 0 || d < flip))
				flip = d;
			continue;
		}
		c = cand_pick();
		if (!c) {
			/* No one free: a busy worker about to be may take it. */
			if (S.scheme == SCHEME_SOONEST && S.ahead > 0 &&
			    (a = cand_ahead(NULL, &flip))) {
				give_ahead(a, j);
				continue;
			}
			break;
		}
		if (S.scheme == SCHEME_SOONEST && (w = cand_wait(c)) &&
		    rate < HOLD_LOAD * faster_capacity(c)) {
			double d = cost(c) - cost(w);

			if (S.ahead > 0 && (a = cand_ahead(w, &flip))) {
				give_ahead(a, j);
				continue;
			}
			if (flip < 0 || d < flip)
				flip = d;
			w->avail += w->svc / (w->w && w->w->slots ? w->w->slots : 1);
			S.n_held++;
			continue;
		}
		give(c, j);
	}
	if (flip >= 0 && g->waiting.head) {
		ev_timer_stop(S.st.loop, &g->replace);
		ev_timer_set(&g->replace, flip > 0.001 ? flip : 0.001, 0);
		ev_timer_start(S.st.loop, &g->replace);
	}
}

void replace_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct group *g = w->data;

	place(g);
	if (g->waiting.head)
		group_kick(g, 0);
}
