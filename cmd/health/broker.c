/* SPDX-License-Identifier: MIT */
/* broker.c: mqlb-health's table of VIPs and brokers: probe scheduling with
 * rise/fall, weights from load with smoothing, drain and ramp, and the vip,
 * real and del records that carry the state to mqlb-xdp. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <math.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "health.h"
#include "log.h"
#include "record.h"

struct vip vips[H_MAXVIPS];
struct broker *brokers;
void (*state_on_ready)(void);

static struct out *O;
static int started, ready, blocked;
static unsigned long n_probes, n_failed, n_records;

static double clamp01(double v) { return v < 0 ? 0 : v > 1 ? 1 : v; }

/* ---- records out ------------------------------------------------------- */

static void emit_vip(int vn)
{
	if (vips[vn].protos & 1) {
		out_str(O, "vip");
		out_str(O, vips[vn].name);
		out_end(O);
		n_records++;
	}
	if (vips[vn].protos & 2) {
		out_str(O, "vip");
		out_str(O, vips[vn].name);
		out_str(O, "udp");
		out_end(O);
		n_records++;
	}
}

static void emit_real(struct broker *b, long w)
{
	out_str(O, "real");
	out_str(O, vips[b->vip].name);
	out_str(O, b->addr);
	out_ulong(O, (unsigned long)w);
	out_end(O);
	n_records++;
	b->out_w = w;
	b->in_out = 1;
}

static void emit_del(struct broker *b)
{
	out_str(O, "del");
	out_str(O, vips[b->vip].name);
	out_str(O, b->addr);
	out_end(O);
	n_records++;
	b->in_out = 0;
}

static int listed(const struct broker *b) { return b->known && b->resolved && !b->gone; }

void state_set_output(struct out *o) { O = o; }

int state_ready(void) { return ready; }

void state_full(void)
{
	if (!ready || !O)
		return;
	for (int vn = 0; vn < H_MAXVIPS; vn++)
		if (vips[vn].used)
			emit_vip(vn);
	for (struct broker *b = brokers; b; b = b->next) {
		b->in_out = 0;
		if (listed(b))
			emit_real(b, b->weight);
	}
}

int state_any_up(void)
{
	for (struct broker *b = brokers; b; b = b->next)
		if (b->up)
			return 1;
	return 0;
}

/* The initial state goes out once every broker known so far has been probed
 * once and nothing else (discovery, --once input) holds it back. */
static void check_ready(void)
{
	if (ready || !started || blocked > 0)
		return;
	for (struct broker *b = brokers; b; b = b->next)
		if (!b->known)
			return;
	ready = 1;
	state_full();
	if (state_on_ready)
		state_on_ready();
}

void state_block_ready(int delta)
{
	blocked += delta;
	check_ready();
}

/* ---- VIPs ------------------------------------------------------------------ */

/* "1.2.3.4:1883" or "[fd00::1]:1883", written back in canonical form. */
static int canon_addrport(const char *s, char *out, size_t n, int *port)
{
	char host[INET6_ADDRSTRLEN];
	const char *colon;
	unsigned char a[16];
	char *end;
	long p;
	size_t hl;

	if (*s == '[') {
		const char *rb = strchr(s, ']');

		if (!rb || rb[1] != ':' || (size_t)(rb - s - 1) >= sizeof host)
			return -1;
		hl = (size_t)(rb - s - 1);
		memcpy(host, s + 1, hl);
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon || (size_t)(colon - s) >= sizeof host)
			return -1;
		hl = (size_t)(colon - s);
		memcpy(host, s, hl);
	}
	host[hl] = '\0';
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || p < 1 || p > 65535)
		return -1;
	*port = (int)p;
	if (*s != '[' && inet_pton(AF_INET, host, a) == 1) {
		inet_ntop(AF_INET, a, host, sizeof host);
		snprintf(out, n, "%s:%ld", host, p);
		return 0;
	}
	if (inet_pton(AF_INET6, host, a) == 1) {
		inet_ntop(AF_INET6, a, host, sizeof host);
		snprintf(out, n, "[%s]:%ld", host, p);
		return 0;
	}
	return -1;
}

