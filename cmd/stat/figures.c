/* SPDX-License-Identifier: MIT */
/* figures.c: reading figures out of a stats answer: by name, as a rate, and
 * the buckets of a histogram (PREFIX_us_bUPPER, PREFIX_us_sum). */
#include "config.h"

#include <string.h>

#include "stat.h"

const struct ent *find_in(const struct ent *e, size_t n, const char *name)
{
	for (size_t j = 0; j < n; j++)
		if (!strcmp(e[j].name, name))
			return &e[j];
	return NULL;
}

size_t hist_stat(const char *name, unsigned long *upper)
{
	const char *b = strrchr(name, '_');
	unsigned long u = 0;

	if (!b || b - name < 3 || b[1] != 'b' || !b[2] || strncmp(b - 3, "_us", 3))
		return 0;
	for (const char *d = b + 2; *d; d++) {
		if (*d < '0' || *d > '9' || u > 1UL << 40)
			return 0;
		u = u * 10 + (unsigned long)(*d - '0');
	}
	*upper = u;
	return (size_t)(b - name);
}

size_t hist_sum_stat(const char *name)
{
	size_t l = strlen(name);

	return l > 7 && !strcmp(name + l - 7, "_us_sum") ? l - 4 : 0;
}

double rate_of(const struct answer *a, const char *name)
{
	const struct ent *e = find_in(a->e, a->n, name), *p = find_in(a->prev, a->nprev, name);

	if (!e || !p || e->v < p->v || a->at <= a->prev_at || a->err[0])
		return -1;
	return (double)(e->v - p->v) / (a->at - a->prev_at);
}
