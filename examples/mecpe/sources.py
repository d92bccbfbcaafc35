"""Where each corpus comes from: pinned download URLs, checksums, licenses, hand-fetched files.

This module holds data only (no I/O). :mod:`examples.mecpe.download` fetches the
:class:`RemoteFile` entries; :mod:`examples.mecpe.manual_files` validates what a user fetched
by hand (:class:`ManualFile`), which is whatever does not live at a plain HTTP URL.

Every URL pins a commit, so a file's bytes never change under its checksum. The sha256 and
sizes were computed from the copies the project was developed on ("ECF 1.0 as released in
NUSTM/MECPE"; MECAD's textual splits as released in redifinition/M3HG).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["SOURCES", "DatasetSource", "ManualFile", "RemoteFile", "source"]


@dataclass(frozen=True)
class RemoteFile:
    """One file fetched over HTTP: ``<base_url>/<path>`` saved as ``<dataset dir>/<name>``."""

    name: str
    path: str
    sha256: str
    size: int
    required: bool
    purpose: str


@dataclass(frozen=True)
class ManualFile:
    """A file (or folder) the user fetches by hand and puts at ``<dataset dir>/<name>``."""

    name: str
    url: str
    purpose: str
    required: bool = False


@dataclass(frozen=True)
class DatasetSource:
    """A corpus: its repository, license, downloadable files and hand-fetched files."""

    name: str
    repository: str
    commit: str
    license: str
    files: tuple[RemoteFile, ...]
    manual: tuple[ManualFile, ...] = ()
    notes: str = ""

    @property
    def base_url(self) -> str:
        """Raw-file URL prefix at the pinned commit (no trailing slash)."""
        if not self.repository or not self.commit:
            return ""
        return f"https://raw.githubusercontent.com/{self.repository}/{self.commit}"

    @property
    def homepage(self) -> str:
        """The repository tree at the pinned commit."""
        return f"https://github.com/{self.repository}/tree/{self.commit}"

    @property
    def required_names(self) -> tuple[str, ...]:
        """Names the trainer needs in a data directory (downloaded or fetched by hand)."""
        downloaded = tuple(f.name for f in self.files if f.required)
        return downloaded + tuple(m.name for m in self.manual if m.required)


# NUSTM/MECPE commit 662117b introduced the current train/dev/test.txt and all_data_pair.txt
# (their earlier versions, at 3b2bc5f, are smaller); each of those files has exactly two stored
# versions, and the 662117b ones match the local copies in length and content (checked at the
# start and the end of every file). video_id_mapping.npy was added at 3b2bc5f and has a single
# version since, so the same bytes are served at 662117b; it is binary, so its content could not
# be compared with the local copy before pinning. If upstream ever differs, the sha256 below
# catches it with a clear error.
_ECF = DatasetSource(
    name="ecf",
    repository="NUSTM/MECPE",
    commit="662117b38dc6188c75b9a82f05d1f96579a2c633",
    license="GPL-3.0 (the NUSTM/MECPE repository); the data are for research use only",
    files=(
        RemoteFile(
            name="train.txt",
            path="data/train.txt",
            sha256="67b69faf38d67fb1a794aa44b564b371bdfcc338e7bead845668dbacab0cc1e1",
            size=1178761,
            required=True,
            purpose="training split (1001 conversations)",
        ),
        RemoteFile(
            name="dev.txt",
            path="data/dev.txt",
            sha256="59a4e7a8b765438cc2006e594b901abf9c26dc76c758a9ba7aa9ab14e0130c7e",
            size=129108,
            required=True,
            purpose="development split (112 conversations)",
        ),
        RemoteFile(
            name="test.txt",
            path="data/test.txt",
            sha256="4ae44852e3136f8b973ea818c4fc0ef162d855421124c611e56dd2c9280b2677",
            size=307117,
            required=True,
            purpose="test split (261 conversations)",
        ),
        RemoteFile(
            name="video_id_mapping.npy",
            path="data/video_id_mapping.npy",
            sha256="80c1783d604971441bcf3dcdf51a30339f7aa984c287f7451f99057dde66ba57",
            size=318868,
            required=False,
            purpose="utterance key 'dia{c}utt{u}' -> row of the audio/video feature tables",
        ),
    ),
    manual=(
        ManualFile(
            name="audio_embedding_6373.npy",
            url="https://drive.google.com/file/d/1EhU2jFSr_Vi67Wdu1ARJozrTJtgiQrQI/view?usp=share_link",
            purpose="audio features (openSMILE, 6373-d per utterance); needed for --modalities TA/TAV",
        ),
        ManualFile(
            name="video_embedding_4096.npy",
            url="https://drive.google.com/file/d/1NGSsiQYDTqgen_g9qndSuha29JA60x14/view?usp=share_link",
            purpose="video features (3D-CNN, 4096-d per utterance); needed for --modalities TV/TAV",
        ),
    ),
    notes=(
        "all_data_pair.txt (the three splits in one file) and all_data_pair_ECFvsMELD.txt "
        "(ECF -> MELD utterance ids) are in the same folder upstream; the trainer reads neither."
    ),
)

# redifinition/M3HG holds MECAD's textual modality; every file there has a single stored
# version (commit db372a5), whose lengths and contents match the local copies. The MECAD
# folder has no train_data_pair.json: the training split is not public, which is why the
# trainer evaluates MECAD by cross-validation over these two files.
_MECAD = DatasetSource(
    name="mecad",
    repository="redifinition/M3HG",
    commit="db372a53b612bb766582fb6e3ac30e3d6845fe47",
    license=(
        "none stated in the redifinition/M3HG repository (no LICENSE file; README silent); "
        "the authors' Hugging Face copy (datasets/Redefinition/MECAD) declares AGPL-3.0"
    ),
    files=(
        RemoteFile(
            name="valid_data_pair.json",
            path="data/MECAD/valid_data_pair.json",
            sha256="c655f67d9973e83ef6d066c3cfd0e3ac2e2bcf017a946507e8b778ef9cfc4a52",
            size=759364,
            required=True,
            purpose="validation dialogues",
        ),
        RemoteFile(
            name="test_data_pair.json",
            path="data/MECAD/test_data_pair.json",
            sha256="7ef9acbad61feb2aba5e5da7016e898e9b29cb7d28054da822a8f46331f1b242",
            size=1115760,
            required=True,
            purpose="test dialogues",
        ),
    ),
    notes=(
        "MECAD's training split is not public. Its audio and video are on Baidu Netdisk "
        "(https://pan.baidu.com/s/16Uxt80D453KAAoLChduLkg?pwd=94wa, from the M3HG README); "
        "the trainer uses text only."
    ),
)

# MEC4 (Wu et al., ACM MM 2025) lives in a Google Drive folder linked from the README of
# DanWu2003/M3F-MECPE (commit 7af8a25); nothing of it is a plain HTTP file.
_MEC4 = DatasetSource(
    name="mec4",
    repository="DanWu2003/M3F-MECPE",
    commit="7af8a256328a3214fe39778a40f5a5e5bca538af",
    license="none stated in the DanWu2003/M3F-MECPE repository",
    files=(),
    manual=(
        ManualFile(
            name="MEC4_text/train.json",
            url="https://drive.google.com/drive/folders/1biCggSJmQOmSA1dn7lGsmNqlFW3y-6Hn?usp=sharing",
            purpose="training split (folder MEC4_text/ of the Drive folder)",
            required=True,
        ),
        ManualFile(
            name="MEC4_text/valid.json",
            url="https://drive.google.com/drive/folders/1biCggSJmQOmSA1dn7lGsmNqlFW3y-6Hn?usp=sharing",
            purpose="validation split",
            required=True,
        ),
        ManualFile(
            name="MEC4_text/test.json",
            url="https://drive.google.com/drive/folders/1biCggSJmQOmSA1dn7lGsmNqlFW3y-6Hn?usp=sharing",
            purpose="test split",
            required=True,
        ),
    ),
    notes="The Drive folder also holds dialogue_videos/ and subtitles.json; the trainer reads neither.",
)

SOURCES: dict[str, DatasetSource] = {s.name: s for s in (_ECF, _MECAD, _MEC4)}


def source(dataset: str) -> DatasetSource:
    """The :class:`DatasetSource` of ``dataset`` (``ecf``, ``mecad`` or ``mec4``)."""
    try:
        return SOURCES[dataset]
    except KeyError:
        raise ValueError(
            f"unknown dataset {dataset!r}; expected one of {', '.join(SOURCES)}"
        ) from None