int vip_find(const char *addrport)
{
	char name[64];
	int port;

	if (canon_addrport(addrport, name, sizeof name, &port) < 0)
		return -1;
	for (int vn = 0; vn < H_MAXVIPS; vn++)
		if (vips[vn].used && !strcmp(vips[vn].name, name))
			return vn;
	return -1;
}

int vip_add(const char *addrport, int udp, const char **err)
{
	char name[64];
	int port, vn, free_vn = -1;

	if (canon_addrport(addrport, name, sizeof name, &port) < 0) {
		*err = "bad VIP address:port";
		return -1;
	}
	for (vn = 0; vn < H_MAXVIPS; vn++) {
		if (vips[vn].used && !strcmp(vips[vn].name, name))
			break;
		if (!vips[vn].used && free_vn < 0)
			free_vn = vn;
	}
	if (vn == H_MAXVIPS) {
		if (free_vn < 0) {
			*err = "too many VIPs";
			return -1;
		}
		vn = free_vn;
		memset(&vips[vn], 0, sizeof vips[vn]);
		vips[vn].used = 1;
		vips[vn].port = port;
		snprintf(vips[vn].name, sizeof vips[vn].name, "%s", name);
	}
	if (!(vips[vn].protos & (udp ? 2 : 1))) {
		vips[vn].protos |= udp ? 2 : 1;
		if (ready) {
			out_str(O, "vip");
			out_str(O, vips[vn].name);
			if (udp)
				out_str(O, "udp");
			out_end(O);
			n_records++;
		}
	}
	return vn;
}

void vip_del(int vn)
{
	struct broker *b, *next;

	for (b = brokers; b; b = next) {
		next = b->next;
		if (b->vip == vn) {
			b->in_out = 0; /* the VIP's del takes its reals along */
			broker_remove(b);
		}
	}
	if (ready) {
		out_str(O, "del");
		out_str(O, vips[vn].name);
		out_end(O);
		n_records++;
	}
	vips[vn].used = 0;
}

/* ---- brokers --------------------------------------------------------------- */

static int resolve(struct broker *b)
{
	struct addrinfo hints = { .ai_socktype = SOCK_STREAM }, *ai;
	int rc = getaddrinfo(b->host, NULL, &hints, &ai);

	if (rc != 0) {
		snprintf(b->why, sizeof b->why, "cannot resolve %s: %s", b->host,
			 rc == EAI_SYSTEM ? strerror(errno) : gai_strerror(rc));
		return -1;
	}
	memcpy(&b->sa, ai->ai_addr, ai->ai_addrlen);
	b->salen = ai->ai_addrlen;
	if (b->sa.ss_family == AF_INET) {
		struct sockaddr_in *s4 = (struct sockaddr_in *)&b->sa;

		s4->sin_port = htons((uint16_t)b->port);
		inet_ntop(AF_INET, &s4->sin_addr, b->addr, sizeof b->addr);
	} else {
		struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&b->sa;

		s6->sin6_port = htons((uint16_t)b->port);
		inet_ntop(AF_INET6, &s6->sin6_addr, b->addr, sizeof b->addr);
	}
	freeaddrinfo(ai);
	b->resolved = 1;
	return 0;
}

static const char *bname(const struct broker *b)
{
	static char n[400];

	if (strcmp(b->id, b->host))
		snprintf(n, sizeof n, "broker %s (%s:%d)", b->id, b->host, b->port);
	else
		snprintf(n, sizeof n, "broker %s:%d", b->host, b->port);
	return n;
}

/* How long an agent's report counts without a newer one. */
static double load_ttl(void) { return fmax(5 * H.interval, 5); }

/* f(cpu, mem, conns), before smoothing: see WEIGHTS in mqlb-health(1). */
static double load_factor(struct broker *b, double now, int fresh)
{
	double h = 1, share, total = 0, bases = 0;
	unsigned long c;
	int have;

	if (fresh)
		h = fmin(clamp01(1 - b->cpu / 100), clamp01(1 - b->mem / 100));
	have = b->has_conns || (fresh && b->agent_conns != (unsigned long)-1);
	if (!have || !b->base)
		return h;
	c = b->has_conns ? b->conns : b->agent_conns;
	for (struct broker *o = brokers; o; o = o->next) {
		if (o->vip != b->vip || !o->up || !o->base)
			continue;
		bases += (double)o->base;
		if (o->has_conns)
			total += (double)o->conns;
		else if (o->has_load && now - o->load_at <= load_ttl() && o->agent_conns != (unsigned long)-1)
			total += (double)o->agent_conns;
	}
	share = bases > 0 ? total * (double)b->base / bases : 0;
	return h * fmin(1, (share + (double)H.conns_slack) / ((double)c + (double)H.conns_slack));
}

