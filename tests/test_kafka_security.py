"""Kafka TLS / SASL settings: mapping to both clients, validation, env fallbacks, and a wrong setting against the
local broker (Tansu 0.6 serves plain TCP only here: its TLS listener does not complete a handshake, and SASL users
must be created through an already authenticated connection, which its memory storage cannot keep).  What is
tested against the real broker is that the settings reach the clients (a TLS or SASL client does not get through
to a plain listener, where a PLAINTEXT one does) and that the run then ends with a clear error, never a hang."""

from __future__ import annotations

import subprocess
import sys

import pytest

from lfm_stream import kafka_security
from lfm_stream.kafka_probe import probe_broker
from lfm_stream.kafka_security import KafkaSecurity
from tests._replay_util import ROOT, child_env, prepare_synthetic, replay_cmd

PASSWORD = "pa55-w0rd-never-printed"


@pytest.fixture
def ca() -> str:
    """A real CA bundle (certifi's, which httpx brings): librdkafka loads it when a client is built."""
    import certifi

    return certifi.where()


def test_plaintext_by_default():
    s = KafkaSecurity()
    assert s.kafka_python() == {"security_protocol": "PLAINTEXT"}
    assert s.confluent() == {"security.protocol": "PLAINTEXT"}
    assert s.describe() == "PLAINTEXT"


def test_sasl_ssl_maps_to_both_clients(ca):
    s = KafkaSecurity("sasl_ssl", "scram-sha-512", "alice", PASSWORD, ssl_cafile=ca, ssl_check_hostname=False)
    assert s.kafka_python() == {"security_protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512",
                                "sasl_plain_username": "alice", "sasl_plain_password": PASSWORD,
                                "ssl_check_hostname": False, "ssl_cafile": ca}
    assert s.confluent() == {"security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
                             "sasl.username": "alice", "sasl.password": PASSWORD,
                             "ssl.endpoint.identification.algorithm": "none", "ssl.ca.location": ca}
    assert PASSWORD not in repr(s) and PASSWORD not in s.describe()
    assert s.describe() == f"SASL_SSL, SASL SCRAM-SHA-512 as 'alice', CA {ca}, host name not checked"


def test_the_real_clients_take_the_settings(ca):
    """kafka-python checks its keyword arguments and librdkafka its property names when built (neither connects
    here: kafka-python is given the API version, librdkafka connects lazily)."""
    from confluent_kafka import Consumer, Producer
    from kafka import KafkaConsumer

    s = KafkaSecurity("SASL_SSL", "SCRAM-SHA-256", "alice", PASSWORD, ssl_cafile=ca)
    c = KafkaConsumer(bootstrap_servers="127.0.0.1:1", api_version=(2, 5, 0), **s.kafka_python())
    try:
        assert {k: c.config[k] for k in s.kafka_python()} == s.kafka_python()
    finally:
        c.close()
    Consumer({"bootstrap.servers": "127.0.0.1:1", "group.id": "g", **s.confluent()}).close()
    Producer({"bootstrap.servers": "127.0.0.1:1", **s.confluent()}).flush(0)


@pytest.mark.parametrize("kwargs, message", [
    (dict(protocol="TLS"), "Kafka security protocol must be one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL"),
    (dict(protocol="SASL_SSL", sasl_username="u"), "Kafka security protocol SASL_SSL needs KAFKA_SASL_PASSWORD"),
    (dict(protocol="SASL_PLAINTEXT", sasl_password="p"), "needs KAFKA_SASL_USERNAME"),
    (dict(protocol="SASL_PLAINTEXT", sasl_mechanism="GSSAPI", sasl_username="u", sasl_password="p"),
     "Kafka SASL mechanism must be one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512"),
    (dict(sasl_username="u", sasl_password="p"),
     "KAFKA_SASL_USERNAME, KAFKA_SASL_PASSWORD set but the Kafka security protocol is PLAINTEXT"),
    (dict(ssl_cafile="/x.pem"), "KAFKA_SSL_CAFILE set but the Kafka security protocol is PLAINTEXT: use SSL"),
    (dict(protocol="SSL", ssl_cafile="/no/such/ca.pem"), "KAFKA_SSL_CAFILE: file '/no/such/ca.pem' not found"),
])
def test_inconsistent_settings_are_refused_naming_the_setting(kwargs, message):
    with pytest.raises(ValueError) as exc:
        KafkaSecurity(**kwargs)
    assert message in str(exc.value)


