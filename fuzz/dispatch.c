/* SPDX-License-Identifier: MIT */
/* fuzz/dispatch.c: libFuzzer target for mqlb-dispatch's input: assign
 * and award records, batches of them (and what it passes through), with the
 * broker's acknowledgements.
 * The stage's own file is included, its main() renamed; publish goes to a
 * fake that hands out message ids and refuses what libmosquitto would; the
 * exit (stage_finish) is a timer on a loop that never runs.
 * Input:
 *   <record>       a line on mqlb-dispatch's stdin
 *   @ack <mid> <reason>   the broker's PUBACK/PUBCOMP (reason >= 128: refused)
 *   @fail          the next publish fails (connection lost)
 *   @turn          the end of a loop turn: an open batch goes out
 *   @term          SIGTERM; @drain: the drain deadline */
#include "config.h"

#include <fcntl.h>
#include <mosquitto.h>
#include <signal.h>

#include "fuzz.h"
#include "mqtt.h"

static int fuzz_mid, fuzz_fail;

static int fuzz_mq_publish(struct mq *mq, int *mid, const char *topic, size_t n, const void *payload,
			   int qos, int retain, const mosquitto_property *props)
{
	int rc;

	if (qos < 0 || qos > 2 || (n && !payload))
		abort();
	if (fuzz_fail) {
		fuzz_fail = 0;
		return MOSQ_ERR_NO_CONN;
	}
	/* What mosquitto_publish_v5() checks before it sends anything. */
	if ((rc = mosquitto_pub_topic_check(topic)) != MOSQ_ERR_SUCCESS ||
	    (rc = mosquitto_validate_utf8(topic, (int)strlen(topic))) != MOSQ_ERR_SUCCESS)
		return rc;
	if (props && (rc = mosquitto_property_check_all(CMD_PUBLISH, props)) != MOSQ_ERR_SUCCESS)
		return rc;
	fuzz_mid = fuzz_mid % 65535 + 1;
	if (mid)
		*mid = fuzz_mid;
	return MOSQ_ERR_SUCCESS;
}

#define mq_publish fuzz_mq_publish
#define main dispatch_main_unused
#include "../cmd/mqlb-dispatch.c"
#undef main

static const char *const out_verbs[] = { "drop", "sent", NULL };
static const struct fuzz_shape shapes[] = {
	{ "sent", 4, 4, 2, 4 },
	{ "drop", 6, 7, 2, 6 },
	{ NULL, 0, 0, 0, 0 },
};

static void setup(void)
{
	int devnull = open("/dev/null", O_RDONLY);

	log_init("mqlb-dispatch");
	log_set_level(L_DEBUG); /* format every diagnostic; -close_fd_mask=2 hides them */
	S.cf.prefix = "lb";
	S.cf.mq.version = MQTT_PROTOCOL_V5;
	S.cf.mq.qos = 2;
	S.max_inflight = 1000;
	S.st.drain_timeout = 10;
	S.batch_qos = 1; /* batches wait for their PUBACK (@ack) too */
	S.fl = calloc(65536, sizeof *S.fl);
	S.st.loop = EV_DEFAULT;
	out_init(&S.st.out, S.st.loop, -1, 1 << 20);
	S.st.out.on_drain = on_drain;
	/* As main() does, less the broker: connected, but publish is a fake. */
	S.st.mq.loop = S.st.loop;
	S.st.mq.o = &S.cf.mq;
	S.st.mq.connected = 1;
	in_init(&S.st.in, S.st.loop, devnull, 256u << 20, on_line, on_eof, NULL);
	S.st.in.eof = 1; /* the drain deadline reads nothing more */
	ev_timer_init(&S.st.drain, drain_cb, 0, 0);
	ev_signal_init(&S.st.sigterm, signal_cb, SIGTERM);
}

static void reset(void)
{
	/* Only ids 1..fuzz_mid were handed out (an input is far too short to
	 * wrap around). */
	for (int i = 0; i <= fuzz_mid; i++)
		S.fl[i].used = 0;
	S.inflight = 0;
	S.b.open = 0;
	S.b.have = 0;
	S.st.stopping = S.st.draining = S.st.finishing = S.st.input_done = 0;
	fuzz_mid = fuzz_fail = 0;
	ev_timer_stop(S.st.loop, &S.st.drain);
	ev_timer_stop(S.st.loop, &S.st.fin);
	S.st.in.lineno = 0;
	S.st.in.paused = 0;
}

static void one_line(char *line, size_t n)
{
	if (n > 4 && !memcmp(line, "@ack ", 5)) {
		char *end;
		long mid, reason;

		line[n] = '\0';
		mid = strtol(line + 5, &end, 10);
		reason = strtol(end, NULL, 10);
		on_published(&S.st.mq, (int)mid, (int)reason, NULL);
	} else if (n == 5 && !memcmp(line, "@turn", 5)) {
		batch_flush_cb(S.st.loop, &S.batch_flush, EV_PREPARE);
	} else if (n == 5 && !memcmp(line, "@fail", 5)) {
		fuzz_fail = 1;
	} else if (n == 5 && !memcmp(line, "@term", 5)) {
		signal_cb(S.st.loop, &S.st.sigterm, 0);
	} else if (n == 6 && !memcmp(line, "@drain", 6)) {
		if (!S.st.draining)
			drain_cb(S.st.loop, &S.st.drain, 0);
	} else if (!fuzz_verb_in(line, n, out_verbs)) {
		S.st.in.lineno++;
		on_line(&S.st.in, line, n, NULL);
	}
	if (S.inflight < 0 || S.inflight > 65535)
		abort();
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
