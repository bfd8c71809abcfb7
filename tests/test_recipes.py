"""Recipes validate, and `skyloom plan` numbers add up (tokens, epochs, STEM share, GPU-hours vs the report)."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from skyloom.cli import main
from skyloom.config import ConfigError
from skyloom.recipes.plan import _vectorised_draws, plan_recipe
from skyloom.recipes.recipe import load_recipe
from tests.conftest import REPO

RECIPES = [
    REPO / "recipes" / "skywork-13b",
    REPO / "recipes" / "skywork-moe",
    REPO / "recipes" / "demo",
    REPO / "recipes" / "demo" / "tiny.yaml",
]
BATCH = 16 * 1024 * 1024  # 16M tokens = 4,096 × 4,096


@pytest.fixture(scope="module")
def skywork_plan():
    return plan_recipe(load_recipe(REPO / "recipes" / "skywork-13b"))


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.name)
def test_every_recipe_session_validates(path):
    recipe = load_recipe(path)
    for ref in recipe.sessions:
        cfg = recipe.session_config(ref.name)
        assert cfg.train.global_batch_tokens % cfg.seq_len == 0


def test_skywork_sessions_follow_the_report(skywork_plan):
    a, b, s2 = skywork_plan["sessions"]
    for s in (a, b, s2):
        assert s["seq_len"] == 4096 and s["global_batch_tokens"] == BATCH
        assert s["model"]["layers"] == 52 and s["model"]["dim"] == 4608
    assert a["schedule"] == {"kind": "cosine", "lr": 6e-4, "min_lr": 6e-5, "warmup_steps": 2000}
    assert b["schedule"]["kind"] == s2["schedule"]["kind"] == "constant"
    assert b["schedule"]["lr"] == s2["schedule"]["lr"] == 6e-5
    assert b["init_from"].endswith("stage1-a") and s2["init_from"].endswith("stage1-b")
    # tokens = steps × batch, and the step count is the smallest that reaches the session's token target
    for s, target in ((a, 2e12), (b, 1e12), (s2, 130e9)):
        assert s["tokens"] == s["steps"] * BATCH
        assert target <= s["tokens"] < target + BATCH
    assert skywork_plan["stages"]["stage-1"]["tokens"] == a["tokens"] + b["tokens"]
    assert skywork_plan["total"]["tokens"] == a["tokens"] + b["tokens"] + s2["tokens"]
    # DP 256 × PP 2 on 512 GPUs, micro-batch 1: 4,096 sequences = 256 ranks × 16 accumulation steps
    assert a["layout"]["data_parallel"] == 256 and a["layout"]["accumulation"] == 16


def test_stage2_tokens_shares_and_epochs_add_up(skywork_plan):
    s2 = skywork_plan["sessions"][2]
    rows = {r["source"]: r for r in s2["sources"]}
    assert sum(r["tokens_drawn"] for r in rows.values()) == s2["tokens"]
    stem = rows["stem"]
    assert stem["share_start"] == pytest.approx(0.10) and stem["share_end"] == pytest.approx(0.40)
    assert stem["share"] == pytest.approx(0.20, abs=2e-4)  # the report's ~20% STEM in Stage-2
    assert stem["tokens_drawn"] == pytest.approx(0.2 * 130e9, rel=2e-3)
    declared = load_recipe(REPO / "recipes" / "skywork-13b").config.declared_tokens
    for name, r in rows.items():
        windows_available = int(declared[name]) // 4097
        assert r["epochs_session"] == pytest.approx(r["tokens_drawn"] / 4096 / windows_available)
    # sessions that continue the loader add up their epochs: A + B + Stage-2
    sessions = skywork_plan["sessions"]
    for name in ("en_web", "zh_encyclopedia", "code"):
        per = [next(r for r in s["sources"] if r["source"] == name)["epochs_session"] for s in sessions]
        total = next(r for r in s2["sources"] if r["source"] == name)["epochs_total"]
        assert total == pytest.approx(sum(per), rel=1e-6)
        assert total <= 5  # the report's repetition cap
    # Main keeps Table 1's proportions inside Stage-2
    assert rows["en_web"]["tokens_drawn"] / rows["zh_web"]["tokens_drawn"] == pytest.approx(39.8 / 30.4, rel=1e-3)


TABLE1 = {  # Skywork-13B Table 1: Stage-1 (0 → 3T) as a whole, percent
    **{"en_web": 39.8, "en_books": 3.6, "en_papers": 3.0, "en_encyclopedia": 0.5, "en_misc": 2.9},
    **{"zh_web": 30.4, "zh_social": 5.5, "zh_encyclopedia": 0.8, "zh_misc": 3.1},
    **{"other_encyclopedia": 2.4, "code": 8.0},
}


def test_stage1_b_changes_the_mixture_and_the_sessions_average_to_table_1():
    """§3.6.1: session B used "a slightly different composition ... data from certain sources had been depleted
    and fresh sources were introduced"; Table 1 is Stage-1 as a whole, so 2T of A and 1T of B average to it."""
    recipe = load_recipe(REPO / "recipes" / "skywork-13b")
    a, b = (
        {k: float(v.weight) for k, v in recipe.session_config(n).data.sources.items()} for n in ("stage1-a", "stage1-b")
    )
    assert sum(a.values()) == pytest.approx(100) and sum(b.values()) == pytest.approx(100)
    assert set(b) - set(a) == {"en_web_fresh", "zh_web_fresh"}  # fresh sources, B only
    assert all(b[k] < a[k] for k in ("en_encyclopedia", "zh_encyclopedia", "other_encyclopedia"))  # depleted
    for name, table in TABLE1.items():
        fresh = b.get(name + "_fresh", 0.0)  # a fresh crawl counts in its category (webpages)
        assert (2 * a[name] + b[name] + fresh) / 3 == pytest.approx(table, abs=1e-9), name


