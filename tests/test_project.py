"""The project's own promises: CI runs the README's test command; the package imports cleanly."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def readme_commands():
    lines = (ROOT / "README.md").read_text().splitlines()
    start = lines.index("```bash") + 1
    return lines[start : start + 2]


def test_ci_runs_the_readme_test_command():
    main_job, tests = readme_commands()
    assert "pytest" in tests and "pytest" not in main_job
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert tests in ci


def test_both_readme_commands_install_the_pinned_cpu_torch_first():
    for command in readme_commands():
        assert command.startswith("pip install torch==2.13.0 && ")


def test_importing_has_no_side_effects():
    code = (
        "import os, torch; n = torch.get_num_threads(); before = dict(os.environ); import videovae, videovae.cli; "
        "assert torch.get_num_threads() == n; assert dict(os.environ) == before; print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr


def test_no_top_level_folder_shadows_another_package():
    """Anything run from the repo root has the root on sys.path: a package folder there named like a
    PyPI package (`kernels/` did: transformers 5 imports the PyPI `kernels`) breaks that package in
    every such process. Every package folder at the root is named videovae*."""
    packages = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
    assert packages and all(name.startswith("videovae") for name in packages), packages


def test_diffusers_and_transformers_import_from_the_repo_root():
    code = "import diffusers.models.autoencoders.autoencoder_kl_temporal_decoder, transformers; print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.stdout.strip() == "ok", out.stderr[-2000:]


def test_main_job_runs(tmp_path):
    """`python -m videovae demo` (smaller than its defaults): a sample video, its reconstruction, the
    side-by-side comparison and the metrics, with shapes and PSNR/SSIM printed."""
    import json

    out_dir = tmp_path / "outputs"
    out = subprocess.run(
        [sys.executable, "-m", "videovae", "demo", "--out-dir", str(out_dir), "--frames", "18", "--height", "32", "--width", "48"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in out_dir.iterdir()) == ["compare.mp4", "metrics.json", "reconstruction.mp4", "sample.mp4"]
    assert "sample         " in out.stdout and "(1, 18, 3, 32, 48) (B, T, C, H, W) @ 24 fps" in out.stdout
    assert "latents        (1, 10, 32, 8, 12)  (B, T_lat, z, h, w)" in out.stdout
    assert "reconstruction (1, 18, 3, 32, 48)  (B, T, C, H, W)" in out.stdout
    report = json.loads((out_dir / "metrics.json").read_text())
    assert report["output"]["frames"] == 18 and len(report["per_frame"]) == 18
    assert f"PSNR           {report['metrics']['mean_psnr']:.2f} dB" in out.stdout
    assert f"SSIM           {report['metrics']['mean_ssim']:.4f}" in out.stdout
