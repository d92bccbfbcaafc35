"""Datasets fetched from their official sources on first use, into a user cache.

Command line::

    python -m examples.mecpe.download ecf|mecad|mec4 [--to DIR]      # fetch (or reuse), report
    python -m examples.mecpe.download ecf --resolve [--data-dir DIR]  # print the folder to use
    python -m examples.mecpe.download ecf|mec4 --check [--data-dir DIR]  # check hand-fetched files

Where the data come from is :mod:`examples.mecpe.sources`; the transfer itself (atomic,
resumable, checksummed) is :func:`examples.mecpe.transfer.fetch_file`.

Folders: an explicit ``data_dir`` (``--data-dir``) or ``$MECPE_DATA_DIR`` is used as it is and
nothing is downloaded; otherwise the cache ``$MECPE_CACHE_DIR/<dataset>`` (default
``$XDG_CACHE_HOME/torch-pairconf/<dataset>``, i.e. ``~/.cache/torch-pairconf/<dataset>``) is
used and filled. ``$MECPE_DOWNLOAD_BASE_URL`` replaces the pinned
``https://raw.githubusercontent.com/<owner>/<repo>/<commit>`` prefix (a mirror laid out like
the repository; the tests point it to a local server).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .sources import DatasetSource, source
from .transfer import DownloadError, fetch_file

__all__ = [
    "ENV_BASE_URL",
    "ENV_CACHE_DIR",
    "ENV_DATA_DIR",
    "DataDirError",
    "DownloadError",
    "cache_dir",
    "fetch_dataset",
    "file_url",
    "main",
    "manual_instructions",
    "missing_files",
    "resolve_data_dir",
]

ENV_DATA_DIR = "MECPE_DATA_DIR"
ENV_CACHE_DIR = "MECPE_CACHE_DIR"
ENV_BASE_URL = "MECPE_DOWNLOAD_BASE_URL"


class DataDirError(FileNotFoundError):
    """A data folder lacks files the trainer needs; the message says what to fetch, where."""


def cache_dir(dataset: str) -> Path:
    """The cache folder of ``dataset``: ``$MECPE_CACHE_DIR/<dataset>``, else
    ``$XDG_CACHE_HOME/torch-pairconf/<dataset>``, else ``~/.cache/torch-pairconf/<dataset>``."""
    root = os.environ.get(ENV_CACHE_DIR)
    if root:
        return Path(root).expanduser() / dataset
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "torch-pairconf" / dataset


def file_url(src: DatasetSource, path: str, base_url: str | None = None) -> str:
    """URL of ``path`` (inside ``src``'s repository): ``base_url``, else
    ``$MECPE_DOWNLOAD_BASE_URL``, else the pinned raw-file prefix of ``src``."""
    base = base_url or os.environ.get(ENV_BASE_URL) or src.base_url
    return f"{base.rstrip('/')}/{path}"


def missing_files(src: DatasetSource, data_dir: Path) -> list[str]:
    """Names the trainer needs (:attr:`DatasetSource.required_names`) absent from ``data_dir``."""
    return [name for name in src.required_names if not (data_dir / name).is_file()]


def manual_instructions(src: DatasetSource, data_dir: Path, *, only_missing: bool = True) -> str:
    """What to fetch by hand for ``src`` and where to put it (empty when nothing is left)."""
    lines = []
    for item in src.manual:
        target = data_dir / item.name
        if only_missing and target.exists():
            continue
        need = "required" if item.required else "optional"
        lines.append(f"  {item.name} ({need}: {item.purpose})")
        lines.append(f"    from: {item.url}")
        lines.append(f"    to:   {target}")
    if not lines:
        return ""
    head = f"{src.name}: these files are not plain HTTP downloads; fetch them by hand:"
    tail = f"  (a copy elsewhere works too: pass --data-dir DIR or set ${ENV_DATA_DIR})"
    return "\n".join([head, *lines, tail])


def fetch_dataset(
    dataset: str,
    to: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    include_optional: bool = True,
    src: DatasetSource | None = None,
    **fetch_kwargs: Any,
) -> Path:
    """Download (or reuse, after checking its sha256) every file of ``dataset`` into ``to``.

    Args:
        dataset: ``ecf`` or ``mecad`` (``mec4`` has no HTTP files: its files are fetched by
            hand, see :func:`manual_instructions`).
        to: target folder; default :func:`cache_dir`.
        base_url: replaces the pinned URL prefix (see :func:`file_url`).
        include_optional: also fetch files the trainer needs only for some runs (ECF's
            ``video_id_mapping.npy``, used with audio/video features).
        src: the source description (default :func:`examples.mecpe.sources.source`).
        **fetch_kwargs: passed to :func:`~examples.mecpe.transfer.fetch_file` (``retries``,
            ``backoff``, timeouts, ``progress``, ``log``).

    Returns:
        The folder holding the files.

    Raises:
        DownloadError: for the first file that could not be fetched (one message: the file,
            the URL, what to do). Files fetched before it stay, verified, in the folder.
    """
    src = src or source(dataset)
    folder = Path(to).expanduser() if to is not None else cache_dir(src.name)
    if not src.files:
        raise DataDirError(
            manual_instructions(src, folder)
            or f"{src.name}: no file of this dataset can be downloaded automatically"
        )
    wanted = [remote for remote in src.files if remote.required or include_optional]
    for remote in wanted:
        try:
            fetch_file(
                file_url(src, remote.path, base_url),
                folder / remote.name,
                sha256=remote.sha256,
                size=remote.size,
                **fetch_kwargs,
            )
        except DownloadError as exc:
            # Say what the whole dataset needs, not only the file that failed.
            names = ", ".join(r.name for r in wanted)
            raise DownloadError(
                f"{exc}. {src.name} needs {names} in {folder}, or a copy given with "
                f"--data-dir DIR / ${ENV_DATA_DIR}",
                name=exc.name,
                url=exc.url,
                path=exc.path,
            ) from exc
    return folder


def resolve_data_dir(
    dataset: str,
    data_dir: str | os.PathLike[str] | None = None,
    *,
    download: bool = True,
    base_url: str | None = None,
    src: DatasetSource | None = None,
    **fetch_kwargs: Any,
) -> Path:
    """The folder the trainer should read ``dataset`` from.

    1. ``data_dir`` (e.g. ``--data-dir``), else ``$MECPE_DATA_DIR``: used as it is, nothing is
       downloaded; it must hold the files the trainer needs (else :class:`DataDirError`).
    2. Otherwise :func:`cache_dir`: reused when complete (every file's sha256 checked; no
       network), else filled by :func:`fetch_dataset` when ``download`` is true.

    Raises:
        DataDirError: missing files in an explicit folder, or in the cache when ``download``
            is false or the files must be fetched by hand (the message says what and where).
        DownloadError: a download failed.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp())
        >>> for name in ("train.txt", "dev.txt", "test.txt"):
        ...     _ = (d / name).write_text("")
        >>> resolve_data_dir("ecf", d) == d
        True
    """
    src = src or source(dataset)
    explicit = data_dir if data_dir is not None else os.environ.get(ENV_DATA_DIR) or None
    if explicit is not None:
        folder = Path(explicit).expanduser()
        origin = "given" if data_dir is not None else f"from ${ENV_DATA_DIR}"
        missing = missing_files(src, folder)
        if missing:
            state = "does not exist" if not folder.is_dir() else f"lacks {', '.join(missing)}"
            raise DataDirError(
                f"{src.name} data folder {folder} ({origin}) {state}; "
                f"point it to a folder that holds them, or leave it unset to use the cache "
                f"{cache_dir(src.name)} (python -m examples.mecpe.download {src.name})"
                + _manual_hint(src, folder, missing)
            )
        return folder
    folder = cache_dir(src.name)
    if src.files and download:
        fetch_dataset(
            src.name, folder, base_url=base_url, include_optional=True, src=src, **fetch_kwargs
        )
    missing = missing_files(src, folder)
    if missing:
        how = (
            f"run python -m examples.mecpe.download {src.name}"
            if src.files
            else "fetch them by hand"
        )
        raise DataDirError(
            f"{src.name} is not in the cache {folder} (missing {', '.join(missing)}); {how}, "
            f"or point --data-dir / ${ENV_DATA_DIR} to a copy" + _manual_hint(src, folder, missing)
        )
    return folder


def _manual_hint(src: DatasetSource, folder: Path, missing: Sequence[str]) -> str:
    """Instructions for the missing hand-fetched files, as a message suffix."""
    manual = [m for m in src.manual if m.name in missing]
    if not manual:
        return ""
    return "\n" + manual_instructions(dataclasses.replace(src, manual=tuple(manual)), folder)


# ------------------------------------------------------------------------------------- CLI


def _check(dataset: str, folder: Path, out: Callable[[str], None]) -> bool:
    """Validate hand-fetched files in ``folder``; report; True when what is there is valid."""
    from .manual_files import ManualDataError, check_ecf_features, check_mec4

    try:
        if dataset == "ecf":
            shapes = check_ecf_features(folder)
            for name, shape in shapes.items():
                out(f"ecf: {name} ok: {shape[0]} rows x {shape[1]}")
            if not shapes:
                out(f"ecf: no feature table in {folder} (needed only for audio/video runs)")
        elif dataset == "mec4":
            counts = check_mec4(folder)
            for name, n in counts.items():
                out(f"mec4: {name} ok: {n} dialogues")
    except (ManualDataError, ValueError) as exc:
        out(f"{dataset}: check failed: {exc}")
        return False
    return True


def main(argv: Sequence[str] | None = None) -> int:
    """Command line entry point; returns the exit status (0 ok, 1 failure, 2 usage)."""
    ap = argparse.ArgumentParser(
        prog="python -m examples.mecpe.download",
        description="Fetch a MECPE corpus from its official source into the cache (or --to).",
    )
    ap.add_argument("dataset", choices=("ecf", "mecad", "mec4"))
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument(
        "--resolve",
        action="store_true",
        help="print the folder the trainer should use (--data-dir or $MECPE_DATA_DIR wins; "
        "else the cache, filled if needed) and nothing else on stdout",
    )
    mode.add_argument(
        "--check", action="store_true", help="check hand-fetched files (ECF features, MEC4)"
    )
    ap.add_argument("--to", default=None, help="download folder (default: the cache)")
    ap.add_argument("--data-dir", default=None, help="existing data folder (--resolve, --check)")
    ap.add_argument("--no-download", action="store_true", help="--resolve: never download")
    ap.add_argument("--base-url", default=None, help="mirror replacing the pinned URL prefix")
    ap.add_argument("--retries", type=int, default=3, help="attempts per file")
    args = ap.parse_args(argv)
    if args.retries < 1:
        ap.error(f"--retries must be >= 1, got {args.retries}")

    def err(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    src = source(args.dataset)
    try:
        if args.resolve:
            folder = resolve_data_dir(
                args.dataset,
                args.data_dir,
                download=not args.no_download,
                base_url=args.base_url,
                retries=args.retries,
            )
            print(folder)
            return 0
        if args.check:
            folder = resolve_data_dir(args.dataset, args.data_dir, download=False)
            return 0 if _check(args.dataset, folder, print) else 1
        folder = Path(args.to).expanduser() if args.to else cache_dir(src.name)
        if src.files:
            fetch_dataset(args.dataset, folder, base_url=args.base_url, retries=args.retries)
            err(f"{src.name}: {', '.join(f.name for f in src.files)} verified in {folder}")
        text = manual_instructions(src, folder)
        if text:
            err(text)
        complete = not missing_files(src, folder)
        ok = _check(args.dataset, folder, err) if src.manual and complete else True
        print(folder)
        return 0 if ok and complete else 1
    except (DownloadError, DataDirError) as exc:
        err(f"download: error: {exc}")
        return 1


if __name__ == "__main__":
    sys.exit(main())