static long weight_of(const struct broker *b, double factor, double ramp)
{
	long w;

	if (!b->up || b->drained || !b->base)
		return 0;
	w = lround((double)b->base * factor * ramp);
	return w < 1 ? 1 : w > 65535 ? 65535 : w;
}

/* Recompute the weight and write what changed: a change of 5% of the base
 * or more, the weight smoothing was heading for, 0, or a ramp step. */
static void update(struct broker *b)
{
	double now = ev_now(hloop), f, r = 1;
	int fresh = b->has_load && now - b->load_at <= load_ttl();
	int was;
	long w, target;

	if (fresh && (b->cpu >= H.cpu_high || b->mem >= H.mem_high)) {
		if (!b->drained)
			warnl("%s: draining: cpu %.1f%% mem %.1f%% (high marks %g%%, %g%%)", bname(b),
			      b->cpu, b->mem, H.cpu_high, H.mem_high);
		b->drained = 1;
	} else if (b->drained && (!fresh || (b->cpu < H.cpu_high - 5 && b->mem < H.mem_high - 5))) {
		infol("%s: load back under the high marks", bname(b));
		b->drained = 0;
	}
	f = load_factor(b, now, fresh);
	if (!b->last_calc || H.smooth <= 0)
		b->s = f;
	else
		b->s += (1 - exp(-(now - b->last_calc) / H.smooth)) * (f - b->s);
	b->last_calc = now;
	if (H.ramp > 0 && b->up_since > 0)
		r = clamp01((now - b->up_since) / H.ramp);
	w = weight_of(b, b->s, r);
	target = weight_of(b, f, r);
	b->weight = w;
	if (b->up)
		b->gone = 0;
	else if (!b->gone && H.remove_after > 0 && b->known && now - b->down_since >= H.remove_after)
		b->gone = 1;
	if (!ready)
		return;
	was = b->in_out;
	if (was && !listed(b)) {
		emit_del(b);
	} else if (listed(b) && (!was || (w != b->out_w && (w == 0 || b->out_w == 0 || r < 1 ||
						      labs(w - b->out_w) * 20 >= (long)b->base ||
						      w == target)))) {
		emit_real(b, w);
	}
}

static void probe_done(struct probe *p, const char *err, void *arg);

static void tick_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct broker *b = w->data;

	if (probe_busy(&b->pr))
		return;
	if (!b->resolved && resolve(b) < 0) {
		/* No address, no probe: counted as a failed one. */
		probe_done(&b->pr, b->why, b);
		return;
	}
	probe_start(&b->pr, (struct sockaddr *)&b->sa, b->salen, H.timeout, probe_done, b);
}

static void schedule(struct broker *b, double after)
{
	ev_timer_stop(hloop, &b->tick);
	ev_timer_set(&b->tick, after, 0);
	ev_timer_start(hloop, &b->tick);
}

static void probe_done(struct probe *p, const char *err, void *arg)
{
	struct broker *b = arg;
	double now = ev_now(hloop);
	int transitional;

	n_probes++;
	b->last_probe = now;
	if (err) {
		n_failed++;
		b->fails++;
		b->oks = 0;
		if (err != b->why)
			snprintf(b->why, sizeof b->why, "%s", err);
	} else {
		b->oks++;
		b->fails = 0;
	}
	if (!b->known) {
		b->known = 1;
		b->up = !err;
		if (b->up)
			b->up_since = b->initial ? -1 : now;
		else {
			b->down_since = now;
			warnl("%s: down: %s", bname(b), b->why);
		}
	} else if (b->up && b->fails >= H.fall) {
		b->up = 0;
		b->down_since = now;
		warnl("%s: down: %s", bname(b), b->why);
	} else if (!b->up && b->oks >= H.rise) {
		b->up = 1;
		b->up_since = now;
		warnl("%s: up again", bname(b));
	}
	/* Load is watched while the broker is up; its loss triggers a probe. */
	if (b->up && !err && !H.once)
		watch_broker(b);
	else if (!b->up && b->mon_on)
		unwatch_broker(b);
	update(b);
	check_ready();
	transitional = (b->up && b->fails > 0) || (!b->up && b->oks > 0);
	schedule(b, transitional ? H.fast : H.interval);
}

