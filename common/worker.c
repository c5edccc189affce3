/* SPDX-License-Identifier: MIT */
/* worker.c: the worker side of mqlb-protocol(7) behind libmqlb's API
 * (mqlb.h): announce, credit (or bids and reservations), awards, fallback,
 * done. */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "mqlb.h"
#include "mqtt.h"
#include "props.h"
#include "record.h"

/* MQTT 5 subscription identifiers: a copy of a message says which of our
 * subscriptions it came through, so overlapping filters stay apart. */
enum { SUB_SUBACK = 1, SUB_REQ, SUB_WORK, SUB_FALLBACK, SUB_HELLO, SUB_N };

#define RECENT 64 /* uuids we bid on lately: one bid per request */
/* Copies of one request closer than this are one request delivered twice
 * (overlapping subscriptions without identifiers); the balancer's retries
 * come later, and each is a new request that wants a new bid. */
#define DUP_WINDOW 0.01
#define UUID_LEN 36
/* A broker that restarts forgets what it had not delivered, and after it a
 * balancer may subscribe again later than we do: the ok dones published
 * from REPLAY_BEFORE seconds before the connection went until the balancer
 * is surely back are published again before our credit (the last REPLAY
 * of them). A done the balancer had is ignored there; one it missed would
 * otherwise have the job awarded again and run twice. */
#define REPLAY 1024
#define REPLAY_BEFORE 5.0
/* A balancer that (re)starts says hello: it may have been down while jobs
 * ended here, and keep no session that held their dones meanwhile. The ok
 * dones of this long before go again before the credit that answers it. */
#define HELLO_REPLAY 60.0
/* After a reconnect we announce (and credit) again this soon, not a whole
 * keepalive later: every stage retrying the broker is back by then (mqtt.c
 * backs off to 5 s at most). */
#define RESYNC 5.5

struct job {
	struct job *next;
	char *id, *mtopic, *props, *rt;
	void *payload, *cd;
	size_t len;
	int cdlen, qos, remote; /* remote: a balancer waits for its done */
	int batched; /* its done shares a message with others (credit batch=n) */
};

struct mqlb_worker {
	struct ev_loop *loop;
	struct mq mq;
	struct mq_opts mo;
	struct mqlb_worker_cb cb;
	void *arg;
	char *prefix, *group, *topic, *wid;
	int slots, qmax, fallback, no_reply, qos, bidding, ahead, batch;
	double reserve_timeout, suback_timeout, keepalive;
	/* topics and filters, built once */
	char *t_announce, *t_suback, *t_will, *t_credit, *t_hello, *f_req, *f_work, *f_fallback;
	char *p_req, *p_work; /* "P/req/", "P/work/{group}/{wid}/" (credit: "P/job/...") */
	char *t_dones; /* "P/done/{group}/{wid}": the dones of batched jobs, together */
	/* dones of batched jobs not published yet: "uuid result" lines, sent
	 * as one message before the loop sleeps */
	char *dbuf;
	size_t dlen, dcap;
	ev_prepare dflush;
	size_t l_req, l_work, l_prefix;
	/* reservations: expiry times, oldest first */
	double *resv;
	int nresv, cresv;
	struct job *run, *queue, **qtail;
	int running, nqueue;
	/* the newest request we had to let pass, for a late bid */
	char late_uuid[UUID_LEN + 1];
	char *late_mtopic;
	double late_at;
	char recent[RECENT][UUID_LEN + 1];
	double recent_at[RECENT];
	int recent_i;
	/* ok dones published lately, a ring, for a replay after a reconnect */
	char oks[REPLAY][UUID_LEN + 1];
	double oks_at[REPLAY];
	int oks_i;
	double lost_at, replay_until; /* the connection went; replays stop */
	int hello; /* answering a hello: replay() sends the last HELLO_REPLAY s too */
	ev_timer announce_t, suback_t, resv_t, drain_t;
	int fallback_on, draining, drained, ready, acked, pumping, again;
	int mids[SUB_N];
	unsigned long local_seq;
	struct mqlb_worker_stats st;
};

static char *xstrdup(const char *s)
{
	char *p = strdup(s);

	if (!p)
		die(EXIT_SYSERR, "out of memory");
	return p;
}

static char *xprintf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static char *xprintf(const char *fmt, ...)
{
	va_list ap;
	char *p;

	va_start(ap, fmt);
	if (vasprintf(&p, fmt, ap) < 0)
		die(EXIT_SYSERR, "out of memory");
	va_end(ap);
	return p;
}

static int v5(const struct mqlb_worker *w) { return mq_v5(&w->mq); }

static int free_slots(const struct mqlb_worker *w)
{
	int n = w->slots - w->running - w->nresv;

	return n > 0 ? n : 0;
}

/* Reservations ----------------------------------------------------------- */

static void resv_arm(struct mqlb_worker *w)
{
	ev_timer_stop(w->loop, &w->resv_t);
	if (w->nresv == 0)
		return;
	ev_timer_set(&w->resv_t, w->resv[0] - ev_now(w->loop) + 0.001, 0);
	ev_timer_start(w->loop, &w->resv_t);
}

static void reserve(struct mqlb_worker *w, int n)
{
	if (w->nresv + n > w->cresv) {
		w->cresv = w->nresv + n + 8;
		w->resv = realloc(w->resv, (size_t)w->cresv * sizeof *w->resv);
		if (!w->resv)
			die(EXIT_SYSERR, "out of memory");
	}
	/* Every reservation lives equally long, so appending keeps the order. */
	while (n-- > 0)
		w->resv[w->nresv++] = ev_now(w->loop) + w->reserve_timeout;
	resv_arm(w);
}

