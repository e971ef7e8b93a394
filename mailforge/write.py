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


def manifest(tree: Tree, cluster: str) -> dict:
    """Per host, every file with its sha256, mode, owner and the action a change to it needs."""
    digests: dict[int, str] = {}  # relays share one big recipients text: hash it once
    hosts = {}
    for host, files in sorted(tree.items()):
        entries = {}
        for path, rendered in sorted(files.items()):
            key = id(rendered.text)
            if key not in digests:
                digests[key] = hashlib.sha256(rendered.text.encode("utf-8")).hexdigest()
            entries[path] = rendered.manifest_entry(digests[key])
        hosts[host] = {"files": entries}
    return {"manifest_version": MANIFEST_VERSION, "cluster": cluster, "hosts": hosts}


def manifest_text(tree: Tree, cluster: str) -> str:
    return json.dumps(manifest(tree, cluster), indent=2, sort_keys=True) + "\n"


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
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror}") from None
    try:
        for host, files in tree.items():
            for path, rendered in files.items():
                target = staging / host / path.lstrip("/")
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(rendered.text.encode("utf-8"))
                target.chmod(int(rendered.mode, 8))
        result = manifest(tree, cluster)
        (staging / MANIFEST).write_text(json.dumps(result, indent=2, sort_keys=True) + "\n", encoding="utf-8")
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
