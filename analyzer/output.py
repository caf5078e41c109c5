"""Writing results so that a failed job never leaves a half-written file in the output folder.

Everything a job produces is first written into a staging folder inside the output folder (same
filesystem, so the final ``os.replace`` is an atomic rename), and only moved into place when the job
has succeeded. A job that fails removes its staging folder; the output folder then holds nothing
from that run.

Publishing replaces Lucent's whole set of outputs, never a user's own files: ``.lucent-outputs.json``
lists what the last job published, and what it lists that the new job does not produce (a report or
``explanations_shap/`` of a previous config) is removed. Files Lucent did not publish are never
touched. A staging folder left by a killed job is removed when the next job starts; each live one
holds a lock, so two jobs never remove each other's. A job also holds a lock on the output folder itself
for its whole run (``output_folder_lock``), so a second job on the same folder is refused before it
changes anything.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import logging
import math
import os
import re
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import IO, Any

from analyzer.errors import UserError

log = logging.getLogger(__name__)

ANALYSIS_FILE = "analysis.json"
PUBLISHED_FILE_MODE = 0o644
MANIFEST_FILE = ".lucent-outputs.json"  # what the last job published (relative paths)
STAGING_PREFIX = ".lucent-staging-"
INTERNAL_PREFIX = ".lucent-"  # Lucent's own bookkeeping in the output folder: never a result to upload
# Errors of the storage itself, not of Lucent: the user fixes them with space, quota or a writable mount.
STORAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS})
PROBE_BYTES = 4096  # written (and removed) in the staging folder before the work: one block of a disk
_ATOMIC_TEMPORARY = re.compile(r"\.(.+)\.[^.]+\.tmp")  # atomic_writer's temporary name for <name>


def to_json_safe(value: Any) -> Any:
    """Clarify's JSON rules: +/-inf become the strings "Infinity"/"-Infinity", NaN becomes null."""
    if isinstance(value, float):
        if math.isinf(value):
            return "Infinity" if value > 0 else "-Infinity"
        if math.isnan(value):
            return None
        return value
    if isinstance(value, dict):
        return {str(k): to_json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json_safe(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, str | bytes):  # numpy scalars
        return to_json_safe(value.item())
    return value


def dumps(document: Any, indent: int | None = 4) -> str:
    return json.dumps(to_json_safe(document), indent=indent, allow_nan=False, ensure_ascii=False)


class OutputStaging:
    """Collects a job's output files and publishes them together.

    >>> with OutputStaging(out_dir) as staging:          # doctest: +SKIP
    ...     staging.write_json("analysis.json", results)
    ...     staging.commit()                              # files appear in out_dir
    Leaving the block without ``commit()`` (e.g. on an exception) discards everything.
    """

    def __init__(self, output_dir: Path):
        """Create the staging folder; raises ``UserError`` naming the folder when the output folder cannot
        be created or written (a file in the way, read-only, no space left), before any work is done."""
        self.output_dir = Path(output_dir)
        self._committed, self._lock = False, None
        self.staging_dir: Path | None = None
        self._writing: Path | None = None  # the staged file handed out last (``path``)
        try:
            # A stop request lands before the staging folder exists or once it is locked: when the held
            # request is handled (leaving this block), the folder exists and is removed below.
            with held_stop_signals():
                try:
                    self.output_dir.mkdir(parents=True, exist_ok=True)
                    remove_staging_leftovers(self.output_dir)
                    _check_free_space(self.output_dir)
                    self.staging_dir = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=self.output_dir))
                    self._lock = _lock_folder(self.staging_dir)
                except OSError as error:
                    raise output_folder_error(self.output_dir, error) from error
            _probe_write(self.staging_dir, self.output_dir)
        except BaseException as error:  # no object is returned, so no ``with`` block removes the folder: here
            if self.staging_dir is not None:
                self.discard()
            if isinstance(error, OSError):  # from the probe
                raise output_folder_error(self.output_dir, error) from error
            raise

    def path(self, relative: str) -> Path:
        """Where to write ``relative`` while staging (parent folders are created). The path handed out last
        is the file the job is writing: a failed ``write`` names no file, and the error is given its name
        (``__exit__``)."""
        target = self.staging_dir / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        self._writing = target
        return target

    def write_text(self, relative: str, text: str) -> Path:
        target = self.path(relative)
        with _naming(self.output_dir / relative):  # where the user will look, not the staging folder
            target.write_text(text, encoding="utf-8")
        return self.output_dir / relative

    def write_json(self, relative: str, document: Any) -> Path:
        return self.write_text(relative, dumps(document) + "\n")

    def commit(self, replace_previous: bool = True) -> list[Path]:
        """Move every staged file to its final place (one atomic rename per file), then remove what the
        previous job published and this one did not (see the module docstring).

        ``replace_previous=False`` adds the staged files to what is published and removes nothing: a
        job publishes ``analysis.json`` first and its report afterwards (docs/reports.md), each step
        atomic file by file."""
        with held_stop_signals():  # every rename happens, or none: a stop request lands afterwards
            return self._commit(replace_previous)

    def _commit(self, replace_previous: bool) -> list[Path]:
        staged_files = sorted(p for p in self.staging_dir.rglob("*") if p.is_file())
        names = [p.relative_to(self.staging_dir).as_posix() for p in staged_files]
        previous = read_manifest(self.output_dir)
        names_after = names if replace_previous else sorted(set(previous) | set(names))
        # A previous file where this job publishes a folder, or files in a folder where it publishes a file
        # (explanations_shap/out.csv as one file or as part files): removed first, or the rename fails.
        files, folders = set(names), {str(parent) for name in names for parent in PurePosixPath(name).parents}
        in_the_way = [name for name in sorted(set(previous) - files)
                      if name in folders or any(str(parent) in files for parent in PurePosixPath(name).parents)]
        self._check_writable([*names, *(set(previous) - set(names_after)), *in_the_way])
        # The manifest first lists both sets, so that a job killed halfway leaves nothing untracked.
        write_manifest(self.output_dir, sorted(set(previous) | set(names)))
        for name in in_the_way:
            _remove_published(self.output_dir, name)
        published = []
        for staged, name in zip(staged_files, names, strict=True):
            final = self.output_dir / name
            final.parent.mkdir(parents=True, exist_ok=True)
            # Temporary files are created 0600; results are read by others (the uploader, a host user
            # reading a container's output volume), so publish them like ordinary files.
            os.chmod(staged, PUBLISHED_FILE_MODE)
            os.replace(staged, final)
            published.append(final)
        for name in sorted(set(previous) - set(names_after) - set(in_the_way)):
            _remove_published(self.output_dir, name)
        write_manifest(self.output_dir, names_after)
        self._committed = True
        self.discard()
        return published

    def _check_writable(self, names: list[str]) -> None:
        """Raise ``UserError`` before the first rename when a folder that a rename or a removal of ``names``
        touches is not writable (an earlier run's folders owned by another user): otherwise the commit
        would fail half-way, this run's first files published beside the earlier run's others."""
        folders = set()
        for name in names:
            folder = (self.output_dir / name).parent
            # made by the commit (or a published file the commit replaces with a folder): its parent is written
            while not folder.is_dir() and folder != self.output_dir:
                folder = folder.parent
            folders.add(folder)
        blocked = sorted(str(folder) for folder in folders if not os.access(folder, os.W_OK | os.X_OK))
        if blocked:
            more = f" and {len(blocked) - 3} more" if len(blocked) > 3 else ""
            raise UserError(f"The outputs cannot be published: {', '.join(blocked[:3])}{more} cannot be written "
                            f"by this job (user id {os.getuid()}): an earlier run's folders, made by another user? "
                            "Make them writable for this user or remove them. Nothing was published.")

    def keep_only(self, staged: list[Path]) -> None:
        """Remove every staged file but ``staged`` (paths in the staging folder): what another process
        wrote without confirming that it is complete is not published."""
        keep = {Path(p).resolve() for p in staged}
        for path in [p for p in self.staging_dir.rglob("*") if p.is_file()]:
            if path.resolve() not in keep:
                path.unlink()

    def discard(self) -> None:
        with held_stop_signals():  # a stop request must not leave the staging folder half removed
            if self.staging_dir is not None:
                shutil.rmtree(self.staging_dir, ignore_errors=True)
            if self._lock is not None:
                os.close(self._lock)
                self._lock = None

    def __enter__(self) -> OutputStaging:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, error: BaseException | None, tb: object) -> None:
        if isinstance(error, OSError):  # say where the user will look, not where the file was staged
            if (error.filename is None and error.errno in STORAGE_ERRNOS and self._writing is not None
                    and os.path.lexists(self._writing)):
                # A full disk or a file-size limit hit by a plain ``write`` (``out.write(...)`` on a file the job
                # opened): the error names no file. The job was writing the staged file it asked for last.
                error.filename = str(self._writing)
            error.filename = self.final_path(error.filename)
        if not self._committed:
            self.discard()

    def final_path(self, filename: Any) -> Any:
        """Where the staged file ``filename`` is published (``.lucent-staging-x/report.html`` ->
        ``report.html`` in the output folder, ``atomic_writer``'s temporary name included); any other
        value as it is."""
        if not isinstance(filename, str | os.PathLike) or not Path(filename).is_relative_to(self.staging_dir):
            return filename
        return published_path(self.output_dir, filename)


