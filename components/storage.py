"""Files on any filesystem TensorFlow knows (local disk, gs://, s3:// with tensorflow-io, hdfs://, ram://).

Layer: bottom of the components. Shared by ingestion's executor, the Pusher,
the serving check and the Trainer's export and embedding cache. Imports
_tf().io.gfile and serving.contract only.

Paths are plain strings: `pathlib.Path("gs://b/m")` turns into "gs:/b/m", so
nothing here takes or returns a Path.

Two kinds of filesystem, decided by the path's scheme:

- `renames_folders`: local disk and HDFS rename a folder in one atomic step,
  which is what the Pusher's publish and retention rely on.
- everything else is treated as an object store (gs://, s3://, and TensorFlow's
  in-memory ram://, whose "rename" of a folder moves the folder's name but not
  the files inside it). A single object appears only once it is complete, so a
  file written in one call is still all-or-nothing there; a folder is not.

Local writes are durable (fsync, through serving.contract); other filesystems
give no fsync and are durable once a write returns.
"""
from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

from serving.contract import fsync_dir as _fsync_local_dir
from serving.contract import write_atomic as _write_atomic_local
from serving.contract import write_synced as _write_synced_local



def _tf():
    # NOTE: imported on first use: `signflow rollback` and `signflow versions` on a local folder with
    # nothing to read would otherwise pay TensorFlow's start-up (seconds, and its log lines on stderr).
    import tensorflow as tf

    return tf


def __getattr__(name: str):
    # StorageError: what _tf().io.gfile raises (NotFoundError, PermissionDeniedError, ...); not an OSError.
    # Looked up only when an except clause names it, i.e. after an error, when TensorFlow is loaded anyway.
    if name == "StorageError":
        return _tf().errors.OpError
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Schemes whose folder rename is atomic. Any other scheme gets the object-store
# treatment, which is correct (if slower) everywhere.
FOLDER_RENAME_SCHEMES = frozenset({"", "file", "hdfs", "viewfs"})


def scheme(path: str) -> str:
    """"gs" for "gs://bucket/x", "" for a local path."""
    head, sep, _ = str(path).partition("://")
    return head.lower() if sep and "/" not in head else ""


def is_local(path: str) -> bool:
    return scheme(path) in ("", "file")


def renames_folders(path: str) -> bool:
    """Whether renaming a folder under `path` is one atomic step (see the module docstring)."""
    return scheme(path) in FOLDER_RENAME_SCHEMES


def local_path(path: str) -> str:
    """`path` without a file:// prefix, for the os calls that only local disks need (fsync, flock)."""
    return path[len("file://"):] if str(path).startswith("file://") else path


def join(*parts: str) -> str:
    return os.path.join(*(str(part) for part in parts))


def exists(path: str) -> bool:
    return _tf().io.gfile.exists(path)


def isdir(path: str) -> bool:
    return _tf().io.gfile.isdir(path)


def listdir(path: str) -> list[str]:
    """Child names of folder `path`, sorted; [] if it does not exist. Object stores' trailing "/" is dropped."""
    try:
        names = _tf().io.gfile.listdir(path)
    except _tf().errors.NotFoundError:
        return []
    return sorted(_real(path, {name.rstrip("/") for name in names}))


def walk(path: str) -> Iterator[tuple[str, list[str], list[str]]]:
    """(folder, sub-folder names, file names) top-down, names sorted; a caller may prune the sub-folder list."""
    for folder, dirs, files in _tf().io.gfile.walk(path):
        dirs[:] = sorted(d.rstrip("/") for d in dirs)
        yield folder, dirs, sorted(_real(folder, set(files)))


def _real(folder: str, names: set[str]) -> set[str]:
    # NOTE: ram:// lists a folder by name prefix: "assets" also lists ".extra" from
    # its sibling "assets.extra". Such names do not exist; other filesystems list
    # by "<folder>/" and need no check.
    if scheme(folder) != "ram":
        return names
    return {name for name in names if exists(join(folder, name))}


def makedirs(path: str) -> None:
    _tf().io.gfile.makedirs(path)


def remove(path: str) -> None:
    _tf().io.gfile.remove(path)


def rmtree(path: str) -> None:
    """Delete folder `path` and everything under it; a missing folder is not an error."""
    try:
        _tf().io.gfile.rmtree(path)
    except _tf().errors.NotFoundError:
        pass


def rename(source: str, target: str) -> None:
    """Rename a file, or a folder where `renames_folders`; fails if `target` exists."""
    _tf().io.gfile.rename(source, target, overwrite=False)


def read_bytes(path: str) -> bytes:
    with _tf().io.gfile.GFile(path, "rb") as f:
        return f.read()


def read_text(path: str) -> str:
    return read_bytes(path).decode("utf-8")


def read_lines(path: str) -> list[str]:
    """The non-blank lines of a UTF-8 text file, split at "\\n" only; [] if it does not exist.

    Not str.splitlines: JSON text written with ensure_ascii=False may hold U+2028
    or a lone "\\r" inside a string, which splitlines would cut in two.
    """
    if not exists(path):
        return []
    return [line for line in read_text(path).split("\n") if line.strip()]


def write(path: str, data: bytes | str) -> None:
    """Create or replace `path` (not atomic on its own: use write_atomic for a file readers may see mid-write)."""
    if scheme(path) == "ram" and exists(path):
        # NOTE: ram:// appends to an existing file instead of replacing it.
        remove(path)
    with _tf().io.gfile.GFile(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def write_atomic(path: str, data: bytes | str) -> None:
    """Create or replace `path` so readers see the old file or the whole new one; creates its folder.

    Local disk: serving.contract.write_atomic (temporary file, fsync, rename,
    fsync of the folder). Object stores: one upload, which becomes visible only
    once complete. Other filesystems: a hidden temporary file renamed into place.
    """
    folder = os.path.dirname(str(path))
    if folder:
        makedirs(folder)
    if is_local(path):
        _write_atomic_local(local_path(path), data)
    elif not renames_folders(path):
        write(path, data)
    else:
        temporary = join(folder, f".{os.path.basename(path)}.{secrets.token_hex(4)}.tmp")
        write(temporary, data)
        _tf().io.gfile.rename(temporary, path, overwrite=True)


def create_exclusively(path: str, data: bytes | str) -> bool:
    """Create `path` with `data` only if it does not exist yet; False if it does.

    On local disk this is O_EXCL (two processes cannot both win). Object stores
    have no such primitive through _tf().io.gfile: there it is a check then a
    write, so only one writer may use the folder at a time.
    """
    if is_local(path):
        try:
            _write_synced_local(local_path(path), data, exclusive=True)
        except FileExistsError:
            return False
        fsync_dir(os.path.dirname(str(path)))
        return True
    if exists(path):
        return False
    write(path, data)
    return True


def copy_file(source: str, target: str) -> None:
    """Copy one file (any filesystem to any filesystem); a local target is fsynced."""
    _tf().io.gfile.copy(source, target, overwrite=True)
    if is_local(target):
        fd = os.open(local_path(target), os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_dir(path: str) -> None:
    """Make new entries and renames in a local folder durable; nothing to do elsewhere."""
    if is_local(path):
        _fsync_local_dir(local_path(path) or ".")
