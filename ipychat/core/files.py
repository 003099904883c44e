"""Files only this user can read or change: ipychat's cache directory and what is in it.

Used by `cache` (the reply cache), `local` (the local server's log and model digests) and
`batch` (the batch registry). Replies, batch ids and logs can hold private data, and a
row or file planted by someone else could feed the user false replies or make ipychat
read or delete files elsewhere. So, as ssh does with ~/.ssh:

- `private_directory` uses a directory only when, after following symlinks, it belongs
  to this user and neither its group nor others can write to it (a group-writable one is
  accepted when that group is the user's private group, i.e. its only member is the
  user, as Debian's OpenSSH does: Ubuntu's default umask 002 makes every folder a user
  creates group-writable that way), and no folder above it
  can be changed by another user (owned by someone other than this user or root, or
  writable by everyone without the sticky bit, as /tmp has). Group-writable folders
  *above* it are accepted: Jupyter's docker-stacks make every home group-writable, and
  the directory itself (0700) is what keeps others out. Anything else raises
  `UnsafeDirectory`, whose text is one line saying why and what to do.
- Files inside are reached without following a symlink at any step (each folder is
  opened with O_NOFOLLOW relative to its parent) and must be regular files: a FIFO would
  block a read forever, a link could point anywhere. Names are relative, without `..`.
- What is created is 0700 (folders) and 0600 (files) whatever the umask: the mode is set
  with fchmod after creation, not left to the umask.

POSIX only for owners and modes (Windows has neither; there the checks are skipped and
symlinks are still refused).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import threading
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "UnsafeDirectory",
    "UnsafeEntry",
    "open_private",
    "private_directory",
    "private_subdirectory",
    "read_private",
    "remove_private",
    "write_new",
    "write_replace",
]

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_POSIX = os.name == "posix"
_DIR_FD = _POSIX and os.open in os.supports_dir_fd and os.mkdir in os.supports_dir_fd


class UnsafeDirectory(Exception):
    """A directory ipychat will not use. `str()` is one line: why, and how to fix it."""


class UnsafeEntry(OSError):
    """A name inside a private directory that is not a plain file in it (link, FIFO, ..)."""


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _private_group(gid: int, uid: int) -> bool:
    """True when `uid` is the only member of group `gid` (primary or supplementary), the
    rule of Debian's OpenSSH `secure_permissions`."""
    try:
        import grp
        import pwd

        group = grp.getgrgid(gid)
        me = pwd.getpwuid(uid)
        primary = [p.pw_uid for p in pwd.getpwall() if p.pw_gid == gid]
    except (ImportError, KeyError):
        return False
    if any(member != uid for member in primary):
        return False
    if any(member != me.pw_name for member in group.gr_mem):
        return False
    return bool(primary or group.gr_mem)


def _unsafe_reason(real: Path, shown: str) -> str | None:
    """Why the existing directory `real` (no symlinks in it) cannot be trusted, or None."""
    st = os.stat(real)
    if not stat.S_ISDIR(st.st_mode):
        return f"{shown} is not a folder; delete it or set IPYCHAT_CACHE_DIR to a folder."
    if not _POSIX:
        return None
    me = os.geteuid()
    if st.st_uid != me:
        return (
            f"{shown} belongs to {_user(st.st_uid)}, not to you ({_user(me)}); set "
            "IPYCHAT_CACHE_DIR to a folder of your own."
        )
    if st.st_mode & 0o002 or (st.st_mode & 0o020 and not _private_group(st.st_gid, me)):
        who = "everyone" if st.st_mode & 0o002 else "its group"
        return (
            f"{shown} can be written by {who} (mode {stat.S_IMODE(st.st_mode):04o}); run "
            f"chmod 700 {real} (and delete what you did not put there) or set "
            "IPYCHAT_CACHE_DIR to another folder."
        )
    for parent in real.parents:
        pst = os.stat(parent)
        if pst.st_uid not in (0, me):
            return (
                f"{shown} is inside {parent}, which belongs to {_user(pst.st_uid)}, who could "
                "replace it; set IPYCHAT_CACHE_DIR to a folder of your own."
            )
        if pst.st_mode & 0o002 and not pst.st_mode & stat.S_ISVTX:
            return (
                f"{shown} is inside {parent}, which everyone can write to (mode "
                f"{stat.S_IMODE(pst.st_mode):04o}); set IPYCHAT_CACHE_DIR to a folder of your own."
            )
    return None


