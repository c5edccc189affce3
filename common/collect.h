/* SPDX-License-Identifier: MIT */
/* collect.h: libev's I/O collect interval following the load (--collect):
 * none while messages come one at a time, up to a limit while they crowd. */
#ifndef MQLB_COLLECT_H
#define MQLB_COLLECT_H

#include <ev.h>

/* How long the next turn gathers for each message or record past the first
 * that recent turns took: past about 1 / COLLECT_PER_MSG messages a second
 * the loop gathers its limit before every turn. */
#define COLLECT_PER_MSG 0.0001
/* Below this it gathers nothing: a shorter sleep costs its system call and
 * wake-up and gathers next to nothing (timer slack is 50 us). */
#define COLLECT_MIN 0.0001

/* Follow the load on loop from now on, gathering at most most seconds
 * before a turn (0: never). */
void collect_start(struct ev_loop *loop, double most);
/* n messages or records taken in this turn (mqtt.c and io.c count theirs). */
void collect_note(unsigned n);
/* What the loop gathers before its next turn now, in seconds. */
double collect_now(void);

#endif
