/* SPDX-License-Identifier: MIT */
/* workers.c: per-worker figures (wstat): what each worker of a group got and
 * how it went, its credit, its service time. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auction.h"
#include "hash.h"
#include "log.h"

static size_t wstat_hash(const struct group *g, const char *wid)
{
	return (size_t)fnv64_str((uint64_t)(uintptr_t)g * 31, wid) % WSTAT_BUCKETS;
}

struct wstat *wstat_find(const struct group *g, const char *wid)
{
	for (struct wstat *w = S.wtab[wstat_hash(g, wid)]; w; w = w->next)
		if (w->g == g && !strcmp(w->wid, wid))
			return w;
	return NULL;
}

/* The figures of wid in g, made at its first award or credit; NULL past
 * WSTAT_MAX workers (forged wids must not grow memory without end). */
struct wstat *wstat_of(struct group *g, const char *wid)
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

int credit_live(const struct wstat *w)
{
	return w->slots && mq_heard(&S.st.mq) - w->credit_t < S.credit_ttl;
}

int group_live(const struct group *g)
{
	for (const struct wstat *w = g->workers; w; w = w->gnext)
		if (credit_live(w))
			return 1;
	return 0;
}

/* A job w's credit names that we have no msg for. At most 65535 a credit,
 * as slots (a worker holds no more than it has slots and jobs ahead). */
void claim_add(struct wstat *w, const char *uuid)
{
	if (w->nclaims == 65535)
		return;
	if (w->nclaims == w->claimcap) {
		w->claimcap = w->claimcap ? w->claimcap * 2 : 4;
		w->claims = xrealloc(w->claims, w->claimcap * sizeof *w->claims);
	}
	memcpy(w->claims[w->nclaims++], uuid, 36);
}

/* w holds uuid no more as a claim: its msg came (a job of w's now), or its
 * done did. */
void claim_drop(struct wstat *w, const char *uuid)
{
	for (unsigned i = 0; i < w->nclaims; i++)
		if (!memcmp(w->claims[i], uuid, 36)) {
			memcpy(w->claims[i], w->claims[--w->nclaims], 36);
			return;
		}
}

/* The worker of g whose last credit named uuid before its msg came. */
struct wstat *claimant(const struct group *g, const char *uuid)
{
	for (struct wstat *w = g->workers; w; w = w->gnext)
		for (unsigned i = 0; i < w->nclaims; i++)
			if (!memcmp(w->claims[i], uuid, 36))
				return w;
	return NULL;
}
