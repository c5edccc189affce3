/* SPDX-License-Identifier: MIT */
/* percpu.c: the XDP balancer's per-CPU state seen from user space: the
 * mmap of its cpus map, epoch, VIP table, copies, clock and counters. */
#include "config.h"

#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "percpu.h"

int pcpu_map(struct pcpu *p, int map_fd, int n, __u32 encap)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	size_t len = ((size_t)n * sizeof *p->c + pg - 1) / pg * pg;
	void *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);

	if (m == MAP_FAILED)
		return -1;
	p->c = m;
	p->n = n;
	p->encap = encap;
	p->now = MQLB_CT_AGE(p->c[0].stamp); /* a predecessor's clock, until the first tick */
	pcpu_bump(p);
	return 0;
}

/* The epoch a stamp holds. The word was the epoch itself before it was a
 * stamp (a counter, the tag bit clear): a successor of such a loader on
 * the pinned maps goes on from it, so that no entry the predecessor
 * tagged looks current. */
static __u32 epoch_of(__u64 s)
{
	return s & MQLB_CT_TAG(0) ? MQLB_CT_EPOCH(s) : (__u32)s;
}

/* The map changes before were system calls, so every CPU sees them before
 * it sees the new epoch; the program reads its own CPU's stamp, each one
 * aligned store. The epoch is kept in the stamp alone (the 15 bits of its
 * tag): a successor on the pinned maps goes on from it. */
void pcpu_bump(struct pcpu *p)
{
	__u64 s = MQLB_CT_STAMP(epoch_of(__atomic_load_n(&p->c[0].stamp, __ATOMIC_RELAXED)) + 1,
				p->now);

	for (int i = 0; i < p->n; i++)
		__atomic_store_n(&p->c[i].stamp, s, __ATOMIC_RELEASE);
}

void pcpu_vips(struct pcpu *p, const struct mqlb_vip_key *keys, const struct mqlb_vip *vals, int n)
{
	__u64 bits[MQLB_PORT_BITS / 64] = { 0 }, t[MQLB_VIP4_SLOTS] = { 0 };
	__u32 next = p->n ? (__atomic_load_n(&p->c[0].vip4_cur, __ATOMIC_RELAXED) ^ 1) & 1 : 0;

	for (int i = 0; i < n; i++) {
		__u64 key = MQLB_VIP4_KEY(keys[i].addr[0], keys[i].port, keys[i].proto);
		__u32 s = mqlb_vip4_slot(key), pb = mqlb_port_bit(keys[i].port);

		bits[pb / 64] |= 1ull << (pb % 64);
		if (keys[i].family != 4 || (vals[i].flags & MQLB_VIP_ADDR))
			continue;
		while (t[s]) /* at most MQLB_MAX_VIPS of MQLB_VIP4_SLOTS are taken */
			s = (s + 1) % MQLB_VIP4_SLOTS;
		t[s] = key | MQLB_VIP4_PRESENT | (__u64)vals[i].num << 56 |
		       (vals[i].flags & MQLB_VIP_SRC_HASH ? MQLB_VIP4_SRC_HASH : 0);
	}
	/* Fill the table not in use, then switch every CPU to it: a lookup
	 * never sees a table half written. */
	for (int i = 0; i < p->n; i++) {
		for (int w = 0; w < MQLB_VIP4_SLOTS; w++)
			__atomic_store_n(&p->c[i].vip4[next][w], t[w], __ATOMIC_RELAXED);
		for (int w = 0; w < MQLB_PORT_BITS / 64; w++)
			__atomic_store_n(&p->c[i].ports[w], p->c[i].ports[w] | bits[w],
					 __ATOMIC_RELAXED);
	}
	for (int i = 0; i < p->n; i++)
		__atomic_store_n(&p->c[i].vip4_cur, next, __ATOMIC_RELEASE);
	/* Then the ports that no VIP has any more. */
	for (int i = 0; i < p->n; i++)
		for (int w = 0; w < MQLB_PORT_BITS / 64; w++)
			__atomic_store_n(&p->c[i].ports[w], bits[w], __ATOMIC_RELAXED);
}

