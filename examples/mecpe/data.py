"""Loaders for multimodal emotion-cause pair extraction (MECPE) corpora.

Three formats are read into one :class:`Conversation` record:

* **ECF** (``train.txt``/``dev.txt``/``test.txt``): blocks of a header ``"<conv_id> <n_utt>"``,
  a pairs line ``(3,1),(3,3)`` (possibly empty: a conversation without any pair), then
  ``n_utt`` lines ``idx | speaker | emotion | text | timestamp-or-video-id``.
* **MECAD** (``*_data_pair.json``): ``{dialogue_id: [[utterance, ...]]}``; an utterance is a
  dict with ``turn``, ``speaker``, ``utterance``, ``emotion`` and, for emotion utterances with
  a cause, ``"expanded emotion cause evidence"`` (1-based cause turns).
* **MEC4** (``MEC4_text/*.json``): a list of rows with ``dia_id``, ``dia_len``, ``text``
  (``"1.speaker：text 2.speaker：text"``), ``pairs`` and optional ``emotion``/``emotions``.

Every loader validates its input and raises :class:`DataFormatError` naming the file, the
line or record and the field (bytes that are not UTF-8 included); nothing is dropped silently.
Which file holds which split of a dataset, and the dataset defaults, are in
:mod:`examples.mecpe.datasets`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "EMOTIONS",
    "Conversation",
    "DataFormatError",
    "emotion_index",
    "load_ecf",
    "load_mec4",
    "load_mecad",
    "load_semeval",
    "load_semeval_split",
    "semeval_split_path",
    "split_by_ids",
    "summarize",
]

PathLike = str | os.PathLike[str]

EMOTIONS: tuple[str, ...] = ("neutral", "anger", "disgust", "fear", "joy", "sadness", "surprise")

# Lower-case (or Chinese) label -> canonical name in EMOTIONS.
_EMOTION_ALIASES: dict[str, str] = {
    **{name: name for name in EMOTIONS},
    "neu": "neutral",
    "angry": "anger",
    "ang": "anger",
    "disgusted": "disgust",
    "fearful": "fear",
    "happy": "joy",
    "happiness": "joy",
    "sad": "sadness",
    "surprised": "surprise",
    "中性": "neutral",
    "生气": "anger",
    "愤怒": "anger",
    "厌恶": "disgust",
    "恐惧": "fear",
    "害怕": "fear",
    "高兴": "joy",
    "开心": "joy",
    "快乐": "joy",
    "悲伤": "sadness",
    "伤心": "sadness",
    "惊讶": "surprise",
}


class DataFormatError(ValueError):
    """A malformed record; the message names the file, the line or record, and the field."""

    def __init__(
        self,
        message: str,
        *,
        path: PathLike | None = None,
        where: str | None = None,
        field: str | None = None,
    ) -> None:
        super().__init__(message)
        self.path = None if path is None else str(path)
        self.where = where
        self.field = field


@dataclass(frozen=True)
class Conversation:
    """One conversation; utterance indices in ``pairs`` are 1-based (emotion, cause)."""

    conv_id: str
    speakers: tuple[str, ...]
    texts: tuple[str, ...]
    emotions: tuple[int, ...]
    pairs: tuple[tuple[int, int], ...]
    feature_keys: tuple[str, ...]

    def __len__(self) -> int:
        """Number of utterances."""
        return len(self.texts)


def _error(path: PathLike, where: str, field: str, problem: str) -> DataFormatError:
    """Build a DataFormatError with a uniform ``file: where: field 'x': problem`` message."""
    return DataFormatError(
        f"{path}: {where}: field {field!r}: {problem}", path=path, where=where, field=field
    )


def emotion_index(label: str) -> int:
    """Index of ``label`` in :data:`EMOTIONS` (aliases such as "Happy"/"sad" accepted).

    Raises ``KeyError`` for an unknown label.
    """
    canonical = _EMOTION_ALIASES.get(label.strip().lower())
    if canonical is None:
        raise KeyError(label)
    return EMOTIONS.index(canonical)


def _parse_emotion(label: object, path: PathLike, where: str, field: str) -> int:
    """Emotion label -> index, raising DataFormatError for unknown labels."""
    if not isinstance(label, str):
        raise _error(path, where, field, f"expected an emotion name, got {label!r}")
    try:
        return emotion_index(label)
    except KeyError:
        raise _error(
            path, where, field, f"unknown emotion {label!r} (known: {', '.join(EMOTIONS)})"
        ) from None


def _check_pairs(
    pairs: Iterable[tuple[int, int]], n_utt: int, path: PathLike, where: str, field: str
) -> tuple[tuple[int, int], ...]:
    """Validate 1-based pair indices against ``n_utt``; return them sorted and deduplicated."""
    checked = set()
    for emo, cause in pairs:
        if not (1 <= emo <= n_utt and 1 <= cause <= n_utt):
            raise _error(path, where, field, f"pair ({emo},{cause}) outside utterances 1..{n_utt}")
        checked.add((emo, cause))
    return tuple(sorted(checked))


def _check_unique(values: Sequence[str], path: PathLike, where: str, field: str) -> None:
    """Raise if ``values`` holds a duplicate."""
    seen: set[str] = set()
    for value in values:
        if value in seen:
            raise _error(path, where, field, f"duplicate value {value!r}")
        seen.add(value)


def _make_conversation(
    conv_id: str,
    speakers: Sequence[str],
    texts: Sequence[str],
    emotions: Sequence[int],
    pairs: Iterable[tuple[int, int]],
    feature_keys: Sequence[str],
    *,
    path: PathLike,
    where: str,
    pairs_field: str,
) -> Conversation:
    """Validate the per-conversation invariants and build the record."""
    n_utt = len(texts)
    if n_utt == 0:
        raise _error(path, where, "utterances", "conversation has no utterances")
    assert len(speakers) == len(emotions) == len(feature_keys) == n_utt
    return Conversation(
        conv_id=conv_id,
        speakers=tuple(speakers),
        texts=tuple(texts),
        emotions=tuple(emotions),
        pairs=_check_pairs(pairs, n_utt, path, where, pairs_field),
        feature_keys=tuple(feature_keys),
    )


def _read_utf8(path: Path) -> str:
    """The text of ``path``; bytes that are not UTF-8 raise a DataFormatError naming the line."""
    raw = path.read_bytes()
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise _error(
            path, f"line {line}", "<encoding>", f"byte {exc.start} is not UTF-8 text ({exc.reason})"
        ) from None


def _check_file_ids(conversations: Sequence[Conversation], path: PathLike) -> None:
    """Conversation ids and feature keys must be unique across a file."""
    seen_ids: set[str] = set()
    seen_keys: dict[str, str] = {}
    for conv in conversations:
        where = f"conversation {conv.conv_id!r}"
        if conv.conv_id in seen_ids:
            raise _error(path, where, "conv_id", f"duplicate conversation id {conv.conv_id!r}")
        seen_ids.add(conv.conv_id)
        for key in conv.feature_keys:
            if key in seen_keys:
                raise _error(
                    path,
                    where,
                    "feature_key",
                    f"duplicate utterance key {key!r} (also in conversation {seen_keys[key]!r})",
                )
            seen_keys[key] = conv.conv_id


# --------------------------------------------------------------------------------------- ECF

_ECF_PAIR = re.compile(r"\(\s*(\d+)\s*,\s*(\d+)\s*\)")
_ECF_PAIRS_LINE = re.compile(r"^\s*(?:\(\s*\d+\s*,\s*\d+\s*\)\s*(?:,\s*|$))*$")


def _ecf_header(line: str, path: PathLike, lineno: int) -> tuple[str, int]:
    """Parse ``"<conv_id> <n_utt>"``."""
    parts = line.split()
    if len(parts) != 2 or not parts[1].isdigit() or int(parts[1]) < 1:
        raise _error(
            path, f"line {lineno}", "header", f"expected '<conv_id> <n_utt>', got {line!r}"
        )
    return parts[0], int(parts[1])


def _ecf_pairs(line: str, path: PathLike, lineno: int) -> list[tuple[int, int]]:
    """Parse a pairs line such as ``(3,1),(3,3)``; an empty line means no pair."""
    if not _ECF_PAIRS_LINE.match(line):
        raise _error(path, f"line {lineno}", "pairs", f"expected '(e,c),(e,c),...', got {line!r}")
    return [(int(e), int(c)) for e, c in _ECF_PAIR.findall(line)]


def _ecf_utterance(
    line: str, expected_idx: int, path: PathLike, lineno: int
) -> tuple[str, int, str]:
    """Parse ``idx | speaker | emotion | text | timestamp`` into (speaker, emotion, text).

    The trailing timestamp/video-id field may be empty or absent; a text containing ``" | "``
    is kept whole (everything between the emotion and the last field).
    """
    where = f"line {lineno}"
    parts = line.split(" | ", 3)
    if len(parts) < 4:
        raise _error(
            path,
            where,
            "utterance",
            f"expected 'idx | speaker | emotion | text | ...', got {line!r}",
        )
    idx, speaker, emotion = (p.strip() for p in parts[:3])
    rest = parts[3]
    if idx != str(expected_idx):
        raise _error(path, where, "idx", f"expected utterance index {expected_idx}, got {idx!r}")
    if " | " in rest:
        rest = rest.rsplit(" | ", 1)[0]
    elif rest.rstrip().endswith(" |"):
        rest = rest.rstrip()[:-2]
    text = rest.strip()
    if not speaker:
        raise _error(path, where, "speaker", "empty speaker")
    if not text:
        raise _error(path, where, "text", "empty text")
    return speaker, _parse_emotion(emotion, path, where, "emotion"), text


def _ecf_block(lines: list[str], start: int, path: PathLike) -> tuple[Conversation, int]:
    """Parse the block whose header is ``lines[start]``; return it and the next line index."""
    conv_id, n_utt = _ecf_header(lines[start], path, start + 1)
    where = f"line {start + 1} (conversation {conv_id!r})"
    if start + 1 + n_utt >= len(lines):
        raise _error(path, where, "utterances", f"file ends before the {n_utt} utterances")
    pairs_where = f"line {start + 2} (conversation {conv_id!r})"
    pairs = _check_pairs(
        _ecf_pairs(lines[start + 1], path, start + 2), n_utt, path, pairs_where, "pairs"
    )
    speakers: list[str] = []
    emotions: list[int] = []
    texts: list[str] = []
    for u in range(1, n_utt + 1):
        lineno = start + 2 + u
        speaker, emotion, text = _ecf_utterance(lines[lineno - 1], u, path, lineno)
        speakers.append(speaker)
        emotions.append(emotion)
        texts.append(text)
    conv = _make_conversation(
        conv_id,
        speakers,
        texts,
        emotions,
        pairs,
        [f"dia{conv_id}utt{u}" for u in range(1, n_utt + 1)],
        path=path,
        where=where,
        pairs_field="pairs",
    )
    return conv, start + 2 + n_utt


def load_ecf(path: PathLike) -> list[Conversation]:
    """Load an ECF split file (``train.txt``, ``dev.txt``, ``test.txt``, ``all_data_pair.txt``)."""
    path = Path(path)
    lines = _read_utf8(path).splitlines()
    conversations: list[Conversation] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip():  # blank lines between blocks / at the end
            i += 1
            continue
        conv, i = _ecf_block(lines, i, path)
        conversations.append(conv)
    _check_file_ids(conversations, path)
    return conversations


# -------------------------------------------------------------------------------------- JSON


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """``json`` object hook: duplicate keys would otherwise be dropped silently."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate JSON key {key!r}")
        out[key] = value
    return out


