/* SPDX-License-Identifier: MIT */
/* lbstate.c: mqlb-xdp's VIPs and reals, written to the XDP program's maps
 * (vips, reals, members, vipgen, the rings, the per-CPU state) in order. */
#include "config.h"

#include <arpa/inet.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <bpf/bpf.h>

#include "log.h"

#include "xdp/lbstate.h"
#include "xdp/maglev.h"

const char *lb_fmt_addr(const __u32 addr[4], int family, char *buf, size_t n)
{
	return inet_ntop(family == 4 ? AF_INET : AF_INET6, addr, buf, (socklen_t)n);
}

const char *lb_fmt_vip(const struct mqlb_vip_key *k, char *buf, size_t n)
{
	char a[INET6_ADDRSTRLEN];

	lb_fmt_addr(k->addr, k->family, a, sizeof a);
	snprintf(buf, n, k->family == 6 ? "[%s]:%u" : "%s:%u", a, ntohs(k->port));
	return buf;
}

void lb_init(struct lbstate *lb, unsigned long ring_size)
{
	lb->ring_size = ring_size;
	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++) {
		if (!(lb->vips[vn].ring = calloc(ring_size, sizeof(__u32))))
			die(EXIT_SYSERR, "out of memory");
		for (int ri = 0; ri < MQLB_MAX_REALS; ri++)
			lb->vips[vn].weight[ri] = -1;
	}
	if (!(lb->scratch = calloc(ring_size, sizeof(__u32))))
		die(EXIT_SYSERR, "out of memory");
}

static void stepped(struct lbstate *lb)
{
	if (lb->step)
		lb->step(lb);
}

static void write_member(struct lbstate *lb, int vn, int ri)
{
	__u32 k = (__u32)(vn * MQLB_MAX_REALS + ri);
	__u32 v = lb->vips[vn].weight[ri] < 0 ? 0 : (__u32)lb->vips[vn].weight[ri] + 1;

	if (bpf_map_update_elem(lb->fd_members, &k, &v, BPF_ANY) < 0)
		die(EXIT_SYSERR, "cannot update the members map: %s", strerror(errno));
	if (!v)
		lb->bump_due = 1; /* its IPv4 connections look again and move */
	stepped(lb);
}

void lb_real_write(struct lbstate *lb, int ri)
{
	struct lb_real *r = &lb->reals[ri];
	struct mqlb_real br = { 0 };
	__u32 k = (__u32)ri;

	if (r->refs > 0) {
		memcpy(br.addr, r->addr, 16);
		memcpy(br.mac, r->mac, 6);
		br.family = (__u8)r->family;
		br.flags = MQLB_REAL_VALID;
	}
	if (bpf_map_update_elem(lb->fd_reals, &k, &br, BPF_ANY) < 0)
		die(EXIT_SYSERR, "cannot update the reals map: %s", strerror(errno));
	pcpu_dest(lb->pc, ri, &br);
	lb->bump_due = 1; /* its IPv4 connections check that it is still valid */
	stepped(lb);
}

/* The end of every change: a new epoch, so that each IPv4 entry is checked
 * against the maps as they are now. Only last: a packet checked during the
 * change (against a member not yet removed, or scheduled by a ring not yet
 * rebuilt) tagged its entry with the epoch before, and is checked again.
 * A bump in the middle would let it tag the entry with the final epoch.
 * So a change writes, in order: the ring (a real that leaves takes no new
 * flow), members and reals, then lb_settle; a real that joins is a member,
 * with its dest, before the ring gives it flows. */
void lb_settle(struct lbstate *lb)
{
	if (lb->bump_due)
		pcpu_bump(lb->pc);
	lb->bump_due = 0;
}

/* A real takes ring slots once it can be reached: in l2 mode that needs
 * its MAC. */
static int real_usable(const struct lbstate *lb, int ri)
{
	return lb->encap == MQLB_ENCAP_IPIP || lb->reals[ri].have_mac;
}

