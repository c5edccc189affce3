/* SPDX-License-Identifier: MIT */
/* fuzz.h: helpers shared by the libFuzzer targets: feed an input to a line
 * handler the way common/io.c does, and check the records a stage wrote. */
#ifndef MQLB_FUZZ_H
#define MQLB_FUZZ_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io.h"
#include "log.h"
#include "record.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Hand each line of data to fn as in_lines() does: the line in a buffer of
 * its own (so ASan sees any read past it), with one writable byte at
 * line[n] where the newline was. */
static inline void fuzz_lines(const uint8_t *data, size_t size, void (*fn)(char *line, size_t n))
{
	const uint8_t *p = data, *end = data + size;

	while (p < end) {
		const uint8_t *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = nl ? (size_t)(nl - p) : (size_t)(end - p);
		char *line = malloc(n + 1);

		if (!line)
			abort();
		memcpy(line, p, n);
		line[n] = '\n';
		fn(line, n);
		free(line);
		p += n + 1;
	}
}

/* Does the line's verb equal one of the NULL-terminated verbs? */
static inline int fuzz_verb_in(const char *line, size_t n, const char *const *verbs)
{
	while (n && *line == ' ')
		line++, n--;
	for (; *verbs; verbs++) {
		size_t k = strlen(*verbs);

		if (n >= k && !memcmp(line, *verbs, k) && (n == k || line[k] == ' ' || line[k] == '\r'))
			return 1;
	}
	return 0;
}

/* Every record in o with one of the shapes' verbs (records this stage made:
 * the harness keeps such verbs out of its input) must split, have between
 * min and max fields, and have fields first..check-1 decode (fields the
 * stage escaped itself). Then o is emptied as if written. Aborts (a crash
 * for libFuzzer) when a record is bad. */
struct fuzz_shape {
	const char *verb;
	int min, max, first, check;
};

static inline void fuzz_check_out(struct out *o, const struct fuzz_shape *shapes)
{
	char *p, *end;

	if (!o->buf)
		return;
	p = o->buf + o->off;
	end = o->buf + o->len;
	if (o->nfields)
		abort(); /* a record left half-written */
	while (p < end) {
		char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n;
		struct rec r;

		if (!nl)
			abort(); /* out_end() always ends a record with a newline */
		n = (size_t)(nl - p);
		if (rec_split(p, n, &r) == 0)
			for (const struct fuzz_shape *s = shapes; s->verb; s++) {
				if (!rec_is(&r, 0, s->verb))
					continue;
				if (r.nf < s->min || r.nf > s->max)
					abort();
				for (int i = s->first; i < s->check && i < r.nf; i++)
					if (rec_unescape(&r, i) < 0)
						abort();
			}
		p = nl + 1;
	}
	o->off = o->len = 0;
}

#endif