def _read_json(path: Path) -> Any:
    """Read a JSON file, rejecting duplicate object keys."""
    text = _read_utf8(path)
    try:
        return json.loads(text, object_pairs_hook=_reject_duplicate_keys)
    except ValueError as exc:  # JSONDecodeError is a ValueError
        raise DataFormatError(f"{path}: invalid JSON: {exc}", path=path, where="file") from exc


def _as_int(value: object) -> int | None:
    """An int (not bool) or a string of digits -> int; anything else -> None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value.strip())
    return None


def _require_str(record: dict[str, Any], field: str, path: PathLike, where: str) -> str:
    """A non-empty string field."""
    value = record.get(field)
    if not isinstance(value, str) or not value.strip():
        raise _error(path, where, field, f"expected a non-empty string, got {value!r}")
    return value.strip()


# ------------------------------------------------------------------------------------- MECAD

MECAD_EVIDENCE = "expanded emotion cause evidence"


def _mecad_evidence(utt: dict[str, Any], n_utt: int, path: PathLike, where: str) -> list[int]:
    """The 1-based cause turns of one utterance (empty when the field is absent or null)."""
    evidence = utt.get(MECAD_EVIDENCE)
    if evidence is None:
        return []
    if not isinstance(evidence, list):
        raise _error(path, where, MECAD_EVIDENCE, f"expected a list of turns, got {evidence!r}")
    causes = []
    for value in evidence:
        cause = _as_int(value)
        if cause is None or not 1 <= cause <= n_utt:
            raise _error(
                path, where, MECAD_EVIDENCE, f"cause turn {value!r} is not an integer in 1..{n_utt}"
            )
        causes.append(cause)
    return causes


def _mecad_utterances(conv_id: str, value: object, path: PathLike) -> list[Any]:
    """``[[utt, ...]]`` (the released layout) or ``[utt, ...]`` -> the utterance list."""
    where = f"dialogue {conv_id!r}"
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], list):
        return value[0]
    if isinstance(value, list) and value and all(isinstance(u, dict) for u in value):
        return value
    raise _error(
        path,
        where,
        "utterances",
        "expected [[utterance, ...]] (a one-element list of utterance dicts)",
    )


def _mecad_dialogue(conv_id: str, value: object, path: PathLike) -> Conversation:
    """Parse one MECAD dialogue."""
    utts = _mecad_utterances(conv_id, value, path)
    n_utt = len(utts)
    speakers: list[str] = []
    texts: list[str] = []
    emotions: list[int] = []
    keys: list[str] = []
    pairs: list[tuple[int, int]] = []
    for pos, utt in enumerate(utts, start=1):
        where = f"dialogue {conv_id!r} utterance {pos}"
        if not isinstance(utt, dict):
            raise _error(path, where, "utterance", f"expected an object, got {type(utt).__name__}")
        if _as_int(utt.get("turn")) != pos:
            raise _error(path, where, "turn", f"expected turn {pos}, got {utt.get('turn')!r}")
        speakers.append(_require_str(utt, "speaker", path, where))
        texts.append(_require_str(utt, "utterance", path, where))
        emotion = (
            -1
            if utt.get("emotion") is None
            else _parse_emotion(utt["emotion"], path, where, "emotion")
        )
        emotions.append(emotion)
        name = utt.get("utterance_name")
        keys.append(
            f"{conv_id}_{pos}" if name is None else _require_str(utt, "utterance_name", path, where)
        )
        causes = _mecad_evidence(utt, n_utt, path, where)
        if causes and emotion == 0:
            raise _error(path, where, MECAD_EVIDENCE, "a neutral utterance has cause evidence")
        pairs.extend((pos, cause) for cause in causes)
    return _make_conversation(
        conv_id,
        speakers,
        texts,
        emotions,
        pairs,
        keys,
        path=path,
        where=f"dialogue {conv_id!r}",
        pairs_field=MECAD_EVIDENCE,
    )


def load_mecad(path: PathLike) -> list[Conversation]:
    """Load a MECAD ``*_data_pair.json`` file (dialogue order of the file is kept).

    Pairs are ``(turn, cause)`` for each cause turn in ``"expanded emotion cause evidence"``.
    Emotion utterances without that field keep their label and get no pair. Evidence must be
    integers (digit strings accepted) in ``1..n_utt``; anything else (e.g. ``-1``) is an error,
    as is evidence on a neutral utterance.
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, dict):
        raise _error(path, "file", "<root>", "expected an object {dialogue_id: [[utterance, ...]]}")
    conversations = [_mecad_dialogue(str(cid), value, path) for cid, value in data.items()]
    _check_file_ids(conversations, path)
    return conversations