static void unreserve_oldest(struct mqlb_worker *w)
{
	memmove(w->resv, w->resv + 1, (size_t)--w->nresv * sizeof *w->resv);
	resv_arm(w);
}

/* Bids ------------------------------------------------------------------- */

static int recently_bid(const struct mqlb_worker *w, const char *uuid)
{
	for (int i = 0; i < RECENT; i++)
		if (!strcmp(w->recent[i], uuid) && ev_now(w->loop) - w->recent_at[i] < DUP_WINDOW)
			return 1;
	return 0;
}

static void bid(struct mqlb_worker *w, const char *uuid, const char *mtopic)
{
	char *t = xprintf("%s/rsp/%s/%s/%s/%s", w->prefix, w->group, w->wid, uuid, mtopic);
	char pl[32];
	int n = 0;

	/* Under MQTT 5 the bid says how many slots we have, for scheme least. */
	if (v5(w))
		n = snprintf(pl, sizeof pl, "free=%d", free_slots(w));
	mq_publish(&w->mq, NULL, t, (size_t)n, pl, 0, 0, NULL);
	free(t);
	reserve(w, 1);
	strcpy(w->recent[w->recent_i], uuid);
	w->recent_at[w->recent_i] = ev_now(w->loop);
	w->recent_i = (w->recent_i + 1) % RECENT;
	w->st.bids++;
}

static void late_bid(struct mqlb_worker *w)
{
	if (!w->late_mtopic || w->draining || !w->mq.connected || free_slots(w) == 0)
		return;
	if (ev_now(w->loop) - w->late_at < w->reserve_timeout) {
		bid(w, w->late_uuid, w->late_mtopic);
		w->st.late_bids++;
	}
	free(w->late_mtopic);
	w->late_mtopic = NULL;
}

static void request(struct mqlb_worker *w, const char *topic)
{
	const char *uuid = topic + w->l_req, *mtopic = uuid + UUID_LEN + 1;
	char u[UUID_LEN + 1];

	if (strlen(uuid) < UUID_LEN + 2 || uuid[UUID_LEN] != '/')
		return;
	if (!rec_uuid_ok(uuid, UUID_LEN))
		return;
	w->st.requests++;
	if (w->draining)
		return;
	memcpy(u, uuid, UUID_LEN);
	u[UUID_LEN] = '\0';
	if (recently_bid(w, u))
		return;
	if (free_slots(w) > 0) {
		bid(w, u, mtopic);
		return;
	}
	/* Full: remember only the newest request, the one most worth a late bid. */
	free(w->late_mtopic);
	w->late_mtopic = xstrdup(mtopic);
	strcpy(w->late_uuid, u);
	w->late_at = ev_now(w->loop);
}

/* Jobs ------------------------------------------------------------------- */

static void job_free(struct job *j)
{
	free(j->id);
	free(j->mtopic);
	free(j->props);
	free(j->rt);
	free(j->payload);
	free(j->cd);
	free(j);
}

static void props_add(char **s, size_t *len, const char *name, const char *uname,
		      const void *v, size_t vlen)
{
	size_t need = *len + strlen(name) + (uname ? rec_escaped_len(uname, strlen(uname)) : 0) +
		      rec_escaped_len(v, vlen) + 3;
	char *p = realloc(*s, need);

	if (!p)
		die(EXIT_SYSERR, "out of memory");
	*s = p;
	p += *len;
	if (*len)
		*p++ = ',';
	p = stpcpy(p, name);
	if (uname)
		p += rec_escape(p, uname, strlen(uname), ",=");
	*p++ = '=';
	p += rec_escape(p, v, vlen, ",=");
	*p = '\0';
	*len = (size_t)(p - *s);
}

/* Take what a job needs from the MQTT 5 properties: its id (mqlb-id), the
 * response topic and correlation data, and the props record field. */
static void job_props(struct job *j, const mosquitto_property *props)
{
	size_t len = 0;

	for (const mosquitto_property *p = props; p; p = mosquitto_property_next(p)) {
		int id = mosquitto_property_identifier(p);
		char *name = NULL, *val = NULL, num[16];
		void *bin = NULL;
		uint16_t blen = 0;
		uint32_t u32;

		switch (id) {
		case MQTT_PROP_RESPONSE_TOPIC:
		case MQTT_PROP_CONTENT_TYPE:
			if (!mosquitto_property_read_string(p, id, &val, false))
				break;
			props_add(&j->props, &len, id == MQTT_PROP_CONTENT_TYPE ? "ct" : "rt", NULL,
				  val, strlen(val));
			if (id == MQTT_PROP_RESPONSE_TOPIC && !j->rt)
				j->rt = val;
			else
				free(val);
			break;
		case MQTT_PROP_CORRELATION_DATA:
			if (!mosquitto_property_read_binary(p, id, &bin, &blen, false))
				break;
			props_add(&j->props, &len, "cd", NULL, bin, blen);
			free(j->cd);
			j->cd = bin;
			j->cdlen = blen;
			break;
		case MQTT_PROP_MESSAGE_EXPIRY_INTERVAL:
			if (mosquitto_property_read_int32(p, id, &u32, false))
				props_add(&j->props, &len, "exp", NULL, num,
					  (size_t)snprintf(num, sizeof num, "%u", u32));
			break;
		case MQTT_PROP_USER_PROPERTY:
			if (!mosquitto_property_read_string_pair(p, id, &name, &val, false))
				break;
			/* mqlb-id is the job's id, not one of its properties. */
			if (!strcmp(name, "mqlb-id") && !j->id && strlen(val) == UUID_LEN &&
			    rec_uuid_ok(val, UUID_LEN)) {
				j->id = val;
				val = NULL;
			} else {
				props_add(&j->props, &len, "u.", name, val, strlen(val));
			}
			free(name);
			free(val);
			break;
		}
	}
}

