"""Atomic file output shared by every writer in videovae (videos, latent files, dataset outputs,
converted checkpoints).

A writer never writes its target directly. It writes a hidden temporary file beside the target
(same folder, so the final rename stays on one filesystem and is atomic) and the temporary file is
renamed over the target only when writing finished without an exception. A crash or an exception
therefore leaves either the old target or the new one, never a half-written file, and no temporary
file behind (the command line turns SIGTERM and SIGHUP into the same clean exit as Ctrl-C). What a
SIGKILL leaves is removed by the next write of the same target, once its process is gone.

    with atomic_output("out/video.mp4") as tmp:   # tmp: out/.video.mp4.vv-<host>-<pid>-<random>.tmp.mp4
        write_everything_to(tmp)
    # out/video.mp4 now exists, complete
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import secrets
import signal
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputPathError

__all__ = ["atomic_output", "check_output_path", "remove_stale_temps"]


def check_output_path(path: str | os.PathLike[str]) -> Path:
    """Check, before any work, that `path` can be created: its folder exists and is writable and
    `path` is not itself a folder. Returns `path` as a `Path`; raises `OutputPathError` naming the
    folder and the fix otherwise."""
    target = Path(path)
    folder = target.parent
    if not folder.exists():
        raise OutputPathError(
            f"cannot write {str(target)!r}: the folder {str(folder)!r} does not exist; create it "
            f"first (mkdir -p {str(folder)!r})"
        )
    if not folder.is_dir():
        raise OutputPathError(
            f"cannot write {str(target)!r}: {str(folder)!r} is not a folder"
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputPathError(
            f"cannot write {str(target)!r}: the folder {str(folder)!r} is not writable; choose "
            "another output folder or fix its permissions"
        )
    if target.is_dir():
        raise OutputPathError(
            f"cannot write {str(target)!r}: it is an existing folder; give a file name"
        )
    return target


def _host_tag() -> str:
    """6 hex digits naming this machine in temporary names (a shared folder may serve several)."""
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:6]


def _temp_prefix(target: Path, pid: int | None = None) -> str:
    """`.<target name>.vv-<host>-<pid>-`: what this machine's process `pid` names its temporaries."""
    return f".{target.name}.vv-{_host_tag()}-{os.getpid() if pid is None else pid}-"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def remove_stale_temps(target: Path) -> list[Path]:
    """Delete the temporary files of `target` that a killed videovae process left (SIGKILL, power
    loss): only names this program makes, only from this machine, only when their process is gone."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.vv-{_host_tag()}-(\d+)-[0-9a-f]{{8}}\.tmp")
    removed = []
    with contextlib.suppress(OSError):
        for entry in os.scandir(target.parent):
            match = pattern.match(entry.name)
            if match and int(match.group(1)) != os.getpid() and not _pid_alive(int(match.group(1))):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(entry.path)
                    removed.append(Path(entry.path))
    return removed


def _reserve_temp_path(target: Path, suffix: str) -> Path:
    """Create an empty, hidden, uniquely named file beside `target` and return its path:
    `<folder>/.<target name>.vv-<host>-<pid>-<random>.tmp<suffix>` (the host and pid let a later
    run recognise it as debris once its process is gone). Created with O_EXCL (never clobbers) and
    mode 0o666 filtered by the umask, so the renamed result has the same permissions as a plain open()."""
    while True:
        temp = target.with_name(f"{_temp_prefix(target)}{secrets.token_hex(4)}.tmp{suffix}")
        try:
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise OutputPathError(
                f"cannot write {str(target)!r}: creating a temporary file in "
                f"{str(target.parent)!r} failed ({exc.strerror or exc}); check the folder's "
                "permissions and free space"
            ) from exc
        os.close(fd)
        return temp


def _fsync_file(path: Path) -> None:
    """Flush `path`'s data to disk so the rename cannot publish a file whose bytes are not there."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike[str], suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on a clean exit rename it over `path`, on an exception
    delete it (and re-raise), so `path` is only ever absent, old, or complete.

    `suffix` is the temporary file's extension (default: `path`'s own, e.g. ".mp4"), so tools that
    pick a format from the extension (muxers) still do. The folder is checked before the block runs
    (`OutputPathError` if missing, not writable, or `path` is a folder). The temporary file exists
    (empty) when the block starts; the block may overwrite or replace it.
    """
    target = check_output_path(path)
    remove_stale_temps(target)
    temp = None
    try:
        with _signals_deferred():  # a SIGTERM between creating the file and knowing its name would leak it
            temp = _reserve_temp_path(target, target.suffix if suffix is None else suffix)
        mode = temp.stat().st_mode & 0o777  # what a plain open() would give (0o666 less the umask)
        yield temp
        if not temp.exists():
            raise OutputPathError(
                f"writing {str(target)!r} failed: its temporary file {str(temp)!r} vanished "
                "before it could be renamed"
            )
        os.chmod(temp, mode)  # writers that recreate the file (safetensors: 0o600) keep normal permissions
        _fsync_file(temp)
        os.replace(temp, target)
    except BaseException:
        if temp is not None:
            with contextlib.suppress(FileNotFoundError):
                temp.unlink()
        raise


@contextlib.contextmanager
def _signals_deferred() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP held back inside (delivered, and their Python handlers run, on
    exit); a no-op off the main thread or where the OS has no signal masks."""
    if not hasattr(signal, "pthread_sigmask") or threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM, signal.SIGHUP})
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
