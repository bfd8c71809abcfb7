"""One run-directory policy for the commands that own one (train, sft, skymath): where it is, who holds it,
what `--resume` / `--overwrite` do, and the *resolved* config saved in it (so `COMMAND RUN_DIR --resume` re-runs
exactly what ran). The lock itself is `train.run_lock` (imported when a run starts, not at `--help`)."""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from skyloom.config import ConfigError


class RunDirBusy(ConfigError):
    """RUN_DIR already holds a run and neither --resume nor --overwrite was given."""

    def __init__(self, message: str):
        super().__init__("", message)


def resolve_run_dir(out: str | None, config_arg: str | Path, out_dir: str | None, default_root: str | Path) -> Path:
    """`--out`, else the run directory given as CONFIG, else the config's `out_dir`, else DEFAULT_ROOT/<name>."""
    if out:
        return Path(out)
    if Path(config_arg).is_dir():
        return Path(config_arg)
    if out_dir:
        return Path(out_dir)
    return Path(default_root) / Path(config_arg).stem


def clear_outputs(names: tuple[str, ...]) -> Callable[[Path], None]:
    """An `--overwrite` that deletes only these entries of RUN_DIR (train keeps its config.yaml and logs)."""

    def clear(run_dir: Path) -> None:
        for name in names:
            path = run_dir / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)

    return clear


def started(run_dir: Path, markers: tuple[str, ...]) -> bool:
    """Whether RUN_DIR already holds a run: any marker (a file, a directory or a glob) exists."""
    return any(any(run_dir.glob(m)) if any(c in m for c in "*?[") else (run_dir / m).exists() for m in markers)


@contextlib.contextmanager
def open_run_dir(
    run_dir: str | Path,
    *,
    markers: tuple[str, ...],
    resume: bool,
    overwrite: bool,
    is_main: bool = True,
    clear: Callable[[Path], None] | None = None,
    overwrite_hint: str = "start over",
    save: tuple[str, Any] | None = None,
) -> Iterator[Path]:
    """Hold RUN_DIR for a run: lock it (main rank only) before anything there is touched, refuse a started run
    unless `resume` (`overwrite` empties it first, lock file kept), save the resolved config
    (`save=(file name, config)`), and release the lock on any exit."""
    from skyloom.train.run_lock import clear_run_dir, hold_run_dir

    run_dir = Path(run_dir)
    with hold_run_dir(run_dir) if is_main else contextlib.nullcontext():
        if started(run_dir, markers) and not resume:
            if not overwrite:
                raise RunDirBusy(
                    f"{run_dir} already holds a run; continue it with --resume, choose another --out, "
                    f"or pass --overwrite to {overwrite_hint}"
                )
            if is_main:
                (clear or clear_run_dir)(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        if save is not None and is_main:
            from skyloom.config import save as save_config

            save_config(save[1], run_dir / save[0])
        yield run_dir
