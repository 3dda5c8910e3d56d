"""One explicit training loop for every model: AdamW, warm-up + cosine LR, DDP, checkpoints, exact resume.

A checkpoint folder ``<out>/checkpoint`` holds ``model.safetensors``, ``optimizer.safetensors``
(AdamW moments), ``rng_rank<r>.safetensors`` (torch and data RNG states of each rank) and
``state.json`` (step, param groups); it is written to a temporary folder and renamed, so a
``kill -9`` loses at most one interval. ``log.jsonl`` gets one line per ``log_every`` steps and
``loss.png`` is redrawn at each checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from ldp_med.config import LoopConfig
from ldp_med.errors import InputError
from ldp_med.training.distributed import DistInfo, barrier

BatchFn = Callable[[torch.Generator, int], dict]  # (generator, step) -> batch
LossFn = Callable[[torch.nn.Module, dict], tuple[torch.Tensor, dict]]


def lr_factor(step: int, cfg: LoopConfig) -> float:
    """Linear warm-up over ``cfg.warmup`` steps, then cosine decay to ``cfg.min_lr_ratio``."""
    if step < cfg.warmup:
        return (step + 1) / cfg.warmup
    progress = min(1.0, (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup))
    return cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict, dict]:
    sd = opt.state_dict()
    tensors = {f"state.{i}.{k}": v for i, st in sd["state"].items() for k, v in st.items() if torch.is_tensor(v)}
    return tensors, {"param_groups": sd["param_groups"], "state_keys": {str(i): list(st) for i, st in sd["state"].items()}}


def _restore_optimizer(opt: torch.optim.Optimizer, tensors: dict, meta: dict) -> None:
    state = {int(i): {k: tensors[f"state.{i}.{k}"] for k in keys} for i, keys in meta["state_keys"].items()}
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


def params_digest(model: torch.nn.Module) -> str:
    """SHA-256 over all parameters (to check that DDP ranks hold identical weights)."""
    h = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def recover_checkpoint(out: Path) -> None:
    """Settle what a ``kill -9`` inside :meth:`Trainer.save_checkpoint` can leave in ``out``.

    Killed while ``.checkpoint.tmp`` was written: ``checkpoint/`` is intact and the partial folder is
    dropped. Killed between the two renames (``checkpoint/`` missing, ``.checkpoint.old`` present):
    the new folder was complete before the first rename, so it becomes ``checkpoint/``. Killed while
    ``.checkpoint.old`` was removed: it is removed now. Either way at most one interval is lost.
    """
    ckpt, tmp, old = out / "checkpoint", out / ".checkpoint.tmp", out / ".checkpoint.old"
    if not ckpt.exists() and old.exists():
        os.replace(tmp if (tmp / "state.json").is_file() else old, ckpt)
    for leftover in (tmp, old):
        if leftover.exists():
            shutil.rmtree(leftover)


def truncate_log(log: Path, step: int) -> None:
    """Drop the rows of ``log.jsonl`` after ``step`` (written after the checkpoint a resume starts from)."""
    if not log.is_file():
        return
    rows = log.read_text().splitlines(keepends=True)
    keep = []
    for row in rows:
        try:
            if json.loads(row)["step"] <= step:
                keep.append(row)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill
    if len(keep) != len(rows):
        tmp = log.with_name(f".{log.name}.tmp")
        tmp.write_text("".join(keep))
        os.replace(tmp, log)


class Trainer:
    """Runs ``cfg.steps`` optimisation steps of ``loss_fn(model, batch_fn(gen, step))`` with checkpoints.

    Args:
        model: the network to train (unwrapped); wrapped in DDP when ``info.enabled``.
        batch_fn: ``(generator, step) -> batch``; the generator is seeded per rank, the step lets a
            sampler change phase (e.g. whole volumes at the end of VAE training).
        loss_fn: ``(model, batch) -> (loss, logs)``.
        out_dir: where ``checkpoint/``, ``log.jsonl`` and ``loss.png`` go.
    """

    def __init__(self, model: torch.nn.Module, batch_fn: BatchFn, loss_fn: LossFn, cfg: LoopConfig,
                 out_dir: str | os.PathLike, info: DistInfo, progress: bool = True):
        self.model = model.to(info.device)
        self.cfg, self.info, self.out = cfg, info, Path(out_dir)
        self.batch_fn, self.loss_fn, self.progress = batch_fn, loss_fn, progress
        self.wrapped = DistributedDataParallel(self.model) if info.enabled else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay,
                                     betas=(0.9, cfg.beta2))
        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, lambda s: lr_factor(s, cfg))
        self.data_gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + info.rank)
        torch.manual_seed(cfg.seed + 7919 * info.rank)
        self.step = 0

    # -- checkpoints -------------------------------------------------------------------------
    @property
    def ckpt_dir(self) -> Path:
        return self.out / "checkpoint"

    def save_checkpoint(self) -> None:
        """Rank 0 writes model/optimizer/state; every rank writes its RNG states; then rename."""
        tmp = self.out / ".checkpoint.tmp"
        if self.info.is_main:
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
        barrier(self.info)
        save_file({"torch": torch.get_rng_state(), "data": self.data_gen.get_state()}, tmp / f"rng_rank{self.info.rank}.safetensors")
        if self.info.is_main:
            save_file({k: v.detach().contiguous().cpu() for k, v in self.model.state_dict().items()}, tmp / "model.safetensors")
            tensors, meta = _optimizer_tensors(self.opt)
            save_file({k: v.contiguous().cpu() for k, v in tensors.items()}, tmp / "optimizer.safetensors")
            (tmp / "state.json").write_text(json.dumps({"step": self.step, "world_size": self.info.world_size, **meta}))
        barrier(self.info)
        if self.info.is_main:
            old = self.out / ".checkpoint.old"
            if self.ckpt_dir.exists():
                os.replace(self.ckpt_dir, old)
            os.replace(tmp, self.ckpt_dir)
            if old.exists():
                shutil.rmtree(old)
            self.plot_losses()
        barrier(self.info)

    def load_checkpoint(self) -> None:
        """Restore model, optimizer, LR schedule, step and RNG streams from ``checkpoint/``."""
        d = self.ckpt_dir
        if not (d / "state.json").is_file():
            raise InputError(self.out, "--resume given but there is no checkpoint/ to resume from")
        meta = json.loads((d / "state.json").read_text())
        if meta["world_size"] != self.info.world_size:
            raise InputError(d, f"checkpoint was written by {meta['world_size']} process(es), now {self.info.world_size}")
        self.model.load_state_dict(load_file(d / "model.safetensors"))
        _restore_optimizer(self.opt, load_file(d / "optimizer.safetensors"), meta)
        self.step = int(meta["step"])
        if self.info.is_main:
            truncate_log(self.out / "log.jsonl", self.step)
        for group, lr in zip(self.opt.param_groups, self.sched.base_lrs):
            group["lr"] = lr * lr_factor(self.step, self.cfg)
        self.sched.last_epoch = self.step
        rng = load_file(d / f"rng_rank{self.info.rank}.safetensors")
        torch.set_rng_state(rng["torch"])
        self.data_gen.set_state(rng["data"])

    # -- logging -------------------------------------------------------------------------------
    def log(self, row: dict) -> None:
        if self.info.is_main:
            with open(self.out / "log.jsonl", "a") as fh:
                fh.write(json.dumps(row) + "\n")

    def plot_losses(self) -> None:
        from ldp_med.training.plots import plot_log

        plot_log(self.out / "log.jsonl", self.out / "loss.png")

    def _agreed(self, flag: bool) -> bool:
        """True on every rank if it is true on any (so that all ranks stop at the same step)."""
        if not self.info.enabled:
            return flag
        t = torch.tensor([1.0 if flag else 0.0], device=self.info.device)
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.MAX)
        return bool(t.item() > 0)

    @property
    def finished(self) -> bool:
        return self.step >= self.cfg.steps

    # -- the loop --------------------------------------------------------------------------------
    def run(self, resume: bool = False, max_seconds: float | None = None, stop_after: int | None = None) -> torch.nn.Module:
        """Train until ``cfg.steps``; returns the (unwrapped) model.

        Args:
            resume: continue from ``checkpoint/``.
            max_seconds: stop (after writing a checkpoint) once this much wall time has passed,
                so long CPU trainings can run in time-boxed pieces and continue with ``resume``.
            stop_after: stop (after writing a checkpoint) at this step; for tests of resumption.
        """
        self.out.mkdir(parents=True, exist_ok=True)
        if self.info.is_main:
            recover_checkpoint(self.out)
        barrier(self.info)
        if resume:
            self.load_checkpoint()
        self.wrapped.train()
        bar = tqdm(total=self.cfg.steps, initial=self.step, desc="train", disable=not (self.progress and self.info.is_main))
        t0 = time.perf_counter()
        while self.step < self.cfg.steps:
            raw = self.batch_fn(self.data_gen, self.step)
            batch = {k: v.to(self.info.device) if torch.is_tensor(v) else v for k, v in raw.items()}
            with torch.autocast(self.info.device.type, torch.bfloat16, enabled=self.cfg.autocast == "bf16"):
                loss, logs = self.loss_fn(self.wrapped, batch)
            loss = loss.float()
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite loss at step {self.step}")
            self.opt.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
            self.opt.step()
            self.sched.step()
            self.step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.4g}")
            if self.step % self.cfg.log_every == 0 or self.step == self.cfg.steps:
                self.log({"step": self.step, "loss": loss.item(), "lr": self.opt.param_groups[0]["lr"],
                          "seconds": time.perf_counter() - t0, **{k: float(v) for k, v in logs.items()}})
            out_of_time = max_seconds is not None and self._agreed(time.perf_counter() - t0 > max_seconds)
            stop = out_of_time or (stop_after is not None and self.step >= stop_after)
            if self.step % self.cfg.checkpoint_every == 0 or self.step == self.cfg.steps or stop:
                self.save_checkpoint()
            if stop:
                break
        bar.close()
        if self.info.enabled:
            (self.out / f"digest_rank{self.info.rank}.txt").write_text(params_digest(self.model))
        return self.model