/* uuid: from the award's topic (credit), else from its mqlb-id. */
static struct job *job_new(struct mqlb_worker *w, const struct mosquitto_message *m,
			   const char *mtopic, const mosquitto_property *props, int award,
			   const char *uuid)
{
	struct job *j = calloc(1, sizeof *j);

	if (!j)
		die(EXIT_SYSERR, "out of memory");
	job_props(j, props);
	if ((!award || uuid) && j->id) {
		/* A mqlb-id on a fallback delivery was not meant for us. */
		free(j->id);
		j->id = NULL;
	}
	if (uuid)
		j->id = xprintf("%.36s", uuid);
	j->remote = j->id != NULL;
	if (!j->id)
		j->id = xprintf("local-%lu", ++w->local_seq);
	j->mtopic = xstrdup(mtopic);
	j->qos = m->qos;
	j->len = (size_t)m->payloadlen;
	/* One byte more, so a text payload can be used as a C string. */
	j->payload = calloc(1, j->len + 1);
	if (!j->payload)
		die(EXIT_SYSERR, "out of memory");
	if (j->len)
		memcpy(j->payload, m->payload, j->len);
	return j;
}

static void start(struct mqlb_worker *w, struct job *j)
{
	j->next = w->run;
	w->run = j;
	w->running++;
	/* The callback may end the job at once: j is not ours after it. */
	w->cb.job(w, j->id, j->qos, j->mtopic, j->payload, j->len, j->props, w->arg);
}

static void enqueue(struct mqlb_worker *w, struct job *j)
{
	if (w->nqueue >= w->qmax) {
		w->st.dropped++;
		warnl("queue full (--queue %d): job %s on %s dropped", w->qmax, j->id, j->mtopic);
		job_free(j);
		return;
	}
	j->next = NULL;
	*w->qtail = j;
	w->qtail = &j->next;
	w->nqueue++;
}

static void check_drained(struct mqlb_worker *w);

/* Start queued jobs while unreserved slots are free. Callbacks may end jobs
 * and call back in here: the outer call does the work, so the stack stays
 * flat however many jobs end at once. */
static void pump(struct mqlb_worker *w)
{
	if (w->pumping) {
		w->again = 1;
		return;
	}
	w->pumping = 1;
	do {
		w->again = 0;
		while (w->queue && free_slots(w) > 0) {
			struct job *j = w->queue;

			if (!(w->queue = j->next))
				w->qtail = &w->queue;
			w->nqueue--;
			start(w, j);
		}
	} while (w->again);
	w->pumping = 0;
	late_bid(w);
	check_drained(w);
}

/* The dones of batched jobs ended in this loop iteration: one message on
 * P/done/group/wid, a line "uuid result" each (mqlb-protocol(7)). */
static void dones_flush(struct mqlb_worker *w)
{
	if (!w->dlen)
		return;
	mq_publish(&w->mq, NULL, w->t_dones, w->dlen, w->dbuf, 1, 0, NULL);
	w->dlen = 0;
}

static void dflush_cb(struct ev_loop *loop, ev_prepare *p, int revents) { dones_flush(p->data); }

static void publish_done(struct mqlb_worker *w, const struct job *j, const char *result, int nfree)
{
	char *t, *pl;

	if (!strcmp(result, "ok") && strlen(j->id) == UUID_LEN) {
		strcpy(w->oks[w->oks_i], j->id);
		w->oks_at[w->oks_i] = ev_now(w->loop);
		w->oks_i = (w->oks_i + 1) % REPLAY;
	}
	if (j->batched && nfree < 0) {
		/* "uuid result\n", and sprintf's NUL */
		size_t need = w->dlen + strlen(j->id) + strlen(result) + 3;

		if (need > w->dcap) {
			w->dcap = need * 2;
			if (!(w->dbuf = realloc(w->dbuf, w->dcap)))
				die(EXIT_SYSERR, "out of memory");
		}
		w->dlen += (size_t)sprintf(w->dbuf + w->dlen, "%s %s\n", j->id, result);
		return;
	}
	t = xprintf("%s/done/%s/%s/%s", w->prefix, w->group, w->wid, j->id);
	pl = nfree >= 0 ? xprintf("%s free=%d", result, nfree) : xstrdup(result);

	mq_publish(&w->mq, NULL, t, strlen(pl), pl, 1, 0, NULL);
	free(t);
	free(pl);
}

/* A job of the balancer's with this uuid runs or waits here. */
static int holds(const struct mqlb_worker *w, const char *id)
{
	for (int q = 0; q < 2; q++)
		for (const struct job *j = q ? w->queue : w->run; j; j = j->next)
			if (j->remote && !strcmp(j->id, id))
				return 1;
	return 0;
}

/* Soon after a reconnect, the ok dones of around then again; after a
 * hello, those of the last HELLO_REPLAY seconds: in one message of "uuid
 * ok" lines, as batched dones go. */
static void replay(struct mqlb_worker *w)
{
	double now = ev_now(w->loop), since = now;
	size_t len = 0;
	char *buf;

	if (now < w->replay_until)
		since = w->lost_at - REPLAY_BEFORE;
	if (w->hello && now - HELLO_REPLAY < since)
		since = now - HELLO_REPLAY;
	if (since >= now)
		return;
	buf = malloc(REPLAY * (UUID_LEN + 4) + 1); /* and sprintf's NUL */
	if (!buf)
		die(EXIT_SYSERR, "out of memory");
	for (int k = 0; k < REPLAY; k++) {
		int i = (w->oks_i + k) % REPLAY;

		/* Not one held again: its ok would end the award it has now. */
		if (w->oks[i][0] && w->oks_at[i] >= since && !holds(w, w->oks[i])) {
			len += (size_t)sprintf(buf + len, "%s ok\n", w->oks[i]);
			w->st.replayed++;
		}
	}
	if (len)
		mq_publish(&w->mq, NULL, w->t_dones, len, buf, 1, 0, NULL);
	free(buf);
}

