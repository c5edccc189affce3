/* SPDX-License-Identifier: MIT */
/* props.h: MQTT 5 properties <-> the <props> field of msg/assign/work
 * records (rt, cd, ct, exp, u.NAME). */
#ifndef MQLB_PROPS_H
#define MQLB_PROPS_H

#include <mosquitto.h>
#include <stddef.h>

#include "io.h"

/* Write the props field for the properties worth carrying; nothing when
 * there are none. Returns 1 if a field was written. */
int props_write(struct out *o, const mosquitto_property *p);

/* Parse an escaped props field into a property list for a PUBLISH; names
 * we do not know are refused. Returns 0, or -1 with *why set. Destroys the
 * field's text. */
int props_parse(char *field, mosquitto_property **out, const char **why);

#endif
