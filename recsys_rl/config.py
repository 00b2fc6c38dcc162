"""Service and per-surface configuration (TOML), with the embedded default surface.

Example::

    [surfaces.home_feed]
    exploration_cap = 0.1          # largest non-greedy probability mass at any slot
    decision_budget_ms = 25        # past this the baseline serves
    catalog = true                 # candidates sent by id are completed from the item catalog (default true)

    [surfaces.home_feed.exploration]
    algorithm = "softmax"          # epsilon_greedy | softmax | squarecb
    temperature = 0.05

    [surfaces.home_feed.reward]
    weights = { click = 1.0, purchase = 5.0, dwell_seconds = 0.01 }
    attribution_window_seconds = 30
    aggregation = { dwell_seconds = "sum" }   # per outcome: "max" (default) or "sum"
    range = [0.0, 8.0]             # every per-item (and whole-slate) reward lies in [low, high]

    [surfaces.home_feed.model]
    publish_every = 2000           # learned decisions between published model versions
    baseline = "v000003-1a2b3c4d"  # a published LambdaRank baseline orders the baseline ("" = baseline_score)

    [surfaces.home_feed.retrieval] # candidate retrieval from the catalog: see recsys_rl/retrieval/config.py
    index = "ivf"

    [surfaces.home_feed.rollout]   # staged rollout: see recsys_rl/rollout/config.py
    stage = "shadow"               # baseline | shadow | canary | live (default live)

Reward (``logging_schema.rewards`` has the whole rule; online learning and the offline join both apply it):

* ``aggregation``: how repeats of one outcome for one item add up. ``max`` (the default for every outcome) counts a
  click reported three times once; ``sum`` adds dwell seconds reported in pieces. A host that sets
  ``ReportOutcomeRequest.outcome_id`` on its retries gets them dropped whatever the rule.
* ``range``: the bounds learning and the evaluators' bounded-reward intervals rely on; must contain 0. Unset, it
  is derived as if each aggregated outcome value lay in [0, 1]: ``[Σ min(0, weight), Σ max(0, weight)]`` ([0, 1]
  for the default ``click = 1``); a surface with a weighted ``sum`` outcome must declare it. ReportOutcome refuses
  (INVALID_ARGUMENT naming ``value``) an outcome whose ``weight · value`` alone falls outside the range; an
  aggregated reward that leaves it (several outcomes that each fit) is clipped to it, online and offline alike.
"""

from __future__ import annotations

import math
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from logging_schema.rewards import RewardDefinition
from recsys_rl.retrieval.config import RetrievalConfig
from recsys_rl.rollout.config import RolloutConfig
from recsys_rl.shield.rules import NO_SHIELD, ShieldConfigError, ShieldRules, parse_shield

