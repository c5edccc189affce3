/* SPDX-License-Identifier: MIT */
/* maglev.c: weighted Maglev (Eisenbud et al., NSDI 2016) table building and
 * the slot-by-slot update of the mapped BPF ring. */
#include "config.h"

#include <errno.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "maglev.h"
#include "mqlb_kern_user.h"

int maglev_prime(unsigned long m)
{
	if (m < 2)
		return 0;
	for (unsigned long d = 2; d * d <= m; d++)
		if (m % d == 0)
			return 0;
	return 1;
}

static __u32 addr_hash(const __u32 addr[4], __u32 seed)
{
	__u32 h = seed;

	for (int i = 0; i < 4; i++)
		h = mqlb_mix(h, addr[i]);
	return mqlb_fmix(h);
}

/* Order the backends by address, so the table depends on the set of reals
 * and their weights only, not on the order records arrived in. */
static int cmp_backend(const void *a, const void *b)
{
	const struct mg_backend *x = a, *y = b;

	return memcmp(x->addr, y->addr, sizeof x->addr);
}

int maglev_build(__u32 *ring, __u32 m, const struct mg_backend *in, int n)
{
	struct mg_backend *b;
	uint64_t *off, *skip, *next, *credit;
	__u32 wmax = 0, filled = 0;

	memset(ring, 0, (size_t)m * sizeof *ring);
	for (int i = 0; i < n; i++)
		if (in[i].weight > wmax)
			wmax = in[i].weight;
	if (n == 0 || wmax == 0)
		return 0;
	b = malloc((size_t)n * sizeof *b);
	off = calloc((size_t)n * 4, sizeof *off);
	if (!b || !off) {
		free(b);
		free(off);
		errno = ENOMEM;
		return -1;
	}
	skip = off + n;
	next = skip + n;
	credit = next + n;
	memcpy(b, in, (size_t)n * sizeof *b);
	qsort(b, (size_t)n, sizeof *b, cmp_backend);
	for (int i = 0; i < n; i++) {
		off[i] = addr_hash(b[i].addr, 0x9e3779b9u) % m;
		skip[i] = addr_hash(b[i].addr, 0x85ebca77u) % (m - 1) + 1;
	}
	/* Each round every backend earns its weight; the heaviest places one
	 * entry per round, the others in proportion. */
	while (filled < m) {
		for (int i = 0; i < n && filled < m; i++) {
			if (!b[i].weight)
				continue;
			credit[i] += b[i].weight;
			if (credit[i] < wmax)
				continue;
			credit[i] -= wmax;
			for (;;) {
				/* m is prime and 0 < skip < m: the walk visits every slot. */
				__u32 c = (__u32)((off[i] + next[i] * skip[i]) % m);

				next[i]++;
				if (!ring[c]) {
					ring[c] = b[i].id;
					filled++;
					break;
				}
			}
		}
	}
	free(b);
	free(off);
	return 0;
}

__u16 *maglev_map(int map_fd, __u32 m)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	size_t len = (size_t)mqlb_ring_elems(m) * MQLB_RING_LANES * sizeof(__u16);
	void *p;

	len = (len + pg - 1) / pg * pg;
	p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, map_fd, 0);
	return p == MAP_FAILED ? NULL : p;
}

long maglev_sync(__u16 *ring, __u32 *cur, const __u32 *next, __u32 m)
{
	long n = 0;

	for (__u32 i = 0; i < m; i++) {
		if (cur[i] == next[i])
			continue;
		__atomic_store_n(&ring[i], (__u16)next[i], __ATOMIC_RELAXED);
		cur[i] = next[i];
		n++;
	}
	return n;
}
