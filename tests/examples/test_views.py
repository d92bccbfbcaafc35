"""Tests of the input-level corrupted views of training batches (``examples.mecpe.views``)."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path
from typing import Any

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from examples.mecpe import study as mecpe_study
from examples.mecpe.batching import Batch, Example, build_examples, collate
from examples.mecpe.config import TrainConfig
from examples.mecpe.data import Conversation
from examples.mecpe.engine import build_state, train_step
from examples.mecpe.model import ModelConfig, ModelOutput
from examples.mecpe.views import INPUT_VIEWS, InputView, view_operations

from .helpers import strip_time, study_plan, train

SPEAKERS = ("Ross", "Rachel", "Monica", "Joey")


def make_pool(n_convs: int, seed: int, max_n: int = 9) -> list[Example]:
    """Examples with hashed n-grams and a text row per utterance whose first entry is the
    utterance's global id (so that every row names its source), plus audio rows."""
    rng = random.Random(seed)
    convs = []
    for k in range(n_convs):
        n = rng.randint(1, max_n)
        n_pairs = rng.choice([0, 1, 2, 3])
        pairs = sorted({(rng.randint(1, n), rng.randint(1, n)) for _ in range(n_pairs)})
        convs.append(
            Conversation(
                conv_id=f"c{k}",
                speakers=tuple(rng.choice(SPEAKERS) for _ in range(n)),
                texts=tuple(f"conv {k} utt {i}" for i in range(n)),
                emotions=tuple(rng.randrange(7) for _ in range(n)),
                pairs=tuple(pairs),
                feature_keys=tuple(f"k{k}_{i}" for i in range(n)),
            )
        )
    ids = iter(range(10**6))
    text = [torch.tensor([[float(next(ids)), 1.0, -1.0] for _ in c.texts]).numpy() for c in convs]
    audio = [torch.randn(len(c), 2).numpy() for c in convs]
    return build_examples(convs, text=text, hash_buckets=97, audio=audio)


def row_owner(pool: list[Example]) -> dict[float, tuple[int, int]]:
    """Text row id -> (pool index, row)."""
    return {float(ex.text[i, 0]): (k, i) for k, ex in enumerate(pool) if ex.text is not None
            for i in range(ex.length)}  # fmt: skip


views = st.sampled_from(INPUT_VIEWS)
rates = st.sampled_from([0.0, 0.3, 1.0]) | st.floats(0.0, 1.0)


def test_view_operations() -> None:
    assert view_operations("insert+delete") == (True, True)
    assert view_operations("delete") == (True, False)
    with pytest.raises(ValueError, match=r"view must be one of insert, delete, insert\+delete"):
        view_operations("repr")
    with pytest.raises(ValueError, match=r"view rate must be a number in \[0, 1\]"):
        InputView("insert", 1.5, torch.Generator())
    with pytest.raises(TypeError, match=r"CPU torch\.Generator"):
        InputView("insert", 0.5, None)  # type: ignore[arg-type]


@given(kind=views, rate=rates, seed=st.integers(0, 2**31), data_seed=st.integers(0, 999))
def test_views_keep_every_gold_pair_and_every_row_comes_from_its_source(
    kind: str, rate: float, seed: int, data_seed: int
) -> None:
    pool = make_pool(6, data_seed)
    owner = row_owner(pool)
    indices = list(range(len(pool)))[::-1]
    delete, insert = view_operations(kind)
    view = InputView(kind, rate, torch.Generator().manual_seed(seed))
    out, origins = view.perturb(pool, indices)
    assert len(out) == len(origins) == len(indices)
    for k, ex, origin in zip(indices, out, origins, strict=True):
        clean = pool[k]
        gold = {u for pair in clean.pairs for u in pair}
        assert ex.conv_id == clean.conv_id and ex.length == len(origin) >= 1
        kept = [o for o in origin if o is not None]
        assert kept == sorted(kept)  # originals keep their order
        assert gold <= set(kept)  # gold utterances are never removed
        if not delete:
            assert kept == list(range(1, clean.length + 1))
        if not insert:
            assert None not in origin
        # gold pairs remapped: mapping the view's pairs back gives the clean pairs
        back = sorted((origin[e - 1], origin[c - 1]) for e, c in ex.pairs)
        assert back == sorted(clean.pairs)
        assert ex.text is not None and ex.audio is not None and ex.tokens is not None
        assert clean.text is not None and clean.audio is not None and clean.tokens is not None
        new_speaker = int(clean.speakers.max()) + 1
        for j, o in enumerate(origin):
            src_k, src_row = owner[float(ex.text[j, 0])]
            src = pool[src_k]
            assert src.text is not None and src.audio is not None and src.tokens is not None
            assert torch.equal(ex.text[j], src.text[src_row])
            assert torch.equal(ex.audio[j], src.audio[src_row])
            assert ex.tokens[j] == src.tokens[src_row]
            if o is None:  # a distractor: another conversation's row, no label, a new speaker
                assert src_k != k
                assert (int(ex.emotions[j]), float(ex.causes[j])) == (-1, 0.0)
                assert int(ex.speakers[j]) == new_speaker
            else:
                assert (src_k, src_row) == (k, o - 1)
                assert int(ex.speakers[j]) == int(clean.speakers[o - 1])
                assert int(ex.emotions[j]) == int(clean.emotions[o - 1])
                assert float(ex.causes[j]) == float(clean.causes[o - 1])
        if rate == 0:
            assert ex is clean and origin == tuple(range(1, clean.length + 1))


