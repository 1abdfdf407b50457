"""``python -m recall_api.query``: the API's strict id rule, and answers over HTTP with the standard library only."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lfm_local.stack import free_port
from ps_redis import ParameterServer
from recall_api import Catalog, RecallStore, StoreConfig
from recall_api.app import create_app
from recall_api.query import main as query_main
from tests._recall_util import ServerThread, populate, wait_for

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("argv, named", [
    (["u2i", "1_0"], "'1_0'"),  # int() would read 10
    (["i2i", "+5"], "'+5'"),
    (["i2i", " 5"], "' 5'"),
    (["u2i", "5.0"], "'5.0'"),
    (["u2i", "1" * 19], "1" * 19),  # beyond int64
    (["u2i", "٣"], "'٣'"),  # a digit to int(), not to the API
    (["i2i", "318", "-k", "1_0"], "'1_0'"),
])
def test_ids_and_k_are_plain_ascii_digits(argv, named, capsys):
    with pytest.raises(SystemExit) as exit_:
        query_main([*argv, "--url", "http://127.0.0.1:9"])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "decimal digits 0-9" in err and named in err, err


def test_asks_a_running_service_over_http(redis_url, namespace, capsys):
    ps = ParameterServer.get(redis_url, namespace, dim=8)
    populate(ps, np.arange(1, 61), np.arange(1, 11), seed=4)
    store = RecallStore(StoreConfig(redis_url, namespace, dim=8, refresh_interval=0.05), Catalog.load(None))
    direct = ["--redis-url", redis_url, "--namespace", namespace]
    with ServerThread(create_app(store)) as server:
        url = ["--url", server.url]
        wait_for(lambda: query_main(["i2i", "7", "-k", "3", *url]) == 0, timeout=30)
        capsys.readouterr()
        for query in (["i2i", "7", "-k", "4"], ["u2i", "3", "-k", "5", "--json"]):
            assert query_main([*query, *url]) == 0
            over_http = capsys.readouterr().out
            assert query_main([*query, *direct]) == 0
            assert capsys.readouterr().out == over_http
        assert query_main(["i2i", "999999", *url]) == 1  # 404: the service's detail is printed
        assert "unknown movie 999999" in capsys.readouterr().err
        # the answer needs nothing beyond the standard library (httpx is a test-only dependency)
        code = ("import sys; sys.modules['httpx'] = None; from recall_api.query import main; "
                f"raise SystemExit(main(['i2i', '7', '-k', '2', '--url', {server.url!r}]))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and len(proc.stdout.strip().splitlines()) == 4, proc.stderr


def test_unreachable_service_and_bad_url(capsys):
    assert query_main(["i2i", "1", "--url", f"http://127.0.0.1:{free_port()}"]) == 3  # nobody listens there
    assert "cannot reach" in capsys.readouterr().err
    assert query_main(["i2i", "1", "--url", "ftp://127.0.0.1/"]) == 2
    assert "'ftp://127.0.0.1/'" in capsys.readouterr().err
