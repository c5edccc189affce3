/* SPDX-License-Identifier: MIT */
/* fuzz/health.c: libFuzzer target for mqlb-health's input: vip, real and
 * del records, agent load reports and $SYS values, and probe outcomes.
 * The command's file is included, main() renamed; nothing is probed or
 * watched for real (the loop never runs; --once keeps load watches off).
 * Input:
 *   <record>                  a line on mqlb-health's stdin
 *   @up <n> / @down <n>       the probe of broker n answers / fails
 *   @load <id> <payload>      an agent's report (lb/health/<id>)
 *   @sys <n> <topic> <value>  a $SYS value from broker n */
#include "config.h"

#include "fuzz.h"

#define main health_main_unused
#include "../cmd/mqlb-health.c"
#undef main

void fuzz_health_probe(unsigned i, int ok);

static const char *const out_verbs[] = { "vip", "real", "del", NULL };
static const struct fuzz_shape shapes[] = {
	{ "vip", 2, 3, 1, 3 },
	{ "real", 4, 4, 1, 4 },
	{ "del", 2, 3, 1, 3 },
	{ NULL, 0, 0, 0, 0 },
};

static void setup(void)
{
	log_init("mqlb-health");
	log_set_level(L_DEBUG); /* format every diagnostic; -close_fd_mask=2 hides them */
	/* main()'s defaults */
	H.interval = 1;
	H.fast = 0.25;
	H.timeout = 0.5;
	H.rise = H.fall = 2;
	H.weight = 100;
	H.cpu_high = H.mem_high = 90;
	H.conns_slack = 100;
	H.smooth = 3;
	H.ramp = 10;
	H.remove_after = 30;
	H.cf.prefix = "lb";
	H.once = 1; /* no load watches: they would connect to the brokers */
	hloop = EV_DEFAULT;
	out_init(&S.out, hloop, -1, 1 << 20);
	state_set_output(&S.out);
	/* Probes are timers on a loop that never runs: nothing is sent. */
	brokers_start();
}

static void directive(char *line, size_t n)
{
	struct rec r;
	unsigned long i = 0;

	if (rec_split(line, n, &r) != 0 || rec_unescape_from(&r, 1) >= 0)
		return;
	if ((rec_is(&r, 0, "@up") || rec_is(&r, 0, "@down")) && r.nf == 2) {
		rec_ulong(&r, 1, 1000, &i);
		fuzz_health_probe((unsigned)i, rec_is(&r, 0, "@up"));
	} else if (rec_is(&r, 0, "@load") && r.nf == 3) {
		broker_load(r.f[1], r.f[2], r.len[2]);
	} else if (rec_is(&r, 0, "@sys") && r.nf == 4 && brokers) {
		struct broker *b = brokers;

		rec_ulong(&r, 1, 1000, &i);
		while (i-- && b->next)
			b = b->next;
		broker_sys(b, r.f[2], r.f[3], r.len[3]);
	}
}

static void one_line(char *line, size_t n)
{
	if (n && line[0] == '@')
		directive(line, n);
	else if (!fuzz_verb_in(line, n, out_verbs))
		handle(line, n, 1, "");
	fuzz_check_out(&S.out, shapes);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;

	if (!ready++)
		setup();
	fuzz_lines(data, size, one_line);
	for (int vn = 0; vn < H_MAXVIPS; vn++)
		if (vips[vn].used)
			vip_del(vn);
	if (brokers)
		abort(); /* every broker belongs to a VIP */
	fuzz_check_out(&S.out, shapes);
	return 0;
}