def published_path(output_dir: Path, filename: Any) -> Any:
    """The name the user sees for ``filename`` when it is a file in one of ``output_dir``'s staging folders
    (``output/.lucent-staging-x/a/.report.html.k2j_9x0a.tmp`` -> ``output/a/report.html``); any other value
    as it is. Also for a staging folder of another process (the report's), whose path reaches the job as
    text."""
    if not isinstance(filename, str | os.PathLike):
        return filename
    path, output_dir = Path(filename), Path(output_dir)
    if not path.is_relative_to(output_dir):
        return filename
    parts = path.relative_to(output_dir).parts
    if len(parts) < 2 or not parts[0].startswith(STAGING_PREFIX):
        return filename
    temporary = _ATOMIC_TEMPORARY.fullmatch(parts[-1])
    if temporary:
        parts = (*parts[:-1], temporary[1])
    return str(output_dir.joinpath(*parts[1:]))


def output_folder_error(output_dir: Path, error: OSError) -> UserError:
    """The ``UserError`` for an output folder that cannot be used, naming it and what is in the way."""
    where = error.filename or output_dir
    if isinstance(error, FileExistsError | NotADirectoryError):
        return UserError(f"The output folder {output_dir} cannot be created: {where} is a file, not a folder. "
                         "Move the file away or use another processing root.")
    return UserError(f"The output folder {output_dir} cannot be written ({where}: {error.strerror or error}). "
                     "Make it writable, free some space, or use another processing root.")


