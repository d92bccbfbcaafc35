"""One verified, atomic, resumable HTTP download (standard library only).

:func:`fetch_file` writes ``<dest>.part`` next to ``dest``, resumes it with an HTTP ``Range``
request after an interruption (and starts over when the server ignores ``Range``), fsyncs it,
checks its sha256 and only then renames it to ``dest``: a file at ``dest`` is always complete
and verified. Every failure raises one :class:`DownloadError` whose message names the file,
the URL and what to do next.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import http.client
import os
import socket
import ssl
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, Protocol

__all__ = ["DownloadError", "fetch_file", "sha256_of"]

_CHUNK = 1 << 16
_USER_AGENT = "torch-pairconf-downloader/1"
# Statuses worth another attempt; any other HTTP error is final.
_TRANSIENT_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


class DownloadError(RuntimeError):
    """A failed download; ``str(err)`` is one line naming the file, the URL and the remedy."""

    def __init__(self, message: str, *, name: str, url: str, path: Path) -> None:
        super().__init__(message)
        self.name = name
        self.url = url
        self.path = path


class _Transient(Exception):
    """A failure that another attempt (resuming the ``.part`` file) may get past."""


class _Fatal(Exception):
    """A failure another attempt would repeat."""


class _Progress(Protocol):
    def update(self, n: int) -> object: ...

    def close(self) -> None: ...


class _NoProgress:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


# ------------------------------------------------------------------------------ connections
# urllib has a single timeout for connecting and for each read; these connection classes
# connect under ``timeout`` and then switch the socket to ``read_timeout``.


class _HTTPConnection(http.client.HTTPConnection):
    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self._read_timeout)


class _HTTPSConnection(http.client.HTTPSConnection):
    def __init__(self, *args: Any, read_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self._read_timeout)


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._read_timeout = read_timeout

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        factory = functools.partial(_HTTPConnection, read_timeout=self._read_timeout)
        return self.do_open(factory, req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float) -> None:
        super().__init__()
        self._read_timeout = read_timeout
        self._ssl_context: ssl.SSLContext | None = None  # built on first use: loading CAs is slow

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        if self._ssl_context is None:
            self._ssl_context = ssl.create_default_context()
        factory = functools.partial(_HTTPSConnection, read_timeout=self._read_timeout)
        return self.do_open(factory, req, context=self._ssl_context)


def _opener(read_timeout: float) -> urllib.request.OpenerDirector:
    """Default opener (proxies from the environment included) with the read timeout."""
    return urllib.request.build_opener(_HTTPHandler(read_timeout), _HTTPSHandler(read_timeout))


# ---------------------------------------------------------------------------------- helpers


def _default_progress(name: str, total: int | None, initial: int) -> _Progress:
    """A tqdm bar on a terminal, nothing otherwise (logs stay readable)."""
    if not sys.stderr.isatty():
        return _NoProgress()
    try:
        from tqdm import tqdm  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        return _NoProgress()
    bar: _Progress = tqdm(
        total=total,
        initial=initial,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        desc=name,
        file=sys.stderr,
        leave=False,
    )
    return bar


def _fsync_dir(directory: Path) -> None:
    """Persist a rename (best effort: not every platform can open a directory)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def _locked_part(part: Path, fail: Callable[[str], DownloadError]) -> Iterator[IO[bytes]]:
    """Open ``part`` for appending under an exclusive lock (POSIX), so two processes never
    interleave their writes into one ``.part`` file."""
    try:
        fh = open(part, "a+b")  # closed in the finally below
    except OSError as exc:
        raise fail(_os_problem(part, exc)) from exc
    owned = False
    try:
        try:
            import fcntl
        except ImportError:  # Windows: no advisory lock
            fcntl = None  # type: ignore[assignment]
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise fail(
                    f"another process is downloading into {part}; wait for it to finish "
                    f"(or delete {part} if none is running)"
                ) from None
        owned = True
        yield fh
    finally:
        # A failure before any byte arrived leaves no empty .part behind.
        with contextlib.suppress(OSError):
            if owned and not fh.closed and fh.seek(0, os.SEEK_END) == 0:
                part.unlink()
        fh.close()


