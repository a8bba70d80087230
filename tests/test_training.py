"""`videovae train` and its parts: the camera clip generator, the losses, the schedule, resumable
atomic state (a SIGKILLed run resumes to the same weights), decoder-only fine-tuning, and the final
checkpoint that `videovae.load` reads."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import videovae
from videovae.camera import CameraPath, photo_tensor, random_path, render
from videovae.errors import StateError, UsageError
from videovae.families.stepvideo import StepVideoVAE
from videovae.metrics import ssim
from videovae.training.clips import PhotoClips, clip_generator, make_batch
from videovae.training.configs import named_config
from videovae.training.losses import kl_loss, ssim_loss
from videovae.training.trainer import MODEL_NAME, STATE_NAME, TrainOptions, TrainRun, WeightAverage

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--config", "tiny-v2", "--shape", "9x16x16", "--eval-shape", "9x32x32", "--batch", "1", "--warmup", "2"]


def _photo(h=60, w=80) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
    return torch.stack([x, y, (x * y).sin()])  # (3, h, w) in [-1, 1]


class NoiseClips:
    def clip(self, generator, frames, height, width):
        return torch.rand(frames, 3, height, width, generator=generator) * 2 - 1


# -- camera ---------------------------------------------------------------------------------------


def test_camera_clip_is_deterministic_by_seed_and_moves():
    photo = _photo()
    a = render(photo, random_path(torch.Generator().manual_seed(3)), 9, 32, 48)
    b = render(photo, random_path(torch.Generator().manual_seed(3)), 9, 32, 48)
    c = render(photo, random_path(torch.Generator().manual_seed(4)), 9, 32, 48)
    assert a.shape == (9, 3, 32, 48) and a.dtype == torch.float32
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.min() >= -1 and a.max() <= 1
    assert (a[0] - a[-1]).abs().mean() > 1e-3  # the camera moved


def test_still_camera_films_the_whole_photo():
    """No pan, no turn, full zoom, unit gain: every frame is the photo resized to the clip."""
    photo = _photo(64, 96)
    still = CameraPath(((0.5, 0.5), (0.5, 0.5)), (1.0, 1.0), (0.0, 0.0), (1.0, 1.0))
    clip = render(photo, still, 3, 32, 48)
    want = torch.nn.functional.interpolate(photo[None], size=(32, 48), mode="bilinear", antialias=True)[0]
    assert torch.equal(clip[0], clip[2])
    assert (clip[0] - want).abs().max() < 0.02


def test_photo_tensor_handles_gray_and_alpha():
    gray = torch.full((4, 5), 255, dtype=torch.uint8)
    assert torch.equal(photo_tensor(gray), torch.ones(3, 4, 5))
    rgba = torch.zeros(2, 2, 4, dtype=torch.uint8)  # transparent black over white -> white
    assert torch.equal(photo_tensor(rgba), torch.ones(3, 2, 2))
    with pytest.raises(videovae.VideoVAEError, match=r"\(H, W, 3\)"):
        photo_tensor(torch.zeros(2, 2, 5, dtype=torch.uint8))


def test_batches_are_fixed_by_seed_and_step_whatever_the_batch_size():
    source = PhotoClips({"a": _photo(), "b": -_photo()})
    two = make_batch(source, seed=1, step=5, batch=2, shape=(5, 16, 16))
    three = make_batch(source, seed=1, step=5, batch=3, shape=(5, 16, 16))
    assert two.shape == (2, 5, 3, 16, 16)
    assert torch.equal(two, three[:2])
    assert not torch.equal(two, make_batch(source, seed=1, step=6, batch=2, shape=(5, 16, 16)))


def test_training_clips_are_windows_of_a_larger_view():
    """A 16x16 clip filmed directly squeezes the whole photograph into 16 pixels; a window of a view
    filmed 4x larger carries the detail (and the motion) per pixel of a 64-pixel video."""
    def detail(view_scale):
        batch = make_batch(PhotoClips({"p": _photo()}, view_scale=view_scale), seed=0, step=0, batch=8, shape=(5, 16, 16))
        return (batch.diff(dim=-1).abs().mean() + batch.diff(dim=-2).abs().mean()).item()

    assert detail((1.0, 1.0)) > 2.5 * detail((4.0, 4.0))
    assert make_batch(PhotoClips({"p": _photo()}), seed=0, step=0, batch=2, shape=(5, 16, 16)).shape == (2, 5, 3, 16, 16)
    with pytest.raises(videovae.VideoVAEError, match=r"1 <= low <= high"):
        PhotoClips({"p": _photo()}, view_scale=(0.5, 2.0))


def test_held_out_photos_are_never_training_photos():
    from videovae.training import photos

    assert not set(photos.HELD_OUT) & set(photos.TRAIN_COLOUR + photos.TRAIN_GRAY)
    pytest.importorskip("skimage")
    astronaut = photos.load_photo("astronaut")
    assert astronaut.shape == (3, 512, 512) and -1 <= astronaut.min() < astronaut.max() <= 1


# -- losses and options ---------------------------------------------------------------------------


def test_ssim_loss_is_one_minus_the_metric():
    torch.manual_seed(0)
    a = torch.rand(1, 2, 3, 24, 24) * 2 - 1
    b = (a + 0.2 * torch.randn_like(a)).clamp(-1, 1)
    assert abs((1 - ssim_loss(b, a)).item() - ssim(a, b).mean().item()) < 1e-5


def test_kl_is_zero_for_the_prior_and_positive_elsewhere():
    assert kl_loss(torch.zeros(4), torch.zeros(4)).item() == 0
    assert kl_loss(torch.ones(4), torch.full((4,), -2.0)).item() > 0


def test_schedule_warms_up_then_decays_to_the_final_factor():
    o = TrainOptions(steps=100, warmup=10, final_lr=0.1)
    assert o.learning_rate_factor(0) == pytest.approx(0.1)
    assert o.learning_rate_factor(9) == pytest.approx(1.0)
    assert o.learning_rate_factor(10) == pytest.approx(1.0)
    assert o.learning_rate_factor(55) == pytest.approx(0.55)
    assert o.learning_rate_factor(100) == pytest.approx(0.1)


def test_train_command_defaults_are_the_api_defaults():
    from videovae.cli import build_parser

    args = build_parser().parse_args(["train", "--out", "run"])
    defaults = TrainOptions()
    for name in ("steps", "batch", "lr", "warmup", "kl_weight", "ssim_weight", "ema", "seed", "eval_every",
                 "eval_shape", "checkpoint_every"):
        assert getattr(args, name) == getattr(defaults, name), name
    assert args.shape is None and defaults.shapes == ((17, 24, 24),)  # whole 17-frame chunks (README: Training)


@pytest.mark.parametrize("kwargs, message", [
    (dict(steps=0), "steps must be at least 1"),
    (dict(lr=0.0), "lr must be positive"),
    (dict(shapes=()), "at least one clip shape"),
    (dict(ema=1.0), r"ema must be in \[0, 1\)"),
])
def test_bad_options_name_the_problem(kwargs, message):
    with pytest.raises(UsageError, match=message):
        TrainOptions(**kwargs)


@pytest.mark.parametrize("shape, message", [((8, 16, 16), r"1 \+ 8 k frames"), ((9, 24, 16), "multiple of 16")])
def test_clip_shapes_that_are_not_one_chunk_are_refused(tmp_path, shape, message):
    model = StepVideoVAE(named_config("tiny-v2"))
    with pytest.raises(UsageError, match=message):
        TrainRun(model, NoiseClips(), tmp_path, TrainOptions(shapes=(shape,), eval_shape=(9, 16, 16)))


# -- runs -----------------------------------------------------------------------------------------


def _options(**kwargs) -> TrainOptions:
    base = dict(steps=4, batch=1, shapes=((9, 16, 16),), warmup=1, eval_every=2, eval_clips=1,
                eval_shape=(9, 32, 32), checkpoint_every=2)
    return TrainOptions(**{**base, **kwargs})


def test_training_lowers_the_loss_and_writes_a_loadable_checkpoint(tmp_path):
    torch.manual_seed(0)
    clip = make_batch(PhotoClips({"p": _photo()}), seed=0, step=0, batch=1, shape=(9, 16, 16))

    class OneClip:
        def clip(self, generator, frames, height, width):
            return clip[0]

    run = TrainRun(StepVideoVAE(named_config("tiny-v2")), OneClip(), tmp_path, _options(steps=30, lr=3e-3),
                   eval_source=OneClip(), progress=False)
    history = run.train()
    losses = [row["loss"] for row in history["losses"]]
    assert losses[-1] < 0.7 * losses[0]
    assert [e["step"] for e in history["evals"]] == list(range(2, 31, 2))
    vae = videovae.load(tmp_path / MODEL_NAME)
    saved, raw = vae.model.state_dict(), run.model.state_dict()
    for name, tensor in run.ema.average.items():  # the file holds the weight average, not the last step's
        assert torch.equal(saved[name], tensor), name
    assert not torch.equal(saved["decoder.conv_out.conv.weight"], raw["decoder.conv_out.conv.weight"])
    meta = json.loads(_metadata(tmp_path / MODEL_NAME)["videovae_training"])
    assert meta["steps"] == 30 and meta["final_eval"]["step"] == 30


def test_without_ema_the_last_weights_are_saved(tmp_path):
    torch.manual_seed(0)
    run = TrainRun(StepVideoVAE(named_config("tiny-v2")), PhotoClips({"p": _photo()}), tmp_path,
                   _options(steps=3, ema=0.0), progress=False)
    run.train()
    saved = videovae.load(tmp_path / MODEL_NAME).model.state_dict()
    for name, tensor in run.model.state_dict().items():
        assert torch.equal(saved[name], tensor), name


def test_weight_average_ramps_up_from_the_first_weights():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    average = WeightAverage(model, decay=0.999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    average.update(model, 1)  # decay min(0.999, 2 / 11): mostly the new weights
    assert torch.allclose(average.average["weight"], torch.full((1, 2), 9 / 11))


def _metadata(path: Path) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def test_decoder_only_leaves_the_encoder_untouched(tmp_path):
    torch.manual_seed(0)
    model = StepVideoVAE(named_config("tiny-v2"))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    TrainRun(model, NoiseClips(), tmp_path, _options(steps=2, decoder_only=True), progress=False).train()
    changed = {n for n, p in model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert changed and all(n.startswith("decoder.") for n in changed)
    assert all(n in changed for n in before if n.startswith("decoder."))


def test_resuming_with_other_options_is_refused(tmp_path):
    TrainRun(StepVideoVAE(named_config("tiny-v2")), NoiseClips(), tmp_path, _options(steps=2, lr=1e-3), progress=False).train()
    run = TrainRun(StepVideoVAE(named_config("tiny-v2")), NoiseClips(), tmp_path, _options(steps=2, lr=1e-4), progress=False)
    with pytest.raises(StateError, match=r"lr 0\.001 -> 0\.0001.*same options"):
        run.train()


def test_a_damaged_state_file_is_reported_not_trained_over(tmp_path):
    (tmp_path / STATE_NAME).write_bytes(b"not a checkpoint")
    run = TrainRun(StepVideoVAE(named_config("tiny-v2")), NoiseClips(), tmp_path, _options(), progress=False)
    with pytest.raises(StateError, match="delete it to start over"):
        run.train()


def _train_command(out: Path, steps: int) -> list[str]:
    return [sys.executable, "-m", "videovae", "--threads", "1", "train", *TINY, "--out", str(out),
            "--steps", str(steps), "--checkpoint-every", "2", "--eval-every", "4"]


def _checkpointed_step(out: Path) -> int:
    path = out / STATE_NAME
    if not path.exists():
        return 0
    return int(torch.load(path, weights_only=True)["step"])


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkilled_run_resumes_to_the_weights_of_an_uninterrupted_one(tmp_path):
    pytest.importorskip("skimage")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    steps = 12
    whole = subprocess.run(_train_command(tmp_path / "whole", steps), env=env, capture_output=True, text=True, timeout=600)
    assert whole.returncode == 0, whole.stderr

    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen(_train_command(killed_dir, steps), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while _checkpointed_step(killed_dir) < 2 and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = _checkpointed_step(killed_dir)
    assert 2 <= killed_at < steps, "the run was not killed mid-way"
    assert not (killed_dir / MODEL_NAME).exists()

    resumed = subprocess.run(_train_command(killed_dir, steps), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert f"resuming {killed_dir} at step {killed_at}/{steps}" in resumed.stderr
    assert f"trained {steps} steps" in resumed.stdout
    history = json.loads((killed_dir / "history.json").read_text())
    assert history["losses"][-1]["step"] == steps
    got, want = load_file(killed_dir / MODEL_NAME), load_file(tmp_path / "whole" / MODEL_NAME)
    assert got.keys() == want.keys()
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-5, msg=name)
    assert not list(killed_dir.glob(".*.tmp"))


def test_train_on_a_folder_of_videos(tmp_path):
    from videovae.files import write_sample_video

    clips = tmp_path / "clips"
    clips.mkdir()
    write_sample_video(clips / "a.mp4", frames=12, height=40, width=48)
    from videovae.training.clips import VideoFolderClips

    source = VideoFolderClips(clips, min_frames=9)
    clip = source.clip(clip_generator(0, 0, 0), 9, 16, 32)
    assert clip.shape == (9, 3, 16, 32) and clip.min() >= -1 and clip.max() <= 1
    with pytest.raises(UsageError, match="no video of at least 20 frames"):
        VideoFolderClips(clips, min_frames=20)


def test_a_run_stopped_at_a_step_goes_on_to_the_weights_of_one_run(tmp_path):
    """--stop-at splits one schedule over sessions: stopping at 2 of 4 and rerunning gives the
    weights of a run trained to 4 in one go."""
    def model():
        torch.manual_seed(0)
        return StepVideoVAE(named_config("tiny-v2"))

    whole = TrainRun(model(), NoiseClips(), tmp_path / "whole", _options(), progress=False)
    whole.train()
    first = TrainRun(model(), NoiseClips(), tmp_path / "split", _options(), progress=False)
    first.train(stop_at=2)
    assert first.step == 2 and (tmp_path / "split" / MODEL_NAME).exists()
    second = TrainRun(model(), NoiseClips(), tmp_path / "split", _options(), progress=False, log=lambda m: None)
    second.train()
    assert second.step == 4
    for name, tensor in whole.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], tensor, rtol=1e-5, atol=1e-6, msg=name)
