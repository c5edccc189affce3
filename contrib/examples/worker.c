/* SPDX-License-Identifier: MIT */
/* worker.c: the smallest libmqlb worker: prints each job and reports it
 * done. Build: cc worker.c $(pkg-config --cflags --libs mqlb) -lev */
#include <ev.h>
#include <mqlb.h>
#include <stdio.h>
#include <stdlib.h>

static void job(struct mqlb_worker *w, const char *id, int qos, const char *mtopic,
		const void *payload, size_t len, const char *props, void *arg)
{
	printf("job %s %s %.*s\n", id, mtopic, (int)len, (const char *)payload);
	fflush(stdout);
	mqlb_worker_done(w, id, 1, NULL, "done", 4);
}

int main(int argc, char **argv)
{
	struct mqlb_worker_opts o = { 0 };
	struct mqlb_worker_cb cb = { .job = job };
	struct mqlb_worker *w;

	if (argc != 5) {
		fprintf(stderr, "usage: worker host port group topic\n");
		return 2;
	}
	o.host = argv[1];
	o.port = atoi(argv[2]);
	o.group = argv[3];
	o.topic = argv[4];
	o.slots = 2;
	if (!(w = mqlb_worker_new(EV_DEFAULT, &o, &cb, NULL)))
		return 2;
	mqlb_worker_start(w);
	ev_run(EV_DEFAULT, 0);
	return 0;
}
