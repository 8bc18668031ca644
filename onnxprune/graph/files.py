"""Output files: whether a path may be written, and atomic writes.

Every output (the model, its weights file, the report) is checked before any work, and
written under a temporary name in its own folder, then renamed into place: a failure or
an interrupt leaves the old file (or none) and no temporary behind.
"""

from __future__ import annotations

import os
import secrets
import signal
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from ..errors import OnnxPruneError

_KINDS = {stat.S_ISFIFO: "a FIFO", stat.S_ISCHR: "a character device", stat.S_ISBLK: "a block device",
          stat.S_ISSOCK: "a socket", stat.S_ISDIR: "a folder"}


Protected = Sequence[tuple[str, Path | None]]  # (description, path): files an output must not be


def check_output(path: Path, what: str, protected: Protected = ()) -> None:
    """Refuse ``path`` as the ``what`` output ("output", "report") unless writing it is safe:
    not an existing folder, device, FIFO or socket (renaming over it would replace it), none of
    the ``protected`` files (the inputs, the other outputs), and in a folder that exists and
    where a file can be created."""
    _check_length(path, what)
    kind = _special_kind(path)
    if kind is not None:
        raise OnnxPruneError(f"{path}: exists and is {kind}, not a regular file; choose another {what} path")
    for description, other in protected:
        if other is not None and same_file(path, other):
            raise OnnxPruneError(f"{path}: the {what} path is {description}; choose another")
    folder = _folder(path)
    if not folder.exists():
        raise OnnxPruneError(f"{path}: {what} folder {folder} does not exist")
    if not folder.is_dir():
        raise OnnxPruneError(f"{path}: {folder} is not a folder")
    try:  # permissions, read-only file systems, quotas: only creating a file tells
        probe = _create_temporary(path)
    except OSError as exc:
        raise OnnxPruneError(f"{path}: cannot write in {folder} ({exc.strerror or exc})") from None
    probe.unlink()


def _check_length(path: Path, what: str) -> None:
    """Refuse a name longer than the file system takes, or a path longer than the system does: the
    temporary is named after the name cut short, so only the rename at the very end would fail."""
    name, whole = len(os.fsencode(path.name)), len(os.fsencode(str(path)))
    name_max, path_max = _limit("PC_NAME_MAX", _folder(path), 255), _limit("PC_PATH_MAX", Path("/"), 4096)
    if name > name_max:
        raise OnnxPruneError(f"{_shown(path)}: the {what} file name is {name} bytes long; the file system takes "
                             f"at most {name_max}")
    if whole >= path_max:
        raise OnnxPruneError(f"{_shown(path)}: the {what} path is {whole} bytes long; the system takes "
                             f"at most {path_max - 1}")


def _limit(name: str, folder: Path, default: int) -> int:
    """A limit of the file system holding ``folder`` (os.pathconf), or ``default`` where it cannot say."""
    try:
        return os.pathconf(folder, name)
    except (OSError, ValueError):
        return default


def _shown(path: Path, limit: int = 80) -> str:
    """A long path as messages show it: its start and end around the byte count."""
    text = str(path)
    return text if len(text) <= limit else f"{text[:limit // 2]}...{text[-limit // 2:]}"


def lookup(path: Path) -> os.stat_result | None:
    """``path``'s status (symlinks followed), None where nothing is there; an error naming the path
    where the system cannot look it up (a name too long, no permission to search its folder)."""
    try:
        return path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as exc:
        raise OnnxPruneError(f"{_shown(path)}: cannot read ({exc.strerror or exc})") from None


def same_file(a: Path, b: Path) -> bool:
    """The same path, or the same file by another name (symlink, hard link)."""
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


class Staging:
    """Files written under temporary names next to their destinations and renamed into place
    together by ``commit``; whatever is not committed when the block ends is removed.

    ``with Staging() as files: files.write(model_path, data); files.write(report_path, text); files.commit()``
    """

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []  # (temporary, destination), in commit order

    def __enter__(self) -> Staging:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        for temporary, _ in self._staged:
            temporary.unlink(missing_ok=True)
        self._staged.clear()

    def path_for(self, destination: Path) -> Path:
        """A new empty temporary file for ``destination``, to be written by the caller."""
        kind = _special_kind(destination)
        if kind is not None:  # also checked up front; the weights file is known only now
            raise OnnxPruneError(f"{destination}: exists and is {kind}, not a regular file")
        try:
            temporary = _create_temporary(destination)
        except OSError as exc:
            raise OnnxPruneError(f"{destination}: cannot write ({exc.strerror or exc})") from None
        self._staged.append((temporary, destination))
        return temporary

    def write(self, destination: Path, data: bytes) -> None:
        temporary = self.path_for(destination)
        try:
            temporary.write_bytes(data)
        except OSError as exc:
            raise OnnxPruneError(f"{destination}: cannot write ({exc.strerror or exc})") from None

    def commit(self) -> None:
        """Rename every staged file into place, in the order they were staged; an interrupt
        waits until all are renamed (a model must not point to the old weights file)."""
        with _signals_held():
            while self._staged:
                temporary, destination = self._staged[0]
                try:
                    os.replace(temporary, destination)
                except OSError as exc:
                    raise OnnxPruneError(f"{destination}: cannot write ({exc.strerror or exc})") from None
                self._staged.pop(0)


@contextmanager
def _signals_held() -> Iterator[None]:
    """SIGINT and SIGTERM are delivered when the block ends, not inside it (where the OS allows)."""
    held = {signal.SIGINT, signal.SIGTERM}
    if not hasattr(signal, "pthread_sigmask"):
        yield
        return
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _create_temporary(destination: Path) -> Path:
    """A new hidden file beside ``destination``, with the mode a new file gets (the umask's),
    not mkstemp's owner-only one: it becomes the output."""
    folder = _folder(destination)
    while True:
        # the name cut short: the destination's own name may be as long as the file system allows
        temporary = folder / f".{destination.name[:100]}.{secrets.token_hex(4)}.onnxprune-tmp"
        try:
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return temporary
        except FileExistsError:
            continue


def read_input(path: Path, what: str, limit: int) -> bytes:
    """The bytes of the input file ``path`` (the ``what``: "latency table"): a regular file (a
    FIFO would block, /dev/zero never end) of at most ``limit`` bytes. It is opened without
    blocking and checked once open, so what is read is what was checked."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except FileNotFoundError:
        raise OnnxPruneError(f"{path}: no such file") from None
    except OSError as exc:
        raise OnnxPruneError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    kind = _kind(os.fstat(fd).st_mode)
    if kind is not None:
        os.close(fd)
        raise OnnxPruneError(f"{path}: is {kind}, not a regular file; the {what} must be one")
    with os.fdopen(fd, "rb") as file:
        try:
            data = file.read(limit + 1)
        except OSError as exc:
            raise OnnxPruneError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise OnnxPruneError(f"{path}: over {limit >> 20} MiB, too large for a {what}")
    return data


def _special_kind(path: Path) -> str | None:
    """What an existing ``path`` is when it is not a regular file (symlinks followed), else None."""
    try:
        mode = path.stat().st_mode
    except OSError:  # missing, or a dangling symlink: renaming over it harms nothing
        return None
    return _kind(mode)


def _kind(mode: int) -> str | None:
    return next((kind for test, kind in _KINDS.items() if test(mode)), None)


def _folder(path: Path) -> Path:
    return path.parent if str(path.parent) else Path(".")
