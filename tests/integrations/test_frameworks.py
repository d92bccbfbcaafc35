"""RPCLoss inside Lightning (one and two CPU processes) and Accelerate (one process).

Installed by ``.ci/run`` through the ``integrations`` extra; skipped where the package is absent.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.integrations._models import WordModel, base_loss, inputs, structure
from torch_pairconf import Replay, RPCLoss

ROOT = Path(__file__).resolve().parents[2]


def _run_lightning(devices: int, out: Path) -> list[dict[str, object]]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tests.integrations.lightning_module", str(devices), str(out)]
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(devices)]


@pytest.mark.slow
@pytest.mark.parametrize("devices", [1, 2])
def test_lightning_trainer(devices: int, tmp_path: Path) -> None:
    pytest.importorskip("lightning")
    ranks = _run_lightning(devices, tmp_path)
    for r in ranks:
        assert r["replayed"] == ["upstream"] * 3  # three steps, each replayed upstream
        assert r["step"] == 3
    state0 = ranks[0]["state"]
    assert isinstance(state0, dict)
    for r in ranks[1:]:  # data-parallel: every rank holds the same weights
        other = r["state"]
        assert isinstance(other, dict)
        for k, v in state0.items():
            torch.testing.assert_close(other[k], v, rtol=0, atol=0)
    torch.manual_seed(0)
    assert any(not torch.equal(v, WordModel().state_dict()[k]) for k, v in state0.items())  # it trained


@pytest.mark.slow
@pytest.mark.parametrize("precision", ["no", "bf16"])
def test_accelerate_one_process(precision: str) -> None:
    accelerate = pytest.importorskip("accelerate")
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # one Accelerator per process, as a script has
    accelerator = accelerate.Accelerator(cpu=True, mixed_precision=precision)
    torch.manual_seed(0)
    model = WordModel()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model, optimizer = accelerator.prepare(model, optimizer)
    rpcl = RPCLoss("context", model=model)  # a name, resolved in the (possibly wrapped) model
    assert rpcl._corrupt[0] is accelerator.unwrap_model(model).context
    gold, valid = structure()
    dtypes: list[torch.dtype] = []
    accelerator.unwrap_model(model).head.register_forward_hook(lambda m, a, out: dtypes.append(out.dtype))
    for seed in range(3):
        x = inputs(seed=seed)
        scores = model(x)
        loss = base_loss(scores.float(), gold, valid) + rpcl(scores, gold, valid, rerun=lambda x=x: model(x))
        assert torch.isfinite(loss)
        assert rpcl.last_replayed is Replay.UPSTREAM
        optimizer.zero_grad()
        accelerator.backward(loss)
        optimizer.step()
    # both passes of every step ran the head under accelerate's autocast (outputs cast back to fp32)
    assert dtypes == [torch.bfloat16 if precision == "bf16" else torch.float32] * 6
