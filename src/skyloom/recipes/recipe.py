"""A recipe: the ordered training sessions of one model (e.g. Stage-1 A → Stage-1 B → Stage-2) in one directory.

    recipes/skywork-13b/recipe.yaml      sessions, hardware, declared source sizes
    recipes/skywork-13b/stage1a.yaml     one `skyloom train` config (RunConfig) per session

`recipe.yaml`:

    name: skywork-13b
    sessions:                    # in training order; a later session may start from an earlier one
      - {name: stage1-a, stage: stage-1, config: stage1a.yaml}
      - {name: stage1-b, stage: stage-1, config: stage1b.yaml}
      - {name: stage2,   stage: stage-2, config: stage2.yaml}
    hardware: {gpu: A800, gpus: 512, mfu: 0.565, pipeline_parallel: 2}
    declared_tokens: {main: 3.0e12, stem: 4.0e10}   # source sizes for planning when the shards are absent

Paths inside the session configs (data, tokenizer, validation sets, `out_dir`, `train.init_from`) are relative
to a *workspace root* chosen when the recipe is used (`skyloom plan --root`, `skyloom demo --out`), so one
recipe serves any number of workspaces. Absolute paths are kept as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skyloom.config import ConfigError, apply_overrides, build, read_yaml

RECIPE_FILE = "recipe.yaml"


@dataclass
class SessionRef:
    """One training session: a `skyloom train` config file next to recipe.yaml."""

    name: str
    config: str
    stage: str = ""  # sessions of one stage are summed together in the plan (e.g. stage-1 = A + B)
    overrides: list[str] = field(default_factory=list)  # dotted key=value applied to the config file

    def validate(self) -> None:
        if not self.name or "." in self.name or "/" in self.name:
            raise ConfigError("name", f"a session name needs letters/digits/'-'/'_' only, got {self.name!r}")


@dataclass
class HardwareConfig:
    """What the GPU-hours estimate assumes (override with `skyloom plan --gpus/--gpu/--mfu/--peak-tflops`)."""

    gpu: str = "A800"
    gpus: int = 8
    peak_tflops: float | None = None  # None: the bf16 dense peak of `gpu` (skyloom.model.accounting)
    mfu: float = 0.5
    pipeline_parallel: int = 1  # the layout's PP degree (data parallel = gpus / PP); skyloom itself runs DP/FSDP

    def validate(self) -> None:
        if self.gpus < 1:
            raise ConfigError("gpus", f"must be ≥ 1, got {self.gpus}")
        if not 0 < self.mfu <= 1:
            raise ConfigError("mfu", f"must be in (0, 1], got {self.mfu}")
        if self.pipeline_parallel < 1 or self.gpus % self.pipeline_parallel:
            raise ConfigError("pipeline_parallel", f"{self.pipeline_parallel} must be ≥ 1 and divide gpus={self.gpus}")
        if self.peak_tflops is not None and self.peak_tflops <= 0:
            raise ConfigError("peak_tflops", f"must be positive, got {self.peak_tflops}")

    @property
    def peak_flops(self) -> float:
        from skyloom.model.accounting import peak_flops_for_device

        if self.peak_tflops is not None:
            return self.peak_tflops * 1e12
        peak = peak_flops_for_device(self.gpu)
        if peak is None:
            raise ConfigError(
                "hardware.gpu", f"no known bf16 peak for {self.gpu!r}; give hardware.peak_tflops (or --peak-tflops)"
            )
        return peak


@dataclass
class RecipeConfig:
    name: str
    sessions: list[SessionRef]
    description: str = ""
    hardware: HardwareConfig = field(default_factory=HardwareConfig)
    declared_tokens: dict[str, float] = field(default_factory=dict)
    # what `skyloom demo` builds before training: corpus scale and `skyloom tokenizer train` sizes
    overrides: list[str] = field(default_factory=list)  # applied to every session before its own overrides
    corpus: dict[str, Any] = field(default_factory=dict)
    tokenizer: dict[str, Any] = field(default_factory=dict)

    def validate(self) -> None:
        if not self.sessions:
            raise ConfigError("sessions", "list at least one session")
        names = [s.name for s in self.sessions]
        if len(set(names)) != len(names):
            raise ConfigError("sessions", f"session names must be unique, got {names}")
        for key, value in self.declared_tokens.items():
            if value <= 0:
                raise ConfigError(f"declared_tokens.{key}", f"must be positive, got {value}")


@dataclass
class Recipe:
    """A loaded recipe: its directory, config, and (after `session_configs`) the sessions' RunConfigs."""

    directory: Path
    config: RecipeConfig
    session_overrides: dict[str, list[str]]

    @property
    def sessions(self) -> list[SessionRef]:
        return self.config.sessions

    def session_tree(self, name: str, root: str | Path = ".") -> dict[str, Any]:
        """The session's config as a YAML tree: overrides applied, relative paths rebased onto `root`."""
        ref = self.ref(name)
        path = self.directory / ref.config
        tree = apply_overrides(
            read_yaml(path), [*self.config.overrides, *ref.overrides, *self.session_overrides.get(name, [])]
        )
        return rebase_paths(tree, Path(root))

    def session_config(self, name: str, root: str | Path = "."):
        """The session's `RunConfig` (validated; errors name the session file and key)."""
        from skyloom.train.config import RunConfig

        ref = self.ref(name)
        try:
            return build(RunConfig, self.session_tree(name, root))
        except ConfigError as err:
            raise ConfigError("", f"{self.directory / ref.config}: {err}") from None

    def ref(self, name: str) -> SessionRef:
        for ref in self.sessions:
            if ref.name == name:
                return ref
        raise KeyError(f"recipe {self.config.name} has no session {name!r} (it has {[s.name for s in self.sessions]})")


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Recipe:
    """Read `path` (a recipe directory or its recipe.yaml). Overrides: `SESSION.key=value` changes one session's
    config (e.g. `stage2.train.max_tokens=1e9`), anything else the recipe itself (e.g. `hardware.mfu=0.4`)."""
    p = Path(path)
    file = p / RECIPE_FILE if p.is_dir() else p
    if not file.is_file():
        raise ConfigError("", f"{p}: not a recipe (no {RECIPE_FILE})")
    tree = read_yaml(file)
    names = {s.get("name") for s in tree.get("sessions", []) if isinstance(s, dict)}
    own, per_session = [], {}
    for text in overrides:
        head, _, rest = text.partition(".")
        if head in names and rest:
            per_session.setdefault(head, []).append(rest)
        else:
            own.append(text)
    try:
        config = build(RecipeConfig, apply_overrides(tree, own))
    except ConfigError as err:
        raise ConfigError("", f"{file}: {err}") from None
    for ref in config.sessions:
        if not (file.parent / ref.config).is_file():
            raise ConfigError(f"sessions.{ref.name}.config", f"{file}: {file.parent / ref.config} does not exist")
    return Recipe(file.parent, config, per_session)


