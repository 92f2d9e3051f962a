"""scripts/reproduce.py: where each table's runs go and what its table prints."""

import argparse
import json

import pytest
from scripts import reproduce


def fake_run(run_dir, seed: int, val: float, test: float) -> None:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(f"- algo=maml\n- seed={seed}\n")
    (run_dir / "config.yaml").write_text("seed: 0\n")
    result = {
        "metric": "accuracy",
        "mean": test,
        "ci95": 0.01,
        "val_mean": val,
        "val_ci95": 0.02,
        "seed": seed,
        "steps": 600,
        "data": "omniglot",
        "bn_mode": "transductive",
        "train_sec": 120.0,
    }
    (run_dir / "result.json").write_text(json.dumps(result))


def test_a_table_of_finished_runs_is_reported_over_seeds(tmp_path, capsys):
    runs = tmp_path / "omniglot-minimal1-cpu"
    for seed, val, test in ((0, 0.80, 0.90), (1, 0.82, 0.86), (2, 0.84, 0.88)):
        fake_run(runs / "cpu_maml_transductive" / f"seed{seed}", seed, val, test)
    fake_run(runs / "cpu_maml_support" / "seed0", 0, 0.7, 0.75)
    reproduce.main(["cpu-seeds", "--split", "minimal1", "--out", str(tmp_path), "--report-only"])
    table = (tmp_path / "cpu-seeds.md").read_text()
    # Over 3 seeds: mean ± t(0.975, 2) · sd / √3, sd = 0.02 for both.
    half = 100 * 4.302652729749462 * 0.02 / 3**0.5
    assert f"| maml, transductive | 82.00 ± {half:.2f} | 88.00 ± {half:.2f} | 3 | 1.00 |" in table
    assert "| protonet, running | no finished run |" in table
    # The BatchNorm table shares the runs and takes seed 0 alone, with its own intervals.
    reproduce.main(["cpu-bn-modes", "--split", "minimal1", "--out", str(tmp_path), "--report-only"])
    table = (tmp_path / "cpu-bn-modes.md").read_text()
    assert "| maml, transductive | 80.00 ± 2.00 | 90.00 ± 1.00 | 1 | – |" in table
    assert "| maml, support | 70.00 ± 2.00 | 75.00 ± 1.00 | 1 | – |" in table
    assert table in capsys.readouterr().out


def test_paper_tables_carry_the_published_figures():
    maml = reproduce.TABLES["maml-omniglot"]
    assert [(s.name, s.published) for s in maml.settings] == [
        ("5-way 1-shot", 98.7),
        ("5-way 5-shot", 99.9),
        ("20-way 1-shot", 95.8),
        ("20-way 5-shot", 98.9),
    ]
    with pytest.raises(SystemExit):
        reproduce.main(["no-such-table"])


def test_the_hallucination_table_pairs_protonet_with_and_without_on_the_cpu_budget():
    settings = reproduce.TABLES["cpu-hallucinate"].settings
    assert settings[0] == reproduce.TABLES["cpu-seeds"].settings[1]  # one run for both tables
    for plain, hallucinating in zip(settings[::2], settings[1::2], strict=True):
        assert hallucinating.overrides == (*plain.overrides, reproduce.HALLUCINATE)
        assert plain.overrides[: len(reproduce.CPU_PROTONET)] == reproduce.CPU_PROTONET
        assert "=" not in hallucinating.name  # a run dir's name, in a Hydra override
    assert [s.overrides[len(reproduce.CPU_PROTONET) :] for s in settings[2::2]] == [
        ("data.ways=5", "data.shots=5"),
        ("data.ways=20", "data.shots=1"),
    ]


def test_the_pretraining_table_runs_the_baselines_on_protonets_budget():
    """Baseline and Baseline++ take ProtoNet's CPU budget with the algorithm swapped; the MAML
    and ProtoNet rows are the other tables' runs (same name, same command, so the same dir)."""
    settings = {s.name: s for s in reproduce.TABLES["cpu-pretraining"].settings}
    shared = [
        *reproduce.TABLES["cpu-seeds"].settings,
        *reproduce.TABLES["cpu-hallucinate"].settings,
    ]
    for other in shared:
        if other.name in settings:
            assert settings[other.name] == other
    for suffix in ("", ", 5-way 5-shot", ", 20-way 1-shot"):
        protonet = settings[f"protonet, running{suffix}"]
        for algo in ("baseline", "baseline_pp"):
            ours = settings[f"{algo}, running{suffix}"]
            assert ours.overrides == (f"algo={algo}", *protonet.overrides[1:])
            assert ours.seeds == protonet.seeds
    assert "trainer.meta_batch=4" in settings["maml, transductive, 20-way 1-shot"].overrides
    assert settings["baseline, running"].seeds is None  # 5-way 1-shot: every --seeds


def test_darts_architectures_have_conv4s_parameter_count():
    # Conv-4, 32 filters, max-pool, 5-way on 28×28×1: 3×3 convolutions 9·1·32 + 3 · 9·32·32,
    # BatchNorms 4 · 2·32, head 32·5 + 5.
    target = 288 + 27_648 + 256 + 165
    assert reproduce._conv4_params() == target
    model, genotype, channels = reproduce._random(0, None)
    assert model == "model=darts"
    genotype = genotype.removeprefix("model.genotype=[").removesuffix("]").split(",")
    width = int(channels.removeprefix("model.channels="))
    gaps = {c: abs(reproduce._count(genotype, c) - target) for c in (width - 1, width, width + 1)}
    assert gaps[width] == min(gaps.values()) and gaps[width] < 0.05 * target


def test_a_setting_with_per_seed_overrides_is_one_row_over_its_seeds(tmp_path):
    out = tmp_path / "cpu_darts_random"
    for seed, val, test in ((0, 0.80, 0.90), (1, 0.82, 0.86), (2, 0.84, 0.88)):
        fake_run(out / f"seed{seed}", seed, val, test)
        overrides = out / f"seed{seed}" / ".hydra" / "overrides.yaml"
        genotype = f"- model.genotype=[op{seed}]\n"  # a different architecture per seed
        overrides.write_text(overrides.read_text() + genotype)
    setting = next(s for s in reproduce.TABLES["cpu-darts"].settings if s.per_seed)
    args = argparse.Namespace(seeds=[0, 1, 2])
    half = 100 * 4.302652729749462 * 0.02 / 3**0.5
    assert f"| 82.00 ± {half:.2f} | 88.00 ± {half:.2f} | 3 | 1.00 |" in reproduce.row(
        setting, args, out
    )