DEFAULT_SURFACE = "default"
DEFAULT_EXPLORATION_CAP = 0.1
ALGORITHMS = ("epsilon_greedy", "softmax", "squarecb")
# Interval methods whose lower bound the cap gate accepts: both hold without a normality assumption.
GATE_CI_METHODS = ("bernstein", "bootstrap", "betting")
_VERSION_RE = re.compile(r"^v\d{6}-[0-9a-f]{8}$")  # as recsys_rl.serving.registry names versions


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the key."""


@dataclass(frozen=True)
class ExplorationConfig:
    """How the explorer spreads probability before the cap bounds it.

    epsilon_greedy: epsilon uniform mass (unset: the cap in force, so raising the cap raises exploration, as
    Personalizer's exploration percentage does; set: a fixed epsilon that the cap can only bound);
    softmax: exp(score / temperature);
    squarecb: p(a) = 1 / (n + gamma · (best − score(a))) for non-greedy a (Foster & Rakhlin 2020).
    """

    algorithm: str = "epsilon_greedy"
    epsilon: float | None = None
    temperature: float = 0.1
    gamma: float = 50.0

    def __post_init__(self) -> None:
        if self.algorithm not in ALGORITHMS:
            raise ConfigError(f"exploration.algorithm: {self.algorithm!r} is not one of {', '.join(ALGORITHMS)}")
        if self.epsilon is not None and not (0.0 <= self.epsilon <= 1.0):
            raise ConfigError(f"exploration.epsilon: must be in [0, 1], got {self.epsilon}")
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ConfigError(f"exploration.temperature: must be positive, got {self.temperature}")
        if not (self.gamma > 0 and math.isfinite(self.gamma)):
            raise ConfigError(f"exploration.gamma: must be positive, got {self.gamma}")


@dataclass(frozen=True)
class ModelConfig:
    """The VW bandit's options and how often the online learner publishes a version."""

    vw_args: str = "--cb_adf -q CI -q CF -q CG -q TI -q TF -q CE --power_t 0.25 -l 0.1 --cb_type ips -b 20"
    publish_every: int = 1000
    learn: bool = True
    # Weight λ of the slate-RL long-term value in the blended score (0 = bandit only).
    long_term_weight: float = 0.0
    # The baseline (fallback, stage baseline, shadow's served slate, canary control): "" = the host's
    # baseline_score; else a published LambdaRank version of "<surface>.baseline" (docs/baseline.md). An explicit
    # version, never "latest": what the fallback is changes only when the configuration says so.
    baseline: str = ""
    # Items whose parsed VW example serving keeps (per model, LRU). A parsed example takes ~32 kB, so the default
    # bounds it near 0.65 GiB per worker (twice that for a moment while a new version warms its cache).
    item_cache: int = 20_000

    def __post_init__(self) -> None:
        if self.item_cache <= 0:
            raise ConfigError(f"model.item_cache: must be a positive number of items, got {self.item_cache}")
        if self.publish_every <= 0:
            raise ConfigError(f"model.publish_every: must be positive, got {self.publish_every}")
        if not math.isfinite(self.long_term_weight) or self.long_term_weight < 0:
            raise ConfigError(f"model.long_term_weight: must be >= 0, got {self.long_term_weight}")
        if self.baseline and not _VERSION_RE.match(self.baseline):
            raise ConfigError(f"model.baseline: must be a published LambdaRank version (e.g. v000003-1a2b3c4d) or "
                              f"\"\" for the host's baseline_score, got {self.baseline!r}")


@dataclass(frozen=True)
class GateConfig:
    """Thresholds of the gate (TOML: ``[surfaces.<name>.gate]``)."""

    tolerance: float = 0.01  # absolute reward per slate the cap-X lower bound may fall below the current estimate
    min_ess: float = 1000.0  # smallest effective sample size of the cap-X importance weights
    max_age_hours: float = 24.0  # older reports are refused
    estimator: str = "rips"  # any evaluators estimator name; rips = cascade IPS
    ci: str = "bernstein"  # bernstein | bootstrap | betting (finite-sample valid without an observed-range assumption)
    alpha: float = 0.05  # one-sided error probability of the lower bound
    n_bootstrap: int = 2000  # resamples when ci = "bootstrap"
    seed: int = 0  # bootstrap seed

    def __post_init__(self) -> None:
        if not (math.isfinite(self.tolerance) and self.tolerance >= 0):
            raise ConfigError(f"gate.tolerance: must be >= 0, got {self.tolerance}")
        if not (math.isfinite(self.min_ess) and self.min_ess >= 0):
            raise ConfigError(f"gate.min_ess: must be >= 0, got {self.min_ess}")
        if not (math.isfinite(self.max_age_hours) and self.max_age_hours > 0):
            raise ConfigError(f"gate.max_age_hours: must be positive, got {self.max_age_hours}")
        if self.ci not in GATE_CI_METHODS:
            raise ConfigError(f"gate.ci: must be one of {', '.join(GATE_CI_METHODS)}, got {self.ci!r}")
        if not 0 < self.alpha < 0.5:
            raise ConfigError(f"gate.alpha: must be in (0, 0.5), got {self.alpha}")
        if self.n_bootstrap < 100:
            raise ConfigError(f"gate.n_bootstrap: must be >= 100, got {self.n_bootstrap}")
        if not isinstance(self.estimator, str) or not self.estimator.strip() or "," in self.estimator:
            raise ConfigError(f"gate.estimator: must name one estimator, got {self.estimator!r}")


@dataclass(frozen=True)
class SurfaceConfig:
    name: str = DEFAULT_SURFACE
    exploration_cap: float = DEFAULT_EXPLORATION_CAP
    exploration: ExplorationConfig = field(default_factory=ExplorationConfig)
    reward: RewardDefinition = field(default_factory=RewardDefinition)
    model: ModelConfig = field(default_factory=ModelConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    shield: ShieldRules = NO_SHIELD  # [surfaces.NAME.shield]: business rules (recsys_rl/shield/rules.py)
    decision_budget_ms: float = 25.0
    max_candidates: int = 10_000
    # Complete candidates sent by id from the data dir's item catalog (recsys_rl/catalog); false: used as sent.
    catalog: bool = True
    # [surfaces.NAME.retrieval]: the faiss index a request may retrieve from (recsys_rl/retrieval); None: no retrieval
    retrieval: RetrievalConfig | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.catalog, bool):
            raise ConfigError(f"surfaces.{self.name}.catalog: must be true or false, got {self.catalog!r}")
        if not (0.0 <= self.exploration_cap <= 1.0):
            raise ConfigError(f"surfaces.{self.name}.exploration_cap: must be in [0, 1], got {self.exploration_cap}")
        if not self.decision_budget_ms > 0:
            raise ConfigError(f"surfaces.{self.name}.decision_budget_ms: must be positive")


# The online learner's niceness above the serving processes' (``serve --learner-nice``): it follows the log anyway
# (it learns a decision once its window has closed), so at peak load it yields the CPU to Rank and catches up later.
DEFAULT_LEARNER_NICE = 10
LEARNER_NICE_RANGE = range(0, 20)


@dataclass(frozen=True)
class ServiceConfig:
    surfaces: dict[str, SurfaceConfig]
    seed: int = 0
    learner_nice: int = DEFAULT_LEARNER_NICE  # added to the server's niceness in the learner process; 0 = the same

    def __post_init__(self) -> None:
        if (not isinstance(self.learner_nice, int) or isinstance(self.learner_nice, bool)
                or self.learner_nice not in LEARNER_NICE_RANGE):
            raise ConfigError(f"--learner-nice: must be an integer from 0 to 19, got {self.learner_nice!r}")

    def surface(self, name: str) -> SurfaceConfig | None:
        return self.surfaces.get(name)

    def with_cap(self, cap: float) -> ServiceConfig:
        """Every surface at exploration cap ``cap`` (the --exploration-cap flag)."""
        return replace(self, surfaces={n: replace(s, exploration_cap=cap) for n, s in self.surfaces.items()})


def default_config(*, exploration_cap: float = DEFAULT_EXPLORATION_CAP, seed: int = 0) -> ServiceConfig:
    """The embedded default: one surface ``default``, epsilon-greedy under cap 0.1, reward = click."""
    return ServiceConfig(surfaces={DEFAULT_SURFACE: SurfaceConfig(exploration_cap=exploration_cap)}, seed=seed)


def _section(table: dict[str, Any], key: str, where: str) -> dict[str, Any]:
    value = table.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}.{key}: must be a table")
    return value


