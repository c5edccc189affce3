/* SPDX-License-Identifier: MIT */
/* jobs.c: memory, the job queues, the uuid table of pending messages and
 * the recent set of finished ones, and the life of a job: tracked, finished,
 * dropped. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "auction.h"
#include "hash.h"
#include "log.h"

void *xmalloc(size_t n)
{
	void *p = malloc(n);

	if (!p)
		die(EXIT_SYSERR, "out of memory");
	return p;
}

void *xrealloc(void *p, size_t n)
{
	p = realloc(p, n);
	if (!p)
		die(EXIT_SYSERR, "out of memory");
	return p;
}

char *xstrdup(const char *s) { return strcpy(xmalloc(strlen(s) + 1), s); }

/* --- job queues ---------------------------------------------------------- */

void jq_remove(struct job *j)
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

void jq_push(struct jq *q, struct job *j, int front)
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

size_t uuid_hash(const char *u)
{
	return (size_t)fnv64(FNV64_BASIS, u, 36);
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

int recent_has(const char *uuid)
{
	unsigned long long f = fingerprint(uuid);

	return R.cur && (recent_in(R.cur, f) || recent_in(R.old, f));
}

struct msg *msg_find(const char *uuid)
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


/* Finished with a message: back to the free list with its buffers, so the
 * steady state allocates nothing. */
void msg_free(struct msg *m)
{
	ev_timer_stop(S.st.loop, &m->wait);
	for (int i = 0; i < m->njobs; i++)
		jq_remove(&m->jobs[i]);
	recent_add(m->uuid);
	msg_unlink(m);
	m->hnext = S.free;
	S.free = m;
	S.npending--;
	maybe_resume();
}

/* --- a job's life ------------------------------------------------------- */

void job_forget_prev(struct job *j)
{
	for (int i = 0; i < j->nprev; i++)
		free(j->prev_wid[i]);
	j->nprev = 0;
}

/* The job no longer waits for a done from its worker: its slot is free. */
void job_untrack(struct job *j)
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

void job_track(struct job *j)
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

void job_finish(struct job *j)
{
	job_untrack(j);
	jq_remove(j);
	job_forget_prev(j);
	j->st = J_FINISHED;
	if (--j->m->open == 0)
		msg_free(j->m);
}

int expired(const struct msg *m)
{
	return m->expires && ev_now(S.st.loop) >= m->expires;
}

/* Dead letter for every job of m still waiting (deadline, expiry,
 * shutdown). The caller must not touch m afterwards: it may be freed. */
void drop_waiting(struct msg *m, const char *reason)
{
	/* One record per group whose job waited. A freed m stays readable (it
	 * goes to the free list), and once freed no job of it is waiting. */
	for (int i = 0; i < m->njobs; i++)
		if (m->jobs[i].st == J_WAIT) {
			emit_drop(m, m->jobs[i].g, reason);
			job_finish(&m->jobs[i]);
		}
}

void drop_expired(struct msg *m)
{
	S.n_drop_expired++;
	drop_waiting(m, "expired");
}

int msg_waiting(const struct msg *m)
{
	for (int i = 0; i < m->njobs; i++)
		if (m->jobs[i].st == J_WAIT)
			return 1;
	return 0;
}

struct msg *msg_new(void)
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
