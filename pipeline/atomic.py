"""Write files so a crash never leaves a half-written artifact: temp file in the same folder, then rename."""
from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import threading
from pathlib import Path

import numpy as np


_SEQ = itertools.count()
_OPEN_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_BINARY", 0)


def _create_temp(path: Path) -> tuple[int, str]:
    """Create a new temp file beside `path` (".<name>.<pid>-<thread>-<n>.tmp", what remove_orphans deletes) and
    return (fd, its name). Mode 0o666 less the umask, as for any new file (the kernel applies the umask; no
    chmod, and no os.umask round trip, which would briefly zero the umask for every thread). The folder is
    made only when the first open finds it missing: no mkdir call per file."""
    for _ in range(100):
        tmp = os.path.join(path.parent, f".{path.name}.{os.getpid()}-{threading.get_ident()}-{next(_SEQ)}.tmp")
        try:
            return os.open(tmp, _OPEN_FLAGS, 0o666), tmp
        except FileNotFoundError:
            path.parent.mkdir(parents=True, exist_ok=True)
        except FileExistsError:         # a leftover of a killed writer with the same pid: take the next number
            pass
    raise FileExistsError(f"cannot create a temp file beside {path}")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike):
    """Yield a temp path beside `path`; on success rename it to `path`, on error delete it."""
    path = Path(path)
    fd, tmp = _create_temp(path)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove_orphans(folder: Path) -> int:
    """Delete the temp files of writers killed before their rename (SIGKILL skips the cleanup above): a resumed
    run must not carry them into its results. Returns how many there were."""
    count = 0
    for p in Path(folder).rglob(".*.tmp"):
        if p.is_file():
            p.unlink(missing_ok=True)
            count += 1
    return count


def write_text_if_changed(path, text: str) -> bool:
    """write_text, but only when the file's text differs: its mtime (make's stamp) moves only on a change."""
    path = Path(path)
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    write_text(path, text)
    return True


def write_text(path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def _default(o):
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def write_json(path, data) -> Path:
    text = json.dumps(data, indent=2, default=_default, allow_nan=True) + "\n"
    return write_text(path, text)


_HEADERS: dict = {}
_FAST_KINDS = frozenset("biufc")


def _npy_header(a: np.ndarray) -> bytes | None:
    """The .npy header np.save writes for the C-contiguous array `a` (cached per dtype and shape); None when
    np.save itself must write it (object, structured or non-contiguous arrays, a NumPy without the helper)."""
    dt = a.dtype
    if dt.kind not in _FAST_KINDS or dt.names is not None or dt.subdtype is not None or not a.flags.c_contiguous:
        return None
    key = (dt.str, a.shape)
    head = _HEADERS.get(key)
    if head is None:
        write_header = getattr(getattr(np.lib, "_format_impl", None), "_write_array_header", None)
        if write_header is None:
            return None
        buf = io.BytesIO()
        write_header(buf, np.lib.format.header_data_from_array_1_0(a), None)   # what np.save writes
        head = buf.getvalue()
        if len(_HEADERS) > 4096:
            _HEADERS.clear()
        _HEADERS[key] = head
    return head


def npy_bytes_ok(a: np.ndarray) -> bool:
    """True when save_npy writes `a` itself (header + raw bytes) rather than through np.save."""
    return _npy_header(np.asarray(a)) is not None


def save_npy(path, array: np.ndarray) -> Path:
    """np.save to `path` atomically (temp file + rename). The same bytes as np.save; for plain numeric
    C-contiguous arrays the cached header and the array's buffer go out in os.write calls (np.save's header
    building and file object cost more than the data for the small arrays of one item)."""
    path = Path(path)
    a = np.asarray(array)
    head = _npy_header(a)
    if head is None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.save(f, a)
        return path
    fd, tmp = _create_temp(path)
    try:
        try:
            _write_all(fd, head)
            if a.size:
                _write_all(fd, a.reshape(-1).view(np.uint8))
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def _write_all(fd: int, data) -> None:
    view = memoryview(data)
    while view.nbytes:
        view = view[os.write(fd, view):]
