"""Stopping and selection rules behind one interface (see docs/DESIGN.md, "policies").

>>> from optscale.policies import make_policy
>>> make_policy("esc:window=5").label
'ESC(window=5)'
"""

from __future__ import annotations

from optscale.policies._vec import best_score, prefix_best_score
from optscale.policies.base import (
    GUARANTEE_NONE,
    GUARANTEE_PLUGIN,
    GUARANTEE_POSTERIOR,
    GUARANTEES,
    BatchOnlyError,
    Observation,
    Policy,
    ReplayBatch,
    ReplayResult,
    effective_budget,
    replay_loop,
)
from optscale.policies.bayes import PosteriorOptScale
from optscale.policies.bon import BoN
from optscale.policies.consistency import ASC, ESC, SelfConsistency, WeightedSC, asc_confidence
from optscale.policies.costaware import BudgetAllocation, CostAware, GainModel
from optscale.policies.dsc import DSC
from optscale.policies.optscale import OptScale0, OptScaleT
from optscale.policies.refine import MRThinking
from optscale.policies.registry import POLICIES, make_policy, parse_spec
from optscale.policies.wvote import WeightedASC

__all__ = [
    "GUARANTEES",
    "GUARANTEE_NONE",
    "GUARANTEE_PLUGIN",
    "GUARANTEE_POSTERIOR",
    "PosteriorOptScale",
    "CostAware",
    "BudgetAllocation",
    "GainModel",
    "WeightedASC",
    "ASC",
    "BatchOnlyError",
    "BoN",
    "DSC",
    "ESC",
    "MRThinking",
    "Observation",
    "OptScale0",
    "OptScaleT",
    "POLICIES",
    "Policy",
    "ReplayBatch",
    "ReplayResult",
    "SelfConsistency",
    "WeightedSC",
    "asc_confidence",
    "best_score",
    "prefix_best_score",
    "effective_budget",
    "make_policy",
    "parse_spec",
    "replay_loop",
]