def check_output_folder(output_dir: Path) -> None:
    """Raise ``UserError`` when a job could not publish into ``output_dir``; leaves no trace (``lucent
    validate``). A folder that does not exist yet is created and removed again."""
    output_dir = Path(output_dir)
    missing = [folder for folder in (output_dir, *output_dir.parents) if not folder.exists()]
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
        _check_free_space(output_dir)
        staging_dir = tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=output_dir)
        try:
            _probe_write(Path(staging_dir), output_dir)
        finally:
            os.rmdir(staging_dir)
    except OSError as error:
        raise output_folder_error(output_dir, error) from error
    finally:
        for folder in missing:  # innermost first
            with contextlib.suppress(OSError):
                folder.rmdir()


def read_manifest(output_dir: Path) -> list[str]:
    """The relative paths the last job published into ``output_dir`` (empty when unknown)."""
    path = Path(output_dir) / MANIFEST_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as error:
        document = str(error)
    names = document.get("published") if isinstance(document, dict) else None
    if not isinstance(names, list):
        log.warning("Ignoring %s, which does not list the published files (%s): the previous job's files are kept",
                    path, str(document)[:80])
        return []
    return [name for name in names if isinstance(name, str) and _is_plain_relative(name)]


def write_manifest(output_dir: Path, names: list[str]) -> None:
    """Record ``names`` (relative paths) as what the last job published into ``output_dir``; the launcher
    writes one into a scratch folder for an S3 output prefix too, in the same format."""
    write_text_atomic(output_dir / MANIFEST_FILE, json.dumps({"published": names}, indent=1) + "\n")


