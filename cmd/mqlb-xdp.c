/* SPDX-License-Identifier: MIT */
/* mqlb-xdp: loads the XDP load balancer (bpf/mqlb_xdp.bpf.c) on an
 * interface and keeps its VIPs, reals and Maglev rings in step with the vip,
 * real and del records it reads; or, with --decap, the IPIP decapsulator. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <ifaddrs.h>
#include <linux/if_link.h>
#include <linux/neighbour.h>
#include <linux/rtnetlink.h>
#include <net/if.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "io.h"
#include "log.h"
#include "opt.h"
#include "record.h"
#include "sock.h"

#include "mqlb_kern_user.h"
#include "mqlb_decap.skel.h"
#include "mqlb_xdp.skel.h"
#include "xdp/lbprog.h"
#include "xdp/lbstate.h"
#include "xdp/maglev.h"
#include "xdp/percpu.h"

static const char usage[] =
	"usage: mqlb-xdp [-v] [--quiet] [-o file] -i iface [--mode native|generic]\n"
	"                [--encap l2|ipip] [--gateway-mac mac] [--source addr]\n"
	"                [--source-hash vip|all] [--ring-size prime] [--max-conns n]\n"
	"                [--pin dir] [--listen path] [--socket-mode mode]\n"
	"                [--stats-interval seconds] [--ready-fd n]\n"
	"       mqlb-xdp --decap -i iface [--mode native|generic] [--pin dir] [--listen path]\n"
	"                [--ready-fd n]\n";

#define MAX_SRCHASH 32

static const char *const stat_names[MQLB_ST_MAX] = { MQLB_STAT_NAMES };

static struct {
	struct conf cf;
	struct ev_loop *loop;
	struct in in;
	struct out out;
	struct srv srv;
	ev_signal sigterm, sigint;
	ev_timer stats_timer, resolve_timer, refresh_timer, clock_timer;
	const char *ifname;
	int ifindex;
	int generic, decap, encap;
	const char *pin;
	double stats_interval;
	__u8 gw_mac[6];
	int have_gw_mac;
	const char *source;
	const char *srchash[MAX_SRCHASH];
	int nsrchash;
	unsigned long ring_size, max_conns;
	struct mqlb_xdp_bpf *skel;
	struct bpf_program *prog; /* of skel: the one of the encapsulation */
	struct mqlb_decap_bpf *dskel;
	int link_fd;
	int fd_ring, fd_config;
	struct pcpu pc; /* the program's per-CPU state (struct mqlb_cpu), mapped */
	struct lbstate lb; /* the VIPs and reals, and their maps */
	unsigned long n_records, n_bad;
} S;

enum {
	O_MODE = 1, O_ENCAP, O_GWMAC, O_SOURCE, O_SRCHASH, O_RING, O_CONNS, O_PIN, O_STATS, O_DECAP,
};

static const struct option longopts[] = {
	{ "interface", required_argument, NULL, 'i' },
	{ "mode", required_argument, NULL, O_MODE },
	{ "encap", required_argument, NULL, O_ENCAP },
	{ "gateway-mac", required_argument, NULL, O_GWMAC },
	{ "source", required_argument, NULL, O_SOURCE },
	{ "source-hash", required_argument, NULL, O_SRCHASH },
	{ "ring-size", required_argument, NULL, O_RING },
	{ "max-conns", required_argument, NULL, O_CONNS },
	{ "pin", required_argument, NULL, O_PIN },
	{ "stats-interval", required_argument, NULL, O_STATS },
	{ "decap", no_argument, NULL, O_DECAP },
	{ NULL, 0, NULL, 0 },
};

static int parse_mac(const char *s, __u8 mac[6])
{
	unsigned v[6];
	char end;

	if (sscanf(s, "%x:%x:%x:%x:%x:%x%c", &v[0], &v[1], &v[2], &v[3], &v[4], &v[5], &end) != 6)
		return -1;
	for (int i = 0; i < 6; i++) {
		if (v[i] > 255)
			return -1;
		mac[i] = (__u8)v[i];
	}
	return 0;
}

static void opt(int c, const char *arg)
{
	switch (c) {
	case O_MODE:
		if (!strcmp(arg, "native"))
			S.generic = 0;
		else if (!strcmp(arg, "generic"))
			S.generic = 1;
		else
			opt_usage_error("--mode: \"%s\" is neither native nor generic", arg);
		break;
	case O_ENCAP:
		if (!strcmp(arg, "l2"))
			S.encap = MQLB_ENCAP_L2;
		else if (!strcmp(arg, "ipip"))
			S.encap = MQLB_ENCAP_IPIP;
		else
			opt_usage_error("--encap: \"%s\" is neither l2 nor ipip", arg);
		break;
	case O_GWMAC:
		if (parse_mac(arg, S.gw_mac) < 0)
			opt_usage_error("--gateway-mac: bad MAC address \"%s\"", arg);
		S.have_gw_mac = 1;
		break;
	case O_SOURCE: S.source = arg; break;
	case O_SRCHASH:
		if (S.nsrchash == MAX_SRCHASH)
			opt_usage_error("--source-hash: at most %d", MAX_SRCHASH);
		S.srchash[S.nsrchash++] = arg;
		break;
	case O_RING:
		S.ring_size = (unsigned long)opt_long("--ring-size", arg, 3, MQLB_RING_MAX);
		if (!maglev_prime(S.ring_size))
			opt_usage_error("--ring-size: %lu is not a prime", S.ring_size);
		break;
	case O_CONNS: S.max_conns = (unsigned long)opt_long("--max-conns", arg, 1024, 1L << 26); break;
	case O_PIN: S.pin = arg; break;
	case O_STATS: S.stats_interval = opt_secs("--stats-interval", arg, 0.1, 86400); break;
	case O_DECAP: S.decap = 1; break;
	}
}

