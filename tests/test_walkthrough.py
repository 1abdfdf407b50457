"""The "Use it" walk-through (docs/walkthrough.md) runs as pasted: its ```bash block, command by command, in one
bash shell in a fresh directory (with a ``.venv`` as ``./lfm`` leaves it), against the redis-server and Tansu the
block starts itself; every command's exit status and key output are checked.

The only things the test sets are what a user's machine provides: ml-latest-small in the download cache
(``LFM_CACHE_DIR``, so ``--download`` reads the verified cache) or, when the tests found it under ``$LFM_DATA``,
``LFM_RATINGS`` (prepare's fallback for ``--ratings``, which the walk-through names for offline use); and a free
``RECALL_PORT`` (8000 may be taken on a shared machine; the block reads it as documented).
"""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

from conftest import ROOT, shared_data_dir
from lfm_stream.config import default_cache_dir
from lfm_local.stack import free_port

DOC = ROOT / "docs" / "walkthrough.md"
COMMAND_TIMEOUT = 300  # seconds; a stuck command fails the test instead of hanging it
DONE = "__walkthrough_done__"


def walkthrough_commands(text: str) -> list[str]:
    """The commands of the first ```bash block under ``## Use it``: one per line (a trailing backslash continues
    it); blank lines and comment lines are not commands."""
    section = text.split("\n## Use it", 1)[1]
    block = re.search(r"^```bash\n(.*?)^```", section, re.S | re.M)
    assert block, f"no ```bash block under '## Use it' in {DOC}"
    commands, pending = [], ""
    for line in block.group(1).splitlines():
        if pending:
            line = pending + "\n" + line
            pending = ""
        if line.rstrip().endswith("\\"):
            pending = line
        elif line.strip() and not line.lstrip().startswith("#"):
            commands.append(line)
    return commands


def is_background(command: str) -> bool:
    """Whether a command line starts a background job (``cmd &``, possibly followed by a comment)."""
    words = shlex.split(command, comments=True)
    return bool(words) and words[-1] == "&"


@dataclass
class Result:
    command: str
    code: int | None  # None while a background job runs
    out: Path
    err: Path
    pid: int | None = None

    @property
    def stdout(self) -> str:
        return self.out.read_text(errors="replace")

    @property
    def stderr(self) -> str:
        return self.err.read_text(errors="replace")

    def describe(self) -> str:
        return (f"command: {self.command}\nexit status: {self.code}\n--- stdout (end) ---\n{self.stdout[-3000:]}"
                f"\n--- stderr (end) ---\n{self.stderr[-5000:]}")


class Shell:
    """One bash process fed command by command; each command's output goes to files of its own (its background
    jobs' too, since they inherit the redirection)."""

    def __init__(self, cwd: Path, env: dict[str, str]):
        self.logs = cwd / ".walkthrough-logs"
        self.logs.mkdir()
        self.proc = subprocess.Popen(["bash", "--noprofile", "--norc"], cwd=cwd, env=env, stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()
        self.n = 0

    def _pump(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)

    def _send(self, text: str) -> list[str]:
        """Run ``text`` and return the fields the marker line carries."""
        self.proc.stdin.write(text + f'\necho "{DONE} $__rc ${{__pid:-}}"\n')
        self.proc.stdin.flush()
        while True:
            try:
                line = self.lines.get(timeout=COMMAND_TIMEOUT)
            except queue.Empty:
                raise AssertionError(f"no answer within {COMMAND_TIMEOUT} s to:\n{text}") from None
            if line.startswith(DONE):
                return line.split()[1:]

    def run(self, command: str) -> Result:
        """Run one command of the walk-through as written; a background one is left running (its pid kept).  Its
        stdin is /dev/null (a terminal's in a user's shell): no command may read the lines that follow it."""
        self.n += 1
        out, err = self.logs / f"{self.n:02d}.out", self.logs / f"{self.n:02d}.err"
        background = is_background(command)
        fields = self._send(f"__pid=\n{{ {command}\n}} >{shlex.quote(str(out))} 2>{shlex.quote(str(err))} </dev/null; "
                            "__rc=$?" + ("; __pid=$!" if background else ""))
        pid = int(fields[1]) if background else None
        return Result(command, None if background else int(fields[0]), out, err, pid)

    def wait_for(self, pid: int) -> int:
        """Exit status of a background job of this shell."""
        return int(self._send(f"wait {pid}; __rc=$?; __pid=")[0])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


def _user_dir(tmp_path: Path) -> Path:
    """A fresh directory with a ``.venv`` like the one ``./lfm`` makes (the environment running this test)."""
    home = tmp_path / "checkout"
    home.mkdir()
    if sys.prefix != sys.base_prefix:
        (home / ".venv").symlink_to(sys.prefix)
    else:  # tests run in an interpreter without a venv: an activate script that puts it first on PATH
        bin_dir = home / ".venv" / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "python").symlink_to(sys.executable)
        (bin_dir / "activate").write_text(f'export PATH={shlex.quote(str(bin_dir))}:'
                                          f'{shlex.quote(str(Path(sys.executable).parent))}:"$PATH"\n')
    return home


