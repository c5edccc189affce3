/* SPDX-License-Identifier: MIT */
/* fuzz/health-broker.c: cmd/health/broker.c for the mqlb-health target,
 * with names resolved as numeric addresses only (a fuzzer must not send
 * DNS queries) and a hook to end a probe the way probe.c would. */
#include "config.h"

#include <netdb.h>

static int fuzz_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
			    struct addrinfo **res)
{
	struct addrinfo h = *hints;

	h.ai_flags |= AI_NUMERICHOST;
	return getaddrinfo(node, service, &h, res);
}

#define getaddrinfo fuzz_getaddrinfo
#include "../cmd/health/broker.c"
#undef getaddrinfo

void fuzz_health_probe(unsigned i, int ok);

/* Probe i of the broker list (wrapping) answers, or fails. */
void fuzz_health_probe(unsigned i, int ok)
{
	struct broker *b = brokers;
	unsigned n = 0;

	for (struct broker *c = brokers; c; c = c->next)
		n++;
	if (!n)
		return;
	for (i %= n; i--;)
		b = b->next;
	probe_done(&b->pr, ok ? NULL : "fuzz: no answer", b);
}