def private_directory(path: str | os.PathLike[str]) -> Path:
    """`path` with symlinks resolved, created (0700) if missing, after the checks above.

    Raises UnsafeDirectory (one line) if it is not safe to use, OSError if it cannot be
    created. The caller must use the returned real path from then on, so a symlink swapped
    after the check changes nothing.
    """
    path = Path(path).expanduser()
    real = Path(os.path.realpath(path))  # a symlink to a folder not made yet: make that one
    missing = [real, *(p for p in real.parents if not os.path.lexists(p))][::-1]
    for folder in missing if not os.path.lexists(real) else ():
        # Folders we make are 0700 whatever the umask (under umask 0, 0777 would then be
        # refused as a folder everyone can write to).
        with contextlib.suppress(FileExistsError):  # another kernel made it meanwhile
            os.mkdir(folder, 0o700)
            _exact_mode(folder, 0o700)
    shown = str(path) if real == path else f"{path} (→ {real})"
    reason = _unsafe_reason(real, f"The folder {shown}")
    if reason is not None:
        raise UnsafeDirectory(reason)
    return real


def private_subdirectory(root: Path, name: str) -> Path:
    """`root/name` as a private folder (created 0700): not a link, ours, only ours."""
    _check_name(name)
    sub = root / name
    with contextlib.suppress(FileExistsError):
        os.mkdir(sub, 0o700)
        _exact_mode(sub, 0o700)
    st = os.lstat(sub)
    reason = None
    if not stat.S_ISDIR(st.st_mode):
        reason = f"{sub} is not a folder (a link or a file); delete it."
    elif _POSIX and st.st_uid != os.geteuid():
        reason = f"{sub} belongs to {_user(st.st_uid)}, not to you; delete it."
    elif _POSIX and st.st_mode & 0o077:
        _exact_mode(sub, 0o700)
    if reason is not None:
        raise UnsafeDirectory(reason)
    return sub


def _exact_mode(path: Path, mode: int) -> None:
    """chmod without following a symlink (mkdir's mode went through the umask)."""
    fd = os.open(path, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC)
    try:
        if _POSIX:
            os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _check_name(relative: str) -> list[str]:
    """The parts of a relative name; ValueError if absolute, empty or with `..`/`.`."""
    seps = [os.sep] + ([os.altsep] if os.altsep else [])
    if not relative or os.path.isabs(relative) or any(relative.startswith(s) for s in seps):
        raise UnsafeEntry(f"{relative!r} is not a relative name")
    parts = [relative]
    for sep in seps:
        parts = [p for part in parts for p in part.split(sep)]
    if any(p in ("", ".", "..") or "\0" in p for p in parts):
        raise UnsafeEntry(f"{relative!r} leaves its folder")
    return parts


@contextlib.contextmanager
def _parent_fd(root: Path, parts: list[str], *, create: bool = False) -> Iterator[int]:
    """A descriptor of the folder holding `parts[-1]`, reached without following links."""
    fd = os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)
    try:
        for part in parts[:-1]:
            if create:
                try:
                    os.mkdir(part, 0o700, dir_fd=fd)
                    made = True
                except FileExistsError:
                    made = False
            sub = os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = sub
            if create and made:
                os.fchmod(fd, 0o700)
        yield fd
    finally:
        os.close(fd)