void lb_vip_rebuild(struct lbstate *lb, int vn)
{
	struct lb_vip *v = &lb->vips[vn];
	struct mg_backend b[MQLB_MAX_REALS];
	__u32 m = (__u32)lb->ring_size;
	int n = 0;
	long changed;
	char buf[80];

	for (int ri = 1; ri < MQLB_MAX_REALS; ri++)
		if (v->weight[ri] >= 0) {
			b[n].id = (__u32)ri;
			b[n].weight = real_usable(lb, ri) ? (__u32)v->weight[ri] : 0;
			memcpy(b[n].addr, lb->reals[ri].addr, 16);
			n++;
		}
	if (maglev_build(lb->scratch, m, b, n) < 0)
		die(EXIT_SYSERR, "out of memory");
	changed = maglev_sync(lb->ring + (size_t)vn * m, v->ring, lb->scratch, m);
	lb->n_slots += (unsigned long)changed;
	debugl("vip %s: %ld ring slots changed", lb_fmt_vip(&v->key, buf, sizeof buf), changed);
	stepped(lb);
}

static int real_find(struct lbstate *lb, const __u32 addr[4], int family, int create)
{
	int free_ri = 0;

	for (int ri = 1; ri < MQLB_MAX_REALS; ri++) {
		struct lb_real *r = &lb->reals[ri];

		if (r->refs > 0 && r->family == family && !memcmp(r->addr, addr, 16))
			return ri;
		if (!free_ri && r->refs == 0)
			free_ri = ri;
	}
	if (!create || !free_ri)
		return 0;
	memset(&lb->reals[free_ri], 0, sizeof lb->reals[free_ri]);
	memcpy(lb->reals[free_ri].addr, addr, 16);
	lb->reals[free_ri].family = family;
	return free_ri;
}

int lb_vip_find(const struct lbstate *lb, const struct mqlb_vip_key *k)
{
	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++)
		if (lb->vips[vn].used && !memcmp(&lb->vips[vn].key, k, sizeof *k))
			return vn;
	return -1;
}

/* The address-only entry tells the program which fragments to drop. */
static void vip_addr_entry(struct lbstate *lb, const struct mqlb_vip_key *k)
{
	struct mqlb_vip_key ak = { .family = k->family };
	struct mqlb_vip av = { .flags = MQLB_VIP_ADDR };
	int users = 0;

	memcpy(ak.addr, k->addr, 16);
	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++)
		if (lb->vips[vn].used && lb->vips[vn].key.family == k->family &&
		    !memcmp(lb->vips[vn].key.addr, k->addr, 16))
			users++;
	if (users)
		bpf_map_update_elem(lb->fd_vips, &ak, &av, BPF_ANY);
	else
		bpf_map_delete_elem(lb->fd_vips, &ak);
}

/* A new generation for VIP slot vn, on add and on del: connection entries
 * made for the slot's previous VIP are never taken again. */
static void vip_newgen(struct lbstate *lb, int vn)
{
	__u32 k = (__u32)vn, g = ++lb->vipgen[vn];

	if (bpf_map_update_elem(lb->fd_vipgen, &k, &g, BPF_ANY) < 0)
		die(EXIT_SYSERR, "cannot update the vipgen map: %s", strerror(errno));
	pcpu_vipgen(lb->pc, vn, g);
	lb->bump_due = 1;
}

void lb_vips_sync(struct lbstate *lb)
{
	struct mqlb_vip_key keys[MQLB_MAX_VIPS];
	struct mqlb_vip vals[MQLB_MAX_VIPS];
	int n = 0;

	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++)
		if (lb->vips[vn].used) {
			keys[n] = lb->vips[vn].key;
			vals[n].num = (__u32)vn;
			vals[n++].flags = lb->vips[vn].flags;
		}
	pcpu_vips(lb->pc, keys, vals, n);
	stepped(lb);
}

