"""The shared trainer: determinism, learning, checkpoints, early stopping, metrics."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score
from torch import nn

from harness.data.dataset import Split
from harness.featurize import CompositionTokens
from harness.models import get_model
from harness.paths import data_dir
from harness.training import TrainConfig, Trainer, regression_metrics, seed_everything
from harness.training.trainer import CHECKPOINT_FILE

TINY = dict(d_model=32, n_layers=1, heads=2, dim_feedforward=64, out_hidden=(32, 16))
CRABNET_RECIPE = get_model("crabnet").train_defaults


@pytest.fixture(scope="module")
def data() -> tuple[CompositionTokens, np.ndarray]:
    """First 160 rows of matbench_expt_gap (band gaps in eV), as element tokens."""
    root = data_dir()
    path = None if root is None else root / "matbench_v0.1" / "matbench_expt_gap.csv.gz"
    if path is None or not path.is_file():
        pytest.skip("matbench_expt_gap.csv.gz not available")
    frame = pd.read_csv(path).iloc[:160]
    return CompositionTokens.from_formulas(frame["composition"].tolist()), frame["gap expt"].to_numpy()


def split(n_train: int, n_val: int = 32, n_test: int = 32) -> Split:
    order = np.random.default_rng(0).permutation(n_train + n_val + n_test)
    return Split("random", order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :])


def trainer(data, config: dict, rows: Split | None = None, seed: int = 0, **model_params) -> Trainer:
    features, targets = data
    seed_everything(seed)
    spec = get_model("crabnet")
    model = spec.build(spec.make_config(**{**TINY, **model_params}), features.info)
    return Trainer(model, features, targets, rows or split(64), TrainConfig.from_dict(config), device="cpu")


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in h.items() if k != "epoch_seconds"} for h in history]


def test_same_seed_same_history_and_predictions(data) -> None:
    config = {**CRABNET_RECIPE, "epochs": 4, "batch_size": 16, "seed": 3}
    first, second = trainer(data, config), trainer(data, config)
    history = first.fit().history
    assert without_time(history) == without_time(second.fit().history)
    keys = {"epoch", "train_loss", "train_mae", "val_mae", "val_rmse", "val_r2", "lr", "epoch_seconds"}
    assert set(history[0]) == keys
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]
    rows = first.split.test
    assert np.array_equal(first.predict(rows), second.predict(rows))


def test_overfits_32_real_samples(data) -> None:
    config = {**CRABNET_RECIPE, "epochs": 30, "batch_size": 8}
    # No dropout or fraction jitter: this checks that model + trainer can fit, not generalise.
    fit = trainer(data, config, split(32), dropout=0.0, fraction_noise=0.0).fit()
    first, last = fit.history[0], fit.history[-1]
    print(f"train MAE {first['train_mae']:.3f} -> {last['train_mae']:.3f} eV over 30 epochs")
    assert last["train_mae"] < 0.6 * first["train_mae"]
    assert last["train_loss"] < first["train_loss"]


def test_checkpoint_resume_reproduces_the_uninterrupted_fit(data, tmp_path: Path) -> None:
    # Everything with state: Lamb+Lookahead, cyclic LR (2-epoch halves), SWA averaged at epochs 4 and 8.
    config = {**CRABNET_RECIPE, "epochs": 8, "batch_size": 16, "swa_start": 0.25, "patience": 50}
    straight = trainer(data, config)
    expected = straight.fit()

    class Killed(Exception):
        pass

    def save_then_die(metrics: dict, run: Trainer) -> None:
        if metrics["epoch"] == 5:
            run.save_checkpoint(tmp_path)
            raise Killed

    with pytest.raises(Killed):
        trainer(data, config).fit(save_then_die)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 5 and len(state["history"]) == 5
    assert int(state["swa_model"]["n_averaged"]) == 1  # averaged at the end of the epoch-4 cycle

    resumed = trainer(data, config, seed=123)  # different initial weights: the checkpoint must win
    result = resumed.fit(resume_from=tmp_path)
    assert without_time(result.history) == without_time(expected.history)
    assert (result.best_epoch, result.used_swa) == (expected.best_epoch, expected.used_swa)
    assert result.epochs_run == 8
    assert np.array_equal(resumed.predict(resumed.split.test), straight.predict(straight.split.test))

    with pytest.raises(ValueError, match="different training config"):
        trainer(data, {**config, "max_lr": 1e-3}).fit(resume_from=tmp_path)


class Constant(nn.Module):
    """Predicts 0 whatever it is given: the val MAE never improves after epoch 1."""

    def __init__(self) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.zeros(1))

    def forward(self, batch) -> torch.Tensor:
        return torch.zeros(len(batch)) + 0.0 * self.unused


def test_early_stopping_stops_after_patience(data) -> None:
    features, targets = data
    config = TrainConfig(epochs=50, patience=3, batch_size=16)
    run = Trainer(Constant(), features, targets, split(64), config, device="cpu")
    seen = []
    result = run.fit(lambda metrics, t: seen.append((metrics["epoch"], t.will_stop)))
    assert result.stopped_early and result.epochs_run == 4 and result.best_epoch == 1
    assert seen[-1] == (4, True) and not any(stop for _, stop in seen[:-1])


def test_metrics_equal_sklearn(data) -> None:
    run = trainer(data, {"epochs": 3, "batch_size": 16, "optimizer": "adam", "loss": "mae"})
    result = run.fit()
    _, targets = data
    rows = run.split.test
    predicted, truth = run.predict(rows), targets[rows]
    metrics = run.evaluate(rows)
    assert metrics["mae"] == pytest.approx(mean_absolute_error(truth, predicted), rel=1e-12)
    assert metrics["rmse"] == pytest.approx(np.sqrt(mean_squared_error(truth, predicted)), rel=1e-12)
    assert metrics["r2"] == pytest.approx(r2_score(truth, predicted), rel=1e-12)
    assert run.evaluate(run.split.val)["mae"] == pytest.approx(result.best_val_mae, rel=1e-9)  # final model
    constant = np.ones(5)
    assert regression_metrics(constant, constant + 1)["r2"] == r2_score(constant, constant + 1)


def test_batch_size_rule_is_capped_by_training_rows(data) -> None:
    assert trainer(data, {"epochs": 1}, split(64)).batch_size == 64  # CrabNet's minimum 128 > 64 rows
    assert trainer(data, {"epochs": 1, "batch_size": 24}, split(64)).steps_per_epoch == 3


@pytest.mark.parametrize(
    "optimizer, scheduler, loss",
    [
        ("adam", "none", "mse"),
        ("adamw", "cosine", "mae"),
        ("sgd", "cyclic", "mae"),
        ("lamb_lookahead", "cosine", "robust_l1"),
    ],
)
def test_every_recipe_lowers_the_training_loss_and_forms_its_swa_average(
        data, optimizer: str, scheduler: str, loss: str) -> None:
    config = {"epochs": 2, "batch_size": 16, "optimizer": optimizer, "scheduler": scheduler, "loss": loss,
              "lr": 1e-3, "grad_clip": 1.0, "swa": True, "swa_start": 0.0}
    result = trainer(data, config).fit()
    assert result.epochs_run == 2
    first, last = result.history[0]["train_loss"], result.history[-1]["train_loss"]
    assert last < first, f"{optimizer}/{scheduler}/{loss} did not train: loss {first:.4g} -> {last:.4g}"
    # the SWA average of both epochs is formed and scored; the final model is it or the best epoch
    assert np.isfinite(result.swa_val_mae)
    best_epoch = min(h["val_mae"] for h in result.history)
    assert result.best_val_mae == pytest.approx(result.swa_val_mae if result.used_swa else best_epoch)


def test_onecycle_peaks_at_lr_after_30_percent_and_cycles_beta1(data) -> None:
    # ALIGNN's schedule: lr/25 at the start, lr at 30% of the steps, ~0 at the end; Adam's beta1
    # runs opposite (0.95 -> 0.85 at the peak -> 0.95).
    seen = {}

    def record(metrics: dict, t: Trainer) -> None:
        group = t.optimizer.param_groups[0]
        seen[int(metrics["epoch"])] = (group["lr"], group["betas"][0])

    run = trainer(data, {"epochs": 10, "batch_size": 16, "optimizer": "adamw", "scheduler": "onecycle",
                         "lr": 2e-3, "loss": "mse"})
    run.fit(record)
    lrs = {epoch: lr for epoch, (lr, _) in seen.items()}
    assert max(lrs, key=lrs.get) == 3 and lrs[3] == pytest.approx(2e-3, rel=0.02)
    assert lrs[10] < 2e-3 / 100 and lrs[1] < lrs[2] < lrs[3] > lrs[4] > lrs[5]
    assert seen[3][1] == pytest.approx(0.85, abs=0.002) and seen[10][1] == pytest.approx(0.95, abs=1e-3)


def test_checkpoint_from_before_a_new_config_field_still_loads(data, tmp_path: Path) -> None:
    """A field added to TrainConfig later (absent from an older checkpoint) counts as its default;
    a field that really differs is still refused."""
    config = {"epochs": 2, "batch_size": 16}
    first = trainer(data, config)
    first.fit()
    first.save_checkpoint(tmp_path)
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=True)
    del state["config"]["grad_clip"]  # as if written before grad_clip existed (default None)
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    resumed = trainer(data, config)
    resumed.load_checkpoint(tmp_path)
    assert resumed.epoch == 2
    with pytest.raises(ValueError, match="grad_clip"):
        trainer(data, {**config, "grad_clip": 1.0}).load_checkpoint(tmp_path)


def test_best_so_far_scores_the_best_val_epoch_without_disturbing_the_fit(data) -> None:
    # No SWA: the final model is the best val epoch's, so the best-so-far score taken after the last
    # epoch must equal the final evaluation, and taking it mid-fit must not change the fit.
    config = {**CRABNET_RECIPE, "epochs": 5, "batch_size": 16, "swa": False}
    observed, seen = trainer(data, config), {}

    def score(metrics: dict, t: Trainer) -> None:
        seen[int(metrics["epoch"])] = (t.best_epoch, t.evaluate_best_so_far(t.split.test)["mae"])

    fit = observed.fit(score)
    plain = trainer(data, config).fit()
    assert without_time(fit.history) == without_time(plain.history)
    assert seen[5] == (fit.best_epoch, pytest.approx(observed.evaluate(observed.split.test)["mae"]))
    # The best epoch only moves forward and never lies after the epoch that reported it.
    bests = [seen[e][0] for e in sorted(seen)]
    assert bests == sorted(bests) and all(b <= e for e, b in zip(sorted(seen), bests))


def test_precision_is_validated() -> None:
    with pytest.raises(ValueError, match=r"precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        TrainConfig(precision="fp16")


def test_bf16_crabnet_learns_and_predicts_like_fp32(data) -> None:
    """Mixed precision on an attention model (softmax, LayerNorm, fractional encoding): CrabNet
    overfits as in fp32; predictions are float32, and bf16 inference would be within 5% of the
    targets' spread of them."""
    config = {**CRABNET_RECIPE, "epochs": 30, "batch_size": 8, "precision": "bf16"}
    fit_bf16 = trainer(data, config, split(32), dropout=0.0, fraction_noise=0.0)
    history = fit_bf16.fit().history
    first, last = history[0]["train_mae"], history[-1]["train_mae"]
    assert last < 0.6 * first, (first, last)
    rows = fit_bf16.split.train
    prediction = fit_bf16.predict(rows)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        in_bf16 = fit_bf16.predict(rows)
    fit_bf16.config = TrainConfig.from_dict({**config, "precision": "fp32"})
    assert np.array_equal(fit_bf16.predict(rows), prediction)
    spread = np.abs(data[1][rows] - data[1][rows].mean()).mean()
    gap = np.abs(in_bf16 - prediction).max()
    print(f"train MAE {first:.3f} -> {last:.3f} eV; max |bf16 - fp32 inference| {gap:.4f} eV")
    assert 0 < gap < 0.05 * spread


