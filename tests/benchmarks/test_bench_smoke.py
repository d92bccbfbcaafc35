"""Smoke tests of the benchmark scripts: one tiny size each, a few seconds in all.

They keep ``benchmarks/`` from rotting: the core functions run, the result rows keep their schema,
the CLI writes its files, and the loop baseline still computes the library's quantities.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

import torch_pairconf as tp
from benchmarks import bench_losses as bl
from benchmarks import bench_step as bs
from benchmarks import loop_reference as lr
from benchmarks import probe_margin_k1 as pm
from benchmarks._common import header
from tests.examples.helpers import make_tiny_bert

TINY = bl.Config(min_run_time=0.001, rounds=1, loop_min_run_time=0.001, loop_max_rows=8)


def _check_row(row: dict, keys: tuple[str, ...]) -> None:
    missing = set(keys) - set(row)
    assert not missing, f"row lacks {missing}"
    json.dumps(row)  # serialisable


@pytest.fixture(scope="module")
def loss_rows() -> list[dict]:
    # B * N = 16 > loop_max_rows = 8: the extrapolated-loop path runs too.
    return bl.bench_size(2, 8, torch.float32, torch.device("cpu"), cfg=TINY)


def test_bench_losses_rows(loss_rows: list[dict]) -> None:
    assert {(r["op"], r["mode"]) for r in loss_rows} == {(o, m) for o in bl.OPS for m in bl.MODES}
    for r in loss_rows:
        _check_row(r, bl.ROW_KEYS)
        assert (r["B"], r["N"], r["M"], r["dtype"], r["device"]) == (2, 8, 8, "float32", "cpu")
        for key in (
            "ours_s",
            "loop_s",
            "floor_s",
            "ours_over_loop",
            "ours_over_floor",
            "extra_mem_x",
        ):
            assert isinstance(r[key], float) and math.isfinite(r[key]) and r[key] > 0, key
        assert r["loop_extrapolated"] is True
        assert r["loop_rows_timed"] < r["loop_rows_total"] == 16
    targets = bl.evaluate_targets(loss_rows)
    assert all({"target", "value", "pass"} <= set(t) for t in targets)


def test_bench_losses_outputs(loss_rows: list[dict], tmp_path) -> None:
    payload = header("losses", torch.device("cpu"), 1, {"mode": "test"})
    payload["targets"] = bl.evaluate_targets(loss_rows)
    payload["rows"] = loss_rows
    md = bl.to_markdown(payload)
    assert "| B | N | op |" in md
    pytest.importorskip("matplotlib")
    rows32 = [dict(r, B=32) for r in loss_rows]
    assert bl.plot(rows32, tmp_path / "losses.png")
    assert (tmp_path / "losses.png").stat().st_size > 0


def test_bench_losses_cli(tmp_path) -> None:
    payload = bl.main(
        [
            "--sizes", "1x8", "--ops", "miner", "margin_k1", "--out", str(tmp_path),
            "--min-run-time", "0.001", "--loop-min-run-time", "0.001", "--rounds", "1",
        ]
    )  # fmt: skip
    data = json.loads((tmp_path / "losses.json").read_text())
    for key in ("torch", "machine", "timestamp", "command", "settings", "targets", "rows"):
        assert key in data
    assert {"platform", "cpu_count", "processor"} <= set(data["machine"])
    assert len(data["rows"]) == len(payload["rows"]) == 4
    for r in data["rows"]:
        _check_row(r, bl.ROW_KEYS)
    assert (tmp_path / "losses.md").exists()


def test_probe_margin_k1_cli(tmp_path) -> None:
    # The probe checks on every size that its bare kernels return the library's value.
    payload = pm.main(
        ["--sizes", "1x8,2x5", "--min-run-time", "0.001", "--rounds", "1", "--out", str(tmp_path)]
    )
    data = json.loads((tmp_path / "margin_k1_probe.json").read_text())
    assert [(r["B"], r["N"]) for r in data["rows"]] == [(1, 8), (2, 5)] == [
        (r["B"], r["N"]) for r in payload["rows"]
    ]
    for r in data["rows"]:
        assert len(r["ops_s"]) == 15  # the kernels of margin._hinge_k1's no-grad path + the mean
        assert all(math.isfinite(t) and t > 0 for t in r["ops_s"].values())
        assert r["op_sum_s"] == pytest.approx(sum(r["ops_s"].values()))
        for key in ("floor_s", "kernels_s", "function_s", "module_s", "kernels_over_floor"):
            assert math.isfinite(r[key]) and r[key] > 0, key
    assert "Each kernel alone" in (tmp_path / "margin_k1_probe.md").read_text()


def test_probe_margin_k1_notices_a_library_change(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(pm, "pair_margin_loss", lambda *a, **k: torch.tensor(-1.0))
    with pytest.raises(AssertionError, match="no longer mirror"):
        pm.probe_size(1, 8, 0.001, 1, 1)


@pytest.mark.parametrize(
    ("use_real", "upstream"),
    [(True, "mecpe"), (True, "word_cnn"), (False, "mecpe")],
    ids=["reference-model", "word-cnn", "stand-in"],
)
def test_bench_step_rows(use_real: bool, upstream: str) -> None:
    if use_real and not bs.HAVE_REAL_MODEL:
        pytest.skip("examples.mecpe.model not importable")
    cfg = bs.Config(min_run_time=0.001, rounds=1, memory=True)
    rows = bs.bench_profile(
        "tiny", [[3, 5, 2]], torch.device("cpu"), torch.float32, cfg, use_real=use_real,
        upstream=upstream,
    )  # fmt: skip
    assert [r["op"] for r in rows] == list(bs.ARMS)
    for r in rows:
        _check_row(r, bs.ROW_KEYS)
        assert (r["B"], r["N"], r["mode"]) == (3, 5, "step")
        assert r["median_s"] > 0 and r["ratio_vs_base"] > 0 and r["mem_vs_base"] > 0
    payload = header("step", torch.device("cpu"), 1, {"model": "test"})
    payload["targets"] = bs.evaluate_targets(rows)
    payload["rows"] = rows
    assert "| profile |" in bs.to_markdown(payload)


@pytest.fixture(scope="module")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory):
    """A tiny random BERT folder: the smoke tests never load the real MiniLM weights."""
    return make_tiny_bert(tmp_path_factory.mktemp("bert"), layers=3)


def test_bench_step_transformer_profile_rows(tiny_bert) -> None:
    if not bs.HAVE_REAL_MODEL:
        pytest.skip("examples.mecpe.model not importable")
    cfg = bs.Config(min_run_time=0.001, rounds=1, memory=True)
    rows = bs.bench_profile(
        "tiny", [[3, 5, 2]], torch.device("cpu"), torch.float32, cfg, upstream="transformer",
        encoder_model=str(tiny_bert),
    )  # fmt: skip
    assert [r["op"] for r in rows] == list(bs.ARMS)
    for r in rows:
        _check_row(r, bs.ROW_KEYS)
        assert r["median_s"] > 0 and r["ratio_vs_base"] > 0 and r["mem_vs_base"] > 0
    model, _, name = bs.build_model(0, upstream="transformer", encoder_model=str(tiny_bert))
    assert "top 2 of 3 layers trained" in name
    assert len(model.utterance.transformer.layers) == bs.TRAINED_LAYERS


def test_bench_step_quick_cli_on_the_tiny_model(tiny_bert, tmp_path) -> None:
    payload = bs.main(
        ["--quick", "--profiles", "minilm_mix", "--encoder-model", str(tiny_bert), "--arms",
         "base", "rpcl", "rpcl_output", "--min-run-time", "0.001", "--rounds", "1",
         "--no-memory", "--out", str(tmp_path)]
    )  # fmt: skip
    data = json.loads((tmp_path / "step.json").read_text())
    assert {r["profile"] for r in data["rows"]} == {"minilm_mix"} == {
        r["profile"] for r in payload["rows"]
    }
    assert data["settings"]["encoder_model"] == str(tiny_bert)
    (target,) = [t for t in data["targets"] if "minilm_mix" in t["target"]]
    assert target["threshold"] == 1.15 and target["value"] > 0
    assert "minilm_mix" in (tmp_path / "step.md").read_text()


# ----------------------------------------------------------------------------- loop baseline


def _inputs(seed: int = 0) -> tuple[torch.Tensor, ...]:
    inp = bl.make_inputs(4, 9, torch.float64, torch.device("cpu"), seed)
    return inp.scores, inp.corrupted, inp.gold, inp.valid


def test_loop_reference_matches_library() -> None:
    scores, corrupted, gold, valid = _inputs()
    assert gold.any() and (~valid).any()  # gold pairs and padding are exercised
    for k in (1, 4):
        ours = tp.mine_hard_negatives(scores, gold, valid, k=k)
        values, indices, mask = lr.loop_mine_hard_negatives(scores, gold, valid, k)
        assert torch.equal(mask, ours.mask)
        assert torch.equal(indices[mask], ours.indices[mask])
        torch.testing.assert_close(values, ours.values)
        for space in ("prob", "logit"):
            kw = {"margin": 0.3, "k": k, "space": space, "temperature": 0.7}
            torch.testing.assert_close(
                lr.loop_pair_margin_loss(scores, gold, valid, **kw),
                tp.pair_margin_loss(scores, gold, valid, **kw),
            )
    torch.testing.assert_close(
        lr.loop_consistency_loss(scores, corrupted, valid),
        tp.consistency_loss(scores, corrupted, valid),
    )
    for scope in ("row", "batch"):
        torch.testing.assert_close(
            lr.loop_pair_ap_loss(scores, gold, valid, scope=scope, temperature=0.7),
            tp.pair_ap_loss(scores, gold, valid, scope=scope, temperature=0.7),
        )
        for surrogate in ("squared_hinge", "hinge"):
            torch.testing.assert_close(
                lr.loop_pair_auc_loss(scores, gold, valid, scope=scope, margin=1.5, surrogate=surrogate),
                tp.pair_auc_loss(scores, gold, valid, scope=scope, margin=1.5, surrogate=surrogate),
            )
    torch.testing.assert_close(
        lr.loop_pair_listwise_loss(scores, gold, valid, temperature=2.0, margin=0.5),
        tp.pair_listwise_loss(scores, gold, valid, k=None, temperature=2.0, margin=0.5),
    )
    for anchor in ("hardest", "mean"):
        torch.testing.assert_close(
            lr.loop_pair_relative_margin_loss(scores, gold, valid, margin=1.0, anchor=anchor),
            tp.pair_relative_margin_loss(scores, gold, valid, margin=1.0, anchor=anchor),
        )


def test_loop_reference_gradients_and_rows() -> None:
    scores, _, gold, valid = _inputs(1)
    a = scores.clone().requires_grad_()
    b = scores.clone().requires_grad_()
    lr.loop_pair_margin_loss(a, gold, valid, k=2).backward()
    tp.pair_margin_loss(b, gold, valid, k=2).backward()
    torch.testing.assert_close(a.grad, b.grad)
    for op in bl.RANKING_OPS:  # the benchmark's pairs of library module and loop baseline
        crit, loop_fn = bl._ranking_pair(op)
        a = scores.clone().requires_grad_()
        b = scores.clone().requires_grad_()
        loop_fn(a, gold, valid, None).backward()
        crit(b, gold, valid).backward()
        torch.testing.assert_close(a.grad, b.grad, msg=op)
    rows = lr.all_rows(4, 9)[::4]
    assert lr.loop_mine_hard_negatives(scores, gold, valid, 2, rows=rows)[0].shape == (len(rows), 2)
