"""The prepared scripts run start to finish: benchmarks/gpu_check.py on tiny shapes (the GPU run has
one try, so the script must not rot) and benchmarks/bench_dtypes.py."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)


def test_gpu_check_smoke_runs_every_step_and_saves_its_table(tmp_path):
    done = run("gpu_check.py", "--smoke", "--out-dir", str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_check_smoke.json").read_text())
    assert report["tests"]["exit"] == 0 and "skipped" in report["tests"]["summary"]  # no GPU: the cuda tests skip
    assert {(r["path"], r["op"]) for r in report["vae"]} == {(p, o) for p in ("videovae", "plain") for o in ("encode", "decode")}
    assert all(r["psnr_vs_plain_db"] > 60 for r in report["vae"])  # the fast paths agree with the plain one
    assert len(report["group_norm"]) == 2 and all(r["fused_ms"] > 0 for r in report["group_norm"])
    budget = report["budget"]  # the shipped v1 at its own minimum budget: tiles, counted within that budget
    assert budget["plan"].startswith("tiles of") and budget["finite"] and budget["output"] == [1, 17, 3, 64, 64]
    assert budget["counted_gb"] <= float(budget["budget"].removesuffix("GiB"))
    text = (tmp_path / "gpu_check_smoke.md").read_text()
    assert "| decode |" in text and "under a memory budget" in text


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU: gpu_check runs for real")
def test_gpu_check_without_a_gpu_says_so():
    done = run("gpu_check.py", timeout=60)
    assert done.returncode == 2 and "no CUDA device" in done.stderr


def test_gpu_check_reads_the_pytest_result_past_a_plugin_warning():
    spec = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    gpu_check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gpu_check)
    lines = ["sss.. [100%]", "3 passed, 12 skipped, 2 warnings in 4.10s",
             "/site-packages/pytest_benchmark/logger.py:44: PytestBenchmarkWarning: Benchmarks are automatically disabled",
             "  warner(PytestBenchmarkWarning(text))"]
    assert gpu_check.pytest_summary(lines) == "3 passed, 12 skipped, 2 warnings in 4.10s"
    assert gpu_check.pytest_summary(["Segmentation fault"]) == "Segmentation fault"
    assert gpu_check.pytest_summary([]) == "(no output)"


def test_bench_dtypes_reports_what_each_request_computes_in(tmp_path):
    out = tmp_path / "dtypes.json"
    done = run("bench_dtypes.py", "--dtypes", "fp32", "bf16", "--repeats", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = {r["asked"]: r for r in report["rows"]}
    assert rows["fp32"]["computes_in"] == "fp32"
    assert rows["bf16"]["computes_in"] == ("bf16" if report["probe"]["bf16"] else "fp32")
    assert len(rows["bf16"]["warnings"]) == (0 if report["probe"]["bf16"] else 1)


def test_bench_tiling_writes_its_table_and_json(tmp_path):
    out = tmp_path / "tiling"
    done = run("bench_tiling.py", "--models", "v2", "--sizes", "32", "--tile", "16", "--op", "decode",
               "--threads", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = json.loads(out.with_suffix(".json").read_text())
    assert [(r["model"], r["op"], r["size"]) for r in rows] == [("v2", "decode", 32)]
    assert rows[0]["exact"]["tiles"] == 4 and rows[0]["untiled"]["peak_mib"] > 0
    assert rows[0]["blend"]["peak_mib"] > 0 and rows[0]["blend"]["shape"] == rows[0]["exact"]["shape"]
    assert rows[0]["streamed"]["shape"] == rows[0]["exact"]["shape"] and rows[0]["best_ratio"] <= rows[0]["memory_ratio"]
    assert "| v2 | decode | 32x32 |" in out.with_suffix(".md").read_text()


def test_bench_tiling_no_blend_skips_the_blended_runs(tmp_path):
    out = tmp_path / "tiling"
    done = run("bench_tiling.py", "--models", "v1", "--sizes", "32", "--tile", "16", "--op", "encode",
               "--threads", "1", "--no-blend", "--out", str(out))
    assert done.returncode == 0, done.stderr
    (row,) = json.loads(out.with_suffix(".json").read_text())
    assert row["blend"] == {} and row["exact"]["tiles"] == 4 and "memory_ratio" in row


def test_bench_tiling_budget_runs_report_the_plan_and_the_measured_peak(tmp_path):
    out = tmp_path / "tiling"
    done = run("bench_tiling.py", "--models", "v1", "--sizes", "32", "--op", "encode", "--threads", "1",
               "--max-memory", "1", "--out", str(out))
    assert done.returncode == 0, done.stderr
    rows = json.loads((tmp_path / "tiling_budgets.json").read_text())
    assert [(r["model"], r["op"], r["factor"]) for r in rows] == [("v1", "encode", 1.0)]
    for run_ in (rows[0]["default_malloc"], rows[0]["fixed_mmap"]):
        assert run_["planned_mib"] <= rows[0]["budget_mib"] and run_["peak_mib"] > 0


def test_bench_tiling_counted_mode_needs_no_run(tmp_path):
    out = tmp_path / "tiling"
    done = run("bench_tiling.py", "--counted", "--models", "svd", "--sizes", "64", "--tile", "32", "--op", "decode",
               "--out", str(out), timeout=120)
    assert done.returncode == 0, done.stderr
    table = (tmp_path / "tiling_counted.md").read_text()
    assert "| svd | decode | 64x64 |" in table and "Counted on the meta device" in table
