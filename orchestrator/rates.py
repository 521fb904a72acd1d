"""Success rates that fade with age and lean on a prior until the evidence is in (the `cost` controller's
acceptance per bucket, and the tree trim's hit rate per path-probability bin)."""

from __future__ import annotations

from dataclasses import dataclass

PRIOR_STRENGTH = 2.0  # pseudo-trials behind a prior rate
MAX_PRIOR_STRENGTH = 8.0  # what earlier sessions taught weighs at most this many of this session's trials


@dataclass
class DecayedRate:
    """Successes over trials, older observations fading by `decay` per update."""

    hits: float = 0.0
    trials: float = 0.0

    def add(self, hits: float, trials: float, decay: float) -> None:
        self.hits = self.hits * decay + hits
        self.trials = self.trials * decay + trials

    def estimate(self, prior: float, strength: float = PRIOR_STRENGTH) -> float:
        return (self.hits + strength * prior) / (self.trials + strength)
