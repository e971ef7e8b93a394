"""Put a rendered tree on disk as OUT/<host>/<path> plus OUT/manifest.json, atomically.

Everything is written into a temporary directory beside OUT and swapped in
with one rename, so a failed render leaves the previous OUT exactly as it was.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from .errors import OutputError
from .render import Tree

MANIFEST = "manifest.json"
MANIFEST_VERSION = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100


def _digest(rendered, digests: dict[int, str]) -> str:
    """sha256 of a file's bytes; relays share one big recipients content, so each is hashed once."""
    key = id(rendered.content)
    if key not in digests:
        hasher = hashlib.sha256()
        for piece in rendered.pieces():
            hasher.update(piece.encode("utf-8"))
        digests[key] = hasher.hexdigest()
    return digests[key]


def manifest(tree: Tree, cluster: str, digests: dict[int, str] | None = None) -> dict:
    """Per host, every file with its sha256, mode, owner and the action a change to it needs."""
    digests = {} if digests is None else digests
    hosts = {}
    for host, files in sorted(tree.items()):
        hosts[host] = {"files": {path: rendered.manifest_entry(_digest(rendered, digests)) for path, rendered in sorted(files.items())}}
    return {"manifest_version": MANIFEST_VERSION, "cluster": cluster, "hosts": hosts}


def write_file(target: Path, rendered, digests: dict[int, str] | None) -> None:
    """Write one rendered file piece by piece, hashing it on the way for the manifest (unless digests is None).

    For a file made of Pieces (a big map) the hash runs in a second thread while the
    pieces are made and written (hashlib releases the GIL), so hashing costs little extra.
    """
    key = id(rendered.content)
    hasher = hashlib.sha256() if digests is not None and key not in digests else None
    background = hasher is not None and not isinstance(rendered.content, str)
    if background:
        import queue
        import threading

        chunks: queue.SimpleQueue = queue.SimpleQueue()
        assert hasher is not None  # background implies a hasher

        def consume() -> None:  # hashlib raises nothing on bytes: no error can be lost in this thread
            for data in iter(chunks.get, None):
                hasher.update(data)

        worker = threading.Thread(target=consume, name="mailforge-sha256", daemon=True)
        worker.start()
    try:
        with target.open("wb") as handle:
            for piece in rendered.pieces():
                data = piece.encode("utf-8")
                if background:
                    chunks.put(data)
                elif hasher:
                    hasher.update(data)
                handle.write(data)
    finally:
        if background:
            chunks.put(None)
            worker.join()
    if hasher:
        assert digests is not None  # a hasher is made only with digests
        digests[key] = hasher.hexdigest()


def manifest_text(result: dict) -> str:
    """manifest.json as written: sorted keys, so the same tree gives the same bytes."""
    return json.dumps(result, indent=2, sort_keys=True) + "\n"


def _exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2); False where the system cannot."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    if ctypes.get_errno() in (errno.ENOSYS, errno.EINVAL):
        return False
    raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()), str(a))


def _check_replaceable(out: Path) -> None:
    if not out.exists():
        return
    if not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory; choose another output path")
    if any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise OutputError(f"{out} holds files that mailforge did not render (no {MANIFEST}); refusing to replace it. Choose an empty or new directory")


def write_tree(tree: Tree, cluster: str, out: Path) -> dict:
    """Write `tree` to `out` atomically and return its manifest."""
    out = Path(out).absolute()
    _check_replaceable(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except (FileExistsError, NotADirectoryError):
        raise OutputError(f"cannot create {out}: a parent of it is a file, not a directory") from None
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}") from None
    try:
        digests: dict[int, str] = {}
        for host, files in tree.items():
            for path, rendered in files.items():
                target = staging / host / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                write_file(target, rendered, digests)
                target.chmod(int(rendered.mode, 8))
        result = manifest(tree, cluster, digests)
        (staging / MANIFEST).write_text(manifest_text(result), encoding="utf-8")
        staging.chmod(0o755)
        if out.exists():
            if not _exchange(staging, out):
                retired = Path(tempfile.mkdtemp(prefix=f".{out.name}.old.", dir=out.parent))
                os.rename(out, retired / "tree")
                os.rename(staging, out)
                staging = retired
            shutil.rmtree(staging, ignore_errors=True)
        else:
            os.rename(staging, out)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise OutputError(f"cannot write {out}: {exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return result


def write_atomically(target: Path, data: bytes) -> None:
    """Write one file so that a reader sees the old file or the new one, never half of it (a temporary file in
    the same directory, then rename); raises OutputError with the reason."""
    target = Path(target)
    if not target.parent.is_dir():
        raise OutputError(f"cannot write {target}: the directory {target.parent} does not exist")
    try:
        fd, temporary = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(temporary, 0o644)
            os.replace(temporary, target)
        except BaseException:
            Path(temporary).unlink(missing_ok=True)
            raise
    except OSError as exc:
        raise OutputError(f"cannot write {target}: {exc.strerror or exc}") from None
