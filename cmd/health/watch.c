/* SPDX-License-Identifier: MIT */
/* watch.c: mqlb-health's MQTT subscriptions: on each broker its $SYS load
 * and the agents' P/health reports (losing that connection triggers a probe
 * at once); on the control broker (-h) discovery on P/broker/+ and reports. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "health.h"
#include "log.h"

#define SYS_CONNS "$SYS/broker/clients/connected"
#define SYS_MSGS "$SYS/broker/load/messages/received/1min"

static struct mq control;
static char *t_health, *t_broker;
static int control_on, control_waiting;

/* The {id} of P/{what}/{id}, or NULL for another topic. */
static const char *level_after(const char *topic, const char *what)
{
	size_t p = strlen(H.cf.prefix), n = strlen(what);

	if (strncmp(topic, H.cf.prefix, p) || topic[p] != '/' || strncmp(topic + p + 1, what, n))
		return NULL;
	topic += p + 1 + n;
	if (*topic != '/' || !topic[1] || strchr(topic + 1, '/'))
		return NULL;
	return topic + 1;
}

static void mon_connected(struct mq *mq, int first, void *arg)
{
	mq_subscribe(mq, NULL, SYS_CONNS, 0, 0);
	mq_subscribe(mq, NULL, SYS_MSGS, 0, 0);
	mq_subscribe(mq, NULL, t_health, 0, 0);
}

static void mon_disconnected(struct mq *mq, void *arg)
{
	struct broker *b = arg;

	/* A broker that dies closes our socket: check it now, not next interval.
	 * No reconnecting meanwhile (stopping stops mqtt.c's retries): the
	 * probes decide, and an up broker gets a new watch. */
	b->has_conns = b->has_msgs = 0;
	mq->stopping = 1;
	broker_probe_now(b);
}

static void mon_message(struct mq *mq, const struct mosquitto_message *m,
			const mosquitto_property *props, void *arg)
{
	const char *id;

	if (!strncmp(m->topic, "$SYS/", 5))
		broker_sys(arg, m->topic, m->payload, (size_t)m->payloadlen);
	else if ((id = level_after(m->topic, "health")))
		broker_load(id, m->payload, (size_t)m->payloadlen);
}

static const struct mq_cb mon_cb = {
	.connected = mon_connected,
	.disconnected = mon_disconnected,
	.message = mon_message,
};

static void topics(void)
{
	size_t n = strlen(H.cf.prefix) + 16;

	if (t_health)
		return;
	t_health = malloc(n);
	t_broker = malloc(n);
	if (!t_health || !t_broker)
		die(EXIT_SYSERR, "out of memory");
	snprintf(t_health, n, "%s/health/+", H.cf.prefix);
	snprintf(t_broker, n, "%s/broker/+", H.cf.prefix);
}

void watch_broker(struct broker *b)
{
	if (b->mon_on && !b->mon.stopping)
		return;
	unwatch_broker(b);
	topics();
	b->mo = H.cf.mq;
	b->mo.host = b->addr;
	b->mo.port = b->port;
	b->mo.id = NULL;
	b->mo.clean = 1;
	b->mo.retries = 0;
	b->mo.will_topic = NULL;
	mq_init(&b->mon, hloop, &b->mo, &mon_cb, b);
	b->mon.name = "load watch of broker";
	mq_start(&b->mon);
	b->mon_on = 1;
}

void unwatch_broker(struct broker *b)
{
	if (!b->mon_on)
		return;
	mq_disconnect(&b->mon);
	mq_destroy(&b->mon);
	b->mon_on = 0;
}

/* ---- the control broker: discovery ------------------------------------------ */

