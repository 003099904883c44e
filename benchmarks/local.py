"""Time to first token on the embedded local model, from a fresh interpreter's %load_ext.

    python benchmarks/local.py [--runs 3]

Each run is a fresh Python process (so imports, the server start and the model load are
all counted) that creates an IPython shell, then times:

- `load_ext → first token`: `%load_ext ipychat`, then a streamed `ask` until its first
  delta arrives; this includes starting llama.cpp's server and loading the model;
- `2nd request TTFT`: a second streamed `ask` (another prompt, cache off) on the warm server.

Baseline, measured in the same run: the bare minimum without ipychat, i.e. spawn
`python -m llama_cpp.server` and stream the same prompt with http.client. (ipychat's
server holds its own socket and demands a per-start key, see ipychat/engine/local.py; the
baseline has neither.)

The session starts the local server by itself (no key, no endpoint). A first run, not
counted, warms the OS page cache, so every figure is for a model file already in memory
(a cold disk adds its read time once).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST = "Say hello in five words."
SECOND = "Name a colour."

# Runs in the fresh interpreter; prints one JSON line.
_IPYCHAT = textwrap.dedent(
    """
    import json, sys, time
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()

    def ask(session, prompt):
        # -> (absolute time of the first delta, time to first token, total time)
        start, first = time.perf_counter(), []
        def on_delta(text):
            if not first:
                first.append(time.perf_counter())
        session.ask(prompt, stream=True, cache=False, max_tokens=16, temperature=0,
                    on_delta=on_delta, new=True)
        return first[0], first[0] - start, time.perf_counter() - start

    marks = {}
    t0 = time.perf_counter()
    shell.run_line_magic("load_ext", "ipychat")
    import ipychat
    from ipychat.engine import local
    # Instrumentation only: note when the server first answers, whoever starts it.
    _start = local.LocalServer.start
    def start(self, *args, **kwargs):
        _start(self, *args, **kwargs)
        marks.setdefault("ready", time.perf_counter() - t0)
    local.LocalServer.start = start
    session = ipychat.get_session()
    first_at, _, _ = ask(session, %(first)r)
    _, ttft2, total2 = ask(session, %(second)r)
    local.stop_server()
    print(json.dumps({"first_token": first_at - t0, "ttft2": ttft2, "total2": total2,
                      "ready": marks.get("ready")}))
    """
) % {"first": FIRST, "second": SECOND}

# The baseline: no ipychat at all.
_RAW = textwrap.dedent(
    """
    import http.client, json, socket, subprocess, sys, time
    model = sys.argv[1]
    t0 = time.perf_counter()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", model, "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "2048"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers():
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/v1/models")
            return c.getresponse().status == 200
        except OSError:
            return False

    def ttft(prompt):
        # -> (absolute time of the first token, time to first token, total time)
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        body = json.dumps({"model": "m", "stream": True, "max_tokens": 16, "temperature": 0,
                           "messages": [{"role": "user", "content": prompt}]})
        start = time.perf_counter()
        c.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
        r = c.getresponse()
        first = None
        for line in r:
            if first is None and b'"content"' in line:
                first = time.perf_counter() - start
            if line.startswith(b"data: [DONE]"):
                break
        return start + first, first, time.perf_counter() - start

    try:
        while not answers():
            time.sleep(0.05)
        ready = time.perf_counter() - t0
        first_at, _, _ = ttft(%(first)r)
        _, ttft2, total2 = ttft(%(second)r)
    finally:
        proc.kill(); proc.wait()
    print(json.dumps({"first_token": first_at - t0, "ttft2": ttft2, "total2": total2,
                      "ready": ready}))
    """
) % {"first": FIRST, "second": SECOND}


def _run(code: str, *args: str) -> dict[str, float | str]:
    env = {k: v for k, v in os.environ.items() if k not in ("OPENAI_API_KEY", "OPENAI_BASE_URL")}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, timeout=300
    )
    if out.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _row(name: str, results: list[dict[str, float | str]]) -> str:
    def med(key: str) -> str:
        values = [float(r[key]) for r in results]
        spread = f" ({min(values):.2f}–{max(values):.2f})" if len(values) > 1 else ""
        return f"{statistics.median(values):6.2f} s{spread}"

    has_ready = all(r.get("ready") is not None for r in results)
    ready = med("ready") if has_ready else f"{'n/a':>8}"
    return f"{name:<38} {ready:<22} {med('first_token'):<22} {med('ttft2'):<22} {med('total2')}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from ipychat.engine import local

    model = local.model_path()
    if model is None or not local.available():
        raise SystemExit(local.NOT_CONFIGURED)

    _run(_IPYCHAT)  # warms the page cache; not counted
    raw, ours = [], []
    for _ in range(args.runs):  # interleaved, so machine load hits both alike
        raw.append(_run(_RAW, str(model)))
        ours.append(_run(_IPYCHAT))

    print(f"model {model.name}, {args.runs} fresh interpreters each, median (min–max)")
    heads = ("server answers", "1st token", "2nd request TTFT")
    print(f"{'from start / load_ext to:':<38}", *(f"{h:<22}" for h in heads), "2nd request total")
    print(_row("baseline: bare llama_cpp.server", raw))
    print(_row("ipychat: %load_ext → ask", ours))


if __name__ == "__main__":
    main()
