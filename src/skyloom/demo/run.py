"""`skyloom demo`: the whole Skywork recipe at tiny scale, as resumable phases in one workspace directory.

    corpus → pipeline → tokenizer → pack → stage1-a → stage1-b → stage2 → stage2-leaked → eval → report

`stage2-leaked` (the recipe's stage "contaminated") is a deliberately contaminated branch: Stage-2's model trained a
little longer on Main mixed with Table 8's test and train splits, so that Table 8 shows the detector catching a
real leak next to the clean Stage-2 model. It is evaluated for Table 8 only and never feeds another session.

Every phase calls the project's own engine (the SkyPile pipeline, `skyloom tokenizer train`, `skyloom data pack`,
the trainer with chained sessions, `skyloom eval ppl/leakage`, `skyloom report`) and, when it finishes, writes
`phases/<phase>.json` (its summary and seconds). A re-run skips finished phases; an interrupted training session
resumes from its newest checkpoint. Workspace layout:

    corpus/{raw,heldout,leakage}/*.jsonl, manifest.json     the starter corpus (or the user's files)
    pipeline/{main,stem}/*.jsonl, funnel.md, stats.json      SkyPile-Main / SkyPile-STEM and the funnel
    data/tokenizer/, data/tokens/{main,stem}/                tokenizer and token shards
    runs/<session>/{config.yaml,metrics.jsonl,checkpoints/}  one run directory per training session
    eval/{ppl.json,leakage.json,samples.json,tables.md}      Table 6 (+ unigram baselines), Table 8, samples
    report.html, report/*.png                                the run report
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from skyloom.progress import draws_bar
from skyloom.recipes.recipe import Recipe, load_recipe

REPO_RECIPES = Path(__file__).resolve().parents[3] / "recipes" / "demo"
SUBSETS = ("main", "stem")  # the pipeline's outputs, packed into data/tokens/<subset>
LEAK_SOURCE = "leak"  # Table 8's test + train splits, packed into data/tokens/leak for the contaminated session
CONTAMINATED_STAGE = "contaminated"  # sessions of this recipe stage are the leaked branch (Table 8 only)


def default_recipe(tiny: bool) -> Path:
    """recipes/demo/recipe.yaml (or tiny.yaml); the package data copy when skyloom is installed elsewhere."""
    name = "tiny.yaml" if tiny else "recipe.yaml"
    for base in (REPO_RECIPES, Path(__file__).resolve().parent / "recipes"):
        if (base / name).is_file():
            return base / name
    raise FileNotFoundError(f"the demo recipe {name} was not found in {REPO_RECIPES}; pass --recipe")


class Demo:
    """One demo workspace; `run()` executes the phases that are not finished yet."""

    def __init__(
        self,
        out: str | Path,
        recipe: str | Path | None = None,
        tiny: bool = False,
        data: str | Path | None = None,
        overrides: list[str] | None = None,
        log: Callable[[str], None] | None = None,
    ):
        self.out = Path(out)
        self.recipe: Recipe = load_recipe(recipe or default_recipe(tiny), overrides or [])
        self.data = Path(data) if data else None
        self.log = log or (lambda text: print(text, flush=True))
        self.phase_dir = self.out / "phases"
        self.sessions = [s.name for s in self.recipe.sessions]
        self.contaminated = [s.name for s in self.recipe.sessions if s.stage == CONTAMINATED_STAGE]
        self.phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("corpus", self.corpus),
            ("pipeline", self.pipeline),
            ("tokenizer", self.tokenizer),
            ("pack", self.pack),
            *[(name, (lambda n=name: self.train(n))) for name in self.sessions],
            ("eval", self.evaluate),
            ("report", self.report),
        ]

    # ---- bookkeeping ----

    def done(self, phase: str) -> dict[str, Any] | None:
        path = self.phase_dir / f"{phase}.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def _record(self, phase: str, summary: dict[str, Any], seconds: float, cpu: float) -> None:
        self.phase_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.phase_dir / f".{phase}.json.tmp"
        tmp.write_text(
            json.dumps(
                {"phase": phase, "seconds": round(seconds, 2), "cpu_seconds": round(cpu, 2), "summary": summary},
                indent=1,
                ensure_ascii=False,
            )
            + "\n",
            encoding="utf-8",
        )
        tmp.replace(self.phase_dir / f"{phase}.json")

    def _check_workspace(self) -> None:
        """Refuse to mix two different set-ups (another recipe or data) in one workspace."""
        self.out.mkdir(parents=True, exist_ok=True)
        ident = {"recipe": self.recipe.config.name, "data": str(self.data.resolve()) if self.data else None}
        path = self.out / "demo.json"
        if path.is_file():
            old = json.loads(path.read_text(encoding="utf-8"))
            if {k: old.get(k) for k in ident} != ident:
                was = f"{old.get('recipe')} on {old.get('data') or 'the starter corpus'}"
                now = f"{ident['recipe']} on {ident['data'] or 'the starter corpus'}"
                raise RuntimeError(f"{self.out} holds a demo of {was}; use another --out (or delete it) for {now}")
        path.write_text(
            json.dumps({**ident, "sessions": self.sessions, "recipe_file": str(self.recipe.directory)}, indent=1)
            + "\n",
            encoding="utf-8",
        )

    def run(self, until: str | None = None) -> dict[str, Any]:
        """Run every unfinished phase (up to and including `until`); returns {phase: record}. The workspace is
        locked for the whole run (skyloom.train.run_lock): a second demo on the same --out is refused."""
        from skyloom.train.run_lock import hold_run_dir

        with hold_run_dir(self.out):
            return self._run_phases(until)

    def _run_phases(self, until: str | None) -> dict[str, Any]:
        self._check_workspace()
        records: dict[str, Any] = {}
        total = len(self.phases)
        redo = False  # once a phase runs again, every later phase depends on new inputs and runs again too
        for i, (name, fn) in enumerate(self.phases, 1):
            rec = self.done(name)
            if rec is not None and redo:
                if name in self.sessions:  # a finished session trained on the old data: start it afresh
                    shutil.rmtree(self.out / "runs" / name, ignore_errors=True)
                (self.phase_dir / f"{name}.json").unlink()
                rec = None
            if rec is not None:
                self.log(f"[{i}/{total}] {name}: done earlier ({rec['seconds']:.1f} s) — skipped")
            else:
                self.log(f"[{i}/{total}] {name} …")
                t0, c0 = time.time(), time.process_time() + _children_cpu()
                redo = True
                summary = fn()
                self._record(name, summary, time.time() - t0, time.process_time() + _children_cpu() - c0)
                rec = self.done(name)
                self.log(f"[{i}/{total}] {name}: finished in {rec['seconds']:.1f} s")
            records[name] = rec
            if name == until:
                break
        return records

    # ---- phases ----

    @property
    def manifest(self) -> dict[str, Any]:
        return json.loads((self.out / "corpus" / "manifest.json").read_text(encoding="utf-8"))

    def corpus(self) -> dict[str, Any]:
        from skyloom.demo import userdata
        from skyloom.demo.corpus import SCALES, build_starter_corpus

        scale = self.recipe.config.corpus.get("scale", "tiny")
        out = self.out / "corpus"
        if self.data is None:
            manifest = build_starter_corpus(out, scale)
        elif not self.data.is_dir():
            raise FileNotFoundError(f"--data {self.data}: not a directory")
        elif userdata.is_shared_layout(self.data):
            manifest = userdata.build_from_shared(self.data, out, SCALES[scale]["chars"])
        else:
            manifest = userdata.build_from_files(self.data, out, SCALES[scale]["chars"])
        for name, c in manifest["counts"].items():
            self.log(f"    {name:12s} {c['train']:6,} train documents, {c.get('heldout', 0):5,} held out")
        return {"source": manifest["source"], "counts": manifest["counts"]}

    def pipeline(self) -> dict[str, Any]:
        from skyloom.data.pipeline.config import load_pipeline_config
        from skyloom.data.pipeline.report import format_markdown
        from skyloom.data.pipeline.runner import run_pipeline
        from skyloom.demo.pipeline import corpus_inputs, pipeline_spec

        inputs, benchmarks, exempt = corpus_inputs(self.out / "corpus", self.manifest)
        workers = int(self.recipe.config.corpus.get("pipeline_workers", 2))
        spec = pipeline_spec(inputs, benchmarks, self.out / "pipeline", exempt, workers=workers)
        log = self.out / "pipeline.log"
        self.log(
            f"    {len(inputs)} inputs, steps: {', '.join(s['type'] for s in spec['steps'])} (datatrove's log: {log})"
        )
        with _stderr_to(log):
            report = run_pipeline(load_pipeline_config(spec), quiet=True)
        text = format_markdown(report)
        outputs = [line for line in text.splitlines() if line.startswith("- SkyPile-")]
        for line in outputs:
            self.log(f"    {line[2:]}")
        return {"outputs": outputs, "funnel": str(self.out / "pipeline" / "funnel.md")}

    def _subset_files(self, subset: str) -> list[str]:
        from skyloom.data.pipeline.writers import output_files

        return output_files(str(self.out / "pipeline"), subset)

    def tokenizer(self) -> dict[str, Any]:
        from skyloom.tokenizer.train import TrainSettings, train_tokenizer

        files = self._subset_files("main") + self._subset_files("stem")
        sizes = dict(self.recipe.config.tokenizer)
        settings = TrainSettings(
            inputs=files,
            out=str(self.out / "data" / "tokenizer"),
            fields=["text"],
            workers=min(2, os.cpu_count() or 1),
            progress=draws_bar(sys.stderr),  # a bar on a terminal; in logs the demo prints its own lines
            **sizes,
        )
        breakdown = train_tokenizer(settings)
        rows = {r["category"]: r["size"] for r in breakdown["rows"]}
        for k, v in rows.items():
            self.log(f"    {k:40s} {v:6,}")
        return {"total": breakdown["total"], "rows": rows}

    def pack(self) -> dict[str, Any]:
        from skyloom.data.pack import SourceSpec, pack

        specs = [SourceSpec(subset, [Path(f) for f in self._subset_files(subset)]) for subset in SUBSETS]
        specs = [s for s in specs if s.files]
        leak = self.manifest.get("leakage")
        if leak and self.contaminated:  # the contaminated session's data: Table 8's test split and train split
            specs.append(SourceSpec(LEAK_SOURCE, [self._leak_file(leak)]))
        summary = pack(
            specs,
            self.out / "data" / "tokenizer",
            self.out / "data" / "tokens",
            fields=("text",),
            workers=1,
            progress=draws_bar(sys.stderr),  # a bar on a terminal; in logs the demo prints its own lines
        )
        for name, s in summary.sources.items():
            self.log(f"    {name:6s} {s['tokens']:10,} tokens in {s['documents']:6,} documents")
        return {"sources": summary.sources}

    def _leak_file(self, leak: dict[str, str]) -> Path:
        """data/leak.jsonl: the test split, then the train split, one `text` record per sample (as scored)."""
        from skyloom.eval.textdata import read_documents

        texts = [t for k in ("test", "train") for t in read_documents(leak[k]).texts or []]
        path = self.out / "data" / f"{LEAK_SOURCE}.jsonl"
        path.write_text("".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts), encoding="utf-8")
        return path

    def session_config(self, name: str):
        """The session's RunConfig in this workspace, with one validation set per corpus domain."""
        from skyloom.config import ConfigError, build
        from skyloom.train.config import RunConfig

        tree = self.recipe.session_tree(name, self.out)
        budget = int(self.recipe.config.corpus.get("val_tokens", 8192))
        sets = {
            d: {"path": str(self.out / "corpus" / "heldout" / f"{d}.jsonl"), "max_tokens": budget}
            for d in self.manifest["domains"]
            if (self.out / "corpus" / "heldout" / f"{d}.jsonl").stat().st_size > 0
        }
        tree.setdefault("validation", {})
        tree["validation"] = {**tree["validation"], "sets": {**sets, **tree["validation"].get("sets", {})}}
        sources = tree["data"]["sources"]
        missing = [s for s, src in sources.items() if not (Path(src["path"]) / "index.json").is_file()]
        for source in missing:  # only an empty pipeline subset may be left out; any other path is a mistake
            if not self._empty_subset(Path(sources[source]["path"])):
                ref = self.recipe.ref(name)
                raise ConfigError(
                    f"data.sources.{source}.path",
                    f"{self.recipe.directory / ref.config} (session {name}): {sources[source]['path']} "
                    "holds no token shards (no index.json) and is not one the demo packs",
                )
        if missing:  # e.g. user data with no STEM documents: Stage-2 continues on Main alone, and says so
            self.log(
                f"    note: no shards for {missing} (the pipeline put no documents there); {name} trains without them"
            )
            tree["data"]["sources"] = {s: src for s, src in sources.items() if s not in missing}
        return build(RunConfig, tree)

    def _empty_subset(self, path: Path) -> bool:
        """Whether `path` is the demo's shard directory of a pipeline subset that received no documents."""
        tokens = self.out / "data" / "tokens"
        return path.parent.resolve() == tokens.resolve() and path.name in SUBSETS and not self._subset_files(path.name)

    def train(self, name: str) -> dict[str, Any]:
        from skyloom.train.prepare import prepare_run_data
        from skyloom.train.trainer import Trainer

        if name in self.contaminated and not self.manifest.get("leakage"):
            reason = f"no Table-8 sets to leak ({self.manifest.get('leakage_note')})"
            self.log(f"    skipped: {reason}")
            return {"skipped": reason}
        cfg = self.session_config(name)
        run_dir = Path(cfg.out_dir)
        resume = (run_dir / "checkpoints").is_dir()
        if not resume:  # stopped before its first checkpoint: nothing to keep
            (run_dir / "metrics.jsonl").unlink(missing_ok=True)

        def log(text: str) -> None:
            self.log("    " + text.replace("\n", "\n    "))

        prepare_run_data(cfg, log)  # nothing to do when the demo packed the shards itself; else as `skyloom train`
        trainer = Trainer(cfg, run_dir, resume=resume, log=log)
        rows = trainer.loader.plan() if hasattr(trainer.loader, "plan") else None
        trainer.log(trainer.plan_text(rows))
        if rows is not None:
            trainer.loader.check_plan(rows)
        status = trainer.fit()
        if status != "finished":
            raise RuntimeError(f"session {name} stopped ({status}); run the demo again to resume it")
        train = [r for r in _metrics(run_dir) if r.get("kind") == "train" and r.get("loss") is not None]
        val = {name_: r["loss"] for name_, r in (trainer.last_validation or {}).items()}
        self.log(
            f"    train loss {train[0]['loss']:.3f} → {train[-1]['loss']:.3f}; validation "
            + ", ".join(f"{k} {v:.3f}" for k, v in val.items())
        )
        return {
            "run_dir": str(run_dir),
            "steps": trainer.step,
            "tokens": trainer.tokens,
            "first_loss": train[0]["loss"],
            "last_loss": train[-1]["loss"],
            "validation": val,
        }

    def evaluate(self) -> dict[str, Any]:
        from skyloom.demo.samples import session_samples
        from skyloom.eval.backends import load_lm
        from skyloom.eval.leakage import format_table8, leakage
        from skyloom.eval.perplexity import WindowConvention, evaluate_perplexity, format_table
        from skyloom.eval.textdata import read_documents
        from skyloom.eval.unigram import domain_entropies, format_unigram
        from skyloom.train.trainer import find_checkpoint

        manifest = self.manifest
        if manifest.get("table6"):
            ppl_sets = {name: read_documents(path) for name, path in manifest["table6"].items()}
        else:
            ppl_sets = {
                d: read_documents(self.out / "corpus" / "heldout" / f"{d}.jsonl")
                for d in manifest["domains"]
                if (self.out / "corpus" / "heldout" / f"{d}.jsonl").stat().st_size
            }
        leak_sets = None
        if manifest.get("leakage"):
            leak_sets = {k: read_documents(manifest["leakage"][k]) for k in ("train", "test", "ref")}
        # the end of Stage-1 (the last session of the first stage) and the end of every later stage
        stage_last: dict[str, str] = {}
        for ref in self.recipe.sessions:
            if ref.name in self.contaminated and not leak_sets:
                continue
            stage_last[ref.stage or ref.name] = ref.name
        rows_ppl, rows_leak, samples = {}, {}, {}
        unigram: dict[str, Any] = {}
        out = self.out / "eval"
        out.mkdir(parents=True, exist_ok=True)
        # a word problem nobody trains on (Table 8's reference set), answered by every session's model
        problems = [leak_sets["ref"].texts[0]] if leak_sets and leak_sets["ref"].texts else []
        for session in self.sessions:
            lm = load_lm(find_checkpoint(self.out / "runs" / session), backend="skyloom", device="cpu", progress=False)
            if session not in self.contaminated:
                samples[session] = session_samples(lm, problems)
            if not unigram:
                unigram = domain_entropies(lm.encode_batch, self._domain_texts(ppl_sets))
            stage = next((st for st, name in stage_last.items() if name == session), None)
            if stage is None:
                continue
            ckpt = find_checkpoint(self.out / "runs" / session)
            # whole documents in rolling windows: the report's own convention cuts each text to max_tokens // 3
            # characters — 1,365 at its 4,096-token context, only 85 at the demo model's 256
            conv = WindowConvention("rolling", min(4096, lm.max_length))
            label = f"{stage} ({session})"
            if session not in self.contaminated:  # the leaked branch is there for Table 8
                rows_ppl[label] = evaluate_perplexity(lm, ppl_sets, conv)
                rows_ppl[label]["checkpoint"] = str(ckpt)
            if leak_sets:
                rows_leak[label] = leakage(lm, leak_sets["train"], leak_sets["test"], leak_sets["ref"], conv)
                rows_leak[label]["checkpoint"] = str(ckpt)
                if session in self.contaminated:
                    rows_leak[label]["contamination"] = self._contamination(session)
        domains = list(ppl_sets)
        (out / "ppl.json").write_text(
            json.dumps({"models": rows_ppl, "domains": domains, "unigram": unigram}, indent=1) + "\n",
            encoding="utf-8",
        )
        (out / "samples.json").write_text(json.dumps(samples, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
        tables = "## Table 6: perplexity per domain (held-out text)\n\n" + format_table(rows_ppl, domains) + "\n"
        tables += "\n## Held-out loss against the unigram entropy (nats/token)\n\n" + format_unigram(rows_ppl, unigram)
        if rows_leak:
            note = manifest.get("leakage_note")
            (out / "leakage.json").write_text(
                json.dumps({"models": rows_leak, "note": note}, indent=1) + "\n", encoding="utf-8"
            )
            tables += "\n## Table 8: leakage (GSM8K-style sets)\n\n" + format_table8(rows_leak) + "\n"
            tables += f"\nSets: {note}\n" + "".join(
                f"\n{label}: {row['contamination']}\n" for label, row in rows_leak.items() if row.get("contamination")
            )
        else:
            tables += f"\nTable 8 skipped: {manifest.get('leakage_note')}\n"
        (out / "tables.md").write_text(tables, encoding="utf-8")
        for line in tables.splitlines():
            self.log("    " + line)
        for session, got in samples.items():
            for c in got["continuations"]:
                self.log(f"    sample after {session}, {c['domain']} (greedy): {c['prompt']}{c['greedy']!r}")
        return {
            "ppl": {k: v["average"]["ppl"] for k, v in rows_ppl.items()},
            "leakage": {
                k: {"delta1": v["delta1"], "delta2": v["delta2"], "verdict": v["verdict"]} for k, v in rows_leak.items()
            },
        }

    def _domain_texts(self, ppl_sets: dict[str, Any]) -> dict[str, list[str]]:
        """Each Table-6 domain's text for its unigram entropy: the held-out set plus, when the corpus has one, the
        domain's training text (more text, a less biased estimate of the domain's token frequencies)."""
        from skyloom.eval.textdata import read_documents

        out = {}
        for domain, docs in ppl_sets.items():
            raw = self.out / "corpus" / "raw" / f"{domain}.jsonl"
            extra = (read_documents(raw).texts or []) if raw.is_file() and raw.stat().st_size else []
            out[domain] = list(docs.texts or []) + list(extra)
        return out

    def _contamination(self, session: str) -> str:
        """What the leaked session saw, in words: its steps, the leaked share and how often each sample came by."""
        from skyloom.data.shards import TokenSource

        state = json.loads(
            (max((self.out / "runs" / session / "checkpoints").glob("step_*")) / "trainer_state.json").read_text(
                encoding="utf-8"
            )
        )
        drawn = state["loader"]["sources"].get(LEAK_SOURCE, {}).get("drawn", 0)
        cfg = self.session_config(session)
        leak_tokens = len(TokenSource(self.out / "data" / "tokens" / LEAK_SOURCE))
        passes = drawn * cfg.data.seq_len / max(1, leak_tokens)
        others = [name for name in cfg.data.sources if name != LEAK_SOURCE]
        mixed = f"{' + '.join(others)} mixed with " if others else ""
        return (
            f"DELIBERATELY CONTAMINATED — Stage-2's model trained {state.get('step', '?')} more steps on {mixed}the "
            f"whole Table-8 test split and train split ({leak_tokens:,} tokens, each sample seen ≈ {passes:.1f} times)"
        )

    def report(self) -> dict[str, Any]:
        from skyloom.report.build import build_report

        path = build_report(self.out)
        self.log(f"    {path}")
        return {"report": str(path)}


@contextlib.contextmanager
def _stderr_to(path: Path):
    """Send file descriptor 2 (this process and the workers it starts) to `path` for a while: datatrove logs
    every task at INFO level on stderr, which would bury the demo's own progress lines."""
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as f:
        os.dup2(f.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            tail = path.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
            print("\n".join(["    (last lines of " + str(path) + ")", *tail]), file=sys.stderr)
            raise
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)


def _metrics(run_dir: Path) -> list[dict[str, Any]]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _children_cpu() -> float:
    """CPU seconds of finished child processes (pipeline workers, pack workers)."""
    t = os.times()
    return t.children_user + t.children_system


def summary_text(demo: Demo, records: dict[str, Any]) -> str:
    """The closing summary: time per phase, losses per session, Table-6/8 headline numbers, where things are."""
    lines = ["", "== skyloom demo: summary", f"workspace {demo.out}", "", f"{'phase':10s} {'wall s':>8s} {'CPU s':>8s}"]
    for name, rec in records.items():
        lines.append(f"{name:10s} {rec['seconds']:8.1f} {rec.get('cpu_seconds', 0):8.1f}")
    lines.append(f"{'total':10s} {sum(r['seconds'] for r in records.values()):8.1f}")
    for name in demo.sessions:
        s = records.get(name, {}).get("summary")
        if s and s.get("skipped"):
            lines.append(f"{name}: skipped ({s['skipped']})")
        elif s:
            val = ", ".join(f"{k} {v:.3f}" for k, v in s["validation"].items())
            lines.append(
                f"{name}: {s['steps']} steps, {s['tokens']:,} tokens; train loss {s['first_loss']:.3f} → "
                f"{s['last_loss']:.3f}; validation {val}"
            )
    ev = records.get("eval", {}).get("summary")
    if ev:
        for k, v in ev["ppl"].items():
            lines.append(f"Table 6 average perplexity, {k}: {v:.2f}")
        for k, v in ev["leakage"].items():
            lines.append(f"Table 8, {k}: Δ1 {v['delta1']:+.3f}, Δ2 {v['delta2']:+.3f} → {v['verdict']}")
    rep = records.get("report", {}).get("summary")
    if rep:
        lines.append(f"report: {rep['report']}")
    return "\n".join(lines)
