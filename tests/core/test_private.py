"""ipychat.core.files (the checks behind the cache directory) and the files that use it
besides the cache: the batch registry. Issue 15's siblings of items 2 and 3."""

from __future__ import annotations

import json
import os
import stat
import threading
import time
from pathlib import Path

import pytest

from ipychat.core import files as _private
from ipychat.core.errors import ConfigError
from ipychat.map import batch
from ipychat.map.batch import BatchJob, Part, Registry, RequestRef

pytestmark = pytest.mark.skipif(os.name != "posix", reason="POSIX owners, modes and FIFOs")

NOBODY = 65534


def job(ident: str = "bm_0123abcd_x") -> BatchJob:
    return BatchJob(
        id=ident,
        fingerprint="0123abcd" * 8,
        created=time.time(),
        endpoint="https://api.openai.com/v1",
        host="api.openai.com",
        frame="df",
        template="{text}",
        outputs=["out"],
        options={"model": "gpt-4o-mini"},
        requests={"row-0": RequestRef(rows=[0], key="k" * 64, part=0)},
        parts=[Part(requests=1, bytes=100, batch_id="batch_1")],
    )


# ----- the batch registry --------------------------------------------------------------------


def test_jobs_are_saved_0600_in_a_0700_folder_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0)
    try:
        registry = Registry(tmp_path / "cache" / "batches")
        registry.save(job())
    finally:
        os.umask(old)
    folder = tmp_path / "cache" / "batches"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / "bm_0123abcd_x.json").stat().st_mode) == 0o600
    assert [p.name for p in folder.iterdir()] == ["bm_0123abcd_x.json"]  # no temp file left
    assert registry.load("bm_0123abcd_x").id == "bm_0123abcd_x"
    assert registry.load("batch_1").id == "bm_0123abcd_x"  # by the provider's batch id


@pytest.mark.parametrize("mode", [0o777, 0o770])
def test_a_cache_folder_others_can_write_is_refused_for_batches(tmp_path: Path, mode: int) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    if os.geteuid() == 0:
        os.chown(cache, -1, NOBODY)  # a group with other members: not a private group
    cache.chmod(mode)
    registry = Registry(cache / "batches")
    for action in (lambda: registry.save(job()), registry.all, lambda: registry.load("bm_x")):
        with pytest.raises(ConfigError) as info:
            action()
        assert "\n" not in str(info.value) and f"chmod 700 {cache}" in str(info.value)
    assert list(cache.iterdir()) == []  # nothing written there


def test_a_cache_folder_of_another_user_is_refused_for_batches(tmp_path: Path) -> None:
    if os.geteuid() != 0:  # pragma: no cover - the suite runs as root here
        pytest.fail("this test needs root to make a folder of another user")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o755)
    os.chown(cache, NOBODY, NOBODY)
    with pytest.raises(ConfigError, match="belongs to"):
        Registry(cache / "batches").save(job())
    assert list(cache.iterdir()) == []


def test_the_session_registry_is_checked_even_with_the_cache_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ipychat.session import ChatSession, Settings

    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    monkeypatch.setenv("IPYCHAT_CACHE_DIR", str(shared))
    session = ChatSession(Settings(base_url="http://127.0.0.1:9/v1"), cache=False)
    with pytest.raises(ConfigError, match="everyone"):
        batch.jobs(session)
    assert list(shared.iterdir()) == []


def test_a_fifo_or_a_link_among_the_jobs_is_skipped_not_read(tmp_path: Path) -> None:
    registry = Registry(tmp_path / "cache" / "batches")
    registry.save(job())
    folder = registry.directory
    os.mkfifo(folder / "bm_fifo.json")
    outside = tmp_path / "elsewhere.json"
    other = job("bm_outside")
    outside.write_text(json.dumps(other.to_dict()))
    (folder / "bm_link.json").symlink_to(outside)
    found: list[list[BatchJob]] = []
    reader = threading.Thread(target=lambda: found.append(registry.all()), daemon=True)
    reader.start()
    reader.join(5)
    if reader.is_alive():  # unblock it before failing
        os.close(os.open(folder / "bm_fifo.json", os.O_WRONLY))
        pytest.fail("listing the batch jobs hangs on a FIFO")
    assert [j.id for j in found[0]] == ["bm_0123abcd_x"]
    for ident in ("bm_fifo", "bm_link"):
        with pytest.raises(ConfigError) as info:
            registry.load(ident)
        assert "\n" not in str(info.value) and f"delete {ident}.json" in str(info.value)


# ----- the helpers ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["/etc/passwd", "../x", "a/../../x", "a//b", "./x", "", "a/\0"])
def test_names_that_leave_the_folder_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(_private.UnsafeEntry):
        _private.read_private(tmp_path, name, 100)
    assert _private.remove_private(tmp_path, name, prune=5) is False


def test_remove_deletes_only_a_regular_file_and_only_emptied_folders_inside(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    (root / "a" / "b").mkdir(parents=True)
    (root / "a" / "b" / "f").write_text("x")
    (root / "a" / "keep").write_text("x")
    assert _private.remove_private(root, "a/b/f", prune=5)
    assert not (root / "a" / "b").exists()  # emptied: pruned
    assert (root / "a" / "keep").exists() and root.is_dir()  # not empty; never above root
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "f").write_text("x")
    (root / "link").symlink_to(outside, target_is_directory=True)
    assert not _private.remove_private(root, "link/f", prune=5)
    assert (outside / "f").exists()


def test_write_new_never_replaces_or_follows_a_link(tmp_path: Path) -> None:
    target = tmp_path / "target"
    target.write_text("mine")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "x").symlink_to(target)
    with pytest.raises(FileExistsError):
        _private.write_new(tmp_path / "root", "x", b"theirs")
    assert target.read_text() == "mine"
