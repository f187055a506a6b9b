"""The ground floor: where labkit keeps what it builds (the cache folder), atomic writes and sha256 of files.

`data`, `assets`, `model` and `checkpoint` all write here; nothing in this module imports the rest of labkit but
its settings. The cache is meant to be shared by a class, so what labkit writes is readable by everyone (files 0644,
folders 0755) whatever the umask; a cache `share(group)` made group-writable (setgid folders) stays so
(0664/2775).
"""

from __future__ import annotations

import grp
import hashlib
import os
import pwd
import stat
import tempfile
from pathlib import Path

from labkit.core import settings

MODES = (0o644, 0o755)  # (file, folder): readable by every learner's kernel
GROUP_MODES = (0o664, 0o2775)  # the same, writable by the group; setgid folders pass the group on


def cache_dir() -> Path:
    """Where trained models and cached sweeps live: $LABKIT_CACHE, else ~/.cache/labkit; a PermissionError when
    a folder on the way is closed to this user (nothing could be read or written there)."""
    folder = settings.cache_path()
    closed = unreachable(folder)
    if closed:
        raise PermissionError(f"LABKIT_CACHE={folder}: {closed}. Point LABKIT_CACHE at a folder every learner can "
                              "reach (`python -m labkit prepare` makes the cache readable by all).")
    return folder


def unreachable(path: Path) -> str | None:
    """Why this user cannot reach `path` (a folder on the way it may not enter), or None when it can."""
    for parent in reversed(path.parents):
        if not os.path.isdir(parent):
            return None  # missing from here on: creating it is what the caller will try, and say
        if not os.access(parent, os.X_OK):
            return f"{parent} is closed to user {_user()} ({describe(parent)})"
    return None


def describe(path: Path) -> str:
    """`path`'s mode and owner, for a message: 'mode 0600, owner alice, group staff'."""
    st = path.stat()
    return f"mode {stat.S_IMODE(st.st_mode):04o}, owner {_name(pwd.getpwuid, st.st_uid)}, " \
           f"group {_name(grp.getgrgid, st.st_gid)}"


def _name(lookup, number: int) -> str:
    try:
        return lookup(number)[0]
    except KeyError:  # an id with no name here (a container's volume)
        return str(number)


def _user() -> str:
    return _name(pwd.getpwuid, os.getuid())


def unreadable(path: Path) -> str | None:
    """Why this user cannot read `path` (naming its mode and owner), or None when it can."""
    closed = unreachable(path)
    if closed:
        return f"{path} cannot be reached: {closed}"
    want = os.R_OK | (os.X_OK if path.is_dir() else 0)
    if not os.path.exists(path) or os.access(path, want):
        return None
    return f"{path} cannot be read by user {_user()} ({describe(path)})"


def read_only_reason() -> str | None:
    """Why labkit may not write the cache, or None when it may."""
    if settings.cache_readonly():
        return "LABKIT_CACHE_READONLY is set"
    root = folder = cache_dir()
    while not os.path.exists(folder) and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir():
        where = "" if folder == root else f" ({folder}, on the way to it)"
        return f"LABKIT_CACHE={root} is a file{where}: point it at a folder"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"{folder} cannot be written by user {_user()} ({describe(folder)})"
    return None


def cache_writable() -> bool:
    """False for a shared, prepared cache (LABKIT_CACHE_READONLY=1, a folder this user cannot write) or a file."""
    return read_only_reason() is None


def check_writable(holds_no: str, fix: str) -> None:
    """Nothing when the cache can be written; else a ValueError saying why, that it `holds_no` ..., and `fix`."""
    reason = read_only_reason()
    if reason is None:
        return
    if reason.startswith("LABKIT_CACHE="):  # a setting to correct, not a shared cache to ask about
        raise ValueError(f"{reason} (or unset LABKIT_CACHE for ~/.cache/labkit); nothing was written.")
    raise ValueError(f"The cache {cache_dir()} is read-only ({reason}) and holds no {holds_no}. {fix}")


def modes() -> tuple[int, int]:
    """(file mode, folder mode) for what labkit writes into the cache: GROUP_MODES where `share(group)` made
    the cache group-writable, else MODES."""
    try:
        st = cache_dir().stat()
    except OSError:
        return MODES
    return GROUP_MODES if st.st_mode & stat.S_ISGID and st.st_mode & stat.S_IWGRP else MODES


def make_dirs(folder: Path) -> None:
    """Create `folder` and its missing parents with the cache's folder mode; existing folders stay as they are."""
    missing = []
    while not folder.exists() and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    if not folder.is_dir():
        raise NotADirectoryError(f"{folder} is a file, so {missing[-1] if missing else folder} cannot be a folder: "
                                 "point LABKIT_CACHE (or the path you gave) at a folder.")
    mode = modes()[1]
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:  # another process made it meanwhile
            continue
        os.chmod(new, mode)  # mkdir applies the umask; the class needs to read it whatever that is


def share_tree(top: Path) -> None:
    """Give `top` and everything under it the cache's modes (for files a library wrote, e.g. save_pretrained)."""
    file_mode, dir_mode = modes()
    for path in [top, *top.rglob("*")]:
        if not path.is_symlink():
            os.chmod(path, dir_mode if path.is_dir() else file_mode)


def share(group: str | None = None) -> list[str]:
    """Give the whole cache its modes (`modes()`: readable by everyone), or with `group` make it that group's and
    group-writable with setgid folders (GROUP_MODES); returns what could not be changed, one line each."""
    root = cache_dir()
    if not root.is_dir():
        raise FileNotFoundError(f"No cache folder {root}: run `python -m labkit prepare` first.")
    gid = -1 if group is None else group_id(group)
    file_mode, dir_mode = GROUP_MODES if group is not None else modes()
    failed = []
    for path in [root, *root.rglob("*")]:
        if path.is_symlink():
            continue
        try:
            if gid != -1:
                os.chown(path, -1, gid)
            os.chmod(path, dir_mode if path.is_dir() else file_mode)
        except PermissionError:
            failed.append(f"{path} ({describe(path)})")
    return failed


def group_id(group: str) -> int:
    """The id of the group named `group`; a ValueError saying how to make it where there is none."""
    if not isinstance(group, str) or not group.strip():
        raise ValueError(f"group {group!r}: name a group of this machine (`getent group` lists them).")
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ValueError(f"No group {group!r} on this machine: create it (groupadd {group}) or name one that "
                         "`getent group` lists.") from None


def atomic_write_bytes(path: Path, payload: bytes) -> None:
    """Write to a temporary file beside `path`, fsync, then rename: readers see all or nothing. The file gets the
    cache's file mode (0644, or 0664 in a group cache), not mkstemp's 0600."""
    make_dirs(path.parent)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), modes()[0])
            f.write(payload)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    """sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def tree_sha256(files: dict[str, bytes]) -> str:
    """sha256 over files given as {relative path: bytes}, in sorted path order (path, length and bytes of each)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        payload = files[rel]
        h.update(f"{rel}\0{len(payload)}\0".encode())
        h.update(payload)
    return h.hexdigest()


def read_tree(folder: Path, suffix: str = ".txt") -> dict[str, bytes]:
    """Every `suffix` file under `folder` as {relative path: bytes}, for tree_sha256."""
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob(f"*{suffix}") if p.is_file()}
