/* SPDX-License-Identifier: MIT */
/* tokens.c: each group's ring of tokens: the free slots bidding workers
 * offered, in expiry order. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auction.h"

/* Tokens are added with the same ttl, so the ring is in expiry order:
 * the dead ones are at its head. */
void tokens_purge(struct group *g, ev_tstamp now)
{
	while (g->tlen && g->tokens[g->thead].expires <= now) {
		g->thead = (g->thead + 1) % g->tcap;
		g->tlen--;
		S.n_tokens_expired++;
	}
}

void purge_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	for (struct group *g = S.groups; g; g = g->next)
		tokens_purge(g, ev_now(loop));
}

void token_put(struct group *g, const char *wid, int fresh)
{
	struct token *t;

	tokens_purge(g, ev_now(S.st.loop));
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
	t->expires = ev_now(S.st.loop) + S.token_ttl;
	t->fresh = fresh;
	if (!fresh)
		S.n_tokens_kept++;
}

void token_add(struct group *g, const char *wid) { token_put(g, wid, 0); }

void tokens_drop_wid(struct group *g, const char *wid)
{
	unsigned keep = 0;

	for (unsigned i = 0; i < g->tlen; i++) {
		struct token t = g->tokens[(g->thead + i) % g->tcap];

		if (strcmp(t.wid, wid) != 0)
			g->tokens[(g->thead + keep++) % g->tcap] = t;
	}
	g->tlen = keep;
}

/* Take one live token of wid (expired ones stay for tokens_purge());
 * 1 for a kept token, 0 for a fresh bid, -1 for none. */
int token_take_wid(struct group *g, const char *wid)
{
	ev_tstamp now = ev_now(S.st.loop);

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
void tokens_keep_fresh(struct group *g)
{
	for (unsigned i = 0; i < g->tlen; i++) {
		struct token *t = &g->tokens[(g->thead + i) % g->tcap];

		if (t->fresh) {
			t->fresh = 0;
			S.n_tokens_kept++;
		}
	}
}