def _user_env(tmp_path: Path) -> dict[str, str]:
    """A user's environment: system PATH and HOME; the data where a user's machine would have it."""
    env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": os.environ.get("HOME", str(tmp_path)), "LANG": "C.UTF-8",
           "RECALL_PORT": str(free_port())}
    data = shared_data_dir()
    cache = default_cache_dir()
    if data == cache / "ml-latest-small":  # the verified download cache: --download reads it, no network
        env["LFM_CACHE_DIR"] = str(cache)
    else:
        ratings = data / "ml-latest-small" / "ratings.csv"
        assert ratings.is_file(), f"ml-latest-small not found at {ratings} nor in the download cache {cache}"
        env["LFM_RATINGS"] = str(ratings)
    return env


def _table(text: str) -> list[tuple[int, str]]:
    """(movie id, title) rows of a ``recall_api.query`` table."""
    rows = re.findall(r"^\s*\d+\s+(\d+)\s+-?\d+\.\d+\s+(.*?)\s+\[.*\]$", text, re.M)
    return [(int(movie), title) for movie, title in rows]


def _query_rows(r: Result, kind: str, query_id: int) -> list[tuple[int, str]]:
    """The rows of a query answer, checked: 10 movies with titles (i2i: not the movie itself)."""
    assert re.match(rf"{kind} {query_id}  \(k=10, source=(model|covisit)\)", r.stdout), r.describe()
    rows = _table(r.stdout)
    assert len(rows) == 10, r.describe()
    assert all(title and title != "?" for _, title in rows), f"titles missing (data/prepared/movies.csv)\n{r.describe()}"
    assert kind == "u2i" or query_id not in [m for m, _ in rows], r.describe()
    return rows


def run_walkthrough(shell: Shell, commands: list[str], results: list[Result]) -> None:
    """Every command in order, each result appended to ``results``; stops at the first that fails.  Background
    jobs: their exit status is collected just before the block's ``wait`` (each job waited for by pid), the rest's
    at the end."""
    for command in commands:
        running = [r for r in results if r.pid is not None and r.code is None]
        if shlex.split(command, comments=True) == ["wait"]:
            for job in running:
                job.code = shell.wait_for(job.pid)
                assert job.code == 0, job.describe()
        r = shell.run(command)
        results.append(r)
        assert r.code in (0, None), r.describe()
    for job in results:
        if job.pid is not None and job.code is None:
            job.code = shell.wait_for(job.pid)


