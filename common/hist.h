/* SPDX-License-Identifier: MIT */
/* hist.h: a fixed-size latency histogram (buckets a factor of sqrt(2)
 * apart, 1 us to about an hour), for percentiles in stats answers. */
#ifndef MQLB_HIST_H
#define MQLB_HIST_H

#define HIST_BUCKETS 64

struct hist {
	unsigned long n;
	unsigned long b[HIST_BUCKETS];
};

/* Count one duration, in seconds (negative counts as 0). */
void hist_add(struct hist *h, double seconds);
/* The q-quantile (0 < q <= 1) in microseconds: the upper bound of the
 * bucket that holds it, so within a factor of sqrt(2); 0 when empty. */
unsigned long hist_quantile_us(const struct hist *h, double q);

#endif
