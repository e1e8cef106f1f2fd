"""One trainer for every torch model.

``Trainer(model, features, targets, split, config).fit(on_epoch)`` trains on the split's train
rows, scores the val rows after every epoch and hands the epoch's metrics to ``on_epoch`` (the
tuning layer turns that into ``tune.report``; the trainer knows nothing of Ray or MLflow).

What ``TrainConfig`` switches on, and how:
- targets standardised with the training rows' mean/std (``scale_target``); every reported
  metric is in original units;
- losses mae / mse / robust_l1 (``losses.py``), on column 0 of a ``[B, 2]`` output where a model
  also predicts a log std;
- optimizers adam / adamw / sgd (momentum 0.9) / lamb_lookahead (pytorch_optimizer's Lamb inside
  its Lookahead, set up as CrabNet's: eps 1e-6, no bias correction, k=6, alpha=0.5);
- schedulers stepped every batch: ``cyclic`` is CrabNet's triangular CyclicLR between
  ``base_lr`` and ``max_lr``, rising for 10 epochs and falling for 10 (fewer for runs under 40
  epochs, so that at least two cycles fit); ``cosine`` anneals ``lr`` to 0 over the run;
  ``onecycle`` is torch's OneCycleLR peaking at ``lr`` after 30% of the run (ALIGNN's schedule;
  it also cycles Adam's beta1 / SGD's momentum between 0.95 and 0.85, torch's default);
- SWA (``torch.optim.swa_utils.AveragedModel``) averages the weights at the end of each LR
  cycle (every epoch without a cyclic schedule) once ``swa_start`` of the epochs have passed.
  As CrabNet keeps the SWA weights only when they help, the final model is the SWA average
  if its val MAE beats the best epoch's, else the best epoch's weights;
- early stopping after ``patience`` epochs without a better val MAE; gradient clipping by norm;
- ``precision="bf16"``: every training forward pass runs under ``torch.autocast(bfloat16)``:
  matrix products in bfloat16, the weights, optimizer state, BatchNorm statistics and the loss
  in float32 (bf16 has float32's exponent range, so no loss scaling). Validation and
  predictions run in float32 (bf16 outputs would round every prediction). On CPUs without bf16
  instructions (AVX512-BF16 / AMX) it is slower, and says so.

Deterministic on CPU under ``config.seed``: the trainer seeds torch/numpy/random, shuffles with
its own ``torch.Generator``, and a checkpoint stores every RNG state, so a resumed fit
continues exactly as the uninterrupted one would have.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import os
import random
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from harness.data.dataset import Split
from harness.featurize.base import Features
from harness.training.allocator import keep_freed_memory, release_freed_memory
from harness.training.config import TrainConfig, crabnet_batch_size
from harness.training.losses import compute_loss, point_prediction
from harness.training.metrics import regression_metrics

CHECKPOINT_FILE = "trainer.pt"
CRABNET_HALF_CYCLE_EPOCHS = 10  # CrabNet's epochs_step: the LR rises for 10 epochs, then falls for 10

EpochCallback = Callable[[dict[str, float], "Trainer"], None]


@dataclass
class FitResult:
    history: list[dict[str, float]]  # one metrics dict per epoch, as passed to on_epoch
    best_epoch: int  # epoch (1-based) of the best val MAE
    best_val_mae: float  # val MAE of the final model (the best epoch's or the SWA weights)
    stopped_early: bool
    epochs_run: int
    used_swa: bool = False  # the final model is the SWA average
    swa_val_mae: float = math.nan  # val MAE of the SWA average, if one was formed


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(config: TrainConfig, device: torch.device):
    """The recipe's precision as a context for forward passes (a no-op for fp32)."""
    if config.precision == "fp32":
        return nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def warn_if_bf16_is_emulated(config: TrainConfig, device: torch.device) -> None:
    """bf16 runs everywhere, but without hardware support it is slower than fp32: say so."""
    if config.precision != "bf16":
        return
    if device.type == "cpu" and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        where = "a CPU without bf16 instructions (AVX512-BF16 or AMX)"
    elif device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        where = f"a GPU without native bf16 ({torch.cuda.get_device_name(device)})"
    else:
        return
    warnings.warn(f"precision bf16 on {where}: it runs, but slower than fp32; use --precision fp32 here",
                  RuntimeWarning, stacklevel=3)


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def half_cycle_epochs(epochs: int) -> int:
    """Epochs of one rising (or falling) half of the cyclic LR schedule."""
    return max(1, min(CRABNET_HALF_CYCLE_EPOCHS, epochs // 4))


@dataclass
class TargetScaler:
    mean: float = 0.0
    std: float = 1.0

    @classmethod
    def fit(cls, y: np.ndarray) -> "TargetScaler":
        std = float(np.std(y, ddof=1)) if len(y) > 1 else 1.0  # unbiased, as CrabNet's Scaler
        return cls(float(np.mean(y)), std if math.isfinite(std) and std > 0 else 1.0)

    def scale(self, y: np.ndarray) -> np.ndarray:
        return (y - self.mean) / self.std

    def unscale(self, y: np.ndarray) -> np.ndarray:
        return y * self.std + self.mean


def build_optimizer(config: TrainConfig, params: list[nn.Parameter]) -> torch.optim.Optimizer:
    lr, decay = config.lr, config.weight_decay
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, weight_decay=decay, **_fused(params))
    if config.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=lr, weight_decay=decay, **_fused(params))
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=decay)
    if config.optimizer == "lamb_lookahead":
        from pytorch_optimizer import Lamb, Lookahead

        # CrabNet's Lamb ("paper v3"): no bias correction (adam_debias=True means "skip it"),
        # L2 term added to the Adam step before the trust ratio (weight_decouple=False).
        lamb = Lamb(params, lr=lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=decay,
                    weight_decouple=False, adam_debias=True)
        return Lookahead(lamb, k=6, alpha=0.5)
    raise ValueError(f"unknown optimizer {config.optimizer!r}")