# -------------------------------------------------------------------------------------- MEC4

_MEC4_PAIR = re.compile(r"[（(]\s*(\d+)\s*[，,]\s*(\d+)\s*[）)]")
_MEC4_PAIRS_STR = re.compile(r"^(?:\s*[（(]\s*\d+\s*[，,]\s*\d+\s*[）)]\s*[，,;；]?)*\s*$")
_MEC4_SPEAKER_MAX = 40


def _mec4_marker(k: int) -> re.Pattern[str]:
    """``k.speaker：`` at the start of utterance ``k`` (full-width or ASCII colon).

    The speaker holds no colon, newline or ``<digit>.`` (which would be another marker).
    """
    speaker = rf"(?:(?!\d\.)[^：:\n]){{1,{_MEC4_SPEAKER_MAX}}}?"
    return re.compile(rf"(?<!\d){k}\.\s*({speaker})\s*[：:]")


def _mec4_find(text: str, k: int, start: int) -> re.Match[str] | None:
    """First marker ``k.`` at/after ``start``, preferring one at a word boundary (space/start)."""
    matches = list(_mec4_marker(k).finditer(text, start))
    for m in matches:
        if m.start() == 0 or text[m.start() - 1].isspace():
            return m
    return matches[0] if matches else None


def parse_mec4_text(text: str) -> list[tuple[str, str]]:
    """Split ``"1.spk：text 2.spk：text ..."`` into ``[(speaker, text), ...]``.

    Markers are searched in order (1, 2, 3, ...), so digits inside an utterance only matter
    if they form the next marker followed by a speaker and a colon.
    """
    found: list[re.Match[str]] = []
    pos = 0
    while (m := _mec4_find(text, len(found) + 1, pos)) is not None:
        found.append(m)
        pos = m.end()
    if not found or text[: found[0].start()].strip():
        raise ValueError("text does not start with '1.speaker：'")
    out = []
    for i, m in enumerate(found):
        end = found[i + 1].start() if i + 1 < len(found) else len(text)
        out.append((m.group(1).strip(), text[m.end() : end].strip()))
    return out