def test_a_client_certificate_needs_its_key(ca):
    with pytest.raises(ValueError, match="needs both KAFKA_SSL_CERTFILE and KAFKA_SSL_KEYFILE"):
        KafkaSecurity("SSL", ssl_certfile=ca)


def test_env_vars_are_the_fallback_of_the_flags(monkeypatch, ca):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "sasl_ssl")
    monkeypatch.setenv("KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    monkeypatch.setenv("KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("KAFKA_SASL_PASSWORD", PASSWORD)
    monkeypatch.setenv("KAFKA_SSL_CAFILE", ca)
    monkeypatch.setenv("KAFKA_SSL_CHECK_HOSTNAME", "false")
    assert kafka_security.from_env() == KafkaSecurity("SASL_SSL", "SCRAM-SHA-512", "alice", PASSWORD, ssl_cafile=ca,
                                                      ssl_check_hostname=False)
    import argparse

    p = argparse.ArgumentParser()
    kafka_security.add_arguments(p)
    s = kafka_security.from_args(p.parse_args(["--kafka-sasl-username", "bob", "--kafka-ssl-check-hostname"]))
    assert (s.sasl_username, s.sasl_password, s.ssl_check_hostname) == ("bob", PASSWORD, True)
    monkeypatch.setenv("KAFKA_SSL_CHECK_HOSTNAME", "maybe")
    with pytest.raises(ValueError, match="KAFKA_SSL_CHECK_HOSTNAME must be true or false"):
        kafka_security.from_env()


def test_the_probe_tells_a_kafka_broker_from_a_wrong_protocol(bootstrap):
    from lfm_local.stack import free_port

    assert probe_broker(bootstrap, KafkaSecurity()) is None  # ApiVersions answered
    err = probe_broker(bootstrap, KafkaSecurity("SSL"), timeout=1.0)
    assert "accepts TCP connections but the TLS handshake failed" in err and "not a TLS listener" in err
    port = free_port()
    assert f"127.0.0.1:{port}: ConnectionRefusedError" in probe_broker(f"127.0.0.1:{port}", KafkaSecurity())


@pytest.mark.parametrize("flags, shown", [
    (["--kafka-security-protocol", "SSL"], "TLS handshake failed"),
    (["--kafka-security-protocol", "SASL_PLAINTEXT", "--kafka-sasl-username", "alice"], "SASL PLAIN as 'alice'"),
])
def test_replay_with_settings_the_broker_does_not_take_ends_with_a_clear_error(tmp_path, bootstrap, flags, shown):
    """The settings reach the producer's clients: against the plain listener the replay cannot get through (a
    PLAINTEXT replay of the same data does), and it says why within the retry budget: exit 3, no traceback, no
    password."""
    data = prepare_synthetic(tmp_path / "data", n=300, shard_size=300)
    env = child_env(KAFKA_SASL_PASSWORD=PASSWORD) if "SASL" in flags[1] else child_env()
    r = subprocess.run(replay_cmd("--data-dir", str(data), "--bootstrap", bootstrap, "--topic", "never",
                                  "--retry-budget", "3", *flags), cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=180)
    assert r.returncode == 3, r.stderr[-2000:]
    assert f"error: Kafka broker {bootstrap} unreachable for 3 s (retry budget" in r.stderr
    assert shown in r.stderr and "Traceback" not in r.stderr
    assert PASSWORD not in r.stdout + r.stderr


def test_flags_are_listed_with_their_env_vars():
    r = subprocess.run([sys.executable, "producer/replay.py", "--help"], cwd=ROOT, env=child_env(),
                       capture_output=True, text=True, timeout=60)
    for env in ("KAFKA_SECURITY_PROTOCOL", "KAFKA_SASL_MECHANISM", "KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD",
                "KAFKA_SSL_CAFILE", "KAFKA_SSL_CERTFILE", "KAFKA_SSL_KEYFILE", "KAFKA_SSL_CHECK_HOSTNAME"):
        assert f"env {env}" in " ".join(r.stdout.split())  # argparse wraps the help lines