def _fused(params: list[nn.Parameter]) -> dict[str, bool]:
    """``fused=True`` for Adam/AdamW where torch has the kernel (CPU, CUDA): the whole update in one
    kernel instead of a chain of per-tensor ops. Same arithmetic up to float rounding (1 step of
    IRNet-17: parameters within 7e-9), and on CPU the step of a wide net is ~5x faster (IRNet-48,
    11.5 M parameters, batch 16, 1 thread: 87 -> 18 ms, i.e. 135 -> 67 ms per training step)."""
    return {"fused": True} if params and all(p.device.type in ("cpu", "cuda") for p in params) else {}


def build_scheduler(
    config: TrainConfig, optimizer: torch.optim.Optimizer, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    if config.scheduler == "cyclic":
        return torch.optim.lr_scheduler.CyclicLR(
            optimizer,
            base_lr=config.base_lr,
            max_lr=config.max_lr,
            step_size_up=half_cycle_epochs(config.epochs) * steps_per_epoch,
            cycle_momentum=False,  # Lamb/Adam have no "momentum" to cycle
        )
    if config.scheduler == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs * steps_per_epoch)
    if config.scheduler == "onecycle":
        group = optimizer.param_groups[0]
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=config.lr,
            total_steps=config.epochs * steps_per_epoch,
            cycle_momentum="betas" in group or "momentum" in group,  # Lookahead(Lamb) has neither
        )
    return None


