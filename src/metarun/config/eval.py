"""Schema of ``conf/eval/default.yaml``: meta-validation and the final meta-test
(``metarun.evaluate``)."""

from __future__ import annotations

from dataclasses import dataclass

from metarun.config.errors import _check


@dataclass
class EvalConfig:
    episodes: int = 600  # meta-test tasks for the final mean ± 95% CI
    inner_steps: int = 10  # adaptation steps at test time (training uses algo.inner_steps)
    val_episodes: int = 100  # tasks per periodic meta-validation
    batch: int = 100  # tasks evaluated together in one vmap (bounds memory)
    seed: int = 0  # evaluation episodes depend on this only: every run sees the same tasks

    def __post_init__(self) -> None:
        _check(
            self.episodes >= 2,
            "eval.episodes",
            self.episodes,
            "must be >= 2 to give a confidence interval",
        )
        _check(self.val_episodes >= 2, "eval.val_episodes", self.val_episodes, "must be >= 2")
        _check(self.inner_steps >= 0, "eval.inner_steps", self.inner_steps, "must be >= 0")
        _check(self.batch >= 1, "eval.batch", self.batch, "must be >= 1")
