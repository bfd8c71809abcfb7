"""skyloom's layering: imports between its parts go one way, and the command line starts without torch.

The parts are the subpackages and top-level modules of `src/skyloom`; every import counts, function-level ones
included (a lazy import is still a dependency). A part may import only parts in LOWER layers (below). Command
modules (`*/commands.py`, `*_commands.py`) are the command layer of their package: they wire a subpackage to the
CLI, may import anything under it, and nothing but the CLI imports them. Read from the source with `ast`, so the
test runs without importing anything.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "skyloom"

# Lowest first. config → tokenizer → data → model → train → {eval, sft} → recipes/demo/report → commands → cli.
LAYERS: list[set[str]] = [
    {"config"},  # typed configs, YAML, ConfigError: imports nothing of skyloom
    {"plugins", "commandline", "progress"},  # "package.module:Class" loading; CLI flags; progress bar or log lines
    {"tokenizer"},  # text: the one document reader (corpus.py), tokenizers, chat templates (chat.py)
    {"data"},  # token shards, packing, mixtures, Batch/BatchSource (batch.py), the data pipeline
    {"model"},  # architectures, decoding (KV cache), checkpoints, token_loss, HF interop
    {"train"},  # the training loop and its components
    {"rundir"},  # run directories: resolve / overwrite / resume / lock (uses train.run_lock)
    {"eval"},  # benchmarks, perplexity, leakage — scores models, never trains them
    {"sft"},  # fine-tuning (a training run) and SkyMath rounds (grade with eval)
    {"recipes", "report"},
    {"demo"},  # the end-to-end demo: recipes, training, evaluation and the report together
    {"commands"},  # every */commands.py and *_commands.py
    {"skyloom"},  # the package facade (skyloom.load_model, __version__)
    {"cli"},
    {"__main__"},
]
RANK = {part: rank for rank, layer in enumerate(LAYERS) for part in layer}


def _part(module: str) -> str:
    """The layering unit a dotted module belongs to."""
    parts = module.split(".")
    if parts[-1] == "commands" or parts[-1].endswith("_commands"):
        return "commands"
    return parts[1] if len(parts) > 1 else "skyloom"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(SRC.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """(line, imported module) for every skyloom import in the file, wherever it stands."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target == "skyloom":  # `from skyloom import config` imports a submodule, `__version__` the facade
                found += [
                    (node.lineno, f"skyloom.{a.name}" if a.name in _submodules() else "skyloom") for a in node.names
                ]
            else:
                found.append((node.lineno, target))
    return [(line, name) for line, name in found if name == "skyloom" or name.startswith("skyloom.")]


def _submodules() -> set[str]:
    return {p.stem for p in SRC.glob("*.py")} | {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}


def _edges() -> dict[tuple[str, str], list[str]]:
    """(from part, to part) → the imports behind that edge, as 'module:line → target'."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for path in sorted(SRC.rglob("*.py")):
        module = _module_name(path)
        for line, target in _imports(path):
            a, b = _part(module), _part(target)
            if a != b:
                edges[(a, b)].append(f"{module}:{line} → {target}")
    return edges


def _cycles(edges) -> list[list[str]]:
    """Strongly connected components of more than one part (Tarjan)."""
    graph: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        graph[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_every_part_has_a_layer():
    parts = {_part(_module_name(p)) for p in SRC.rglob("*.py")}
    assert parts - set(RANK) == set(), "add the new subpackage or module to LAYERS (and docs/architecture.md)"


def test_the_import_graph_between_parts_has_no_cycle():
    edges = _edges()
    cycles = _cycles(edges)
    detail = [
        f"{' ↔ '.join(c)}: " + "; ".join(w for (a, b), why in edges.items() if a in c and b in c for w in why[:2])
        for c in cycles
    ]
    assert not cycles, "import cycles between parts:\n" + "\n".join(detail)


def test_imports_only_go_down_the_layers():
    violations = [
        f"{a} (layer {RANK.get(a)}) imports {b} (layer {RANK.get(b)}): {why[0]}"
        + (f" (+{len(why) - 1} more)" if len(why) > 1 else "")
        for (a, b), why in sorted(_edges().items())
        if a in RANK and b in RANK and RANK[b] >= RANK[a]
    ]
    assert not violations, "imports against the layering:\n" + "\n".join(violations)


def test_the_layering_check_sees_a_function_level_import(tmp_path, monkeypatch):
    """The checker itself: a lazy upward import inside a function is found (so the tests above can fail)."""
    pkg = tmp_path / "skyloom"
    for sub in ("data", "train"):
        (pkg / sub).mkdir(parents=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "__init__.py").write_text("")
    (pkg / "data" / "mixture.py").write_text("def f():\n    from skyloom.train.trainer import Trainer\n")
    (pkg / "train" / "trainer.py").write_text("from ..data import mixture\n")
    monkeypatch.setattr(sys.modules[__name__], "SRC", pkg)
    edges = _edges()
    assert edges[("data", "train")] == ["skyloom.data.mixture:2 → skyloom.train.trainer"]
    assert edges[("train", "data")] == ["skyloom.train.trainer:1 → skyloom.data"]
    assert _cycles(edges) == [["data", "train"]]


def test_the_command_line_starts_without_torch():
    """`skyloom --help` builds every command's parser; none of that may import torch (seconds of start-up)."""
    code = (
        "import sys\nimport skyloom.cli\n"
        "try:\n    skyloom.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = [m for m in ('torch', 'numpy', 'transformers', 'tokenizers') if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    heavy = out.stdout.rsplit("HEAVY", 1)[1].strip()
    assert "torch" not in heavy and "transformers" not in heavy, f"skyloom --help imported {heavy}"