/* The credit message: our slots, then the uuids of the jobs we hold, so the
 * balancer sees them in progress (mqlb-protocol(7)). */
static void credit(struct mqlb_worker *w)
{
	size_t cap = 32 + (size_t)(w->running + w->nqueue) * (UUID_LEN + 1), len;
	char *pl;

	/* drained: gone said, no credit after it */
	if (w->bidding || w->drained || !w->mq.connected || !(w->acked & 1 << SUB_WORK))
		return;
	/* Dones first: a job that ended is no longer named here, and its done
	 * must not come after a credit message that leaves it out (the
	 * balancer would take it for a lost award). */
	dones_flush(w);
	replay(w);
	if (!(pl = malloc(cap)))
		die(EXIT_SYSERR, "out of memory");
	if (w->ahead && !w->draining)
		len = (size_t)snprintf(pl, cap, "%d+%d", w->slots, w->ahead);
	else
		len = (size_t)snprintf(pl, cap, "%d", w->draining ? 0 : w->slots);
	if (w->batch && !w->draining)
		len += (size_t)snprintf(pl + len, cap - len, " batch=%d", w->batch);
	for (int q = 0; q < 2; q++)
		for (const struct job *j = q ? w->queue : w->run; j; j = j->next)
			if (j->remote && len + UUID_LEN + 2 <= cap)
				len += (size_t)snprintf(pl + len, cap - len, " %s", j->id);
	mq_publish(&w->mq, NULL, w->t_credit, len, pl, 1, 0, NULL);
	free(pl);
}

/* An awarded job: run it, keep it (ahead, or over-awarded), or refuse it. */
static void take(struct mqlb_worker *w, struct job *j)
{
	if (j->remote && holds(w, j->id)) {
		/* Awarded again while we have it (the balancer took it for
		 * lost): it runs once, its done ends both awards. */
		warnl("job %s awarded again while it is here; the copy is dropped", j->id);
		if (w->nresv > 0)
			unreserve_oldest(w); /* the bid it answered is spent */
		job_free(j);
		return;
	}
	w->st.awards++;
	if (w->nresv > 0) {
		/* An award consumes one reservation, whatever uuid it was for. */
		unreserve_oldest(w);
		start(w, j);
	} else if (free_slots(w) > 0 && !w->queue) {
		start(w, j);
	} else if (j->remote && !w->bidding && !w->draining && w->nqueue < w->ahead &&
		   w->nqueue < w->qmax) {
		/* Awarded ahead: it starts as the first slot comes free. */
		w->st.ahead++;
		enqueue(w, j);
	} else if (j->remote && (v5(w) || !w->bidding)) {
		/* The balancer can give it to someone free right away. */
		w->st.over_awards++;
		w->st.busy++;
		publish_done(w, j, "fail busy", -1);
		job_free(j);
	} else {
		w->st.over_awards++;
		enqueue(w, j);
	}
}

/* One line of a batch award: "job uuid qos mtopic payload [props]". */
static struct job *batch_job(struct mqlb_worker *w, struct rec *r, const char **why)
{
	mosquitto_property *props = NULL;
	struct job *j;
	unsigned long qos;
	long plen = 0;

	*why = NULL;
	if (!rec_is(r, 0, "job") || r->nf < 5 || r->nf > 6)
		*why = "not \"job uuid qos mtopic payload [props]\"";
	else if (!rec_uuid_ok(r->f[1], r->len[1]))
		*why = "bad uuid";
	else if (rec_ulong(r, 2, 2, &qos) < 0)
		*why = "bad qos";
	else if (rec_unescape(r, 3) <= 0 || strlen(r->f[3]) != r->len[3])
		*why = "bad mtopic";
	else if ((plen = rec_unescape(r, 4)) < 0)
		*why = "bad payload escape";
	else if (r->nf == 6 && rec_is(r, 5, "-"))
		r->nf = 5;
	if (*why)
		return NULL;
	if (r->nf == 6 && props_parse(r->f[5], &props, why) < 0)
		return NULL;
	if (!(j = calloc(1, sizeof *j)))
		die(EXIT_SYSERR, "out of memory");
	/* The same props field and reply details as a single award's. */
	job_props(j, props);
	mosquitto_property_free_all(&props);
	free(j->id);
	j->id = xprintf("%.36s", r->f[1]);
	j->remote = j->batched = 1;
	j->mtopic = xstrdup(r->f[3]);
	j->qos = (int)qos;
	j->len = (size_t)plen;
	if (!(j->payload = calloc(1, j->len + 1)))
		die(EXIT_SYSERR, "out of memory");
	memcpy(j->payload, r->f[4], j->len);
	return j;
}

/* P/job/group/wid/batch: several jobs in one message, a line each. */
static void award_batch(struct mqlb_worker *w, const struct mosquitto_message *m)
{
	char *buf = malloc((size_t)m->payloadlen + 1), *line, *nl;
	unsigned long n = 0;
	int rc;

	if (!buf)
		die(EXIT_SYSERR, "out of memory");
	memcpy(buf, m->payload, (size_t)m->payloadlen);
	buf[m->payloadlen] = '\0';
	w->st.batches++;
	for (line = buf; *line; line = nl ? nl + 1 : line + strlen(line)) {
		const char *why;
		struct job *j;
		struct rec r;

		n++;
		nl = strchr(line, '\n');
		rc = rec_split(line, nl ? (size_t)(nl - line) : strlen(line), &r);
		if (rc == 1)
			continue;
		if (rc < 0 || !(j = batch_job(w, &r, &why))) {
			if (rc < 0)
				why = "too many fields";
			warnl("batch award on %s, line %lu: %s; skipped", m->topic, n, why);
			continue;
		}
		take(w, j);
	}
	free(buf);
}

