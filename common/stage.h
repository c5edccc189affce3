/* SPDX-License-Identifier: MIT */
/* stage.h: the start and the shutdown that mqlb-auction and mqlb-dispatch
 * share: records in and out, the broker, the stats socket, SIGTERM/SIGINT
 * with a drain deadline, and the exit once all is written. */
#ifndef MQLB_STAGE_H
#define MQLB_STAGE_H

#include <ev.h>

#include "io.h"
#include "mqtt.h"
#include "opt.h"
#include "sock.h"

struct stage {
	struct ev_loop *loop;
	struct mq mq;
	struct in in;
	struct out out;
	struct srv srv;
	ev_signal sigterm, sigint;
	ev_timer drain; /* the drain deadline: its callback is the stage's */
	ev_timer fin;   /* the exit, from the loop */
	int input_done, stopping, finishing, draining;
	double drain_timeout;
	void (*at_exit)(void);   /* optional: a last word before the exit */
	int (*out_closed)(void); /* optional: on EPIPE, the exit status */
};

/* Ignore SIGPIPE, take the default loop, write records to stdout (on_drain
 * when below the high-water mark), answer stats on cf->listen, and route
 * SIGTERM and SIGINT to on_signal; drain_cb is the drain deadline's. */
void stage_open(struct stage *st, const struct conf *cf, out_fn *on_drain, conn_line_fn *stats,
		void (*on_signal)(struct ev_loop *, ev_signal *, int),
		void (*drain_cb)(struct ev_loop *, ev_timer *, int));
/* Connect to the broker and read records from stdin. */
void stage_start(struct stage *st, const struct conf *cf, const struct mq_cb *cb,
		 in_line_fn *on_line, in_eof_fn *on_eof);
/* A stop signal: 1 the first time, the drain deadline started; asked
 * twice, the deadline is now (its callback runs, unless draining) and 0. */
int stage_stop(struct stage *st);
/* Read every record the input holds right now, without waiting for more
 * (bounded in time, in case the writer keeps writing), then pause it. */
void stage_read_rest(struct stage *st);
/* Exit from the loop, never from inside a libmosquitto callback: the
 * broker is left and the records written first. */
void stage_finish(struct stage *st);

#endif