struct broker *broker_find(int vn, const char *host)
{
	for (struct broker *b = brokers; b; b = b->next)
		if (b->vip == vn && (!strcmp(b->host, host) || (b->resolved && !strcmp(b->addr, host))))
			return b;
	return NULL;
}

struct broker *broker_add(int vn, const char *id, const char *host, int port,
			  unsigned long base, int origin)
{
	struct broker *b = calloc(1, sizeof *b), **tail;

	if (!b || !(b->host = strdup(host)) || !(b->id = strdup(id ? id : host)))
		die(EXIT_SYSERR, "out of memory");
	b->vip = vn;
	b->port = port ? port : vips[vn].port;
	b->base = base;
	b->origin = origin;
	b->pr.fd = -1;
	b->agent_conns = (unsigned long)-1;
	b->initial = !ready;
	ev_timer_init(&b->tick, tick_cb, 0, 0);
	b->tick.data = b;
	resolve(b); /* a failure is reported with the first probe */
	for (tail = &brokers; *tail; tail = &(*tail)->next)
		;
	*tail = b;
	if (started)
		schedule(b, 0);
	return b;
}

void broker_remove(struct broker *b)
{
	if (ready && b->in_out)
		emit_del(b);
	unwatch_broker(b);
	probe_cancel(&b->pr);
	ev_timer_stop(hloop, &b->tick);
	for (struct broker **p = &brokers; *p; p = &(*p)->next)
		if (*p == b) {
			*p = b->next;
			break;
		}
	free(b->host);
	free(b->id);
	free(b);
	check_ready();
}

void brokers_start(void)
{
	int i = 0;

	started = 1;
	/* Spread the first probes a little so they do not all land at once. */
	for (struct broker *b = brokers; b; b = b->next, i++)
		schedule(b, 0.001 * (i % 100));
	check_ready();
}

void broker_set_base(struct broker *b, unsigned long base)
{
	b->base = base;
	if (b->known)
		update(b);
}

void broker_probe_now(struct broker *b)
{
	if (started && !probe_busy(&b->pr))
		schedule(b, 0);
}

/* ---- load ------------------------------------------------------------------ */

/* "cpu=12.5 mem=40 conns=17": all optional but one at least. */
static int parse_load(const char *s, double *cpu, double *mem, unsigned long *conns)
{
	int any = 0;

	while (*s) {
		char key[16], *end;
		size_t kl = strcspn(s, "=");
		const char *v = s + kl + 1;

		if (!s[kl] || kl >= sizeof key)
			return -1;
		memcpy(key, s, kl);
		key[kl] = '\0';
		errno = 0;
		if (!strcmp(key, "conns")) {
			unsigned long c = strtoul(v, &end, 10);

			if (errno || end == v || *v == '-')
				return -1;
			*conns = c;
		} else {
			double d = strtod(v, &end);

			if (errno || end == v || !isfinite(d) || d < 0 || d > 100)
				return -1;
			if (!strcmp(key, "cpu"))
				*cpu = d;
			else if (!strcmp(key, "mem"))
				*mem = d;
			/* Other keys: a newer agent's; ignored. */
		}
		any = 1;
		if (*end && *end != ' ')
			return -1;
		s = end;
		while (*s == ' ')
			s++;
	}
	return any ? 0 : -1;
}

void broker_load(const char *id, const char *payload, size_t n)
{
	char buf[256];
	double cpu = 0, mem = 0;
	unsigned long conns = (unsigned long)-1;
	int bad;

	if (n >= sizeof buf)
		n = sizeof buf - 1;
	memcpy(buf, payload, n);
	buf[n] = '\0';
	bad = n && parse_load(buf, &cpu, &mem, &conns) < 0;
	for (struct broker *b = brokers; b; b = b->next) {
		if (strcmp(b->id, id))
			continue;
		if (bad) {
			if (!b->load_warned++)
				warnl("%s: bad health report \"%s\"; ignored", bname(b), buf);
			continue;
		}
		b->load_warned = 0;
		b->has_load = n > 0;
		b->cpu = cpu;
		b->mem = mem;
		b->agent_conns = conns;
		b->load_at = ev_now(hloop);
		if (b->known)
			update(b);
	}
}

