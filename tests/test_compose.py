"""Validate docker-compose.yml and the Dockerfile beyond "YAML parses" (Docker is not available in CI).

Every app service's command must be an entry point that exists, with flags its ``--help`` lists; every
environment variable a service sets must be one its entry point reads (its ``--help`` names it);
ports, volumes and the init → producer → learner → recall chain must agree.
"""

from __future__ import annotations

import re
import subprocess
import sys
from functools import lru_cache
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
APP_SERVICES = [name for name, svc in SERVICES.items() if "build" in svc]
# Variables interpreted by the runtime rather than by our argument parsers.
RUNTIME_ENV = {"PYTHONUNBUFFERED", "TF_CPP_MIN_LOG_LEVEL"}


def _module_of(command: list[str]) -> tuple[str, list[str]]:
    assert command[0] == "python", f"app commands start with python (got {command!r})"
    if command[1] == "-m":
        return command[2], command[3:]
    script = command[1]
    assert (ROOT / script).is_file(), f"script {script} does not exist"
    return script.removesuffix(".py").replace("/", "."), command[2:]


@lru_cache(maxsize=None)
def _help(module: str) -> str:
    out = subprocess.run([sys.executable, "-m", module, "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=120, env={"PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3", "HOME": str(Path.home())})
    assert out.returncode == 0, f"python -m {module} --help failed: {out.stderr[-2000:]}"
    return out.stdout


def _env(svc: dict) -> dict[str, str]:
    env = svc.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def test_images_pinned_and_dockerfile_sane():
    for name, svc in SERVICES.items():
        image = svc.get("image")
        assert image, f"service {name} has no image name"
        repo, _, tag = image.rpartition(":")
        assert repo and tag and tag != "latest", f"service {name}: image {image!r} is not pinned by tag"
    dockerfile = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^FROM\s+(\S+)", dockerfile, re.M).group(1)
    assert re.search(r":\d+\.\d+", base), f"Dockerfile base image {base!r} is not pinned"
    assert "slim" in base
    user = re.findall(r"^USER\s+(\S+)", dockerfile, re.M)
    assert user and user[-1] not in ("root", "0"), "the image must run as a non-root user"
    # dependency layer before the sources (layer-cached install)
    assert dockerfile.index("COPY pyproject.toml") < dockerfile.index("COPY learner")
    for pkg in ("lfm_stream", "producer", "learner", "ps_redis", "recall_api"):
        assert f"COPY {pkg} " in dockerfile, f"Dockerfile does not copy {pkg}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_commands_and_flags_exist(name):
    module, args = _module_of(SERVICES[name]["command"])
    text = _help(module)
    for flag in (a.split("=", 1)[0] for a in args if a.startswith("--")):
        assert re.search(rf"(?<![\w-]){re.escape(flag)}(?![\w-])", text), f"{name}: {module} has no flag {flag}"


@pytest.mark.parametrize("name", APP_SERVICES)
def test_env_vars_are_read(name):
    module, _ = _module_of(SERVICES[name]["command"])
    text = _help(module)
    for var in _env(SERVICES[name]):
        if var in RUNTIME_ENV:
            continue
        assert var in text, f"{name} sets {var} but `python -m {module} --help` does not mention reading it"


def test_chain_agrees():
    env = {name: _env(SERVICES[name]) for name in APP_SERVICES}
    # one topic between producer and learner, one namespace between learner and recall
    assert env["producer"]["LFM_TOPIC"] == env["learner"]["LFM_TOPIC"]
    assert env["learner"]["LFM_NAMESPACE"] == env["recall_api"]["LFM_NAMESPACE"]
    # every service reads the shards where init writes them, on the same volume
    init_cmd = SERVICES["init"]["command"]
    out_dir = init_cmd[init_cmd.index("--out") + 1]
    for name in ("init", "producer", "learner", "recall_api"):
        assert env[name]["LFM_DATA_DIR"] == out_dir, f"{name} reads shards from another path"
        mounts = {v.split(":")[1]: v.split(":")[0] for v in SERVICES[name]["volumes"]}
        assert any(out_dir.startswith(target) and src == "prepared" for target, src in mounts.items()), (
            f"{name} does not mount the prepared volume over {out_dir}")
    # Redis and Kafka addresses point at the right services and listeners; every Redis URL carries the password
    for name in ("learner", "items", "recall_api"):
        assert re.fullmatch(r"redis://:\$\{REDIS_PASSWORD:-[\w-]+\}@redis:6379/\d+", env[name]["REDIS_URL"])
    kafka_env = SERVICES["kafka"]["environment"]
    for name in ("producer", "learner"):
        host, port = env[name]["KAFKA_BOOTSTRAP"].split(":")
        assert f"PLAINTEXT://{host}:{port}" in kafka_env["KAFKA_ADVERTISED_LISTENERS"]
        assert f"PLAINTEXT://:{port}" in kafka_env["KAFKA_LISTENERS"]
    # the host listener is advertised with the host port it is published on (LFM_KAFKA_PORT), from its own port
    ext = re.search(r"EXTERNAL://localhost:(\$\{LFM_KAFKA_PORT:-9094\})", kafka_env["KAFKA_ADVERTISED_LISTENERS"]).group(1)
    inner = re.search(r"EXTERNAL://:(\d+)", kafka_env["KAFKA_LISTENERS"]).group(1)
    assert f"127.0.0.1:{ext}:{inner}" in SERVICES["kafka"]["ports"]
    # the API listens on the published port
    api_cmd = SERVICES["recall_api"]["command"]
    port = api_cmd[api_cmd.index("--port") + 1]
    assert f"127.0.0.1:${{LFM_API_PORT:-8000}}:{port}" in SERVICES["recall_api"]["ports"]
    assert api_cmd[api_cmd.index("--host") + 1] == "0.0.0.0"
    assert env["recall_api"]["RECALL_API_TOKEN"] == "${RECALL_API_TOKEN:-}"  # optional bearer token


def test_nothing_is_published_beyond_this_machine_and_redis_needs_its_password():
    for name, svc in SERVICES.items():
        for mapping in svc.get("ports", []):
            assert str(mapping).startswith("127.0.0.1:"), f"{name} publishes {mapping!r} on every interface"
    assert "127.0.0.1:${LFM_REDIS_PORT:-6379}:6379" in SERVICES["redis"]["ports"]
    redis_svc = SERVICES["redis"]
    assert _env(redis_svc)["REDIS_PASSWORD"] == "${REDIS_PASSWORD:-change-me}"
    cmd = " ".join(redis_svc["command"])
    assert '--requirepass "$$REDIS_PASSWORD"' in cmd  # from the container's environment ($$: not compose's)
    assert 'REDISCLI_AUTH="$$REDIS_PASSWORD"' in " ".join(redis_svc["healthcheck"]["test"])


def test_startup_order_and_volumes():
    declared = set(COMPOSE.get("volumes") or {})
    for name, svc in SERVICES.items():
        for vol in svc.get("volumes", []):
            src = vol.split(":")[0]
            if not src.startswith((".", "/")):
                assert src in declared, f"{name} uses undeclared volume {src}"
    for name in ("redis", "kafka"):
        assert "healthcheck" in SERVICES[name]
    assert "--appendonly yes" in " ".join(SERVICES["redis"]["command"]), "Redis must persist"
    assert re.match(r"redis:7\.", SERVICES["redis"]["image"])
    assert SERVICES["kafka"]["image"].startswith("apache/kafka:")
    assert "broker,controller" in SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"]
    for name in ("producer", "learner", "recall_api"):
        deps = SERVICES[name]["depends_on"]
        assert deps["init"]["condition"] == "service_completed_successfully"
    assert SERVICES["producer"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert SERVICES["learner"]["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert SERVICES["learner"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert SERVICES["recall_api"]["depends_on"]["redis"]["condition"] == "service_healthy"


# ----------------------------------------------------------------------------- images per role
PYPROJECT = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())
#: the Dockerfile target that runs each app service's entry point (a role = a pyproject extra)
ROLE_OF_MODULE = {"producer.prepare": "producer", "producer.replay": "producer", "learner": "learner", "learner.items": "learner",
                  "learner.__main__": "learner", "recall_api": "recall", "recall_api.__main__": "recall"}


def _stages() -> dict[str, str]:
    """Dockerfile stage name -> its text (up to the next FROM)."""
    text = (ROOT / "Dockerfile").read_text()
    parts = re.split(r"^(?=FROM\s)", text, flags=re.M)
    stages = {}
    for part in parts:
        m = re.match(r"FROM\s+\S+\s+AS\s+(\S+)", part, re.I)
        if m:
            stages[m.group(1)] = part
    return stages


def _requirement_names(reqs: list[str]) -> set[str]:
    return {re.match(r"[A-Za-z0-9_.\-]+", r).group(0).lower().replace("_", "-") for r in reqs}


@pytest.mark.parametrize("name", APP_SERVICES)
def test_each_service_builds_the_target_of_its_role(name):
    svc = SERVICES[name]
    build = svc["build"]
    assert isinstance(build, dict) and build.get("context") == ".", f"{name}: build {build!r}"
    module, _ = _module_of(svc["command"])
    role = ROLE_OF_MODULE[module]
    assert build.get("target") == role, f"{name} runs {module}: target {role!r} expected, got {build.get('target')!r}"
    assert role in _stages(), f"the Dockerfile has no stage {role!r}"
    assert svc["image"].split(":")[0] == f"lfm-stream-{role}", f"{name}: image {svc['image']!r}"


@pytest.mark.parametrize("role", ["producer", "learner", "recall"])
def test_each_role_stage_installs_its_extra_then_the_sources(role):
    stage = _stages()[role]
    extras = PYPROJECT["project"]["optional-dependencies"]
    assert role in extras, f"pyproject has no extra {role!r}"
    install = stage.index(f'pip install ".[{role}]"')
    assert install < stage.index("COPY --from=sources"), f"{role}: the sources come after the dependency layer"
    assert re.search(r"^USER\s+lfm\s*$", stage, re.M), f"{role}: runs as root"
    # the base stage copies what setuptools needs to build the package, LICENSE included (license-files)
    base = _stages()["base"]
    assert re.search(r"^COPY\s+pyproject\.toml\s+README\.md\s+LICENSE\s", base, re.M)
    assert PYPROJECT["project"]["license-files"] == ["LICENSE"]
    sources = _stages()["sources"]
    for pkg in ("lfm_stream", "producer", "learner", "ps_redis", "recall_api"):
        assert re.search(rf"^COPY\s+{pkg}\s+/{pkg}\s*$", sources, re.M), f"the sources stage does not copy {pkg}"


def test_recall_image_carries_no_tensorflow():
    core = _requirement_names(PYPROJECT["project"]["dependencies"])
    recall = _requirement_names(PYPROJECT["project"]["optional-dependencies"]["recall"])
    assert not {n for n in core | recall if n.startswith("tensorflow")}, "TensorFlow in the recall install"
    for role in ("learner", "producer"):
        assert {"tensorflow-cpu", "tensorflow"} <= _requirement_names(
            PYPROJECT["project"]["optional-dependencies"][role]), f"{role} needs TensorFlow"
    assert "scikit-learn" not in core, "scikit-learn is a test dependency only"


def test_dockerignore_keeps_the_build_context_small():
    patterns = {line.strip().rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")}
    for big in (".git", ".venv", ".ci-venv", "data", ".lfm", "datasets"):
        assert big in patterns, f".dockerignore does not exclude {big}"
    for needed in ("pyproject.toml", "README.md", "LICENSE", "lfm_stream", "producer", "learner", "ps_redis",
                   "recall_api"):
        assert needed not in patterns, f".dockerignore excludes {needed}, which the image needs"


def test_recall_modules_import_without_tensorflow():
    """What the recall image runs imports no TensorFlow (``import tensorflow`` fails in this child process)."""
    code = ("import sys, importlib, pkgutil\n"
            "sys.modules['tensorflow'] = None  # any import of it raises ImportError\n"
            "import recall_api\n"
            "for m in pkgutil.iter_modules(recall_api.__path__):\n"
            "    importlib.import_module('recall_api.' + m.name)\n"
            "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]
