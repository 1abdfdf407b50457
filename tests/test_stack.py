import redis
from kafka import KafkaAdminClient

from lfm_local.stack import LocalStack, main


def test_local_stack_starts_and_stops_own_servers(tmp_path):
    with LocalStack(tmp_path, use_env=False) as s:
        r = redis.Redis.from_url(s.redis_url)
        assert r.ping()
        # persistence as in docker compose: an append-only file fsynced every second
        assert r.config_get("appendonly") == {"appendonly": "yes"}
        assert r.config_get("appendfsync") == {"appendfsync": "everysec"}
        r.close()
        admin = KafkaAdminClient(bootstrap_servers=s.bootstrap)
        admin.list_topics()
        admin.close()
        procs = [s.redis.proc, s.kafka.proc]
    assert all(p is None for p in (s.redis.proc, s.kafka.proc))
    assert all(p.poll() is not None for p in procs)


def test_env_servers_are_used_instead(monkeypatch, tmp_path):
    monkeypatch.setenv("REDIS_URL", "redis://example.invalid:1/0")
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "example.invalid:9092")
    s = LocalStack(tmp_path)
    s.start()  # starts nothing
    assert s.redis is None and s.kafka is None
    assert s.redis_url == "redis://example.invalid:1/0"
    assert s.bootstrap == "example.invalid:9092"


def test_cli_up_status_down(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["up", "--run-dir", run]) == 0
    out = capsys.readouterr().out
    assert "REDIS_URL=redis://127.0.0.1:" in out and "KAFKA_BOOTSTRAP=127.0.0.1:" in out
    assert main(["status", "--run-dir", run]) == 0
    assert main(["down", "--run-dir", run]) == 0
    assert main(["status", "--run-dir", run]) == 1
