"""%%chatmap against a real loopback server whose quota another client shares.

The pacing's model (ipychat.map.ratelimit) is tested on a fake clock in test_ratelimit.py;
this is the same situation in real time, through the real dispatcher and HTTP: a
FakeOpenAIServer enforcing 6,000 RPM over 10 s windows (Azure's), and another client
sending 30 requests a second to it the whole time, as a colleague's notebook on the same
deployment would. The model's tests show the storm a map bursting back to its share at
every refill met (27% of 3,000 rows' requests); this one, shorter (one refill), checks the
real dispatcher keeps a shared quota to a few 429s and no lost row.
"""

from __future__ import annotations

import threading
import time

import httpx
import pandas as pd

from ipychat.map import job as chatmap
from ipychat.testing import FakeOpenAIServer

KEY = "sk-test-shared"


def _other_client(url: str, rate: float, stop: threading.Event) -> int:
    """Chat requests at `rate` a second until `stop` (429s are taken as they come)."""
    sent = 0
    with httpx.Client(base_url=url, headers={"authorization": f"Bearer {KEY}"}) as client:
        start = time.monotonic()
        while not stop.is_set():
            client.post(
                "/chat/completions",
                json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            )
            sent += 1
            time.sleep(max(0.0, start + sent / rate - time.monotonic()))
    return sent


def test_a_map_sharing_a_10s_windows_quota_with_another_client(make_session) -> None:
    with FakeOpenAIServer(rpm=6000, window=10, latency=0.01) as server:
        stop = threading.Event()
        other = threading.Thread(target=_other_client, args=(server.base_url, 30.0, stop))
        other.start()
        try:
            time.sleep(0.5)  # the other client is there first
            session = make_session(server)
            rows = pd.DataFrame({"text": [f"item {i}" for i in range(1300)]})
            result = chatmap.run(session, rows, "{text}", "out")
        finally:
            stop.set()
            other.join()
    summary = result.summary
    assert summary.failed == 0 and result.frame["out"].notna().all()
    # the 10 s test's refusal and what the other client's use costs: a few percent
    assert summary.rate_limited < 0.05 * (1300 + summary.rate_limited)