def open_private(root: Path, relative: str) -> int:
    """A read-only descriptor of the regular file `root/relative`, never following a link.

    UnsafeEntry when the name leaves `root` or is not a regular file (a FIFO is opened
    non-blocking and refused, so a read never hangs); FileNotFoundError when missing.
    """
    parts = _check_name(relative)
    if not _DIR_FD:  # Windows: no dir_fd; refuse links on the way, then open
        path = root
        for part in parts:
            path = path / part
            if os.path.islink(path):
                raise UnsafeEntry(f"{relative!r} is a link")
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_BINARY", 0))
    else:
        try:
            with _parent_fd(root, parts) as parent:
                # lstat first: opening a device node can have effects of its own.
                if not stat.S_ISREG(
                    os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode
                ):
                    raise UnsafeEntry(f"{relative!r} is not a regular file")
                fd = os.open(
                    parts[-1], os.O_RDONLY | _NOFOLLOW | _NONBLOCK | _CLOEXEC, dir_fd=parent
                )
        except OSError as exc:
            if isinstance(exc, (UnsafeEntry, FileNotFoundError)):
                raise
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeEntry(f"{relative!r} goes through a link") from None
            raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # swapped between lstat and open
        os.close(fd)
        raise UnsafeEntry(f"{relative!r} is not a regular file")
    return fd


def read_private(root: Path, relative: str, limit: int) -> bytes:
    """The bytes of the regular file `root/relative`; UnsafeEntry if above `limit` bytes."""
    fd = open_private(root, relative)
    with os.fdopen(fd, "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise UnsafeEntry(f"{relative!r} is larger than {limit} bytes")
    return data


def _create(parent: int, name: str, flags: int) -> int:
    fd = os.open(name, flags | os.O_CREAT | _NOFOLLOW | _CLOEXEC, 0o600, dir_fd=parent)
    try:
        if _POSIX:
            os.fchmod(fd, 0o600)  # O_CREAT's mode went through the umask
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_new(root: Path, relative: str, data: bytes) -> None:
    """Create `root/relative` (0600; folders on the way 0700) holding `data`; never replaces.

    Retries a few times when another process removes an emptied folder on the way (as
    diskcache's own writer does).
    """
    parts = _check_name(relative)
    if not _DIR_FD:
        path = root.joinpath(*parts)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as f:
            f.write(data)
        return
    for attempt in range(10):
        try:
            with _parent_fd(root, parts, create=True) as parent:
                fd = _create(parent, parts[-1], os.O_WRONLY | os.O_EXCL)
            break
        except FileNotFoundError:
            if attempt == 9:
                raise
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def write_replace(root: Path, relative: str, data: bytes) -> None:
    """Replace `root/relative` atomically (a reader never sees half a file), mode 0600."""
    parts = _check_name(relative)
    temp = f".{parts[-1]}.{os.getpid()}.{threading.get_ident()}.tmp"
    if not _DIR_FD:
        path = root.joinpath(*parts)
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        with open(path.with_name(temp), "wb") as f:
            f.write(data)
        os.replace(path.with_name(temp), path)
        return
    with _parent_fd(root, parts, create=True) as parent:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=parent)  # left by a crash of this very thread id
        fd = _create(parent, temp, os.O_WRONLY | os.O_EXCL)
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
            os.replace(temp, parts[-1], src_dir_fd=parent, dst_dir_fd=parent)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=parent)
            raise


def remove_private(root: Path, relative: str, *, prune: int = 0) -> bool:
    """Delete the regular file `root/relative` (nothing else: not a link, not outside
    `root`), then up to `prune` of the folders that held it if they are now empty.
    True if a file was removed; never raises for a missing or refused name."""
    try:
        parts = _check_name(relative)
        if not _DIR_FD:
            fd = open_private(root, relative)
            os.close(fd)
            os.remove(root.joinpath(*parts))
            return True
        removed = False
        fds = [os.open(root, os.O_RDONLY | _DIRECTORY | _CLOEXEC)]
        try:
            for part in parts[:-1]:
                fds.append(
                    os.open(part, os.O_RDONLY | _DIRECTORY | _NOFOLLOW | _CLOEXEC, dir_fd=fds[-1])
                )
            st = os.stat(parts[-1], dir_fd=fds[-1], follow_symlinks=False)
            if stat.S_ISREG(st.st_mode):
                os.unlink(parts[-1], dir_fd=fds[-1])
                removed = True
            # Empty folders on the way, innermost first; rmdir refuses non-empty ones.
            for depth in range(len(parts) - 1, max(0, len(parts) - 1 - prune), -1):
                os.rmdir(parts[depth - 1], dir_fd=fds[depth - 1])
        except OSError:
            pass
        finally:
            for fd in fds:
                os.close(fd)
        return removed
    except OSError:
        return False
