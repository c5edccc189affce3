/* SPDX-License-Identifier: MIT */
/* hist.c: latency histogram with buckets a factor of sqrt(2) apart. */
#include "config.h"

#include <math.h>

#include "hist.h"

void hist_add(struct hist *h, double seconds)
{
	double us = seconds * 1e6;
	int b = 0;

	/* Bucket b holds (2^((b-1)/2), 2^(b/2)] us; bucket 0 everything up to 1 us. */
	if (us > 1)
		b = (int)ceil(2 * log2(us));
	if (b >= HIST_BUCKETS)
		b = HIST_BUCKETS - 1;
	h->b[b]++;
	h->n++;
}

unsigned long hist_quantile_us(const struct hist *h, double q)
{
	unsigned long want, seen = 0;

	if (!h->n)
		return 0;
	want = (unsigned long)ceil(q * (double)h->n);
	if (want < 1)
		want = 1;
	for (int b = 0; b < HIST_BUCKETS; b++) {
		seen += h->b[b];
		if (seen >= want)
			return (unsigned long)ceil(exp2(b / 2.0));
	}
	return (unsigned long)ceil(exp2((HIST_BUCKETS - 1) / 2.0));
}
