/* SPDX-License-Identifier: MIT */
/* percpu.h: the XDP balancer's per-CPU state (bpf/mqlb_xdp.bpf.c's cpus
 * map, one struct mqlb_cpu per CPU) from user space: mapped once, the
 * epoch, VIP table, copies and clock written on every CPU, the counters
 * summed. */
#ifndef MQLB_PERCPU_H
#define MQLB_PERCPU_H

#include <linux/types.h>

#include "mqlb_kern_user.h"

struct pcpu {
	struct mqlb_cpu *c;
	int n;
	__u32 encap; /* the program's MQLB_ENCAP_*: what a real's copy holds */
	__u32 now;   /* the clock of the last pcpu_tick, for the stamp of a bump */
};

/* Map the cpus map (n elements, BPF_F_MMAPABLE), give every CPU a new
 * epoch. Returns 0, or -1 with errno. */
int pcpu_map(struct pcpu *p, int map_fd, int n, __u32 encap);

/* A new epoch on every CPU: IPv4 connections check their real against the
 * maps again. Call it once a change that may end one (a member removed, a
 * VIP slot's generation bumped, a real's MAC or validity changed) is all
 * written, and not before: an entry checked during the change must keep an
 * older epoch's tag (lb_settle, xdp/lbstate.c). */
void pcpu_bump(struct pcpu *p);

/* The VIPs, all of them (keys[i] is vals[i].num's): the port filter, and
 * the IPv4 VIP table of new flows. */
void pcpu_vips(struct pcpu *p, const struct mqlb_vip_key *keys, const struct mqlb_vip *vals, int n);

/* Copies of a VIP slot's generation and of a real's IPv4 destination (its
 * MAC, or with encap ipip its address; 0 when it takes no IPv4 flows). The
 * caller bumps the epoch when the change is done. */
void pcpu_vipgen(struct pcpu *p, int vn, __u32 gen);
void pcpu_dest(struct pcpu *p, int ri, const struct mqlb_real *r);

/* The clock of the connection entries' age, in seconds: the stamp's age on
 * every CPU. */
void pcpu_tick(struct pcpu *p, __u32 now);

__u64 pcpu_stat(const struct pcpu *p, int stat);
void pcpu_vstat(const struct pcpu *p, int vn, struct mqlb_vstat *sum);
void pcpu_rstat(const struct pcpu *p, int ri, struct mqlb_rstat *sum);

#endif