def _mec4_pairs(raw: object, path: PathLike, where: str) -> list[tuple[int, int]]:
    """``"（1，2）（3，3）"`` / ``"(1,2),(3,3)"`` / ``[[1, 2], [3, 3]]`` -> list of pairs."""
    if isinstance(raw, str):
        if not _MEC4_PAIRS_STR.match(raw):
            raise _error(path, where, "pairs", f"cannot parse pairs string {raw!r}")
        return [(int(e), int(c)) for e, c in _MEC4_PAIR.findall(raw)]
    if isinstance(raw, list):
        pairs: list[tuple[int, int]] = []
        for item in raw:
            ints = [_as_int(v) for v in item] if isinstance(item, (list, tuple)) else []
            emo, cause = ints if len(ints) == 2 else (None, None)
            if emo is None or cause is None:
                raise _error(path, where, "pairs", f"expected [emotion, cause], got {item!r}")
            pairs.append((emo, cause))
        return pairs
    raise _error(path, where, "pairs", f"expected a string or a list of pairs, got {raw!r}")


def _mec4_emotions(row: dict[str, Any], n_utt: int, path: PathLike, where: str) -> list[int]:
    """Optional ``emotion``/``emotions`` labels (list or comma string); -1 when absent."""
    field = "emotions" if "emotions" in row else "emotion"
    raw = row.get(field)
    if raw is None:
        return [-1] * n_utt
    labels = re.split(r"[,，;；|]", raw) if isinstance(raw, str) else raw
    if not isinstance(labels, list) or len(labels) != n_utt:
        raise _error(path, where, field, f"expected {n_utt} emotion labels, got {raw!r}")
    return [
        _parse_emotion(lab.strip() if isinstance(lab, str) else lab, path, where, field)
        for lab in labels
    ]