@given(kind=views, seed=st.integers(0, 2**31), data_seed=st.integers(0, 999))
def test_draws_are_deterministic_fixed_in_number_and_nested_in_the_rate(
    kind: str, seed: int, data_seed: int
) -> None:
    pool = make_pool(5, data_seed)
    idx = [3, 0, 4]
    results, states = [], []
    for rate in (0.2, 0.6, 0.6):
        g = torch.Generator().manual_seed(seed)
        results.append(InputView(kind, rate, g).perturb(pool, idx))
        states.append(g.get_state())
    assert results[1][1] == results[2][1]  # same seed, same views
    for a, b in zip(results[1][0], results[2][0], strict=True):
        assert a.text is not None and b.text is not None and torch.equal(a.text, b.text)
    assert all(torch.equal(s, states[0]) for s in states)  # the stream never depends on the draws
    for low, high in zip(results[0][1], results[1][1], strict=True):
        kept_low = {o for o in low if o is not None}
        kept_high = {o for o in high if o is not None}
        assert kept_high <= kept_low  # a higher rate deletes a superset
        assert sum(o is None for o in low) <= sum(o is None for o in high) or "delete" in kind


def test_insert_needs_another_conversation() -> None:
    pool = make_pool(1, 0)
    with pytest.raises(ValueError, match=r"--view insert needs a second training conversation"):
        InputView("insert", 0.5, torch.Generator()).perturb(pool, [0])
    assert InputView("delete", 0.5, torch.Generator()).perturb(pool, [0])[0][0].length >= 1


def test_delete_never_empties_a_conversation_without_gold() -> None:
    pool = [ex for ex in make_pool(40, 3) if not ex.pairs]
    view = InputView("delete", 1.0, torch.Generator().manual_seed(1))
    out, _ = view.perturb(pool, range(len(pool)))
    assert all(ex.length == 1 for ex in out)