/* ---- addresses ---------------------------------------------------------- */

static int parse_addr(const char *s, __u32 addr[4], int *family)
{
	memset(addr, 0, 16);
	if (inet_pton(AF_INET, s, addr) == 1) {
		*family = 4;
		return 0;
	}
	if (inet_pton(AF_INET6, s, addr) == 1) {
		*family = 6;
		return 0;
	}
	return -1;
}

/* "1.2.3.4:1883" or "[fd00::1]:1883" */
static int parse_addrport(char *s, __u32 addr[4], int *family, __u16 *port)
{
	char *colon, *host = s;
	char *end;
	long p;

	if (*s == '[') {
		char *rb = strchr(s, ']');

		if (!rb || rb[1] != ':')
			return -1;
		*rb = '\0';
		host = s + 1;
		colon = rb + 1;
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			return -1;
		*colon = '\0';
	}
	errno = 0;
	p = strtol(colon + 1, &end, 10);
	if (errno || end == colon + 1 || *end || p < 1 || p > 65535)
		return -1;
	if (parse_addr(host, addr, family) < 0 || (*s == '[' && *family != 6))
		return -1;
	*port = htons((__u16)p);
	return 0;
}

/* ---- the neighbour table ------------------------------------------------- */

/* Look addr up in the kernel's neighbour table (rtnetlink dump). */
static int neigh_lookup(const __u32 addr[4], int family, __u8 mac[6])
{
	struct {
		struct nlmsghdr nh;
		struct ndmsg nd;
	} req = { 0 };
	char buf[16384];
	int fd, found = 0, done = 0;
	size_t alen = family == 4 ? 4 : 16;

	fd = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
	if (fd < 0)
		return -1;
	req.nh.nlmsg_len = NLMSG_LENGTH(sizeof req.nd);
	req.nh.nlmsg_type = RTM_GETNEIGH;
	req.nh.nlmsg_flags = NLM_F_REQUEST | NLM_F_DUMP;
	req.nd.ndm_family = family == 4 ? AF_INET : AF_INET6;
	if (send(fd, &req, req.nh.nlmsg_len, 0) < 0) {
		close(fd);
		return -1;
	}
	while (!done) {
		ssize_t n = recv(fd, buf, sizeof buf, 0);
		struct nlmsghdr *nh;

		if (n <= 0)
			break;
		for (nh = (void *)buf; NLMSG_OK(nh, (size_t)n); nh = NLMSG_NEXT(nh, n)) {
			struct ndmsg *nd = NLMSG_DATA(nh);
			struct rtattr *rta;
			int rlen;
			const void *dst = NULL, *ll = NULL;
			size_t lllen = 0;

			if (nh->nlmsg_type == NLMSG_DONE || nh->nlmsg_type == NLMSG_ERROR) {
				done = 1;
				break;
			}
			if (nh->nlmsg_type != RTM_NEWNEIGH || found)
				continue;
			if (nd->ndm_state & (NUD_INCOMPLETE | NUD_FAILED | NUD_NOARP))
				continue;
			rlen = (int)RTM_PAYLOAD(nh);
			for (rta = RTM_RTA(nd); RTA_OK(rta, rlen); rta = RTA_NEXT(rta, rlen)) {
				if (rta->rta_type == NDA_DST && RTA_PAYLOAD(rta) == alen)
					dst = RTA_DATA(rta);
				else if (rta->rta_type == NDA_LLADDR) {
					ll = RTA_DATA(rta);
					lllen = RTA_PAYLOAD(rta);
				}
			}
			if (dst && ll && lllen == 6 && !memcmp(dst, addr, alen)) {
				memcpy(mac, ll, 6);
				found = 1;
			}
		}
	}
	close(fd);
	return found ? 0 : -1;
}