static void award(struct mqlb_worker *w, const struct mosquitto_message *m,
		  const mosquitto_property *props)
{
	const char *rest = m->topic + w->l_work, *uuid = NULL;
	struct job *j;

	if (!w->bidding) {
		if (w->batch && !strcmp(rest, "batch"))
			return award_batch(w, m);
		/* P/job/group/wid/uuid/mtopic */
		if (strlen(rest) < UUID_LEN + 2 || rest[UUID_LEN] != '/' || !rec_uuid_ok(rest, UUID_LEN)) {
			warnl("award on %s: no uuid in the topic; ignored", m->topic);
			return;
		}
		uuid = rest;
		rest += UUID_LEN + 1;
	}
	j = job_new(w, m, rest, props, 1, uuid);
	/* A balancer that took our credit with batch=n reads our dones
	 * together, whether its awards came together or not. */
	j->batched = w->batch && !w->bidding && j->remote;
	take(w, j);
}

static void fallback_delivery(struct mqlb_worker *w, const struct mosquitto_message *m,
			      const mosquitto_property *props)
{
	struct job *j;

	/* Retained messages are state, not work (PROTOCOL.md). */
	if (m->retain)
		return;
	j = job_new(w, m, m->topic, props, 0, NULL);
	w->st.fallback_deliveries++;
	if (free_slots(w) > 0 && !w->queue)
		start(w, j);
	else
		enqueue(w, j);
}

int mqlb_worker_done(struct mqlb_worker *w, const char *id, int ok, const char *reason,
		     const void *reply, size_t replylen)
{
	struct job **pp, *j = NULL, **found = NULL;
	char *result;
	int nfree = -1;

	/* The oldest running job with that id (the list is newest first). */
	for (pp = &w->run; *pp; pp = &(*pp)->next)
		if (!strcmp((*pp)->id, id))
			found = pp;
	if (!found)
		return -1;
	j = *found;
	*found = j->next;
	w->running--;
	if (ok)
		w->st.done_ok++;
	else
		w->st.done_fail++;
	if (ok && reply && j->rt && !w->no_reply) {
		mosquitto_property *p = NULL;

		if (j->cd)
			mosquitto_property_add_binary(&p, MQTT_PROP_CORRELATION_DATA, j->cd, (uint16_t)j->cdlen);
		mq_publish(&w->mq, NULL, j->rt, replylen, reply, w->qos, 0, p);
		mosquitto_property_free_all(&p);
	}
	if (j->remote && (v5(w) || !w->bidding)) {
		/* The slot just freed goes back to the balancer: by the done
		 * itself (credit), or as tokens, unless queued work takes it
		 * or we are leaving. */
		nfree = w->bidding ? 0 : -1;
		if (w->bidding && !w->draining && !w->queue && w->mq.connected) {
			nfree = free_slots(w);
			reserve(w, nfree);
		}
		result = ok ? xstrdup("ok") : xprintf("fail %s", reason && *reason ? reason : "error");
		publish_done(w, j, result, nfree);
		free(result);
	}
	job_free(j);
	pump(w);
	return 0;
}

/* Fallback --------------------------------------------------------------- */

static void fallback_sub(struct mqlb_worker *w)
{
	if (w->f_fallback && w->mq.connected)
		mq_subscribe(&w->mq, &w->mids[SUB_FALLBACK], w->f_fallback, w->qos, SUB_FALLBACK);
}

static void fallback_set(struct mqlb_worker *w, int on)
{
	if (on == w->fallback_on)
		return;
	w->fallback_on = on;
	if (on) {
		w->st.fallback++;
		if (w->f_fallback)
			infol("no suback for %s within %gs: taking work from %s", w->group,
			      w->suback_timeout, w->f_fallback);
		fallback_sub(w);
	} else if (w->f_fallback) {
		infol("suback for %s: leaving %s to the balancer", w->group, w->f_fallback);
		mq_unsubscribe(&w->mq, w->f_fallback);
	}
}

static void suback_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct mqlb_worker *w = t->data;

	if (w->mq.connected && !w->draining)
		fallback_set(w, 1);
}

static void suback(struct mqlb_worker *w, const struct mosquitto_message *m)
{
	if ((size_t)m->payloadlen != strlen(w->topic) || memcmp(m->payload, w->topic, strlen(w->topic)))
		return;
	w->st.subacks++;
	ev_timer_stop(w->loop, &w->suback_t);
	fallback_set(w, 0);
	/* Subscribed at connect already; again only if the broker said no. */
	if (w->bidding && !(w->acked & 1 << SUB_REQ) && !w->draining)
		mq_subscribe(&w->mq, &w->mids[SUB_REQ], w->f_req, 0, SUB_REQ);
	if (!(w->acked & 1 << SUB_WORK))
		mq_subscribe(&w->mq, &w->mids[SUB_WORK], w->f_work, w->qos, SUB_WORK);
}

/* Announce --------------------------------------------------------------- */

static void announce(struct mqlb_worker *w)
{
	if (!w->mq.connected)
		return;
	/* Draining: no announce, but the credit 0 naming what still runs, every
	 * keepalive, or the balancer takes a long job back (--ack-timeout, or
	 * a will at a broker restart) and it runs twice. */
	if (w->draining) {
		credit(w);
		return;
	}
	mq_publish(&w->mq, NULL, w->t_announce, strlen(w->topic), w->topic, 1, 0, NULL);
	credit(w);
	/* Armed by the first announce that is not yet confirmed: a suback
	 * for any announce inside the window stops it. */
	if (!ev_is_active(&w->suback_t)) {
		ev_timer_set(&w->suback_t, w->suback_timeout, 0);
		ev_timer_start(w->loop, &w->suback_t);
	}
}

