"""The child process that serves the local model, and how it is ended.

The child is a tiny wrapper around llama_cpp.server (`CHILD_SCRIPT`, run as
`python -c CHILD_SCRIPT CONFIG`): it serves the socket it inherited and exits as soon as
its stdin, a pipe only the kernel writes to, reaches end of file. `ipychat.engine.local`
starts it (see that module for why it is built this way).
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess

__all__ = ["CHILD_SCRIPT", "child_env", "end_child"]

# The child process: llama_cpp.server's app, in-process (so the server's pid is the
# child's pid), on the socket it inherited. In order:
# - the key: the first line of stdin, read byte by byte so nothing after it is consumed;
# - the log: rotated if it outgrew the limit, then this start's header;
# - a daemon thread blocks on stdin and calls os._exit at end of file, i.e. when the
#   parent closed the pipe (stop) or died, even by SIGKILL; another one rotates the log;
# - llama_cpp.server's settings are pydantic-settings, so any environment variable named
#   like one of its fields (API_KEY, PORT, MODEL_ALIAS, N_CTX, CONFIG_FILE, ...) silently
#   overrides what is not given explicitly: drop them before the settings are built.
CHILD_SCRIPT = """\
import fcntl, json, os, sys, threading, time

line = b""
while not line.endswith(b"\\n"):
    byte = os.read(0, 1)
    if not byte:
        os._exit(0)
    line += byte
key = line.decode().strip()
config = json.loads(sys.argv[1])
log, limit, every = config["log"], config["log_limit"], config["log_every"]

def rotate():
    # One log for every kernel of this cache folder: whoever sees it too large under the
    # lock keeps it as .1; a server whose file was moved away reopens the new one.
    old = os.dup(1)
    try:
        fcntl.flock(old, fcntl.LOCK_EX)
        mine = os.fstat(old)
        try:
            current = os.lstat(log)
        except FileNotFoundError:
            current = None
        moved = current is None or (current.st_dev, current.st_ino) != (mine.st_dev, mine.st_ino)
        if not moved:
            if mine.st_size <= limit:
                return
            os.replace(log, log + ".1")
        new = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.fchmod(new, 0o600)
        sys.stdout.flush(); sys.stderr.flush()
        os.dup2(new, 1); os.dup2(new, 2); os.close(new)
    finally:
        os.close(old)

def keep_rotating():
    while True:
        time.sleep(every)
        try:
            rotate()
        except OSError:
            pass

def lifeline():
    try:
        while os.read(0, 4096):
            pass
    finally:
        os._exit(0)

rotate()
print(f"--- ipychat: starting {config['model']['model']} (server pid {os.getpid()}, "
      f"kernel pid {os.getppid()}) ---", flush=True)
threading.Thread(target=lifeline, name="ipychat-lifeline", daemon=True).start()
threading.Thread(target=keep_rotating, name="ipychat-log", daemon=True).start()

from llama_cpp.server.settings import ModelSettings, ServerSettings
names = {n.upper() for n in (*ModelSettings.model_fields, *ServerSettings.model_fields)}
for name in list(os.environ):
    if name.upper() in names | {"CONFIG_FILE", "HOST", "PORT"}:
        del os.environ[name]
import uvicorn
from llama_cpp.server.app import create_app

app = create_app(
    server_settings=ServerSettings(api_key=key, **config["server"]),
    model_settings=[ModelSettings(**config["model"])],
)
uvicorn.Server(uvicorn.Config(app, fd=config["fd"], log_level="info")).run()
"""


# Environment variables the server has no use for and must not hold: cloud keys, and
# tokens such as JUPYTERHUB_API_TOKEN (the user's access to the hub's API).
_CREDENTIAL_ENV = re.compile(
    r"KEY|TOKEN|SECRET|PASSW|CREDENTIAL|^OPENAI_|^AWS_|^AZURE_", re.IGNORECASE
)


def child_env() -> dict[str, str]:
    """The kernel's environment minus the credentials the server has no use for."""
    env = {n: v for n, v in os.environ.items() if not _CREDENTIAL_ENV.search(n)}
    env["PYTHONUNBUFFERED"] = "1"  # so the log is current for log_tail
    return env


def end_child(proc: subprocess.Popen[bytes]) -> None:
    """Close the lifeline (the child exits at once on EOF), then terminate, then kill."""
    if proc.stdin is not None:
        with contextlib.suppress(OSError):
            proc.stdin.close()
    for escalate, grace in ((None, 2.0), (proc.terminate, 3.0), (proc.kill, 5.0)):
        if escalate is not None:
            with contextlib.suppress(OSError):
                escalate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
            return
