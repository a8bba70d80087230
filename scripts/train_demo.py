"""Train the shipped demo model and register it: the one command that reproduces `videovae_weights/`.

    python scripts/train_demo.py            # 80-110 minutes on 2 CPU cores (see the README); rerun to resume

1. `videovae --threads 2 train --config demo-v1 --out runs/demo --stop-at 4000` (the defaults of
   `videovae train`: a 4000-step schedule at lr 3e-4, batch 4 of 17x24x24 clips filmed over
   scikit-image's training photographs), the whole schedule, as the shipped model was.
   Rerunning resumes from the last checkpoint; a finished run is not trained again.
2. `videovae convert` to float16 (half the size; videovae.load computes in float32 from it).
3. Held-out quality of the float16 file: the trainer's evaluation clips (astronaut and coffee, never
   trained on); the acceptance check (`scripts/acceptance.py`: 40 random camera moves over them, as
   17x96x128 files through `videovae reconstruct`); and `videovae reconstruct` of the demo's camera
   move squeezed into 17x96x128 (three times the demo's motion per frame: the hardest clip we score).
4. The entry `stepvideo_v1_demo` of `videovae_weights/registry.json`: data, steps, wall time, final losses,
   held-out PSNR/SSIM, sha256.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NAME = "stepvideo_v1_demo"
FILE = f"{NAME}.safetensors"
SCHEDULE = 4000      # `videovae train`'s default --steps: the learning-rate schedule's length
SHIPPED_STEP = 4000  # the shipped model ran the whole schedule


def videovae(*args: str) -> None:
    subprocess.run([sys.executable, "-m", "videovae", *args], check=True, cwd=ROOT)  # this checkout's videovae


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "demo", help="run folder (default runs/demo)")
    parser.add_argument("--threads", default="2")
    parser.add_argument("--stop-at", default=str(SHIPPED_STEP),
                        help=f"step of the {SCHEDULE}-step schedule to stop at (default {SHIPPED_STEP}: the shipped model)")
    args = parser.parse_args()

    import torch  # before the training, not after it: an install that cannot run this script fails now

    import videovae as vv
    from videovae.checkpoints import file_sha256
    from videovae.files import write_sample_video
    from videovae.metrics import RunningMetrics
    from videovae.training.clips import VIEW_SCALE, PhotoClips, clip_generator
    from videovae.training.photos import HELD_OUT, TRAIN_COLOUR, TRAIN_GRAY, photos
    from videovae.training.trainer import EVAL_SEED

    if Path(vv.__file__).resolve().parents[1] != ROOT:
        sys.exit(f"train_demo: videovae imports from {Path(vv.__file__).parent}, not this checkout ({ROOT}); "
                 f"run `pip install -e \".[train]\"` in {ROOT} first")

    videovae("--threads", args.threads, "train", "--config", "demo-v1", "--out", str(args.out), "--stop-at", args.stop_at)
    shipped = ROOT / "videovae_weights" / FILE
    videovae("convert", str(args.out / "model.safetensors"), "-o", str(shipped), "--dtype", "fp16")

    history = json.loads((args.out / "history.json").read_text())
    options = history["options"]
    vae = vv.load(shipped)
    held_out = PhotoClips(photos("held_out"), augment=False)
    metrics = RunningMetrics()
    with torch.no_grad():
        for i in range(options["eval_clips"]):
            clip = held_out.clip(clip_generator(EVAL_SEED, 0, i), *options["eval_shape"])[None]
            metrics.update(clip, vae.reconstruct(clip))
    with tempfile.TemporaryDirectory() as tmp:
        src = write_sample_video(Path(tmp) / "in.mp4", 17, 96, 128)
        videovae("-q", "reconstruct", str(src), "-o", str(Path(tmp) / "out.mp4"), "--checkpoint", str(shipped),
                 "--metrics-json", str(Path(tmp) / "m.json"))
        cli = json.loads((Path(tmp) / "m.json").read_text())["metrics"]
        subprocess.run([sys.executable, str(ROOT / "scripts" / "acceptance.py"), "--checkpoint", str(shipped),
                        "--threads", args.threads, "--json", str(Path(tmp) / "acceptance.json")], check=True, cwd=ROOT)
        acceptance = json.loads((Path(tmp) / "acceptance.json").read_text())["summary"]

    registry_path = ROOT / "videovae_weights" / "registry.json"
    registry = json.loads(registry_path.read_text())
    last = history["losses"][-1]
    registry[NAME] = {
        "file": FILE,
        "family": "stepvideo",
        "version": 1,
        "sha256": file_sha256(shipped),
        "source": "trained by scripts/train_demo.py: Step-Video v1 blocks, 3 levels (4x spatial, 2x temporal), widths 64-96, z=32 "
                  "(videovae.training.configs 'demo-v1'), stored in float16",
        "shipped": True,
        "trained": {
            "data": f"videovae.camera clips (crops of views filmed {VIEW_SCALE[0]:g}-{VIEW_SCALE[1]:g}x larger) over skimage.data photographs: "
                    f"{', '.join(TRAIN_COLOUR + TRAIN_GRAY)}; "
                    f"held out: {', '.join(HELD_OUT)}",
            "command": f"videovae --threads {args.threads} train --config demo-v1 --out runs/demo --stop-at {args.stop_at}",
            "steps": int(args.stop_at),
            "schedule_steps": options["steps"],
            "batch": options["batch"],
            "clip_shapes": options["shapes"],
            "wall_seconds": round(history["wall_seconds"], 1),
            "cpu": _cpu(),
            "final_losses": {k: round(v, 5) for k, v in last.items() if k != "step"},
            "held_out": {"clips": f"{options['eval_clips']} x {'x'.join(map(str, options['eval_shape']))} (T x H x W)",
                         "psnr": round(metrics.mean_psnr, 3), "ssim": round(metrics.mean_ssim, 4)},
            "acceptance": acceptance,
            "demo_camera_17x96x128": {"clip": "write_sample_video(17, 96, 128): the demo's whole camera move in 17 frames, "
                                              "H.264, through `videovae reconstruct`",
                                      "psnr": round(cli["mean_psnr"], 3), "ssim": round(cli["mean_ssim"], 4)},
            "held_out_curve": [{"step": e["step"], "psnr": round(e["psnr"], 3), "ssim": round(e["ssim"], 4)}
                               for e in history["evals"]],
        },
    }
    registry_path.write_text(json.dumps(registry, indent=2) + "\n")
    for key in ("held_out", "acceptance", "demo_camera_17x96x128"):
        print(key, json.dumps(registry[NAME]["trained"][key]))
    return 0


def _cpu() -> str:
    import torch

    name = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                 if line.startswith("model name")), "unknown") if Path("/proc/cpuinfo").exists() else "unknown"
    return f"{name}, torch {torch.__version__}, {torch.backends.cpu.get_cpu_capability()}"


if __name__ == "__main__":
    sys.exit(main())
