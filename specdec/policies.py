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


PARAM_POLICY = {"typical_epsilon": "typical", "typical_delta": "typical", "agree_top_m": "topk-agree",
                "accept_threshold": "threshold"}  # fmt: skip


def resolve_policy_params(
    given: dict[str, float], policy: str = "", sampling: SamplingConfig | None = None
) -> dict[str, float]:
    """proto3 zero values take the defaults; ranges are checked. With the resolved `policy`, a parameter of
    another policy is refused (it would be silently ignored: most likely the client's mistake), and so is a
    `topk-agree` wider than the target's own top-k (it would accept tokens the target can never emit)."""
    if policy:
        for name, value in given.items():
            if value and PARAM_POLICY[name] != policy:
                raise InvalidArgument(
                    f"policy_params.{name} applies to policy {PARAM_POLICY[name]!r}, but the policy is {policy!r}"
                )
    params = {name: given.get(name) or default for name, default in DEFAULT_POLICY_PARAMS.items()}
    top_k = sampling.top_k if sampling is not None and not sampling.greedy else 0
    if policy == "topk-agree" and top_k and params["agree_top_m"] > top_k:
        raise InvalidArgument(
            f"policy_params.agree_top_m ({params['agree_top_m']:g}) must not exceed top_k ({top_k}): "
            "tokens outside the target's top-k are never sampled"
        )
    if not 0 < params["typical_epsilon"] <= 1:
        raise InvalidArgument(f"policy_params.typical_epsilon must be in (0, 1], got {params['typical_epsilon']}")
    if not 0 < params["typical_delta"] < float("inf"):
        raise InvalidArgument(f"policy_params.typical_delta must be a positive number, got {params['typical_delta']}")
    if params["agree_top_m"] < 1 or params["agree_top_m"] != int(params["agree_top_m"]):
        raise InvalidArgument(f"policy_params.agree_top_m must be a positive integer, got {params['agree_top_m']}")
    if not 0 < params["accept_threshold"] <= 1:
        raise InvalidArgument(f"policy_params.accept_threshold must be in (0, 1], got {params['accept_threshold']}")
    return params


def policy_params_for(policy: str, params: dict[str, float]) -> dict[str, float]:
    """The parameters that belong to `policy` (what an orchestrator passes on to the verifier)."""
    return {name: value for name, value in params.items() if PARAM_POLICY[name] == policy}