/* Make the kernel resolve addr: any datagram towards it does. */
static void neigh_poke(const __u32 addr[4], int family)
{
	struct sockaddr_in6 s6 = { .sin6_family = AF_INET6, .sin6_port = htons(9) };
	struct sockaddr_in s4 = { .sin_family = AF_INET, .sin_port = htons(9) };
	int fd = socket(family == 4 ? AF_INET : AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return;
	if (family == 4) {
		memcpy(&s4.sin_addr, addr, 4);
		sendto(fd, "", 0, MSG_DONTWAIT, (struct sockaddr *)&s4, sizeof s4);
	} else {
		memcpy(&s6.sin6_addr, addr, 16);
		sendto(fd, "", 0, MSG_DONTWAIT, (struct sockaddr *)&s6, sizeof s6);
	}
	close(fd);
}

/* The IPv4 default gateway through our interface, from /proc/net/route. */
static int default_gateway(__u32 *gw)
{
	FILE *f = fopen("/proc/net/route", "r");
	char line[256], ifn[IF_NAMESIZE + 1];
	unsigned dst, g, flags;

	if (!f)
		return -1;
	while (fgets(line, sizeof line, f))
		if (sscanf(line, "%16s %x %x %x", ifn, &dst, &g, &flags) == 4 && dst == 0 &&
		    (flags & 2) && !strcmp(ifn, S.ifname)) {
			*gw = g;
			fclose(f);
			return 0;
		}
	fclose(f);
	return -1;
}

/* ---- BPF state ----------------------------------------------------------- */

static int vip_is_srchash(const struct mqlb_vip_key *k)
{
	char buf[80];

	lb_fmt_vip(k, buf, sizeof buf);
	for (int i = 0; i < S.nsrchash; i++)
		if (!strcmp(S.srchash[i], "all") || !strcmp(S.srchash[i], buf))
			return 1;
	return 0;
}

static void real_resolve(struct lbstate *lb, int ri)
{
	struct lb_real *r = &lb->reals[ri];

	if (lb->encap != MQLB_ENCAP_L2 || r->have_mac)
		return;
	if (neigh_lookup(r->addr, r->family, r->mac) == 0) {
		r->have_mac = 1;
		return;
	}
	neigh_poke(r->addr, r->family);
	if (!ev_is_active(&S.resolve_timer))
		ev_timer_start(S.loop, &S.resolve_timer);
}

static void resolve_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	int pending = 0;

	for (int ri = 1; ri < MQLB_MAX_REALS; ri++) {
		struct lb_real *r = &S.lb.reals[ri];

		if (r->refs == 0 || r->have_mac)
			continue;
		if (neigh_lookup(r->addr, r->family, r->mac) < 0) {
			neigh_poke(r->addr, r->family);
			pending++;
			continue;
		}
		r->have_mac = 1;
		lb_real_write(&S.lb, ri);
		for (int vn = 0; vn < MQLB_MAX_VIPS; vn++)
			if (S.lb.vips[vn].used && S.lb.vips[vn].weight[ri] > 0)
				lb_vip_rebuild(&S.lb, vn);
	}
	lb_settle(&S.lb);
	if (!pending)
		ev_timer_stop(loop, w);
}

/* A real that moved to another MAC (a replaced host, a VRRP failover)
 * gets its new one: look again now and then. */
static void refresh_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	for (int ri = 1; ri < MQLB_MAX_REALS; ri++) {
		struct lb_real *r = &S.lb.reals[ri];
		char ab[INET6_ADDRSTRLEN];
		__u8 mac[6];

		if (r->refs == 0 || !r->have_mac || neigh_lookup(r->addr, r->family, mac) < 0 ||
		    !memcmp(mac, r->mac, 6))
			continue;
		memcpy(r->mac, mac, 6);
		lb_real_write(&S.lb, ri);
		infol("real %s: new MAC %02x:%02x:%02x:%02x:%02x:%02x",
		      lb_fmt_addr(r->addr, r->family, ab, sizeof ab),
		      mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]);
	}
	lb_settle(&S.lb);
}

/* ---- records ------------------------------------------------------------- */

/* Handle one record; returns NULL or what is wrong with it. A record of a
 * verb we do not handle is passed on to stdout. */
static const char *record(struct rec *r)
{
	struct mqlb_vip_key k = { 0 };
	__u32 addr[4];
	int family, any = 0;
	unsigned long w = 0;
	const char *err = NULL;

	if (!rec_is(r, 0, "vip") && !rec_is(r, 0, "real") && !rec_is(r, 0, "del")) {
		out_rec(&S.out, r);
		return NULL;
	}
	S.n_records++;
	if (rec_unescape_from(r, 1) >= 0)
		return "bad escape";
	if (r->nf < 2 || parse_addrport(r->f[1], k.addr, &family, &k.port) < 0)
		return r->nf < 2 ? "missing VIP address" : "bad VIP address:port";
	k.family = (__u8)family;
	if (rec_is(r, 0, "vip")) {
		if (r->nf > 3)
			return "too many fields";
		k.proto = IPPROTO_TCP;
		if (r->nf == 3) {
			if (!strcmp(r->f[2], "udp"))
				k.proto = IPPROTO_UDP;
			else if (strcmp(r->f[2], "tcp"))
				return "protocol is neither tcp nor udp";
		}
		return lb_vip_add(&S.lb, &k, vip_is_srchash(&k) ? MQLB_VIP_SRC_HASH : 0);
	}
	if (rec_is(r, 0, "real")) {
		if (r->nf != 4)
			return "real needs a VIP, an address and a weight";
		if (parse_addr(r->f[2], addr, &family) < 0)
			return "bad real address";
		if (rec_ulong(r, 3, 65535, &w) < 0)
			return "bad weight (0 to 65535)";
	} else {
		if (r->nf > 3)
			return "too many fields";
		if (r->nf == 3 && parse_addr(r->f[2], addr, &family) < 0)
			return "bad real address";
	}
	/* real and del name addr:port; they apply to its tcp and udp VIPs. */
	for (int vn = 0; vn < MQLB_MAX_VIPS && !err; vn++) {
		struct lb_vip *v = &S.lb.vips[vn];

		if (!v->used || v->key.family != k.family || v->key.port != k.port ||
		    memcmp(v->key.addr, k.addr, 16))
			continue;
		any = 1;
		if (rec_is(r, 0, "real"))
			err = lb_real_set(&S.lb, vn, addr, family, (int)w);
		else if (r->nf == 3)
			err = lb_real_del(&S.lb, vn, addr, family);
		else
			lb_vip_del(&S.lb, vn);
	}
	if (!any && rec_is(r, 0, "real"))
		return "no such VIP (send its vip record first)";
	return err;
}