class Trainer:
    def __init__(
        self,
        model: nn.Module,
        features: Features,
        targets: np.ndarray,
        split: Split,
        config: TrainConfig,
        device: torch.device | str | None = None,
    ) -> None:
        if config.num_threads:
            torch.set_num_threads(config.num_threads)
        if len(split.train) == 0 or len(split.val) == 0:
            raise ValueError(f"split {split.name!r} needs train and val rows, has sizes {split.sizes()}")
        self.config = config
        self.features = features
        self.split = split
        self.device = torch.device(device) if device is not None else default_device()
        self.model = model.to(self.device)
        warn_if_bf16_is_emulated(config, self.device)
        if self.device.type == "cpu":
            keep_freed_memory()  # steps reuse their activations' memory instead of faulting it in again

        self.targets = np.asarray(targets, dtype=np.float64)
        self.scaler = TargetScaler.fit(self.targets[split.train]) if config.scale_target else TargetScaler()
        self.y_scaled = self.scaler.scale(self.targets).astype(np.float32)

        n_train = len(split.train)
        self.batch_size = min(config.batch_size or crabnet_batch_size(n_train), n_train)
        full, rest = divmod(n_train, self.batch_size)
        self.steps_per_epoch = full + (rest > 1)  # a lone remainder row is skipped (see _train_epoch)
        self.generator = torch.Generator().manual_seed(config.seed)
        self.half_cycle = half_cycle_epochs(config.epochs)

        self.optimizer = build_optimizer(config, [p for p in self.model.parameters() if p.requires_grad])
        self.scheduler = build_scheduler(config, self.optimizer, self.steps_per_epoch)
        self.swa_model = AveragedModel(self.model) if config.swa else None

        self.epoch = 0  # epochs completed
        self.history: list[dict[str, float]] = []
        self.best_val_mae = math.inf
        self.best_epoch = 0
        self.best_state: dict[str, torch.Tensor] | None = None
        self.bad_epochs = 0  # epochs since the val MAE last improved
        self.used_swa = False
        self.swa_val_mae = math.nan

    # ----------------------------------------------------------------- training

    def fit(self, on_epoch: EpochCallback | None = None, resume_from: Path | None = None) -> FitResult:
        """Train to ``config.epochs`` (or early stop); afterwards ``self.model`` is the final model."""
        if resume_from is not None:
            self.load_checkpoint(resume_from)
        elif self.epoch == 0:
            # Seed when the fit starts, not at construction: dropout, jitter and shuffling draw
            # from these RNGs, and a model or trainer built in between must not change this fit.
            seed_everything(self.config.seed)
            self.generator.manual_seed(self.config.seed)
        stopped_early = False
        while self.epoch < self.config.epochs:
            if self._patience_exhausted():
                stopped_early = True
                break
            metrics = self._run_epoch()
            self.history.append(metrics)
            if on_epoch is not None:
                on_epoch(metrics, self)  # may call self.save_checkpoint(...)
        self._choose_final_weights()
        return FitResult(
            history=list(self.history),
            best_epoch=self.best_epoch,
            best_val_mae=self.swa_val_mae if self.used_swa else self.best_val_mae,
            stopped_early=stopped_early,
            epochs_run=self.epoch,
            used_swa=self.used_swa,
            swa_val_mae=self.swa_val_mae,
        )

    @property
    def will_stop(self) -> bool:
        """True when the epoch just reported is the last one ``fit`` will run."""
        return self.epoch >= self.config.epochs or self._patience_exhausted()

    def _patience_exhausted(self) -> bool:
        return self.config.patience is not None and self.bad_epochs >= self.config.patience

    def _run_epoch(self) -> dict[str, float]:
        """Train one epoch, update SWA and the best weights; the metrics passed to ``on_epoch``.

        ``train_loss`` is in scaled units; ``train_mae`` is over the batches as trained (train
        mode, original units); ``val_*`` score the current weights; ``lr`` is the LR after the
        epoch's last step; ``epoch_seconds`` covers training and validation.
        """
        start = time.perf_counter()
        train_loss, train_mae = self._train_epoch()
        self.epoch += 1
        if self._swa_due():
            self.swa_model.update_parameters(self.model)
        val = self._evaluate(self.model, self.split.val)
        if self.device.type == "cpu":
            release_freed_memory()  # a fragmented heap would otherwise grow every epoch
        if val["mae"] < self.best_val_mae:
            self.best_val_mae, self.best_epoch, self.bad_epochs = val["mae"], self.epoch, 0
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        else:
            self.bad_epochs += 1
        return {
            "epoch": self.epoch,
            "train_loss": train_loss,
            "train_mae": train_mae,
            "val_mae": val["mae"],
            "val_rmse": val["rmse"],
            "val_r2": val["r2"],
            "lr": float(self.optimizer.param_groups[0]["lr"]),
            "epoch_seconds": time.perf_counter() - start,
        }

    def _train_epoch(self) -> tuple[float, float]:
        """One pass over the train rows: (mean loss, MAE in original units of the batches as trained)."""
        self.model.train()
        rows = self.split.train
        loss_sum = torch.zeros((), device=self.device)
        abs_sum = torch.zeros((), device=self.device)
        seen = 0
        for batch in self.features.batches(
            rows, self.y_scaled[rows], self.batch_size, shuffle=True, generator=self.generator
        ):
            if len(batch) == 1 and self.batch_size > 1:
                continue  # BatchNorm cannot train on one row; one row per epoch is no loss
            batch = batch.to(self.device)
            with autocast(self.config, self.device):
                output = self.model(batch)
            output = output.float()  # the loss in float32 under any precision
            loss = compute_loss(self.config.loss, output, batch.y)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.config.grad_clip:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.config.grad_clip)
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            loss_sum += loss.detach() * len(batch)
            abs_sum += (point_prediction(output).detach() - batch.y).abs().sum()
            seen += len(batch)
        mean_loss = float(loss_sum) / seen  # one device sync per epoch, not per step
        if not math.isfinite(mean_loss):
            raise FloatingPointError(f"non-finite training loss in epoch {self.epoch + 1}; try a lower learning rate")
        return mean_loss, float(abs_sum) / seen * self.scaler.std

    def _swa_due(self) -> bool:
        if self.swa_model is None or self.epoch <= self.config.swa_start * self.config.epochs:
            return False
        if self.config.scheduler == "cyclic":
            return self.epoch % (2 * self.half_cycle) == 0  # end of a cycle: the LR minimum
        return True

    def _choose_final_weights(self) -> None:
        """Best-epoch weights, or the SWA average where that scores better on val."""
        if self.best_state is not None:
            self.model.load_state_dict(self.best_state)
        self.used_swa = False
        if self.swa_model is None or int(self.swa_model.n_averaged) == 0:
            return
        averaged = self.swa_model.module
        if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in averaged.modules()):
            rows = self.split.train  # BatchNorm statistics of the averaged weights
            update_bn(self.features.batches(rows, self.y_scaled[rows], self.batch_size), averaged, self.device)
        self.swa_val_mae = self._evaluate(averaged, self.split.val)["mae"]
        if self.swa_val_mae < self.best_val_mae:
            self.model.load_state_dict(averaged.state_dict())
            self.used_swa = True

    # --------------------------------------------------------------- inference

    def predict(self, indices: np.ndarray) -> np.ndarray:
        """Predictions for rows ``indices``, original units, from the current (after fit: final) model."""
        return self._predict(self.model, indices)

    def evaluate(self, indices: np.ndarray) -> dict[str, float]:
        """``{"mae", "rmse", "r2"}`` of :meth:`predict` on rows ``indices``."""
        return self._evaluate(self.model, indices)

    def evaluate_best_so_far(self, indices: np.ndarray) -> dict[str, float]:
        """:meth:`evaluate` of the best-val-epoch weights so far, mid-fit; the model in training is untouched.

        For progress reports of long fits (the test rows take no part in any choice of the fit).
        """
        if self.best_state is None:
            raise RuntimeError("no epoch has been validated yet")
        best = copy.deepcopy(self.model)
        best.load_state_dict(self.best_state)
        return self._evaluate(best, indices)

    def _evaluate(self, model: nn.Module, indices: np.ndarray) -> dict[str, float]:
        return regression_metrics(self.targets[np.asarray(indices)], self._predict(model, indices))

    @torch.no_grad()
    def _predict(self, model: nn.Module, indices: np.ndarray) -> np.ndarray:
        model.eval()
        indices = np.asarray(indices)
        # Always in float32, also after bf16 training: a bf16 output keeps 8 significant bits, so
        # rounding alone would move each prediction by up to 0.4% of its (scaled) value, a floor
        # under every reported MAE (e.g. ~25% of a 0.03 eV formation-energy MAE).
        outputs = [
            point_prediction(model(batch.to(self.device))).float().cpu()
            for batch in self.features.batches(indices, self.y_scaled[indices], self.batch_size)
        ]
        scaled = torch.cat(outputs).numpy().astype(np.float64) if outputs else np.empty(0)
        return self.scaler.unscale(scaled)

    # ------------------------------------------------------------- checkpoints

    def save_checkpoint(self, directory: Path | str) -> Path:
        """Write everything needed to resume into ``directory/trainer.pt`` (tensors and plain containers)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        state = {
            "format": 1,
            "config": dataclasses.asdict(self.config),
            "epoch": self.epoch,
            "history": self.history,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "swa_model": self.swa_model.state_dict() if self.swa_model is not None else None,
            "best_state": self.best_state,
            "best_val_mae": self.best_val_mae,
            "best_epoch": self.best_epoch,
            "bad_epochs": self.bad_epochs,
            "scaler": dataclasses.asdict(self.scaler),
            "rng": self._rng_state(),
        }
        path = directory / CHECKPOINT_FILE
        partial = path.with_suffix(".partial")
        torch.save(state, partial)
        os.replace(partial, path)  # never leave a half-written checkpoint behind
        return path

    def load_checkpoint(self, source: Path | str) -> None:
        """Restore a :meth:`save_checkpoint` (its directory or file) written with the same config."""
        path = Path(source)
        if path.is_dir():
            path = path / CHECKPOINT_FILE
        state = torch.load(path, map_location="cpu", weights_only=True)
        # A field added to TrainConfig after the checkpoint was written counts as its default.
        defaults = dataclasses.asdict(TrainConfig())
        saved = {k: v for k, v in {**defaults, **state["config"]}.items() if k != "num_threads"}
        mine = {k: v for k, v in dataclasses.asdict(self.config).items() if k != "num_threads"}
        if saved != mine:
            changed = sorted(k for k in mine if saved.get(k) != mine[k])
            raise ValueError(f"checkpoint {path} was written with a different training config: {changed}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state["scheduler"])
        if self.swa_model is not None:
            self.swa_model.load_state_dict(state["swa_model"])
        self.epoch = state["epoch"]
        self.history = list(state["history"])
        best = state["best_state"]
        self.best_state = None if best is None else {k: v.to(self.device) for k, v in best.items()}
        self.best_val_mae, self.best_epoch = state["best_val_mae"], state["best_epoch"]
        self.bad_epochs = state["bad_epochs"]
        self.scaler = TargetScaler(**state["scaler"])
        self.y_scaled = self.scaler.scale(self.targets).astype(np.float32)
        self._set_rng_state(state["rng"])

    def _rng_state(self) -> dict[str, Any]:
        _, keys, pos, has_gauss, cached = np.random.get_state()
        return {
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                      "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": random.getstate(),
            "shuffle": self.generator.get_state(),
        }

    def _set_rng_state(self, rng: dict[str, Any]) -> None:
        torch.set_rng_state(rng["torch"])
        if rng["cuda"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        numpy = rng["numpy"]
        np.random.set_state(("MT19937", numpy["keys"].numpy().astype(np.uint32), numpy["pos"],
                             numpy["has_gauss"], numpy["cached_gaussian"]))
        version, internal, gauss = rng["python"]
        random.setstate((version, tuple(internal), gauss))
        self.generator.set_state(rng["shuffle"])
