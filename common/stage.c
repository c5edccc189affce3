/* SPDX-License-Identifier: MIT */
/* stage.c: the start and the shutdown of a stage between two pipes with a
 * broker on the side (mqlb-auction, mqlb-dispatch). */
#include "config.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "stage.h"

static void out_error(struct out *o, void *arg)
{
	struct stage *st = arg;

	if (o->err != EPIPE)
		die(EXIT_SYSERR, "cannot write records: %s", strerror(o->err));
	exit(st->out_closed ? st->out_closed() : EXIT_OK);
}

void stage_open(struct stage *st, const struct conf *cf, out_fn *on_drain, conn_line_fn *stats,
		void (*on_signal)(struct ev_loop *, ev_signal *, int),
		void (*drain_cb)(struct ev_loop *, ev_timer *, int))
{
	signal(SIGPIPE, SIG_IGN);
	st->loop = EV_DEFAULT;
	opt_collect(cf, st->loop);
	out_init(&st->out, st->loop, STDOUT_FILENO, 1 << 20);
	st->out.on_drain = on_drain;
	st->out.on_error = out_error;
	st->out.arg = st;
	srv_listen(&st->srv, st->loop, cf->listen, cf->socket_mode, stats);
	ev_signal_init(&st->sigterm, on_signal, SIGTERM);
	ev_signal_init(&st->sigint, on_signal, SIGINT);
	ev_signal_start(st->loop, &st->sigterm);
	ev_signal_start(st->loop, &st->sigint);
	ev_timer_init(&st->drain, drain_cb, 0, 0);
}

void stage_start(struct stage *st, const struct conf *cf, const struct mq_cb *cb,
		 in_line_fn *on_line, in_eof_fn *on_eof)
{
	mq_init(&st->mq, st->loop, &cf->mq, cb, NULL);
	mq_start(&st->mq);
	in_init(&st->in, st->loop, STDIN_FILENO, 256u << 20, on_line, on_eof, NULL);
}

int stage_stop(struct stage *st)
{
	if (st->stopping) {
		if (!st->draining)
			ev_cb(&st->drain)(st->loop, &st->drain, 0);
		return 0;
	}
	st->stopping = 1;
	ev_timer_set(&st->drain, st->drain_timeout, 0);
	ev_timer_start(st->loop, &st->drain);
	return 1;
}

void stage_read_rest(struct stage *st)
{
	struct pollfd p = { .fd = st->in.fd, .events = POLLIN };
	ev_tstamp until = ev_time() + 2;

	if (st->in.eof || st->input_done)
		return;
	st->in.paused = 0;
	/* in's callback hands out the lines it holds, then reads once */
	do
		ev_invoke(st->loop, &st->in.w, EV_READ);
	while (!st->in.eof && poll(&p, 1, 0) > 0 && ev_time() < until);
	in_pause(&st->in);
}

static void fin_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	struct stage *st = w->data;

	if (st->at_exit)
		st->at_exit();
	mq_disconnect(&st->mq);
	if (out_drain_blocking(&st->out) < 0 && st->out.err != EPIPE)
		exit(EXIT_SYSERR);
	exit(EXIT_OK);
}

void stage_finish(struct stage *st)
{
	if (!st->finishing) {
		ev_timer_init(&st->fin, fin_cb, 0, 0);
		st->fin.data = st;
		ev_timer_start(st->loop, &st->fin);
	}
	st->finishing = 1;
}
