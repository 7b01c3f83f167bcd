"""Safe outputs: nothing the user had is lost, whatever happens while an output is written.

- `check_output_path` refuses, before any work, an output that is a folder, sits in a missing or unwritable
  folder, already exists (unless overwriting), or is one of the operation's own inputs (same path, or the same
  file through a link);
- `AtomicOutput` writes to a temporary file beside the output and renames it into place only when the caller's
  block completed (and the caller's own check of the written file passed); on any error, cancel or signal the
  temporary file is deleted. Disk-full, file-size-limit, read-only and permission errors become the project's
  input error (exit 2, one line naming the output);
- `terminate_as_cancel` turns SIGTERM (what `timeout`, batch systems and service managers send) into an
  exception, so the same clean-up runs as for Ctrl-C; `discard_pending` removes any temporary file that an
  interrupt caught between its creation and its owner's `with` block.
"""

from __future__ import annotations

import errno
import os
import signal
import threading
from typing import Iterable, Optional

from sar_ae_core.errors import SarInputError

#: errors of the output's file system that are the user's to fix (space, quota, limits, permissions)
WRITE_ERRNOS = {errno.ENOSPC, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT, errno.EIO}

_PENDING: set[str] = set()
_PENDING_LOCK = threading.Lock()


class Terminated(BaseException):
    """SIGTERM arrived: like KeyboardInterrupt it is not an `Exception`, so no handler swallows it."""


def same_file(a: str, b: str) -> bool:
    """Same file (also through links); for paths that do not exist yet, the same resolved path."""
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet): compare the resolved paths
        return os.path.realpath(a) == os.path.realpath(b)


def check_output_path(path: str | os.PathLike, overwrite: bool = False,
                      inputs: Iterable[str | os.PathLike | None] = ()) -> str:
    """Fail early (before any work) if `path` cannot or may not be written; returns it as a string."""
    path = os.fspath(path)
    if not path:
        raise SarInputError(None, "no output path given")
    for src in inputs:
        if src is not None and same_file(path, os.fspath(src)):
            raise SarInputError(path, f"is an input of this operation ({os.fspath(src)}); "
                                      "writing it would destroy the input: choose another output")
    if os.path.isdir(path):
        raise SarInputError(path, "is a folder; give a file name for the output")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise SarInputError(path, f"output folder '{folder}' does not exist")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SarInputError(path, f"output folder '{folder}' is not writable")
    if os.path.lexists(path) and not overwrite:
        raise SarInputError(path, "output already exists (pass --overwrite to replace it)")
    return path


def _block_signals():
    """Block SIGINT/SIGTERM in this thread (returns the previous mask, or None off the main thread)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "pthread_sigmask"):
        return None
    return signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})


def _restore_signals(old) -> None:
    if old is not None:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def write_error(path: str, exc: BaseException) -> Optional[SarInputError]:
    """The user-facing error for a failed write of `path`, or None when `exc` is not a file-system problem."""
    if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
        return SarInputError(path, f"could not be written: {os.strerror(exc.errno)}; nothing was written")
    return None


class AtomicOutput:
    """A temporary file beside `path`, renamed over it on success and deleted on any failure or cancel.

    `verify`, when given, is called with the temporary path after the block completed and before the rename:
    it raises if the written file is not complete (e.g. a GeoTIFF whose blocks GDAL failed to write)."""

    def __init__(self, path: str | os.PathLike, overwrite: bool = False, suffix: str = "",
                 inputs: Iterable[str | os.PathLike | None] = (), verify=None):
        self.inputs = [os.fspath(p) for p in inputs if p is not None]
        self.path = check_output_path(path, overwrite, self.inputs)
        self.overwrite = overwrite
        self.verify = verify
        folder = os.path.dirname(os.path.abspath(self.path))
        base = os.path.basename(self.path)
        old = _block_signals()  # the name is registered before the file exists: an interrupt cannot orphan it
        try:
            for _ in range(100):
                tmp = os.path.join(folder, f".{base}.{os.urandom(4).hex()}.part{suffix}")
                with _PENDING_LOCK:
                    _PENDING.add(tmp)
                try:
                    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                except FileExistsError:
                    with _PENDING_LOCK:
                        _PENDING.discard(tmp)
                    continue
                except OSError as exc:
                    with _PENDING_LOCK:
                        _PENDING.discard(tmp)
                    raise (write_error(self.path, exc) or exc) from None
                os.close(fd)
                self.tmp = tmp
                break
            else:  # pragma: no cover - 100 random collisions
                raise SarInputError(self.path, "could not create a temporary file beside the output")
        finally:
            _restore_signals(old)

    def commit(self) -> None:
        """Check the finished temporary file, then move it into place (signals held off meanwhile)."""
        old = _block_signals()
        try:
            try:
                if self.verify is not None:
                    self.verify(self.tmp)
                with open(self.tmp, "rb+") as fh:  # data on disk before the rename (delayed ENOSPC shows here)
                    os.fsync(fh.fileno())
            except BaseException as exc:
                self.discard()
                err = write_error(self.path, exc)
                if err is not None:
                    raise err from None
                raise
            for src in self.inputs:  # an input may have been linked to the output path while we worked
                if same_file(self.path, src):
                    self.discard()
                    raise SarInputError(self.path, f"is now the input {src}; not replacing it")
            if os.path.lexists(self.path) and not self.overwrite:
                self.discard()
                raise SarInputError(self.path, "output appeared while working; not overwriting it")
            umask = os.umask(0)
            os.umask(umask)
            os.chmod(self.tmp, 0o666 & ~umask)  # private temporary file → normal output permissions
            try:
                os.replace(self.tmp, self.path)
            except OSError as exc:
                self.discard()
                err = write_error(self.path, exc)
                if err is not None:
                    raise err from None
                raise SarInputError(self.path, f"could not be moved into place ({exc.strerror})") from None
            with _PENDING_LOCK:
                _PENDING.discard(self.tmp)
        finally:
            _restore_signals(old)

    def discard(self) -> None:
        """Delete the temporary file (and GDAL side-cars) if present."""
        for p in (self.tmp, self.tmp + ".aux.xml", self.tmp + ".ovr", self.tmp + ".msk"):
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        with _PENDING_LOCK:
            _PENDING.discard(self.tmp)

    def __enter__(self) -> "AtomicOutput":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.commit()
            return
        self.discard()
        err = write_error(self.path, exc) if exc is not None else None
        if err is not None:
            raise err from None


def discard_pending() -> int:
    """Delete every temporary output still registered (after an interrupt); returns how many were removed."""
    with _PENDING_LOCK:
        paths = list(_PENDING)
        _PENDING.clear()
    n = 0
    for p in paths:
        for q in (p, p + ".aux.xml", p + ".ovr", p + ".msk"):
            try:
                os.unlink(q)
                n += 1
            except FileNotFoundError:
                pass
    return n


_SIGTERM_RECEIVED = False


def _on_sigterm(signum, frame):
    global _SIGTERM_RECEIVED
    _SIGTERM_RECEIVED = True
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the clean-up
    raise Terminated()


def was_terminated(exc: BaseException) -> bool:
    """`exc` is how a SIGTERM surfaced: `Terminated` itself, or another error raised while it unwound — Python wraps
    exceptions from some hooks (a dataclass field's `__set_name__` during an import: `RuntimeError`), so the chain
    and the handler's flag are both checked."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, Terminated):
            return True
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return _SIGTERM_RECEIVED


def terminate_as_cancel() -> None:
    """Make SIGTERM raise `Terminated` in the main thread (no-op elsewhere)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
