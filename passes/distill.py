"""Knowledge distillation: a student learns from a teacher's temperature-softened outputs.

Hinton's loss (KL between softened distributions, scaled by T^2) mixed with the hard-label loss
by alpha when labels exist; optional FitNets-style hints between named layers through a learned
adapter. Offline mode stores the teacher's outputs in a cache keyed by teacher and data, so later
runs and other students never call the teacher. Under torchrun it trains with
DistributedDataParallel (gloo on CPU, nccl on GPU: ``distill_world``).
"""

from __future__ import annotations

import copy
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgeport.artifacts import TorchArtifact
from edgeport.data import DataSource
from edgeport.errors import DataError, UsageError, first_line
from edgeport.passes.context import PassContext
from edgeport.passes.distill_targets import (
    first_output, make_adapters, resolve_hints, run_teacher, teacher_targets, trainable_with_adapters,
)
from edgeport.passes.distill_world import DEVICES, World
from edgeport.passes.registry import PassInfo

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("onecycle", "cosine", "constant")
LOSSES = ("auto", "kl", "bce", "mse")


@dataclass(frozen=True)
class DistillConfig:
    temperature: float = 4.0
    alpha: float = 0.9  # weight of the soft (teacher) loss; 1 - alpha goes to the hard labels
    loss: str = "auto"  # from the teacher's outputs: kl for class scores, bce for independent probabilities, mse otherwise
    epochs: int = 30
    batch_size: int = 64
    lr: float = 3e-3
    weight_decay: float = 1e-4
    optimizer: str = "adamw"
    schedule: str = "onecycle"
    val_fraction: float = 0.1
    patience: int = 8  # epochs without validation improvement before stopping; 0 never stops early
    hints: tuple[str, ...] = ()  # "teacher.layer:student.layer" pairs
    hint_weight: float = 1.0
    offline: bool = False
    resume: bool = False
    seed: int = 0
    device: str = "auto"  # auto: cuda:LOCAL_RANK where CUDA is, else cpu

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise UsageError(f"temperature {self.temperature} must be positive", fix="use e.g. 4.0")
        if not 0.0 <= self.alpha <= 1.0:
            raise UsageError(f"alpha {self.alpha} is not within [0, 1]", fix="use e.g. 0.9 (the weight of the teacher's soft targets)")
        for name, allowed in (("optimizer", OPTIMIZERS), ("schedule", SCHEDULES), ("loss", LOSSES), ("device", DEVICES)):
            if getattr(self, name) not in allowed:
                raise UsageError(f"{name} '{getattr(self, name)}' is unknown", fix=f"use one of {', '.join(allowed)}")
        if self.epochs < 1 or self.batch_size < 1:
            raise UsageError("epochs and batch_size must be at least 1", fix="use e.g. --epochs 30")
        if not 0.0 <= self.val_fraction < 1.0:
            raise UsageError(f"val_fraction {self.val_fraction} is not within [0, 1)", fix="use e.g. 0.1")
        for pair in self.hints:
            if pair.count(":") != 1 or not all(pair.split(":")):
                raise UsageError(f"hint '{pair}' is not TEACHER_LAYER:STUDENT_LAYER", fix="write e.g. features.3:features.3")