def test_bf16_on_a_cpu_without_bf16_instructions_warns(data, monkeypatch) -> None:
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", lambda: False)
    with pytest.warns(RuntimeWarning, match="CPU without bf16 instructions.*use --precision fp32"):
        trainer(data, {**CRABNET_RECIPE, "epochs": 1, "precision": "bf16"})
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        trainer(data, {**CRABNET_RECIPE, "epochs": 1})  # fp32: nothing to warn about


def test_adam_optimizers_use_the_fused_kernel_and_match_the_unfused_step() -> None:
    from harness.training.trainer import build_optimizer

    for name, unfused in (("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW)):
        torch.manual_seed(0)
        a, b = torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)
        b.load_state_dict(a.state_dict())
        before = [p.detach().clone() for p in a.parameters()]
        config = TrainConfig(optimizer=name, lr=1e-2, weight_decay=1e-3)
        fused = build_optimizer(config, list(a.parameters()))
        assert fused.param_groups[0]["fused"] is True  # the ~5x faster step on CPU
        plain = unfused(b.parameters(), lr=1e-2, weight_decay=1e-3)
        x = torch.randn(16, 8)
        for model, opt in ((a, fused), (b, plain)):
            model(x).square().mean().backward()
            opt.step()
        for pa, pb, p0 in zip(a.parameters(), b.parameters(), before):
            assert (pa - p0).abs().max() > 1e-3  # the step moved the parameters (lr 1e-2) ...
            assert torch.allclose(pa, pb, atol=1e-6)  # ... exactly as the unfused step does
    # a device without the kernel gets the default implementation instead of an error
    meta = [torch.nn.Parameter(torch.zeros(2, device="meta"))]
    assert not build_optimizer(TrainConfig(optimizer="adam"), meta).defaults.get("fused")


ALLOCATION_LOOP = """
import resource, sys
import numpy as np, torch
if sys.argv[1] == "trainer":  # a CPU trainer, as every trial and final fit builds one
    from harness.data.dataset import Split
    from harness.featurize import CompositionTokens
    from harness.models import get_model
    from harness.training import TrainConfig, Trainer
    spec = get_model("crabnet")
    features = CompositionTokens.from_formulas(["NaCl", "Fe2O3", "BaTiO3", "MgO"])
    model = spec.build(spec.make_config(d_model=32, n_layers=1, heads=2, dim_feedforward=64), features.info)
    idx = np.arange(4)
    Trainer(model, features, np.arange(4.0), Split("s", idx, idx, idx), TrainConfig.from_dict({"epochs": 1}), "cpu")
x = torch.ones(16_000_000); del x  # 64 MB: above glibc's largest mmap threshold (32 MiB)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(50):
    x = torch.ones(16_000_000); del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="glibc malloc")
def test_a_cpu_trainer_keeps_freed_memory_for_the_next_step() -> None:
    """After a CPU trainer is built, a 64 MB tensor freed and allocated again 50 times (a training
    step's activations) is faulted in a few times at most, not 50 times as under glibc's defaults
    (each block unmapped on free, mapped and faulted in page by page on the next allocation)."""
    import subprocess
    import sys

    pages = 16_000_000 * 4 // 4096
    faults = {how: int(subprocess.run([sys.executable, "-c", ALLOCATION_LOOP, how], capture_output=True, text=True,
                                      check=True).stdout.split()[-1]) for how in ("plain", "trainer")}
    print(f"\nminor page faults over 50 allocations of 64 MB: {faults} ({pages:,} pages each)")
    assert faults["plain"] > 25 * pages
    # 0-4 x pages measured (the kernel faults a kept block in again now and then: 4 x in a full
    # test run on a busy machine); under the defaults 50 x
    assert faults["trainer"] < 10 * pages
