"""Acceptance policies by name, shared by the orchestrator (validation) and the verifier (execution).

`exact` and `rejection` are lossless. `typical`, `topk-agree` and `threshold` are LOSSY: they accept draft
tokens the target would not have produced, trading fidelity for speed, and are used only when asked for.
"""

from __future__ import annotations

from specdec.errors import InvalidArgument
from specdec.sampling import SamplingConfig

LOSSLESS_POLICIES = ("exact", "rejection")
LOSSY_POLICIES = ("typical", "topk-agree", "threshold")
POLICIES = (*LOSSLESS_POLICIES, *LOSSY_POLICIES)
DEFAULT_POLICY_PARAMS = {"typical_epsilon": 0.09, "typical_delta": 0.3, "agree_top_m": 2, "accept_threshold": 0.1}


def resolve_policy(policy: str, sampling: SamplingConfig) -> str:
    """Empty means exact at temperature 0, rejection otherwise. At temperature 0 both are exact match.
    The lossy policies are only ever used when asked for by name."""
    if policy not in ("", *POLICIES):
        raise InvalidArgument(f"policy must be one of {POLICIES}, got {policy!r}")
    if policy == "exact" and not sampling.greedy:
        raise InvalidArgument("policy 'exact' needs temperature 0; use 'rejection' to sample losslessly")
    if policy in LOSSY_POLICIES:
        return policy
    return "exact" if sampling.greedy else "rejection"


def resolve_policy_params(given: dict[str, float]) -> dict[str, float]:
    """proto3 zero values take the defaults; ranges are checked."""
    params = {name: given.get(name) or default for name, default in DEFAULT_POLICY_PARAMS.items()}
    if not 0 < params["typical_epsilon"] <= 1 or not params["typical_delta"] > 0:
        raise InvalidArgument("typical_epsilon must be in (0, 1] and typical_delta > 0")
    if params["agree_top_m"] < 1 or params["agree_top_m"] != int(params["agree_top_m"]):
        raise InvalidArgument(f"agree_top_m must be a positive integer, got {params['agree_top_m']}")
    if not 0 < params["accept_threshold"] <= 1:
        raise InvalidArgument(f"accept_threshold must be in (0, 1], got {params['accept_threshold']}")
    return params
