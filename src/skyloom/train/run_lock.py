"""One run per run directory: an exclusive lock on RUN_DIR/.lock, held for the run's whole life.

Two `skyloom train` (or `sft`, `skymath`, `demo`) on one `--out` (a requeued Slurm job while the old one still
runs, two launches at the same instant) would interleave metrics.jsonl, overwrite config.yaml under the other's
weights and share one `.tmp-step_*`. Every command that owns a run directory takes this lock through
`hold_run_dir` before it touches anything in the directory (`--overwrite` included: `clear_run_dir` empties it
around the lock file). It is `fcntl.flock`, so the kernel releases it on any exit, `kill -9` included; the file
holds the holder's pid, host, start time and command line:

* a second run on a locked directory is refused (`skyloom: error:` naming the holder, exit 2);
* a file still naming a holder while nobody holds the lock means that holder died without releasing it
  (kill -9, a node crash): it is reported as stale and taken over;
* a clean exit empties the file (the file itself stays: deleting it would let two runs lock two different files).

On a file system without flock support (some Lustre or NFS mounts) nothing can be enforced: a warning says so
and the run goes on.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
import socket
import sys
import time
from pathlib import Path

from skyloom.config import ConfigError

LOCK_FILE = ".lock"
_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class RunDirLocked(ConfigError):
    """Another live process holds the run directory; the message names it."""

    def __init__(self, message: str):
        super().__init__("", message)


def describe_holder(text: str) -> str:
    """'pid 123 on host gpu7 since 2024-05-01 12:00:00 (skyloom train …)' from the lock file's JSON."""
    if not text.strip():
        return "a process that is just starting"
    try:
        info = json.loads(text)
    except json.JSONDecodeError:
        return f"unreadable holder record {text.strip()[:80]!r}"
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(info.get("started", 0)))
    return f"pid {info.get('pid')} on host {info.get('host')} since {since} ({info.get('command', '?')})"


class RunLock:
    """`with RunLock(run_dir) as lock:` — `lock.note` says what happened (a stale lock taken over, no lock support)."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_FILE
        self.fd: int | None = None
        self.note: str | None = None

    def acquire(self) -> str | None:
        """Take the lock (RunDirLocked if another process holds it); returns a note for the console, if any."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise RunDirLocked(
                f"{self.run_dir} is in use by another run: {describe_holder(holder)}; wait for it to "
                "end (or stop it), or choose another --out"
            ) from None
        except OSError as err:
            if err.errno not in _UNSUPPORTED:
                os.close(fd)
                raise
            self.note = (
                f"warning: cannot lock {self.path} ({err.strerror}: the file system does not support "
                "flock); make sure no other run uses this directory"
            )
        previous = _read(fd)
        if previous.strip() and self.note is None:
            self.note = (
                f"note: taking over the stale lock of {self.run_dir}: its holder, "
                f"{describe_holder(previous)}, ended without releasing it (killed?)"
            )
        record = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.time(),
            "command": " ".join(["skyloom", *sys.argv[1:]])[:300],
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
        os.fsync(fd)
        self.fd = fd
        return self.note

    def release(self) -> None:
        """Empty the file (a clean end leaves no holder behind) and unlock; safe to call twice."""
        if self.fd is None:
            return
        try:
            os.ftruncate(self.fd, 0)
        except OSError:
            pass
        os.close(self.fd)  # closing the last descriptor releases the flock
        self.fd = None

    def __enter__(self) -> RunLock:
        if self.fd is None:
            self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def hold_run_dir(run_dir: str | Path) -> RunLock:
    """The lock of RUN_DIR for a command that owns it (train, sft, skymath, demo), taken before anything there is
    touched: a live holder → RunDirLocked (exit 2); a stale or unenforceable lock → a note on stderr; a directory
    that cannot be created or locked → ConfigError naming it. Release with `.release()`, or `with hold_run_dir(…):`.
    """
    lock = RunLock(run_dir)
    try:
        note = lock.acquire()
    except OSError as err:  # e.g. no permission to create RUN_DIR
        raise ConfigError("", f"{run_dir}: cannot create or lock the run directory ({err})") from None
    if note:
        print(note, file=sys.stderr)
    return lock


def clear_run_dir(run_dir: str | Path) -> None:
    """Delete everything in RUN_DIR but its lock file (`--overwrite` while holding the lock: deleting the file
    would let a second run lock a new file beside this one)."""
    for entry in Path(run_dir).iterdir():
        if entry.name == LOCK_FILE:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _read(fd: int) -> str:
    return os.pread(fd, 4096, 0).decode("utf-8", errors="replace")