static void handle_rec(struct rec *r, int rc, unsigned long lineno, const char *who)
{
	const char *err = rc < 0 ? "too many fields" : record(r);

	lb_settle(&S.lb); /* after all the VIPs the record names */

	if (err) {
		S.n_bad++;
		warnl("%sline %lu: %s", who, lineno, err);
	}
}

static void handle_line(char *line, size_t n, unsigned long lineno, const char *who)
{
	struct rec r;
	int rc = rec_split(line, n, &r);

	if (rc != 1)
		handle_rec(&r, rc, lineno, who);
}

static void stdin_line(struct in *in, char *line, size_t n, void *arg)
{
	handle_line(line, n, in->lineno, "");
}

static void stdin_eof(struct in *in, int err, void *arg)
{
	/* The data plane outlives its producer: keep serving what we have. */
	if (err)
		warnl("stdin: %s", strerror(err));
	infol("end of input; still serving");
}

/* ---- queries -------------------------------------------------------------- */

/* The decap program's counters, a per-CPU array. */
static __u64 decap_stat(__u32 key)
{
	int ncpu = libbpf_num_possible_cpus();
	static __u64 *vals;
	__u64 sum = 0;

	if (ncpu <= 0 || (!vals && !(vals = calloc((size_t)ncpu, sizeof *vals))))
		die(EXIT_SYSERR, "out of memory");
	if (bpf_map_lookup_elem(bpf_map__fd(S.dskel->maps.stats), &key, vals) < 0)
		return 0;
	for (int c = 0; c < ncpu; c++)
		sum += vals[c];
	return sum;
}

static const char *const vstat_names[] = { "packets", "bytes", "new_flows", "lru_hits", "lru_misses" };
static const char *const rstat_names[] = { "packets", "bytes", "new_flows" };

static void write_stats(struct out *o)
{
	__u64 fwd = 0, hits = 0;
	char name[200], vb[80], ab[INET6_ADDRSTRLEN];
	struct mqlb_vstat vs;
	struct mqlb_rstat rs;

	if (S.decap) {
		for (__u32 i = 0; i < MQLB_ST_MAX; i++)
			out_stat(o, stat_names[i], decap_stat(i));
		return;
	}
	/* The program leaves forwarded and lru_hits to us: every VIP slot's
	 * packets (less its new flows), summed over all slots so that the
	 * counters never go back when a VIP is removed. */
	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++) {
		pcpu_vstat(&S.pc, vn, &vs);
		fwd += vs.packets;
		hits += vs.lru_hits;
	}
	for (int i = 0; i < MQLB_ST_MAX; i++)
		out_stat(o, stat_names[i],
			 i == MQLB_ST_FWD ? fwd : i == MQLB_ST_LRU_HIT ? hits : pcpu_stat(&S.pc, i));
	out_stat(o, "records", S.n_records);
	out_stat(o, "bad_records", S.n_bad);
	out_stat(o, "ring_slots_written", S.lb.n_slots);
	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++) {
		struct lb_vip *v = &S.lb.vips[vn];
		__u64 sum[5];

		if (!v->used)
			continue;
		lb_fmt_vip(&v->key, vb, sizeof vb);
		pcpu_vstat(&S.pc, vn, &vs);
		sum[0] = vs.packets;
		sum[1] = vs.bytes;
		sum[2] = vs.new_flows;
		sum[3] = vs.lru_hits;
		sum[4] = vs.lru_misses;
		for (int i = 0; i < 5; i++) {
			snprintf(name, sizeof name, "vip.%s.%s.%s", vb,
				 v->key.proto == IPPROTO_UDP ? "udp" : "tcp", vstat_names[i]);
			out_stat(o, name, sum[i]);
		}
	}
	for (int ri = 1; ri < MQLB_MAX_REALS; ri++) {
		__u64 sum[3];

		if (S.lb.reals[ri].refs == 0)
			continue;
		lb_fmt_addr(S.lb.reals[ri].addr, S.lb.reals[ri].family, ab, sizeof ab);
		pcpu_rstat(&S.pc, ri, &rs);
		sum[0] = rs.packets;
		sum[1] = rs.bytes;
		sum[2] = rs.new_flows;
		for (int i = 0; i < 3; i++) {
			snprintf(name, sizeof name, "real.%s.%s", ab, rstat_names[i]);
			out_stat(o, name, sum[i]);
		}
	}
}

