"""Simulated recommender world: a synthetic catalog and population with context-dependent preferences,
sessions with time budgets, return visits and a clickbait trap; plus a host driver (``host.py``) that plays
the world against the ranking service over gRPC. Pure numpy except ``host.py``.
"""

from recsys_rl.sim.config import SimConfig
from recsys_rl.sim.population import Candidate, Features
from recsys_rl.sim.world import DayReport, PageView, Response, World

__all__ = ["Candidate", "DayReport", "Features", "PageView", "Response", "SimConfig", "World"]
