"""Policy and PPM backends behind two small protocols (see base.py). Backends import lazily."""

from .base import Candidate, Executor, Policy, ValueModel

__all__ = ["Candidate", "Executor", "Policy", "ValueModel"]
