/* SPDX-License-Identifier: MIT */
/* agent.c: mqlb-health --agent, run on a broker's host: publishes the
 * host's CPU and memory use and the broker's client count on P/health/{id}
 * every interval, and with --announce the broker itself on P/broker/{id}
 * (retained, cleared by the last will). */
#include "config.h"

#include <errno.h>
#include <math.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "health.h"
#include "log.h"
#include "sock.h"

static struct {
	struct mq mq;
	ev_timer tick;
	ev_signal sigterm, sigint;
	char t_health[300], t_broker[300];
	unsigned long long busy, total;
	int have_cpu, stopping;
	long conns;
} A;

int parse_fake_load(const char *arg)
{
	char buf[128], *save = NULL, *tok, *end;

	if (strlen(arg) >= sizeof buf)
		return -1;
	strcpy(buf, arg);
	H.fake_cpu = H.fake_mem = 0;
	for (tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
		double *dst = !strncmp(tok, "cpu=", 4) ? &H.fake_cpu : !strncmp(tok, "mem=", 4) ? &H.fake_mem : NULL;
		double v;

		if (!dst)
			return -1;
		errno = 0;
		v = strtod(tok + 4, &end);
		if (errno || end == tok + 4 || *end || !isfinite(v) || v < 0 || v > 100)
			return -1;
		*dst = v;
	}
	H.fake = 1;
	return 0;
}

/* CPU use since the last call, in percent, from the first line of /proc/stat;
 * -1 the first time. */
static double cpu_percent(void)
{
	unsigned long long v[10] = { 0 }, busy, total = 0, idle;
	FILE *f = fopen("/proc/stat", "r");
	double pct = -1;
	int n;

	if (!f) {
		warnl("/proc/stat: %s", strerror(errno));
		return -1;
	}
	n = fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2],
		   &v[3], &v[4], &v[5], &v[6], &v[7], &v[8], &v[9]);
	fclose(f);
	if (n < 4)
		return -1;
	/* guest times are already inside user and nice */
	for (int i = 0; i < 8; i++)
		total += v[i];
	idle = v[3] + v[4];
	busy = total - idle;
	if (A.have_cpu && total > A.total)
		pct = 100.0 * (double)(busy - A.busy) / (double)(total - A.total);
	A.busy = busy;
	A.total = total;
	A.have_cpu = 1;
	return pct;
}

/* Memory in use, in percent: 1 - MemAvailable / MemTotal. */
static double mem_percent(void)
{
	FILE *f = fopen("/proc/meminfo", "r");
	char line[256];
	unsigned long long total = 0, avail = 0, v;
	int have = 0;

	if (!f) {
		warnl("/proc/meminfo: %s", strerror(errno));
		return -1;
	}
	while (fgets(line, sizeof line, f)) {
		if (sscanf(line, "MemTotal: %llu", &v) == 1)
			total = v, have |= 1;
		else if (sscanf(line, "MemAvailable: %llu", &v) == 1)
			avail = v, have |= 2;
	}
	fclose(f);
	if (have != 3 || total == 0 || avail > total)
		return -1;
	return 100.0 * (double)(total - avail) / (double)total;
}

static void report(struct ev_loop *loop, ev_timer *w, int revents)
{
	double cpu = H.fake ? H.fake_cpu : cpu_percent();
	double mem = H.fake ? H.fake_mem : mem_percent();
	char buf[128];
	int n = 0;

	if (!A.mq.connected || (cpu < 0 && mem < 0))
		return;
	if (cpu >= 0)
		n += snprintf(buf + n, sizeof buf - (size_t)n, "cpu=%.1f", cpu);
	if (mem >= 0)
		n += snprintf(buf + n, sizeof buf - (size_t)n, "%smem=%.1f", n ? " " : "", mem);
	if (A.conns >= 0)
		n += snprintf(buf + n, sizeof buf - (size_t)n, " conns=%ld", A.conns);
	mq_publish(&A.mq, NULL, A.t_health, (size_t)n, buf, 0, 0, NULL);
}

static void connected(struct mq *mq, int first, void *arg)
{
	mq_subscribe(mq, NULL, "$SYS/broker/clients/connected", 0, 0);
	if (H.announce)
		mq_publish(mq, NULL, A.t_broker, strlen(H.announce), H.announce, 1, 1, NULL);
	if (first)
		ready_notify(H.cf.ready_fd);
	report(hloop, &A.tick, 0);
}

static void message(struct mq *mq, const struct mosquitto_message *m,
		    const mosquitto_property *props, void *arg)
{
	char buf[32], *end;
	long v;

	if (m->payloadlen <= 0 || (size_t)m->payloadlen >= sizeof buf)
		return;
	memcpy(buf, m->payload, (size_t)m->payloadlen);
	buf[m->payloadlen] = '\0';
	v = strtol(buf, &end, 10);
	if (end != buf && v >= 0)
		A.conns = v;
}

static void stop(struct ev_loop *loop, ev_signal *w, int revents)
{
	if (A.stopping++)
		exit(EXIT_OK);
	/* Leaving on purpose: take the announcement back, as the will would. */
	if (H.announce && A.mq.connected)
		mq_publish(&A.mq, NULL, A.t_broker, 0, NULL, 1, 1, NULL);
	ev_timer_stop(loop, &A.tick);
	mq_disconnect(&A.mq);
	mq_destroy(&A.mq);
	ev_signal_stop(loop, &A.sigterm);
	ev_signal_stop(loop, &A.sigint);
}

static const struct mq_cb callbacks = {
	.connected = connected,
	.message = message,
};

int agent_run(void)
{
	const char *will;

	snprintf(A.t_health, sizeof A.t_health, "%s/health/%s", H.cf.prefix, H.name);
	snprintf(A.t_broker, sizeof A.t_broker, "%s/broker/%s", H.cf.prefix, H.name);
	A.conns = -1;
	will = H.announce ? A.t_broker : A.t_health;
	mq_init(&A.mq, hloop, &H.cf.mq, &callbacks, NULL);
	/* The will clears the retained announcement, so it is itself retained;
	 * common/mqtt.c sets wills without retain, hence set here. */
	if (mosquitto_will_set_v5(A.mq.m, will, 0, NULL, 1, H.announce != NULL, NULL) != MOSQ_ERR_SUCCESS)
		die(EXIT_SYSERR, "cannot set the last will on %s", will);
	A.mq.name = "broker";
	cpu_percent();
	ev_timer_init(&A.tick, report, H.interval, H.interval);
	ev_timer_start(hloop, &A.tick);
	ev_signal_init(&A.sigterm, stop, SIGTERM);
	ev_signal_init(&A.sigint, stop, SIGINT);
	ev_signal_start(hloop, &A.sigterm);
	ev_signal_start(hloop, &A.sigint);
	mq_start(&A.mq);
	ev_run(hloop, 0);
	return EXIT_OK;
}
