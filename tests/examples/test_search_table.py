"""search_table: the dev table of a settings-file search, from run folders built here."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from examples.mecpe import search_table


def _run(folder: Path, name: str, seed: int, *, complete: bool = True, test: bool = False,
         **dev: float) -> None:  # fmt: skip
    metrics = {k: 0.5 for k, _, _ in search_table.COLUMNS} | dev
    path = folder / f"{name}-seed{seed}"
    path.mkdir(parents=True)
    record = {"complete": complete, "dev": metrics, "test": {"pair_f1": 0.1} if test else None}
    (path / "run.json").write_text(json.dumps(record))


def test_means_deltas_spread_and_paired_wins(tmp_path: Path) -> None:
    _run(tmp_path, "base", 1, pair_auprc=0.50, ece=0.02)
    _run(tmp_path, "base", 2, pair_auprc=0.54, ece=0.02)
    _run(tmp_path, "ap", 1, pair_auprc=0.53, ece=0.03)  # beats the base on seed 1 only
    _run(tmp_path, "ap", 2, pair_auprc=0.53, ece=0.01)
    _run(tmp_path, "half", 1, complete=False)  # an unfinished run is not read
    rows, spread = search_table.search_rows(search_table.load_search(tmp_path), "base")
    by = {r["setting"]: r for r in rows}
    assert set(by) == {"base", "ap"}
    assert spread["pair_auprc"] == pytest.approx(0.04)
    assert by["ap"]["pair_auprc"] == pytest.approx(0.53)
    assert by["ap"]["pair_auprc_delta"] == pytest.approx(0.01)
    assert by["ap"]["pair_auprc_wins"] == (1, 2)
    assert by["ap"]["ece_wins"] == (1, 2)  # lower is better: 0.01 < 0.02 on seed 2 only
    assert by["ap"]["temperature_wins"] is None
    text = search_table.write_markdown(rows, spread, "base", "t")
    lines = [line for line in text.splitlines() if line.startswith("| `")]
    assert lines[0].startswith("| `base` | 1,2 | 0.5000 |")  # base first, plain values
    assert "0.5300 (+0.0100, 1/2)" in lines[1]


def test_test_metrics_and_unknown_base_are_errors(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    _run(tmp_path, "base", 1, test=True)
    with pytest.raises(ValueError, match="holds test metrics"):
        search_table.load_search(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        search_table.main([str(tmp_path)])
    assert exit_info.value.code == 2 and "test metrics" in capsys.readouterr().err
    with pytest.raises(ValueError, match="no complete run"):
        search_table.load_search(tmp_path / "empty")
    other = tmp_path / "other"
    _run(other, "x", 1)
    with pytest.raises(ValueError, match="--base: no setting named 'base'"):
        search_table.search_rows(search_table.load_search(other), "base")


# --reuse: settings that a committed full study already trained, read from its summary.json

_CONFIG = {"dataset": "ecf", "epochs": 10, "encoder_lr": 5e-5, "dev_only": True}
_SETTINGS = "base | --arm base\nap | --arm rpcl --rpcl-arg ranking=ap\nnew | --arm rpcl\n"


_HERE = {"cpu_capability": "AVX2", "threads": 2, "cpu": "Some CPU", "cpu_flags": "0123abcd4567"}


def _search(folder: Path, numerics: dict[str, object] | None = None, **config: object) -> Path:
    """A search folder with one new setting (seeds 1, 2) and its settings file."""
    for seed in (1, 2):
        _run(folder, "new", seed, pair_auprc=0.6)
        record = json.loads((folder / f"new-seed{seed}" / "run.json").read_text())
        record["config"] = _CONFIG | {"arm": "rpcl", "seed": seed} | config
        if numerics is not None:
            record["numerics"] = numerics
        (folder / f"new-seed{seed}" / "run.json").write_text(json.dumps(record))
    (folder / "settings.txt").write_text(_SETTINGS)
    return folder / "settings.txt"


def _summary(path: Path, arms: dict[str, str] | None, seeds: tuple[int, ...] = (1, 2, 3),
             numerics: dict[str, object] | None = None, **config: object) -> Path:  # fmt: skip
    """A full study's summary.json: dev and (distinctive) test metrics per arm and seed."""
    names = list(arms) if arms is not None else ["base"]
    runs = [
        {"arm": arm, "seed": seed, "dev": {k: 0.5 + seed / 100 for k, _, _ in search_table.COLUMNS},
         "test": {"pair_f1": 0.9876}, "dev_threshold": 0.4}
        | ({} if numerics is None else {"numerics": numerics})
        for arm in names for seed in seeds
    ]  # fmt: skip
    summary: dict[str, object] = {
        "config": _CONFIG | {"dev_only": False, "arms": names, "seeds": list(seeds)} | config,
        "runs": runs,
    }
    if arms is not None:
        summary["settings"] = arms
    path.write_text(json.dumps(summary))
    return path