static void announce_cb(struct ev_loop *loop, ev_timer *t, int revents) { announce(t->data); }

static void resv_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct mqlb_worker *w = t->data;
	double now = ev_now(loop);
	int n = 0;

	while (n < w->nresv && w->resv[n] <= now)
		n++;
	w->nresv -= n;
	memmove(w->resv, w->resv + n, (size_t)w->nresv * sizeof *w->resv);
	resv_arm(w);
	if (n)
		pump(w);
}

/* MQTT ------------------------------------------------------------------- */

static void on_connected(struct mq *mq, int first, void *arg)
{
	struct mqlb_worker *w = arg;

	w->st.connected = 1;
	w->acked = 0;
	/* Subscribed before the announce, so the suback cannot pass us by. */
	mq_subscribe(mq, &w->mids[SUB_SUBACK], w->t_suback, 1, SUB_SUBACK);
	/* A balancer that (re)starts asks for our announce and credit here. */
	mq_subscribe(mq, &w->mids[SUB_HELLO], w->t_hello, 0, SUB_HELLO);
	if (!w->draining && w->bidding)
		mq_subscribe(mq, &w->mids[SUB_REQ], w->f_req, 0, SUB_REQ);
	mq_subscribe(mq, &w->mids[SUB_WORK], w->f_work, w->qos, SUB_WORK);
	if (w->fallback_on && !w->draining)
		fallback_sub(w);
	ev_timer_stop(w->loop, &w->suback_t);
	if (!first) {
		/* The dones since a while before we lost the broker may have
		 * gone with it, or reach no balancer yet: again with every
		 * credit until the one a keepalive after the resync. */
		w->replay_until = ev_now(w->loop) + RESYNC + w->keepalive + 0.5;
	}
	announce(w); /* draining, only the credit, once SUB_WORK is acked */
	if (!w->drained) {
		ev_timer_stop(w->loop, &w->announce_t);
		ev_timer_set(&w->announce_t, !first && RESYNC < w->keepalive ? RESYNC : w->keepalive,
			     w->keepalive);
		ev_timer_start(w->loop, &w->announce_t);
	}
}

static void on_disconnected(struct mq *mq, void *arg)
{
	struct mqlb_worker *w = arg;

	w->st.connected = 0;
	/* Lost again before the replays of the last loss ended: those still
	 * count from the first. */
	if (ev_now(w->loop) >= w->replay_until)
		w->lost_at = ev_now(w->loop);
	/* No suback can come now: do not fall back for a broker outage. */
	ev_timer_stop(w->loop, &w->suback_t);
}

static void on_subscribed(struct mq *mq, int mid, int n, const int *granted, void *arg)
{
	struct mqlb_worker *w = arg;

	for (int i = SUB_SUBACK; i < SUB_N; i++) {
		if (mid != w->mids[i])
			continue;
		if (n < 1 || granted[0] >= 0x80)
			warnl("the broker refused a subscription of group %s (reason %d)", w->group,
			      n > 0 ? granted[0] : -1);
		else if (i != SUB_FALLBACK && !(w->acked & 1 << i)) {
			w->acked |= 1 << i;
			/* Jobs can reach us now: offer our slots. */
			if (i == SUB_WORK)
				credit(w);
		}
	}
	int need = 1 << SUB_SUBACK | 1 << SUB_WORK | (w->bidding ? 1 << SUB_REQ : 0);

	if (!w->ready && (w->acked & need) == need) {
		w->ready = 1;
		if (w->cb.ready)
			w->cb.ready(w, w->arg);
	}
}

static int under_prefix(const struct mqlb_worker *w, const char *topic)
{
	return !strncmp(topic, w->prefix, w->l_prefix) && topic[w->l_prefix] == '/';
}

static void dispatch(struct mqlb_worker *w, int sub, const struct mosquitto_message *m,
		     const mosquitto_property *props)
{
	switch (sub) {
	case SUB_SUBACK:
		if (!strcmp(m->topic, w->t_suback))
			suback(w, m);
		break;
	case SUB_REQ:
		if (!strncmp(m->topic, w->p_req, w->l_req))
			request(w, m->topic);
		break;
	case SUB_WORK:
		if (!strncmp(m->topic, w->p_work, w->l_work))
			award(w, m, props);
		break;
	case SUB_HELLO:
		/* A balancer just (re)subscribed: it missed our last announce
		 * and credit, and its stages wait for them. */
		if (!strcmp(m->topic, w->t_hello)) {
			w->hello = 1; /* the recent dones go again first (replay) */
			announce(w);
			w->hello = 0;
		}
		break;
	case SUB_FALLBACK:
		/* A wide filter also sees the protocol itself: never work. */
		if (!under_prefix(w, m->topic))
			fallback_delivery(w, m, props);
		break;
	}
}

static void on_message(struct mq *mq, const struct mosquitto_message *m,
		       const mosquitto_property *props, void *arg)
{
	struct mqlb_worker *w = arg;
	const mosquitto_property *p;
	uint32_t id;
	int any = 0;

	for (p = props; (p = mosquitto_property_read_varint(p, MQTT_PROP_SUBSCRIPTION_IDENTIFIER, &id, any));) {
		any = 1;
		if (id > 0 && id < SUB_N)
			dispatch(w, (int)id, m, props);
	}
	if (any)
		return;
	/* No identifiers (MQTT 3.1.1): tell the kinds apart by topic. */
	if (!strcmp(m->topic, w->t_suback))
		dispatch(w, SUB_SUBACK, m, props);
	else if (!strncmp(m->topic, w->p_req, w->l_req))
		dispatch(w, SUB_REQ, m, props);
	else if (!strncmp(m->topic, w->p_work, w->l_work))
		dispatch(w, SUB_WORK, m, props);
	else if (!strcmp(m->topic, w->t_hello))
		dispatch(w, SUB_HELLO, m, props);
	else
		dispatch(w, SUB_FALLBACK, m, props);
}