def _mec4_row(row: object, index: int, path: PathLike) -> Conversation:
    """Parse one MEC4 row."""
    where = f"record {index}"
    if not isinstance(row, dict):
        raise _error(path, where, "<row>", f"expected an object, got {type(row).__name__}")
    raw_id = row.get("dia_id")
    if isinstance(raw_id, bool) or not isinstance(raw_id, (int, str)) or not str(raw_id).strip():
        raise _error(path, where, "dia_id", f"missing or invalid dialogue id {raw_id!r}")
    conv_id = str(raw_id).strip()
    where = f"record {index} (dia_id {conv_id!r})"
    text = _require_str(row, "text", path, where)
    try:
        utts = parse_mec4_text(text)
    except ValueError as exc:
        raise _error(path, where, "text", str(exc)) from None
    dia_len = _as_int(row.get("dia_len"))
    if dia_len != len(utts):
        raise _error(
            path,
            where,
            "dia_len",
            f"dia_len {row.get('dia_len')!r} but text has {len(utts)} utterances",
        )
    for u, (speaker, utt_text) in enumerate(utts, start=1):
        if not speaker or not utt_text:
            raise _error(path, where, "text", f"utterance {u} has an empty speaker or text")
    return _make_conversation(
        conv_id,
        [s for s, _ in utts],
        [t for _, t in utts],
        _mec4_emotions(row, len(utts), path, where),
        _mec4_pairs(row.get("pairs"), path, where),
        [f"{conv_id}_{u}" for u in range(1, len(utts) + 1)],
        path=path,
        where=where,
        pairs_field="pairs",
    )


def load_mec4(path: PathLike) -> list[Conversation]:
    """Load a MEC4 ``MEC4_text/{train,valid,test}.json`` file (a JSON list of rows)."""
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise _error(path, "file", "<root>", "expected a list of dialogue rows")
    conversations = [_mec4_row(row, i, path) for i, row in enumerate(data)]
    _check_file_ids(conversations, path)
    return conversations


# ------------------------------------------------------------ SemEval-2024 Task 3 (ECF 2.0)