def test_every_session_monitors_the_reports_domains_from_named_sources():
    """§2.2 (code, academic, social media, web in Chinese and English) + Table 6's domains, in every session; the
    sets that ../shared/data holds are named by their path there."""
    recipe = load_recipe(REPO / "recipes" / "skywork-13b")
    sets = [recipe.session_config(ref.name).validation.sets for ref in recipe.sessions]
    assert all(s == sets[0] for s in sets)
    table6 = {f"zh_{d}" for d in ("tech", "movie", "government", "game", "finance", "general")}
    assert table6 | {"en_web", "zh_web", "code", "en_academic", "zh_academic", "zh_social"} <= set(sets[0])
    for name in table6:
        assert sets[0][name].path == f"../shared/data/skywork/{name}.jsonl"
    for name, cfg in sets[0].items():
        if cfg.path.startswith("../shared/data/") and (REPO / cfg.path).parent.is_dir():  # present where it runs
            assert (REPO / cfg.path).is_file(), (name, cfg.path)


def test_gpu_hours_formula_check_against_the_reports_39_days(skywork_plan):
    """Formula check, not a measurement: fed the report's own figures (§3.5: 512 A800s at MFU 56.5%), the planner's
    throughput and GPU-hour formulas give back its 1,873 tokens/s/GPU and 39 days."""
    s = skywork_plan["sessions"][0]
    assert s["tokens_per_gpu_second"] == pytest.approx(1873, rel=0.02)
    assert skywork_plan["total"]["days"] == pytest.approx(39, rel=0.05)
    assert skywork_plan["total"]["gpu_hours"] == pytest.approx(skywork_plan["total"]["days"] * 24 * 512)


