/* SPDX-License-Identifier: MIT */
/* stats.c: the answer to "stats" on the --listen socket: the counters,
 * group.GROUP.FIELD per group and worker.GROUP/WID.FIELD per worker. */
#include "config.h"

#include <stdio.h>

#include "auction.h"

static unsigned long us(double seconds) { return seconds > 0 ? (unsigned long)(seconds * 1e6) : 0; }

/* How long the oldest job the worker holds has been out. */
static double held_for(const struct wstat *w)
{
	double oldest = 0;

	for (const struct job *j = w->jobs; j; j = j->wnext)
		if (ev_now(S.st.loop) - j->t > oldest)
			oldest = ev_now(S.st.loop) - j->t;
	return oldest;
}

/* A histogram as PREFIX_us_sum and PREFIX_us_bUPPER, the count of each
 * bucket that is not empty by its upper bound in microseconds, for
 * mqlb-stat to take percentiles over any interval. */
static void hist_stats(struct out *o, const char *prefix, const struct hist *h)
{
	char name[3 * MAX_LEVEL];

	snprintf(name, sizeof name, "%s_us_sum", prefix);
	out_stat(o, name, us(h->sum));
	for (int b = 0; b < HIST_BUCKETS; b++)
		if (h->b[b]) {
			snprintf(name, sizeof name, "%s_us_b%lu", prefix, hist_upper_us(b));
			out_stat(o, name, h->b[b]);
		}
}

/* "worker.GROUP/WID.FIELD" per worker ever awarded a job: the kind.key.field
 * form mqlb-stat turns into a labelled Prometheus metric; its award-to-done
 * histogram as worker.GROUP/WID.lat_us_*. */
static void worker_stats(struct out *o)
{
	char name[2 * MAX_LEVEL + 64];

	for (struct wstat *w = S.wlist; w; w = w->lnext) {
#define WSTAT(field, v) \
	(snprintf(name, sizeof name, "worker.%s/%s." field, w->g->name, w->wid), out_stat(o, name, v))
		WSTAT("inflight", wstat_busy(w));
		WSTAT("slots", credit_live(w) ? w->slots : 0);
		WSTAT("svc_us", w->svc < 0 ? 0 : (unsigned long)(w->svc * 1e6));
		WSTAT("awarded", w->awarded);
		WSTAT("done_ok", w->ok);
		WSTAT("done_fail", w->fail);
		WSTAT("us_p50", hist_quantile_us(&w->lat, 0.5));
		WSTAT("us_p99", hist_quantile_us(&w->lat, 0.99));
		WSTAT("held_us", us(held_for(w)));
		if (w->last_done > 0)
			WSTAT("last_done_us", us(hist_now() - w->last_done));
#undef WSTAT
		snprintf(name, sizeof name, "worker.%s/%s.lat", w->g->name, w->wid);
		hist_stats(o, name, &w->lat);
	}
}

/* How long the group's longest waiting job has waited (reading time). */
static double oldest_wait(const struct group *g)
{
	double oldest = 0;

	for (const struct job *j = g->waiting.head; j; j = j->next)
		if (mq_heard(&S.st.mq) - j->m->born > oldest)
			oldest = mq_heard(&S.st.mq) - j->m->born;
	return oldest;
}

/* "group.GROUP.FIELD": its workers (known, and with live credit or a job),
 * live credit slots, jobs out and waiting, the oldest wait; histograms of
 * the wait from read to first award and from read to done ok. */
static void group_stats(struct out *o, struct group *g)
{
	char name[MAX_LEVEL + 64];
	unsigned long known = 0, live = 0, slots = 0, inflight = 0, waiting = 0;

	for (const struct wstat *w = g->workers; w; w = w->gnext) {
		known++;
		live += credit_live(w) || w->inflight;
		slots += credit_live(w) ? w->slots : 0;
		inflight += wstat_busy(w);
	}
	for (struct job *j = g->waiting.head; j; j = j->next)
		waiting++;
#define GSTAT(field, v) (snprintf(name, sizeof name, "group.%s." field, g->name), out_stat(o, name, v))
	GSTAT("workers", known);
	GSTAT("workers_live", live);
	GSTAT("slots", slots);
	GSTAT("inflight", inflight);
	GSTAT("waiting", waiting);
	GSTAT("oldest_us", us(oldest_wait(g)));
#undef GSTAT
	snprintf(name, sizeof name, "group.%s.wait", g->name);
	hist_stats(o, name, &g->wait);
	snprintf(name, sizeof name, "group.%s.e2e", g->name);
	hist_stats(o, name, &g->e2e);
}

void stats_line(struct conn *c, char *line, size_t n, void *arg)
{
	unsigned long tokens = 0, waiting = 0, awarded = 0;
	double oldest = 0;

	if (!srv_stats_query(c, line, n))
		return;
	for (struct group *g = S.groups; g; g = g->next) {
		double o = oldest_wait(g);

		tokens_purge(g, ev_now(S.st.loop));
		tokens += g->tlen;
		for (struct job *j = g->waiting.head; j; j = j->next)
			waiting++;
		for (struct job *j = g->awarded.head; j; j = j->next)
			awarded++;
		if (o > oldest)
			oldest = o;
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
	STAT("done_nogroup", S.n_done_nogroup);
	STAT("drop_nobid", S.n_drop_nobid);
	STAT("drop_nogroup", S.n_drop_nogroup);
	STAT("drop_failed", S.n_drop_failed);
	STAT("drop_shutdown", S.n_drop_shutdown);
	STAT("drop_expired", S.n_drop_expired);
	STAT("done_late", S.n_done_late);
	STAT("bad_records", S.n_bad_records);
	STAT("connected", S.st.mq.connected);
	STAT("paused", S.st.mq.read_paused);
	STAT("workers_untracked", S.n_untracked);
	STAT("credit", S.n_credit);
	STAT("credit_bad", S.n_credit_bad);
	STAT("busy", S.n_busy);
	STAT("held", S.n_held);
	STAT("probes", S.n_probes);
	STAT("kept", S.n_kept);
	STAT("replayed", S.n_replayed);
	STAT("ahead", S.n_ahead);
	STAT("batches", S.n_batches);
	STAT("batched", S.n_batched);
	STAT("progress", S.n_progress);
	STAT("lost", S.n_lost);
	STAT("oldest_us", us(oldest));
#undef STAT
	for (struct group *g = S.groups; g; g = g->next)
		group_stats(&c->out, g);
	worker_stats(&c->out);
	out_raw(&c->out, "ok", 2);
	out_end(&c->out);
}
