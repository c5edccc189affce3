# SPDX-License-Identifier: MIT
# tls.bash: certificates for the TLS tests (t/450, t/455), made with openssl for the test.

# tls_certs DIR: in DIR (made, mode 0755, files 0644, so that a broker that drops to its own
# user reads them), a CA (ca.crt, ca.key), a server certificate for 127.0.0.1 only, not
# "localhost" (server.crt, server.key), a client certificate (client.crt, client.key) and a
# CA nobody signed with (other.crt); openssl's chatter goes to $T/openssl.log.
tls_certs() {
	local d=$1
	mkdir -p "$d"
	chmod 0755 "$d"
	(
		cd "$d" || exit 1
		openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=mqlb-test-ca \
			-keyout ca.key -out ca.crt
		openssl req -newkey rsa:2048 -nodes -subj /CN=127.0.0.1 -keyout server.key \
			-out server.csr
		echo "subjectAltName=IP:127.0.0.1" >server.ext
		openssl x509 -req -days 2 -in server.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
			-extfile server.ext -out server.crt
		openssl req -newkey rsa:2048 -nodes -subj /CN=mqlb-client -keyout client.key \
			-out client.csr
		openssl x509 -req -days 2 -in client.csr -CA ca.crt -CAkey ca.key -CAcreateserial \
			-out client.crt
		openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=other-ca \
			-keyout other.key -out other.crt
		chmod 0644 ./*
	) >"$T/openssl.log" 2>&1
}
