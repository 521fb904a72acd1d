"""K controllers: how many draft tokens to propose at each step of one session.

Every controller sees the same observation after each step and only ever changes K, so all of them keep
the lossless guarantee. K = 0 means a target-only step (no draft call at all).

- `fixed`: always K.
- `heuristic` (HF assisted generation's rule): K += 2 when every drafted token was accepted, else
  K = max(1, K - 1), within [1, K_max].
- `confidence` (llama.cpp's rule): propose up to K_max and let the draft stop itself when its own top-1
  probability falls below p_min (sent with each propose).
- `cost`: choose K in [0, K_max] maximising expected committed tokens per second,
  E(alpha, K) / (K * t_draft + t_verify(K) + t_network), E = (1 - alpha^(K+1)) / (1 - alpha) (Leviathan et al.),
  with alpha and the times measured online for this session; after `probe_every` target-only steps it
  drafts once more, so a session that turned speculation off can turn it back on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from specdec.errors import InvalidArgument

CONTROLLERS = ("fixed", "heuristic", "confidence", "cost")


@dataclass(frozen=True)
class StepObservation:
    """What one step did: K asked for, tokens drafted (the draft may propose fewer), tokens accepted,
    and the step's time split in milliseconds."""

    k: int
    drafted: int
    accepted: int
    draft_ms: float
    verify_ms: float
    draft_network_ms: float  # round trip of the propose call minus draft compute (0 without a draft call)
    verify_network_ms: float  # round trip of the verify call minus verify compute


class FixedK:
    def __init__(self, k: int) -> None:
        self.k = k

    def next_k(self) -> int:
        return self.k

    def observe(self, step: StepObservation) -> None:
        pass


class HeuristicK:
    def __init__(self, k: int, k_max: int) -> None:
        self.k_max = k_max
        self.k = max(1, min(k, k_max))

    def next_k(self) -> int:
        return self.k

    def observe(self, step: StepObservation) -> None:
        if step.drafted == 0:
            return  # nothing was proposed: no evidence either way
        if step.accepted == step.drafted:
            self.k = min(self.k + 2, self.k_max)
        else:
            self.k = max(1, self.k - 1)


def expected_tokens(alpha: float, k: int) -> float:
    """Expected tokens committed by a step of k drafts with per-position acceptance alpha (bonus included)."""
    if alpha >= 1.0:
        return float(k + 1)
    return (1.0 - alpha ** (k + 1)) / (1.0 - alpha)


def _ema(old: float | None, new: float, weight: float) -> float:
    return new if old is None else (1.0 - weight) * old + weight * new


@dataclass
class CostModelK:
    """Picks K from a cost model fitted online. Times are per session, so a slow network or a costly
    draft shows up in what it picks."""

    k_start: int
    k_max: int
    probe_every: int = 16  # after this many K = 0 steps, draft once to re-measure alpha
    weight: float = 0.2  # EMA weight of a new observation
    alpha_prior: float = 0.5
    alpha: float | None = None
    draft_ms_per_token: float | None = None
    verify_base_ms: float | None = None  # t_verify(0)
    verify_ms_per_token: float | None = None  # slope of t_verify in K
    network_verify_ms: float | None = None
    network_draft_ms: float | None = None
    steps_without_draft: int = 0
    history: list[int] = field(default_factory=list)

    def next_k(self) -> int:
        if self.alpha is None or self.verify_base_ms is None:
            k = min(self.k_start, self.k_max)  # warm-up: measure before modelling
        elif self.steps_without_draft >= self.probe_every:
            k = max(1, min(2, self.k_max))  # re-probe
        else:
            k = max(range(self.k_max + 1), key=self.rate)
        self.history.append(k)
        return k

    def rate(self, k: int) -> float:
        """Predicted committed tokens per millisecond at K = k."""
        alpha = self.alpha if self.alpha is not None else self.alpha_prior
        base = self.verify_base_ms or 1.0
        slope = self.verify_ms_per_token if self.verify_ms_per_token is not None else 0.05 * base
        step_ms = base + (self.network_verify_ms or 0.0)
        if k > 0:
            step_ms += k * ((self.draft_ms_per_token or 0.0) + slope) + (self.network_draft_ms or 0.0)
        return expected_tokens(alpha, k) / max(step_ms, 1e-6)

    def observe(self, step: StepObservation) -> None:
        w = self.weight
        if step.drafted > 0:
            self.steps_without_draft = 0
            # positions up to the first rejection are observed: `accepted` successes out of that many trials
            trials = step.accepted + (1 if step.accepted < step.drafted else 0)
            self.alpha = _ema(self.alpha, step.accepted / trials, w)
            self.draft_ms_per_token = _ema(self.draft_ms_per_token, step.draft_ms / step.drafted, w)
            if self.verify_base_ms is not None:
                extra = max(0.0, step.verify_ms - self.verify_base_ms) / step.drafted
                self.verify_ms_per_token = _ema(self.verify_ms_per_token, extra, w)
            self.network_draft_ms = _ema(self.network_draft_ms, step.draft_network_ms, w)
        else:
            self.steps_without_draft += 1
            self.verify_base_ms = _ema(self.verify_base_ms, step.verify_ms, w)
        self.network_verify_ms = _ema(self.network_verify_ms, step.verify_network_ms, w)
        if self.verify_base_ms is None and step.drafted > 0:  # no target-only step seen yet: a prior
            self.verify_base_ms = step.verify_ms / (1.0 + 0.05 * step.drafted)


KController = FixedK | HeuristicK | CostModelK


def make_controller(name: str, k: int, k_max: int) -> KController:
    if name == "fixed":
        return FixedK(k)
    if name == "heuristic":
        return HeuristicK(k, k_max)
    if name == "confidence":
        return FixedK(k_max)  # the draft stops itself below p_min
    if name == "cost":
        return CostModelK(k_start=k, k_max=k_max)
    raise InvalidArgument(f"k_controller must be one of {CONTROLLERS}, got {name!r}")