SEMEVAL_EMOTION_FIELD = "emotion-cause_pairs"
_SPLITS: dict[str, str] = {"train": "train", "dev": "dev", "valid": "dev", "test": "test"}
_SEMEVAL_EMOTION_REF = re.compile(r"^\s*(\d+)_(\S+)\s*$")
_SEMEVAL_CAUSE_REF = re.compile(r"^\s*(\d+)(?:_(.*))?$", re.DOTALL)


def _squash(text: str) -> str:
    """Collapse whitespace runs, so spans match texts despite spacing differences."""
    return " ".join(text.split())


def _semeval_id(value: object, path: PathLike, where: str, field: str) -> int:
    """A positive integer id (int or digit string)."""
    number = _as_int(value)
    if number is None or number < 1:
        raise _error(path, where, field, f"expected a positive integer id, got {value!r}")
    return number


def _semeval_utterances(
    conv_id: str, utts: object, path: PathLike, where: str
) -> tuple[list[str], list[str], list[int], list[str]]:
    """(speakers, texts, emotions, feature keys) of a ``conversation`` list."""
    if not isinstance(utts, list) or not utts:
        raise _error(path, where, "conversation", "expected a non-empty list of utterances")
    speakers: list[str] = []
    texts: list[str] = []
    emotions: list[int] = []
    keys: list[str] = []
    video_names: list[bool] = []
    for pos, utt in enumerate(utts, start=1):
        uwhere = f"{where} utterance {pos}"
        if not isinstance(utt, dict):
            raise _error(path, uwhere, "utterance", f"expected an object, got {type(utt).__name__}")
        if _as_int(utt.get("utterance_ID")) != pos:
            raise _error(
                path,
                uwhere,
                "utterance_ID",
                f"expected {pos} (ids run 1, 2, ... in order), got {utt.get('utterance_ID')!r}",
            )
        speakers.append(_require_str(utt, "speaker", path, uwhere))
        texts.append(_require_str(utt, "text", path, uwhere))
        emotions.append(_parse_emotion(utt.get("emotion"), path, uwhere, "emotion"))
        has_video = "video_name" in utt
        video_names.append(has_video)
        if has_video:
            stem, _ = os.path.splitext(_require_str(utt, "video_name", path, uwhere))
            keys.append(stem)
        else:
            keys.append(f"dia{conv_id}utt{pos}")
    if any(video_names) and not all(video_names):
        first_missing = video_names.index(False) + 1
        raise _error(
            path,
            f"{where} utterance {first_missing}",
            "video_name",
            "missing here but present on other utterances of the conversation",
        )
    return speakers, texts, emotions, keys


def _semeval_pair(
    pair: object,
    texts: Sequence[str],
    emotions: Sequence[int],
    path: PathLike,
    where: str,
    check_spans: bool,
) -> tuple[int, int]:
    """``["3_joy", "2"]`` or ``["3_joy", "2_cause span"]`` -> (3, 2), validated."""
    field = SEMEVAL_EMOTION_FIELD
    n_utt = len(texts)
    if (
        not isinstance(pair, list)
        or len(pair) != 2
        or not all(isinstance(part, str) for part in pair)
    ):
        raise _error(
            path, where, field, f"expected ['<utt>_<emotion>', '<utt>[_span]'], got {pair!r}"
        )
    emo_ref, cause_ref = pair
    emo_match = _SEMEVAL_EMOTION_REF.match(emo_ref)
    if emo_match is None:
        raise _error(path, where, field, f"expected '<utt>_<emotion>', got {emo_ref!r}")
    emo = int(emo_match.group(1))
    if not 1 <= emo <= n_utt:
        raise _error(path, where, field, f"{emo_ref!r} names utterance {emo}, not in 1..{n_utt}")
    label = _parse_emotion(emo_match.group(2), path, where, field)
    if label != emotions[emo - 1]:
        raise _error(
            path,
            where,
            field,
            f"{emo_ref!r} disagrees with utterance {emo}'s emotion {EMOTIONS[emotions[emo - 1]]!r}",
        )
    if label == 0:
        raise _error(path, where, field, f"{emo_ref!r}: a neutral utterance has no cause")
    cause_match = _SEMEVAL_CAUSE_REF.match(cause_ref)
    if cause_match is None:
        raise _error(path, where, field, f"expected '<utt>' or '<utt>_<span>', got {cause_ref!r}")
    cause = int(cause_match.group(1))
    if not 1 <= cause <= n_utt:
        raise _error(
            path, where, field, f"{cause_ref!r} names utterance {cause}, not in 1..{n_utt}"
        )
    span = cause_match.group(2)
    if span is not None:
        if not span.strip():
            raise _error(path, where, field, f"{cause_ref!r}: empty cause span")
        if check_spans and _squash(span) not in _squash(texts[cause - 1]):
            raise _error(
                path,
                where,
                field,
                f"cause span {span!r} is not in utterance {cause}'s text {texts[cause - 1]!r}",
            )
    return emo, cause


