"""Where ingestion keeps its files, and how new inbox files become a span.

Layout (every root is a parameter; defaults in `components.ingest.component`):

    <state_dir>/landing/span-<N>/MANIFEST.json    what span N holds, where each file came from, its sha256
    <state_dir>/landing/span-<N>/inbox/<path>     copies of the inbox files of span N
    <state_dir>/landing/span-<N>/sample/<path>    copies of the committed sample files of span N
    <state_dir>/seen/span-<N>.tsv                 "<sha256>\t<label>\t<genuine 1|0>" of every example of span N
    <quarantine_dir>/span-<N>.jsonl               refused records of span N, with reason and location
    <unlabelled_dir>/span-<N>.jsonl               valid images of span N without a label

Restart safety comes from two commit points, each a single rename:

1. Collection copies new files into `landing/.span-<N>.partial/`, writes the
   manifest, and renames the folder to `span-<N>`. The set of files already
   ingested is the union of the committed manifests, so there is no second
   ledger to keep in step: a crash before the rename leaves a partial folder
   that the next run deletes and redoes; after it, the span exists in full.
2. The executor writes `seen/span-<N>.tsv` last, after the examples. Until it
   exists, span N counts as unprocessed: the next run processes span N again
   (from the same landed files, de-duplicated against spans < N only, so the
   result is the same) instead of collecting new files into span N+1.

Inbox files are copied, never moved or deleted: the inbox stays the user's.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from typing import Iterator

from components.ingest.records import IMAGE_SUFFIXES, JSONL_SUFFIX, LandedFile, count_records, folder_claim
from serving.contract import fsync_dir, write_synced

log = logging.getLogger(__name__)

MANIFEST = "MANIFEST.json"
SPAN_DIR = re.compile(r"^span-(\d+)$")
# The ExampleGen input pattern: TFX's FileBasedDriver resolves {SPAN} to the latest span.
SPAN_PATTERN = "span-{SPAN}/*"
INBOX_PREFIX = "inbox"
SAMPLE_PREFIX = "sample"
SAMPLE_IMAGES = "images"

# Files in the drop folder that are not data: dotfiles, the inbox's README,
# and files still being written under a temporary name.
_SKIPPED_SUFFIXES = (".tmp", ".part", ".partial", ".crdownload")
_CHUNK = 1 << 20
_UNREADABLE = "unreadable:"


@dataclass(frozen=True)
class IngestPaths:
    """The folders ingestion reads and writes. `sample_dir` is optional."""

    inbox_dir: str
    state_dir: str
    quarantine_dir: str
    unlabelled_dir: str
    sample_dir: str | None = None

    @property
    def landing_dir(self) -> str:
        return os.path.join(self.state_dir, "landing")

    @property
    def seen_dir(self) -> str:
        return os.path.join(self.state_dir, "seen")

    def span_dir(self, span: int) -> str:
        return os.path.join(self.landing_dir, f"span-{span}")

    def seen_file(self, span: int) -> str:
        return os.path.join(self.seen_dir, f"span-{span}.tsv")

    def quarantine_file(self, span: int) -> str:
        return os.path.join(self.quarantine_dir, f"span-{span}.jsonl")

    def unlabelled_file(self, span: int) -> str:
        return os.path.join(self.unlabelled_dir, f"span-{span}.jsonl")


@dataclass(frozen=True)
class Collection:
    """What one collection step did."""

    new_span: int | None  # the span committed now, or None
    latest_span: int  # the span the ExampleGen will process
    files: int  # files copied into new_span
    already_ingested: int  # candidate files whose content an earlier span holds
    identical: int  # new files with the same content as another new file (copied once)
    pending: bool  # latest_span was committed earlier but not processed yet


def committed_spans(paths: IngestPaths) -> list[int]:
    """Span numbers with a committed landing folder, ascending."""
    if not os.path.isdir(paths.landing_dir):
        return []
    spans = (SPAN_DIR.match(name) for name in os.listdir(paths.landing_dir))
    return sorted(int(m.group(1)) for m in spans if m)


def is_processed(paths: IngestPaths, span: int) -> bool:
    """True once the executor has finished span `span` (its examples ledger exists)."""
    return os.path.exists(paths.seen_file(span))


def read_manifest(paths: IngestPaths, span: int) -> dict:
    """{"span", "collected_at" (unix s),
    "files": [{"path", "origin", "key", "sha256", "size", "folder_label"?, "genuine"?, "unreadable"?}]}.

    "genuine" is there (false) only for an image in a forgery folder: manifests
    written before forgeries were recorded have none, and mean genuine.
    """
    with open(os.path.join(paths.span_dir(span), MANIFEST), encoding="utf-8") as f:
        return json.load(f)


def landed_files(paths: IngestPaths, span: int) -> list[LandedFile]:
    """The files of a committed span, in manifest order."""
    manifest = read_manifest(paths, span)
    span_name = f"span-{span}"
    return [
        LandedFile(
            path=entry["origin"] if "unreadable" in entry else os.path.join(paths.span_dir(span), entry["path"]),
            name=f"{span_name}/{entry['path']}",
            order=order,
            folder_label=entry.get("folder_label"),
            unreadable=entry.get("unreadable"),
            folder_genuine=entry.get("genuine", True),
        )
        for order, entry in enumerate(manifest["files"])
    ]


def collect_new_files(paths: IngestPaths, *, now: int | None = None) -> Collection:
    """Copy inbox and sample files not ingested before into a new span.

    At most one span is created per call, and none while the latest span is
    unprocessed (that span is processed first; new files wait for the next
    run). When nothing was ever collected and there is nothing to collect, an
    empty span 0 is committed, so a first run on an empty inbox succeeds with
    zero examples. Serialised by a lock file in `state_dir`.
    """
    os.makedirs(paths.landing_dir, exist_ok=True)
    with _locked(os.path.join(paths.state_dir, ".lock")):
        for name in os.listdir(paths.landing_dir):
            if name.startswith(".span-"):
                shutil.rmtree(os.path.join(paths.landing_dir, name))
        spans = committed_spans(paths)
        if spans and not is_processed(paths, spans[-1]):
            return Collection(None, spans[-1], 0, 0, 0, pending=True)

        known = set()
        for span in spans:
            known.update(entry["key"] for entry in read_manifest(paths, span)["files"])
        new: list[tuple[_Candidate, str, str | None]] = []
        new_keys: dict[str, str] = {}
        already = identical = 0
        for candidate in _candidates(paths):
            key, error = _file_key(candidate.origin)
            if key in known:
                already += 1
            elif key in new_keys:
                identical += 1
                log.info("%s has the same content as %s; copied once", candidate.origin, new_keys[key])
            else:
                new_keys[key] = candidate.origin
                new.append((candidate, key, error))

        if not new and spans:
            return Collection(None, spans[-1], 0, already, identical, pending=False)
        span = spans[-1] + 1 if spans else 0
        files = _commit_span(paths, span, new, int(time.time()) if now is None else now)
        return Collection(span, span, files, already, identical, pending=False)


@dataclass(frozen=True)
class Waiting:
    """Inbox (and sample) files that the next collection would take, and the records they hold."""

    files: int
    records: int


# (path, size, mtime_ns) -> content key, so a poll re-hashes only files that changed.
KeyCache = dict[tuple[str, int, int], str]


def waiting(paths: IngestPaths, key_cache: KeyCache | None = None) -> Waiting:
    """What has arrived and is not in any committed span yet (read-only; takes no lock).

    Same identity as collection (content hash), so a file copied in twice or
    renamed counts once, and a file already ingested does not count.
    """
    known = set()
    for span in committed_spans(paths):
        try:
            known.update(entry["key"] for entry in read_manifest(paths, span)["files"])
        except (OSError, ValueError):
            continue  # a span being committed right now: counted on the next poll
    cache = key_cache if key_cache is not None else {}
    files = records = 0
    seen_now: set[str] = set()
    for candidate in _candidates(paths):
        try:
            st = os.stat(candidate.origin)
        except OSError:
            continue  # removed since the walk, or a broken link: collection decides
        stamp = (candidate.origin, st.st_size, st.st_mtime_ns)
        key = cache.get(stamp)
        if key is None:
            key, error = _file_key(candidate.origin)
            if error is None:
                cache[stamp] = key
        if key in known or key in seen_now:
            continue
        seen_now.add(key)
        files += 1
        records += count_records(candidate.origin)
    return Waiting(files, records)


@dataclass(frozen=True)
class _Candidate:
    origin: str  # absolute path in the inbox or the sample
    landed: str  # path inside the span folder
    folder_label: str | None
    folder_genuine: bool = True


def _candidates(paths: IngestPaths) -> Iterator[_Candidate]:
    """Inbox files (any depth), then the sample's top-level *.jsonl and its images/ tree."""
    yield from walk_folder(paths.inbox_dir, INBOX_PREFIX)
    if paths.sample_dir:
        if not os.path.isdir(paths.sample_dir):
            log.warning("sample folder %s does not exist; nothing taken from it", paths.sample_dir)
            return
        for name in sorted(os.listdir(paths.sample_dir)):
            full = os.path.join(paths.sample_dir, name)
            if name.lower().endswith(JSONL_SUFFIX) and os.path.isfile(full) and not _skipped(name):
                yield _Candidate(os.path.abspath(full), f"{SAMPLE_PREFIX}/{name}", None)
        yield from walk_folder(os.path.join(paths.sample_dir, SAMPLE_IMAGES), f"{SAMPLE_PREFIX}/{SAMPLE_IMAGES}")


