"""Tests for the SemEval-2024 Task 3 (ECF 2.0) loader, on generated JSON files."""

from __future__ import annotations

import doctest
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from examples.mecpe import data as mecpe_data
from examples.mecpe.data import (
    EMOTIONS,
    Conversation,
    DataFormatError,
    load_semeval,
    load_semeval_split,
    semeval_split_path,
    split_by_ids,
)


def utt(
    uid: Any, text: str, emotion: str, *, video: bool = True, conv_id: Any = 12, **extra: Any
) -> dict[str, Any]:
    """One utterance (with the Subtask 2 fields by default)."""
    row: dict[str, Any] = {
        "utterance_ID": uid,
        "text": text,
        "speaker": f"S{uid}",
        "emotion": emotion,
    }
    if video:
        row["video_name"] = f"dia{conv_id}utt{uid}.mp4"
        row["video_source"] = ["S01E01", "00:00:01.000", "00:00:02.000"]
    row.update(extra)
    return row


def conv(conv_id: Any = 12, **overrides: Any) -> dict[str, Any]:
    """A three-utterance Subtask 2 conversation with pairs (2,1), (2,2), (3,2)."""
    record: dict[str, Any] = {
        "conversation_ID": conv_id,
        "conversation": [
            utt(1, "I got the job .", "neutral", conv_id=conv_id),
            utt(2, "That is great , really great !", "joy", conv_id=conv_id),
            utt(3, "Wait ... what ?", "surprise", conv_id=conv_id),
        ],
        "emotion-cause_pairs": [["2_joy", "1"], ["2_joy", "2"], ["3_surprise", "2"]],
    }
    record.update(overrides)
    return record


