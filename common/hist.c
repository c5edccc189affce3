/* SPDX-License-Identifier: MIT */
/* hist.c: latency histogram with log-linear buckets, HdrHistogram-like:
 * 32 buckets to each power of two, so a percentile is within 3.2%. */
#include "config.h"

#include <math.h>
#include <time.h>

#include "hist.h"

#define HIST_MAX_US (1UL << 32)

int hist_bucket(unsigned long us)
{
	unsigned long x;
	int m, s;

	if (us <= 64)
		return (int)us;
	if (us > HIST_MAX_US)
		us = HIST_MAX_US;
	/* (top << s, (top + 1) << s] with top in [32, 64): 32 a power of two */
	x = us - 1;
	for (m = 6; m < 31 && x >> (m + 1); m++)
		;
	s = m - 5;
	return 65 + (m - 6) * HIST_SUB + (int)((x >> s) - HIST_SUB);
}

unsigned long hist_upper_us(int b)
{
	int k;

	if (b <= 64)
		return b < 0 ? 0 : (unsigned long)b;
	if (b >= HIST_BUCKETS)
		b = HIST_BUCKETS - 1;
	k = b - 65;
	return (unsigned long)(HIST_SUB + k % HIST_SUB + 1) << (k / HIST_SUB + 1);
}

double hist_now(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

void hist_add(struct hist *h, double seconds)
{
	double us = seconds * 1e6;

	if (!(us > 0))
		us = 0;
	if (us > (double)HIST_MAX_US)
		us = (double)HIST_MAX_US;
	h->b[hist_bucket((unsigned long)ceil(us))]++;
	h->n++;
	h->sum += us / 1e6;
	h->last = hist_now();
}

unsigned long hist_quantile_of(const unsigned long *b, unsigned long n, double q)
{
	unsigned long want, seen = 0;

	if (!n)
		return 0;
	want = (unsigned long)ceil(q * (double)n);
	if (want < 1)
		want = 1;
	for (int i = 0; i < HIST_BUCKETS; i++) {
		seen += b[i];
		if (seen >= want)
			return hist_upper_us(i);
	}
	return hist_upper_us(HIST_BUCKETS - 1);
}

unsigned long hist_quantile_us(const struct hist *h, double q)
{
	return hist_quantile_of(h->b, h->n, q);
}