def _build(cls: type, values: dict[str, Any], where: str, **extra: Any) -> Any:
    known = set(cls.__dataclass_fields__)
    for key in values:
        if key not in known:
            raise ConfigError(f"{where}.{key}: unknown key")
    try:
        return cls(**values, **extra)
    except (TypeError, ValueError) as exc:
        # Sections name their keys relative to themselves ("exploration.algorithm: ..."): give the full path.
        message, section = str(exc), where.rsplit(".", 1)[-1]
        if message.startswith(f"{section}."):
            raise ConfigError(where + message[len(section):]) from exc
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"{where}: {message}") from exc


def parse_config(data: dict[str, Any], *, seed: int = 0, base_dir: Path | None = None) -> ServiceConfig:
    """``base_dir``: where relative paths (shield.blocked_items_file) resolve: the config file's directory."""
    surfaces_table = _section(data, "surfaces", "config")
    if not surfaces_table:
        raise ConfigError("config.surfaces: at least one surface is required")
    surfaces: dict[str, SurfaceConfig] = {}
    for name, table in surfaces_table.items():
        where = f"surfaces.{name}"
        if not isinstance(table, dict):
            raise ConfigError(f"{where}: must be a table")
        nested = {k: table[k] for k in ("exploration", "reward", "model", "gate", "rollout", "shield", "retrieval")
                  if k in table}
        flat = {k: v for k, v in table.items() if k not in nested}
        exploration = _build(ExplorationConfig, _section(table, "exploration", where), f"{where}.exploration")
        reward = _build(RewardDefinition, _section(table, "reward", where), f"{where}.reward")
        model = _build(ModelConfig, _section(table, "model", where), f"{where}.model")
        gate = _build(GateConfig, _section(table, "gate", where), f"{where}.gate")
        rollout = _build(RolloutConfig, _section(table, "rollout", where), f"{where}.rollout")
        retrieval = (_build(RetrievalConfig, _section(table, "retrieval", where), f"{where}.retrieval")
                     if "retrieval" in table else None)
        shield = NO_SHIELD
        if "shield" in table:
            try:
                shield = parse_shield(_section(table, "shield", where), base_dir=base_dir)
            except ShieldConfigError as exc:
                raise ConfigError(f"{where}.{exc}") from exc
        if "name" in flat:
            raise ConfigError(f"{where}.name: the surface name is the table key")
        surfaces[name] = _build(
            SurfaceConfig, flat, where, name=name, exploration=exploration, reward=reward, model=model, gate=gate,
            rollout=rollout, shield=shield, retrieval=retrieval,
        )
    return ServiceConfig(surfaces=surfaces, seed=seed)


def load_config(path: str | Path, *, seed: int = 0) -> ServiceConfig:
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise ConfigError(f"--config: cannot read {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"--config: {path} is not valid TOML: {exc}") from exc
    return parse_config(data, seed=seed, base_dir=Path(path).parent)
