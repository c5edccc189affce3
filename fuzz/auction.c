/* SPDX-License-Identifier: MIT */
/* fuzz/auction.c: libFuzzer target for mqlb-auction's input: msg, group and
 * ungroup records, and (lines starting '@') the bids, dones and wills it
 * gets from the broker, with a fake clock so timeouts and retries run too.
 * The stage's own files are included, its main() renamed; no broker: publish
 * goes to a fake that checks the topic; the exit (stage_finish) is a timer
 * on a loop that never runs. Input:
 *   <record>                     a line on mqlb-auction's stdin
 *   @<topic after P/> <payload>  a message from the broker (rsp/, done/, gone/,
 *                                credit/); "\n" in the payload is a newline
 *   @tick                        0.25 s pass; timers run
 *   @term                        SIGTERM; @drain: the drain deadline */
#include "config.h"

#include <fcntl.h>
#include <signal.h>
#include <mosquitto.h>

#include "fuzz.h"
#include "mqtt.h"

static ev_tstamp fuzz_clock = 1000, fuzz_drain_at;
static unsigned long fuzz_published;

/* libmosquitto would refuse such a topic; the auction must never make one. */
static int fuzz_mq_publish(struct mq *mq, int *mid, const char *topic, size_t n, const void *payload,
			   int qos, int retain, const mosquitto_property *props)
{
	if (strpbrk(topic, "+#") || qos < 0 || qos > 2)
		abort();
	fuzz_published++;
	return mosquitto_pub_topic_check(topic);
}

#define ev_now(loop) ((void)(loop), fuzz_clock)
#define mq_publish fuzz_mq_publish
#define main auction_main_unused
#include "../cmd/mqlb-auction.c"
#undef main
#include "../cmd/auction/jobs.c"
#include "../cmd/auction/tokens.c"
#include "../cmd/auction/workers.c"
#include "../cmd/auction/place.c"
#include "../cmd/auction/ask.c"
#include "../cmd/auction/records.c"
#include "../cmd/auction/broker.c"
#include "../cmd/auction/flow.c"
#include "../cmd/auction/stats.c"

static const char *const out_verbs[] = { "assign", "award", "batch", "drop", "done", "sent", NULL };
static const struct fuzz_shape shapes[] = {
	{ "batch", 4, 4, 1, 4 },
	{ "assign", 7, 8, 1, 5 },
	{ "award", 7, 8, 1, 5 },
	{ "drop", 6, 7, 1, 4 },
	{ "done", 5, 5, 1, 5 },
	{ NULL, 0, 0, 0, 0 },
};

static void setup(void)
{
	static const double retry[] = { 0.05, 0.1, 0.2, 0.5, 1 };
	int devnull = open("/dev/null", O_RDONLY);

	log_init("mqlb-auction");
	log_set_level(L_DEBUG); /* format every diagnostic; -close_fd_mask=2 hides them */
	S.cf.prefix = "lb";
	S.cf.mq.version = MQTT_PROTOCOL_V5;
	S.plen = 2;
	S.token_ttl = 0.8;
	S.deadline = 3;
	S.max_pending = 10000;
	S.ack_timeout = 1;
	S.max_attempts = 3;
	S.st.drain_timeout = 1;
	S.credit_ttl = 2;
	S.ahead = 0.3; /* ticks of 0.25 s: jobs awarded ahead */
	S.batch_wait = 0.3; /* and awards held for a batch */
	ev_timer_init(&S.batch_t, batch_cb, 0, 0);
	memcpy(S.retry, retry, sizeof retry);
	S.nretry = 5;
	S.hash = calloc(1024, sizeof *S.hash);
	S.hmask = 1023;
	S.st.loop = EV_DEFAULT;
	out_init(&S.st.out, S.st.loop, -1, 1 << 20);
	S.st.out.on_drain = on_drain;
	/* As main() does, less the broker: the client is never connected. */
	S.st.mq.loop = S.st.loop;
	S.st.mq.o = &S.cf.mq;
	in_init(&S.st.in, S.st.loop, devnull, 256u << 20, on_line, on_eof, NULL);
	S.st.in.eof = 1; /* the drain deadline reads nothing more */
	ev_timer_init(&S.st.drain, drain_cb, 0, 0);
	ev_timer_init(&S.acks, ack_cb, 0.25, 0.25);
	ev_signal_init(&S.st.sigterm, signal_cb, SIGTERM);
}