def test_reuse_reads_only_dev_metrics_of_the_searched_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _search(tmp_path / "s")
    ranking = _summary(tmp_path / "ranking.json",
                       {"base": "--arm base", "ap": "--arm rpcl  --rpcl-arg ranking=ap"})  # fmt: skip
    arms = _summary(tmp_path / "arms.json", None)  # an --arms study: arm base is `--arm base`
    assert search_table.main([str(tmp_path / "s"), "--settings", str(settings),
                              "--reuse", f"{arms}:base=base",
                              "--reuse", f"{ranking}:ap=ap"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| `")]
    assert [r.split("|")[1].strip() for r in rows] == ["`base` †", "`ap` †", "`new`"]
    assert rows[0].split("|")[2].strip() == "1,2"  # seed 3 of the studies is not read
    assert rows[0].split("|")[3].strip() == "0.5150"  # mean of seeds 1, 2: 0.51, 0.52
    assert "0.6000 (+0.0850, 2/2)" in rows[2]  # new AUPRC against the reused base
    assert "9876" not in out  # the studies' test metrics never reach the table
    assert f"- `base`: `{arms}`, arm `base` (machine not recorded" in out
    assert f"- `ap`: `{ranking}`, arm `ap` (machine not recorded" in out


def test_reuse_compares_the_numerics_where_both_sides_record_them(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = _search(tmp_path / "s", numerics=_HERE)
    same = _summary(tmp_path / "same.json", None, numerics=_HERE)
    argv = [str(tmp_path / "s"), "--settings", str(settings), "--reuse", f"{same}:base=base"]
    assert search_table.main(argv) == 0
    out = capsys.readouterr().out
    assert f"- `base`: `{same}`, arm `base`\n" in out  # checked: no caveat
    older = {k: v for k, v in _HERE.items() if k not in ("cpu", "cpu_flags")}
    old = _summary(tmp_path / "old.json", None, numerics=older)  # no processor recorded yet
    assert search_table.main([*argv[:-1], f"{old}:base=base"]) == 0
    assert f"- `base`: `{old}`, arm `base` (machine not recorded" in capsys.readouterr().out
    slow = _summary(tmp_path / "slow.json", None, numerics=older | {"threads": 1})
    with pytest.raises(SystemExit):
        search_table.main([*argv[:-1], f"{slow}:base=base"])
    assert "another machine or code path" in capsys.readouterr().err
    other = _summary(tmp_path / "other.json", None, numerics=_HERE | {"cpu_flags": "ffffffffffff"})
    with pytest.raises(SystemExit):
        search_table.main([*argv[:-1], f"{other}:base=base"])
    err = capsys.readouterr().err
    assert str(other) in err and "another machine or code path" in err


@pytest.mark.parametrize(
    ("reuse", "config", "message"),
    [
        ("arms:base=base", {"epochs": 16}, "trained with epochs=16, the search's runs with epochs=10"),
        ("ranking:ap=base", {}, "arm 'ap' ran with other arguments than setting 'base'"),
        ("ranking:ap=new", {}, "setting 'new' also ran here"),
        ("ranking:ap=gone", {}, "no setting 'gone' in --settings"),
        ("ranking:x=ap", {}, "no settings line for arm 'x'"),
        ("short:base=base", {}, "arm 'base' has no run with seed 2"),
        ("rpcl_args:rpcl=ap", {}, "ran with study-wide RPCL options"),
        ("missing:base=base", {}, "not a study summary.json"),
    ],
)
def test_reuse_errors_name_the_summary_and_what_differs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], reuse: str, config: dict[str, object],
    message: str,
) -> None:  # fmt: skip
    settings = _search(tmp_path / "s")
    paths = {
        "arms": _summary(tmp_path / "arms.json", None, **config),
        "ranking": _summary(tmp_path / "ranking.json", {"ap": "--arm rpcl"}),
        "short": _summary(tmp_path / "short.json", None, seeds=(1,)),
        "rpcl_args": _summary(tmp_path / "rpcl.json", {"rpcl": ""}, rpcl_args={"margin": 1.0}),
        "missing": tmp_path / "missing.json",
    }
    name, _, arms = reuse.partition(":")
    if name == "rpcl_args":  # an --arms study (no settings) whose rpcl arm had study-wide options
        data = json.loads(paths[name].read_text())
        del data["settings"]
        paths[name].write_text(json.dumps(data))
    with pytest.raises(SystemExit) as exit_info:
        search_table.main([str(tmp_path / "s"), "--settings", str(settings),
                           "--reuse", f"{paths[name]}:{arms}"])  # fmt: skip
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and message in err and str(paths[name]) in err


@pytest.mark.parametrize("text", ["x.json", "x.json:", ":a=b", "x.json:a=", "x.json:a=b,a=c",
                                  "x.json:a=b,c=b", "x.json:a"])  # fmt: skip
def test_malformed_reuse_is_an_error(text: str) -> None:
    with pytest.raises(ValueError, match=r"expected SUMMARY\.json:ARM=SETTING"):
        search_table.parse_reuse(text)
    assert search_table.parse_reuse("dir/s.json:a=b, c = d") == search_table.Reuse(
        Path("dir/s.json"), {"a": "b", "c": "d"}
    )


def test_reuse_needs_settings_and_settings_must_hold_every_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _search(tmp_path / "s")
    summary = _summary(tmp_path / "arms.json", None)
    with pytest.raises(SystemExit):
        search_table.main([str(tmp_path / "s"), "--reuse", f"{summary}:base=base"])
    assert "--reuse needs --settings" in capsys.readouterr().err
    (tmp_path / "other.txt").write_text("base | --arm base\n")
    with pytest.raises(SystemExit):
        search_table.main([str(tmp_path / "s"), "--settings", str(tmp_path / "other.txt")])
    assert "setting 'new' is not in" in capsys.readouterr().err
