"""Tests for the dataclass-fields → command-line generator."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, fields
from typing import Any

import pytest

from examples.mecpe.options import (
    AT_LEAST_1,
    POSITIVE,
    UNIT_INTERVAL,
    add_options,
    check_options,
    flag_of,
    option,
    parse_key_values,
    values_from,
)


@dataclass
class Demo:
    name: str = option("x", "a string", choices=("x", "y"))
    count: int = option(3, "an int", check=AT_LEAST_1)
    rate: float = option(0.5, "a float", check=POSITIVE)
    rank: int | None = option(None, "an optional int", check=AT_LEAST_1)
    share: float | None = option(0.0, "an optional float", check=UNIT_INTERVAL)
    path: str | None = option(None, "an optional string")
    flag: bool = option(False, "a switch")
    on: bool = option(True, "a switch that is on")
    seeds: tuple[int, ...] = option((1, 2), "comma-separated ints")
    kv: dict[str, Any] = option(None, "KEY=VALUE (repeatable)", factory=dict, flag="--kv-arg")

    def __post_init__(self) -> None:
        check_options(self)


def parse(*argv: str, **defaults: Any) -> Demo:
    ap = argparse.ArgumentParser()
    add_options(ap, Demo, defaults=defaults or None)
    return Demo(**values_from(ap.parse_args(list(argv)), Demo))


def test_defaults_round_trip() -> None:
    assert parse() == Demo()


def test_every_type_parses() -> None:
    got = parse(
        "--name", "y", "--count", "7", "--rate", "2e-3", "--rank", "none", "--share", "none",
        "--path", "a/b", "--flag", "--no-on", "--seeds", "4, 5,6", "--kv-arg", "k=2",
        "--kv-arg", "where=output", "--kv-arg", "detach-negatives=false",
    )  # fmt: skip
    assert got == Demo(
        name="y", count=7, rate=2e-3, rank=None, share=None, path="a/b", flag=True, on=False,
        seeds=(4, 5, 6), kv={"k": 2, "where": "output", "detach_negatives": False},
    )  # fmt: skip
    assert parse("--rank", "4").rank == 4


def test_parser_rejects_bad_values(capsys: pytest.CaptureFixture[str]) -> None:
    for argv in (["--name", "z"], ["--count", "two"], ["--rate", "x"]):
        with pytest.raises(SystemExit):
            parse(*argv)
    err = capsys.readouterr().err
    assert "invalid choice: 'z'" in err
    assert "invalid int value: 'two'" in err
    assert "invalid float value: 'x'" in err


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"count": 0}, r"count must be >= 1, got 0 \(--count\)"),
        ({"rate": 0.0}, r"rate must be > 0, got 0.0 \(--rate\)"),
        ({"rank": 0}, r"rank must be >= 1 or None, got 0 \(--rank\)"),
        ({"share": 1.0}, r"share must be in \[0, 1\) or None"),
        ({"name": "z"}, r"unknown name 'z'; expected one of x, y \(--name\)"),
        ({"count": "3"}, r"count must be an integer, got '3'"),
        ({"count": True}, r"count must be an integer"),
        ({"flag": 1}, r"flag must be true or false"),
        ({"rate": "fast"}, r"rate must be a number"),
    ],
)
def test_checks_name_the_setting_and_flag(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Demo(**kwargs)


def test_int_is_a_valid_float() -> None:
    assert Demo(rate=2).rate == 2


def test_defaults_override_and_unknown_override() -> None:
    assert parse(on=False).on is False
    with pytest.raises(ValueError, match="unknown options"):
        parse(nope=1)


def test_help_lists_every_field_with_its_help() -> None:
    ap = argparse.ArgumentParser(formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_options(ap, Demo)
    text = " ".join(ap.format_help().split())
    for flag, help_text in (("--count", "an int"), ("--kv-arg", "KEY=VALUE"), ("--no-on", "")):
        assert flag in text and help_text in text
    assert flag_of({f.name: f for f in fields(Demo)}["kv"]) == "--kv-arg"


def test_parse_key_values() -> None:
    got = parse_key_values(["margin_weight=0.3", "where=output", "k=2", "x=none"], "--x")
    assert got == {"margin_weight": 0.3, "where": "output", "k": 2, "x": "none"}
    with pytest.raises(ValueError, match="--x expects KEY=VALUE"):
        parse_key_values(["margin_weight"], "--x")
    with pytest.raises(ValueError, match="only scalar values"):
        parse_key_values(["k=[1]"], "--x")


def test_required_option() -> None:
    @dataclass
    class Needs:
        out: str = option(None, "where", required=True)

    ap = argparse.ArgumentParser()
    add_options(ap, Needs)
    with pytest.raises(SystemExit):
        ap.parse_args([])
    assert values_from(ap.parse_args(["--out", "d"]), Needs) == {"out": "d"}
