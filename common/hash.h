/* SPDX-License-Identifier: MIT */
/* hash.h: FNV-1a, for names that must hash alike in every run (topics,
 * client ids, groups, uuids) and for in-memory tables keyed by them. Not
 * for input an adversary picks to collide: nothing here is seeded. */
#ifndef MQLB_HASH_H
#define MQLB_HASH_H

#include <stddef.h>
#include <stdint.h>

#define FNV64_BASIS 14695981039346656037ULL
#define FNV32_BASIS 2166136261u

/* h, continued over the n bytes at p */
static inline uint64_t fnv64(uint64_t h, const void *p, size_t n)
{
	const unsigned char *c = p;

	for (size_t i = 0; i < n; i++)
		h = (h ^ c[i]) * 1099511628211ULL;
	return h;
}

static inline uint64_t fnv64_str(uint64_t h, const char *s)
{
	for (const unsigned char *c = (const unsigned char *)s; *c; c++)
		h = (h ^ *c) * 1099511628211ULL;
	return h;
}

static inline uint32_t fnv32_str(uint32_t h, const char *s)
{
	for (const unsigned char *c = (const unsigned char *)s; *c; c++)
		h = (h ^ *c) * 16777619u;
	return h;
}

#endif
