/* SPDX-License-Identifier: MIT */
/* maglev.h: the weighted Maglev lookup table of mqlb-xdp, built in user
 * space and written into the mapped BPF ring slot by slot (only what
 * changed). */
#ifndef MQLB_MAGLEV_H
#define MQLB_MAGLEV_H

#include <linux/types.h>

struct mg_backend {
	__u32 id;     /* what the ring slots hold: the real's index, not 0 */
	__u32 weight; /* 0: no slots (drained) */
	__u32 addr[4];
};

/* Is m a prime (ring sizes must be)? */
int maglev_prime(unsigned long m);

/* Fill ring[0..m) from n backends: each takes slots in the order of its own
 * permutation (offset and skip from a hash of its address), in turns
 * proportional to its weight. All zero when no backend has weight. */
int maglev_build(__u32 *ring, __u32 m, const struct mg_backend *b, int n);

/* The ring array (map_fd, rings of m slots) mapped: slot i of VIP n is at
 * [n * m + i]. NULL with errno when it cannot be. */
__u16 *maglev_map(int map_fd, __u32 m);

/* Write the slots where next differs from cur into ring[0..m) (a VIP's
 * part of the mapped array), each with one store, and make cur equal next.
 * Returns the number of slots written. */
long maglev_sync(__u16 *ring, __u32 *cur, const __u32 *next, __u32 m);

#endif
