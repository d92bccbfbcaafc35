"""The README's Lightning integration, runnable as a script (Lightning's "ddp" strategy relaunches
this file once per extra process): ``python -m tests.integrations.lightning_module DEVICES OUT``."""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from tests.integrations._models import WordModel, base_loss, inputs, structure
from torch_pairconf import RPCLoss


class PairTask(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = WordModel()
        self.rpcl = RPCLoss(self.net.context, model=self.net)  # + RPCL
        self.replayed: list[str] = []

    def training_step(self, batch: list[torch.Tensor], batch_idx: int) -> torch.Tensor:
        (x,) = batch
        gold, valid = structure(x.shape[0])
        scores = self.net(x)
        loss = base_loss(scores, gold, valid)
        loss = loss + self.rpcl(scores, gold, valid, rerun=lambda: self.net(x))  # + RPCL
        self.replayed.append(self.rpcl.last_replayed.value)
        return loss

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def train(devices: int, out: Path) -> None:
    torch.manual_seed(0)
    task = PairTask()
    loader = DataLoader(TensorDataset(inputs(16)), batch_size=4)
    trainer = L.Trainer(
        accelerator="cpu", devices=devices, strategy="ddp" if devices > 1 else "auto",
        max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(task, loader)
    state = {k: v.detach().clone() for k, v in task.net.state_dict().items()}
    torch.save({"state": state, "replayed": task.replayed, "step": int(task.rpcl.step)},
               out / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    train(int(sys.argv[1]), Path(sys.argv[2]))