/* Back to an empty stage, so inputs do not pile up state. */
static void reset(void)
{
	struct msg *m;

	for (size_t i = 0; i <= S.hmask; i++)
		while ((m = S.hash[i])) {
			for (int k = 0; k < m->njobs; k++)
				job_forget_prev(&m->jobs[k]);
			msg_free(m);
		}
	while ((m = S.free)) {
		S.free = m->hnext;
		free(m->buf);
		free(m->mtopic);
		free(m->jobs);
		free(m);
	}
	for (struct group *g = S.groups, *next; g; g = next) {
		next = g->next;
		ev_timer_stop(S.st.loop, &g->ask);
		ev_timer_stop(S.st.loop, &g->replace);
		for (int i = 0; i < g->nfilters; i++)
			free(g->filters[i]);
		free(g->filters);
		free(g->tokens);
		free(g->name);
		free(g);
	}
	S.groups = NULL;
	S.ngroups = 0;
	ev_timer_stop(S.st.loop, &S.batch_t);
	S.pending = NULL;
	for (struct wstat *w = S.wlist, *next; w; w = next) {
		next = w->lnext;
		if (w->pend)
			free(w->pend->buf);
		free(w->pend);
		free(w);
	}
	memset(S.wtab, 0, sizeof S.wtab);
	S.wlist = NULL;
	S.wtail = NULL;
	S.nwstat = 0;
	if (S.npending != 0)
		abort(); /* every pending message was in the table */
	S.st.stopping = S.st.draining = S.st.finishing = 0;
	ev_timer_stop(S.st.loop, &S.st.drain);
	ev_timer_stop(S.st.loop, &S.st.fin);
	S.st.in.lineno = 0;
	if (S.st.in.paused)
		in_resume(&S.st.in);
}

static void broker_message(char *line, size_t n)
{
	struct mosquitto_message msg = { 0 };
	char *sp = memchr(line, ' ', n), *topic, *payload;
	size_t tl = sp ? (size_t)(sp - line) : n, pl = sp ? n - tl - 1 : 0, k = 0;

	/* What libmosquitto hands over: a C string topic and a payload with a
	 * NUL after it. */
	topic = malloc(S.plen + 1 + tl + 1);
	payload = malloc(pl + 1);
	if (!topic || !payload)
		abort();
	memcpy(topic, S.cf.prefix, S.plen);
	topic[S.plen] = '/';
	memcpy(topic + S.plen + 1, line, tl);
	topic[S.plen + 1 + tl] = '\0';
	/* "\n" stands for a newline (a payload of several lines) */
	for (size_t i = 0, n0 = pl; i < n0; i++) {
		if (sp[1 + i] == '\\' && i + 1 < n0 && sp[2 + i] == 'n') {
			payload[k++] = '\n';
			i++;
		} else {
			payload[k++] = sp[1 + i];
		}
	}
	pl = k;
	payload[pl] = '\0';
	msg.topic = topic;
	msg.payload = payload;
	msg.payloadlen = (int)pl;
	msg.qos = 1;
	on_message(&S.st.mq, &msg, NULL, NULL);
	free(topic);
	free(payload);
}

static void tick(void)
{
	fuzz_clock += 0.25;
	purge_cb(S.st.loop, &S.purge, 0);
	ack_cb(S.st.loop, &S.acks, 0);
	/* Every armed timer fires (early is allowed: the callbacks check the
	 * time themselves). A message's may free only that message. */
	for (struct group *g = S.groups; g; g = g->next)
		if (ev_is_active(&g->ask)) {
			ev_timer_stop(S.st.loop, &g->ask);
			ask_cb(S.st.loop, &g->ask, 0);
		}
	for (struct group *g = S.groups; g; g = g->next)
		if (ev_is_active(&g->replace)) {
			ev_timer_stop(S.st.loop, &g->replace);
			replace_cb(S.st.loop, &g->replace, 0);
		}
	for (size_t i = 0; i <= S.hmask; i++)
		for (struct msg *m = S.hash[i], *next; m; m = next) {
			next = m->hnext;
			if (ev_is_active(&m->wait)) {
				ev_timer_stop(S.st.loop, &m->wait);
				wait_cb(S.st.loop, &m->wait, 0);
			}
		}
	if (ev_is_active(&S.batch_t)) {
		ev_timer_stop(S.st.loop, &S.batch_t);
		batch_cb(S.st.loop, &S.batch_t, 0);
	}
	if (ev_is_active(&S.st.drain) && fuzz_clock >= fuzz_drain_at) {
		ev_timer_stop(S.st.loop, &S.st.drain);
		drain_cb(S.st.loop, &S.st.drain, 0);
	}
}

static void one_line(char *line, size_t n)
{
	if (n && line[0] == '@') {
		if (n == 5 && !memcmp(line, "@tick", 5))
			tick();
		else if (n == 5 && !memcmp(line, "@term", 5)) {
			signal_cb(S.st.loop, &S.st.sigterm, 0);
			fuzz_drain_at = fuzz_clock + S.st.drain_timeout;
		}
		else if (n == 6 && !memcmp(line, "@drain", 6)) {
			if (!S.st.draining)
				drain_cb(S.st.loop, &S.st.drain, 0);
		} else
			broker_message(line + 1, n - 1);
	} else if (!fuzz_verb_in(line, n, out_verbs)) {
		S.st.in.lineno++;
		on_line(&S.st.in, line, n, NULL);
	}
	/* The end of a loop turn: awards held for batches are written. */
	pend_flush_cb(S.st.loop, &S.pend_flush, EV_PREPARE);
	fuzz_check_out(&S.st.out, shapes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;

	if (!ready++)
		setup();
	fuzz_lines(data, size, one_line);
	reset();
	return 0;
}
