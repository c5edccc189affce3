/* SPDX-License-Identifier: MIT */
/* fuzz/xdp.c: libFuzzer target for mqlb-xdp's input: vip, real and del
 * records, down to the Maglev rings. The command's file, maglev.c and
 * percpu.c are included, main() renamed; the BPF maps are fakes that check
 * every key against the map's size, the mapped ones are plain memory.
 * --encap ipip, so no neighbour lookups (an l2 real's MAC is resolved by
 * sending it a datagram), and a small ring.
 * Input: lines on mqlb-xdp's stdin. */
#include "config.h"

#include <bpf/bpf.h>

#include "fuzz.h"
#include "mqlb_kern_user.h"

#define FUZZ_RING 61
enum { FD_VIPS = 1001, FD_REALS, FD_RING, FD_MEMBERS, FD_VIPGEN };

static void fuzz_map_key(int fd, const void *key)
{
	__u32 k;

	if (fd == FD_VIPS)
		return; /* a hash map keyed by struct mqlb_vip_key */
	memcpy(&k, key, sizeof k);
	if ((fd == FD_REALS && k >= MQLB_MAX_REALS) ||
	    (fd == FD_MEMBERS && k >= MQLB_MAX_VIPS * MQLB_MAX_REALS) ||
	    (fd == FD_VIPGEN && k >= MQLB_MAX_VIPS) ||
	    (fd < FD_REALS || fd > FD_VIPGEN))
		abort();
}

static int fuzz_map_update(int fd, const void *key, const void *value, __u64 flags)
{
	fuzz_map_key(fd, key);
	return 0;
}

static int fuzz_map_delete(int fd, const void *key)
{
	if (fd != FD_VIPS)
		abort(); /* only the hash map has entries to delete */
	return 0;
}

#define bpf_map_update_elem fuzz_map_update
#define bpf_map_delete_elem fuzz_map_delete
#include "../cmd/xdp/maglev.c"
#include "../cmd/xdp/percpu.c"
#define main xdp_main_unused
#include "../cmd/mqlb-xdp.c"
#undef main

static const char *const out_verbs[] = { NULL };
static const struct fuzz_shape shapes[] = { { NULL, 0, 0, 0, 0 } };

static void setup(void)
{
	log_init("mqlb-xdp");
	log_set_level(L_DEBUG); /* format every diagnostic; -close_fd_mask=2 hides them */
	S.ring_size = FUZZ_RING;
	S.encap = MQLB_ENCAP_IPIP;
	S.loop = EV_DEFAULT;
	out_init(&S.out, S.loop, -1, 1 << 20);
	ev_timer_init(&S.resolve_timer, resolve_cb, 0.2, 0.5);
	/* load_lb(), less the kernel */
	S.fd_vips = FD_VIPS;
	S.fd_reals = FD_REALS;
	S.fd_ring = FD_RING;
	S.fd_members = FD_MEMBERS;
	S.fd_vipgen = FD_VIPGEN;
	/* the program's per-CPU state (one CPU's) and the ring: plain memory */
	S.pc.n = 1;
	if (!(S.pc.c = aligned_alloc(_Alignof(struct mqlb_cpu), sizeof *S.pc.c)))
		abort();
	memset(S.pc.c, 0, sizeof *S.pc.c);
	if (!(S.ring = calloc(MQLB_MAX_VIPS * FUZZ_RING, sizeof *S.ring)))
		abort();
	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++)
		if (!(S.vips[vn].ring = calloc(S.ring_size, sizeof(__u32))))
			abort();
	if (!(S.scratch = calloc(S.ring_size, sizeof(__u32))))
		abort();
	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++)
		for (int ri = 0; ri < MQLB_MAX_REALS; ri++)
			S.vips[vn].weight[ri] = -1;
}

static void one_line(char *line, size_t n) { handle_line(line, n, 1, ""); }

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;

	if (!ready++)
		setup();
	fuzz_lines(data, size, one_line);
	fuzz_check_out(&S.out, shapes);
	/* Delete every VIP: rings empty, no real referenced. */
	for (int vn = 0; vn < MQLB_MAX_VIPS; vn++) {
		if (S.vips[vn].used)
			vip_del(vn);
		for (int i = 0; i < FUZZ_RING; i++)
			if (S.vips[vn].ring[i])
				abort();
	}
	for (int ri = 0; ri < MQLB_MAX_REALS; ri++)
		if (S.reals[ri].refs)
			abort();
	(void)out_verbs;
	return 0;
}
