/* SPDX-License-Identifier: MIT */
/* fuzz/props.c: libFuzzer target for the <props> field (common/props.c):
 * what props_parse() takes, props_write() writes back so that parsing and
 * writing it again gives the same text. */
#include "config.h"

#include <mosquitto.h>

#include "fuzz.h"
#include "props.h"

static char *written(const mosquitto_property *p, size_t *n)
{
	struct out o = { 0 };

	if (!props_write(&o, p)) {
		free(o.buf);
		*n = 0;
		return NULL;
	}
	*n = o.len;
	o.buf = realloc(o.buf, o.len + 1);
	if (!o.buf)
		abort();
	o.buf[o.len] = '\0';
	return o.buf;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *field = malloc(size + 1), *w1, *w2;
	mosquitto_property *p = NULL, *p2 = NULL;
	const char *why = NULL;
	size_t n1, n2;

	if (!field)
		abort();
	memcpy(field, data, size);
	field[size] = '\0';
	if (props_parse(field, &p, &why) < 0) {
		if (p || !why)
			abort();
		free(field);
		return 0;
	}
	free(field);
	w1 = written(p, &n1);
	if (w1) {
		/* One record field: nothing in it needs escaping again. */
		for (size_t i = 0; i < n1; i++)
			if (rec_must_escape((unsigned char)w1[i]) && w1[i] != '%')
				abort();
		if (props_parse(w1, &p2, &why) < 0)
			abort();
		free(w1);
		w1 = written(p, &n1);
		w2 = written(p2, &n2);
		if (!w2 || n1 != n2 || memcmp(w1, w2, n1))
			abort();
		free(w2);
	}
	free(w1);
	mosquitto_property_free_all(&p);
	mosquitto_property_free_all(&p2);
	return 0;
}
