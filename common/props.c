/* SPDX-License-Identifier: MIT */
/* props.c: carry MQTT 5 message properties through line records. */
#include "config.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <mqtt_protocol.h>

#include "props.h"
#include "record.h"

struct pbuf {
	char *s;
	size_t len, cap;
};

static void put(struct pbuf *b, const void *p, size_t n, int escape)
{
	size_t need = b->len + (escape ? rec_escaped_len(p, n) : n) + 2;

	if (need > b->cap) {
		b->cap = need * 2;
		b->s = realloc(b->s, b->cap);
		if (!b->s)
			abort();
	}
	if (escape)
		b->len += rec_escape(b->s + b->len, p, n, ",=");
	else {
		memcpy(b->s + b->len, p, n);
		b->len += n;
	}
}

static void pair(struct pbuf *b, const char *name, const char *uname, size_t ulen,
		 const void *v, size_t vlen)
{
	if (b->len)
		put(b, ",", 1, 0);
	put(b, name, strlen(name), 0);
	if (uname)
		put(b, uname, ulen, 1);
	put(b, "=", 1, 0);
	put(b, v, vlen, 1);
}

int props_write(struct out *o, const mosquitto_property *p)
{
	struct pbuf b = { 0 };

	for (; p; p = mosquitto_property_next(p)) {
		int id = mosquitto_property_identifier(p);
		char *name = NULL, *val = NULL;
		void *bin = NULL;
		uint16_t blen;
		uint32_t u32;
		char num[16];

		switch (id) {
		case MQTT_PROP_RESPONSE_TOPIC:
		case MQTT_PROP_CONTENT_TYPE:
			if (mosquitto_property_read_string(p, id, &val, false)) {
				pair(&b, id == MQTT_PROP_RESPONSE_TOPIC ? "rt" : "ct", NULL, 0, val, strlen(val));
				free(val);
			}
			break;
		case MQTT_PROP_CORRELATION_DATA:
			if (mosquitto_property_read_binary(p, id, &bin, &blen, false)) {
				pair(&b, "cd", NULL, 0, bin, blen);
				free(bin);
			}
			break;
		case MQTT_PROP_MESSAGE_EXPIRY_INTERVAL:
			if (mosquitto_property_read_int32(p, id, &u32, false)) {
				int n = snprintf(num, sizeof num, "%u", u32);

				pair(&b, "exp", NULL, 0, num, (size_t)n);
			}
			break;
		case MQTT_PROP_USER_PROPERTY:
			if (mosquitto_property_read_string_pair(p, id, &name, &val, false)) {
				/* mqlb-* are ours to set: a publisher's would be a spoof */
				if (strncmp(name, "mqlb-", 5))
					pair(&b, "u.", name, strlen(name), val, strlen(val));
				free(name);
				free(val);
			}
			break;
		default:
			break;
		}
	}
	if (!b.len)
		return 0;
	out_raw(o, b.s, b.len);
	free(b.s);
	return 1;
}

int props_parse(char *field, mosquitto_property **out, const char **why)
{
	char *cur = field, *name, *val;
	size_t nlen, vlen;
	int rc;

	*out = NULL;
	if (strcmp(field, "-") == 0)
		return 0;
	while ((rc = props_next(&cur, &name, &nlen, &val, &vlen)) == 1) {
		int bad = 0;

		if (!strcmp(name, "rt"))
			bad = mosquitto_property_add_string(out, MQTT_PROP_RESPONSE_TOPIC, val);
		else if (!strcmp(name, "ct"))
			bad = mosquitto_property_add_string(out, MQTT_PROP_CONTENT_TYPE, val);
		else if (!strcmp(name, "cd"))
			bad = mosquitto_property_add_binary(out, MQTT_PROP_CORRELATION_DATA, val, (uint16_t)vlen);
		else if (!strcmp(name, "exp")) {
			char *end;
			unsigned long e = strtoul(val, &end, 10);

			if (!*val || *end || e > 0xffffffffUL)
				bad = 1;
			else
				bad = mosquitto_property_add_int32(out, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL, (uint32_t)e);
		} else if (!strncmp(name, "u.mqlb-", 7))
			continue; /* ours to set: a publisher's would be a spoof */
		else if (!strncmp(name, "u.", 2) && name[2])
			bad = mosquitto_property_add_string_pair(out, MQTT_PROP_USER_PROPERTY, name + 2, val);
		else {
			*why = "unknown property";
			goto fail;
		}
		/* NUL inside a string, or over-long binary, is refused by MQTT. */
		if (bad || (strlen(val) != vlen && strcmp(name, "cd") != 0) || vlen > 65535) {
			*why = "bad property value";
			goto fail;
		}
	}
	if (rc < 0) {
		*why = "malformed properties";
		goto fail;
	}
	return 0;
fail:
	mosquitto_property_free_all(out);
	return -1;
}