def _os_problem(path: Path, exc: OSError) -> str:
    """A file-system error as advice."""
    reason = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return (
            f"cannot write {path}: {reason}; free some space or choose another folder "
            f"(--to DIR or MECPE_CACHE_DIR)"
        )
    return f"cannot write {path}: {reason}; choose a writable folder (--to DIR or MECPE_CACHE_DIR)"


def _network_problem(exc: BaseException) -> tuple[str, bool]:
    """(reason, transient) for an error raised while connecting or reading."""
    if isinstance(exc, urllib.error.HTTPError):
        return f"HTTP {exc.code} {exc.reason}", exc.code in _TRANSIENT_STATUS
    reason: object = exc.reason if isinstance(exc, urllib.error.URLError) else exc
    if isinstance(reason, socket.gaierror):
        return f"cannot resolve the host ({reason.strerror}); you seem to be offline", False
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused", False
    if isinstance(reason, TimeoutError):  # socket.timeout is an alias since 3.10
        return "timed out", True
    if isinstance(reason, ssl.SSLError):
        return f"TLS error ({reason})", False
    if isinstance(reason, (ConnectionResetError, ConnectionAbortedError, BrokenPipeError)):
        return f"connection lost ({reason})", True
    if isinstance(reason, http.client.HTTPException):
        return f"bad HTTP response ({type(reason).__name__}: {reason})", True
    if isinstance(reason, OSError):
        return f"network error ({reason.strerror or reason})", False
    return str(reason), False


def _content_range_start(value: str | None) -> int | None:
    """Start offset of ``Content-Range: bytes START-END/TOTAL``."""
    if not value or not value.startswith("bytes "):
        return None
    start = value[len("bytes ") :].split("-", 1)[0]
    return int(start) if start.isdigit() else None


# --------------------------------------------------------------------------------- transfer


