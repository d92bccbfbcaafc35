"""RPCLoss in real training stacks: what the second pass replays, model copies and saved
modules, structured outputs, packed sequences, mixed precision, tuple outputs."""

from __future__ import annotations

import copy
import dataclasses
import gc
import io
from collections import OrderedDict
from typing import Any, NamedTuple

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence
from torch.optim.swa_utils import AveragedModel

from torch_pairconf import Replay, RPCLoss, unwrap_model


def _batch(b: int = 4, n: int = 6, d: int = 6, seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, n + 1, (b,), generator=g)
    lengths[0] = n
    real = torch.arange(n) < lengths.unsqueeze(-1)
    valid = real.unsqueeze(-1) & real.unsqueeze(-2)
    gold = (torch.rand(b, n, n, generator=g) < 0.15) & valid
    return {"x": torch.randn(b, n, d, generator=g), "gold": gold, "valid": valid, "lengths": lengths}


class Counted(nn.Module):
    """Wraps a module and counts how often its own forward really runs."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner
        self.runs = 0

    def forward(self, *args: Any) -> Any:
        self.runs += 1
        return self.inner(*args)


class WordModel(nn.Module):
    """A costly upstream (a per-utterance encoder) before the context encoder, then a pair scorer."""

    def __init__(self, d: int = 6, h: int = 8, dropout: float = 0.0) -> None:
        super().__init__()
        self.words = Counted(nn.Sequential(nn.Linear(d, h), nn.Tanh(), nn.Dropout(dropout)))
        self.context = Counted(nn.LSTM(h, h // 2, batch_first=True, bidirectional=True))
        self.head = nn.Linear(h, h)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        u = self.words(x)
        h, _ = self.context(u.view(u.shape))  # a view: the replay check must see through it
        z = self.head(h)
        return z @ h.transpose(-1, -2)


def _train_step(model: nn.Module, rpcl: RPCLoss, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad()
    scores = model(batch["x"])
    base = F.binary_cross_entropy_with_logits(scores[batch["valid"]], batch["gold"][batch["valid"]].float())
    loss = base + rpcl(scores, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters() if p.grad is not None]


def _rpcl(net: WordModel, **kw: Any) -> RPCLoss:
    kw.setdefault("generator", torch.Generator().manual_seed(1))
    return RPCLoss(net.context, p=0.5, **kw)


# ------------------------------------------------------------------------- what runs twice


@pytest.mark.parametrize("where", ["output", "input"])
def test_upstream_replay_runs_the_upstream_once_and_equals_re_running(where: str) -> None:
    batch = _batch()
    results = {}
    for mode in ("upstream", "output", "rerun"):
        torch.manual_seed(0)
        model = WordModel()
        kw: dict[str, Any] = {"where": where}
        if mode == "upstream":
            kw["model"] = model
        if mode == "rerun":
            kw["reuse_output"] = False
        rpcl = _rpcl(model, **kw)
        loss, grads = _train_step(model, rpcl, batch)
        results[mode] = (loss, grads, model.words.runs, model.context.runs, rpcl.last_replayed)
    upstream, output, rerun = results["upstream"], results["output"], results["rerun"]
    assert upstream[2] == 1  # the word encoder ran in the clean pass only
    assert output[2] == rerun[2] == 2
    if where == "output":
        assert upstream[3] == output[3] == 1 and rerun[3] == 2
        assert (upstream[4], output[4], rerun[4]) == (Replay.UPSTREAM, Replay.OUTPUT, Replay.NONE)
    else:  # the corrupted module itself runs again on its corrupted input
        assert upstream[3] == output[3] == rerun[3] == 2
        assert (upstream[4], output[4], rerun[4]) == (Replay.UPSTREAM, Replay.NONE, Replay.NONE)
    for other in (output, rerun):  # no dropout: every path computes the same loss and gradients
        torch.testing.assert_close(upstream[0], other[0])
        for a, b in zip(upstream[1], other[1], strict=True):
            torch.testing.assert_close(a, b)


def test_upstream_replay_falls_back_when_a_call_receives_something_else() -> None:
    torch.manual_seed(0)
    model = WordModel()
    batch = _batch()
    rpcl = _rpcl(model, model=model)
    scores = model(batch["x"])
    other = batch["x"].clone()  # equal values, other memory: not provably the same call
    loss = rpcl(scores, batch["gold"], batch["valid"], rerun=lambda: model(other))
    assert rpcl.last_replayed is Replay.OUTPUT and model.words.runs == 2
    assert torch.isfinite(loss)
    # an in-place write to the recorded input after the clean pass also means "compute"
    scores = model(batch["x"])
    batch["x"].add_(1.0)
    rpcl(scores, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
    assert rpcl.last_replayed is Replay.OUTPUT and model.words.runs == 4


def test_upstream_replay_shares_the_clean_dropout_and_keeps_the_step_finite() -> None:
    torch.manual_seed(0)
    model = WordModel(dropout=0.5)
    batch = _batch()
    rpcl = _rpcl(model, model=model)
    loss, grads = _train_step(model, rpcl, batch)
    assert rpcl.last_replayed is Replay.UPSTREAM and model.words.runs == 1
    assert torch.isfinite(loss) and all(torch.isfinite(g).all() for g in grads)


def test_model_must_contain_the_corrupted_module_and_names_resolve() -> None:
    model = WordModel()
    with pytest.raises(ValueError, match="not a submodule of WordModel"):
        RPCLoss(nn.Linear(2, 2), model=model)
    by_name = RPCLoss("context", model=model)
    assert by_name._corrupt[0] is model.context
    with pytest.raises(ValueError, match="pass model= as well"):
        RPCLoss("context")
    with pytest.raises(ValueError, match="not a submodule"):
        RPCLoss("nope", model=model)
    compiled = torch.compile(model)  # wrappers are unwrapped (nothing is compiled here)
    assert unwrap_model(compiled) is model
    assert RPCLoss("context", model=compiled)._corrupt[0] is model.context


def test_recordings_hold_nothing_between_steps() -> None:
    torch.manual_seed(0)
    model = WordModel()
    batch = _batch()
    rpcl = _rpcl(model, model=model)
    rec = rpcl._recording
    assert rec is not None
    _train_step(model, rpcl, batch)
    assert rec.target_output is None and not rec.calls and rec.target_calls == 0
    with torch.no_grad():
        model(batch["x"])  # validation without grad: nothing recorded
    model.eval()
    model(batch["x"])  # validation in eval mode with grad: nothing recorded either
    assert rec.target_output is None and not rec.calls and rec.target_calls == 0
    model.train()
    model(batch["x"])
    assert rec.target_calls == 1 and rec.target_output is not None and rec.calls
    model(batch["x"])  # a second clean call: replay is off, and nothing is held any more
    assert rec.target_calls == 2 and rec.target_output is None and not rec.calls


# ------------------------------------------------------------- model copies and saved modules


def _points_of_a_step(model: WordModel, rpcl: RPCLoss, batch: dict[str, torch.Tensor]) -> Any:
    """Yield at each point of a training step (the caller copies/saves the model there)."""
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    yield "before forward"
    scores = model(batch["x"])
    yield "after the clean forward"
    loss = rpcl(scores, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
    yield "after the RPCL call"
    loss.backward()
    yield "after backward"
    opt.step()
    yield "after the optimizer step"


@pytest.mark.parametrize("how", ["deepcopy", "averaged", "save"])
def test_copies_and_saved_modules_carry_inert_hooks_at_every_point(how: str) -> None:
    torch.manual_seed(0)
    model = WordModel()
    batch = _batch()
    rpcl = _rpcl(model, model=model)
    for point in _points_of_a_step(model, rpcl, batch):
        if how == "deepcopy":
            copied = copy.deepcopy(model)
        elif how == "averaged":
            copied = AveragedModel(model).module
        else:
            buffer = io.BytesIO()
            torch.save(model, buffer)
            size = buffer.tell()
            params = sum(t.numel() * t.element_size() for t in model.state_dict().values())
            assert size < params + 60_000, point  # no activation in the file
            buffer.seek(0)
            copied = torch.load(buffer, weights_only=False)
        hooks = [h for m in copied.modules() for h in (*m._forward_hooks.values(), *m._forward_pre_hooks.values())]
        assert hooks and all(getattr(h, "recording", "x") is None for h in hooks), point
        copied(batch["x"])  # the copy runs, and its hooks record nothing
        assert torch.isfinite(copied(batch["x"])).all()
    # the original still replays, and removing its hooks leaves the copy alone
    _train_step(model, rpcl, batch)
    assert rpcl.last_replayed is Replay.UPSTREAM
    rpcl.remove_hooks()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_hooks_go_with_the_loss() -> None:
    model = WordModel()
    rpcl = _rpcl(model, model=model)
    assert any(m._forward_hooks for m in model.modules())
    del rpcl
    gc.collect()
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


# --------------------------------------------------------------------- structured outputs


@dataclasses.dataclass
class EncoderOutput:
    last_hidden_state: torch.Tensor
    pooled: torch.Tensor


class Encoded(NamedTuple):
    states: torch.Tensor
    summary: torch.Tensor


class StructuredEncoder(nn.Module):
    """A context encoder whose output is a mapping, a dataclass, a NamedTuple or a tuple."""

    def __init__(self, kind: str, h: int = 8) -> None:
        super().__init__()
        self.kind = kind
        self.lin = nn.Linear(h, h)

    def forward(self, x: torch.Tensor) -> Any:
        h = self.lin(x)
        pooled = h.mean(1)
        if self.kind == "dict":
            return OrderedDict(last_hidden_state=h, pooled=pooled)
        if self.kind == "dataclass":
            return EncoderOutput(h, pooled)
        if self.kind == "namedtuple":
            return Encoded(h, pooled)
        return (pooled, h)  # the representation second: must be named


def _states(out: Any) -> torch.Tensor:
    if isinstance(out, dict):
        return out["last_hidden_state"]
    if isinstance(out, EncoderOutput):
        return out.last_hidden_state
    if isinstance(out, Encoded):
        return out.states
    return out[1]


class StructuredModel(nn.Module):
    def __init__(self, kind: str) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.encoder = StructuredEncoder(kind)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = _states(self.encoder(self.proj(x)))
        return h @ h.transpose(-1, -2)


@pytest.mark.parametrize(
    ("kind", "field"),
    [("dict", None), ("dataclass", None), ("dict", "last_hidden_state"), ("namedtuple", "states"),
     ("namedtuple", 0), ("tuple", 1)],
)
@pytest.mark.parametrize("reuse", [True, False])
def test_structured_outputs(kind: str, field: Any, reuse: bool) -> None:
    torch.manual_seed(0)
    model = StructuredModel(kind)
    batch = _batch()
    rpcl = RPCLoss(model.encoder, field=field, p=1.0, margin_weight=0.0, reuse_output=reuse)
    clean = model(batch["x"])
    seen: list[torch.Tensor] = []
    handle = model.encoder.register_forward_hook(lambda m, a, out: seen.append(_states(out)))
    loss = rpcl(clean, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
    handle.remove()
    assert loss > 0
    real = batch["valid"].any(-1)
    protect = batch["gold"].any(-1) | batch["gold"].any(-2)
    corrupted = seen[-1] if not reuse else None
    if corrupted is not None:
        assert corrupted[real & ~protect].eq(0).all()
    assert bool(rpcl.last_replayed) == reuse


def test_structured_output_that_cannot_be_read_says_how_to_name_it() -> None:
    model = StructuredModel("tuple")
    batch = _batch()
    rpcl = RPCLoss(model.encoder, reuse_output=False)
    with pytest.raises(ValueError, match=r"got \(4, 8\).*name it with RPCLoss\(\.\.\., field=\.\.\.\)"):
        rpcl(model(batch["x"]), batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
    rpcl = RPCLoss(model.encoder, field="missing", reuse_output=False)
    with pytest.raises(TypeError, match="has no entry 'missing'"):
        rpcl(model(batch["x"]), batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))


def test_hugging_face_model_output() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=16, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=16, max_position_embeddings=16, hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )  # fmt: skip

    class BertPairModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj = nn.Linear(6, 8)
            self.bert = transformers.BertModel(config, add_pooling_layer=False)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            h = self.bert(inputs_embeds=self.proj(x), attention_mask=mask.long()).last_hidden_state
            return h @ h.transpose(-1, -2)

    torch.manual_seed(0)
    model = BertPairModel()
    batch = _batch()
    mask = batch["valid"].any(-1)
    rpcl = RPCLoss(model.bert, model=model, p=0.5, generator=torch.Generator().manual_seed(0))
    scores = model(batch["x"], mask)
    loss = rpcl(scores, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"], mask))
    assert rpcl.last_replayed is Replay.UPSTREAM
    loss.backward()
    # on its input: the embeddings are a keyword argument
    rpcl = RPCLoss(model.bert, where="input", field="inputs_embeds", p=1.0, margin_weight=0.0)
    scores = model(batch["x"], mask)
    assert rpcl(scores, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"], mask)) > 0
    rpcl = RPCLoss(model.bert, where="input", p=1.0)
    with pytest.raises(TypeError, match=r"positional argument.*field='name'"):
        rpcl(scores, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"], mask))


# ----------------------------------------------------------------------- packed sequences


class PackedModel(nn.Module):
    """The usual LSTM over conversations of different lengths: pack, run, unpack."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.lstm = nn.LSTM(8, 4, batch_first=True, bidirectional=True)
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(self.proj(x), lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.lstm(packed)
        h, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
        self.seen.append(h)
        return h @ h.transpose(-1, -2)


@pytest.mark.parametrize("where", ["output", "input"])
@pytest.mark.parametrize("reuse", [True, False])
def test_packed_sequences_corrupt_the_rows_of_real_unprotected_utterances(where: str, reuse: bool) -> None:
    torch.manual_seed(0)
    model = PackedModel()
    batch = _batch()
    lengths = batch["lengths"]
    rpcl = RPCLoss(model.lstm, where=where, reuse_output=reuse, p=1.0, margin_weight=0.0)
    clean = model(batch["x"], lengths)
    loss = rpcl(clean, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"], lengths))
    assert loss > 0 and loss.requires_grad
    assert bool(rpcl.last_replayed) == (where == "output" and reuse)
    clean_h, corrupted_h = model.seen[0], model.seen[1]
    real = batch["valid"].any(-1)
    protect = batch["gold"].any(-1) | batch["gold"].any(-2)
    hit = real & ~protect
    if where == "output":
        assert corrupted_h[hit].eq(0).all()
        torch.testing.assert_close(corrupted_h[~hit], clean_h[~hit])
    else:  # zeroed inputs change the LSTM's outputs; padding stays zero
        assert not torch.equal(corrupted_h[real], clean_h[real])
        assert corrupted_h[~real].eq(0).all()


# ------------------------------------------------------------------------ mixed precision


@pytest.mark.parametrize("reuse", [True, False])
def test_bf16_autocast_with_the_loss_called_outside_the_region(reuse: bool) -> None:
    torch.manual_seed(0)
    model = WordModel()
    batch = _batch()
    losses = []
    for inside in (True, False):
        rpcl = _rpcl(model, model=model, reuse_output=reuse)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            scores = model(batch["x"])
            if inside:
                loss = rpcl(scores, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
        if not inside:
            loss = rpcl(scores, batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
        assert loss.dtype == torch.bfloat16 and torch.isfinite(loss)
        loss.float().backward()
        losses.append(loss.detach())
        assert bool(rpcl.last_replayed) == reuse
        rpcl.remove_hooks()
    torch.testing.assert_close(losses[0], losses[1])


def test_dtype_mismatch_of_given_corrupted_scores_names_the_cause() -> None:
    batch = _batch()
    scores = torch.randn(4, 6, 6, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match="same autocast state"):
        RPCLoss()(scores, batch["gold"], batch["valid"], corrupted_scores=scores.float())


# -------------------------------------------------------------------------- tuple outputs


class TupleModel(nn.Module):
    """A public trainer's forward: (emotion_logits, cause_logits, pair_probs)."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(6, 8)
        self.encoder = nn.Linear(8, 8)
        self.emotion = nn.Linear(8, 2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.encoder(self.proj(x))
        return self.emotion(h), self.emotion(h), torch.sigmoid(h @ h.transpose(-1, -2))


@pytest.mark.parametrize("n", [2, 6])  # n = 2: every output has the pair matrix's shape
def test_tuple_outputs_are_never_guessed(n: int) -> None:
    model = TupleModel()
    batch = _batch(n=n)
    out = model(batch["x"])
    rpcl = RPCLoss(model.encoder, scores_are="probs")
    with pytest.raises(TypeError, match=r"rerun\(\) returned a tuple.*scores_fn"):
        rpcl(out[2], batch["gold"], batch["valid"], rerun=lambda: model(batch["x"]))
    rpcl = RPCLoss(model.encoder, scores_are="probs", scores_fn=lambda o: o[2])
    out = model(batch["x"])
    assert torch.isfinite(rpcl(out[2], batch["gold"], batch["valid"], rerun=lambda: model(batch["x"])))


def test_options_and_parts_do_not_mix() -> None:
    from torch_pairconf import ConsistencyLoss, ContextCorruption, PairListwiseLoss

    with pytest.raises(ValueError, match="either ranking=<module> or its options \\(k\\)"):
        RPCLoss(ranking=PairListwiseLoss(k=2), k=3)
    with pytest.raises(ValueError, match="either corruption=<module> or its options \\(p\\)"):
        RPCLoss(corruption=ContextCorruption(0.1), p=0.2)
    with pytest.raises(TypeError, match="unexpected keyword argument\\(s\\): spice"):
        RPCLoss(spice=1)
    rpcl = RPCLoss(ranking=PairListwiseLoss(k=2), corruption=ContextCorruption(0.4, mode="mean"),
                   consistency=ConsistencyLoss("js"))
    assert isinstance(rpcl.ranking, PairListwiseLoss) and rpcl.margin_loss is rpcl.ranking
    assert rpcl.corruption.p == 0.4 and rpcl.consistency.divergence == "js"