def test_walkthrough_runs_as_pasted(tmp_path):
    commands = walkthrough_commands(DOC.read_text())
    home = _user_dir(tmp_path)
    env = _user_env(tmp_path)
    shell = Shell(home, env)
    results: list[Result] = []

    def step(pattern: str, n: int = 1) -> list[Result]:
        """The results of the commands matching ``pattern`` (there must be ``n``: the walk-through's steps)."""
        found = [r for r in results if re.search(pattern, r.command)]
        assert len(found) == n, f"{len(found)} commands match {pattern!r} in {DOC} (expected {n})"
        return found

    try:
        run_walkthrough(shell, commands, results)
        assert not step(r"^source \.venv/bin/activate")[0].stderr
        stack = step(r"^eval \"\$\(python -m lfm_local\.stack up\)\"")[0]
        assert not stack.stdout and "error" not in stack.stderr, stack.describe()

        prepare = step(r"^python -m producer\.prepare ")[0]
        assert re.search(r"^prepared data/prepared: \d{5} train \+ \d+ test records, 6\d\d users", prepare.stdout,
                         re.M), prepare.describe()
        events = json.loads((home / "data" / "prepared" / "manifest.json").read_text())["train_records"]
        replay = step(r"^python -m producer\.replay ")[0]
        assert f"replayed {events} events" in replay.stdout, replay.describe()

        learner = step(r"^python -m learner .*&")[0]
        assert learner.code == 0, learner.describe()
        found = re.search(r"test_auc=(0\.\d+) .*hr_at_50=(0\.\d+)", learner.stderr)
        assert found, f"no test AUC line (data/prepared is the learner's default)\n{learner.describe()}"
        assert float(found.group(1)) > 0.7 and float(found.group(2)) > 0.2, learner.describe()
        assert f"done (idle_timeout): {events} events" in learner.stderr, learner.describe()
        items = step(r"^python -m learner\.items .*&")[0]
        assert items.code == 0 and f"items: done (idle_timeout): {events} records" in items.stderr, items.describe()

        by_ps, by_http = step(r"^python -m recall_api\.query u2i 1\b", 2)
        same = shlex.split(by_http.command, comments=True) == shlex.split(by_ps.command, comments=True)
        assert same, "the same command twice: $RECALL_URL makes the second ask the service"
        assert _query_rows(by_http, "u2i", 1) == _query_rows(by_ps, "u2i", 1)  # the query tool agrees with the API
        _query_rows(step(r"^python -m recall_api\.query i2i 318\b")[0], "i2i", 318)

        vector = step(r"^redis-cli .* FCALL lfm_movie 0 lfm 318\b")[0]
        fields = dict(line.split("=", 1) for line in vector.stdout.splitlines() if "=" in line)
        assert re.fullmatch(r"lfm:item:-?\d+", fields.get("key", "")) and fields.get("raw") == "318", vector.describe()
        assert len(fields["vec"].split()) == int(fields["dim"]) > 0 and int(fields["count"]) > 0, vector.describe()
        neighbours = step(r"^redis-cli .* GET \"\{lfm:@co\}:nb:318\"")[0].stdout.split()
        assert len(neighbours) >= 20 and all(w.isdigit() for w in neighbours), neighbours[:20]
        recent = step(r"^redis-cli .* GET \"\{lfm:@co\}:recent:1\"")[0].stdout.split()
        assert len(recent) >= 2 and all(w.isdigit() for w in recent), recent

        api = step(r"^python -m recall_api &")[0]
        assert re.search(r"^recall_api \S+: namespace 'lfm' of redis://127\.0\.0\.1:\d+/0, serving "
                         rf"http://127\.0\.0\.1:{env['RECALL_PORT']} ", api.stderr, re.M), api.describe()
        assert api.code in (0, 143), api.describe()  # stopped by SIGTERM (uvicorn re-raises it after shutting down)
        health = step(r"^curl .*/healthz")[0]
        assert json.loads(health.stdout)["status"] == "ok", health.describe()
        i2i = json.loads(step(r"^curl .*/i2i/318\?k=3")[0].stdout)
        assert len(i2i["items"]) == 3 and all(it["title"] for it in i2i["items"]), i2i
        step(r"^kill \$api")
        down = step(r"^python -m lfm_local\.stack down")[0]
        assert "stopped" in down.stderr, down.describe()
    finally:
        for job in results:
            if job.pid is not None and job.code is None:
                subprocess.run(["kill", str(job.pid)], capture_output=True)
        subprocess.run([sys.executable, "-m", "lfm_local.stack", "down"], cwd=home, capture_output=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "KAFKA_BOOTSTRAP")})
        shell.close()
