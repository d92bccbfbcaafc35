"""Tests for the MECPE loaders (tiny fixtures written to tmp_path)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from examples.mecpe.data import (
    EMOTIONS,
    Conversation,
    DataFormatError,
    emotion_index,
    load_ecf,
    load_mec4,
    load_mecad,
    parse_mec4_text,
    summarize,
)

# ------------------------------------------------------------------------------------ helpers

ECF_SAMPLE = "\n".join(
    [
        "1 3",
        "(2,1),(2,2),(3,2)",
        "1 | Chandler | neutral | Hello there . | Friends_S1E1: 00:01:19.037 - 00:01:25.417",
        "2 | Joey | joy | Great news | yes | Friends_S1E1: 00:01:25.627 - 00:01:27.169",
        "3 | Ross | surprise | Really ? | train_dia1_utt2",
        "7 2",
        "",  # empty pairs line: a conversation without pairs
        "1 | Rachel | sadness | I am sorry ... |",
        "2 | Ross | neutral | Fine . | ",  # empty last field (as in all_data_pair_ECFvsMELD.txt)
        "",
    ]
)


def write(tmp_path: Path, name: str, text: str) -> Path:
    """Write ``text`` to ``tmp_path/name``."""
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def write_json(tmp_path: Path, name: str, data: Any) -> Path:
    """Write ``data`` as JSON to ``tmp_path/name``."""
    return write(tmp_path, name, json.dumps(data, ensure_ascii=False))


def mecad_utt(
    turn: int, emotion: str, evidence: list[Any] | None = None, **extra: Any
) -> dict[str, Any]:
    """One MECAD utterance dict."""
    utt: dict[str, Any] = {
        "turn": turn,
        "speaker": f"spk{turn % 2}",
        "utterance": f"话语{turn}",
        "emotion": emotion,
        "utterance_name": f"show_1_{turn}",
        "video": f"show_1_{turn}.mp4",
    }
    if evidence is not None:
        utt["expanded emotion cause evidence"] = evidence
    utt.update(extra)
    return utt


def mecad_sample() -> dict[str, Any]:
    """A two-dialogue MECAD file."""
    return {
        "show_1": [
            [
                mecad_utt(1, "Anger", [1]),
                mecad_utt(2, "Neutral"),
                mecad_utt(3, "Happy", [2, 1]),  # unsorted evidence
                mecad_utt(4, "Sad", confidence=[4, 3, 5]),  # emotion without evidence
            ]
        ],
        "show_2": [
            [
                {
                    "turn": 1,
                    "speaker": "A",
                    "utterance": "x",
                    "emotion": "Surprise",
                    "expanded emotion cause evidence": [2],
                },
                {
                    "turn": 2,
                    "speaker": "B",
                    "utterance": "y",
                    "emotion": "Fear",
                    "expanded emotion cause evidence": [2],
                },
            ]
        ],
    }


def mec4_text(speakers: list[str], texts: list[str], sep: str = " ") -> str:
    """``1.spk：text 2.spk：text`` as in MEC4."""
    return sep.join(
        f"{i}.{s}：{t}" for i, (s, t) in enumerate(zip(speakers, texts, strict=True), 1)
    )


def mec4_row(
    dia_id: Any, speakers: list[str], texts: list[str], pairs: Any, **extra: Any
) -> dict[str, Any]:
    """One MEC4 row."""
    row = {
        "dia_id": dia_id,
        "dia_len": len(texts),
        "text": mec4_text(speakers, texts),
        "pairs": pairs,
    }
    row.update(extra)
    return row


def expect_error(match: str, fn: Any, *args: Any) -> DataFormatError:
    """Call ``fn`` expecting a DataFormatError whose message matches ``match``."""
    with pytest.raises(DataFormatError, match=match) as info:
        fn(*args)
    return info.value


# ---------------------------------------------------------------------------------------- ECF


def test_ecf_parses_blocks(tmp_path: Path) -> None:
    convs = load_ecf(write(tmp_path, "train.txt", ECF_SAMPLE))
    assert [c.conv_id for c in convs] == ["1", "7"]
    first, second = convs
    assert len(first) == 3
    assert first.speakers == ("Chandler", "Joey", "Ross")
    assert first.texts == ("Hello there .", "Great news | yes", "Really ?")
    assert first.emotions == (0, EMOTIONS.index("joy"), EMOTIONS.index("surprise"))
    assert first.pairs == ((2, 1), (2, 2), (3, 2))
    assert first.feature_keys == ("dia1utt1", "dia1utt2", "dia1utt3")
    assert second.pairs == ()  # empty pairs line kept, not dropped
    assert second.texts == ("I am sorry ...", "Fine .")
    assert second.feature_keys == ("dia7utt1", "dia7utt2")


def test_ecf_pairs_sorted_and_deduplicated(tmp_path: Path) -> None:
    text = "5 2\n(2,2),(1,1),(2,2)\n1 | A | joy | a | t\n2 | B | anger | b | t\n"
    (conv,) = load_ecf(write(tmp_path, "x.txt", text))
    assert conv.pairs == ((1, 1), (2, 2))


def test_ecf_four_fields_and_aliases(tmp_path: Path) -> None:
    text = "1 2\n(1,2)\n1 | A | Happy | hi\n2 | B | sad | ho\n"
    (conv,) = load_ecf(write(tmp_path, "x.txt", text))
    assert conv.texts == ("hi", "ho")
    assert conv.emotions == (EMOTIONS.index("joy"), EMOTIONS.index("sadness"))


@pytest.mark.parametrize(
    ("text", "line", "field"),
    [
        ("1 2\n(1,1)\n1 | A | happyish | a | t\n2 | B | joy | b | t\n", 3, "emotion"),
        ("1 2\n(1,3)\n1 | A | joy | a | t\n2 | B | joy | b | t\n", 2, "pairs"),
        ("1 2\n(1,1\n1 | A | joy | a | t\n2 | B | joy | b | t\n", 2, "pairs"),
        ("1 2\n(1,1)\n1 | A | joy | a | t\n3 | B | joy | b | t\n", 4, "idx"),
        ("1 2\n(1,1)\n1 |  | joy | a | t\n2 | B | joy | b | t\n", 3, "speaker"),
        ("1 2\n(1,1)\n1 | A | joy |  | t\n2 | B | joy | b | t\n", 3, "text"),
        ("1 2\n(1,1)\n1 | A | joy\n2 | B | joy | b | t\n", 3, "utterance"),
        ("1 two\n(1,1)\n1 | A | joy | a | t\n", 1, "header"),
        ("1 3\n(1,1)\n1 | A | joy | a | t\n2 | B | joy | b | t\n", 1, "utterances"),
    ],
)
def test_ecf_errors_name_file_line_field(tmp_path: Path, text: str, line: int, field: str) -> None:
    path = write(tmp_path, "bad.txt", text)
    err = expect_error(rf"line {line}\b.*field '{field}'", load_ecf, path)
    assert str(path) in str(err)
    assert err.field == field


def test_ecf_duplicate_conversation_id(tmp_path: Path) -> None:
    block = "4 1\n(1,1)\n1 | A | joy | a | t\n"
    expect_error("duplicate conversation id '4'", load_ecf, write(tmp_path, "d.txt", block * 2))


# -------------------------------------------------------------------------------------- MECAD


def test_mecad_parses_dialogues(tmp_path: Path) -> None:
    convs = load_mecad(write_json(tmp_path, "valid_data_pair.json", mecad_sample()))
    assert [c.conv_id for c in convs] == ["show_1", "show_2"]
    show1, show2 = convs
    assert show1.emotions == tuple(emotion_index(e) for e in ("anger", "neutral", "joy", "sadness"))
    assert show1.pairs == ((1, 1), (3, 1), (3, 2))
    assert show1.feature_keys == tuple(f"show_1_{t}" for t in range(1, 5))
    assert show1.speakers[0] == "spk1" and show1.texts[2] == "话语3"
    assert show2.feature_keys == ("show_2_1", "show_2_2")  # no utterance_name -> id_turn
    assert show2.pairs == ((1, 2), (2, 2))


@pytest.mark.parametrize(
    ("utt", "field"),
    [
        (mecad_utt(2, "Anger", [-1]), "expanded emotion cause evidence"),
        (mecad_utt(2, "Anger", [3]), "expanded emotion cause evidence"),
        (mecad_utt(2, "Anger", ["two"]), "expanded emotion cause evidence"),
        (mecad_utt(2, "Anger", 1), "expanded emotion cause evidence"),
        (mecad_utt(2, "Neutral", [1]), "expanded emotion cause evidence"),
        (mecad_utt(2, "Bored"), "emotion"),
        (mecad_utt(3, "Anger"), "turn"),
        (mecad_utt(2, "Anger", speaker=""), "speaker"),
        (mecad_utt(2, "Anger", utterance=None), "utterance"),
    ],
)
def test_mecad_errors(tmp_path: Path, utt: dict[str, Any], field: str) -> None:
    data = {"show_1": [[mecad_utt(1, "Neutral"), utt]]}
    path = write_json(tmp_path, "bad.json", data)
    err = expect_error(rf"dialogue 'show_1' utterance 2: field '{field}'", load_mecad, path)
    assert str(path) in str(err)


def test_mecad_digit_string_evidence_accepted(tmp_path: Path) -> None:
    data = {"d": [[mecad_utt(1, "Anger", ["1"])]]}
    (conv,) = load_mecad(write_json(tmp_path, "x.json", data))
    assert conv.pairs == ((1, 1),)


def test_mecad_duplicate_dialogue_key_rejected(tmp_path: Path) -> None:
    utts = json.dumps([[mecad_utt(1, "Neutral")]])
    path = write(tmp_path, "dup.json", f'{{"a": {utts}, "a": {utts}}}')
    expect_error("duplicate JSON key 'a'", load_mecad, path)


def test_mecad_duplicate_utterance_name_rejected(tmp_path: Path) -> None:
    data = {"a": [[mecad_utt(1, "Neutral")]], "b": [[mecad_utt(1, "Neutral")]]}
    expect_error(
        "duplicate utterance key 'show_1_1'", load_mecad, write_json(tmp_path, "x.json", data)
    )


def test_mecad_bad_layout(tmp_path: Path) -> None:
    expect_error("field 'utterances'", load_mecad, write_json(tmp_path, "x.json", {"a": [[], []]}))
    expect_error("field '<root>'", load_mecad, write_json(tmp_path, "y.json", [1, 2]))


# --------------------------------------------------------------------------------------- MEC4


def test_mec4_full_width_pairs_and_text(tmp_path: Path) -> None:
    rows = [
        mec4_row(
            10,
            ["张三", "李四", "张三"],
            ["你好。", "价格是2.5元：贵", "好的 3. 不对"],
            "（1，2）（3，3）（1，2）",
        ),
        mec4_row("11", ["A", "B"], ["hi", "ho"], "(2,1),(2,2)", emotions=["Happy", "neutral"]),
        mec4_row("12", ["A", "B"], ["hi", "ho"], [[2, 1], ["1", "1"]], emotion="anger，sad"),
    ]
    convs = load_mec4(write_json(tmp_path, "MEC4_text/train.json", rows))
    first, second, third = convs
    assert first.conv_id == "10"
    assert first.speakers == ("张三", "李四", "张三")
    assert first.texts == ("你好。", "价格是2.5元：贵", "好的 3. 不对")
    assert first.pairs == ((1, 2), (3, 3))
    assert first.emotions == (-1, -1, -1)
    assert first.feature_keys == ("10_1", "10_2", "10_3")
    assert second.pairs == ((2, 1), (2, 2))
    assert second.emotions == (EMOTIONS.index("joy"), 0)
    assert third.pairs == ((1, 1), (2, 1))
    assert third.emotions == (EMOTIONS.index("anger"), EMOTIONS.index("sadness"))


def test_mec4_text_without_spaces_and_ascii_colon() -> None:
    assert parse_mec4_text("1.A：你好2.B:嗯 3.C：好") == [("A", "你好"), ("B", "嗯"), ("C", "好")]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"dia_len": 3}, "dia_len"),
        ({"dia_len": None}, "dia_len"),
        ({"pairs": "（1，3）"}, "pairs"),
        ({"pairs": "1,2"}, "pairs"),
        ({"pairs": [[1]]}, "pairs"),
        ({"pairs": None}, "pairs"),
        ({"text": "hello"}, "text"),
        ({"text": "x 1.A：hi 2.B：ho"}, "text"),
        ({"text": "1.A：hi 2.B："}, "text"),
        ({"dia_id": None}, "dia_id"),
        ({"emotions": ["joy"]}, "emotions"),
        ({"emotion": "joy,meh"}, "emotion"),
    ],
)
def test_mec4_errors(tmp_path: Path, change: dict[str, Any], field: str) -> None:
    row = mec4_row("5", ["A", "B"], ["hi", "ho"], "（1，2）")
    row.update(change)
    path = write_json(tmp_path, "bad.json", [mec4_row("4", ["A"], ["ok"], ""), row])
    err = expect_error(rf"record 1\b.*field '{field}'", load_mec4, path)
    assert str(path) in str(err)


def test_mec4_duplicate_ids(tmp_path: Path) -> None:
    rows = [mec4_row("4", ["A"], ["ok"], ""), mec4_row(4, ["A"], ["ok"], "")]
    expect_error("duplicate conversation id '4'", load_mec4, write_json(tmp_path, "x.json", rows))


_NAME = st.text(alphabet="张李王赵AbCd ", min_size=1, max_size=6).map(str.strip).filter(bool)
_UTT = (
    st.text(alphabet="你好吗我们他abc 。，？!2.", min_size=1, max_size=20)
    .map(str.strip)
    .filter(bool)
)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(_NAME, _UTT), min_size=1, max_size=8), st.data())
def test_mec4_round_trip(
    tmp_path_factory: pytest.TempPathFactory, utts: list[tuple[str, str]], data: st.DataObject
) -> None:
    n = len(utts)
    pairs = data.draw(st.lists(st.tuples(st.integers(1, n), st.integers(1, n)), max_size=6))
    pair_str = "".join(f"（{e}，{c}）" for e, c in pairs)
    speakers, texts = [s for s, _ in utts], [t for _, t in utts]
    path = write_json(
        tmp_path_factory.mktemp("mec4"), "t.json", [mec4_row("d", speakers, texts, pair_str)]
    )
    (conv,) = load_mec4(path)
    assert conv.speakers == tuple(speakers)
    assert conv.texts == tuple(texts)
    assert conv.pairs == tuple(sorted(set(pairs)))


# --------------------------------------------------------------------------------- encoding


@pytest.mark.parametrize("loader", [load_ecf, load_mecad, load_mec4])
def test_non_utf8_file_names_file_and_line(tmp_path: Path, loader: Any) -> None:
    path = tmp_path / "latin1.txt"
    path.write_bytes("1 2\n(1,1)\n1 | A | joy | caf\u00e9 | t\n".encode("latin-1"))
    err = expect_error(r"line 3: field '<encoding>': byte 27 is not UTF-8", loader, path)
    assert str(path) in str(err) and err.field == "<encoding>"


# --------------------------------------------------------------------------------- summarize


def test_summarize_counts(tmp_path: Path) -> None:
    convs = load_ecf(write(tmp_path, "x.txt", ECF_SAMPLE))
    assert summarize(convs) == {
        "conversations": 2,
        "utterances": 5,
        "pairs": 3,
        "emotion_utterances": 2,
        "multi_cause_rows": 1,
        "pairs_out_of_range": 0,
    }
    broken = Conversation("z", ("A",), ("a",), (0,), ((1, 2),), ("z_1",))
    assert summarize([broken])["pairs_out_of_range"] == 1


def test_conversation_is_frozen() -> None:
    conv = Conversation("z", ("A",), ("a",), (0,), (), ("z_1",))
    with pytest.raises(AttributeError):
        conv.conv_id = "y"  # type: ignore[misc]
    assert len(conv) == 1
