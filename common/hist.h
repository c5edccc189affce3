/* SPDX-License-Identifier: MIT */
/* hist.h: a fixed-size latency histogram with log-linear buckets (exact to
 * 64 us, then 32 a power of two: under 3.2% wide, up to 2^32 us, 71 minutes),
 * for percentiles in stats answers and for mqlb-stat to read them back. */
#ifndef MQLB_HIST_H
#define MQLB_HIST_H

#define HIST_SUB     32 /* buckets per power of two, above 64 us */
#define HIST_BUCKETS (65 + 26 * HIST_SUB)

struct hist {
	unsigned long n;
	double sum;  /* seconds */
	double last; /* hist_now() at the latest value; 0: none yet */
	unsigned long b[HIST_BUCKETS];
};

/* Count one duration, in seconds (negative counts as 0). */
void hist_add(struct hist *h, double seconds);
/* The q-quantile (0 < q <= 1) in microseconds: the upper bound of the
 * bucket that holds it, so at most 3.2% high; 0 when empty. */
unsigned long hist_quantile_us(const struct hist *h, double q);
/* The same over any HIST_BUCKETS counts that sum to n, such as the
 * difference of two readings of one histogram. */
unsigned long hist_quantile_of(const unsigned long *b, unsigned long n, double q);
/* The bucket that holds us microseconds, and a bucket's upper bound (each
 * bucket holds (upper bound of the one before, its own]). */
int hist_bucket(unsigned long us);
unsigned long hist_upper_us(int b);
/* The clock of h->last, in seconds (monotonic). */
double hist_now(void);

#endif
