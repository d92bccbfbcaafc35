"""Tests for the downloader: a local HTTP server on 127.0.0.1 serves generated files.

No test reaches the internet: every URL points to the server below (or to a closed port).
"""

from __future__ import annotations

import dataclasses
import doctest
import errno
import hashlib
import json
import os
import re
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from examples.mecpe import download, sources, transfer
from examples.mecpe.data import main as data_main
from examples.mecpe.datasets import load_split
from examples.mecpe.download import (
    DataDirError,
    cache_dir,
    fetch_dataset,
    main,
    resolve_data_dir,
)
from examples.mecpe.sources import DatasetSource, ManualFile, RemoteFile
from examples.mecpe.transfer import DownloadError, fetch_file

REPO = Path(__file__).resolve().parents[2]

# ------------------------------------------------------------------------------ the server


@dataclasses.dataclass
class ServerState:
    """What the server serves and how it misbehaves; ``requests`` logs (path, Range)."""

    files: dict[str, bytes] = dataclasses.field(default_factory=dict)
    honour_range: bool = True
    cut_after: int = 0  # bytes sent before closing the connection, for the next `cuts` GETs
    cuts: int = 0
    errors: list[int] = dataclasses.field(default_factory=list)  # statuses for the next GETs
    delay: float = 0.0  # seconds before the body is sent
    requests: list[tuple[str, str | None]] = dataclasses.field(default_factory=list)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: object) -> None:  # quiet test output
        pass

    def do_GET(self) -> None:
        state = self.server.state
        state.requests.append((self.path, self.headers.get("Range")))
        if state.errors:
            self.send_error(state.errors.pop(0))
            return
        body = state.files.get(self.path)
        if body is None:
            self.send_error(404)
            return
        start = 0
        match = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range") or "")
        if match and state.honour_range:
            start = int(match.group(1))
            if start >= len(body):
                self.send_error(416)
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if state.delay:
            time.sleep(state.delay)
        if state.cuts > 0:
            state.cuts -= 1
            self.wfile.write(payload[: state.cut_after])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(payload)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: ServerState


@pytest.fixture
def server() -> Iterator[tuple[str, ServerState]]:
    """``(base_url, state)`` of a server on an ephemeral port of 127.0.0.1."""
    httpd = _Server(("127.0.0.1", 0), _Handler)
    httpd.state = ServerState()
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd.state
    finally:
        httpd.shutdown()
        httpd.server_close()


@pytest.fixture
def closed_port() -> int:
    """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's data/cache folders or mirror."""
    for name in (download.ENV_DATA_DIR, download.ENV_BASE_URL, download.ENV_CACHE_DIR):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def quiet(**kwargs: Any) -> dict[str, Any]:
    """fetch_file options for tests: no log, no progress bar, no backoff sleep."""
    return {"log": lambda _: None, "backoff": 0.0, **kwargs}


BLOB = bytes(range(256)) * 40  # 10 KiB, not a repetition of its first half


# ---------------------------------------------------------------------------- fetch_file


