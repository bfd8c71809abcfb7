"""``{type: python, class: "pkg.mod:Class", args: {...}}``: any datatrove ``PipelineStep`` as a pipeline step.

The user's step runs inside our accounting like a built-in one, so the funnel still balances. A ``BaseFilter``
is asked document by document (``filter_batch([doc])``) and the reason it gives (or the step's label) is
written where the funnel reads it; it honours ``sources`` / ``skip_sources``. Any other ``PipelineStep`` (a
formatter, an enricher) runs as is; documents it does not pass on are counted as dropped with its label.

The class is imported and built once when the plan is made (so a bad name or bad ``args`` is refused before
anything runs, naming the key) and again in each worker process: only the name and ``args`` travel to the
workers, so a class from a ``.py`` file that is not on their ``PYTHONPATH`` works there too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from datatrove.data import Document, DocumentsPipeline
from datatrove.pipeline.base import PipelineStep
from datatrove.pipeline.filters.base_filter import BaseFilter

from skyloom.config import ConfigError
from skyloom.data.pipeline.base import SkyFilter


@dataclass
class PythonStepConfig:
    """``python`` step: ``class`` ('pkg.module:Class' or 'file.py:Class') and the keyword ``args`` it is built with."""

    target: str
    args: dict[str, Any] = field(default_factory=dict)

    @staticmethod
    def expand_config(data: dict[str, Any], prefix: str) -> dict[str, Any]:
        if "class" not in data:
            raise ConfigError(
                f"{prefix}.class" if prefix else "class", "is required ('pkg.module:Class' or 'path/to/file.py:Class')"
            )
        data = dict(data)
        data["target"] = data.pop("class")
        return data

    @staticmethod
    def default_label(raw: dict[str, Any]) -> str | None:
        """The step's row in the funnel when it has no `name`: its class name."""
        target = raw.get("class")
        return target.rpartition(":")[2].rpartition(".")[2] or None if isinstance(target, str) else None

    def validate(self) -> None:
        self.__dict__["_built"] = instantiate(self)  # not a field: kept for make_python_step, never saved


def instantiate(cfg: PythonStepConfig) -> PipelineStep:
    """The user's step, built with its args; errors name the key (relative to the step)."""
    from skyloom.plugins import load_class

    cls = load_class(cfg.target, "class", PipelineStep)
    try:
        return cls(**cfg.args)
    except Exception as err:  # a constructor's own complaint, e.g. an unexpected or missing argument
        raise ConfigError("args", f"{cfg.target}({', '.join(cfg.args)}): {type(err).__name__}: {err}") from None


class _Lazy:
    """Holds the user's step; rebuilt from (class, args) after being shipped to a worker process."""

    def _init_plugin(self, cfg: PythonStepConfig, inner: PipelineStep) -> None:
        self.plugin_cfg = cfg
        self._inner = inner
        self.name = getattr(inner, "name", None) or type(inner).__name__

    @property
    def inner(self) -> PipelineStep:
        if self._inner is None:
            self._inner = instantiate(self.plugin_cfg)
        return self._inner

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_inner"] = None
        return state


class PythonFilter(_Lazy, SkyFilter):
    """A user's ``BaseFilter``, with reasons recorded and source scoping."""

    def __init__(self, cfg: PythonStepConfig, inner: BaseFilter, default_reason: str):
        super().__init__()
        self._init_plugin(cfg, inner)
        self.default_reason = default_reason

    def filter(self, doc: Document) -> bool | tuple[bool, str]:
        return self.inner.filter_batch([doc])[0]


class PythonStep(_Lazy, PipelineStep):
    """A user's ``PipelineStep`` that is not a filter, run as is."""

    def __init__(self, cfg: PythonStepConfig, inner: PipelineStep, default_reason: str):
        super().__init__()
        self._init_plugin(cfg, inner)
        self.default_reason = default_reason

    def run(self, data: DocumentsPipeline, rank: int = 0, world_size: int = 1) -> DocumentsPipeline:
        yield from self.inner.run(data, rank, world_size)


def make_python_step(cfg: PythonStepConfig) -> PipelineStep:
    """The user's step in a form the builder accounts for; a drop without a reason is named after its class."""
    inner = cfg.__dict__.pop("_built", None) or instantiate(cfg)
    if isinstance(inner, BaseFilter):
        return PythonFilter(cfg, inner, default_reason=type(inner).__name__)
    return PythonStep(cfg, inner, default_reason=type(inner).__name__)