/* "host[:port] [weight]" */
static void discovered(const char *id, const char *payload, size_t n)
{
	char buf[300], *host, *sp, *colon, *end;
	unsigned long base = H.weight;
	long port = 0;

	if (n == 0) {
		for (struct broker *b = brokers, *next; b; b = next) {
			next = b->next;
			if (b->origin == ORIGIN_DISC && !strcmp(b->id, id)) {
				warnl("broker %s: gone from %s/broker/ (its will, or it left)", id, H.cf.prefix);
				broker_remove(b);
			}
		}
		return;
	}
	if (n >= sizeof buf) {
		warnl("%s/broker/%s: announcement too long; ignored", H.cf.prefix, id);
		return;
	}
	memcpy(buf, payload, n);
	buf[n] = '\0';
	host = buf;
	if ((sp = strchr(buf, ' '))) {
		*sp++ = '\0';
		base = strtoul(sp, &end, 10);
		if (end == sp || *end || base > 65535) {
			warnl("%s/broker/%s: bad weight in \"%s\"; ignored", H.cf.prefix, id, sp);
			return;
		}
	}
	if (*host == '[') {
		char *rb = strchr(host, ']');

		if (!rb || (rb[1] && rb[1] != ':')) {
			warnl("%s/broker/%s: bad address \"%s\"; ignored", H.cf.prefix, id, buf);
			return;
		}
		*rb = '\0';
		colon = rb[1] ? rb + 1 : NULL;
		host++;
	} else {
		colon = strchr(host, ':');
		if (colon && strchr(colon + 1, ':'))
			colon = NULL; /* a bare IPv6 address */
	}
	if (colon) {
		*colon = '\0';
		port = strtol(colon + 1, &end, 10);
		if (end == colon + 1 || *end || port < 1 || port > 65535) {
			warnl("%s/broker/%s: bad port in \"%s\"; ignored", H.cf.prefix, id, colon + 1);
			return;
		}
	}
	if (!*host) {
		warnl("%s/broker/%s: no address; ignored", H.cf.prefix, id);
		return;
	}
	for (int vn = 0; vn < H_MAXVIPS; vn++) {
		struct broker *b;

		if (!vips[vn].used)
			continue;
		for (b = brokers; b; b = b->next)
			if (b->vip == vn && b->origin == ORIGIN_DISC && !strcmp(b->id, id))
				break;
		/* The same announcement again (a reconnect, a restarted agent). */
		if (b && !strcmp(b->host, host) && b->port == (port ? port : vips[vn].port)) {
			broker_set_base(b, base);
			continue;
		}
		if (b)
			broker_remove(b);
		infol("broker %s: discovered at %s", id, (const char *)payload);
		broker_add(vn, id, host, (int)port, base, ORIGIN_DISC);
	}
}

static void control_connected(struct mq *mq, int first, void *arg)
{
	mq_subscribe(mq, NULL, t_health, 0, 0);
	mq_subscribe(mq, NULL, t_broker, 1, 0);
}

static void control_release(struct ev_loop *loop, ev_timer *w, int revents)
{
	if (control_waiting) {
		control_waiting = 0;
		state_block_ready(-1);
	}
}

static ev_timer grace;

static void control_subscribed(struct mq *mq, int mid, int n, const int *granted, void *arg)
{
	/* Retained announcements follow the SUBACK; give them a moment. */
	if (control_waiting && !ev_is_active(&grace)) {
		ev_timer_init(&grace, control_release, H.timeout, 0);
		ev_timer_start(hloop, &grace);
	}
}

static void control_message(struct mq *mq, const struct mosquitto_message *m,
			    const mosquitto_property *props, void *arg)
{
	const char *id;

	if ((id = level_after(m->topic, "health")))
		broker_load(id, m->payload, (size_t)m->payloadlen);
	else if ((id = level_after(m->topic, "broker")))
		discovered(id, m->payload, (size_t)m->payloadlen);
}

static const struct mq_cb control_cb = {
	.connected = control_connected,
	.subscribed = control_subscribed,
	.message = control_message,
};

void control_start(void)
{
	topics();
	mq_init(&control, hloop, &H.cf.mq, &control_cb, NULL);
	control.name = "control broker";
	control_on = 1;
	control_waiting = 1;
	state_block_ready(1);
	mq_start(&control);
}

void control_stop(void)
{
	if (control_on)
		mq_disconnect(&control);
}
