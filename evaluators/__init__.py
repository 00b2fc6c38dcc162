"""Counterfactual (off-policy) evaluation on bandit-feedback tables.

Kept light on purpose: importing ``evaluators`` loads polars, numpy and scipy but never lightgbm or
matplotlib (those load with ``evaluators.reward_model`` and the HTML report).
"""

from evaluators.estimators import (
    DM,
    DR,
    DROS,
    IPS,
    SNDR,
    SNIPS,
    ClippedIPS,
    Estimator,
    Statistics,
    SwitchDR,
    parse_estimators,
)
from evaluators.embeddings import MIPS, MIPSDR, SNMIPS, add_embedding_propensities
from evaluators.evaluate import estimate
from evaluators.slate import CascadeDR, IndependentIPS, PseudoInverse, RIPS, StandardIPS
from evaluators.table import TableError, validate_table

__all__ = [
    "DM", "DR", "DROS", "IPS", "MIPS", "MIPSDR", "SNDR", "SNIPS", "SNMIPS", "CascadeDR", "ClippedIPS", "Estimator", "IndependentIPS",
    "PseudoInverse", "RIPS", "StandardIPS", "Statistics", "SwitchDR", "TableError", "add_embedding_propensities",
    "estimate",
    "parse_estimators", "validate_table",
]