def _is_plain_relative(name: str) -> bool:
    """A manifest entry Lucent could have written: relative, no ``..``, not Lucent's own bookkeeping."""
    parts = PurePosixPath(name).parts
    return bool(parts) and not name.startswith("/") and ".." not in parts and not parts[0].startswith(INTERNAL_PREFIX)


def _remove_published(output_dir: Path, name: str) -> None:
    """Remove one file of the previous job, and the folders it leaves empty. A path whose folder leads out
    of the output folder (a link the user made) is left alone."""
    path = output_dir / name
    root = output_dir.resolve()
    if not path.parent.resolve().is_relative_to(root) or (path.is_dir() and not path.is_symlink()):
        return
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
        log.info("Removed %s, published by the previous job and not by this one", path)
    for folder in path.parents:
        if folder == output_dir or not folder.is_relative_to(output_dir):
            break
        try:
            folder.rmdir()
        except OSError:  # not empty: the user's files, or this job's
            break


@contextlib.contextmanager
def held_stop_signals() -> Iterator[None]:
    """SIGTERM and SIGINT held back while the output folder changes: a stop request is handled right after
    the block (by the handler that was there: the job's, which then stops it as usual), never halfway
    through publishing or removing a staging folder. Python runs signal handlers in the main thread only,
    so elsewhere there is nothing to hold back. (Masking the signal would not do: the kernel hands a
    process signal to any thread that does not block it.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT)}
    for number, handler in previous.items():
        if handler is not None:  # None: a handler not installed from Python, left alone
            signal.signal(number, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        for number, handler in previous.items():
            if handler is not None:
                signal.signal(number, handler)
        for number in received:
            signal.raise_signal(number)


def remove_staging_leftovers(output_dir: Path) -> None:
    """Remove the staging folders of jobs that were killed before they could clean up. A live job holds a
    lock on its staging folder, and its folder is kept."""
    for folder in Path(output_dir).glob(f"{STAGING_PREFIX}*"):
        if not folder.is_dir() or folder.is_symlink():
            continue
        lock = _lock_folder(folder)
        if lock is None:
            continue
        try:
            log.info("Removing %s, left by a job that did not finish", folder)
            shutil.rmtree(folder, ignore_errors=True)
        finally:
            os.close(lock)


def _lock_folder(folder: Path) -> int | None:
    """An exclusive lock on ``folder`` (held until the descriptor is closed, or the process ends however it
    ends), or None if another process holds it. The one way Lucent locks a folder: a staging folder, and a
    job's output folder (``output_folder_lock``). The descriptor is not inherited by child processes."""
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    return fd


class OutputFolderBusy(UserError):
    """Another process (another ``lucent run``) holds the output folder's lock: this job must not start."""

    def __init__(self, output_dir: Path, holder: int | None):
        self.output_dir, self.holder = Path(output_dir), holder
        who = f"pid {holder}" if holder else "a process whose pid this machine does not show: another host or container"
        super().__init__(f"another job ({who}) is running on the output folder {self.output_dir}: it holds the "
                         "folder's lock until it ends")


# flock errors that say the filesystem cannot lock (some network and FUSE filesystems), not that the folder is busy
_NO_LOCKING = frozenset({errno.EBADF, errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})
_LOCK_ATTEMPTS = 5  # the folder removed or replaced between opening and locking it: open it again