def _transfer(
    url: str,
    fh: IO[bytes],
    *,
    name: str,
    size: int | None,
    opener: urllib.request.OpenerDirector,
    connect_timeout: float,
    progress: Callable[[str, int | None, int], _Progress],
) -> None:
    """One attempt: append the rest of ``url`` to ``fh`` (resuming from its current size).

    Raises :class:`_Transient` when another attempt may succeed (the bytes written so far
    stay in ``fh``), ``OSError`` for local write errors and ``_Fatal`` otherwise.
    """
    have = fh.seek(0, os.SEEK_END)
    if size is not None and have >= size:
        return  # complete (or too long): the checksum decides
    headers = {"User-Agent": _USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = opener.open(request, timeout=connect_timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # our .part is no prefix of the file: start over
            fh.truncate(0)
            raise _Transient("server refused to resume; starting over") from exc
        reason, transient = _network_problem(exc)
        raise (_Transient(reason) if transient else _Fatal(reason)) from exc
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        if isinstance(getattr(exc, "reason", exc), TimeoutError):
            # No answer at all (a dead network or server): retrying would only prolong it.
            raise _Fatal("no answer from the server (timed out)") from exc
        reason, transient = _network_problem(exc)
        raise (_Transient(reason) if transient else _Fatal(reason)) from exc
    with response:
        if have and not (
            response.status == 206
            and _content_range_start(response.headers.get("Content-Range")) == have
        ):
            # The server ignored Range (200) or answered another range: restart cleanly.
            fh.seek(0)
            fh.truncate(0)
            have = 0
        length = response.headers.get("Content-Length")
        expected = have + int(length) if length and length.isdigit() else size
        bar = progress(name, size if size is not None else expected, have)
        received = have
        try:
            while True:
                try:
                    chunk = response.read(_CHUNK)
                except (OSError, http.client.HTTPException) as exc:
                    reason, _ = _network_problem(exc)
                    raise _Transient(f"{reason} after {received} bytes") from exc
                if not chunk:
                    break
                fh.write(chunk)
                received += len(chunk)
                bar.update(len(chunk))
        finally:
            bar.close()
    fh.flush()
    if expected is not None and received < expected:
        raise _Transient(f"connection closed after {received} of {expected} bytes")


def fetch_file(
    url: str,
    dest: str | os.PathLike[str],
    *,
    sha256: str,
    size: int | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    connect_timeout: float = 10.0,
    read_timeout: float = 30.0,
    progress: Callable[[str, int | None, int], _Progress] | None = None,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Download ``url`` to ``dest`` unless ``dest`` already holds the file with ``sha256``.

    Args:
        url: source URL (``http`` or ``https``).
        dest: final path; its folder is created. ``<dest>.part`` holds the transfer.
        sha256: expected hex digest; ``size`` (bytes), when given, lets a complete ``.part``
            skip the network and a too-long one start over.
        retries: attempts in all (``>= 1``) for transient failures (a read timing out or a
            connection cut during the transfer, HTTP 5xx/429); each retry resumes the
            ``.part`` file with ``Range``. Name resolution failures, refused connections, no
            answer before the timeout and other HTTP errors are final at once, so an offline
            machine fails in well under a second (at most ``connect_timeout`` +
            ``read_timeout`` when packets are silently dropped).
        backoff: seconds before the 2nd attempt, doubled for each later one.
        connect_timeout / read_timeout: seconds to connect, and to wait for each read.
        progress: ``(name, total, initial) -> bar`` with ``update(n)``/``close()``;
            default: a tqdm bar when stderr is a terminal, otherwise none.
        log: called with one line before a transfer starts (default: print to stderr).

    Returns:
        ``dest`` as a :class:`~pathlib.Path`.

    Raises:
        DownloadError: one message naming the file, the URL and what to do: offline or
            unreachable host, HTTP error, checksum mismatch (the bad ``.part`` is removed, so
            nothing that looks complete is left), an existing ``dest`` whose checksum differs
            (kept; delete it to download again), disk full or unwritable folder.

    Example:
        >>> import tempfile, pathlib, hashlib
        >>> src = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
        >>> _ = src.write_bytes(b"hello")
        >>> out = fetch_file(src.as_uri(), src.with_name("b.txt"),
        ...                  sha256=hashlib.sha256(b"hello").hexdigest(), log=lambda _: None)
        >>> out.read_bytes()
        b'hello'
    """
    if retries < 1:
        raise ValueError(f"retries must be >= 1, got {retries}")
    dest = Path(dest)
    name = dest.name
    part = dest.with_name(dest.name + ".part")
    sha256 = sha256.lower()

    def fail(problem: str) -> DownloadError:
        return DownloadError(f"{name}: {problem} [{url}]", name=name, url=url, path=dest)

    if dest.exists():
        actual = sha256_of(dest)
        if actual == sha256:
            return dest
        raise fail(
            f"{dest} exists but its sha256 is {actual}, not {sha256}; delete it to download "
            f"it again"
        )
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise fail(_os_problem(dest.parent, exc)) from exc
    progress = progress or _default_progress
    log = log or (lambda line: print(line, file=sys.stderr, flush=True))
    opener = _opener(read_timeout)
    by_hand = f"download it by hand to {dest} (sha256 {sha256})"

    with _locked_part(part, fail) as fh:
        restarted = False
        attempt = 1
        while True:
            resumed = fh.seek(0, os.SEEK_END)
            resuming = f" (resuming at {resumed} bytes)" if resumed else ""
            log(f"download: {name} <- {url}{resuming}")
            try:
                _transfer(
                    url,
                    fh,
                    name=name,
                    size=size,
                    opener=opener,
                    connect_timeout=connect_timeout,
                    progress=progress,
                )
                os.fsync(fh.fileno())
            except _Transient as exc:
                if attempt >= retries:
                    raise fail(
                        f"{exc} (attempt {attempt} of {retries}); check your connection and run "
                        f"again: the transfer resumes from {part}; or {by_hand}"
                    ) from exc
                time.sleep(backoff * 2 ** (attempt - 1))
                attempt += 1
                continue
            except _Fatal as exc:
                raise fail(f"{exc}; check your connection and the URL, or {by_hand}") from exc
            except OSError as exc:
                raise fail(_os_problem(part, exc)) from exc
            actual = sha256_of(part)
            if actual == sha256:
                break
            fh.seek(0)
            fh.truncate(0)
            if resumed and not restarted:
                # The kept prefix may come from another transfer: one clean restart.
                restarted = True
                continue
            with contextlib.suppress(OSError):
                part.unlink()
            raise fail(
                f"checksum mismatch (sha256 {actual}, expected {sha256}); the partial file was "
                f"removed; {by_hand}"
            )
        if os.name == "nt":  # Windows cannot rename an open file
            fh.close()
        try:
            os.replace(part, dest)
        except OSError as exc:
            raise fail(_os_problem(dest, exc)) from exc
    _fsync_dir(dest.parent)
    return dest