def _rebase(value: Any, root: Path) -> Any:
    if isinstance(value, str) and value and not Path(value).is_absolute() and "${" not in value:
        return str(root / value)
    return value


def _rebase_keys(section: dict[str, Any], root: Path, keys: tuple[str, ...]) -> dict[str, Any]:
    """`section` with the path lists under `keys` rebased (a non-list is left for the config check to refuse)."""
    return {
        k: ([_rebase(v, root) for v in value] if k in keys and isinstance(value, list) else value)
        for k, value in section.items()
    }


def rebase_paths(tree: dict[str, Any], root: Path) -> dict[str, Any]:
    """Prefix the path-valued keys of a RunConfig tree with `root` (relative ones only)."""
    if str(root) in ("", "."):
        return tree
    out = dict(tree)
    if out.get("out_dir"):
        out["out_dir"] = _rebase(out["out_dir"], root)
    data = out.get("data")
    if isinstance(data, dict):
        data = out["data"] = dict(data)
        if data.get("tokenizer"):
            data["tokenizer"] = _rebase(data["tokenizer"], root)
        sources = data.get("sources")
        if isinstance(sources, dict):
            data["sources"] = {
                name: (
                    _rebase_keys({**src, "path": _rebase(src.get("path"), root)}, root, ("raw", "raw_fallback"))
                    if isinstance(src, dict)
                    else src
                )
                for name, src in sources.items()
            }
        if isinstance(data.get("train_tokenizer"), dict):  # its files too, or they would silently fall back
            data["train_tokenizer"] = _rebase_keys(data["train_tokenizer"], root, ("files", "fallback"))
    train = out.get("train")
    if isinstance(train, dict) and train.get("init_from"):
        out["train"] = {**train, "init_from": _rebase(train["init_from"], root)}
    val = out.get("validation")
    if isinstance(val, dict) and isinstance(val.get("sets"), dict):
        out["validation"] = {
            **val,
            "sets": {
                name: (
                    _rebase_keys({**s, "path": _rebase(s.get("path"), root)}, root, ("fallback",))
                    if isinstance(s, dict)
                    else s
                )
                for name, s in val["sets"].items()
            },
        }
    return out