class ContextFree(nn.Module):
    """A 'model' whose pair logit depends on the two utterances' text rows only."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.5))

    def forward(self, batch: Batch) -> ModelOutput:
        assert batch.text is not None
        t = batch.text[..., 0]
        logits = self.w * torch.sin(t[:, :, None] * 0.37 + t[:, None, :] * 1.3)
        zeros = torch.zeros(*t.shape, 7)
        return ModelOutput(logits, zeros, torch.zeros_like(t))


@pytest.mark.parametrize("kind", INPUT_VIEWS)
@pytest.mark.parametrize("window", [None, 2])
def test_view_batch_shapes_and_alignment_to_the_clean_index_space(
    kind: str, window: int | None
) -> None:
    pool = make_pool(8, 11)
    idx = [5, 1, 2, 7]
    view = InputView(kind, 0.5, torch.Generator().manual_seed(3))
    vb = view.batch(pool, idx, window=window, cause_not_after_emotion=False)
    clean = collate([pool[i] for i in idx], window=window)
    b, n = clean.mask.shape
    assert vb.origin.shape == vb.batch.mask.shape and vb.origin.dtype == torch.long
    assert vb.batch.size == b and vb.batch.conv_ids == clean.conv_ids
    model = ContextFree()
    aligned = vb.aligned_logits(model, clean)
    assert aligned.scores.shape == aligned.shared.shape == (b, n, n)
    assert bool((aligned.shared <= clean.valid).all())
    if kind == "insert" and window is None:
        assert torch.equal(aligned.shared, clean.valid)  # nothing removed: every pair is shared
    # a context-free scorer agrees exactly on the shared pairs; the gradient reaches the model
    expected = model(clean).pair_logits
    on_shared = torch.where(aligned.shared, aligned.scores, 0)
    assert torch.equal(on_shared, torch.where(aligned.shared, expected, 0))
    (aligned.scores * aligned.shared).sum().backward()
    assert model.w.grad is not None and float(model.w.grad) != 0.0


def _state(kind: str, *rpcl_args: tuple[str, Any]) -> tuple[Any, TrainConfig, list[Example]]:
    pool = make_pool(10, 5)
    cfg = TrainConfig(arm="rpcl", view=kind, rpcl_args=dict(rpcl_args), seed=3)
    mcfg = ModelConfig(
        text_dim=3, audio_dim=2, utt_dim=8, hidden=8, pair_hidden=8, modality_dim=8, pair_rank=4
    )
    return build_state(cfg, mcfg, len(pool), torch.device("cpu")), cfg, pool


def test_train_step_with_an_input_view_has_a_finite_consistency_term() -> None:
    state, cfg, pool = _state("insert+delete", ("margin_weight", 0.0))
    assert state.view is not None and state.rpcl is not None and "view" in state.gens
    assert state.rpcl._recording is None  # no hooks: the view replaces RPCLoss's own second pass
    idx = [0, 4, 7]
    batch = collate([pool[i] for i in idx])
    view = state.view.batch(pool, idx, window=None, cause_not_after_emotion=False)
    parts = train_step(state, [batch], cfg, torch.device("cpu"), views=[view])
    assert all(math.isfinite(v) for v in parts.values())
    assert parts["rpcl_consistency"] > 0 and "rpcl_margin" not in parts


def test_no_view_is_built_without_a_consistency_term() -> None:
    state, _, _ = _state("insert", ("consistency_weight", 0.0))
    assert state.view is None and "view" in state.gens  # the RNG layout does not change


def test_training_with_an_input_view_is_finite_and_resumes_exactly(
    tiny: Path, tmp_path: Path
) -> None:
    args = ["--arm", "rpcl", "--view", "insert+delete", "--view-rate", "0.4",
            "--rpcl-arg", "margin_weight=0.3", "--rpcl-arg", "divergence=js",
            "--rpcl-arg", "warmup_steps=3"]  # fmt: skip
    full = train(tiny, tmp_path / "full", "--epochs", "2", *args)
    assert full["config"]["view"] == "insert+delete" and full["config"]["view_rate"] == 0.4
    assert all(h["rpcl_consistency"] > 0 and math.isfinite(h["loss"]) for h in full["history"])
    assert all(math.isfinite(v) for v in full["test"].values())
    part = tmp_path / "part"
    train(tiny, part, "--epochs", "1", *args)
    resumed = train(tiny, part, "--epochs", "2", "--resume", *args)
    assert strip_time(resumed) == strip_time(full)
    assert json.loads((part / "run.json").read_text())["config"]["view"] == "insert+delete"


def test_study_level_view_applies_to_the_rpcl_arms_only(tmp_path: Path) -> None:
    argv = ["--out", str(tmp_path), "--view", "delete", "--view-rate", "0.2"]
    views = {(c.arm, c.view, c.view_rate) for c in study_plan(*argv)}
    assert views == {("base", "repr", None), ("rpcl", "delete", 0.2)}


def test_a_study_with_an_input_view_says_so(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "study"
    argv = ["--data-dir", str(tiny), "--seeds", "1", "--epochs", "1", "--text-encoder", "hash",
            "--hash-buckets", "1024", "--out", str(out), "--quiet", "--device", "cpu",
            "--no-plots", "--view", "delete", "--view-rate", "0.2"]  # fmt: skip
    assert mecpe_study.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["rpcl_view"] == [{"view": "delete", "view_rate": 0.2}]
    assert "; corrupted view: delete (rate 0.2)" in (out / "summary.md").read_text()
    assert json.loads((out / "base-seed1" / "run.json").read_text())["config"]["view"] == "repr"
