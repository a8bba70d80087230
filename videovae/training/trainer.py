"""The training loop of `videovae train`: L1 + SSIM + a small KL, AdamW with warmup and cosine decay,
an exponential moving average (EMA) of the weights, atomic resumable state, held-out PSNR/SSIM,
and a final safetensors file `videovae.load` reads.

    run = TrainRun(model, PhotoClips(photos("train")), out_dir="runs/demo", options=TrainOptions())
    run.train()      # resumes from runs/demo/train_state.pt if an earlier run left one

The run folder holds
  train_state.pt   model, EMA, optimizer, schedule and step (written atomically: a killed run leaves
                   the previous complete state, never a partial one);
  history.json     the options, the losses and every held-out evaluation (the PSNR curve);
  model.safetensors the trained weights (the EMA ones when ema > 0), in the family's checkpoint
                   layout, at the end.
With batches of two small clips each step's gradient is noisy, and the raw weights jitter around the
minimum at any useful learning rate; the held-out evaluation and the final file use the average.
The batch of every step is drawn from (seed, step), so a resumed run trains on exactly the data an
uninterrupted one would have.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from ..api import VideoVAE
from ..checkpoints import save_model
from ..distribution import LOGVAR_MAX, LOGVAR_MIN
from ..errors import StateError, UsageError
from ..atomic_write import atomic_output
from ..metrics import RunningMetrics
from ..progress import Progress
from .clips import clip_generator, make_batch
from .losses import kl_loss, l1_loss, ssim_loss

STATE_NAME = "train_state.pt"
HISTORY_NAME = "history.json"
MODEL_NAME = "model.safetensors"
EVAL_SEED = 20261201  # held-out clips are drawn from this seed, never from the training seed


@dataclass(frozen=True)
class TrainOptions:
    """Everything that decides what a run computes (a resumed run must match it).

    shapes: clip shapes (T, H, W) used in turn, one per step; T a chunk length of the model.
    lr: AdamW peak learning rate, reached after `warmup` steps, then cosine decay to lr * final_lr.
    kl_weight: weight of the KL term (small: the latent stays close to deterministic).
    decoder_only: freeze the encoder and train the decoder (adapting a VAE to a domain).
    ema: decay of the weights' exponential moving average (0: none; evaluate and save the raw weights).
    """

    steps: int = 4000
    batch: int = 4
    shapes: tuple[tuple[int, int, int], ...] = ((17, 24, 24),)
    lr: float = 3e-4
    warmup: int = 100
    final_lr: float = 0.05
    weight_decay: float = 1e-4
    grad_clip: float = 1.0
    l1_weight: float = 1.0
    ssim_weight: float = 0.2
    kl_weight: float = 1e-6
    decoder_only: bool = False
    ema: float = 0.999
    seed: int = 0
    eval_every: int = 250
    eval_clips: int = 4
    eval_shape: tuple[int, int, int] = (17, 96, 128)
    checkpoint_every: int = 100

    def __post_init__(self):
        for name in ("steps", "batch", "eval_every", "checkpoint_every", "eval_clips"):
            if getattr(self, name) < 1:
                raise UsageError(f"train: {name.replace('_', '-')} must be at least 1; got {getattr(self, name)}")
        if self.lr <= 0 or self.warmup < 0:
            raise UsageError(f"train: lr must be positive and warmup >= 0; got lr={self.lr}, warmup={self.warmup}")
        if not 0 <= self.ema < 1:
            raise UsageError(f"train: ema must be in [0, 1) (0 turns it off); got {self.ema}")
        if not self.shapes:
            raise UsageError("train: give at least one clip shape (T, H, W)")

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists, as stored

    def learning_rate_factor(self, step: int) -> float:
        """The schedule at `step` (0-based), as a factor of lr."""
        if step < self.warmup:
            return (step + 1) / self.warmup
        progress = (step - self.warmup) / max(1, self.steps - self.warmup)
        return self.final_lr + (1 - self.final_lr) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def check_shapes(model: nn.Module, shapes) -> None:
    """Each clip shape must be one chunk the model encodes exactly: the fix in the message."""
    layout = model.frame_layout
    for T, H, W in shapes:
        s = layout.spatial_factor
        if T > layout.frames_per_chunk or (T - 1) % layout.time_factor:
            raise UsageError(
                f"train: clips of {T} frames are not one chunk of this model; use 1 + {layout.time_factor} k "
                f"frames, at most {layout.frames_per_chunk}"
            )
        if H % s or W % s or H < 16 or W < 16:
            raise UsageError(f"train: clip size {W}x{H} must be at least 16x16 and a multiple of {s}")


INITIAL_LOGVAR = -6.0


def narrow_posterior(model: nn.Module, logvar: float = INITIAL_LOGVAR) -> nn.Module:
    """Start a fresh Step-Video encoder with a narrow posterior (std exp(logvar / 2) = 0.05): its
    conv_out's logvar biases set to `logvar`. From the default init (logvar ~ 0, std ~ 1) the
    sampled latents are mostly noise and the first thousand steps are spent learning to shrink it."""
    bias = model.encoder.conv_out.conv.bias
    with torch.no_grad():
        bias[bias.shape[0] // 2 :] = logvar
    return model


class TrainRun:
    """One training run into `out_dir`; see the module docstring."""

    def __init__(self, model: nn.Module, source, out_dir: str | Path, options: TrainOptions, *,
                 eval_source=None, device: str | torch.device = "cpu", progress: bool = True, log=print):
        check_shapes(model, options.shapes + (options.eval_shape,))
        self.device = torch.device(device)
        self.model = model.to(self.device).float()
        self.source = source
        self.eval_source = eval_source
        self.out = Path(out_dir)
        self.options = options
        self.progress = progress
        self.log = log
        self.model.requires_grad_(True)
        if options.decoder_only:
            self.model.encoder.requires_grad_(False)
        self.trained = [p for p in self.model.parameters() if p.requires_grad]
        decay = [p for p in self.trained if p.ndim > 1]
        no_decay = [p for p in self.trained if p.ndim <= 1]
        self.optimizer = torch.optim.AdamW(
            [{"params": decay, "weight_decay": options.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            lr=options.lr, betas=(0.9, 0.99),
        )
        self.schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer, options.learning_rate_factor)
        self.ema = WeightAverage(self.model, options.ema) if options.ema > 0 else None
        self.step = 0
        self.history: dict = {"options": options.to_dict(), "losses": [], "evals": [], "wall_seconds": 0.0}

    # -- state -----------------------------------------------------------------------------------

    @property
    def state_path(self) -> Path:
        return self.out / STATE_NAME

    def save_state(self) -> None:
        state = {
            "step": self.step,
            "options": self.options.to_dict(),
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else {},
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
            "history": json.dumps(self.history),
        }
        with atomic_output(self.state_path, suffix=".pt") as tmp:
            torch.save(state, tmp)
        self._write_history()

    def resume(self) -> bool:
        """Load `train_state.pt` if there is one; False when starting fresh."""
        if not self.state_path.exists():
            return False
        try:
            state = torch.load(self.state_path, map_location=self.device, weights_only=True)
        except Exception as exc:  # written atomically, so this is damage from outside, not a partial write
            raise StateError(f"{self.state_path} cannot be read ({type(exc).__name__}: {exc}); delete it to start over") from None
        if state["options"] != self.options.to_dict():
            stored, wanted = state["options"], self.options.to_dict()
            differ = ", ".join(f"{k} {stored.get(k)!r} -> {wanted[k]!r}" for k in wanted if stored.get(k) != wanted[k])
            raise StateError(
                f"{self.out} holds a run with other options ({differ}); rerun with the same options to resume, "
                "or give a new --out"
            )
        self.model.load_state_dict(state["model"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.schedule.load_state_dict(state["schedule"])
        self.step = int(state["step"])
        self.history = json.loads(state["history"])
        return True

    def _write_history(self) -> None:
        with atomic_output(self.out / HISTORY_NAME) as tmp:
            tmp.write_text(json.dumps(self.history, indent=1) + "\n")

    # -- one step --------------------------------------------------------------------------------

    def _autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def train_step(self, video: Tensor) -> dict[str, float]:
        """One optimisation step on video: (B, T, 3, H, W) in [-1, 1]. Returns its losses."""
        o = self.options
        x = video.to(self.device).transpose(1, 2)  # (B, 3, T, H, W): the families' layout
        with self._autocast():
            moments = self.model.encode_chunk(x)  # (B, 2z, T_lat, h, w)
            mean, logvar = moments.float().chunk(2, dim=1)
            noise = torch.randn(mean.shape, generator=clip_generator(o.seed, self.step, -1)).to(mean.device)
            z = mean + torch.exp(0.5 * logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)) * noise
            reconstruction = self.model.decode_chunk(z.to(moments.dtype))
        l1 = l1_loss(reconstruction, x)
        ssim = ssim_loss(reconstruction.transpose(1, 2), video.to(self.device))
        kl = kl_loss(mean, logvar)
        loss = o.l1_weight * l1 + o.ssim_weight * ssim + o.kl_weight * kl
        if not torch.isfinite(loss):
            raise StateError(f"train: the loss is {loss.item()} at step {self.step}; lower --lr or resume from the last checkpoint")
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trained, o.grad_clip)
        self.optimizer.step()
        self.schedule.step()
        if self.ema is not None:
            self.ema.update(self.model, self.step + 1)
        return {"loss": loss.item(), "l1": l1.item(), "ssim": 1 - ssim.item(), "kl": kl.item(), "grad_norm": float(grad_norm)}

    @contextlib.contextmanager
    def _averaged(self):
        """The model holds the EMA weights inside (the raw ones are restored on the way out)."""
        if self.ema is None:
            yield
            return
        raw = {k: v.clone() for k, v in self.model.state_dict().items()}
        self.ema.copy_to(self.model)
        try:
            yield
        finally:
            self.model.load_state_dict(raw)

    # -- evaluation ------------------------------------------------------------------------------

    def evaluate(self) -> dict[str, float] | None:
        """Mean PSNR/SSIM of the deterministic reconstruction (posterior mean) of the held-out clips."""
        if self.eval_source is None:
            return None
        o = self.options
        vae = VideoVAE(self.model)
        metrics = RunningMetrics()
        with self._averaged(), torch.no_grad():
            for i in range(o.eval_clips):
                clip = self.eval_source.clip(clip_generator(EVAL_SEED, 0, i), *o.eval_shape)[None]  # (1, T, 3, H, W)
                metrics.update(clip, vae.reconstruct(clip.to(self.device)).float().cpu())
        return {"psnr": metrics.mean_psnr, "ssim": metrics.mean_ssim}

    # -- the loop --------------------------------------------------------------------------------

    def train(self, stop_at: int | None = None) -> dict:
        """Train to `options.steps`, or stop at step `stop_at` of that schedule (a run split over
        sessions; rerunning without it goes on to the end), resuming if possible; write
        model.safetensors of the last step; returns the history."""
        o = self.options
        end = o.steps if stop_at is None else min(stop_at, o.steps)
        if end < 1:
            raise UsageError(f"train: --stop-at must be at least 1; got {stop_at}")
        self.out.mkdir(parents=True, exist_ok=True)
        resumed = self.resume()
        if resumed:
            self.log(f"resuming {self.out} at step {self.step}/{o.steps}")
        started = time.monotonic()
        wall_before = self.history["wall_seconds"]
        bar = Progress(end, label="train", unit="steps", rate_unit="steps/s", initial=self.step,
                       enabled=self.progress, log_every=0.02)  # a log line every 2% when not a terminal
        window: list[dict[str, float]] = []
        with bar:
            while self.step < end:
                shape = tuple(o.shapes[self.step % len(o.shapes)])
                video = make_batch(self.source, seed=o.seed, step=self.step, batch=o.batch, shape=shape)
                losses = self.train_step(video)
                self.step += 1
                window.append(losses)
                bar.postfix = f"loss {losses['loss']:.4f}  l1 {losses['l1']:.4f}  ssim {losses['ssim']:.3f}"
                bar.update(1)
                if self.step % 10 == 0 or self.step == end:
                    self.history["losses"].append({"step": self.step, **_mean(window)})
                    window = []
                if self.step % o.eval_every == 0 or self.step == end:
                    result = self.evaluate()
                    if result is not None:
                        self.history["evals"].append({"step": self.step, **result})
                        bar.write(f"step {self.step}: held-out PSNR {result['psnr']:.2f} dB, SSIM {result['ssim']:.4f}")
                if self.step % o.checkpoint_every == 0 or self.step == end:
                    self.history["wall_seconds"] = wall_before + time.monotonic() - started
                    self.save_state()
        self.history["wall_seconds"] = wall_before + time.monotonic() - started
        self._write_history()
        final = self.history["evals"][-1] if self.history["evals"] else {}
        with self._averaged():
            save_model(self.model, self.out / MODEL_NAME, metadata={
                "videovae_training": json.dumps({"options": o.to_dict(), "steps": self.step, "final_eval": final}),
            })
        return self.history


class WeightAverage:
    """An exponential moving average of a model's floating-point state, in float32.

    The decay ramps up as min(decay, (1 + n) / (10 + n)) after n updates, so that the average is not
    held back by the random initial weights of a run from scratch."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.average = {k: v.detach().float().clone() for k, v in model.state_dict().items() if v.is_floating_point()}

    @torch.no_grad()
    def update(self, model: nn.Module, updates: int) -> None:
        d = min(self.decay, (1 + updates) / (10 + updates))
        for k, v in model.state_dict().items():
            if k in self.average:
                self.average[k].lerp_(v.detach().float(), 1 - d)

    def copy_to(self, model: nn.Module) -> None:
        state = model.state_dict()
        model.load_state_dict({k: self.average[k].to(v.dtype) if k in self.average else v for k, v in state.items()})

    def state_dict(self) -> dict[str, Tensor]:
        return dict(self.average)

    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if state.keys() != self.average.keys():
            raise StateError("the saved run has no weight average for this model; delete its train_state.pt to start over")
        self.average = {k: v.float().clone() for k, v in state.items()}


def _mean(rows: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]} if rows else {}
