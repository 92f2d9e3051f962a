"""scripts/ab_step.py: variants of one meta-step timed in turn in one process."""

import json
import sys
from pathlib import Path

import jax.numpy as jnp
import pytest

# The scripts import each other as top-level modules.
sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
import ab_step  # noqa: E402
from bench import Prepared  # noqa: E402


def counting_variant(name: str, calls: list[str]) -> Prepared:
    def meta_step(state, train_key, sample):
        calls.append(name)
        return state + 1, {"loss": jnp.zeros(())}

    return Prepared(None, 0, meta_step, 0.0, jnp.zeros((), jnp.int32), None, None, 1.0)


def test_every_variant_is_timed_every_round_the_order_rotating():
    calls = []
    variants = [counting_variant(name, calls) for name in "abc"]
    times = ab_step.alternate(variants, rounds=3, steps=2)
    assert [len(t) for t in times] == [6, 6, 6]
    assert all(s > 0 for t in times for s in t)
    # Round r starts at variant r mod 3; each variant's steps run back to back.
    assert "".join(calls) == "aabbcc" + "bbccaa" + "ccaabb"


def test_the_cli_prints_each_variant_against_the_first(tmp_path, monkeypatch, capsys):
    out = tmp_path / "ab.jsonl"
    argv = [
        "ab_step.py", "--workload", "maml-sinusoid", "--set", "trainer.meta_batch=4",
        "--variant", "", "--variant", "algo.inner_steps=2",
        "--rounds", "2", "--steps", "3", "--warmup", "1", "--out", str(out),
    ]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    ab_step.main()
    table = capsys.readouterr().out
    assert "| (none) |" in table and "| algo.inner_steps=2 |" in table
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["variant"] for r in rows] == [[], ["algo.inner_steps=2"]]
    assert rows[0]["speed_vs_first_by_round"] == [1.0, 1.0]
    assert len(rows[1]["speed_vs_first_by_round"]) == 2
    # Two inner steps are more arithmetic a task than one.
    assert rows[1]["gflop_per_task"] > rows[0]["gflop_per_task"] > 0


def test_one_variant_is_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["ab_step.py", "--workload", "maml-sinusoid", "--variant", ""])
    with pytest.raises(SystemExit):
        ab_step.main()
    assert "give at least two --variant" in capsys.readouterr().err
