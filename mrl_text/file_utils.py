"""Small file helpers shared by the evaluation reports, model cards and indexes."""

import contextlib
import os
import re
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
def staged_folder(path, kind="saving"):
    """Yield a new empty folder beside `path` to write into; when the block succeeds it replaces `path` (see
    `replace_folder`), and when it fails `path` is left as it was. The staging folder never stays behind: one that a
    killed process left (`.NAME.KIND-PID-XXXXXXXX`, its process gone) is removed by the next write of `path`.

    The folder and its files get ordinary permissions (the umask's; not the 0700 of `tempfile.mkdtemp` nor the 0600
    of the temporary files transformers writes weights through): other users and containers read what they are
    given."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_staging(path, kind)
    staging = path.parent / f".{path.name}.{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir()
    try:
        yield staging
        give_standard_permissions(staging)
        replace_folder(staging, path)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def give_standard_permissions(folder):
    """Set what `mkdir` and `open` give under the current umask on `folder` and everything in it: folders (and files
    with an executable bit) 0777 & ~umask, files 0666 & ~umask."""
    umask = os.umask(0)
    os.umask(umask)
    for root, _dirs, files in os.walk(folder):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            file = os.path.join(root, name)
            if not os.path.islink(file):
                executable = os.stat(file).st_mode & 0o111
                os.chmod(file, (0o777 if executable else 0o666) & ~umask)


def remove_stale_staging(path, kind="saving"):
    """Remove the staging folders of `path` (see `staged_folder`) whose writing process no longer runs; a folder
    without a process id (`tempfile.mkdtemp`'s `.NAME.KIND-XXXXXXXX`, written by earlier releases) is stale too.
    Returns the removed paths."""
    path = Path(path)
    pattern = re.compile(rf"\.{re.escape(path.name)}\.{re.escape(kind)}-(?:(\d+)-)?[A-Za-z0-9_]+")
    removed = []
    for candidate in path.parent.glob(f".{path.name}.{kind}-*"):
        match = pattern.fullmatch(candidate.name)
        if match is None or not candidate.is_dir() or (match.group(1) and process_running(int(match.group(1)))):
            continue
        shutil.rmtree(candidate, ignore_errors=True)
        removed.append(candidate)
    return removed


def process_running(pid):
    """Whether process `pid` exists on this machine (one that belongs to another user counts as running)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


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


__all__ = [
    "give_standard_permissions",
    "parked_folder",
    "remove_stale_staging",
    "replace_folder",
    "staged_folder",
    "write_atomic",
]