def distill(student: TorchArtifact, config: DistillConfig, *, teacher: TorchArtifact, data: DataSource, ctx: PassContext,
            val_data: DataSource | None = None, teacher_key: str | None = None) -> TorchArtifact:
    """Train ``student`` against ``teacher`` on ``data``; returns the best student (by validation)."""
    import torch
    import torch.distributed as dist

    started = time.perf_counter()
    choice, notes = config.device, []
    if choice != "cpu" and student.program is not None and torch.cuda.is_available():
        # A torch.export graph can hold device constants that .to() does not move, and the student
        # must come back to the CPU for export: it trains where it was made, and so does every rank.
        choice = "cpu"
        notes.append("the student is a torch.export program (.pt2), whose graph can hold device constants: it trains on the CPU")
    world = World.setup(choice)
    device = world.device
    torch.manual_seed(config.seed)
    model = copy.deepcopy(student.module).to(device)
    teacher_module = teacher.module.eval()
    if device != "cpu" and teacher.program is not None:  # the same for a .pt2 teacher: a moved copy
        from torch.export.passes import move_to_device_pass

        teacher_module = move_to_device_pass(teacher.program, device).module().eval()
    ctx.work_dir.mkdir(parents=True, exist_ok=True)
    inputs, labels = load_tensors(data, student.inputs)
    n = next(iter(inputs.values())).shape[0]
    hint_pairs = resolve_hints(config.hints, teacher_module, model)

    generator = torch.Generator().manual_seed(config.seed)
    if val_data is not None:
        val_inputs, val_labels = load_tensors(val_data, student.inputs)
        train_index = torch.arange(n)
    else:
        order = torch.randperm(n, generator=generator)
        n_val = max(1, int(round(n * config.val_fraction))) if config.val_fraction > 0 and n > 1 else 0
        train_index, val_index = order[n_val:], order[:n_val]
        if n_val == 0:  # nothing held out: early stopping then watches the training set itself
            val_index = train_index
        val_inputs = {k: v[val_index] for k, v in inputs.items()}
        val_labels = labels[val_index] if labels is not None else None
    targets, teacher_calls, cache_state = teacher_targets(teacher_module, inputs, hint_pairs, config, ctx, teacher_key, device)
    _check_outputs_match(targets["logits"], model, inputs, device)
    if val_data is not None:
        val_targets, val_calls = run_teacher(teacher_module, val_inputs, hint_pairs, device)
        teacher_calls += val_calls
    else:
        val_targets = {k: v[val_index] for k, v in targets.items()}

    adapters = make_adapters(model, teacher_module, hint_pairs, {k: v[:2].to(device) for k, v in inputs.items()}, targets)
    trainable = trainable_with_adapters(model, adapters, hint_pairs).to(device)
    wrapped = world.wrap(trainable)
    params = list(trainable.parameters())  # student and adapters
    optimizer = (torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay) if config.optimizer == "adamw"
                 else torch.optim.SGD(params, lr=config.lr, momentum=0.9, weight_decay=config.weight_decay, nesterov=True))
    # every rank takes the same number of samples, so the same number of batches: a rank with one
    # batch more would wait forever in DDP's all-reduce (DistributedSampler's drop_last)
    local_count = len(train_index) // world.size
    steps_per_epoch = max(1, (local_count + config.batch_size - 1) // config.batch_size)
    scheduler = _scheduler(optimizer, config, steps_per_epoch)
    loss_kind, loss_rule = (config.loss, "given in the config") if config.loss != "auto" else choose_loss(targets["logits"])

    checkpoint_dir = ctx.checkpoint_dir or ctx.work_dir
    checkpoint_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = checkpoint_dir / f"distill-{sum(r.name == 'distill' for r in ctx.records)}.pt"
    start_epoch, best, best_state, history, stale = 0, float("inf"), copy.deepcopy(model.state_dict()), [], 0
    if config.resume and checkpoint.is_file():
        state = _load_checkpoint(checkpoint, device)
        trainable.load_state_dict(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, best, best_state, history, stale = state["epoch"], state["best"], state["best_state"], state["history"], state["stale"]
        notes.append(f"resumed from the checkpoint written after epoch {start_epoch}")
    resumed_after = start_epoch  # 0: trained from the start
    if world.rank == 0:
        ctx.progress.start("distilling", total=config.epochs)
        ctx.progress.advance(start_epoch)
    for epoch in range(start_epoch, config.epochs):
        wrapped.train()
        teacher_module.eval()
        shuffled = train_index[torch.randperm(len(train_index), generator=torch.Generator().manual_seed(config.seed + epoch))]
        local = shuffled[: local_count * world.size][world.rank :: world.size]
        epoch_loss = 0.0
        for start in range(0, len(local), config.batch_size):
            idx = local[start : start + config.batch_size]  # the data stays on the CPU; each batch goes to the device
            student_out, projected = wrapped(*[inputs[s.name][idx].to(device) for s in student.inputs])
            loss = _loss(student_out, {k: v[idx].to(device) for k, v in targets.items()},
                         labels[idx].to(device) if labels is not None else None, projected, hint_pairs, config, loss_kind)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            epoch_loss += loss.item() * len(idx)
        val = _evaluate(model, val_inputs, val_labels, val_targets, config, loss_kind, student.inputs, device)
        train_loss = epoch_loss / max(1, len(local))
        if world.size > 1:
            tensor = torch.tensor([train_loss], device=device)  # nccl reduces CUDA tensors only
            dist.all_reduce(tensor)
            train_loss = float(tensor) / world.size
        history.append({"epoch": epoch + 1, "train_loss": round(train_loss, 5), **{k: round(v, 5) for k, v in val.items()}})
        score = _score(val)
        if score < best - 1e-6:
            best, best_state, stale = score, copy.deepcopy(model.state_dict()), 0
        else:
            stale += 1
        if world.rank == 0:
            temp = checkpoint.with_suffix(".tmp")
            torch.save({"trainable": trainable.state_dict(), "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                        "epoch": epoch + 1, "best": best, "best_state": best_state, "history": history, "stale": stale}, temp)
            os.replace(temp, checkpoint)  # an interrupted save never leaves a half checkpoint
            ctx.progress.advance(1)
        if config.patience and stale >= config.patience:
            break
    if world.rank == 0:
        ctx.progress.finish()
    model.load_state_dict(best_state)
    model.eval().cpu()  # export and fidelity checks run on the CPU
    result = TorchArtifact(model, student.inputs, student.source, lineage=(*student.lineage, "distill"))
    ctx.record_pass(
        PASS, config, started,
        metrics={
            "epochs_run": len(history), "best_epoch": max(range(len(history)), key=lambda i: -_score(history[i])) + 1 if history else 0,
            "loss": loss_kind, "loss_rule": loss_rule, "train_samples": len(train_index), "val_samples": next(iter(val_inputs.values())).shape[0],
            "teacher_calls": teacher_calls, "teacher_outputs": cache_state, "world_size": world.size, "device": device,
            "hints": list(config.hints), "history": history, "resumed_after_epoch": resumed_after,
        },
        notes=notes,
    )
    return result


def _load_checkpoint(path: Path, device: str = "cpu") -> dict[str, Any]:
    import torch

    try:
        state = torch.load(path, map_location=device, weights_only=True)  # tensors and plain values only: no code runs
        if not isinstance(state, dict) or "trainable" not in state:
            raise ValueError("not an edgeport distillation checkpoint")
        return state
    except Exception as exc:
        raise UsageError(f"checkpoint '{path}' cannot be resumed from ({type(exc).__name__}: {first_line(exc)[:160]})",
                         fix="delete it to start over, or drop --resume") from exc


def _score(entry: dict) -> float:
    """Lower is better: validation accuracy when labels exist, with the loss against the teacher
    breaking ties (a small validation split makes equal accuracies common); else that loss."""
    if "val_accuracy" in entry:
        return -entry["val_accuracy"] + 1e-3 * min(entry["val_loss"], 1.0)
    return entry["val_loss"]


def load_tensors(source: DataSource, specs) -> tuple[dict[str, Any], Any]:
    """The whole training set as tensors (training shuffles every epoch, so it is held in memory)."""
    import torch

    parts: dict[str, list[np.ndarray]] = {s.name: [] for s in specs}
    label_parts: list[np.ndarray] = []
    for batch in source.batches(specs, batch_size=256):
        for name in parts:
            parts[name].append(batch.inputs[name])
        if batch.labels is not None:
            label_parts.append(np.asarray(batch.labels))
    if not parts[specs[0].name]:
        raise DataError(f"{source.role} data '{source.description}' yields no samples", fix="give at least one sample")
    try:
        tensors = {n: torch.from_numpy(np.concatenate(p)) for n, p in parts.items()}
    except ValueError as exc:
        raise DataError(f"{source.role} samples differ in shape ({exc})", fix="pad samples to one shape for distillation") from exc
    labels = torch.from_numpy(np.concatenate(label_parts)).long() if label_parts else None
    if labels is not None and labels.shape[0] != next(iter(tensors.values())).shape[0]:
        raise DataError(f"{source.role} data has labels for only some samples", fix="give one label per sample, or none")
    return tensors, labels


def _check_outputs_match(teacher_logits, student, inputs, device: str = "cpu") -> None:
    """Compare with the teacher's (possibly stored) outputs: the teacher itself need not run."""
    import torch

    with torch.no_grad():
        s_out = first_output(student(*[v[:2].to(device) for v in inputs.values()]))
    t_shape = (2, *teacher_logits.shape[1:])
    if t_shape != tuple(s_out.shape):
        raise UsageError(
            f"the student's output shape {tuple(s_out.shape)} does not match the teacher's {t_shape}",
            fix="give the student the teacher's output layout (e.g. the same number of classes)",
        )


def choose_loss(teacher_out: Any) -> tuple[str, str]:
    """The distillation loss the output's kind calls for, and the rule that chose it. Softened KL
    suits class scores only; a sigmoid's independent probabilities (multi-label heads, pitch bins,
    masks) are matched with binary cross-entropy, anything else with MSE."""
    import torch

    out = teacher_out.detach().float()
    if out.ndim != 2:
        return "mse", f"outputs of rank {out.ndim} are not class scores: mean squared error"
    within_unit = bool(out.min() >= 0 and out.max() <= 1)
    sums_to_one = within_unit and bool(torch.allclose(out.sum(-1), torch.ones(out.shape[0]), atol=1e-3))
    if within_unit and not sums_to_one:
        return "bce", "outputs lie in [0, 1] without summing to 1 per sample (independent probabilities): binary cross-entropy"
    if out.shape[1] > 1 and not sums_to_one:
        return "kl", "rank-2 scores over several classes: KL divergence of temperature-softened distributions"
    return "mse", ("outputs already sum to 1 (softmax probabilities, not logits): mean squared error" if sums_to_one
                   else "a single unbounded output (regression): mean squared error")


def _loss(student_out, targets, labels, projected_feats, hint_pairs, config, loss_kind):
    from torch.nn import functional as F

    teacher_out = targets["logits"]
    if loss_kind == "kl":
        t = config.temperature
        soft = F.kl_div(F.log_softmax(student_out / t, dim=-1), F.softmax(teacher_out / t, dim=-1), reduction="batchmean") * t * t
        loss = config.alpha * soft + (1 - config.alpha) * F.cross_entropy(student_out, labels) if labels is not None else soft
    elif loss_kind == "bce":
        loss = F.binary_cross_entropy(student_out.clamp(1e-6, 1 - 1e-6), teacher_out.clamp(0, 1))
    else:
        loss = F.mse_loss(student_out, teacher_out)
    for t_name, s_name in hint_pairs:
        projected = projected_feats[s_name]
        target = targets[f"hint:{t_name}"]
        if projected.ndim == 4 and projected.shape[-2:] != target.shape[-2:]:
            projected = F.adaptive_avg_pool2d(projected, target.shape[-2:])
        loss = loss + config.hint_weight * F.mse_loss(projected, target)
    return loss


def _evaluate(model, inputs, labels, targets, config, loss_kind, specs, device: str = "cpu", batch_size: int = 512) -> dict[str, float]:
    """Validation loss (the training objective) and accuracy when labels exist: the early-stopping score."""
    import torch
    from torch.nn import functional as F

    model.eval()
    n = next(iter(inputs.values())).shape[0]
    loss_sum, correct = 0.0, 0
    with torch.no_grad():
        for start in range(0, n, batch_size):
            out = first_output(model(*[inputs[s.name][start : start + batch_size].to(device) for s in specs]))
            teacher_out = targets["logits"][start : start + batch_size].to(device)
            if loss_kind == "kl":  # the training objective itself, so alpha = 0 never consults the teacher
                t = config.temperature
                loss = F.kl_div(F.log_softmax(out / t, -1), F.softmax(teacher_out / t, -1), reduction="sum") * t * t
                if labels is not None:
                    hard = F.cross_entropy(out, labels[start : start + batch_size].to(device), reduction="sum")
                    loss = config.alpha * loss + (1 - config.alpha) * hard
            elif loss_kind == "bce":
                loss = F.binary_cross_entropy(out.clamp(1e-6, 1 - 1e-6), teacher_out.clamp(0, 1), reduction="sum") / max(1, out[0].numel())
            else:
                loss = F.mse_loss(out, teacher_out, reduction="sum") / max(1, out[0].numel())
            loss_sum += float(loss)
            if labels is not None and out.ndim == 2:
                correct += int((out.argmax(1) == labels[start : start + batch_size].to(device)).sum())
    result = {"val_loss": loss_sum / max(1, n)}
    if labels is not None and out.ndim == 2:
        result["val_accuracy"] = correct / max(1, n)
    return result


def _scheduler(optimizer, config: DistillConfig, steps_per_epoch: int):
    import torch

    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        return torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    if config.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)


def distill_step(artifact: TorchArtifact, config: DistillConfig, *, ctx: PassContext) -> TorchArtifact:
    """The pipeline's form: the teacher and the training data come from the context."""
    if ctx.teacher is None or ctx.training is None:
        raise UsageError("a distillation step needs a teacher and training data", fix="pass teacher= and train_data= to edgeport.export")
    return distill(artifact, config, teacher=ctx.teacher, data=ctx.training, ctx=ctx)


PASS = PassInfo(DistillConfig, distill_step, name="distill", label="distilling", kind="torch", step="distill")
