from __future__ import annotations

import gc
import re
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import torch_pairconf as tp
from torch_pairconf import Replay, RPCLoss, consistency_loss, corrupt_submodule, pair_margin_loss

README = Path(__file__).resolve().parents[2] / "README.md"


class PairModel(nn.Module):
    """A tiny MECPE-style model: utterance encoder -> context encoder -> bilinear pair scorer."""

    def __init__(self, d: int = 6, h: int = 8, lstm: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(d, h)
        self.encoder: nn.Module = nn.LSTM(h, h // 2, batch_first=True, bidirectional=True) if lstm else nn.Linear(h, h)
        self.bilinear = nn.Parameter(torch.randn(h, h) * 0.1)
        self.seen_h: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.encoder(torch.relu(self.proj(x)))
        h = out[0] if isinstance(out, tuple) else out
        self.seen_h.append(h)  # what the pair scorer received (after any corruption hook)
        return h @ self.bilinear @ h.transpose(-1, -2)  # (B, N, N) pair logits


class InputSpy(nn.Module):
    """Wraps an encoder and records the input its forward receives (after any corruption)."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> Any:
        self.inputs.append(x)
        return self.inner(x)


def _batch(b: int = 3, n: int = 5, d: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, n + 1, (b,), generator=g)
    real = torch.arange(n) < lengths.unsqueeze(-1)
    valid = real.unsqueeze(-1) & real.unsqueeze(-2)
    gold = (torch.rand(b, n, n, generator=g) < 0.15) & valid
    return {"x": torch.randn(b, n, d, generator=g), "gold": gold, "valid": valid}


def _readme_snippet() -> str:
    text = README.read_text(encoding="utf-8")
    match = re.search(r"<!-- integration:start -->\s*```python\n(.*?)```\s*<!-- integration:end -->", text, re.S)
    assert match, "README.md must hold the two-line integration between integration markers"
    return match.group(1)


def test_readme_two_line_integration_runs_as_written() -> None:
    snippet = _readme_snippet()
    added = [line for line in snippet.splitlines() if "# + RPCL" in line]
    assert len(added) == 2, "the README integration must add exactly two marked lines"
    torch.manual_seed(0)
    model = PairModel()
    namespace: dict[str, Any] = {
        "model": model,
        "loader": [_batch(seed=s) for s in range(4)],
        "optimizer": torch.optim.SGD(model.parameters(), lr=0.1),
        "F": F,
        "torch": torch,
    }
    before = {k: v.clone() for k, v in model.state_dict().items()}
    exec(compile(snippet, str(README), "exec"), namespace)
    assert torch.isfinite(namespace["loss"])
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())
    # the loss keeps recording hooks (nothing in them between steps), and they go with the loss
    assert [type(h).__name__ for h in model.encoder._forward_hooks.values()] == ["_OutputHook"]
    assert not model.encoder._forward_pre_hooks
    assert model.proj._forward_hooks and model.proj._forward_pre_hooks  # upstream of the encoder
    assert namespace["rpcl"].last_replayed is Replay.UPSTREAM
    assert namespace["rpcl"]._recording.target_output is None and not namespace["rpcl"]._recording.calls
    del namespace["rpcl"]
    gc.collect()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())
    # without the two lines the snippet is a plain trainer and still runs
    plain = "\n".join(line for line in snippet.splitlines() if "# + RPCL" not in line)
    namespace["model"] = PairModel()
    namespace["optimizer"] = torch.optim.SGD(namespace["model"].parameters(), lr=0.1)
    exec(compile(plain, "plain", "exec"), namespace)


def test_terms_equal_the_library_functions() -> None:
    batch = _batch()
    model = PairModel()
    scores = model(batch["x"])
    corrupted = scores + 0.3 * torch.randn_like(scores)
    rpcl = RPCLoss(margin_weight=0.7, consistency_weight=2.0, margin=0.1, k=2, divergence="js")
    total = rpcl(scores, batch["gold"], batch["valid"], corrupted_scores=corrupted)
    m = pair_margin_loss(scores, batch["gold"], batch["valid"], margin=0.1, k=2, detach_negatives=True)
    c = consistency_loss(scores, corrupted, batch["valid"], divergence="js")
    torch.testing.assert_close(total, 0.7 * m + 2.0 * c)
    torch.testing.assert_close(rpcl.last["margin"], m.detach())
    torch.testing.assert_close(rpcl.last["consistency"], c.detach())


def test_margin_only_needs_no_second_pass() -> None:
    batch = _batch()
    model = PairModel()
    scores = model(batch["x"])
    calls = []
    rpcl = RPCLoss(model.encoder, margin_weight=1.0, consistency_weight=0.0)
    out = rpcl(scores, batch["gold"], batch["valid"], rerun=lambda: calls.append(1))
    assert not calls
    torch.testing.assert_close(out, pair_margin_loss(scores, batch["gold"], batch["valid"], detach_negatives=True))


@pytest.mark.parametrize("where", ["input", "output"])
@pytest.mark.parametrize("lstm", [False, True])
@pytest.mark.parametrize("reuse", [True, False])
def test_rerun_corrupts_only_non_gold_context(where: str, lstm: bool, reuse: bool) -> None:
    torch.manual_seed(0)
    batch = _batch(b=4, n=6)
    model = PairModel(lstm=lstm)  # training mode: the clean forward is recorded (no dropout here)
    model.encoder = InputSpy(model.encoder)  # records what the encoder's own forward receives
    seen = model.encoder.inputs
    rpcl = RPCLoss(model.encoder, where=where, margin_weight=0.0, consistency_weight=1.0, p=1.0,
                   reuse_output=reuse, generator=torch.Generator().manual_seed(0))
    clean = model(batch["x"])
    loss = rpcl(clean, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
    rpcl.remove_hooks()
    assert bool(rpcl.last_replayed) == (where == "output" and reuse)
    assert rpcl.last_replayed in ((Replay.OUTPUT,) if where == "output" and reuse else (Replay.NONE,))
    assert loss > 0 and loss.requires_grad
    a, b = (seen[0], seen[1]) if where == "input" else (model.seen_h[0], model.seen_h[1])
    real = batch["valid"].any(-1)
    protect = batch["gold"].any(-1) | batch["gold"].any(-2)
    if where == "input":
        # p = 1: every unprotected real utterance is zeroed, everything else is intact
        hit = real & ~protect
        assert b[hit].eq(0).all()
        torch.testing.assert_close(b[~hit], a[~hit])
    else:
        hit = real & ~protect
        assert b[hit].eq(0).all() and torch.equal(b[~hit], a[~hit])
    assert not model.encoder._forward_pre_hooks and not model.encoder._forward_hooks
    assert "forward" not in vars(model.encoder)


def test_corrupt_submodule_restores_the_forward_when_the_block_raises() -> None:
    model = PairModel()
    x = _batch()["x"]
    with pytest.raises(RuntimeError, match="boom"), corrupt_submodule(model.encoder, lambda t: t * 0, "output"):
        assert model(x).eq(0).all()  # inside the block the encoder's output is mapped
        raise RuntimeError("boom")
    assert "forward" not in vars(model.encoder)
    assert not model(x).eq(0).all()


def test_probabilities_are_accepted() -> None:
    batch = _batch()
    logits = PairModel()(batch["x"])
    probs = torch.sigmoid(logits)
    a = RPCLoss(margin_weight=1.0, consistency_weight=0.0)(logits, batch["gold"], batch["valid"])
    b = RPCLoss(margin_weight=1.0, consistency_weight=0.0, scores_are="probs")(probs, batch["gold"], batch["valid"])
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_warmup_ramps_weights() -> None:
    batch = _batch()
    scores = PairModel()(batch["x"]).detach()
    rpcl = RPCLoss(margin_weight=1.0, consistency_weight=0.0, warmup_steps=4)
    full = pair_margin_loss(scores, batch["gold"], batch["valid"], detach_negatives=True)
    got = [float(rpcl(scores, batch["gold"], batch["valid"])) for _ in range(6)]
    expected = [float(full) * w for w in (0.25, 0.5, 0.75, 1.0, 1.0, 1.0)]
    assert got == pytest.approx(expected)
    assert int(rpcl.state_dict()["step"]) == 6
    rpcl.eval()
    rpcl(scores, batch["gold"], batch["valid"])
    assert int(rpcl.step) == 6  # evaluation calls do not advance the schedule


def test_errors() -> None:
    batch = _batch()
    model = PairModel()
    scores = model(batch["x"])
    with pytest.raises(ValueError, match="rerun=lambda"):
        RPCLoss(consistency_weight=1.0)(scores, batch["gold"], batch["valid"])
    with pytest.raises(ValueError, match="names no submodule"):
        RPCLoss(consistency_weight=1.0)(scores, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
    with pytest.raises(ValueError, match="must be \\(B, N, D\\)"):
        RPCLoss(model.proj, consistency_weight=1.0)(
            scores, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"][:, :3])
        )
    assert not model.proj._forward_pre_hooks
    with pytest.raises(ValueError, match="where must be one of"):
        RPCLoss(where="middle")
    with pytest.raises(ValueError, match="margin_weight must be a finite number >= 0"):
        RPCLoss(margin_weight=-1.0)
    with pytest.raises(ValueError, match="scores_are must be one of"):
        RPCLoss(scores_are="odds")
    with pytest.raises(TypeError, match=r"not the \(B, N, M\) pair-logit tensor.*scores_fn"):
        RPCLoss(model.encoder, consistency_weight=1.0)(
            scores, batch["gold"], batch["valid"], rerun=lambda: {"scores": model(batch["x"])}
        )
    with pytest.raises(ValueError, match="never called the corrupted submodule Linear"):
        RPCLoss(model.encoder, consistency_weight=1.0)(
            scores, batch["gold"], batch["valid"], rerun=lambda: scores
        )


def test_loss_module_does_not_own_the_model() -> None:
    model = PairModel()
    rpcl = RPCLoss(model.encoder)
    assert not any(n.startswith("_corrupt") for n, _ in rpcl.named_parameters())
    assert set(rpcl.state_dict()) == {"step", "corruption._extra_state"}
    assert rpcl.state_dict()["corruption._extra_state"] == {}  # no per-rank generator outside DDP


class CountingLSTM(nn.Module):
    """A BiLSTM context encoder that counts how often its own forward really runs."""

    def __init__(self, h: int = 8) -> None:
        super().__init__()
        self.lstm = nn.LSTM(h, h // 2, batch_first=True, bidirectional=True)
        self.runs = 0

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, Any]:
        self.runs += 1
        out: tuple[torch.Tensor, Any] = self.lstm(x)
        return out


def _step(reuse: bool, seed: int = 0, twice: bool = False) -> tuple[RPCLoss, PairModel, torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(seed)
    model = PairModel()
    model.encoder = CountingLSTM()
    batch = _batch(b=4, n=6, seed=seed)
    rpcl = RPCLoss(model.encoder, margin_weight=0.0, consistency_weight=1.0, p=0.5, reuse_output=reuse,
                   generator=torch.Generator().manual_seed(1))

    def forward() -> torch.Tensor:
        out = model(batch["x"])
        return out + 0.0 * model(batch["x"]) if twice else out

    loss = rpcl(forward(), batch["gold"], batch["valid"], rerun=forward)
    loss.backward()
    grads = [p.grad.clone() if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]
    return rpcl, model, loss.detach(), grads


def test_output_replay_equals_recomputing_and_runs_the_context_once() -> None:
    # No dropout in PairModel: recomputing the context gives the very same clean output, so the
    # replayed second pass must give the same loss and the same gradients.
    r_replay, m_replay, l_replay, g_replay = _step(reuse=True)
    r_rerun, m_rerun, l_rerun, g_rerun = _step(reuse=False)
    assert r_replay.last_replayed and not r_rerun.last_replayed
    assert isinstance(m_replay.encoder, CountingLSTM) and isinstance(m_rerun.encoder, CountingLSTM)
    assert (m_replay.encoder.runs, m_rerun.encoder.runs) == (1, 2)
    assert l_replay > 0
    torch.testing.assert_close(l_replay, l_rerun)
    for a, b in zip(g_replay, g_rerun, strict=True):
        torch.testing.assert_close(a, b)
    assert "forward" not in vars(m_replay.encoder)  # the class's forward is back


def test_output_replay_falls_back_when_the_context_ran_twice() -> None:
    r_twice, m_twice, l_twice, g_twice = _step(reuse=True, twice=True)
    _, _, l_ref, g_ref = _step(reuse=False, twice=True)
    assert r_twice.last_replayed is Replay.NONE
    assert isinstance(m_twice.encoder, CountingLSTM) and m_twice.encoder.runs == 4  # 2 clean + 2 rerun
    torch.testing.assert_close(l_twice, l_ref)
    for a, b in zip(g_twice, g_ref, strict=True):
        torch.testing.assert_close(a, b)


def test_output_replay_needs_a_clean_forward_with_grad_since_the_last_call() -> None:
    torch.manual_seed(0)
    model = PairModel(lstm=True)
    batch = _batch()
    rpcl = RPCLoss(model.encoder, consistency_weight=1.0)
    with torch.no_grad():
        clean = model(batch["x"])
    rpcl(clean, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
    assert not rpcl.last_replayed
    # a call without a second pass forgets the clean output: the next step replays its own
    clean = model(batch["x"])
    rpcl(clean, batch["gold"], batch["valid"], corrupted_scores=clean.detach())
    clean = model(batch["x"])
    rpcl(clean, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
    assert rpcl.last_replayed


def test_output_replay_restores_the_module_when_rerun_raises() -> None:
    model = PairModel(lstm=True)
    batch = _batch()
    rpcl = RPCLoss(model.encoder, consistency_weight=1.0)
    clean = model(batch["x"])

    def rerun() -> torch.Tensor:
        model(batch["x"])
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        rpcl(clean, batch["gold"], batch["valid"], rerun=rerun)
    assert "forward" not in vars(model.encoder)
    model(batch["x"])  # runs the LSTM again
    rpcl.remove_hooks()
    assert not model.encoder._forward_hooks and not model.encoder._forward_pre_hooks


def test_corrupted_valid_restricts_the_consistency_term() -> None:
    batch = _batch()
    scores = PairModel()(batch["x"]).detach()
    corrupted = scores + torch.randn_like(scores)
    shared = batch["valid"] & (torch.rand(scores.shape, generator=torch.Generator().manual_seed(0)) < 0.5)
    rpcl = RPCLoss(margin_weight=0.0)
    got = rpcl(scores, batch["gold"], batch["valid"], corrupted_scores=corrupted, corrupted_valid=shared)
    torch.testing.assert_close(got, consistency_loss(scores, corrupted, shared))
    everywhere = rpcl(scores, batch["gold"], batch["valid"], corrupted_scores=corrupted)
    torch.testing.assert_close(everywhere, consistency_loss(scores, corrupted, batch["valid"]))
    with pytest.raises(TypeError, match=r"corrupted_valid must be a torch\.bool tensor"):
        rpcl(scores, batch["gold"], batch["valid"], corrupted_scores=corrupted, corrupted_valid=shared.float())


@pytest.mark.parametrize(
    ("name", "options", "expected"),
    [
        ("hinge", {"margin": 0.3, "space": "logit"}, lambda s, g, v: pair_margin_loss(s, g, v, margin=0.3, space="logit", detach_negatives=True)),
        ("softmax", {"k": 2}, lambda s, g, v: tp.pair_listwise_loss(s, g, v, k=2, margin=0.2, detach_negatives=True)),
        ("listwise", {}, lambda s, g, v: tp.pair_listwise_loss(s, g, v, k=None)),
        ("ap", {}, lambda s, g, v: tp.pair_ap_loss(s, g, v, scope="batch")),
        ("ap", {"scope": "row", "temperature": 0.5}, lambda s, g, v: tp.pair_ap_loss(s, g, v, scope="row", temperature=0.5)),
        ("auc", {}, lambda s, g, v: tp.pair_auc_loss(s, g, v, scope="batch", margin=1.0)),
        ("auc", {"scope": "row", "k": 2, "surrogate": "hinge"}, lambda s, g, v: tp.pair_auc_loss(s, g, v, scope="row", k=2, surrogate="hinge")),
        ("relative", {}, lambda s, g, v: tp.pair_relative_margin_loss(s, g, v, margin=1.0)),
        ("relative", {"anchor": "mean", "margin": 0.5}, lambda s, g, v: tp.pair_relative_margin_loss(s, g, v, margin=0.5, anchor="mean")),
    ],
)
def test_every_ranking_name_builds_its_term_with_its_own_options(name: str, options: dict[str, Any], expected: Any) -> None:
    batch = _batch(b=3, n=6, seed=5)
    scores = PairModel()(batch["x"]).detach()
    rpcl = RPCLoss(ranking=name, margin_weight=1.0, consistency_weight=0.0, **options)
    torch.testing.assert_close(rpcl(scores, batch["gold"], batch["valid"]), expected(scores, batch["gold"], batch["valid"]))
    # every option of every ranking is a keyword RPCLoss (and so the trainer's --rpcl-arg) knows
    assert set(options) <= set(RPCLoss.keywords())


def test_a_ranking_rejects_the_options_of_another() -> None:
    with pytest.raises(TypeError, match="ranking='ap' takes no option 'margin' \\(its options: scope, temperature\\)"):
        RPCLoss(ranking="ap", margin=1.0)
    with pytest.raises(TypeError, match="ranking='relative' takes no option 'k', 'temperature'"):
        RPCLoss(ranking="relative", k=2, temperature=2.0)
    with pytest.raises(TypeError, match="ranking='hinge' takes no option 'scope'"):
        RPCLoss(scope="row")
    with pytest.raises(ValueError, match="either ranking=<module> or its options \\(anchor\\)"):
        RPCLoss(ranking=tp.PairAPLoss(), anchor="mean")
    with pytest.raises(ValueError, match="ranking must be one of \\('hinge', 'softmax', 'listwise', 'ap', 'auc', 'relative'\\)"):
        RPCLoss(ranking="fastap")
    with pytest.raises(ValueError, match="use scope='row'"):
        RPCLoss(ranking="auc", k=3)  # k picks a row's hardest negatives
    assert {"scope", "anchor", "surrogate", "space"} <= set(RPCLoss.keywords())
