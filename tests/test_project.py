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


def test_main_job_runs(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "videovae", "demo", "--frames", "18", "--height", "16", "--width", "16"],
        capture_output=True, text=True, cwd=ROOT,
    )
    assert out.returncode == 0, out.stderr
    assert "decoded     (1, 18, 3, 16, 16)" in out.stdout
