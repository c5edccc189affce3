/* SPDX-License-Identifier: MIT */
/* lbstate.h: mqlb-xdp's VIPs and reals, and every change to them written
 * to the XDP program's maps in the one order that keeps established
 * connections right (see lb_settle). t/xdptest runs the same code. */
#ifndef MQLB_LBSTATE_H
#define MQLB_LBSTATE_H

#include <stddef.h>
#include <linux/types.h>

#include "mqlb_kern_user.h"
#include "xdp/percpu.h"

struct lb_real {
	__u32 addr[4];
	int family;
	__u8 mac[6];
	int have_mac;
	int refs; /* VIPs it serves */
};

struct lb_vip {
	int used;
	struct mqlb_vip_key key;
	__u32 flags;
	int weight[MQLB_MAX_REALS]; /* -1: not a member */
	__u32 *ring;                /* what the BPF ring holds now */
};

struct lbstate {
	int fd_vips, fd_reals, fd_members, fd_vipgen;
	struct pcpu *pc;          /* the program's per-CPU state, mapped */
	__u16 *ring;              /* the ring array, mapped */
	unsigned long ring_size;
	int encap;                /* MQLB_ENCAP_*: with l2 a real needs its MAC */
	struct lb_vip vips[MQLB_MAX_VIPS];
	__u32 vipgen[MQLB_MAX_VIPS]; /* what the vipgen map holds */
	struct lb_real reals[MQLB_MAX_REALS];
	__u32 *scratch;
	unsigned long n_slots;    /* ring slots written */
	int bump_due;             /* lb_settle bumps the epoch */
	/* A real joins its first VIP: look for its MAC (l2). */
	void (*resolve)(struct lbstate *lb, int ri);
	/* Called after each map write of a change (tests); NULL otherwise. */
	void (*step)(struct lbstate *lb);
};

/* An address, a VIP (addr:port, [addr]:port) as text. */
const char *lb_fmt_addr(const __u32 addr[4], int family, char *buf, size_t n);
const char *lb_fmt_vip(const struct mqlb_vip_key *k, char *buf, size_t n);

/* The rings and scratch space for ring_size slots, no VIP, no real. The
 * caller sets the descriptors, pc, ring and encap. Dies out of memory. */
void lb_init(struct lbstate *lb, unsigned long ring_size);

int lb_vip_find(const struct lbstate *lb, const struct mqlb_vip_key *k);

/* The changes a record asks for; each ends with lb_settle by the caller,
 * once all the VIPs a record names are done. They return NULL or what is
 * wrong. */
const char *lb_vip_add(struct lbstate *lb, const struct mqlb_vip_key *k, __u32 flags);
void lb_vip_del(struct lbstate *lb, int vn);
const char *lb_real_set(struct lbstate *lb, int vn, const __u32 addr[4], int family, int weight);
const char *lb_real_del(struct lbstate *lb, int vn, const __u32 addr[4], int family);

/* Real ri's entry and IPv4 destination again (its MAC learned or changed). */
void lb_real_write(struct lbstate *lb, int ri);

/* VIP vn's ring from its weights, the slots that changed written. */
void lb_vip_rebuild(struct lbstate *lb, int vn);

/* The port filter and the IPv4 VIP table from the VIPs in use. */
void lb_vips_sync(struct lbstate *lb);

/* The end of every change: a new epoch when it may end connections. */
void lb_settle(struct lbstate *lb);

#endif
