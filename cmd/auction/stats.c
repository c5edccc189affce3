/* SPDX-License-Identifier: MIT */
/* stats.c: the answer to "stats" on the --listen socket: the counters, and
 * worker.GROUP/WID.FIELD per worker. */
#include "config.h"

#include <stdio.h>

#include "auction.h"

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

void stats_line(struct conn *c, char *line, size_t n, void *arg)
{
	unsigned long tokens = 0, waiting = 0, awarded = 0;

	if (!srv_stats_query(c, line, n))
		return;
	for (struct group *g = S.groups; g; g = g->next) {
		tokens_purge(g, ev_now(S.st.loop));
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
	STAT("connected", S.st.mq.connected);
	STAT("paused", S.st.mq.read_paused);
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
