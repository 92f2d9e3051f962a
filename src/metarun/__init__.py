"""metarun: meta-learning experiments in JAX. The public API is :func:`load`."""

from metarun.api import Learner, load

__all__ = ["Learner", "load"]
