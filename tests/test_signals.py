"""Signals sent to a real `videovae reconstruct` leave no temporary file; what a SIGKILL leaves is
removed by the next run, and the old output stays intact until a new one is complete."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from videovae.atomic_write import atomic_output, remove_stale_temps

pytest.importorskip("av")


@pytest.fixture(scope="module")
def long_clip(tmp_path_factory) -> Path:
    from videovae.video_write import VideoWriter

    path = tmp_path_factory.mktemp("signals") / "long.mp4"
    with VideoWriter(path, 25, 96, 64) as writer:
        for _ in range(8):
            writer.write(torch.rand(1, 17, 3, 64, 96) * 2 - 1)
    return path


def temps(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp" in p.name)


def start(folder: Path, clip: Path, ignored: tuple[signal.Signals, ...] = ()) -> subprocess.Popen:
    """The CLI with default signal dispositions (whatever the suite inherited, e.g. from nohup), but `ignored`."""
    cmd = [sys.executable, "-m", "videovae", "reconstruct", str(clip), "-o", str(folder / "out.mp4"),
           "--compare", str(folder / "cmp.mp4"), "-q", "--threads", "1"]

    def dispositions():
        for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT):
            signal.signal(sig, signal.SIG_IGN if sig in ignored else signal.SIG_DFL)

    return subprocess.Popen(cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=dispositions)


def wait_for_temp(proc: subprocess.Popen, folder: Path, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not temps(folder):
        assert proc.poll() is None, f"the run ended before writing: {proc.communicate()}"
        assert time.monotonic() < deadline, "no temporary file appeared"
        time.sleep(0.01)


@pytest.mark.parametrize("point", ["start", "writing", "later"])
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGHUP, signal.SIGINT])
def test_a_signal_mid_run_leaves_no_temporary_file(long_clip, tmp_path, sig, point):
    """start: while Python starts and loads (no temporary yet); writing: as soon as the first
    temporary file exists; later: a second into writing."""
    proc = start(tmp_path, long_clip)
    if point == "start":
        time.sleep(0.2)
    else:
        wait_for_temp(proc, tmp_path)
        if point == "later":
            time.sleep(1.0)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    if point == "start" and sig == signal.SIGINT and proc.returncode == 0:
        # A KeyboardInterrupt raised while torch is being imported is sometimes swallowed there
        # (seen 2 times in 6); the run then completes: whole outputs, still no temporary file.
        assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.mp4", "out.mp4"]
        return
    assert proc.returncode in (128 + sig, -sig), stderr  # -sig: killed before videovae's handler was set
    if proc.returncode == 128 + sig:
        assert f"interrupted ({signal.Signals(sig).name})" in stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary, no partial output


def test_under_nohup_a_hangup_does_not_stop_the_run(long_clip, tmp_path):
    proc = start(tmp_path, long_clip, ignored=(signal.SIGHUP,))  # what `nohup videovae ...` starts with
    wait_for_temp(proc, tmp_path)
    proc.send_signal(signal.SIGHUP)
    _, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cmp.mp4", "out.mp4"]


def test_the_run_after_a_sigkill_removes_its_debris_and_the_old_output_stays_intact(long_clip, tmp_path):
    old = tmp_path / "out.mp4"
    old.write_bytes(b"the previous output")
    proc = start(tmp_path, long_clip)
    wait_for_temp(proc, tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    debris = temps(tmp_path)
    assert debris and old.read_bytes() == b"the previous output"
    done = subprocess.run([sys.executable, "-m", "videovae", "reconstruct", str(long_clip), "-o", str(old),
                           "--max-frames", "1", "-q"], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert not any(name in temps(tmp_path) for name in debris if name.startswith(".out.mp4."))
    assert old.read_bytes() != b"the previous output"


def test_only_this_programs_dead_processes_temporaries_are_removed(tmp_path):
    target = tmp_path / "x.bin"
    with atomic_output(target) as live:  # this process: alive, kept
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        host = live.name.split(".vv-")[1].split("-")[0]
        stale = tmp_path / f".x.bin.vv-{host}-{dead.pid}-0123abcd.tmp.bin"
        other_host = tmp_path / f".x.bin.vv-zzzzzz-{dead.pid}-0123abcd.tmp.bin"
        foreign = tmp_path / f".x.bin.{dead.pid}.tmp.bin"  # not a name videovae makes
        for path in (stale, other_host, foreign):
            path.write_bytes(b"debris")
        assert remove_stale_temps(target) == [stale]
        assert live.exists() and other_host.exists() and foreign.exists()
        live.write_bytes(b"new")
    assert target.read_bytes() == b"new"
