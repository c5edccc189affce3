/* SPDX-License-Identifier: MIT */
/* ask.c: requests and retries: a group's round of requests on P/req while
 * jobs wait, and each message's wait for a bid (--deadline, expiry). */
#include "config.h"

#include <stdio.h>
#include <string.h>

#include "auction.h"

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
	if (mq_publish(&S.st.mq, NULL, topic("%s/req/%s/%s", j->m->uuid, j->m->mtopic), 0, NULL, 0, 0,
		       NULL) == MOSQ_ERR_SUCCESS) {
		S.n_asked++;
		if (g->ask_idx)
			S.n_retries++;
	}
	g->ask_idx++;
	ev_timer_set(&g->ask, next, 0);
	ev_timer_start(S.st.loop, &g->ask);
}

void ask_cb(struct ev_loop *loop, ev_timer *w, int revents) { group_ask(w->data); }

/* Jobs wait on g: ask now if no round is under way; with now set, start a
 * new round even so (a bid showed free slots, or a job came back), on the
 * next loop iteration, so that a burst of bids makes one request. */
void group_kick(struct group *g, int now)
{
	if (!g->waiting.head || (ev_is_active(&g->ask) && !now))
		return;
	if (now && ev_is_active(&g->ask)) {
		if (g->ask_idx == 0)
			return; /* already due */
		ev_timer_stop(S.st.loop, &g->ask);
	}
	g->ask_idx = 0;
	if (now) {
		ev_timer_set(&g->ask, 0, 0);
		ev_timer_start(S.st.loop, &g->ask);
	} else {
		group_ask(g);
	}
}

/* A message waits for bids until --deadline, or its expiry if sooner.
 * The deadline runs on mq_heard(): bids sit unread while reading is paused
 * (our output is full), and a worker we could not hear is not missing. */
void msg_arm(struct msg *m)
{
	ev_tstamp left = m->born + S.deadline - mq_heard(&S.st.mq);

	/* Paused or away, the deadline stands still: look again now and then rather
	 * than in a loop of timers due at once. */
	if (S.st.mq.deaf && left < 1)
		left = 1;
	if (m->expires && m->expires - ev_now(S.st.loop) < left)
		left = m->expires - ev_now(S.st.loop);
	ev_timer_stop(S.st.loop, &m->wait);
	ev_timer_set(&m->wait, left > 0 ? left : 0, 0);
	ev_timer_start(S.st.loop, &m->wait);
}

void wait_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct msg *m = w->data;

	if (!msg_waiting(m))
		return;
	if (expired(m))
		return drop_expired(m);
	for (int i = 0; i < m->njobs; i++)
		if (m->jobs[i].st == J_WAIT && (group_live(m->jobs[i].g) ||
						    m->jobs[i].park_until > ev_now(S.st.loop))) {
			/* Queued for a live credit worker's slot, or parked after
			 * a will (its worker may run it still): someone will take
			 * it; the deadline counts from when none is left. */
			m->born = mq_heard(&S.st.mq);
			return msg_arm(m);
		}
	if (mq_heard(&S.st.mq) - m->born >= S.deadline) {
		/* Nobody could take it in time: a dead letter, never a silent loss. */
		S.n_drop_nobid++;
		return drop_waiting(m, "nobid");
	}
	msg_arm(m);
}