const char *lb_vip_add(struct lbstate *lb, const struct mqlb_vip_key *k, __u32 flags)
{
	struct mqlb_vip bv = { 0 };
	int vn = lb_vip_find(lb, k);
	struct lb_vip *v;

	if (vn >= 0)
		return NULL; /* again, after a producer restart: nothing changes */
	for (vn = 0; vn < MQLB_MAX_VIPS && lb->vips[vn].used; vn++)
		;
	if (vn == MQLB_MAX_VIPS)
		return "too many VIPs";
	v = &lb->vips[vn];
	v->used = 1;
	v->key = *k;
	v->flags = flags;
	for (int ri = 0; ri < MQLB_MAX_REALS; ri++)
		v->weight[ri] = -1;
	bv.num = (__u32)vn;
	bv.flags = v->flags;
	vip_newgen(lb, vn);
	if (bpf_map_update_elem(lb->fd_vips, k, &bv, BPF_ANY) < 0)
		die(EXIT_SYSERR, "cannot update the vips map: %s", strerror(errno));
	vip_addr_entry(lb, k);
	lb_vips_sync(lb);
	return NULL;
}

static void real_unref(struct lbstate *lb, int ri)
{
	if (--lb->reals[ri].refs == 0)
		lb_real_write(lb, ri);
}

/* In the order of lb_settle: the ring empty first (ready for the next VIP
 * here), then the members, the reals and the VIP. */
void lb_vip_del(struct lbstate *lb, int vn)
{
	struct lb_vip *v = &lb->vips[vn];
	int gone[MQLB_MAX_REALS], n = 0;

	for (int ri = 1; ri < MQLB_MAX_REALS; ri++)
		if (v->weight[ri] >= 0) {
			v->weight[ri] = -1;
			gone[n++] = ri;
		}
	lb_vip_rebuild(lb, vn);
	for (int i = 0; i < n; i++) {
		write_member(lb, vn, gone[i]);
		real_unref(lb, gone[i]);
	}
	bpf_map_delete_elem(lb->fd_vips, &v->key);
	v->used = 0;
	vip_newgen(lb, vn);
	vip_addr_entry(lb, &v->key);
	lb_vips_sync(lb);
}

const char *lb_real_set(struct lbstate *lb, int vn, const __u32 addr[4], int family, int weight)
{
	struct lb_vip *v = &lb->vips[vn];
	int ri = real_find(lb, addr, family, 0);

	if (lb->encap == MQLB_ENCAP_IPIP && family != v->key.family)
		return "--encap ipip needs the real in the VIP's address family";
	if (!ri || v->weight[ri] < 0) {
		if (!ri && !(ri = real_find(lb, addr, family, 1)))
			return "too many reals";
		if (lb->reals[ri].refs++ == 0) {
			if (lb->resolve)
				lb->resolve(lb, ri);
			lb_real_write(lb, ri);
		}
		v->weight[ri] = weight;
		write_member(lb, vn, ri); /* a member, with its dest, before the ring picks it */
		lb_vip_rebuild(lb, vn);
		return NULL;
	}
	if (v->weight[ri] == weight)
		return NULL;
	v->weight[ri] = weight;
	lb_vip_rebuild(lb, vn); /* the ring first (see lb_settle) */
	write_member(lb, vn, ri);
	return NULL;
}

const char *lb_real_del(struct lbstate *lb, int vn, const __u32 addr[4], int family)
{
	struct lb_vip *v = &lb->vips[vn];
	int ri = real_find(lb, addr, family, 0);

	if (!ri || v->weight[ri] < 0)
		return NULL; /* already gone: deletes are idempotent */
	v->weight[ri] = -1;
	lb_vip_rebuild(lb, vn); /* no new flow picks it, then established ones leave (lb_settle) */
	write_member(lb, vn, ri);
	real_unref(lb, ri);
	return NULL;
}
