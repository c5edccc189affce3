/* SPDX-License-Identifier: MIT */
/* fuzz/worker.c: libFuzzer target for mqlb-worker's record mode: the done
 * and fail records a coprocess writes, against jobs that came as awards,
 * requests and fallback deliveries from the broker. common/worker.c and
 * the command's own file are included, main() renamed; the MQTT client is
 * a fake that checks what would be published. Input (fields of '@' lines
 * are percent-escaped like records, "-" empty):
 *   <record>                          a line on mqlb-worker's stdin
 *   @work <mtopic> <payload> [<mqlb-id> [<rt> [<cd>]]]   an award
 *   @msg <topic> <payload>            any message on any subscription
 *   @conn                             the broker accepted the connection
 *   @tick                             0.25 s pass; reservations expire
 *   @term                             SIGTERM */
#include "config.h"

#include <fcntl.h>
#include <mosquitto.h>

#include "fuzz.h"
#include "mqtt.h"

static ev_tstamp fuzz_clock = 1000;

static void fuzz_mq_init(struct mq *mq, struct ev_loop *loop, const struct mq_opts *o,
			 const struct mq_cb *cb, void *arg)
{
	memset(mq, 0, sizeof *mq);
	mq->loop = loop;
	mq->o = o;
	mq->cb = cb;
	mq->arg = arg;
	mq->name = "broker";
}

static int fuzz_mq_publish(struct mq *mq, int *mid, const char *topic, size_t n, const void *payload,
			   int qos, int retain, const mosquitto_property *props)
{
	int rc;

	if (qos < 0 || qos > 2 || (n && !payload) || n > 268435455)
		abort();
	if (!mq->connected && qos == 0)
		return MOSQ_ERR_NO_CONN;
	if ((rc = mosquitto_pub_topic_check(topic)) != MOSQ_ERR_SUCCESS ||
	    (rc = mosquitto_validate_utf8(topic, (int)strlen(topic))) != MOSQ_ERR_SUCCESS)
		return rc;
	if (props && (rc = mosquitto_property_check_all(CMD_PUBLISH, props)) != MOSQ_ERR_SUCCESS)
		return rc;
	return MOSQ_ERR_SUCCESS;
}

static int fuzz_mq_subscribe(struct mq *mq, int *mid, const char *filter, int qos, int subid)
{
	if (mosquitto_sub_topic_check(filter) != MOSQ_ERR_SUCCESS || qos < 0 || qos > 2)
		abort(); /* the worker subscribes only to filters it checked */
	return MOSQ_ERR_SUCCESS;
}

static int fuzz_mq_unsubscribe(struct mq *mq, const char *filter) { return MOSQ_ERR_SUCCESS; }
static void fuzz_mq_nothing(struct mq *mq) { }

#define ev_now(loop) ((void)(loop), fuzz_clock)
#define mq_init fuzz_mq_init
#define mq_start fuzz_mq_nothing
#define mq_publish fuzz_mq_publish
#define mq_subscribe fuzz_mq_subscribe
#define mq_unsubscribe fuzz_mq_unsubscribe
#define mq_disconnect fuzz_mq_nothing
#define mq_destroy fuzz_mq_nothing
#include "../common/worker.c"
#define main worker_main_unused
#include "../cmd/mqlb-worker.c"
#undef main

static const char *const out_verbs[] = { "work", NULL };
static const struct fuzz_shape shapes[] = {
	{ "work", 5, 6, 1, 6 },
	{ NULL, 0, 0, 0, 0 },
};

static void setup(void)
{
	int devnull = open("/dev/null", O_RDONLY);

	log_init("mqlb-worker");
	log_set_level(L_DEBUG); /* format every diagnostic; -close_fd_mask=2 hides them */
	S.cf.prefix = "lb";
	S.cf.ready_fd = -1;
	S.cf.mq.qos = 1;
	S.cf.mq.version = MQTT_PROTOCOL_V5;
	S.reply = 1;
	S.wo.group = "g";
	S.wo.topic = "t/#";
	S.wo.wid = "w1";
	S.wo.slots = 2;
	S.wo.queue = 3;
	S.wo.batch = 2; /* awards on P/job/g/w1/batch too, dones together */
	setup_opts();
	S.loop = EV_DEFAULT;
	out_init(&S.out, S.loop, -1, 1 << 20);
	in_init(&S.in, S.loop, devnull, MAX_LINE, on_record, on_eof, NULL);
}

static void message(const char *topic, const void *payload, size_t n, mosquitto_property *props)
{
	struct mosquitto_message m = { 0 };
	char *t = strdup(topic), *p = malloc(n + 1);

	if (!t || !p)
		abort();
	memcpy(p, payload, n);
	p[n] = '\0';
	m.topic = t;
	m.payload = p;
	m.payloadlen = (int)n;
	m.qos = 1;
	on_message(&S.w->mq, &m, props, S.w);
	mosquitto_property_free_all(&props);
	free(t);
	free(p);
}

static void directive(char *line, size_t n)
{
	struct rec r;
	mosquitto_property *props = NULL;

	if (rec_split(line, n, &r) != 0 || rec_unescape_from(&r, 1) >= 0)
		return;
	if (rec_is(&r, 0, "@work") && r.nf >= 3) {
		char *topic = xprintf("%s%s", S.w->p_work, r.f[1]);

		if (r.nf > 3 && r.len[3])
			mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, "mqlb-id", r.f[3]);
		if (r.nf > 4 && r.len[4])
			mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, r.f[4]);
		if (r.nf > 5)
			mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, r.f[5],
						      (uint16_t)(r.len[5] & 0xffff));
		message(topic, r.f[2], r.len[2], props);
		free(topic);
	} else if (rec_is(&r, 0, "@msg") && r.nf == 3) {
		message(r.f[1], r.f[2], r.len[2], NULL);
	} else if (rec_is(&r, 0, "@conn")) {
		S.w->mq.connected = 1;
		S.w->mq.cb->connected(&S.w->mq, 1, S.w);
	} else if (rec_is(&r, 0, "@tick")) {
		fuzz_clock += 0.25;
		/* Armed only while there are reservations, as in the loop. */
		if (ev_is_active(&S.w->resv_t)) {
			ev_timer_stop(S.loop, &S.w->resv_t);
			resv_cb(S.loop, &S.w->resv_t, 0);
		}
	} else if (rec_is(&r, 0, "@term")) {
		/* Once: a second SIGTERM ends the process (on_drained exits). */
		if (!S.stopping)
			stop();
	}
}

static void one_line(char *line, size_t n)
{
	if (n && line[0] == '@') {
		directive(line, n);
	} else if (!fuzz_verb_in(line, n, out_verbs)) {
		S.in.lineno++;
		on_record(&S.in, line, n, NULL);
	}
	fuzz_check_out(&S.out, shapes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	struct mqlb_worker_cb cb = { .ready = on_ready, .drained = on_drained, .job = write_work };

	if (!ready++)
		setup();
	if (!(S.w = mqlb_worker_new(S.loop, &S.wo, &cb, NULL)))
		abort();
	fuzz_lines(data, size, one_line);
	mqlb_worker_free(S.w);
	S.w = NULL;
	S.stopping = 0;
	S.in.lineno = 0;
	S.in.paused = 0;
	return 0;
}