def test_linear_ramp_from_10_to_40_averages_25_and_the_recipe_20():
    recipe = load_recipe(REPO / "recipes" / "demo")
    stem = next(r for r in plan_recipe(recipe)["sessions"][2]["sources"] if r["source"] == "stem")
    assert stem["share"] == pytest.approx(0.20, abs=0.01)  # 80 steps: the discrete average
    straight = load_recipe(
        REPO / "recipes" / "demo",
        [
            "stage2.data.sources.main.weight=[[0, 0.9], [1, 0.6]]",
            "stage2.data.sources.stem.weight=[[0, 0.1], [1, 0.4]]",
            "stage2.train.max_steps=1001",
        ],
    )
    stem = next(r for r in plan_recipe(straight)["sessions"][2]["sources"] if r["source"] == "stem")
    assert stem["share"] == pytest.approx(0.25, abs=1e-3)


def test_vectorised_plan_matches_the_loaders_counts():
    """Long sessions use the vectorised integral; it agrees with MixtureLoader.plan() within one window."""
    from skyloom.data.mixture import MixtureLoader, MixtureSourceSpec, WeightSchedule
    from skyloom.recipes.plan import DeclaredSource

    specs = [
        MixtureSourceSpec("main", DeclaredSource("m", 10**7), WeightSchedule([[0, 0.9], [0.33, 0.9], [1, 0.6]]), 5),
        MixtureSourceSpec("stem", DeclaredSource("s", 10**6), WeightSchedule([[0, 0.1], [0.33, 0.1], [1, 0.4]]), 5),
        MixtureSourceSpec("code", DeclaredSource("c", 10**6), WeightSchedule(0.07), 5),
    ]
    loader = MixtureLoader(specs, seq_len=128, global_windows=37, micro_batch_size=37, total_steps=997)
    exact = np.array([r["windows_drawn"] for r in loader.plan()])
    fast = _vectorised_draws(loader, np.zeros(3, dtype=np.int64))
    assert fast.sum() == exact.sum() == 37 * 997
    assert np.abs(fast - exact).max() <= 1


