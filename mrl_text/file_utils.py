"""Small file helpers shared by the evaluation reports, model cards and indexes."""

import contextlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path


def write_atomic(path, data):
    """Write `data` (str or bytes) to `path` through a temp file and a rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(data.encode("utf-8") if isinstance(data, str) else data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)  # mkstemp makes private files; a report is an ordinary file
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise


def parked_folder(path):
    """Where `replace_folder` keeps the folder it replaces until the new one is in place."""
    path = Path(path)
    return path.parent / f".{path.name}.previous"


@contextlib.contextmanager
def staged_folder(path):
    """Yield a new empty folder beside `path` to write into; when the block succeeds it replaces `path` (see
    `replace_folder`), and when it fails `path` is left as it was. The staging folder never stays behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.parent / f".{path.name}.saving-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        replace_folder(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def replace_folder(staging, path):
    """Move the finished folder `staging` to `path`. Between the two renames the older folder is whole in its parking
    folder (`parked_folder`), and a failed second rename moves it back: `path` never holds a half-written folder."""
    path = Path(path)
    previous = parked_folder(path)
    if path.exists():
        shutil.rmtree(previous, ignore_errors=True)  # left by a save that stopped between its renames
        os.rename(path, previous)
    try:
        os.rename(staging, path)
    except BaseException:
        if previous.exists() and not path.exists():
            os.rename(previous, path)
        raise
    # A memory-mapped reader keeps reading the parked file until it maps the new one (POSIX keeps unlinked files).
    shutil.rmtree(previous, ignore_errors=True)


__all__ = ["parked_folder", "replace_folder", "staged_folder", "write_atomic"]