def write(tmp_path: Path, data: Any, name: str = "Subtask_2_train.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def expect(tmp_path: Path, data: Any, match: str) -> DataFormatError:
    path = write(tmp_path, data)
    with pytest.raises(DataFormatError, match=match) as info:
        load_semeval(path)
    assert str(path) in str(info.value)
    return info.value


# ------------------------------------------------------------------------------------ parsing


def test_subtask2_record(tmp_path: Path) -> None:
    (c,) = load_semeval(write(tmp_path, [conv()]))
    assert c.conv_id == "12"
    assert c.speakers == ("S1", "S2", "S3")
    assert c.texts[1] == "That is great , really great !"
    assert c.emotions == (0, EMOTIONS.index("joy"), EMOTIONS.index("surprise"))
    assert c.pairs == ((2, 1), (2, 2), (3, 2))
    assert c.feature_keys == ("dia12utt1", "dia12utt2", "dia12utt3")


def test_subtask1_spans_and_fallback_keys(tmp_path: Path) -> None:
    record = conv(
        "5",
        conversation=[
            utt("1", "I got the job .", "neutral", video=False),
            utt("2", "That is great , really great !", "joy", video=False),
        ],
        **{
            "emotion-cause_pairs": [
                ["2_joy", "1_got the job"],
                ["2_joy", "1_I got"],  # a second span of the same cause utterance
                ["2_joy", "2_really   great !"],  # whitespace runs do not matter
            ]
        },
    )
    (c,) = load_semeval(write(tmp_path, [record], "Subtask_1_train.json"))
    assert c.conv_id == "5"
    assert c.pairs == ((2, 1), (2, 2))  # utterance-level pairs
    assert c.feature_keys == ("dia5utt1", "dia5utt2")


def test_conversation_without_pairs_is_kept(tmp_path: Path) -> None:
    convs = load_semeval(write(tmp_path, [conv(1), conv(2, **{"emotion-cause_pairs": []})]))
    assert [c.conv_id for c in convs] == ["1", "2"]
    assert convs[1].pairs == ()


def test_video_name_without_extension_or_other_stem(tmp_path: Path) -> None:
    record = conv()
    for k, u in enumerate(record["conversation"], start=1):
        u["video_name"] = f"clips/s1_{k}" if k < 3 else "clip.final.mp4"
    (c,) = load_semeval(write(tmp_path, [record]))
    assert c.feature_keys == ("clips/s1_1", "clips/s1_2", "clip.final")


def test_emotion_aliases_and_case(tmp_path: Path) -> None:
    record = conv(**{"emotion-cause_pairs": [["2_Happy", "1"]]})
    record["conversation"][1]["emotion"] = "JOY"
    (c,) = load_semeval(write(tmp_path, [record]))
    assert c.pairs == ((2, 1),)


def test_check_spans_can_be_switched_off(tmp_path: Path) -> None:
    path = write(tmp_path, [conv(**{"emotion-cause_pairs": [["2_joy", "1_not in the text"]]})])
    with pytest.raises(DataFormatError, match="not in utterance 1's text"):
        load_semeval(path)
    assert load_semeval(path, check_spans=False)[0].pairs == ((2, 1),)


@given(
    n_utt=st.integers(1, 6),
    raw=st.lists(st.tuples(st.integers(1, 6), st.integers(1, 6)), max_size=12),
    spans=st.booleans(),
)
def test_pairs_match_a_python_reference(
    n_utt: int, raw: list[tuple[int, int]], spans: bool
) -> None:
    """Any valid pair list loads to the sorted set of its (emotion, cause) indices."""
    import tempfile

    labels = ["joy" if k % 2 else "anger" for k in range(1, n_utt + 1)]
    pairs = [(e, c) for e, c in raw if e <= n_utt and c <= n_utt]
    record = {
        "conversation_ID": 3,
        "conversation": [
            {"utterance_ID": k, "text": f"text {k} here", "speaker": "A", "emotion": labels[k - 1]}
            for k in range(1, n_utt + 1)
        ],
        "emotion-cause_pairs": [
            [f"{e}_{labels[e - 1]}", f"{c}_text {c}" if spans else str(c)] for e, c in pairs
        ],
    }
    with tempfile.TemporaryDirectory() as tmp:
        (c,) = load_semeval(write(Path(tmp), [record]))
    assert c.pairs == tuple(sorted(set(pairs)))
    assert len(c) == n_utt


# ------------------------------------------------------------------------------------- errors

Mutation = Callable[[dict[str, Any]], None]


def _set(path: list[Any], value: Any) -> Mutation:
    def mutate(record: dict[str, Any]) -> None:
        target: Any = record
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return mutate


def _delete(path: list[Any]) -> Mutation:
    def mutate(record: dict[str, Any]) -> None:
        target: Any = record
        for key in path[:-1]:
            target = target[key]
        del target[path[-1]]

    return mutate


PAIRS = "emotion-cause_pairs"

ERRORS: list[tuple[str, Mutation, str]] = [
    ("no id", _delete(["conversation_ID"]), r"record 0: field 'conversation_ID'"),
    ("bad id", _set(["conversation_ID"], "12a"), r"positive integer id, got '12a'"),
    ("bool id", _set(["conversation_ID"], True), r"positive integer id, got True"),
    ("zero id", _set(["conversation_ID"], 0), r"positive integer id, got 0"),
    ("no utterances", _set(["conversation"], []), r"field 'conversation': expected a non-empty"),
    ("utterances not a list", _set(["conversation"], {}), r"field 'conversation'"),
    ("utterance not an object", _set(["conversation", 1], "hi"), r"utterance 2: field 'utterance'"),
    (
        "gap in ids",
        _set(["conversation", 2, "utterance_ID"], 4),
        r"utterance 3: field 'utterance_ID': expected 3",
    ),
    (
        "duplicate utterance id",
        _set(["conversation", 1, "utterance_ID"], 1),
        r"utterance 2: field 'utterance_ID': expected 2",
    ),
    (
        "ids start at 0",
        _set(["conversation", 0, "utterance_ID"], 0),
        r"utterance 1: field 'utterance_ID'",
    ),
    ("missing text", _delete(["conversation", 0, "text"]), r"utterance 1: field 'text'"),
    ("empty speaker", _set(["conversation", 0, "speaker"], " "), r"utterance 1: field 'speaker'"),
    (
        "unknown emotion",
        _set(["conversation", 2, "emotion"], "bored"),
        r"utterance 3: field 'emotion': unknown emotion 'bored'",
    ),
    ("missing emotion", _delete(["conversation", 2, "emotion"]), r"utterance 3: field 'emotion'"),
    (
        "video_name on some only",
        _delete(["conversation", 1, "video_name"]),
        r"utterance 2: field 'video_name': missing here",
    ),
    (
        "empty video_name",
        _set(["conversation", 1, "video_name"], ""),
        r"utterance 2: field 'video_name'",
    ),
    (
        "no pairs field",
        _delete([PAIRS]),
        r"field 'emotion-cause_pairs': expected a list of pairs, got None",
    ),
    (
        "pair not a list",
        _set([PAIRS, 0], "2_joy,1"),
        r"pair 1: field 'emotion-cause_pairs': expected \[",
    ),
    ("pair of three", _set([PAIRS, 0], ["2_joy", "1", "2"]), r"pair 1: .*expected \["),
    ("pair of ints", _set([PAIRS, 0], [2, 1]), r"pair 1: .*expected \["),
    (
        "emotion ref without label",
        _set([PAIRS, 1], ["2", "2"]),
        r"pair 2: .*expected '<utt>_<emotion>', got '2'",
    ),
    (
        "pair names missing emotion utterance",
        _set([PAIRS, 0], ["4_joy", "1"]),
        r"'4_joy' names utterance 4, not in 1\.\.3",
    ),
    (
        "pair names missing cause utterance",
        _set([PAIRS, 0], ["2_joy", "9"]),
        r"'9' names utterance 9, not in 1\.\.3",
    ),
    ("cause utterance 0", _set([PAIRS, 0], ["2_joy", "0"]), r"'0' names utterance 0"),
    (
        "bad cause ref",
        _set([PAIRS, 0], ["2_joy", "one"]),
        r"expected '<utt>' or '<utt>_<span>', got 'one'",
    ),
    (
        "emotion disagrees",
        _set([PAIRS, 2], ["3_joy", "2"]),
        r"pair 3: .*'3_joy' disagrees with utterance 3's emotion 'surprise'",
    ),
    (
        "unknown pair emotion",
        _set([PAIRS, 2], ["3_bored", "2"]),
        r"pair 3: .*unknown emotion 'bored'",
    ),
    (
        "neutral emotion",
        _set([PAIRS, 0], ["1_neutral", "1"]),
        r"'1_neutral': a neutral utterance has no cause",
    ),
    ("empty span", _set([PAIRS, 0], ["2_joy", "1_ "]), r"'1_ ': empty cause span"),
    (
        "span not in text",
        _set([PAIRS, 0], ["2_joy", "1_the promotion"]),
        r"cause span 'the promotion' is not in utterance 1's text",
    ),
    (
        "span from another utterance",
        _set([PAIRS, 0], ["2_joy", "1_really great"]),
        r"not in utterance 1's text",
    ),
]


@pytest.mark.parametrize(("mutate", "match"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_malformed_record(tmp_path: Path, mutate: Mutation, match: str) -> None:
    record = conv()
    mutate(record)
    expect(tmp_path, [conv(1), record], match.replace("record 0", "record 1"))


def test_error_names_record_and_conversation(tmp_path: Path) -> None:
    record = conv(44)
    record["conversation"][2]["emotion"] = "bored"
    err = expect(tmp_path, [conv(1), record], r"record 1 \(conversation_ID 44\) utterance 3")
    assert err.field == "emotion"
    assert err.where == "record 1 (conversation_ID 44) utterance 3"


def test_root_must_be_a_list(tmp_path: Path) -> None:
    expect(tmp_path, {"conversation_ID": 1}, r"file: field '<root>': expected a list")


def test_record_must_be_an_object(tmp_path: Path) -> None:
    expect(tmp_path, [conv(1), ["x"]], r"record 1: field '<record>': expected an object")


def test_duplicate_conversation_ids(tmp_path: Path) -> None:
    expect(tmp_path, [conv(7), conv("7")], r"duplicate conversation id '7'")


def test_duplicate_feature_keys(tmp_path: Path) -> None:
    # Conversation 13's video_name say dia12utt*: the feature rows would collide.
    other = conv(13)
    for u in other["conversation"]:
        u["video_name"] = f"dia12utt{u['utterance_ID']}.mp4"
    expect(tmp_path, [conv(12), other], r"conversation '13'.*duplicate utterance key 'dia12utt1'")


def test_invalid_json_and_duplicate_keys(tmp_path: Path) -> None:
    path = tmp_path / "bad.json"
    path.write_text('[{"conversation_ID": 1, "conversation_ID": 2}]')
    with pytest.raises(DataFormatError, match=r"duplicate JSON key 'conversation_ID'"):
        load_semeval(path)
    path.write_text("[{")
    with pytest.raises(DataFormatError, match=r"bad\.json: invalid JSON"):
        load_semeval(path)


# ------------------------------------------------------------------------------------- splits


def test_split_paths(tmp_path: Path) -> None:
    assert semeval_split_path(tmp_path, "train") == tmp_path / "Subtask_2_train.json"
    assert semeval_split_path(tmp_path, "dev") == tmp_path / "Subtask_2_train.json"
    assert semeval_split_path(tmp_path, "valid", subtask=1) == tmp_path / "Subtask_1_train.json"
    assert semeval_split_path(tmp_path, "test") == tmp_path / "Subtask_2_test.json"
    with pytest.raises(ValueError, match="subtask"):
        semeval_split_path(tmp_path, "train", subtask=3)
    with pytest.raises(ValueError, match="split"):
        semeval_split_path(tmp_path, "eval")


def test_dev_is_held_out_of_train(tmp_path: Path) -> None:
    write(tmp_path, [conv(k) for k in (1, 2, 3, 4)], "Subtask_2_train.json")
    write(tmp_path, [conv(9)], "Subtask_2_test.json")

    def ids(convs: list[Conversation]) -> list[str]:
        return [c.conv_id for c in convs]

    assert ids(load_semeval_split(tmp_path, "train")) == ["1", "2", "3", "4"]
    assert ids(load_semeval_split(tmp_path, "train", dev_ids=["3", "1"])) == ["2", "4"]
    assert ids(load_semeval_split(tmp_path, "dev", dev_ids=["3", "1"])) == ["1", "3"]
    assert ids(load_semeval_split(tmp_path, "test", dev_ids=["3"])) == ["9"]
    with pytest.raises(ValueError, match="no official dev split"):
        load_semeval_split(tmp_path, "dev")
    with pytest.raises(DataFormatError, match=r"held-out ids not in the file: 8"):
        load_semeval_split(tmp_path, "dev", dev_ids=["1", "8"])
    with pytest.raises(FileNotFoundError, match=r"Subtask_1_test\.json"):
        load_semeval_split(tmp_path, "test", subtask=1)


def test_split_by_ids_reference(tmp_path: Path) -> None:
    convs = load_semeval(write(tmp_path, [conv(k) for k in range(1, 8)]))
    held, rest = split_by_ids(convs, {"2", "5", "7"}, path="x")
    assert [c.conv_id for c in held] == ["2", "5", "7"]
    assert [c.conv_id for c in rest] == ["1", "3", "4", "6"]
    assert split_by_ids(convs, [], path="x") == ([], list(convs))


def test_docstring_example_runs() -> None:
    finder = doctest.DocTestFinder()
    runner = doctest.DocTestRunner()
    for test in finder.find(mecpe_data.load_semeval, "load_semeval", globs=vars(mecpe_data)):
        runner.run(test)
    assert runner.tries > 0 and runner.failures == 0


def test_registry_entry_holds_out_the_committed_dev_ids(tmp_path: Path) -> None:
    from examples.mecpe import datasets

    dev_ids = datasets._semeval_dev_ids()
    assert len(dev_ids) == len(set(dev_ids)) == 112
    train_ids = [str(i) for i in range(5000, 5003)]
    write(tmp_path, [conv(cid) for cid in [*dev_ids, *train_ids]])
    write(tmp_path, [conv(9000), conv(9001)], name="Subtask_2_test.json")
    splits = {s: [c.conv_id for c in datasets.load_split("semeval", tmp_path, s)] for s in datasets.SPLITS}
    assert splits == {"train": train_ids, "dev": dev_ids, "test": ["9000", "9001"]}
    write(tmp_path, [conv(cid) for cid in [*dev_ids[1:], *train_ids]])  # one dev id missing
    with pytest.raises(DataFormatError, match="held-out ids not in the file"):
        datasets.load_split("semeval", tmp_path, "dev")
