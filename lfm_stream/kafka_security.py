"""Kafka client security (TLS, SASL) for the producer and the learner: one settings object, flags, env vars.

=============================  ================================  ===============================================
env var                        flag                              meaning
=============================  ================================  ===============================================
``KAFKA_SECURITY_PROTOCOL``    ``--kafka-security-protocol``     PLAINTEXT (default), SSL, SASL_PLAINTEXT, SASL_SSL
``KAFKA_SASL_MECHANISM``       ``--kafka-sasl-mechanism``        PLAIN (default with SASL), SCRAM-SHA-256/512
``KAFKA_SASL_USERNAME``        ``--kafka-sasl-username``         SASL user
``KAFKA_SASL_PASSWORD``        ``--kafka-sasl-password``         SASL password (prefer the env var: flags show in ps)
``KAFKA_SSL_CAFILE``           ``--kafka-ssl-cafile``            CA bundle (PEM) that signed the broker's certificate
``KAFKA_SSL_CERTFILE``         ``--kafka-ssl-certfile``          client certificate (PEM), for mutual TLS
``KAFKA_SSL_KEYFILE``          ``--kafka-ssl-keyfile``           its private key (PEM)
``KAFKA_SSL_CHECK_HOSTNAME``   ``--[no-]kafka-ssl-check-hostname``  verify the broker's host name (default on)
=============================  ================================  ===============================================

:meth:`KafkaSecurity.kafka_python` gives the keyword arguments of kafka-python's clients and
:meth:`KafkaSecurity.confluent` the configuration entries of confluent-kafka (librdkafka); :meth:`describe` is
what logs show (never the password, which is also left out of ``repr``).  Inconsistent settings (a SASL user with
a PLAINTEXT protocol, SASL without a password, a CA file that does not exist) raise ``ValueError`` naming the
setting, before any client is built.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import dataclass, field

from lfm_stream.config import env_default, env_help

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")

PROTOCOL_ENV = "KAFKA_SECURITY_PROTOCOL"
MECHANISM_ENV = "KAFKA_SASL_MECHANISM"
USERNAME_ENV = "KAFKA_SASL_USERNAME"
PASSWORD_ENV = "KAFKA_SASL_PASSWORD"
CAFILE_ENV = "KAFKA_SSL_CAFILE"
CERTFILE_ENV = "KAFKA_SSL_CERTFILE"
KEYFILE_ENV = "KAFKA_SSL_KEYFILE"
CHECK_HOSTNAME_ENV = "KAFKA_SSL_CHECK_HOSTNAME"


@dataclass(frozen=True)
class KafkaSecurity:
    """How the Kafka clients connect (the defaults: plain TCP, no authentication).

    Attributes:
        protocol: ``PLAINTEXT``, ``SSL``, ``SASL_PLAINTEXT`` or ``SASL_SSL``.
        sasl_mechanism: ``PLAIN``, ``SCRAM-SHA-256`` or ``SCRAM-SHA-512`` (SASL protocols; default PLAIN).
        sasl_username, sasl_password: the SASL credentials (both required with SASL).
        ssl_cafile: CA bundle (PEM) to verify the broker with (None: the system's).
        ssl_certfile, ssl_keyfile: client certificate and key (PEM) for mutual TLS.
        ssl_check_hostname: verify that the broker's certificate names the host connected to.
    """

    protocol: str = "PLAINTEXT"
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = field(default=None, repr=False)
    ssl_cafile: str | None = None
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    ssl_check_hostname: bool = True

    def __post_init__(self) -> None:
        protocol = (self.protocol or "PLAINTEXT").upper()
        if protocol not in PROTOCOLS:
            raise ValueError(f"Kafka security protocol must be one of {', '.join(PROTOCOLS)} "
                             f"({PROTOCOL_ENV} / --kafka-security-protocol; got {self.protocol!r})")
        object.__setattr__(self, "protocol", protocol)
        if self.sasl:
            mechanism = (self.sasl_mechanism or "PLAIN").upper()
            if mechanism not in MECHANISMS:
                raise ValueError(f"Kafka SASL mechanism must be one of {', '.join(MECHANISMS)} "
                                 f"({MECHANISM_ENV} / --kafka-sasl-mechanism; got {self.sasl_mechanism!r})")
            object.__setattr__(self, "sasl_mechanism", mechanism)
            for value, env in ((self.sasl_username, USERNAME_ENV), (self.sasl_password, PASSWORD_ENV)):
                if not value:
                    raise ValueError(f"Kafka security protocol {protocol} needs {env} (or its flag)")
        else:
            given = [env for value, env in ((self.sasl_mechanism, MECHANISM_ENV), (self.sasl_username, USERNAME_ENV),
                                            (self.sasl_password, PASSWORD_ENV)) if value]
            if given:
                raise ValueError(f"{', '.join(given)} set but the Kafka security protocol is {protocol}: "
                                 f"use SASL_PLAINTEXT or SASL_SSL ({PROTOCOL_ENV})")
        files = ((self.ssl_cafile, CAFILE_ENV), (self.ssl_certfile, CERTFILE_ENV), (self.ssl_keyfile, KEYFILE_ENV))
        if not self.ssl:
            given = [env for value, env in files if value]
            if given:
                raise ValueError(f"{', '.join(given)} set but the Kafka security protocol is {protocol}: "
                                 f"use SSL or SASL_SSL ({PROTOCOL_ENV})")
        for value, env in files:
            if value and not os.path.isfile(value):
                raise ValueError(f"{env}: file {value!r} not found")
        if bool(self.ssl_certfile) != bool(self.ssl_keyfile):
            raise ValueError(f"a client certificate needs both {CERTFILE_ENV} and {KEYFILE_ENV}")

    @property
    def sasl(self) -> bool:
        """Whether the clients authenticate with SASL."""
        return self.protocol.startswith("SASL_")

    @property
    def ssl(self) -> bool:
        """Whether the connections use TLS."""
        return self.protocol.endswith("SSL")

    def kafka_python(self) -> dict:
        """Keyword arguments for kafka-python's ``KafkaConsumer``, ``KafkaProducer`` and ``KafkaAdminClient``."""
        out: dict = {"security_protocol": self.protocol}
        if self.sasl:
            out.update(sasl_mechanism=self.sasl_mechanism, sasl_plain_username=self.sasl_username,
                       sasl_plain_password=self.sasl_password)
        if self.ssl:
            out["ssl_check_hostname"] = self.ssl_check_hostname
            for key, value in (("ssl_cafile", self.ssl_cafile), ("ssl_certfile", self.ssl_certfile),
                               ("ssl_keyfile", self.ssl_keyfile)):
                if value:
                    out[key] = value
        return out

    def confluent(self) -> dict:
        """Configuration entries for confluent-kafka's ``Consumer`` / ``Producer`` (librdkafka names)."""
        out: dict = {"security.protocol": self.protocol}
        if self.sasl:
            out.update({"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                        "sasl.password": self.sasl_password})
        if self.ssl:
            out["ssl.endpoint.identification.algorithm"] = "https" if self.ssl_check_hostname else "none"
            for key, value in (("ssl.ca.location", self.ssl_cafile), ("ssl.certificate.location", self.ssl_certfile),
                               ("ssl.key.location", self.ssl_keyfile)):
                if value:
                    out[key] = value
        return out

    def describe(self) -> str:
        """The settings as logs show them (the password never appears)."""
        parts = [self.protocol]
        if self.sasl:
            parts.append(f"SASL {self.sasl_mechanism} as {self.sasl_username!r}")
        if self.ssl:
            parts.append(f"CA {self.ssl_cafile or '(system)'}" + ("" if self.ssl_check_hostname else ", host name not checked"))
            if self.ssl_certfile:
                parts.append(f"client certificate {self.ssl_certfile}")
        return ", ".join(parts)


def _flag_bool(text: str | None, default: bool) -> bool:
    if text is None:
        return default
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"{CHECK_HOSTNAME_ENV} must be true or false (got {text!r})")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``--kafka-*`` security flags (each falls back to its env var), in a group of their own."""
    g = parser.add_argument_group("Kafka security (TLS / SASL)")
    g.add_argument("--kafka-security-protocol", type=str.upper, choices=PROTOCOLS,
                   default=(env_default(PROTOCOL_ENV) or "PLAINTEXT").upper(),
                   help=env_help("how the Kafka clients connect", PROTOCOL_ENV, "PLAINTEXT"))
    g.add_argument("--kafka-sasl-mechanism", type=str.upper, choices=MECHANISMS, default=env_default(MECHANISM_ENV),
                   help=env_help("SASL mechanism (with SASL_*)", MECHANISM_ENV, "PLAIN"))
    g.add_argument("--kafka-sasl-username", default=env_default(USERNAME_ENV), help=env_help("SASL user", USERNAME_ENV))
    g.add_argument("--kafka-sasl-password", default=env_default(PASSWORD_ENV),
                   help=env_help("SASL password (prefer the env var: command lines are visible to other users)",
                                 PASSWORD_ENV))
    g.add_argument("--kafka-ssl-cafile", default=env_default(CAFILE_ENV),
                   help=env_help("CA bundle (PEM) that signed the broker's certificate", CAFILE_ENV, "the system's"))
    g.add_argument("--kafka-ssl-certfile", default=env_default(CERTFILE_ENV),
                   help=env_help("client certificate (PEM) for mutual TLS", CERTFILE_ENV))
    g.add_argument("--kafka-ssl-keyfile", default=env_default(KEYFILE_ENV),
                   help=env_help("private key (PEM) of the client certificate", KEYFILE_ENV))
    g.add_argument("--kafka-ssl-check-hostname", action=argparse.BooleanOptionalAction, default=None,
                   help=env_help("verify the broker's host name against its certificate", CHECK_HOSTNAME_ENV, "on"))


def from_args(args: argparse.Namespace) -> KafkaSecurity:
    """The settings from parsed :func:`add_arguments` flags (``ValueError`` names a bad or inconsistent one)."""
    check = args.kafka_ssl_check_hostname
    if check is None:
        check = _flag_bool(env_default(CHECK_HOSTNAME_ENV), True)
    return KafkaSecurity(protocol=args.kafka_security_protocol, sasl_mechanism=args.kafka_sasl_mechanism,
                         sasl_username=args.kafka_sasl_username, sasl_password=args.kafka_sasl_password,
                         ssl_cafile=args.kafka_ssl_cafile, ssl_certfile=args.kafka_ssl_certfile,
                         ssl_keyfile=args.kafka_ssl_keyfile, ssl_check_hostname=check)


def from_env() -> KafkaSecurity:
    """The settings from the ``KAFKA_*`` environment variables alone."""
    parser = argparse.ArgumentParser(add_help=False)
    add_arguments(parser)
    return from_args(parser.parse_args([]))
