/* SPDX-License-Identifier: MIT */
/* broker.c: the messages from the broker: bids, dones, credit and wills, the
 * ack timeouts, and the subscriptions. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auction.h"
#include "hist.h"
#include "log.h"
#include "record.h"

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
	/* Not a job parked after a will (see on_gone). */
	if (j && j->park_until > ev_now(S.st.loop))
		j = NULL;
	if (!j)
		for (j = g->waiting.head; j && j->park_until > ev_now(S.st.loop); j = j->next)
			;
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

/* An ok from wid for job j, which is not wid's here (taken back from it,
 * or awarded by an earlier run of ours): it ran there, so it is done. */
static void done_elsewhere(struct job *j, const char *wid, const char *payload, size_t n)
{
	S.n_done_late++;
	snprintf(j->wid, sizeof j->wid, "%s", wid);
	emit_done(j, payload, n);
	job_finish(j);
}

void on_done(struct group *g, const char *wid, const char *uuid, char *payload, size_t n)
{
	struct msg *m = msg_find(uuid);
	struct job *j = NULL, *late;
	struct wstat *w;
	unsigned long free_slots = 0;
	char *fs;
	int undeliverable;

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
	undeliverable = !strcmp(payload, "fail refused") || !strcmp(payload, "fail unpublishable");
	for (int i = 0; m && i < m->njobs; i++)
		if (m->jobs[i].g == g && m->jobs[i].st == J_AWARDED && !strcmp(m->jobs[i].wid, wid))
			j = &m->jobs[i];
	late = j ? NULL : job_late(m, g, wid);
	/* A bidding worker that sends dones is one to wait for. */
	if ((j || late) && (w = wstat_find(g, wid)) && !w->slots)
		w->acks = 1;
	if (!j && n && late) {
		/* Taken back from this worker (its will fired, or no done in
		 * time), yet it finished. An ok means the job ran: done, even if
		 * it was awarded again meanwhile (that run is the duplicate). A
		 * late fail changes nothing: the job is already elsewhere. */
		if (!strcmp(payload, "ok")) {
			infol("late done for %s from %s/%s, which had lost it: accepted", uuid, g->name, wid);
			done_elsewhere(late, wid, payload, n);
		} else {
			debugl("late \"%s\" for %s from %s/%s: the job is elsewhere", payload, uuid, g->name, wid);
		}
	} else if (!j && n && m && m->replayed && (late = job_of(m, g, J_WAIT)) && !late->nprev) {
		/* Written out again by mqlb-sub and waiting for its worker to
		 * name it: it ran there (an earlier run of ours awarded it). An
		 * ok ends it; after a fail it goes to anyone now. */
		if (!strcmp(payload, "ok")) {
			infol("done for %s from %s/%s, awarded before we started: accepted", uuid,
			      g->name, wid);
			done_elsewhere(late, wid, payload, n);
		} else {
			late->attempts++;
			late->park_until = 0;
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
		hist_add(&g->e2e, mq_heard(&S.st.mq) - m->arrived);
		if (j->ws) {
			/* A job awarded ahead started when a slot came free. */
			double t = ev_now(S.st.loop) - (j->ahead && j->begun ? j->begun : j->t);

			j->ws->ok++;
			hist_add(&j->ws->lat, t);
			j->ws->last_done = hist_now();
			if (j->ws->svc < 0 || j->ws->probe)
				j->ws->svc = t;
			else
				j->ws->svc += EWMA * (t - j->ws->svc);
			j->ws->probe = 0;
		}
		emit_done(j, payload, n);
		job_finish(j);
	} else if (j && !strncmp(payload, "fail", 4)) {
		S.n_done_fail++;
		if (j->ws) {
			j->ws->fail++;
			if (strcmp(payload, "fail busy"))
				j->ws->last_done = hist_now();
		}
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
			if (undeliverable && j->ws && j->ws->slots)
				j->ws->blocked = 1;
			emit_drop(m, j->g, "failed");
			S.n_drop_failed++;
			job_finish(j);
		} else {
			/* The broker would not take an award to this worker
			 * (mqlb-dispatch says so for it): none until it is
			 * heard again; the job goes elsewhere. */
			if (undeliverable && j->ws && j->ws->slots)
				j->ws->blocked = 1;
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
		 * slot there, where a job awarded ahead starts; with a refusal
		 * it is busy elsewhere. */
		if (strcmp(payload, "fail busy") && !undeliverable) {
			w->blocked = 0;
			ahead_begins(w);
		}
		claim_drop(w, uuid); /* it named the job, whose msg never came */
		place(g);
	} else if (g->waiting.head) {
		/* A bidder that finished may be free: ask now rather than after
		 * the retry back-off. */
		group_kick(g, 1);
	}
}

/* P/done/group/wid: the dones of jobs that came in batch awards, a line
 * "uuid result" each. */
static void on_dones(struct group *g, const char *wid, const void *payload, size_t n)
{
	char *buf = xmalloc(n + 1), *line, *nl;

	memcpy(buf, payload, n);
	buf[n] = '\0';
	for (line = buf; *line; line = nl ? nl + 1 : line + strlen(line)) {
		char *sp;

		if ((nl = strchr(line, '\n')))
			*nl = '\0';
		if (!*line)
			continue;
		sp = strchr(line, ' ');
		if (!sp || sp - line != 36 || !rec_uuid_ok(line, 36)) {
			S.n_forged++;
			warnl("dones from %s/%s: bad line \"%.60s\"; ignored", g->name, wid, line);
			continue;
		}
		*sp = '\0';
		on_done(g, wid, line, sp + 1, strlen(sp + 1));
	}
	free(buf);
}

/* A job taken back on a will waits this long before it is placed again. */
#define WILL_GRACE 0.25
/* After a reconnect, jobs taken back on wills just before the connection
 * went wait this long for their workers to name them (mqtt.c's reconnect
 * back-off is 5 s at most, the worker's credit after a reconnect 5.5 s). */
#define RESYNC_WAIT 6.5

/* A job w's credit names that is not w's here. Taken back on w's will, it
 * runs there still (the will came from a broker going down); never
 * awarded here, an earlier run of ours awarded it (mqlb-sub wrote it out
 * again): w's, with no award. Not here yet: w's if it comes (a claim). */
static void keep(struct group *g, struct wstat *w, const char *uuid)
{
	struct msg *m = msg_find(uuid);

	if (!m) {
		if (!recent_has(uuid))
			claim_add(w, uuid);
		return;
	}
	for (int i = 0; i < m->njobs; i++) {
		struct job *j = &m->jobs[i];

		if (j->g == g && j->st == J_WAIT &&
		    (j->nprev ? !strcmp(j->prev_wid[j->nprev - 1], w->wid) : m->replayed))
			job_attach(j, w);
	}
}

/* P/credit/group/wid: "slots[+ahead] [batch=n] [uuid ...]", the slots of
 * a credit worker (and the jobs it keeps waiting beyond them, and how many
 * it takes in one award message) and the jobs it holds. The jobs named
 * are in progress: their --ack-timeout starts again, so a long job is not
 * taken back from a live worker. */
static void on_credit(struct group *g, const char *wid, char *payload)
{
	struct wstat *w;
	unsigned long slots, ahead = 0, batch = 0;
	char *end, *u;

	slots = strtoul(payload, &end, 10);
	if (*end == '+' && end > payload && end[1] >= '0' && end[1] <= '9')
		ahead = strtoul(end + 1, &end, 10);
	if (end > payload && !strncmp(end, " batch=", 7)) {
		char *b = end + 7;

		batch = b[0] >= '0' && b[0] <= '9' ? strtoul(b, &end, 10) : 0;
		if (!batch)
			end = payload; /* bad */
	}
	if (end == payload || (*end && *end != ' ') || slots > 65535 || ahead > 65535 ||
	    batch > 65535 || *payload == '-' || *payload == '+') {
		S.n_credit_bad++;
		warnl("credit from %s/%s: bad payload \"%.40s\"; ignored", g->name, wid, payload);
		return;
	}
	if (!(w = wstat_of(g, wid)))
		return;
	/* Awards held for a batch go out first: made under the credit read
	 * before, they are neither lost nor bigger than its batch=n. */
	pend_write_now(w);
	S.n_credit++;
	w->slots = (unsigned)slots;
	w->ahead = (unsigned)ahead;
	w->batch = (unsigned)batch;
	w->credit_t = mq_heard(&S.st.mq);
	w->blocked = 0;
	w->nclaims = 0;
	for (struct job *j = w->jobs; j; j = j->wnext)
		j->listed = 0;
	while ((u = strtok_r(end, " ", &end))) {
		struct job *j;

		for (j = w->jobs; j; j = j->wnext)
			if (strlen(u) == 36 && !memcmp(j->m->uuid, u, 36)) {
				S.n_progress++;
				j->listed = 1;
				j->heard_t = mq_heard(&S.st.mq);
				jq_push(&g->awarded, j, 0);
				break;
			}
		if (!j && strlen(u) == 36)
			keep(g, w, u);
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
	w->credit_at = ev_now(S.st.loop);
	place(g);
}

static void on_gone(struct group *g, const char *wid)
{
	struct job *j, *next;
	struct wstat *w;

	S.n_gone++;
	tokens_drop_wid(g, wid);
	if ((w = wstat_find(g, wid))) {
		/* Its awards not written yet are taken back below with the
		 * rest: they go to nobody. */
		if (w->npend) {
			w->pend->len = 0;
			w->npend = 0;
		}
		w->slots = 0; /* no credit: no more jobs until it announces again */
		w->blocked = 0;
		w->credit_at = 0;
		w->nclaims = 0;
	}
	/* From the newest: each goes back to the front of the queue, so the
	 * oldest ends up first again. Not placed for WILL_GRACE: a broker that
	 * shuts down sends every worker's will, and then drops us too; such
	 * jobs still run, and their workers name them when back. */
	for (j = g->awarded.tail; j; j = next) {
		next = j->prev;
		if (!strcmp(j->wid, wid)) {
			/* Away, or just back (wills read late, from what was
			 * held unread): as the others, until the resync wait. */
			j->park_until = !S.st.mq.connected || ev_is_active(&S.unpark) ?
						PARKED : ev_now(S.st.loop) + WILL_GRACE;
			if (j->park_until == PARKED)
				infol("worker %s/%s is gone: job %s awarded again %gs after the "
				      "broker is back, unless the worker names it",
				      g->name, wid, j->m->uuid, RESYNC_WAIT);
			else
				infol("worker %s/%s is gone: job %s awarded again in %gs", g->name,
				      wid, j->m->uuid, WILL_GRACE);
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

/* Undo levels(): the topic whole again, for a warning that names it. */
static void unlevel(char **lv, int k, const char *rest)
{
	for (int i = 0; i + 1 < k; i++)
		lv[i][strlen(lv[i])] = '/';
	if (rest && k)
		lv[k - 1][strlen(lv[k - 1])] = '/';
}

static void on_message(struct mq *mq, const struct mosquitto_message *msg,
		       const mosquitto_property *props, void *arg)
{
	char *t, *lv[4], *rest;
	struct group *g;
	struct wstat *w;
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
		/* free=n: the extension, so MQTT 5 and mqlb-id: it acks */
		if (msg->payloadlen >= 5 && !memcmp(msg->payload, "free=", 5) &&
		    (w = wstat_of(g, lv[1])) && !w->slots)
			w->acks = 1;
		offer(g, lv[1], lv[2]);
		/* A bid shows free slots: more of the queue may find takers. */
		group_kick(g, 1);
	} else if (!strncmp(t, "done/", 5)) {
		/* done/{group}/{wid}: several; done/{group}/{wid}/{uuid}: one */
		k = levels(t + 5, lv, 3, &rest);
		if (k < 2 || rest || !*lv[0] || !*lv[1] || strlen(lv[1]) > MAX_LEVEL ||
		    (k == 3 && !rec_uuid_ok(lv[2], strlen(lv[2])))) {
			S.n_forged++;
			unlevel(lv, k, rest);
			warnl("bad done topic %s; ignored", msg->topic);
			return;
		}
		if (!(g = group_find(lv[0], strlen(lv[0])))) {
			/* Before mqlb-sub's group record (a worker answering
			 * P/hello right after its announce): we awarded the
			 * group nothing, and mqlb-sub has the dones it needs. */
			S.n_done_nogroup++;
			debugl("done from %s/%s: no such group yet; ignored", lv[0], lv[1]);
			return;
		}
		if (k == 2)
			on_dones(g, lv[1], msg->payload, (size_t)msg->payloadlen);
		else
			on_done(g, lv[1], lv[2], msg->payload ? msg->payload : "",
				(size_t)msg->payloadlen);
	} else if (!strncmp(t, "credit/", 7)) {
		k = levels(t + 7, lv, 2, &rest);
		if (k != 2 || rest || !*lv[0] || !*lv[1] || strlen(lv[0]) > MAX_LEVEL ||
		    strlen(lv[1]) > MAX_LEVEL || strpbrk(lv[0], "+#") || strpbrk(lv[1], "+#")) {
			S.n_credit_bad++;
			unlevel(lv, k, rest);
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
	if (out_full(&S.st.out))
		mq_pause_read(&S.st.mq, 1);
}

/* On mq_heard() too: a done we did not read is not a missing done. */
void ack_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	ev_tstamp now = mq_heard(&S.st.mq);

	for (struct group *g = S.groups; g; g = g->next)
		while (g->awarded.head && now - g->awarded.head->heard_t >= S.ack_timeout) {
			struct job *j = g->awarded.head;

			if (j->ws && !j->ws->slots && j->ws->acks == 0) {
				/* Never a done nor a bid free=n from this bidder: it
				 * cannot ack (MQTT 3.1.1: no mqlb-id). Its jobs ran or
				 * run; awarded again they would run twice. */
				warnl("no done from %s/%s in %gs, nor ever: taken for a worker "
				      "that does not ack (MQTT 3.1.1); its awards end when made",
				      g->name, j->wid, S.ack_timeout);
				j->ws->acks = -1;
				while (j->ws->jobs)
					job_finish(j->ws->jobs);
				continue;
			}
			warnl("no done for %s from %s/%s in %gs", j->m->uuid, g->name, j->wid, S.ack_timeout);
			if (j->attempts >= S.max_attempts) {
				emit_drop(j->m, g, "noack");
				S.n_drop_failed++;
				job_finish(j);
			} else {
				reaward(j);
			}
		}
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

/* Jobs parked until we are back with the broker wait now. */
static int any_parked(void)
{
	for (struct group *g = S.groups; g; g = g->next)
		for (struct job *j = g->waiting.head; j; j = j->next)
			if (j->park_until >= PARKED)
				return 1;
	return 0;
}

static void on_subscribed(struct mq *mq, int mid, int n, const int *granted, void *arg)
{
	char hello[300];

	if (n < 1 || granted[0] >= 0x80)
		die(EXIT_UNREACH, "the broker refused a subscription under %s/", S.cf.prefix);
	if (--S.subs_left)
		return;
	/* Every worker's credit now, not a keepalive later: what each holds
	 * (a job it still runs is not awarded again) and its free slots. */
	snprintf(hello, sizeof hello, "%s/hello", S.cf.prefix);
	mq_publish(mq, NULL, hello, 0, NULL, 1, 0, NULL);
	if (!S.ready) {
		S.ready = 1;
		ready_notify(S.cf.ready_fd);
		if (!any_parked())
			return;
	}
	/* Back after a reconnect (or a first round cut short by one): jobs
	 * parked then wait for their workers' credit a while more, then go
	 * to anyone. Up for the first time, only replayed jobs are parked,
	 * and every worker answers the hello at once. */
	ev_timer_stop(S.st.loop, &S.unpark);
	ev_timer_set(&S.unpark, S.lost_once ? RESYNC_WAIT : HELLO_WAIT, 0);
	ev_timer_start(S.st.loop, &S.unpark);
}

void unpark_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	for (struct group *g = S.groups; g; g = g->next) {
		for (struct job *j = g->waiting.head; j; j = j->next)
			if (j->park_until >= PARKED)
				j->park_until = 0;
		place(g);
		if (g->waiting.head)
			group_kick(g, 0);
	}
}

/* The connection went: jobs taken back on wills just before, still in
 * their grace, wait until we are back (the wills were the broker's going
 * down, most likely, and their workers still run them). */
static void on_disconnected(struct mq *mq, void *arg)
{
	ev_tstamp now = ev_now(S.st.loop);

	S.lost_once = 1;
	ev_timer_stop(S.st.loop, &S.unpark);
	for (struct group *g = S.groups; g; g = g->next)
		for (struct job *j = g->waiting.head; j; j = j->next)
			if (j->park_until > now)
				j->park_until = PARKED;
}

const struct mq_cb auction_cb = {
	.connected = on_connected,
	.disconnected = on_disconnected,
	.message = on_message,
	.subscribed = on_subscribed,
};