/* show: the state as the records that would rebuild it, then the MACs. */
static void write_show(struct out *o)
{
	char vb[80], ab[INET6_ADDRSTRLEN], mac[18];

	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++) {
		struct lb_vip *v = &S.lb.vips[vn];

		if (!v->used)
			continue;
		lb_fmt_vip(&v->key, vb, sizeof vb);
		out_str(o, "vip");
		out_str(o, vb);
		out_str(o, v->key.proto == IPPROTO_UDP ? "udp" : "tcp");
		out_end(o);
		for (int ri = 1; ri < MQLB_MAX_REALS; ri++) {
			if (v->weight[ri] < 0)
				continue;
			out_str(o, "real");
			out_str(o, vb);
			out_str(o, lb_fmt_addr(S.lb.reals[ri].addr, S.lb.reals[ri].family, ab,
					       sizeof ab));
			out_ulong(o, (unsigned long)v->weight[ri]);
			out_end(o);
		}
	}
	for (int ri = 1; ri < MQLB_MAX_REALS; ri++) {
		const __u8 *m = S.lb.reals[ri].mac;

		if (S.lb.reals[ri].refs == 0 || S.encap == MQLB_ENCAP_IPIP)
			continue;
		snprintf(mac, sizeof mac, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5]);
		out_str(o, "mac");
		out_str(o, lb_fmt_addr(S.lb.reals[ri].addr, S.lb.reals[ri].family, ab, sizeof ab));
		out_str(o, S.lb.reals[ri].have_mac ? mac : "unresolved");
		out_end(o);
	}
}

static void sock_line(struct conn *c, char *line, size_t n, void *arg)
{
	struct rec r;
	int rc = rec_split(line, n, &r);

	if (rc == 1)
		return;
	if (rc == 0 && r.nf == 1 && (rec_is(&r, 0, "stats") || rec_is(&r, 0, "show"))) {
		if (rec_is(&r, 0, "stats"))
			write_stats(&c->out);
		else if (!S.decap)
			write_show(&c->out);
		out_str(&c->out, "ok");
		out_end(&c->out);
		return;
	}
	if (S.decap) {
		out_str(&c->out, "error");
		out_str(&c->out, "unknown-query");
		out_end(&c->out);
		return;
	}
	/* Records from a producer connected to the socket. */
	handle_rec(&r, rc, c->in.lineno, "socket: ");
}

static void stats_cb(struct ev_loop *loop, ev_timer *w, int revents) { write_stats(&S.out); }

/* The clock of the IPv4 connection entries' age (least recently used
 * goes first when a bucket is full). */
static void clock_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	pcpu_tick(&S.pc, (__u32)ts.tv_sec);
}

/* ---- load and attach ------------------------------------------------------ */

static int libbpf_log(enum libbpf_print_level level, const char *fmt, va_list ap)
{
	char buf[1024];
	size_t n;

	if (level == LIBBPF_DEBUG && log_level() < L_DEBUG)
		return 0;
	vsnprintf(buf, sizeof buf, fmt, ap);
	n = strlen(buf);
	while (n && buf[n - 1] == '\n')
		buf[--n] = '\0';
	log_msg(level == LIBBPF_WARN ? L_WARN : level == LIBBPF_INFO ? L_INFO : L_DEBUG, "libbpf: %s", buf);
	return 0;
}

static void pin_path(char *buf, size_t n, const char *name)
{
	if ((size_t)snprintf(buf, n, "%s/%s", S.pin, name) >= n)
		die(EXIT_USAGE, "--pin %s: path too long", S.pin);
}

/* Attach prog_fd by a BPF link. With --pin the link lives in DIR/link and a
 * successor swaps its own program in there, so packets never miss. */
static void attach(int prog_fd)
{
	LIBBPF_OPTS(bpf_link_create_opts, lo);
	char path[4096];
	int fd;

	if (S.pin) {
		pin_path(path, sizeof path, "link");
		fd = bpf_obj_get(path);
		if (fd >= 0) {
			struct bpf_link_info info = { 0 };
			__u32 len = sizeof info;

			if (bpf_obj_get_info_by_fd(fd, &info, &len) == 0 && info.type == BPF_LINK_TYPE_XDP &&
			    (int)info.xdp.ifindex != S.ifindex)
				die(EXIT_USAGE, "%s belongs to another interface (ifindex %u)", path,
				    info.xdp.ifindex);
			if (bpf_link_update(fd, prog_fd, NULL) == 0) {
				S.link_fd = fd;
				infol("took over %s on %s", path, S.ifname);
				return;
			}
			/* The interface went away with its program: start afresh. */
			warnl("%s: cannot take over (%s); attaching anew", path, strerror(errno));
			close(fd);
			unlink(path);
		}
	}
	lo.flags = S.generic ? XDP_FLAGS_SKB_MODE : XDP_FLAGS_DRV_MODE;
	fd = bpf_link_create(prog_fd, S.ifindex, BPF_XDP, &lo);
	if (fd < 0) {
		int e = errno;

		if (e == EBUSY || e == EEXIST)
			die(EXIT_SYSERR, "cannot attach to %s: an XDP program is attached already "
			    "(another mqlb-xdp? give it --pin for a takeover, or detach with "
			    "\"ip link set dev %s xdp off\")", S.ifname, S.ifname);
		if (!S.generic && (e == EOPNOTSUPP || e == EINVAL || e == ENOTSUP))
			die(EXIT_SYSERR, "cannot attach to %s in native mode: %s; the driver may "
			    "not support XDP: try --mode generic", S.ifname, strerror(e));
		die(EXIT_SYSERR, "cannot attach to %s: %s", S.ifname, strerror(e));
	}
	if (S.pin && bpf_obj_pin(fd, path) < 0)
		die(EXIT_SYSERR, "cannot pin %s: %s", path, strerror(errno));
	S.link_fd = fd;
}