static const struct mq_cb mq_callbacks = {
	.connected = on_connected,
	.disconnected = on_disconnected,
	.message = on_message,
	.subscribed = on_subscribed,
};

/* Drain ------------------------------------------------------------------ */

static void check_drained(struct mqlb_worker *w)
{
	/* Wait out our reservations too: an award may still be on its way. */
	if (!w->draining || w->drained || w->running || w->queue || w->nresv)
		return;
	/* Report from the loop, not from inside the caller's own call to
	 * mqlb_worker_done(), so drained may free the worker. */
	ev_timer_stop(w->loop, &w->drain_t);
	ev_timer_set(&w->drain_t, 0, 0);
	ev_timer_start(w->loop, &w->drain_t);
}

static void drain_cb(struct ev_loop *loop, ev_timer *t, int revents)
{
	struct mqlb_worker *w = t->data;
	int left = w->running + w->nqueue;

	if (w->drained)
		return;
	w->drained = 1;
	ev_timer_stop(w->loop, &w->announce_t);
	/* Hand back what we cannot finish, so the balancer awards it again. */
	if (v5(w) || !w->bidding) {
		for (struct job *j = w->run; j; j = j->next)
			if (j->remote)
				publish_done(w, j, "fail drain-timeout", w->bidding ? 0 : -1);
		for (struct job *j = w->queue; j; j = j->next)
			if (j->remote)
				publish_done(w, j, "fail drain-timeout", w->bidding ? 0 : -1);
	}
	if (left)
		warnl("drain timeout: %d job%s not finished", left, left == 1 ? "" : "s");
	/* Gone, as the will would say: our credit ends here. The dones go
	 * first: one behind the will would come after its job was awarded
	 * again. */
	dones_flush(w);
	if (!w->bidding && w->mq.connected)
		mq_publish(&w->mq, NULL, w->t_will, 0, NULL, 1, 0, NULL);
	if (w->cb.drained)
		w->cb.drained(w, left, w->arg);
}

void mqlb_worker_drain(struct mqlb_worker *w, double timeout)
{
	if (w->draining) {
		/* Asked twice: stop waiting, from the loop, not from inside the
		 * caller (a job callback, within libmosquitto's), as drained may
		 * free the worker. */
		ev_timer_stop(w->loop, &w->drain_t);
		ev_timer_set(&w->drain_t, 0, 0);
		ev_timer_start(w->loop, &w->drain_t);
		return;
	}
	w->draining = 1;
	credit(w); /* 0: no more jobs, please (and again every keepalive) */
	ev_timer_stop(w->loop, &w->suback_t);
	free(w->late_mtopic);
	w->late_mtopic = NULL;
	if (w->mq.connected) {
		if (w->bidding)
			mq_unsubscribe(&w->mq, w->f_req);
		if (w->fallback_on && w->f_fallback)
			mq_unsubscribe(&w->mq, w->f_fallback);
	}
	w->fallback_on = 0;
	ev_timer_set(&w->drain_t, timeout > 0 ? timeout : 0.001, 0);
	ev_timer_start(w->loop, &w->drain_t);
	check_drained(w);
}

/* API -------------------------------------------------------------------- */

static int bad_level(const char *s)
{
	return !s || !*s || strpbrk(s, "/+#") || strlen(s) > 256;
}

