"""FakeOpenAIServer outside the test's own thread: a spawned child process, the command line
(`python -m ipychat.testing`) and the pytest plugin."""

from __future__ import annotations

import importlib.metadata
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from _wire import (
    BODY,
    HTTP,
    post,
)

import ipychat
from ipychat.testing import FakeOpenAIServer, Fault, RecordedRequest

# ----- a server in a child process -----------------------------------------------------------


def test_spawned_server_has_the_same_api_and_goes_away() -> None:
    # A 60 s window: 100 requests at once pass (a 1 s window would allow 1.7 per second).
    server = FakeOpenAIServer.spawn(reply="from the child", rpm=100, window=60)
    try:
        assert server.pid is not None and server.pid != os.getpid() and server.running
        r = post(server)
        assert r.json()["choices"][0]["message"]["content"] == "from the child"
        assert r.headers["x-ratelimit-limit-requests"] == "100"
        server.script(Fault.status(503, headers={"retry-after": "1"}), "hang")
        assert post(server).status_code == 503
        with pytest.raises(httpx.ReadTimeout):
            post(server, timeout=0.2)
        log = server.requests
        assert [r.status for r in log] == [200, 503, None]
        assert isinstance(log[1], RecordedRequest) and log[1].fault == Fault.status(
            503, headers={"retry-after": "1"}
        )
        assert log[0].body == BODY
        stats = server.stats()
        assert stats.by_status == {200: 1, 503: 1} and stats.faults == 2 and stats.no_response == 1
        server.reset_log()
        assert server.requests == [] and server.stats().total == 0
        post(server)
    finally:
        pid, port = server.pid, server.port
        started = time.perf_counter()
        server.stop()
    assert time.perf_counter() - started < 3
    assert len(server.requests) == 1 and server.stats().total == 1  # the log outlives the child
    server.stop()
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_spawn_refuses_unpicklable_options() -> None:
    with pytest.raises(TypeError, match="picklable"):
        FakeOpenAIServer(reply=lambda body: "x", process=True)


def test_a_script_without_a_main_guard_is_told_why_the_server_did_not_start(
    tmp_path: Path,
) -> None:
    # With the spawn start method the child re-runs the script's top level, which starts a
    # server again and fails (multiprocessing's "safe importing of main module" rule); the
    # parent must say so, not fail on reading the log of a server that never started.
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from ipychat.testing import FakeOpenAIServer\n"
        "with FakeOpenAIServer.spawn() as server:\n"
        "    print(server.base_url)\n"
    )
    done = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        env=project_env(),
        timeout=120,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("RuntimeError: the spawned FakeOpenAIServer failed to start"), last
    assert 'if __name__ == "__main__":' in last


# ----- command line and pytest plugin --------------------------------------------------------


def project_env() -> dict[str, str]:
    root = str(Path(ipychat.__file__).resolve().parent.parent)
    return {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}


def test_command_line_server() -> None:
    command = [sys.executable, "-m", "ipychat.testing", "--port", "0", "--reply", "pong"]
    with subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=project_env()) as proc:
        try:
            assert proc.stdout is not None
            base_url = proc.stdout.readline().strip()
            assert base_url.startswith("http://127.0.0.1:") and base_url.endswith("/v1")
            r = HTTP.post(base_url + "/chat/completions", json=BODY)
            assert r.json()["choices"][0]["message"]["content"] == "pong"
            proc.send_signal(signal.SIGINT)  # Ctrl-C: a clean stop, exit code 0
            assert proc.wait(timeout=10) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def test_pytest_plugin(tmp_path: Path) -> None:
    (tmp_path / "pytest.ini").write_text("[pytest]\naddopts = --strict-markers\n")
    (tmp_path / "test_uses_plugin.py").write_text(
        textwrap.dedent(
            """
            import os

            import httpx
            import pytest

            BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
            SERVERS = []


            @pytest.mark.fake_openai(reply="from the marker")
            def test_marker(fake_openai):
                SERVERS.append(fake_openai)
                r = httpx.post(fake_openai.base_url + "/chat/completions", json=BODY)
                assert r.json()["choices"][0]["message"]["content"] == "from the marker"


            def test_factory(fake_openai_factory):
                a, b = fake_openai_factory(), fake_openai_factory(require_key="sk-abc-12345678")
                SERVERS.extend([a, b])
                assert a.running and b.api_key == "sk-abc-12345678" and a.port != b.port


            def test_env(fake_openai_env):
                SERVERS.append(fake_openai_env)
                assert os.environ["OPENAI_BASE_URL"] == fake_openai_env.base_url
                assert os.environ["OPENAI_API_KEY"] == fake_openai_env.api_key


            def test_every_server_was_stopped():
                assert len(SERVERS) == 4 and not any(s.running for s in SERVERS)
            """
        )
    )
    # Autoloading the machine's other plugins costs seconds; load just this one by name.
    env = {**project_env(), "PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "ipychat.testing.pytest_plugin",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "4 passed" in result.stdout


def test_pytest_plugin_entry_point_is_declared() -> None:
    tomllib = pytest.importorskip("tomllib")
    pyproject = Path(ipychat.__file__).resolve().parent.parent / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("not running from a source checkout")
    project = tomllib.loads(pyproject.read_text())["project"]
    assert project["entry-points"]["pytest11"] == {"ipychat": "ipychat.testing.pytest_plugin"}
    installed = [
        ep for ep in importlib.metadata.entry_points(group="pytest11") if ep.name == "ipychat"
    ]
    assert all(ep.value == "ipychat.testing.pytest_plugin" for ep in installed)