void pcpu_vipgen(struct pcpu *p, int vn, __u32 gen)
{
	for (int i = 0; i < p->n; i++)
		__atomic_store_n(&p->c[i].vip[vn].gen, gen, __ATOMIC_RELAXED);
}

void pcpu_dest(struct pcpu *p, int ri, const struct mqlb_real *r)
{
	__u64 d = 0;

	if (r->flags & MQLB_REAL_VALID) {
		if (p->encap == MQLB_ENCAP_IPIP)
			d = r->family == 4 ? r->addr[0] : 0;
		else
			memcpy(&d, r->mac, 6); /* the bytes in order, as the program writes them */
	}
	for (int i = 0; i < p->n; i++)
		__atomic_store_n(&p->c[i].real[ri].dest, d, __ATOMIC_RELAXED);
}

/* Only the stamp's age changes, by a compare-and-swap on each CPU's: a
 * tick never writes an epoch back, even over the bump of another loader
 * on the same pinned maps (a successor starting while this one ends). */
void pcpu_tick(struct pcpu *p, __u32 now)
{
	const __u64 mask = (__u64)MQLB_CT_AGE_MASK << MQLB_CT_AGE_SHIFT;
	__u64 age = (__u64)(now & MQLB_CT_AGE_MASK) << MQLB_CT_AGE_SHIFT;

	p->now = now;
	for (int i = 0; i < p->n; i++) {
		__u64 s = __atomic_load_n(&p->c[i].stamp, __ATOMIC_RELAXED);

		while (!__atomic_compare_exchange_n(&p->c[i].stamp, &s, (s & ~mask) | age, 0,
						    __ATOMIC_RELEASE, __ATOMIC_RELAXED))
			;
	}
}

__u64 pcpu_stat(const struct pcpu *p, int stat)
{
	__u64 sum = 0;

	/* The program counts these per VIP only: a new flow then writes one
	 * line of counters less. */
	if (stat == MQLB_ST_NEW_FLOWS || stat == MQLB_ST_LRU_MISS) {
		for (int vn = 0; vn < MQLB_MAX_VIPS; vn++) {
			struct mqlb_vstat v;

			pcpu_vstat(p, vn, &v);
			sum += stat == MQLB_ST_NEW_FLOWS ? v.new_flows : v.lru_misses;
		}
		return sum;
	}
	for (int i = 0; i < p->n; i++)
		sum += __atomic_load_n(&p->c[i].stats[stat], __ATOMIC_RELAXED);
	return sum;
}

void pcpu_vstat(const struct pcpu *p, int vn, struct mqlb_vstat *sum)
{
	memset(sum, 0, sizeof *sum);
	for (int i = 0; i < p->n; i++) {
		const struct mqlb_vstat *v = &p->c[i].vip[vn].st;

		sum->packets += __atomic_load_n(&v->packets, __ATOMIC_RELAXED);
		sum->bytes += __atomic_load_n(&v->bytes, __ATOMIC_RELAXED);
		sum->new_flows += __atomic_load_n(&v->new_flows, __ATOMIC_RELAXED);
		sum->lru_misses += __atomic_load_n(&v->lru_misses, __ATOMIC_RELAXED);
	}
	/* A packet counts packets, then new_flows: a sum taken in between
	 * may hold one more new flow than packets. */
	sum->lru_hits = sum->packets >= sum->new_flows ? sum->packets - sum->new_flows : 0;
}

void pcpu_rstat(const struct pcpu *p, int ri, struct mqlb_rstat *sum)
{
	memset(sum, 0, sizeof *sum);
	for (int i = 0; i < p->n; i++) {
		const struct mqlb_rstat *r = &p->c[i].real[ri].st;

		sum->packets += __atomic_load_n(&r->packets, __ATOMIC_RELAXED);
		sum->bytes += __atomic_load_n(&r->bytes, __ATOMIC_RELAXED);
		sum->new_flows += __atomic_load_n(&r->new_flows, __ATOMIC_RELAXED);
	}
}