@contextlib.contextmanager
def output_folder_lock(output_dir: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``output_dir`` while the block runs (``flock`` on the folder itself, as on
    a staging folder: no lock file to create, write or remove; the kernel releases it when the process
    ends, SIGKILL included). Raises ``OutputFolderBusy`` at once, naming the holder's pid, when another
    process holds it: two jobs on one output folder would remove each other's SHAP checkpoints and publish
    over each other's results.

    The folder is made when missing, and removed again (with the parents made for it) when the block
    leaves it empty. Yields False, and the block runs unlocked, when the folder cannot be made or opened
    (``OutputStaging`` then says why, as it does without the lock) or its filesystem does not lock."""
    output_dir = Path(output_dir)
    missing = [folder for folder in (output_dir, *output_dir.parents) if not os.path.lexists(folder)]
    fd = None
    try:
        for _attempt in range(_LOCK_ATTEMPTS):
            try:
                output_dir.mkdir(parents=True, exist_ok=True)
                fd = _lock_folder(output_dir)
            except OSError as error:
                if error.errno in _NO_LOCKING:
                    log.warning("Cannot lock the output folder %s (%s): another job started on it meanwhile would "
                                "not be refused", output_dir, error.strerror or error)
                break  # not a folder, not writable, ...: the job's staging says so as it always did
            if fd is None:
                raise OutputFolderBusy(output_dir, lock_holder(output_dir))
            if _same_file(fd, output_dir):
                break
            os.close(fd)  # locked a folder that was removed (or replaced) meanwhile: not the one the job uses
            fd = None
        yield fd is not None
    finally:
        for folder in missing:  # innermost first; while the lock is held, so no other job can be using them
            try:
                folder.rmdir()
            except OSError:
                break
        if fd is not None:
            os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        opened, named = os.fstat(fd), os.stat(path)
    except OSError:
        return False
    return (opened.st_dev, opened.st_ino) == (named.st_dev, named.st_ino)


def lock_holder(path: Path, locks_file: Path = Path("/proc/locks")) -> int | None:
    """The pid of the process holding a ``flock`` on ``path``, read from ``/proc/locks`` (Linux). None
    when it cannot be told: no such file, a holder on another host (a network filesystem) or in a pid
    namespace this process does not see (the kernel shows it as pid 0 there)."""
    try:
        stats = os.stat(path)
        lines = locks_file.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return None
    wanted = (os.major(stats.st_dev), os.minor(stats.st_dev), stats.st_ino)
    for line in lines:
        # "1: FLOCK  ADVISORY  WRITE 11703 fe:00:2777181 0 EOF"; a process waiting for the lock: "1: -> FLOCK ..."
        fields = line.split()
        if len(fields) < 6 or fields[1] != "FLOCK":
            continue
        try:
            pid = int(fields[4])
            major, minor, inode = fields[5].split(":")
            if (int(major, 16), int(minor, 16), int(inode)) == wanted and pid > 0:
                return pid
        except ValueError:
            continue
    return None


def _check_free_space(folder: Path) -> None:
    stats = os.statvfs(folder)
    if stats.f_bavail == 0:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(folder))


def _probe_write(folder: Path, output_dir: Path) -> None:
    """Write, sync and remove a small file in ``folder``: a disk with free blocks but no free inode, a
    quota, or a filesystem whose free-space figures are wrong fails here, before the work, and not
    when the results are written. The error names ``output_dir``, not the probe."""
    probe = folder / f"{INTERNAL_PREFIX}probe"
    try:
        with open(probe, "wb") as handle:
            handle.write(bytes(PROBE_BYTES))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        raise OSError(error.errno, error.strerror, str(output_dir)) from error
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()


@contextlib.contextmanager
def _naming(path: Path) -> Iterator[None]:
    """Add ``path`` to an ``OSError`` raised without a file name (a failed ``write`` names none), so the
    message says where the disk was full."""
    try:
        yield
    except OSError as error:
        if error.filename is None:
            error.filename = str(path)
        raise


@contextlib.contextmanager
def atomic_writer(path: Path, mode: str = "w") -> Iterator[IO]:
    """Open ``path`` for writing so that it is either complete or untouched: the handle writes to a
    temporary file in the same folder, renamed over ``path`` when the block ends without an exception.

    ``mode`` is ``"w"`` (UTF-8 text) or ``"wb"``. The one atomic-write helper: use it (or
    :class:`OutputStaging` for a job's whole output set) instead of another mkstemp + rename.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_writer mode must be 'w' or 'wb', not {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with _naming(path), os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as handle:
            yield handle
        os.chmod(tmp, PUBLISHED_FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_text_atomic(path: Path, text: str) -> None:
    """Write one text file atomically."""
    with atomic_writer(path, "w") as handle:
        handle.write(text)


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write one binary file atomically."""
    with atomic_writer(path, "wb") as handle:
        handle.write(data)