def _semeval_record(record: object, index: int, path: PathLike, check_spans: bool) -> Conversation:
    """Parse one conversation object."""
    where = f"record {index}"
    if not isinstance(record, dict):
        raise _error(path, where, "<record>", f"expected an object, got {type(record).__name__}")
    conv_id = str(_semeval_id(record.get("conversation_ID"), path, where, "conversation_ID"))
    where = f"record {index} (conversation_ID {conv_id})"
    speakers, texts, emotions, keys = _semeval_utterances(
        conv_id, record.get("conversation"), path, where
    )
    raw_pairs = record.get(SEMEVAL_EMOTION_FIELD)
    if not isinstance(raw_pairs, list):
        raise _error(
            path, where, SEMEVAL_EMOTION_FIELD, f"expected a list of pairs, got {raw_pairs!r}"
        )
    pairs = [
        _semeval_pair(pair, texts, emotions, path, f"{where} pair {k}", check_spans)
        for k, pair in enumerate(raw_pairs, start=1)
    ]
    return _make_conversation(
        conv_id,
        speakers,
        texts,
        emotions,
        pairs,
        keys,
        path=path,
        where=where,
        pairs_field=SEMEVAL_EMOTION_FIELD,
    )


def load_semeval(path: PathLike, *, check_spans: bool = True) -> list[Conversation]:
    """Load a SemEval-2024 Task 3 (ECF 2.0) file, e.g. ``Subtask_2_train.json``.

    The file is a JSON list of ``{"conversation_ID", "conversation": [{"utterance_ID",
    "text", "speaker", "emotion", "video_name"?, ...}], "emotion-cause_pairs"}``; a pair is
    ``["3_joy", "2"]`` (Subtask 2) or ``["3_joy", "2_cause span"]`` (Subtask 1). Pairs are
    utterance-level, so several spans of one cause utterance give one ``(3, 2)`` pair.
    Feature keys are ``video_name`` without its extension (``dia12utt3.mp4`` ->
    ``dia12utt3``), else ``dia{conversation_ID}utt{utterance_ID}`` (the ECF 1.0 keys).

    Errors (:class:`DataFormatError`, naming the file, record and field): a missing field or
    one of the wrong type; ``utterance_ID`` that is not ``1, 2, ...`` in order (duplicates,
    gaps); an unknown emotion; a pair naming an utterance outside the conversation; a pair
    whose emotion disagrees with that utterance's ``emotion``, or names a neutral utterance;
    a cause span that is empty or (with ``check_spans``, compared with whitespace runs
    collapsed) not part of the cause utterance's text; ``video_name`` on some utterances of a
    conversation but not all; duplicate conversation ids or feature keys. Other fields
    (``video_source``, ...) are ignored.

    Example:
        >>> import json, tempfile, pathlib
        >>> rec = {"conversation_ID": 7, "emotion-cause_pairs": [["2_joy", "1_good news"]],
        ...        "conversation": [
        ...            {"utterance_ID": 1, "text": "I have good news .", "speaker": "A",
        ...             "emotion": "neutral"},
        ...            {"utterance_ID": 2, "text": "Great !", "speaker": "B", "emotion": "joy"}]}
        >>> f = pathlib.Path(tempfile.mkdtemp()) / "Subtask_1_train.json"
        >>> _ = f.write_text(json.dumps([rec]))
        >>> [(c.conv_id, c.pairs, c.feature_keys) for c in load_semeval(f)]
        [('7', ((2, 1),), ('dia7utt1', 'dia7utt2'))]
    """
    path = Path(path)
    data = _read_json(path)
    if not isinstance(data, list):
        raise _error(path, "file", "<root>", "expected a list of conversations")
    conversations = [_semeval_record(record, i, path, check_spans) for i, record in enumerate(data)]
    _check_file_ids(conversations, path)
    return conversations


SEMEVAL_SPLIT_FILES: dict[str, str] = {
    "train": "Subtask_{k}_train.json",
    "test": "Subtask_{k}_test.json",
}