def walk_folder(root: str, prefix: str) -> Iterator[_Candidate]:
    """Data files under `root` as collection sees them: skipped names left out, an image's label (and whether it
    is genuine) from its folders (records.folder_claim)."""
    if not os.path.isdir(root):
        return
    for folder, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not skipped_folder(d))
        rel_folder = os.path.relpath(folder, root)
        for name in sorted(names):
            full = os.path.join(folder, name)
            # A broken symlink is kept: it is an unreadable file to quarantine.
            if _skipped(name) or not (os.path.isfile(full) or os.path.islink(full)):
                continue
            rel = name if rel_folder == "." else os.path.join(rel_folder, name)
            # An image's label is the folder it sits in: <root>/<label>/<file>, or a
            # forgery claimed as <label>: <root>/<label>_forg/<file>, <root>/<label>/forged/<file>.
            label, genuine = None, True
            if rel_folder != "." and name.lower().endswith(IMAGE_SUFFIXES):
                label, genuine = folder_claim(rel_folder.split(os.sep))
            yield _Candidate(os.path.abspath(full), f"{prefix}/{rel.replace(os.sep, '/')}", label, genuine)


def skipped_folder(name: str) -> bool:
    """Whether collection leaves out a folder of this name and everything in it (hidden folders)."""
    return name.startswith(".")