def test_download_success_leaves_only_the_file(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.files["/d/a.bin"] = BLOB
    out = fetch_file(f"{base}/d/a.bin", tmp_path / "x" / "a.bin", sha256=sha(BLOB), **quiet())
    assert out == tmp_path / "x" / "a.bin"
    assert out.read_bytes() == BLOB
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.bin"]
    assert state.requests == [("/d/a.bin", None)]


def test_verified_file_is_reused_without_a_request(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.files["/a"] = BLOB
    dest = tmp_path / "a"
    fetch_file(f"{base}/a", dest, sha256=sha(BLOB), **quiet())
    fetch_file(f"{base}/a", dest, sha256=sha(BLOB), **quiet())
    assert len(state.requests) == 1


def test_existing_file_with_other_checksum_is_kept_and_reported(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    dest = tmp_path / "a"
    dest.write_bytes(b"edited by hand")
    with pytest.raises(DownloadError, match=r"exists but its sha256 .*delete it"):
        fetch_file(f"{base}/a", dest, sha256=sha(BLOB), **quiet())
    assert dest.read_bytes() == b"edited by hand"
    assert state.requests == []


def test_checksum_mismatch_leaves_nothing_that_looks_complete(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.files["/a.txt"] = BLOB
    url = f"{base}/a.txt"
    with pytest.raises(DownloadError) as info:
        fetch_file(url, tmp_path / "a.txt", sha256=sha(b"other"), **quiet())
    message = str(info.value)
    assert "checksum mismatch" in message and "a.txt" in message and url in message
    assert f"download it by hand to {tmp_path / 'a.txt'}" in message
    assert list(tmp_path.iterdir()) == []  # no a.txt, no a.txt.part
    assert info.value.url == url and info.value.name == "a.txt"


def test_http_404_is_final_and_names_file_and_url(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    url = f"{base}/missing.txt"
    with pytest.raises(DownloadError) as info:
        fetch_file(url, tmp_path / "missing.txt", sha256=sha(b""), retries=3, **quiet())
    message = str(info.value)
    assert "HTTP 404" in message and url in message and "missing.txt" in message
    assert "\n" not in message
    assert len(state.requests) == 1  # not retried
    assert list(tmp_path.iterdir()) == []  # no empty .part left


def test_http_503_is_retried(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.files["/a"] = BLOB
    state.errors = [503, 503]
    fetch_file(f"{base}/a", tmp_path / "a", sha256=sha(BLOB), retries=3, **quiet())
    assert (tmp_path / "a").read_bytes() == BLOB
    assert len(state.requests) == 3


def test_http_503_gives_up_after_the_bounded_retries(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.files["/a"] = BLOB
    state.errors = [503] * 5
    with pytest.raises(DownloadError, match=r"HTTP 503 .*attempt 2 of 2"):
        fetch_file(f"{base}/a", tmp_path / "a", sha256=sha(BLOB), retries=2, **quiet())
    assert len(state.requests) == 2


def test_cut_transfer_keeps_part_then_resumes_with_range(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.files["/a"] = BLOB
    state.cuts, state.cut_after = 1, 3000
    dest, part = tmp_path / "a", tmp_path / "a.part"
    with pytest.raises(DownloadError) as info:
        fetch_file(f"{base}/a", dest, sha256=sha(BLOB), retries=1, **quiet())
    assert "connection closed after 3000 of 10240 bytes" in str(info.value)
    assert f"resumes from {part}" in str(info.value)
    assert not dest.exists() and part.read_bytes() == BLOB[:3000]
    fetch_file(f"{base}/a", dest, sha256=sha(BLOB), retries=1, **quiet())
    assert dest.read_bytes() == BLOB and not part.exists()
    assert state.requests == [("/a", None), ("/a", "bytes=3000-")]


def test_cut_transfer_resumes_within_one_call(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.files["/a"] = BLOB
    state.cuts, state.cut_after = 2, 1000
    fetch_file(f"{base}/a", tmp_path / "a", sha256=sha(BLOB), retries=3, **quiet())
    assert (tmp_path / "a").read_bytes() == BLOB
    assert [r for _, r in state.requests] == [None, "bytes=1000-", "bytes=2000-"]


def test_server_ignoring_range_restarts_cleanly(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.files["/a"] = BLOB
    state.honour_range = False
    (tmp_path / "a.part").write_bytes(BLOB[:4000])
    fetch_file(f"{base}/a", tmp_path / "a", sha256=sha(BLOB), **quiet())
    assert (tmp_path / "a").read_bytes() == BLOB  # the prefix is not doubled
    assert state.requests == [("/a", "bytes=4000-")]


def test_corrupt_partial_file_is_restarted_once(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.files["/a"] = BLOB
    (tmp_path / "a.part").write_bytes(b"\xff" * 4000)  # not a prefix of the file
    fetch_file(f"{base}/a", tmp_path / "a", sha256=sha(BLOB), **quiet())
    assert (tmp_path / "a").read_bytes() == BLOB
    assert [r for _, r in state.requests] == ["bytes=4000-", None]


def test_complete_partial_file_needs_no_request(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    (tmp_path / "a.part").write_bytes(BLOB)  # e.g. the rename was interrupted
    fetch_file(f"{base}/a", tmp_path / "a", sha256=sha(BLOB), size=len(BLOB), **quiet())
    assert (tmp_path / "a").read_bytes() == BLOB
    assert state.requests == []


def test_offline_fails_fast_with_one_line(closed_port: int, tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{closed_port}/data/train.txt"
    start = time.monotonic()
    with pytest.raises(DownloadError) as info:
        fetch_file(url, tmp_path / "train.txt", sha256=sha(b""), retries=3, backoff=5.0, log=print)
    assert time.monotonic() - start < 3.0  # no retry, no backoff
    message = str(info.value)
    assert "\n" not in message
    assert "train.txt" in message and url in message and "connection refused" in message
    assert "check your connection" in message and "download it by hand" in message
    assert list(tmp_path.iterdir()) == []


def test_silent_server_fails_without_retry(tmp_path: Path) -> None:
    """A peer that accepts the connection but never answers (like a black hole)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        url = f"http://127.0.0.1:{listener.getsockname()[1]}/a"
        start = time.monotonic()
        with pytest.raises(DownloadError, match=r"no answer from the server .*check your conn"):
            fetch_file(
                url,
                tmp_path / "a",
                sha256=sha(b""),
                retries=3,
                backoff=5.0,
                connect_timeout=0.3,
                read_timeout=0.3,
                log=lambda _: None,
            )
        assert time.monotonic() - start < 2.0


def test_read_timeout_is_bounded_and_retried(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.files["/a"] = BLOB
    state.delay = 1.0
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"timed out .*attempt 2 of 2"):
        fetch_file(
            f"{base}/a", tmp_path / "a", sha256=sha(BLOB), retries=2, read_timeout=0.2, **quiet()
        )
    assert time.monotonic() - start < 1.9
    assert len(state.requests) == 2


def test_unwritable_target_names_the_folder(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    state.files["/a"] = BLOB
    blocker = tmp_path / "file"
    blocker.write_text("a file, not a folder")
    with pytest.raises(DownloadError, match=r"cannot write .*file.*choose a writable folder"):
        fetch_file(f"{base}/a", blocker / "sub" / "a", sha256=sha(BLOB), **quiet())
    assert state.requests == []


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores modes")
def test_read_only_folder(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.files["/a"] = BLOB
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o500)
    with pytest.raises(DownloadError, match=r"cannot write .*Permission denied"):
        fetch_file(f"{base}/a", folder / "a", sha256=sha(BLOB), **quiet())


def test_disk_full_keeps_the_partial_file(
    server: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = server
    state.files["/a"] = BLOB

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(DownloadError, match=r"a\.part: No space left on device; free some space"):
        fetch_file(f"{base}/a", tmp_path / "a", sha256=sha(BLOB), **quiet())
    assert not (tmp_path / "a").exists()


@pytest.mark.skipif(os.name != "posix", reason="advisory locks are POSIX")
def test_concurrent_download_into_the_same_part_is_refused(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    import fcntl

    base, state = server
    state.files["/a"] = BLOB
    with open(tmp_path / "a.part", "ab") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX)
        with pytest.raises(DownloadError, match=r"another process is downloading"):
            fetch_file(f"{base}/a", tmp_path / "a", sha256=sha(BLOB), **quiet())
    assert (tmp_path / "a.part").exists()  # the other process's file is left alone
    assert state.requests == []


def test_progress_bar_sees_every_byte(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    state.files["/a"] = BLOB
    seen: list[tuple[str, int | None, int]] = []
    counted: list[int] = []

    class Bar:
        def update(self, n: int) -> None:
            counted.append(n)

        def close(self) -> None:
            pass

    def factory(name: str, total: int | None, initial: int) -> Bar:
        seen.append((name, total, initial))
        return Bar()

    fetch_file(f"{base}/a", tmp_path / "a", sha256=sha(BLOB), progress=factory, **quiet())
    assert seen == [("a", len(BLOB), 0)]
    assert sum(counted) == len(BLOB)


def test_retries_must_be_positive(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="retries"):
        fetch_file("http://127.0.0.1:1/a", tmp_path / "a", sha256="0", retries=0)


# --------------------------------------------------------------------- datasets / resolution

ECF_TRAIN = "1 2\n(2,1)\n1 | A | neutral | Hello . | t\n2 | B | joy | Hi ! | t\n"
ECF_DEV = "2 1\n(1,1)\n1 | A | sadness | Oh no . | t\n"
ECF_TEST = "3 2\n\n1 | A | neutral | Yes . | t\n2 | B | anger | No ! | t\n"


def _mapping_bytes(tmp_path: Path) -> bytes:
    path = tmp_path / "mapping_src.npy"
    array = np.empty((), dtype=object)
    array[()] = {"dia1utt1": 1, "dia1utt2": 2, "dia2utt1": 3, "dia3utt1": 4, "dia3utt2": 5}
    np.save(path, array, allow_pickle=True)
    data = path.read_bytes()
    path.unlink()
    return data


def tiny_ecf(state: ServerState, tmp_path: Path) -> DatasetSource:
    """A generated ECF 'release' served under /repo/data/, and its source description."""
    contents = {
        "train.txt": ECF_TRAIN.encode(),
        "dev.txt": ECF_DEV.encode(),
        "test.txt": ECF_TEST.encode(),
        "video_id_mapping.npy": _mapping_bytes(tmp_path),
    }
    files = []
    for name, data in contents.items():
        state.files[f"/data/{name}"] = data
        files.append(
            RemoteFile(
                name=name,
                path=f"data/{name}",
                sha256=sha(data),
                size=len(data),
                required=name.endswith(".txt"),
                purpose="test",
            )
        )
    return dataclasses.replace(sources.source("ecf"), files=tuple(files))


def test_fetch_dataset_into_folder(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    src = tiny_ecf(state, tmp_path)
    folder = fetch_dataset("ecf", tmp_path / "ecf", base_url=base, src=src, **quiet())
    assert sorted(p.name for p in folder.iterdir()) == [
        "dev.txt",
        "test.txt",
        "train.txt",
        "video_id_mapping.npy",
    ]
    assert [c.conv_id for c in load_split("ecf", folder, "train")] == ["1"]


def test_fetch_dataset_can_skip_optional_files(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    src = tiny_ecf(state, tmp_path)
    folder = fetch_dataset(
        "ecf", tmp_path / "e", base_url=base, src=src, include_optional=False, **quiet()
    )
    assert not (folder / "video_id_mapping.npy").exists()
    assert len(state.requests) == 3


def test_base_url_from_environment(
    server: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    base, state = server
    src = tiny_ecf(state, tmp_path)
    monkeypatch.setenv(download.ENV_BASE_URL, base + "/")
    assert download.file_url(src, "data/train.txt") == f"{base}/data/train.txt"
    fetch_dataset("ecf", tmp_path / "e", src=src, **quiet())
    assert (tmp_path / "e" / "train.txt").read_text() == ECF_TRAIN


def test_pinned_urls_name_a_commit() -> None:
    for src in sources.SOURCES.values():
        assert re.fullmatch(r"[0-9a-f]{40}", src.commit), src.name
        for remote in src.files:
            url = download.file_url(src, remote.path)
            assert url == (
                f"https://raw.githubusercontent.com/{src.repository}/{src.commit}/{remote.path}"
            )
            assert re.fullmatch(r"[0-9a-f]{64}", remote.sha256) and remote.size > 0
    assert sources.source("ecf").required_names == ("train.txt", "dev.txt", "test.txt")
    assert sources.source("mec4").required_names == (
        "MEC4_text/train.json",
        "MEC4_text/valid.json",
        "MEC4_text/test.json",
    )
    with pytest.raises(ValueError, match="unknown dataset 'meld'"):
        sources.source("meld")


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert cache_dir("ecf") == tmp_path / "xdg" / "torch-pairconf" / "ecf"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert cache_dir("ecf") == Path.home() / ".cache" / "torch-pairconf" / "ecf"
    monkeypatch.setenv(download.ENV_CACHE_DIR, str(tmp_path / "c"))
    assert cache_dir("mecad") == tmp_path / "c" / "mecad"


def test_explicit_data_dir_wins_and_downloads_nothing(
    server: tuple[str, ServerState], tmp_path: Path
) -> None:
    base, state = server
    src = tiny_ecf(state, tmp_path)
    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("train.txt", "dev.txt", "test.txt"):
        (mine / name).write_text("")
    assert resolve_data_dir("ecf", mine, base_url=base, src=src) == mine
    assert state.requests == []


def test_data_dir_from_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(download.ENV_DATA_DIR, str(tmp_path))
    with pytest.raises(DataDirError) as info:
        resolve_data_dir("ecf")
    message = str(info.value)
    assert f"from ${download.ENV_DATA_DIR}" in message
    assert "lacks train.txt, dev.txt, test.txt" in message
    for name in ("train.txt", "dev.txt", "test.txt"):
        (tmp_path / name).write_text("")
    assert resolve_data_dir("ecf") == tmp_path


def test_missing_explicit_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(DataDirError, match=r"mecad data folder .*nope \(given\) does not exist"):
        resolve_data_dir("mecad", tmp_path / "nope")


def test_cache_is_filled_then_reused(server: tuple[str, ServerState], tmp_path: Path) -> None:
    base, state = server
    src = tiny_ecf(state, tmp_path)
    folder = resolve_data_dir("ecf", base_url=base, src=src, **quiet())
    assert folder == cache_dir("ecf")
    assert (folder / "video_id_mapping.npy").is_file()
    count = len(state.requests)
    assert resolve_data_dir("ecf", base_url=base, src=src, **quiet()) == folder
    assert len(state.requests) == count == 4


def test_no_download_with_empty_cache(tmp_path: Path) -> None:
    with pytest.raises(
        DataDirError, match=r"not in the cache .*python -m examples\.mecpe\.download"
    ):
        resolve_data_dir("ecf", download=False)


def test_mec4_explains_what_to_fetch_by_hand(tmp_path: Path) -> None:
    with pytest.raises(DataDirError) as info:
        resolve_data_dir("mec4")
    message = str(info.value)
    url = sources.source("mec4").manual[0].url
    assert url in message and str(cache_dir("mec4") / "MEC4_text" / "train.json") in message
    with pytest.raises(DataDirError, match=re.escape(url)):
        fetch_dataset("mec4")


def test_explicit_mec4_folder_lists_manual_files(tmp_path: Path) -> None:
    with pytest.raises(DataDirError) as info:
        resolve_data_dir("mec4", tmp_path)
    assert "fetch them by hand" in str(info.value)
    assert str(tmp_path / "MEC4_text" / "valid.json") in str(info.value)


def test_manual_instructions_skip_present_files(tmp_path: Path) -> None:
    src = sources.source("ecf")
    text = download.manual_instructions(src, tmp_path)
    assert "audio_embedding_6373.npy (optional" in text and src.manual[0].url in text
    (tmp_path / "audio_embedding_6373.npy").write_bytes(b"")
    (tmp_path / "video_embedding_4096.npy").write_bytes(b"")
    assert download.manual_instructions(src, tmp_path) == ""
    only = dataclasses.replace(src, manual=(ManualFile("x.npy", "https://example.org/x", "p"),))
    assert "x.npy" in download.manual_instructions(only, tmp_path)


# -------------------------------------------------------------------------------------- CLI


def test_cli_resolve_prints_only_the_folder(
    server: tuple[str, ServerState],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """End to end, what run_ecf.sh does: resolve -> fetch the tiny ECF -> a loadable folder."""
    base, state = server
    monkeypatch.setitem(sources.SOURCES, "ecf", tiny_ecf(state, tmp_path))
    monkeypatch.setenv(download.ENV_BASE_URL, base)
    assert main(["ecf", "--resolve"]) == 0
    out = capsys.readouterr().out
    assert out == f"{cache_dir('ecf')}\n"
    folder = Path(out.strip())
    assert [len(load_split("ecf", folder, s)) for s in ("train", "dev", "test")] == [1, 1, 1]


# `python -m examples.mecpe.data download ...` is the same command
_ENTRY_POINTS = {"download": main, "data download": lambda a: data_main(["download", *a])}


@pytest.mark.parametrize("entry", sorted(_ENTRY_POINTS))
def test_cli_download_reports_manual_files(
    entry: str,
    server: tuple[str, ServerState],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    base, state = server
    monkeypatch.setitem(sources.SOURCES, "ecf", tiny_ecf(state, tmp_path))
    assert _ENTRY_POINTS[entry](["ecf", "--to", str(tmp_path / "e"), "--base-url", base]) == 0
    captured = capsys.readouterr()
    assert captured.out == f"{tmp_path / 'e'}\n"
    assert "verified in" in captured.err and "video_embedding_4096.npy" in captured.err
    assert str(tmp_path / "e" / "audio_embedding_6373.npy") in captured.err
    assert [len(load_split("ecf", tmp_path / "e", s)) for s in ("train", "dev", "test")] == [1, 1, 1]


def test_data_without_the_download_subcommand_prints_usage(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert data_main(["ecf"]) == 2
    assert "download" in capsys.readouterr().err


def test_cli_offline_one_error_line(
    closed_port: int,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv(download.ENV_BASE_URL, f"http://127.0.0.1:{closed_port}")
    assert main(["mecad", "--resolve"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    errors = [line for line in captured.err.splitlines() if line.startswith("download: error")]
    assert len(errors) == 1 and "valid_data_pair.json" in errors[0]


def test_cli_check_runs_the_feature_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for name, text in (("train.txt", ECF_TRAIN), ("dev.txt", ECF_DEV), ("test.txt", ECF_TEST)):
        (tmp_path / name).write_text(text)
    (tmp_path / "video_id_mapping.npy").write_bytes(_mapping_bytes(tmp_path))
    np.save(tmp_path / "video_embedding_4096.npy", np.zeros((6, 4096), np.float32))
    assert main(["ecf", "--check", "--data-dir", str(tmp_path)]) == 0
    assert "video_embedding_4096.npy ok: 6 rows x 4096" in capsys.readouterr().out
    np.save(tmp_path / "video_embedding_4096.npy", np.zeros((6, 10), np.float32))
    assert main(["ecf", "--check", "--data-dir", str(tmp_path)]) == 1
    assert "expected 4096 features per row" in capsys.readouterr().out


def test_run_ecf_sh_fails_in_seconds_offline(closed_port: int, tmp_path: Path) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in (download.ENV_DATA_DIR, download.ENV_CACHE_DIR, download.ENV_BASE_URL)
    }
    env[download.ENV_BASE_URL] = f"http://127.0.0.1:{closed_port}"
    env[download.ENV_CACHE_DIR] = str(tmp_path / "cache")
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "mecpe" / "run_ecf.sh")],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert time.monotonic() - start < 10
    assert proc.returncode == 2
    assert "train.txt" in proc.stderr and "connection refused" in proc.stderr
    assert "download it by hand to" in proc.stderr
    assert f"ecf needs train.txt, dev.txt, test.txt, video_id_mapping.npy in {tmp_path}" in (
        proc.stderr
    )
    assert "$MECPE_DATA_DIR" in proc.stderr


def test_run_ecf_sh_rejects_an_explicit_folder_without_ecf(tmp_path: Path) -> None:
    proc = subprocess.run(
        ["bash", str(REPO / "examples" / "mecpe" / "run_ecf.sh"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert f"{tmp_path} (given) lacks train.txt, dev.txt, test.txt" in proc.stderr


def test_docstring_examples_run() -> None:
    from examples.mecpe import manual_files

    for module in (transfer, download, manual_files):
        result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
        assert result.attempted > 0 and result.failed == 0, module.__name__


def test_study_fetches_a_tiny_ecf_on_first_use_and_reuses_it(
    server: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The main job's path end to end, without a data folder: the study resolves ECF, fetches it
    from the (local) official source into the cache, trains and summarises; a second study reuses
    the cache without a request."""
    from examples.mecpe import study

    base, state = server
    monkeypatch.setitem(sources.SOURCES, "ecf", tiny_ecf(state, tmp_path))
    monkeypatch.setenv(download.ENV_BASE_URL, base)
    args = ["--dataset", "ecf", "--arms", "base,rpcl", "--seeds", "1", "--epochs", "1",
            "--text-encoder", "hash", "--hash-buckets", "64", "--batch-size", "1", "--quiet",
            "--no-plots", "--threads", "1"]  # fmt: skip
    assert study.main([*args, "--out", str(tmp_path / "study")]) == 0
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    assert [r["arm"] for r in summary["runs"]] == ["base", "rpcl"]
    assert sorted(p.name for p in cache_dir("ecf").iterdir()) == ["dev.txt", "test.txt", "train.txt", "video_id_mapping.npy"]
    fetched = len(state.requests)
    assert fetched == 4
    assert study.main([*args, "--out", str(tmp_path / "again")]) == 0
    assert len(state.requests) == fetched  # the cache is verified and reused: no network
