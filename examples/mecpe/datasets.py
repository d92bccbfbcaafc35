"""The dataset registry: which loader reads a dataset, where its splits are, its defaults.

Adding a dataset is one :class:`DatasetSpec` passed to :func:`register` (below, next to the
built-in ones): ``train``, ``evaluate`` (its ``--format`` choices) and ``study`` all read the
registry. A spec names

* ``load``: a file loader of :mod:`examples.mecpe.data` (path → list of ``Conversation``);
* ``splits``: the file of each split, relative to the data folder;
* defaults a run of that dataset starts from: the text encoder and the evaluation protocol
  (``split``: the dataset's own train/dev/test; ``cv``: folds by TV series over every
  dialogue, :mod:`examples.mecpe.folds`);
* ``suffix``: the file suffix ``evaluate --format auto`` recognises (first match wins);
* ``read_split``: for a dataset whose splits are not one file each (SemEval-2024's dev is held
  out of its train file), a reader ``(data folder, split) -> conversations`` used instead.

Example::

    >>> spec = get("mecad")
    >>> spec.text_encoder, spec.protocol, spec.splits["dev"]
    ('hash', 'cv', 'valid_data_pair.json')
    >>> split_path("ecf", "/data/ecf", "valid").name
    'dev.txt'
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from .data import (
    Conversation,
    DataFormatError,
    load_ecf,
    load_mec4,
    load_mecad,
    load_semeval,
    load_semeval_split,
)

__all__ = [
    "SPLITS",
    "DatasetSpec",
    "get",
    "guess_format",
    "load_file",
    "load_split",
    "names",
    "register",
    "split_path",
    "unregister",
]

PathLike = str | os.PathLike[str]

#: The splits of a run, in loading order.
SPLITS: tuple[str, ...] = ("train", "dev", "test")

_SPLIT_ALIASES: dict[str, str] = {"train": "train", "dev": "dev", "valid": "dev", "test": "test"}


@dataclass(frozen=True)
class DatasetSpec:
    """How to read one dataset (see the module docstring)."""

    name: str
    load: Callable[[Path], list[Conversation]]
    splits: Mapping[str, str]
    text_encoder: str = "minilm"
    protocol: str = "split"
    suffix: str | None = None
    description: str = ""
    read_split: Callable[[Path, str], list[Conversation]] | None = None

    def __post_init__(self) -> None:
        missing = set(SPLITS) - set(self.splits)
        if missing:
            raise ValueError(f"dataset {self.name!r}: splits lacks {sorted(missing)}")
        if self.protocol not in ("split", "cv"):
            raise ValueError(f"dataset {self.name!r}: protocol must be split or cv")


_REGISTRY: dict[str, DatasetSpec] = {}


def register(spec: DatasetSpec) -> DatasetSpec:
    """Add ``spec`` to the registry (a name can be registered once)."""
    if spec.name in _REGISTRY:
        raise ValueError(f"dataset {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def unregister(name: str) -> None:
    """Remove a dataset (tests that register a dummy one)."""
    get(name)
    del _REGISTRY[name]


def names() -> tuple[str, ...]:
    """The registered dataset names, in registration order."""
    return tuple(_REGISTRY)


def get(name: str) -> DatasetSpec:
    """The spec of dataset ``name`` (``ValueError`` naming the known ones otherwise)."""
    spec = _REGISTRY.get(name)
    if spec is None:
        raise ValueError(f"unknown dataset {name!r}; expected one of {', '.join(_REGISTRY)}")
    return spec


def split_path(dataset: str, data_dir: PathLike, split: str) -> Path:
    """The file holding ``split`` (``train``/``dev``/``test``; ``valid`` = ``dev``) of ``dataset``."""
    canonical = _SPLIT_ALIASES.get(split)
    if canonical is None:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return Path(data_dir) / get(dataset).splits[canonical]


def load_file(dataset: str, path: PathLike) -> list[Conversation]:
    """Read ``path`` with the loader of ``dataset``; a file without any conversation is an error."""
    path = Path(path)
    convs = get(dataset).load(path)
    if not convs:
        raise DataFormatError(
            f"{path}: no conversation in the file (empty {dataset} input)",
            path=path,
            where="file",
            field="<conversations>",
        )
    return convs


def load_split(dataset: str, data_dir: PathLike, split: str) -> list[Conversation]:
    """Load one split of ``dataset`` from ``data_dir`` (``FileNotFoundError`` naming the file)."""
    path = split_path(dataset, data_dir, split)
    if not path.is_file():
        raise FileNotFoundError(f"{dataset} {split} split not found: {path}")
    spec = get(dataset)
    if spec.read_split is None:
        return load_file(dataset, path)
    convs = spec.read_split(Path(data_dir), _SPLIT_ALIASES[split])
    if not convs:
        raise DataFormatError(
            f"{path}: no conversation in the {split} split", path=path, where="file",
            field="<conversations>",
        )  # fmt: skip
    return convs


def guess_format(path: PathLike) -> str:
    """The first registered dataset whose ``suffix`` matches ``path`` (else ``ValueError``)."""
    suffix = Path(path).suffix.lower()
    for spec in _REGISTRY.values():
        if spec.suffix is not None and spec.suffix == suffix:
            return spec.name
    raise ValueError(f"{path}: cannot tell the format from the suffix {suffix!r}; give --format")


# --------------------------------------------------------------------------------- built-in

register(
    DatasetSpec(
        "ecf",
        load_ecf,
        {"train": "train.txt", "dev": "dev.txt", "test": "test.txt"},
        suffix=".txt",
        description="ECF 1.0 (English, MELD dialogues)",
    )
)
register(
    DatasetSpec(
        "mecad",
        load_mecad,
        {
            "train": "train_data_pair.json",
            "dev": "valid_data_pair.json",
            "test": "test_data_pair.json",
        },
        text_encoder="hash",  # MiniLM does not cover Chinese
        protocol="cv",  # only dev and test are released: folds by TV series over both
        suffix=".json",
        description="MECAD (Chinese TV series)",
    )
)
register(
    DatasetSpec(
        "mec4",
        load_mec4,
        {split: f"MEC4_text/{'valid' if split == 'dev' else split}.json" for split in SPLITS},
        description="MEC4 (MEC4_text/*.json)",
    )
)


def _semeval_dev_ids() -> list[str]:
    """The committed conversation ids of SemEval-2024's held-out dev split."""
    lines = Path(__file__).with_name("semeval_dev_ids.txt").read_text(encoding="utf-8").splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _read_semeval(data_dir: Path, split: str) -> list[Conversation]:
    return load_semeval_split(data_dir, split, dev_ids=_semeval_dev_ids())


register(
    DatasetSpec(
        "semeval",
        load_semeval,
        {"train": "Subtask_2_train.json", "dev": "Subtask_2_train.json", "test": "Subtask_2_test.json"},
        description="SemEval-2024 Task 3 / ECF 2.0 (Subtask 2 JSON; dev = ECF 1.0's dev ids "
        "held out of the train file)",
        read_split=_read_semeval,
    )
)