def semeval_split_path(data_dir: PathLike, split: str, *, subtask: int = 2) -> Path:
    """``Subtask_<k>_train.json`` / ``Subtask_<k>_test.json`` (the names SemEval released).

    There is no official dev split: :func:`load_semeval_split` holds out conversations of the
    train file, so ``split="dev"`` (or ``"valid"``) maps to the train file here.
    """
    if subtask not in (1, 2):
        raise ValueError(f"unknown subtask {subtask!r}; expected 1 or 2")
    if split not in _SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of train, dev, test")
    name = SEMEVAL_SPLIT_FILES["test" if _SPLITS[split] == "test" else "train"]
    return Path(data_dir) / name.format(k=subtask)


def split_by_ids(
    conversations: Sequence[Conversation], ids: Iterable[str], *, path: PathLike
) -> tuple[list[Conversation], list[Conversation]]:
    """``(held_out, rest)``: the conversations whose id is in ``ids``, and the others.

    Every id must name a conversation of ``path`` (else :class:`DataFormatError`): a typo
    never silently shrinks the held-out split. Order follows the file.
    """
    wanted = set(ids)
    present = {conv.conv_id for conv in conversations}
    unknown = sorted(wanted - present, key=lambda s: (len(s), s))
    if unknown:
        shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
        raise _error(path, "file", "conversation_ID", f"held-out ids not in the file: {shown}")
    held = [conv for conv in conversations if conv.conv_id in wanted]
    rest = [conv for conv in conversations if conv.conv_id not in wanted]
    return held, rest


def load_semeval_split(
    data_dir: PathLike,
    split: str,
    *,
    dev_ids: Iterable[str] | None = None,
    subtask: int = 2,
    check_spans: bool = True,
) -> list[Conversation]:
    """One split of SemEval-2024 Task 3 (ECF 2.0) from ``data_dir``.

    ``test`` is ``Subtask_<k>_test.json``. ``dev`` is the conversations of
    ``Subtask_<k>_train.json`` whose id is in ``dev_ids`` and ``train`` is the rest (all of it
    when ``dev_ids`` is None). The suggested ``dev_ids`` are ECF 1.0's dev conversations
    (``[c.conv_id for c in load_ecf("<ecf>/dev.txt")]``): ECF 2.0's training data is all of
    ECF 1.0, with the same conversation ids.
    """
    path = semeval_split_path(data_dir, split, subtask=subtask)
    if not path.is_file():
        raise FileNotFoundError(f"semeval {split} split not found: {path}")
    convs = load_semeval(path, check_spans=check_spans)
    canonical = _SPLITS[split]
    if canonical == "test":
        return convs
    if dev_ids is None:
        if canonical == "dev":
            raise ValueError(
                "SemEval-2024 Task 3 has no official dev split: pass dev_ids (e.g. the "
                "conversation ids of ECF 1.0's dev.txt) to hold them out of the train file"
            )
        return convs
    held, rest = split_by_ids(convs, dev_ids, path=path)
    return held if canonical == "dev" else rest


# ------------------------------------------------------------------------------------- stats


def summarize(conversations: Iterable[Conversation]) -> dict[str, int]:
    """Counts: conversations, utterances, pairs, emotion rows with a pair, multi-cause rows."""
    stats = dict.fromkeys(
        (
            "conversations",
            "utterances",
            "pairs",
            "emotion_utterances",
            "multi_cause_rows",
            "pairs_out_of_range",
        ),
        0,
    )
    for conv in conversations:
        stats["conversations"] += 1
        stats["utterances"] += len(conv)
        stats["pairs"] += len(conv.pairs)
        causes_per_row: dict[int, int] = {}
        for emo, cause in conv.pairs:
            causes_per_row[emo] = causes_per_row.get(emo, 0) + 1
            if not (1 <= emo <= len(conv) and 1 <= cause <= len(conv)):
                stats["pairs_out_of_range"] += 1
        stats["emotion_utterances"] += len(causes_per_row)
        stats["multi_cause_rows"] += sum(n >= 2 for n in causes_per_row.values())
    return stats


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m examples.mecpe.data download ecf|mecad|mec4 [--to DIR] ...``: the same command
    as ``python -m examples.mecpe.download`` (:func:`examples.mecpe.download.main`)."""
    import sys

    from .download import main as download_main

    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] != "download":
        print(
            "usage: python -m examples.mecpe.data download {ecf,mecad,mec4} [options] "
            "(see python -m examples.mecpe.download --help)",
            file=sys.stderr,
        )
        return 2
    return download_main(args[1:])


if __name__ == "__main__":
    raise SystemExit(main())
