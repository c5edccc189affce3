/* SPDX-License-Identifier: MIT */
/* health.h: the parts of mqlb-health: MQTT probes, the broker table with
 * its weights and records, the load watchers, and the agent. */
#ifndef MQLB_HEALTH_H
#define MQLB_HEALTH_H

#include <ev.h>
#include <netinet/in.h>
#include <sys/socket.h>

#include "io.h"
#include "mqtt.h"
#include "opt.h"

#define H_MAXVIPS 64

/* Settings, from the command line. */
struct hconf {
	struct conf cf;
	double interval, fast, timeout, ramp, smooth, remove_after;
	int rise, fall;
	double cpu_high, mem_high;
	unsigned long weight, conns_slack;
	int discover, once, agent;
	const char *name, *announce;
	int fake;
	double fake_cpu, fake_mem;
};
extern struct hconf H;
extern struct ev_loop *hloop;

/* One MQTT probe: TCP connect, CONNECT/CONNACK, PINGREQ/PINGRESP. */
struct probe;
typedef void probe_fn(struct probe *p, const char *err, void *arg);
struct probe {
	ev_io io;
	ev_timer to;
	int fd, phase;
	unsigned char buf[4];
	size_t got;
	double t0, tping;
	double rtt, total; /* seconds, of the last successful probe */
	probe_fn *done;
	void *arg;
};
void probe_start(struct probe *p, const struct sockaddr *sa, socklen_t len, double timeout,
		 probe_fn *done, void *arg);
int probe_busy(const struct probe *p);
void probe_cancel(struct probe *p);

struct vip {
	int used, protos; /* 1: tcp, 2: udp */
	char name[64];    /* addr:port as written in records */
	int port;
};

enum { ORIGIN_ARG, ORIGIN_REC, ORIGIN_DISC };

struct broker {
	struct broker *next;
	int vip, origin;
	char *id, *host;
	int port;
	unsigned long base;
	/* the address, as resolved */
	struct sockaddr_storage sa;
	socklen_t salen;
	char addr[64];
	int resolved, dns_warned;
	/* probing */
	struct probe pr;
	ev_timer tick;
	int known, up, oks, fails, initial;
	double up_since, down_since, last_probe, last_calc;
	char why[160];
	/* load: from the agent (cpu, mem, conns) and $SYS (conns, msgs) */
	double cpu, mem, load_at, msgs;
	unsigned long conns, agent_conns;
	int has_load, has_conns, has_msgs, load_warned;
	struct mq mon;
	struct mq_opts mo;
	int mon_on;
	/* weight */
	double s; /* smoothed load factor */
	int drained, gone; /* gone: down past --remove-after */
	long weight, out_w;
	int in_out; /* the consumer has it */
};

extern struct vip vips[H_MAXVIPS];
extern struct broker *brokers;

/* broker.c */
int vip_add(const char *addrport, int udp, const char **err);
int vip_find(const char *addrport);
void vip_del(int vn);
struct broker *broker_add(int vn, const char *id, const char *host, int port,
			  unsigned long base, int origin);
struct broker *broker_find(int vn, const char *host);
void broker_remove(struct broker *b);
void brokers_start(void);
void broker_probe_now(struct broker *b);
void broker_set_base(struct broker *b, unsigned long base);
void broker_load(const char *id, const char *payload, size_t n);
void broker_sys(struct broker *b, const char *topic, const char *payload, size_t n);
/* The output: where records go, and whether the initial state is out. */
void state_set_output(struct out *o);
void state_full(void);
int state_ready(void);
/* Handle a vip, real or del record (others pass through); NULL or the
 * fault. */
struct rec;
const char *state_record(struct rec *r);
void state_stats(struct out *o);
/* Called when the initial state has been written (readiness, --once). */
extern void (*state_on_ready)(void);
int state_any_up(void);
void state_block_ready(int delta);

/* watch.c: $SYS and agent reports per broker; discovery on the control broker */
void watch_broker(struct broker *b);
void unwatch_broker(struct broker *b);
void control_start(void);
void control_stop(void);

/* agent.c */
int agent_run(void);
int parse_fake_load(const char *arg);

#endif
