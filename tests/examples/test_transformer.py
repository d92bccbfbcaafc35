"""The trainable transformer encoder: sequences and spans, chunks, pooling, the state cache.

Every reference is an explicit Python loop (or the Hugging Face model itself) on a tiny random
BERT written to a temporary folder.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import hypothesis.strategies as st
import numpy as np
import pytest
import torch
from hypothesis import given

from examples.mecpe.segments import Segments, pack_conversation, pack_utterances
from examples.mecpe.state_cache import attach_states
from examples.mecpe.text_chunks import chunk_segments, plan_chunks
from examples.mecpe.transformer import TransformerText, describe, folder_fingerprint, tokenize

pieces_st = st.lists(st.lists(st.integers(5, 40), max_size=9), min_size=1, max_size=7)
CLS, SEP = 1, 2


@given(pieces=pieces_st, max_tokens=st.integers(3, 12), layout=st.sampled_from(["u", "c"]))
def test_spans_cover_each_utterance_in_order(
    pieces: list[list[int]], max_tokens: int, layout: str
) -> None:
    pack = pack_utterances if layout == "u" else pack_conversation
    segs = pack(pieces, cls=CLS, sep=SEP, max_tokens=max_tokens)
    assert all(len(ids) <= max_tokens and ids[0] == CLS and ids[-1] == SEP for ids in segs.ids)
    assert segs.seq.numel() == len(pieces)
    keep = max_tokens - 2
    assert segs.truncated == sum(len(p) > keep for p in pieces)
    for i, piece in enumerate(pieces):
        s, a, b = int(segs.seq[i]), int(segs.start[i]), int(segs.end[i])
        assert 0 <= a < b <= len(segs.ids[s])
        span = segs.ids[s][a:b]
        if layout == "u":  # the whole sequence: [CLS] piece [SEP]
            assert span == [CLS, *piece[:keep], SEP]
        elif piece:
            assert span == piece[:keep]
        else:  # no token: its SEP
            assert span == [SEP]
    if layout == "c":  # packed in order: utterances never go back to an earlier sequence
        assert segs.seq.tolist() == sorted(segs.seq.tolist())
        tokens = [t for ids in segs.ids for t in ids if t not in (CLS, SEP)]
        assert tokens == [t for p in pieces for t in p[:keep]]


@given(lengths=st.lists(st.integers(1, 20), max_size=30), budget=st.integers(1, 60))
def test_chunk_plan_is_sorted_and_within_budget(lengths: list[int], budget: int) -> None:
    plan = plan_chunks(lengths, budget)
    flat = [g for chunk in plan for g in chunk]
    assert sorted(flat) == list(range(len(lengths)))
    assert [lengths[g] for g in flat] == sorted(lengths, reverse=True)
    for chunk in plan:
        assert len(chunk) == 1 or len(chunk) * lengths[chunk[0]] <= budget


@pytest.fixture(scope="module")
def top0(tiny_bert: Path) -> TransformerText:
    """No trained layer: the encoder pools the given states (K = 0)."""
    return TransformerText(str(tiny_bert), train_layers=0).eval()


@given(
    convs=st.lists(pieces_st, min_size=1, max_size=4),
    layout=st.sampled_from(["u", "c"]),
    budget=st.integers(1, 40),
    seed=st.integers(0, 2**16),
)
def test_pooling_matches_a_loop_over_spans(
    top0: TransformerText, convs: list[list[list[int]]], layout: str, budget: int, seed: int
) -> None:
    pack = pack_utterances if layout == "u" else pack_conversation
    segs = [pack(p, cls=CLS, sep=SEP, max_tokens=8) for p in convs]
    g = torch.Generator().manual_seed(seed)
    for seg in segs:
        seg.states = [torch.randn(len(ids), 16, generator=g).half() for ids in seg.ids]
    n = max(len(p) for p in convs)
    text = chunk_segments(segs, n=n, chunk_tokens=budget)
    with torch.no_grad():
        got = top0(text, batch_size=len(segs), n=n)
    want = torch.zeros(len(segs), n, 16)
    for b, seg in enumerate(segs):
        assert seg.states is not None
        for i in range(seg.seq.numel()):
            s, a, e = int(seg.seq[i]), int(seg.start[i]), int(seg.end[i])
            want[b, i] = seg.states[s][a:e].float().mean(0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_cls_pooling_takes_the_first_span_token(top0: TransformerText) -> None:
    seg = pack_utterances([[5, 6], [7]], cls=CLS, sep=SEP, max_tokens=8)
    seg.states = [torch.randn(len(ids), 16).half() for ids in seg.ids]
    top0.pooling = "cls"
    try:
        got = top0(chunk_segments([seg], n=2, chunk_tokens=4), batch_size=1, n=2)
    finally:
        top0.pooling = "mean"
    torch.testing.assert_close(got[0], torch.stack([s[0].float() for s in seg.states]))


def _sentence_vectors(folder: Path, texts: list[str]) -> torch.Tensor:
    """The reference: AutoModel's last hidden state, mean-pooled over the attention mask."""
    from transformers import AutoModel, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(str(folder)), AutoModel.from_pretrained(str(folder))
    enc = tok(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        h = model.eval()(**enc).last_hidden_state
    m = enc["attention_mask"].unsqueeze(-1).float()
    return (h * m).sum(1) / m.sum(1)


@pytest.mark.parametrize("trained", [2, 1, 0])
def test_encoder_equals_the_hugging_face_model(tiny_bert: Path, trained: int) -> None:
    """Trained layers on the cached states of the frozen ones (float16) = the whole model."""
    texts = [["we go home .", "great party"], ["sorry", "what a day it is because ."]]
    info = describe(str(tiny_bert))
    segs = tokenize(texts, info, layout="utterance", max_tokens=32)
    if trained < info.n_layers:
        attach_states(segs, info, frozen_layers=info.n_layers - trained, cache_file=None,
                      device=torch.device("cpu"), chunk_tokens=16)  # fmt: skip
    enc = TransformerText(str(tiny_bert), train_layers=trained, fingerprint=info.fingerprint)
    assert len(enc.layers) == trained and (enc.embeddings is not None) == (trained == 2)
    with torch.no_grad():
        got = enc.eval()(chunk_segments(segs, n=2, chunk_tokens=16), batch_size=2, n=2)
    want = _sentence_vectors(tiny_bert, [t for conv in texts for t in conv]).view(2, 2, -1)
    # other padding (chunks) only: float32 rounding; float16 states: ~1e-3 relative rounding
    tol = 1e-5 if trained == 2 else 2e-3
    torch.testing.assert_close(got, want, rtol=tol, atol=tol)


def test_grad_checkpoint_gives_the_same_gradients(tiny_bert: Path) -> None:
    info = describe(str(tiny_bert))
    segs = tokenize([["we go home .", "great party"]], info, layout="conversation", max_tokens=32)
    grads = []
    for ckpt in (False, True):
        enc = TransformerText(str(tiny_bert), train_layers=2, grad_checkpoint=ckpt).train()
        torch.manual_seed(3)  # the same dropout masks: checkpointing restores the RNG state
        out = enc(chunk_segments(segs, n=2, chunk_tokens=64), batch_size=1, n=2)
        out.pow(2).sum().backward()
        grads.append([p.grad.clone() for p in enc.parameters() if p.grad is not None])
    assert len(grads[0]) == len(grads[1]) > 0
    for a, b in zip(*grads, strict=True):
        torch.testing.assert_close(a, b)


def test_changed_model_files_are_refused(tiny_bert: Path, tmp_path: Path) -> None:
    copy = Path(shutil.copytree(tiny_bert, tmp_path / "bert"))
    before = folder_fingerprint(copy)
    (copy / "vocab.txt").write_text((copy / "vocab.txt").read_text() + "extra\n")
    assert folder_fingerprint(copy) != before
    with pytest.raises(ValueError, match="the model files changed since this model was trained"):
        TransformerText(str(copy), train_layers=1, fingerprint=before)
    with pytest.raises(ValueError, match=r"--train-layers 3: .* has 2 layers"):
        TransformerText(str(copy), train_layers=3)
    with pytest.raises(ValueError, match="not a Hugging Face model folder"):
        TransformerText(str(tmp_path), train_layers=1)


def test_state_cache_is_reused_only_when_everything_matches(
    tiny_bert: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="examples.mecpe.state_cache")
    path = tmp_path / "states.npz"
    info = describe(str(tiny_bert))
    texts = [["we go home .", "great party"], ["sorry"]]

    def attach(convs: list[list[str]], frozen: int = 1, model: object = info) -> list[Segments]:
        segs = tokenize(convs, info, layout="utterance", max_tokens=32)
        attach_states(segs, model, frozen_layers=frozen, cache_file=path,  # type: ignore[arg-type]
                      device=torch.device("cpu"), chunk_tokens=16)  # fmt: skip
        return segs

    def last_reason() -> str:
        return caplog.records[-1].getMessage().split(": ", 1)[1]

    first = attach(texts)
    assert last_reason().startswith("written")
    again = attach(texts)
    assert last_reason().startswith("hit")
    for a, b in zip(first, again, strict=True):
        assert a.states is not None and b.states is not None
        assert all(torch.equal(x, y) for x, y in zip(a.states, b.states, strict=True))
    attach([["we go home .", "great party"], ["sorry it"]])  # other texts
    assert "tokens differs, recomputing" in caplog.text
    attach(texts, frozen=2)  # another split point
    assert "frozen_layers differs, recomputing" in caplog.text
    other = type(info)(info.folder, "0" * 64, info.n_layers, info.hidden, info.max_positions)
    attach(texts, model=other)  # other model files
    assert "model differs, recomputing" in caplog.text
    path.write_bytes(b"not a zip")
    attach(texts)
    assert "unreadable" in caplog.text
    assert np.load(path)["states"].dtype == np.float16
