/* SPDX-License-Identifier: MIT */
/* flow.c: input, flow control and shutdown: pausing and resuming the input,
 * the drain deadline, the exit. */
#include "config.h"

#include <stdlib.h>
#include <string.h>

#include "auction.h"
#include "log.h"

/* Stopping or not, input is read to its end: a record left in the pipe
 * at exit would be lost without a word. */
void maybe_resume(void)
{
	if (S.st.input_done && S.npending == 0) {
		stage_finish(&S.st);
		return;
	}
	if (S.st.in.paused && !S.st.draining && S.npending < S.max_pending && !out_full(&S.st.out))
		in_resume(&S.st.in);
}

void on_eof(struct in *in, int err, void *arg)
{
	if (err)
		warnl("reading records: %s", strerror(err));
	S.st.input_done = 1;
	maybe_resume();
}

void on_drain(struct out *o, void *arg)
{
	mq_pause_read(&S.st.mq, 0);
	maybe_resume();
}

/* Downstream is gone (EPIPE): awards can no longer reach anyone. Name each
 * message on the way out, so none goes without a word. */
int on_out_closed(void)
{
	if (S.npending)
		warnl("output closed with %ld messages pending; stopping", S.npending);
	for (size_t i = 0; i <= S.hmask; i++)
		for (struct msg *m = S.hash[i]; m; m = m->hnext)
			errl("lost at exit, output closed: %s %s (%s)", m->uuid, m->mtopic,
			     msg_waiting(m) ? "not awarded" : "awarded, no done yet");
	return S.npending ? EXIT_SYSERR : EXIT_OK;
}

void drain_cb(struct ev_loop *loop, ev_timer *w, int revents)
{
	unsigned long awarded = 0;

	/* Out of time: what still waits for a bid, and every msg still in the
	 * pipe, is handed back as a drop record, never lost without a word. */
	S.st.draining = 1;
	for (size_t i = 0; i <= S.hmask; i++)
		for (struct msg *m = S.hash[i], *next; m; m = next) {
			next = m->hnext;
			if (msg_waiting(m)) {
				S.n_drop_shutdown++;
				drop_waiting(m, "shutdown");
			}
		}
	/* in draining mode each msg read now becomes a drop record */
	stage_read_rest(&S.st);
	for (struct group *g = S.groups; g; g = g->next)
		for (struct job *j = g->awarded.head; j; j = j->next)
			awarded++;
	if (awarded)
		warnl("exiting with %lu award%s not acknowledged: left with the workers", awarded,
		      awarded == 1 ? "" : "s");
	stage_finish(&S.st);
}

void signal_cb(struct ev_loop *loop, ev_signal *w, int revents)
{
	/* The first stops after the pending messages and the rest of the
	 * input; asked twice, what still waits becomes drop records now. */
	if (!S.st.stopping)
		infol("signal %d: stopping after %ld pending messages and the rest of the input",
		      w->signum, S.npending);
	if (stage_stop(&S.st))
		maybe_resume();
}
