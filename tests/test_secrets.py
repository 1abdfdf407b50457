"""Secrets and exposure: no password in any output, the recall API behind an optional bearer token, and a wrong
Redis password reported as "authentication failed" — against a real redis-server started with ``--requirepass``
and the real service (``python -m recall_api``) over HTTP."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lfm_local.stack import RedisServer, free_port
from ps_redis import ParameterServer, PSConnectionError
from ps_redis.connection import PSAuthError, mask_url

ROOT = Path(__file__).resolve().parents[1]
PASSWORD = "s3cret-redis-pw"
TOKEN = "t0ken-for-the-recall-api"


class PasswordRedis(RedisServer):
    """redis-server with ``--requirepass`` (its readiness check authenticates through :attr:`url`)."""

    def __init__(self, run_dir: Path):
        super().__init__(run_dir, extra=["--requirepass", PASSWORD])

    @property
    def url(self) -> str:  # RedisServer.ready polls this URL: with the password
        return f"redis://:{PASSWORD}@{self.host}:{self.port}/0"


@pytest.fixture(scope="module")
def locked_redis(tmp_path_factory):
    server = PasswordRedis(tmp_path_factory.mktemp("pw-redis"))
    server.start()
    yield server
    server.stop()


def _env(**extra: str) -> dict:
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith(("LFM_", "KAFKA_", "REDIS_", "RECALL_"))}
    env.update(TF_CPP_MIN_LOG_LEVEL="3", PYTHONUNBUFFERED="1", **extra)
    return env


class Service:
    """``python -m recall_api`` on a free port; its output is kept to check for secrets."""

    def __init__(self, redis_url: str, tmp: Path, *flags: str, token: str | None = None):
        self.port = free_port()
        self.log = tmp / f"recall-{self.port}.log"
        env = _env(RECALL_API_TOKEN=token) if token else _env()
        with open(self.log, "w") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "recall_api", "--port", str(self.port), "--redis-url",
                                          redis_url, "--namespace", "secrets", "--dim", "8", "--data-dir", str(tmp),
                                          *flags], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while self.get("/healthz")[0] is None:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.log.read_text()
            time.sleep(0.2)

    def get(self, path: str, token: str | None = None) -> tuple[int | None, dict, bytes]:
        """One keep-alive HTTP/1.1 request (the kind the protocol-level fast path answers)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request("GET", path, headers={"Authorization": f"Bearer {token}"} if token else {})
            r = conn.getresponse()
            return r.status, dict(r.getheaders()), r.read()
        except OSError:
            return None, {}, b""
        finally:
            conn.close()

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(30)
        return self.log.read_text()


@pytest.mark.parametrize("flags", [(), ("--no-fast-protocol",)], ids=["fast-protocol", "fastapi-routes"])
def test_the_token_guards_every_route_but_healthz_and_the_dashboard_page(locked_redis, tmp_path, flags):
    svc = Service(locked_redis.url, tmp_path, *flags, token=TOKEN)
    try:
        status, _, body = svc.get("/healthz")
        assert status == 200, body  # what orchestrators probe stays open
        for path in ("/u2i/1", "/u2i/1?k=5", "/i2i/1", "/stats", "/docs", "/openapi.json", "/metrics",
                     "/dashboard/data", "/static/dashboard/../../stats"):
            for token in (None, "wrong", TOKEN + "x"):
                status, headers, body = svc.get(path, token)
                assert status == 401, (path, token, status, body)
                assert headers.get("www-authenticate") == 'Bearer realm="lfm-recall"'
                assert b"missing or wrong bearer token" in body
        # the dashboard's page and assets hold no data: open, so a browser can load the page it gives the token to
        for path in ("/dashboard", "/static/dashboard/dashboard.js"):
            assert svc.get(path)[0] == 200, path
        assert svc.get("/dashboard/data", TOKEN)[0] == 200
        assert svc.get("/u2i/1", TOKEN)[0] == 404  # unknown user: the request went through (fast path or route)
        assert svc.get("/i2i/1?k=5", TOKEN)[0] == 404
        status, _, body = svc.get("/stats", TOKEN)
        assert status == 200 and json.loads(body)["namespace"] == "secrets"
        assert svc.get("/openapi.json", TOKEN)[0] == 200
        # the query CLI sends RECALL_API_TOKEN along
        q = subprocess.run([sys.executable, "-m", "recall_api.query", "u2i", "1", "--url", f"http://127.0.0.1:{svc.port}"],
                           cwd=ROOT, env=_env(RECALL_API_TOKEN=TOKEN), capture_output=True, text=True, timeout=60)
        assert "bearer" not in q.stdout + q.stderr and "unknown user 1" in q.stdout + q.stderr
    finally:
        out = svc.stop()
    assert "bearer token in RECALL_API_TOKEN" in out and TOKEN not in out