static void pin_dir(void)
{
	if (mkdir(S.pin, 0700) < 0 && errno != EEXIST)
		die(EXIT_SYSERR, "--pin %s: %s (is bpffs mounted on /sys/fs/bpf?)", S.pin, strerror(errno));
}

static void set_pin(struct bpf_map *m)
{
	char path[4096];

	pin_path(path, sizeof path, bpf_map__name(m));
	if (bpf_map__set_pin_path(m, path) < 0)
		die(EXIT_SYSERR, "cannot pin %s", path);
}

static void load_decap(void)
{
	if (!(S.dskel = mqlb_decap_bpf__open()))
		die(EXIT_SYSERR, "cannot open the BPF object: %s", strerror(errno));
	if (S.pin) {
		pin_dir();
		set_pin(S.dskel->maps.stats);
	}
	if (mqlb_decap_bpf__load(S.dskel) < 0)
		die(EXIT_SYSERR, "cannot load the decap program: %s (root or CAP_BPF needed)", strerror(errno));
	attach(bpf_program__fd(S.dskel->progs.mqlb_decap));
}

/* Fill in what the maps of a predecessor say (--pin takeover). */
static void recover(void)
{
	struct mqlb_vip_key k, *prev = NULL;
	struct mqlb_vip bv;
	int n = 0;

	while (bpf_map_get_next_key(S.lb.fd_vips, prev, &k) == 0) {
		prev = &k;
		if (bpf_map_lookup_elem(S.lb.fd_vips, &k, &bv) < 0 || (bv.flags & MQLB_VIP_ADDR) ||
		    bv.num >= MQLB_MAX_VIPS)
			continue;
		S.lb.vips[bv.num].used = 1;
		S.lb.vips[bv.num].key = k;
		S.lb.vips[bv.num].flags = bv.flags;
		n++;
	}
	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++) {
		__u32 key = (__u32)vn;

		if (bpf_map_lookup_elem(S.lb.fd_vipgen, &key, &S.lb.vipgen[vn]) < 0)
			S.lb.vipgen[vn] = 0;
		pcpu_vipgen(&S.pc, vn, S.lb.vipgen[vn]);
	}
	lb_vips_sync(&S.lb);
	for (int ri = 1; ri < MQLB_MAX_REALS; ri++) {
		struct mqlb_real br = { 0 };
		__u32 key = (__u32)ri;

		/* The copies again too: this mqlb-xdp's --encap may differ. */
		bpf_map_lookup_elem(S.lb.fd_reals, &key, &br);
		pcpu_dest(&S.pc, ri, &br);
		if (!(br.flags & MQLB_REAL_VALID))
			continue;
		memcpy(S.lb.reals[ri].addr, br.addr, 16);
		memcpy(S.lb.reals[ri].mac, br.mac, 6);
		S.lb.reals[ri].family = br.family;
		S.lb.reals[ri].have_mac = 1;
	}
	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++) {
		struct lb_vip *v = &S.lb.vips[vn];

		for (int ri = 0; ri < MQLB_MAX_REALS; ri++) {
			__u32 key = (__u32)(vn * MQLB_MAX_REALS + ri), m = 0;

			v->weight[ri] = -1;
			if (v->used && ri > 0 &&
			    bpf_map_lookup_elem(S.lb.fd_members, &key, &m) == 0 && m) {
				v->weight[ri] = (int)m - 1;
				S.lb.reals[ri].refs++;
			}
		}
		/* Know the slots as they are, so only real changes get written
		 * (an unused VIP's slots were emptied by its del). */
		for (__u32 i = 0; v->used && i < S.ring_size; i++)
			v->ring[i] = S.lb.ring[(size_t)vn * S.ring_size + i];
	}
	/* Entries the running program refreshed meanwhile took the copies
	 * as they were. */
	pcpu_bump(&S.pc);
	if (n)
		infol("took over %d VIPs from %s", n, S.pin);
}