def test_plan_cli_flags_json_and_epoch_cap(tmp_path, capsys):
    out = tmp_path / "plan.json"
    assert main(["plan", str(REPO / "recipes" / "skywork-13b"), "--gpus", "1024", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "stage2" in text and "GPU-hours" in text and "stem" in text
    plan = json.loads(out.read_text())
    assert plan["hardware"]["gpus"] == 1024 and plan["total"]["days"] == pytest.approx(19.0, rel=0.05)
    # a source too small for its share breaks the five-epoch cap: printed, and the command fails
    assert main(["plan", str(REPO / "recipes" / "skywork-13b"), "declared_tokens.stem=1.0e9"]) == 2
    captured = capsys.readouterr()
    assert "stem" in captured.err and "epoch cap" in captured.err


def test_bad_recipes_are_refused_with_the_file_named(tmp_path):
    (tmp_path / "recipe.yaml").write_text("name: x\nsessions: [{name: a, config: a.yaml}]\nhardwre: {}\n")
    with pytest.raises(ConfigError, match="recipe.yaml.*hardwre"):
        load_recipe(tmp_path)
    (tmp_path / "recipe.yaml").write_text("name: x\nsessions: [{name: a, config: missing.yaml}]\n")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_recipe(tmp_path)
    (tmp_path / "a.yaml").write_text(
        "model: {preset: tiny}\ndata: {sources: {m: {path: m}}}\ntrain: {max_steps: 5, lrr: 1}\n"
    )
    (tmp_path / "recipe.yaml").write_text("name: x\nsessions: [{name: a, config: a.yaml}]\n")
    with pytest.raises(ConfigError, match=r"a\.yaml.*lrr"):
        load_recipe(tmp_path).session_config("a")
    # no shards and no declared size: planning says which key to add
    (tmp_path / "a.yaml").write_text("model: {preset: tiny}\ndata: {sources: {m: {path: m}}}\ntrain: {max_steps: 5}\n")
    with pytest.raises(ValueError, match="declared_tokens.m"):
        plan_recipe(load_recipe(tmp_path), root=tmp_path)


def test_plan_gives_the_upcycling_advice_for_an_moe_session(capsys):
    """Skywork-MoE §3.3 in `skyloom plan`: C_MoE vs C_dense decides upcycle vs from-scratch."""
    tiny = REPO / "recipes" / "demo" / "tiny.yaml"
    moe = ["stage2.model.moe.n_experts=4", "stage2.model.moe.top_k=2", "stage2.train.max_steps=4"]
    plan = plan_recipe(load_recipe(tiny, moe))
    dense_hours = sum(s["gpu_hours"] for s in plan["sessions"][:2])
    advice = plan["sessions"][2]["upcycle_advice"]
    assert advice["dense_gpu_hours"] == pytest.approx(dense_hours)
    assert advice["moe_gpu_hours"] == pytest.approx(plan["sessions"][2]["gpu_hours"])
    assert advice["ratio"] == pytest.approx(advice["moe_gpu_hours"] / dense_hours)
    assert advice["choice"] == "upcycle"  # a short Stage-2 after a longer dense Stage-1: C_MoE ≪ C_dense
    assert all("upcycle_advice" not in s for s in plan["sessions"][:2])
    assert "upcycle_advice" not in plan_recipe(load_recipe(tiny))["sessions"][2]  # dense recipe: no advice
    # a dense checkpoint that cost little compared with the MoE budget: from scratch
    assert main(["plan", str(tiny), *moe, "--dense-gpu-hours", "1e-9"]) == 0
    assert "upcycle?  from-scratch" in capsys.readouterr().out


def test_skywork_moe_recipe_is_the_reports_model_upcycled_from_the_13b_recipe():
    """MoE report Table 2 / §4 / §5 / App. B.3: 16 experts top-2 in every layer, seq 8,192, gate normalisation λ 1,
    adaptive α (ξ 1/5, α_max 0.01, β 0.99), 7:2:1 English/Chinese/code, PP 12 × TP=EP 4 × DP 32 + ZeRO-1 on 1,536
    GPUs that fits 80 GB; its model is exactly the Skywork-13B recipe's upcycled (so init_from's weights fit)."""
    from skyloom.model.upcycle import upcycled_config

    recipe = load_recipe(REPO / "recipes" / "skywork-moe")
    cfg = recipe.session_config("pretrain")
    moe = cfg.model.moe
    assert (moe.n_experts, moe.top_k, moe.every_n_layers, cfg.seq_len) == (16, 2, 1, 8192)
    assert moe.gate_norm and moe.gate_norm_lambda == 1.0 and moe.aux_loss == "eq4"
    assert moe.adaptive and (moe.xi, moe.alpha_max, moe.beta) == (0.2, 0.01, 0.99)
    weights = {k: float(v.weight) for k, v in cfg.data.sources.items()}
    assert weights == {"en": 70.0, "zh": 20.0, "code": 10.0}
    dense = load_recipe(REPO / "recipes" / "skywork-13b").session_config("stage2").model
    upcycled = upcycled_config(dense, moe)
    assert dataclasses.replace(upcycled, max_seq_len=8192, preset=cfg.model.preset) == cfg.model
    plan = plan_recipe(recipe)
    session = plan["sessions"][0]
    assert session["layout"]["data_parallel"] == 32
    assert (cfg.train.parallel.pp, cfg.train.parallel.tp, cfg.train.parallel.ep) == (12, 4, 4)
    assert cfg.train.parallel.zero1 and plan["hardware"]["gpus"] == 1536
    memory = session["memory"]
    assert memory["fits"] and memory["peak_gb"] < 80 < memory["gpu_gb"]  # an 80 GiB A800
    # upcycled from a checkpoint trained elsewhere: no "C_dense = 0, train from scratch" advice without its cost
    assert session["upcycle_advice"]["choice"] == "unknown"
    advised = plan_recipe(recipe, dense_gpu_hours=767_000)["sessions"][0]["upcycle_advice"]
    assert advised["choice"] == "upcycle" and advised["ratio"] < 1