struct mqlb_worker *mqlb_worker_new(struct ev_loop *loop, const struct mqlb_worker_opts *o,
				    const struct mqlb_worker_cb *cb, void *arg)
{
	struct mqlb_worker *w;
	char host[256];
	const char *prefix = o->prefix ? o->prefix : "lb";

	if (!loop || !cb || !cb->job || bad_level(o->group) || bad_level(prefix) ||
	    (o->wid && bad_level(o->wid)) || !o->topic || !*o->topic ||
	    mosquitto_sub_topic_check(o->topic) != MOSQ_ERR_SUCCESS || o->slots < 0 ||
	    o->ahead < 0 || o->ahead > 65535 || (o->ahead && o->bid) || o->batch < 0 ||
	    o->batch > 65535 || (o->batch && o->bid) ||
	    o->fallback < MQLB_FALLBACK_SHARE || o->fallback > MQLB_FALLBACK_NONE) {
		errno = EINVAL;
		return NULL;
	}
	if (!(w = calloc(1, sizeof *w)))
		die(EXIT_SYSERR, "out of memory");
	w->loop = loop;
	w->cb = *cb;
	w->arg = arg;
	w->prefix = xstrdup(prefix);
	w->group = xstrdup(o->group);
	w->topic = xstrdup(o->topic);
	if (o->wid) {
		w->wid = xstrdup(o->wid);
	} else {
		if (gethostname(host, sizeof host) < 0 || bad_level(host))
			strcpy(host, "worker");
		host[sizeof host - 1] = '\0';
		w->wid = xprintf("%s-%ld", host, (long)getpid());
	}
	w->slots = o->slots > 0 ? o->slots : 1;
	w->qmax = o->queue > 0 ? o->queue : 100;
	w->qos = o->qos > 0 && o->qos <= 2 ? o->qos : 1;
	w->fallback = o->fallback;
	w->no_reply = o->no_reply;
	w->bidding = o->bid;
	w->ahead = o->ahead;
	w->batch = o->batch;
	w->keepalive = o->keepalive > 0 ? o->keepalive : 10;
	w->reserve_timeout = o->reserve_timeout > 0 ? o->reserve_timeout : 1;
	w->suback_timeout = o->suback_timeout > 0 ? o->suback_timeout : 2 * w->keepalive;

	w->t_announce = xprintf("%s/sub/%s", w->prefix, w->group);
	w->t_suback = xprintf("%s/suback/%s", w->prefix, w->group);
	w->t_will = xprintf("%s/gone/%s/%s", w->prefix, w->group, w->wid);
	w->t_credit = xprintf("%s/credit/%s/%s", w->prefix, w->group, w->wid);
	w->t_dones = xprintf("%s/done/%s/%s", w->prefix, w->group, w->wid);
	w->t_hello = xprintf("%s/hello", w->prefix);
	w->f_req = xprintf("%s/req/+/%s", w->prefix, w->topic);
	w->p_req = xprintf("%s/req/", w->prefix);
	if (w->bidding) {
		w->f_work = xprintf("%s/work/%s/%s/%s", w->prefix, w->group, w->wid, w->topic);
		w->p_work = xprintf("%s/work/%s/%s/", w->prefix, w->group, w->wid);
	} else {
		w->f_work = xprintf("%s/job/%s/%s/#", w->prefix, w->group, w->wid);
		w->p_work = xprintf("%s/job/%s/%s/", w->prefix, w->group, w->wid);
	}
	w->l_req = strlen(w->p_req);
	w->l_work = strlen(w->p_work);
	w->l_prefix = strlen(w->prefix);
	if (w->fallback == MQLB_FALLBACK_SHARE)
		w->f_fallback = xprintf("$share/%s/%s", w->group, w->topic);
	else if (w->fallback == MQLB_FALLBACK_DIRECT)
		w->f_fallback = xstrdup(w->topic);
	w->qtail = &w->queue;

	w->mo.host = o->host ? o->host : "localhost";
	w->mo.port = o->port > 0 ? o->port : 1883;
	w->mo.user = o->username;
	w->mo.pass = o->password;
	w->mo.id = o->client_id;
	w->mo.clean = 1;
	w->mo.qos = w->qos;
	w->mo.version = o->mqtt_version == 311 ? MQTT_PROTOCOL_V311 : MQTT_PROTOCOL_V5;
	w->mo.keepalive = (int)w->keepalive;
	w->mo.retries = o->retries;
	w->mo.cafile = o->cafile;
	w->mo.capath = o->capath;
	w->mo.cert = o->certfile;
	w->mo.key = o->keyfile;
	w->mo.insecure = o->tls_insecure;
	if (w->mo.version == MQTT_PROTOCOL_V5 || !w->bidding) {
		/* The balancer re-awards our jobs when the broker says we died. */
		w->mo.will_topic = w->t_will;
		w->mo.will_qos = 1;
	}
	mq_init(&w->mq, loop, &w->mo, &mq_callbacks, w);

	ev_timer_init(&w->announce_t, announce_cb, 0, w->keepalive);
	ev_timer_init(&w->suback_t, suback_cb, 0, 0);
	ev_timer_init(&w->resv_t, resv_cb, 0, 0);
	ev_timer_init(&w->drain_t, drain_cb, 0, 0);
	w->announce_t.data = w->suback_t.data = w->resv_t.data = w->drain_t.data = w;
	/* Before mq's own prepare watcher writes what is queued. */
	ev_prepare_init(&w->dflush, dflush_cb);
	ev_set_priority(&w->dflush, EV_MAXPRI);
	w->dflush.data = w;
	if (w->batch) {
		ev_prepare_start(loop, &w->dflush);
		ev_unref(loop);
	}
	w->st.slots = (unsigned long)w->slots;
	return w;
}

void mqlb_worker_start(struct mqlb_worker *w) { mq_start(&w->mq); }

void mqlb_worker_set_slots(struct mqlb_worker *w, int slots)
{
	w->slots = slots > 0 ? slots : 1;
	credit(w);
	pump(w);
}

const char *mqlb_worker_wid(const struct mqlb_worker *w) { return w->wid; }

void mqlb_worker_stats(const struct mqlb_worker *w, struct mqlb_worker_stats *st)
{
	*st = w->st;
	st->slots = (unsigned long)w->slots;
	st->running = (unsigned long)w->running;
	st->reserved = (unsigned long)w->nresv;
	st->queued = (unsigned long)w->nqueue;
	st->connected = (unsigned long)w->mq.connected;
}

void mqlb_worker_free(struct mqlb_worker *w)
{
	struct job *j;

	if (!w)
		return;
	dones_flush(w);
	if (ev_is_active(&w->dflush)) {
		ev_ref(w->loop);
		ev_prepare_stop(w->loop, &w->dflush);
	}
	mq_disconnect(&w->mq);
	mq_destroy(&w->mq);
	ev_timer_stop(w->loop, &w->announce_t);
	ev_timer_stop(w->loop, &w->suback_t);
	ev_timer_stop(w->loop, &w->resv_t);
	ev_timer_stop(w->loop, &w->drain_t);
	while ((j = w->run)) {
		w->run = j->next;
		job_free(j);
	}
	while ((j = w->queue)) {
		w->queue = j->next;
		job_free(j);
	}
	free(w->resv);
	free(w->late_mtopic);
	free(w->prefix);
	free(w->group);
	free(w->topic);
	free(w->wid);
	free(w->t_announce);
	free(w->t_suback);
	free(w->t_will);
	free(w->t_credit);
	free(w->t_dones);
	free(w->t_hello);
	free(w->dbuf);
	free(w->f_req);
	free(w->f_work);
	free(w->f_fallback);
	free(w->p_req);
	free(w->p_work);
	free(w);
}