static void config_source(struct mqlb_config *cfg)
{
	struct ifaddrs *ifa, *p;
	int best4 = 33, best6 = 129;

	if (S.source) {
		__u32 a[4];
		int fam;

		if (parse_addr(S.source, a, &fam) < 0)
			opt_usage_error("--source: bad address \"%s\"", S.source);
		if (fam == 4)
			cfg->src4 = a[0];
		else
			memcpy(cfg->src6, a, 16);
		return;
	}
	if (getifaddrs(&ifa) < 0)
		return;
	/* The VIP may sit on this interface as a /32 (to answer ARP): prefer
	 * the address of the widest subnet. */
	for (p = ifa; p; p = p->ifa_next) {
		int bits = 0;

		if (!p->ifa_addr || strcmp(p->ifa_name, S.ifname) || !p->ifa_netmask)
			continue;
		if (p->ifa_addr->sa_family == AF_INET) {
			bits = __builtin_popcount(((struct sockaddr_in *)p->ifa_netmask)->sin_addr.s_addr);
			if (bits < best4) {
				best4 = bits;
				cfg->src4 = ((struct sockaddr_in *)p->ifa_addr)->sin_addr.s_addr;
			}
		} else if (p->ifa_addr->sa_family == AF_INET6) {
			struct sockaddr_in6 *a = (struct sockaddr_in6 *)p->ifa_addr;
			const __u8 *mk = ((struct sockaddr_in6 *)p->ifa_netmask)->sin6_addr.s6_addr;

			if (IN6_IS_ADDR_LINKLOCAL(&a->sin6_addr))
				continue;
			for (int i = 0; i < 16; i++)
				bits += __builtin_popcount(mk[i]);
			if (bits < best6) {
				best6 = bits;
				memcpy(cfg->src6, &a->sin6_addr, 16);
			}
		}
	}
	freeifaddrs(ifa);
}

static void write_config(void)
{
	struct mqlb_config cfg = { 0 };
	struct ifreq ifr = { 0 };
	__u32 zero = 0;
	int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);

	cfg.mtu = 1500;
	snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", S.ifname);
	if (s >= 0 && ioctl(s, SIOCGIFMTU, &ifr) == 0)
		cfg.mtu = (__u16)ifr.ifr_mtu;
	if (s >= 0)
		close(s);
	config_source(&cfg);
	if (S.encap == MQLB_ENCAP_IPIP) {
		if (!S.have_gw_mac) {
			__u32 gw[4] = { 0 };

			if (default_gateway(&gw[0]) < 0)
				die(EXIT_USAGE, "--encap ipip: no default gateway on %s; give --gateway-mac",
				    S.ifname);
			neigh_poke(gw, 4);
			for (int i = 0; i < 20 && neigh_lookup(gw, 4, S.gw_mac) < 0; i++)
				usleep(100000);
			if (neigh_lookup(gw, 4, S.gw_mac) < 0)
				die(EXIT_UNREACH, "cannot resolve the gateway's MAC; give --gateway-mac");
		}
		if (!cfg.src4 && !cfg.src6[0] && !cfg.src6[3])
			warnl("no address on %s for the outer header; give --source", S.ifname);
	}
	memcpy(cfg.gw_mac, S.gw_mac, 6);
	if (bpf_map_update_elem(S.fd_config, &zero, &cfg, BPF_ANY) < 0)
		die(EXIT_SYSERR, "cannot write the config map: %s", strerror(errno));
}

static void load_lb(void)
{
	struct mqlb_xdp_bpf *sk;
	int err;

	if (!(sk = S.skel = mqlb_xdp_bpf__open()))
		die(EXIT_SYSERR, "cannot open the BPF object: %s", strerror(errno));
	bpf_map__set_max_entries(sk->maps.ring, mqlb_ring_elems((__u32)S.ring_size));
	bpf_map__set_max_entries(sk->maps.conns4, mqlb_ct_buckets((__u32)S.max_conns));
	bpf_map__set_max_entries(sk->maps.conns6, (__u32)S.max_conns);
	bpf_map__set_max_entries(sk->maps.cpus, (__u32)libbpf_num_possible_cpus());
	sk->rodata->ct_bits = mqlb_ct_bits((__u32)S.max_conns);
	sk->rodata->encap = (__u32)S.encap;
	sk->rodata->ring_size = (__u32)S.ring_size;
	S.prog = lb_prog(sk, (__u32)S.encap);
	if (S.pin) {
		pin_dir();
		set_pin(sk->maps.vips);
		set_pin(sk->maps.reals);
		set_pin(sk->maps.ring);
		set_pin(sk->maps.members);
		set_pin(sk->maps.vipgen);
		set_pin(sk->maps.conns4);
		set_pin(sk->maps.conns6);
		set_pin(sk->maps.config);
		set_pin(sk->maps.cpus);
	}
	if ((err = mqlb_xdp_bpf__load(sk)) < 0) {
		if (S.pin)
			die(EXIT_SYSERR, "cannot load the program with the maps pinned in %s: %s "
			    "(other --ring-size or --max-conns, or the maps of another mqlb-xdp version? "
			    "remove %s to start afresh)",
			    S.pin, strerror(-err), S.pin);
		die(EXIT_SYSERR, "cannot load the XDP program: %s (root or CAP_BPF needed)", strerror(-err));
	}
	S.lb.fd_vips = bpf_map__fd(sk->maps.vips);
	S.lb.fd_reals = bpf_map__fd(sk->maps.reals);
	S.fd_ring = bpf_map__fd(sk->maps.ring);
	if (!(S.lb.ring = maglev_map(S.fd_ring, (__u32)S.ring_size)))
		die(EXIT_SYSERR, "cannot map the ring: %s", strerror(errno));
	S.lb.fd_members = bpf_map__fd(sk->maps.members);
	S.lb.fd_vipgen = bpf_map__fd(sk->maps.vipgen);
	S.fd_config = bpf_map__fd(sk->maps.config);
	/* A new epoch goes to every CPU before the program is attached (or,
	 * taking over, before it replaces the running one: entries the
	 * predecessor made are checked against the maps again). */
	if (pcpu_map(&S.pc, bpf_map__fd(sk->maps.cpus), libbpf_num_possible_cpus(),
		     (__u32)S.encap) < 0)
		die(EXIT_SYSERR, "cannot map the cpus map: %s", strerror(errno));
	clock_cb(S.loop, &S.clock_timer, 0);
	S.lb.pc = &S.pc;
	S.lb.encap = S.encap;
	S.lb.resolve = real_resolve;
	lb_init(&S.lb, S.ring_size);
	if (S.pin)
		recover();
	write_config();
	attach(bpf_program__fd(S.prog));
}

