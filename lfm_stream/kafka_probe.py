"""Is a Kafka broker answering there, with these TLS settings?  One ApiVersions request, with timeouts.

Kafka clients do not always bound how long reaching a broker takes (kafka-python 3.0 waits without end for a
TLS handshake with a listener that does not speak TLS), so the producer and the learner ask this first and
retry with backoff within their budget, then report what failed: refused, timed out, the TLS handshake failed
(wrong ``KAFKA_SECURITY_PROTOCOL`` or CA), or not a Kafka answer.  ApiVersions is the first request of every
client and is allowed before SASL authentication, so the probe needs no credentials.
"""

from __future__ import annotations

import socket
import ssl
import struct

from lfm_stream.kafka_security import KafkaSecurity

PROBE_TIMEOUT_S = 2.0


def _hosts(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port`` pairs of a bootstrap list (``[::1]:9092`` and ``SASL_SSL://host:port`` forms too)."""
    out = []
    for item in bootstrap.split(","):
        item = item.strip().split("://")[-1]
        if not item:
            continue
        host, _, port = item.rpartition(":")
        out.append((host.strip("[]") or "localhost", int(port or 9092)))
    return out


def _api_versions_request(correlation_id: int) -> bytes:
    """A Kafka ApiVersions v0 request (api key 18): the first request of every client, allowed before SASL."""
    client = b"lfm-probe"
    body = struct.pack(">hhih", 18, 0, correlation_id, len(client)) + client
    return struct.pack(">i", len(body)) + body


def _recv(sock: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        part = sock.recv(n - len(data))
        if not part:
            raise ConnectionError("the broker closed the connection")
        data += part
    return data


def probe_broker(bootstrap: str, security: KafkaSecurity, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Ask each bootstrap server for its API versions; None when one answers, else why none did."""
    errors = []
    for host, port in _hosts(bootstrap):
        try:
            with socket.create_connection((host, port), timeout=timeout) as raw:
                sock = raw
                if security.ssl:
                    ctx = ssl.create_default_context(cafile=security.ssl_cafile)
                    ctx.check_hostname = security.ssl_check_hostname  # the certificate is verified either way
                    if security.ssl_certfile:
                        ctx.load_cert_chain(security.ssl_certfile, security.ssl_keyfile)
                    try:
                        sock = ctx.wrap_socket(raw, server_hostname=host)
                    except (OSError, ssl.SSLError) as exc:
                        errors.append(f"{host}:{port} accepts TCP connections but the TLS handshake failed "
                                      f"({type(exc).__name__}: {exc}): not a TLS listener, or a CA that does not match")
                        continue
                sock.sendall(_api_versions_request(1))
                size, correlation = struct.unpack(">ii", _recv(sock, 8))
                if correlation != 1 or size < 4:
                    errors.append(f"{host}:{port} answered something that is not a Kafka response")
                    continue
                return None
        except (OSError, ValueError) as exc:
            errors.append(f"{host}:{port}: {type(exc).__name__}: {exc}")
    return "; ".join(errors) or f"no broker in {bootstrap!r}"