def _skipped(name: str) -> bool:
    lower = name.lower()
    return name.startswith(".") or lower.startswith("readme") or lower.endswith(_SKIPPED_SUFFIXES)


def _file_key(path: str) -> tuple[str, str | None]:
    """The identity of a file for "already ingested" (its content hash), and why it cannot be read.

    A file that cannot be read has no content hash; it is keyed by its path and
    status times instead, so it is quarantined once, and read again once it is
    changed or its permissions are fixed (which changes its ctime).
    """
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
    except OSError as err:
        st = os.lstat(path)
        return f"{_UNREADABLE}{path}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}", str(err)
    return digest.hexdigest(), None


def _commit_span(paths: IngestPaths, span: int, new: list[tuple[_Candidate, str, str | None]], now: int) -> int:
    partial = os.path.join(paths.landing_dir, f".span-{span}.partial")
    os.makedirs(partial)
    entries = []
    for candidate, key, error in new:
        entry = {"path": candidate.landed, "origin": candidate.origin, "key": key}
        if error is not None:
            entries.append({**entry, "unreadable": error})  # nothing to copy; quarantined by the executor
            continue
        target = os.path.join(partial, candidate.landed)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        copied, size = _copy_hashed(candidate.origin, target)
        if copied != key:
            # The file changed between hashing and copying (still being written):
            # leave it for the next run rather than land a half-written file.
            log.warning("%s changed while being collected; left for the next run", candidate.origin)
            os.remove(target)
            continue
        entry.update(sha256=key, size=size)
        if candidate.folder_label is not None:
            entry["folder_label"] = candidate.folder_label
        if not candidate.folder_genuine:
            entry["genuine"] = False
        entries.append(entry)
    manifest = {"span": span, "collected_at": now, "files": entries}
    write_synced(os.path.join(partial, MANIFEST), json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    os.rename(partial, paths.span_dir(span))
    fsync_dir(paths.landing_dir)
    log.info("collected %d new files into span %d", len(entries), span)
    return len(entries)


def _copy_hashed(source: str, target: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with open(source, "rb") as src, open(target, "wb") as dst:
        while chunk := src.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            dst.write(chunk)
        dst.flush()
        os.fsync(dst.fileno())
    return digest.hexdigest(), size


@contextlib.contextmanager
def _locked(lock_path: str) -> Iterator[None]:
    with open(lock_path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