void broker_sys(struct broker *b, const char *topic, const char *payload, size_t n)
{
	char buf[64], *end;
	double v;

	if (n >= sizeof buf)
		return;
	memcpy(buf, payload, n);
	buf[n] = '\0';
	errno = 0;
	v = strtod(buf, &end);
	if (errno || end == buf || v < 0 || !isfinite(v))
		return;
	if (strstr(topic, "clients/connected")) {
		b->conns = (unsigned long)v;
		b->has_conns = 1;
	} else {
		b->msgs = v;
		b->has_msgs = 1;
	}
}

/* ---- stats ----------------------------------------------------------------- */

void state_stats(struct out *o)
{
	double now = ev_now(hloop);
	unsigned long nb = 0, nup = 0;
	char name[512];

	for (struct broker *b = brokers; b; b = b->next) {
		nb++;
		nup += (unsigned long)b->up;
	}
	out_stat(o, "brokers", nb);
	out_stat(o, "up", nup);
	out_stat(o, "probes", n_probes);
	out_stat(o, "probe_failures", n_failed);
	out_stat(o, "records_out", n_records);
	for (struct broker *b = brokers; b; b = b->next) {
		int fresh = b->has_load && now - b->load_at <= load_ttl();
#define BSTAT(field, v)                                                                   \
	do {                                                                              \
		snprintf(name, sizeof name, "broker.%s.%s.%s", vips[b->vip].name, b->id, field); \
		out_stat(o, name, (unsigned long)(v));                                    \
	} while (0)
		BSTAT("up", b->up);
		BSTAT("weight", b->weight);
		BSTAT("base", b->base);
		BSTAT("probe_age_ms", b->known ? lround((now - b->last_probe) * 1000) : 0);
		BSTAT("rtt_us", lround(b->pr.rtt * 1e6));
		BSTAT("drained", b->drained);
		if (fresh) {
			BSTAT("cpu", lround(b->cpu));
			BSTAT("mem", lround(b->mem));
		}
		if (b->has_conns || (fresh && b->agent_conns != (unsigned long)-1))
			BSTAT("conns", b->has_conns ? b->conns : b->agent_conns);
		if (b->has_msgs)
			BSTAT("msgs_1min", lround(b->msgs));
#undef BSTAT
	}
}

/* ---- records in ------------------------------------------------------------ */

const char *state_record(struct rec *r)
{
	unsigned long w;
	struct broker *b;
	int vn;

	if (!rec_is(r, 0, "vip") && !rec_is(r, 0, "real") && !rec_is(r, 0, "del")) {
		out_rec(O, r);
		return NULL;
	}
	if (rec_unescape_from(r, 1) >= 0)
		return "bad escape";
	if (r->nf < 2)
		return "missing VIP address";
	if (rec_is(r, 0, "vip")) {
		const char *err = NULL;

		if (r->nf > 3)
			return "too many fields";
		if (r->nf == 3 && strcmp(r->f[2], "tcp") && strcmp(r->f[2], "udp"))
			return "protocol is neither tcp nor udp";
		return vip_add(r->f[1], r->nf == 3 && !strcmp(r->f[2], "udp"), &err) < 0 ? err : NULL;
	}
	vn = vip_find(r->f[1]);
	if (vn < 0)
		return "no such VIP (send its vip record first)";
	if (rec_is(r, 0, "real")) {
		if (r->nf != 4)
			return "real needs a VIP, an address and a weight";
		if (!*r->f[2] || strlen(r->f[2]) > 255)
			return "bad real address";
		if (rec_ulong(r, 3, 65535, &w) < 0)
			return "bad weight (0 to 65535)";
		b = broker_find(vn, r->f[2]);
		if (!b)
			broker_add(vn, NULL, r->f[2], 0, w, ORIGIN_REC);
		else
			broker_set_base(b, w);
		return NULL;
	}
	if (r->nf > 3)
		return "too many fields";
	if (r->nf == 2) {
		vip_del(vn);
		return NULL;
	}
	b = broker_find(vn, r->f[2]);
	if (!b)
		return "no such real";
	broker_remove(b);
	return NULL;
}