/* ---- shutdown ------------------------------------------------------------- */

static void shutdown_now(int code)
{
	/* Unpinned, closing the link detaches; pinned, the link stays for a
	 * successor. */
	if (S.link_fd > 0)
		close(S.link_fd);
	if (S.cf.listen)
		unlink(S.cf.listen);
	if (out_drain_blocking(&S.out) < 0 && S.out.err != EPIPE)
		code = EXIT_SYSERR;
	exit(code);
}

static void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	infol("signal %d: %s", w->signum, S.pin ? "leaving the program pinned" : "detaching");
	shutdown_now(EXIT_OK);
}

static void on_out_error(struct out *o, void *arg)
{
	if (o->err != EPIPE)
		errl("cannot write records: %s", strerror(o->err));
	shutdown_now(o->err == EPIPE ? EXIT_OK : EXIT_SYSERR);
}

int main(int argc, char **argv)
{

	S.ring_size = MQLB_RING_DEFAULT;
	S.max_conns = MQLB_CONNS_MAX;
	opt_parse(&argc, &argv, OPT_LISTEN | OPT_READY, "i:", longopts, opt, usage, &S.cf);
	/* opt_parse() keeps -i for itself (the MQTT client id elsewhere). */
	if (S.cf.mq.id)
		S.ifname = S.cf.mq.id;
	if (optind < argc)
		opt_usage_error("unexpected argument \"%s\"", argv[optind]);
	if (!S.ifname)
		opt_usage_error("-i: which interface?");
	if (!(S.ifindex = (int)if_nametoindex(S.ifname)))
		opt_usage_error("-i: no interface \"%s\"", S.ifname);
	if (S.decap && (S.encap || S.have_gw_mac || S.source || S.nsrchash || S.stats_interval))
		opt_usage_error("--decap takes only -i, --mode, --pin, --listen and --ready-fd");
	if (S.pin && strlen(S.pin) > 3000)
		opt_usage_error("--pin: path too long");

	signal(SIGPIPE, SIG_IGN);
	libbpf_set_print(libbpf_log);
	S.loop = EV_DEFAULT;
	out_init(&S.out, S.loop, STDOUT_FILENO, 1 << 20);
	S.out.on_error = on_out_error;
	ev_timer_init(&S.resolve_timer, resolve_cb, 0.2, 0.5);
	ev_timer_init(&S.refresh_timer, refresh_cb, 5, 5);
	ev_timer_init(&S.clock_timer, clock_cb, 1, 1);
	if (S.decap)
		load_decap();
	else
		load_lb();

	srv_listen(&S.srv, S.loop, S.cf.listen, S.cf.socket_mode, sock_line);
	/* Records come on stdin (a health checker's pipe) and on the socket. */
	if (!S.decap)
		in_init(&S.in, S.loop, STDIN_FILENO, 1 << 16, stdin_line, stdin_eof, NULL);
	ev_signal_init(&S.sigterm, signal_cb, SIGTERM);
	ev_signal_init(&S.sigint, signal_cb, SIGINT);
	ev_signal_start(S.loop, &S.sigterm);
	ev_signal_start(S.loop, &S.sigint);
	if (!S.decap && S.encap == MQLB_ENCAP_L2)
		ev_timer_start(S.loop, &S.refresh_timer);
	if (!S.decap)
		ev_timer_start(S.loop, &S.clock_timer);
	if (S.stats_interval > 0) {
		ev_timer_init(&S.stats_timer, stats_cb, S.stats_interval, S.stats_interval);
		ev_timer_start(S.loop, &S.stats_timer);
	}
	infol("attached to %s (%s mode)", S.ifname, S.generic ? "generic" : "native");
	ready_notify(S.cf.ready_fd);
	ev_run(S.loop, 0);
	shutdown_now(EXIT_OK);
	return EXIT_OK;
}