def test_no_password_in_stats_or_logs(locked_redis, tmp_path):
    svc = Service(locked_redis.url, tmp_path)
    try:
        status, _, body = svc.get("/stats")
        assert status == 200
        stats = json.loads(body)
        assert stats["redis_url"] == f"redis://:***@127.0.0.1:{locked_redis.port}/0"
        assert PASSWORD.encode() not in body
    finally:
        out = svc.stop()
    assert f"redis://:***@127.0.0.1:{locked_redis.port}/0" in out and PASSWORD not in out


@pytest.mark.parametrize("url, shown", [
    ("redis://:{pw}@h:1/0", "redis://:***@h:1/0"), ("redis://user:{pw}@h/0", "redis://user:***@h/0"),
    ("rediss://{pw}@h", "rediss://***@h"), ("redis://h:1/0?password={pw}&db=2", "redis://h:1/0?password=***&db=2"),
    ("redis://h:1/0", "redis://h:1/0"),
])
def test_mask_url(url, shown):
    assert mask_url(url.format(pw=PASSWORD)) == shown


def test_a_wrong_redis_password_says_authentication_failed(locked_redis, tmp_path):
    wrong = f"redis://:wrong-{PASSWORD}@127.0.0.1:{locked_redis.port}/0"
    shown = f"Redis at redis://:***@127.0.0.1:{locked_redis.port}/0: authentication failed"
    for url in (wrong, f"redis://127.0.0.1:{locked_redis.port}/0"):  # a wrong password, and none
        with pytest.raises(PSAuthError) as exc:
            ParameterServer.get(url, "secrets", dim=8)
        assert not isinstance(exc.value, PSConnectionError)  # not an outage: the learner must not retry it
        assert "authentication failed" in str(exc.value) and PASSWORD not in str(exc.value)
    ps_cli = subprocess.run([sys.executable, "-m", "ps_redis", "--redis-url", wrong, "inspect", "--stats"], cwd=ROOT,
                            env=_env(), capture_output=True, text=True, timeout=60)
    assert ps_cli.returncode == 1 and shown in ps_cli.stderr and PASSWORD not in ps_cli.stderr
    learner = subprocess.run([sys.executable, "-m", "learner", "--redis-url", wrong, "--no-xla"], cwd=ROOT,
                             env=_env(), capture_output=True, text=True, timeout=120)
    assert learner.returncode == 2, learner.stderr[-2000:]
    assert f"lfm-learner: error: {shown}" in learner.stderr and "Traceback" not in learner.stderr
    assert PASSWORD not in learner.stdout + learner.stderr
    svc = Service(wrong, tmp_path)
    try:
        status, _, body = svc.get("/healthz")
        assert status == 503 and b"authentication failed" in body and PASSWORD.encode() not in body
        assert PASSWORD.encode() not in svc.get("/stats")[2]
    finally:
        out = svc.stop()
    assert "authentication failed" in out and PASSWORD not in out
