"""Target policies for counterfactual replay: ``--policy SPEC`` parsed and resolved against a data dir.

Grammar::

    SPEC     = BASE ("@" KEY "=" VALUE)*
    BASE     = "current" | "logged" | "baseline" | "uniform" | <version, e.g. v000012-abcdef12> | <version dir>
             | "baseline@" <version of <surface>.baseline: a LambdaRank baseline, Greedy, recsys_rl.baseline>
    KEY      = "cap" | "algorithm" | "epsilon" | "temperature" | "gamma"     (model policies only)

Every target resolves, for each logged decision, to a :class:`recsys_rl.serving.decision.DecisionPolicy` - the
frozen state serving decides with - and replay asks the serving decision path
(:func:`recsys_rl.serving.decision.target_propensities`) for the probability of the logged slate, so target
propensities come from the same code that scores and draws served slates:

* a model (``current`` = the surface's LATEST registry version): scorer = VWBandit (+ λ·long-term value from the
  decision's logged long-term input), explorer = make_explorer(surface exploration with overrides, cap). A model
  that raises or returns non-finite scores falls back to the baseline, as serving does.
* ``logged``: each decision's own model version (``policy_version`` in its event) with the exploration parameters
  and cap logged with it, unless overridden: ``logged@cap=0.2`` asks what the learning system as it ran would
  have earned at cap 0.2. A policy that keeps learning publishes many versions; comparing ``current`` (one
  version) with logs of many others gives tiny overlap (importance weights collapse), while ``logged`` with no
  override reproduces the logged propensities exactly, and with one changes only the exploration. Decisions the
  baseline served (fallback, or by the rollout's choice: modes BASELINE and SHADOW) stay with the baseline.
  The scores come from the log when the decision logged them (``candidate_scores``: run.reusable_scores), so
  only the explorer is recomputed; decisions without them are scored through VW as any model target is.
* ``baseline``: scores = baseline_score, explorer = Greedy: argmax with ties to the lowest index among the
  remaining candidates, exactly the order serving's baseline serves (``decision.baseline_order``).
  Target probability is 1 for the baseline's choice given the logged prefix, else 0. On a surface whose
  configuration names a learned baseline (``model.baseline``) it is that LambdaRank version, as serving's.
  ``logged`` replays each baseline-served decision with the baseline that ordered it (the event's
  ``baseline_version``), and a model target falls back to the surface's configured baseline, as serving does.
* ``uniform``: EpsilonGreedy(1) over the remaining candidates: 1/(n − k) at slot k.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Literal

from recsys_rl.config import ALGORITHMS, ConfigError, ExplorationConfig, SurfaceConfig
from recsys_rl.errors import InvalidInput, NotFound
from recsys_rl.serving.decision import (
    BaselineScorer, ConstantScorer, DecisionPolicy, LongTermValue, NoLongTermValue, Scorer,
)
from recsys_rl.serving.exploration import EpsilonGreedy, Explorer, Greedy, make_explorer
from recsys_rl.ranking.v1 import ranking_service_pb2 as pb

PolicyKind = Literal["model", "logged", "baseline", "uniform"]
_VERSION_RE = re.compile(r"^v\d{6}-[0-9a-f]{8}$")  # as recsys_rl.serving.registry names versions
_FLOAT_KEYS = ("cap", "epsilon", "temperature", "gamma")
_KNOWN = "current, logged, baseline, uniform, a model version (e.g. v000012-abcdef12) or a path to a version directory"


@dataclass(frozen=True)
class PolicySpec:
    """A parsed ``--policy`` value. ``version`` None with kind "model" means the surface's latest version."""

    text: str
    kind: PolicyKind
    version: str | None = None
    path: Path | None = None
    cap: float | None = None
    algorithm: str | None = None
    epsilon: float | None = None
    temperature: float | None = None
    gamma: float | None = None


def _error(part: str, reason: str) -> InvalidInput:
    return InvalidInput(f"policy {part!r}", reason)


def parse_policy_spec(spec: str) -> PolicySpec:
    """Parse SPEC (module docstring). Raises InvalidInput naming the offending part of the spec.

    Syntax only: whether a version exists is checked by :func:`resolve_policy`.
    """
    if not isinstance(spec, str) or not spec.strip():
        raise InvalidInput("policy", "must not be empty")
    base, *suffixes = spec.strip().split("@")
    if base == "baseline" and len(suffixes) == 1 and _VERSION_RE.match(suffixes[0]):
        return PolicySpec(text=spec, kind="baseline", version=suffixes[0])  # a published LambdaRank baseline
    overrides: dict[str, float | str] = {}
    for suffix in suffixes:
        part = f"@{suffix}"
        key, sep, value = suffix.partition("=")
        if not sep or not key or not value:
            raise _error(part, "expected @KEY=VALUE, e.g. @cap=0.2")
        if key in overrides:
            raise _error(part, f"{key} is given twice")
        if key == "algorithm":
            if value not in ALGORITHMS:
                raise _error(part, f"algorithm must be one of {', '.join(ALGORITHMS)}, got {value!r}")
            overrides[key] = value
        elif key in _FLOAT_KEYS:
            try:
                number = float(value)
            except ValueError:
                raise _error(part, f"{key} must be a number, got {value!r}") from None
            if not math.isfinite(number):
                raise _error(part, f"{key} must be finite, got {value!r}")
            if key in ("cap", "epsilon") and not 0.0 <= number <= 1.0:
                raise _error(part, f"{key} must be in [0, 1], got {value}")
            if key in ("temperature", "gamma") and number <= 0.0:
                raise _error(part, f"{key} must be positive, got {value}")
            overrides[key] = number
        else:
            raise _error(part, f"unknown option {key!r} (known: cap, algorithm, epsilon, temperature, gamma)")

    if base in ("baseline", "uniform"):
        if overrides:
            raise _error(f"{base}@{suffixes[0]}", f"{base} is deterministic in its scores; exploration options "
                                                  "apply only to model policies")
        return PolicySpec(text=spec, kind=base)  # type: ignore[arg-type]
    if base == "current":
        return PolicySpec(text=spec, kind="model", **overrides)  # type: ignore[arg-type]
    if base == "logged":
        return PolicySpec(text=spec, kind="logged", **overrides)  # type: ignore[arg-type]
    if _VERSION_RE.match(base):
        return PolicySpec(text=spec, kind="model", version=base, **overrides)  # type: ignore[arg-type]
    if "/" in base or base.startswith(".") or Path(base).is_dir():
        return PolicySpec(text=spec, kind="model", path=Path(base), **overrides)  # type: ignore[arg-type]
    raise _error(base, f"unknown policy (expected {_KNOWN})")


# --- resolved targets ------------------------------------------------------------------------------


class TargetPolicy:
    """What replay asks of a target: the decision state it would have decided a logged decision with."""

    name: str
    policy_version: str

    def policy_for(self, event: object) -> DecisionPolicy:
        """The DecisionPolicy for one logged decision (``event``: its DecisionEvent or table view)."""
        raise NotImplementedError


def _fixed_policy(surface: SurfaceConfig, version: str, scorer: Scorer, explorer: Explorer) -> DecisionPolicy:
    return DecisionPolicy(surface=surface.name, policy_version=version, scorer=scorer, explorer=explorer,
                          exploration=surface.exploration, cap=0.0, shield=surface.shield)


class BaselineTarget(TargetPolicy):
    """The host's baseline_score, or (``baseline@VERSION``) a published LambdaRank baseline, with Greedy."""

    name = "baseline"
    policy_version = "baseline"

    def __init__(self, surface: SurfaceConfig, scorer: Scorer | None = None, version: str = "") -> None:
        self.version = version
        if version:
            self.name = self.policy_version = f"baseline@{version}"
        self._policy = _fixed_policy(surface, self.policy_version, scorer or BaselineScorer(), Greedy())

    def policy_for(self, event: object = None) -> DecisionPolicy:
        return self._policy


class UniformTarget(TargetPolicy):
    name = "uniform"
    policy_version = "uniform"

    def __init__(self, surface: SurfaceConfig) -> None:
        # p = 1/n' exactly over the n' remaining candidates; the scores do not matter at ε = 1.
        self._policy = _fixed_policy(surface, "uniform", ConstantScorer(), EpsilonGreedy(1.0))

    def policy_for(self, event: object = None) -> DecisionPolicy:
        return self._policy


class ModelTarget(TargetPolicy):
    """A VW checkpoint decided with exactly as serving decides (bandit ⊕ λ·long-term value, capped explorer)."""

    def __init__(self, name: str, policy_version: str, bandit: Scorer, explorer: Explorer, surface: SurfaceConfig,
                 *, exploration: ExplorationConfig | None = None, cap: float | None = None,
                 long_term: LongTermValue = NoLongTermValue(), baseline: BaselineTarget | None = None) -> None:
        """``baseline``: the surface's learned baseline, which stands in when the model fails (default host)."""
        self.name = name
        self.policy_version = policy_version
        fallback = {} if baseline is None else {"baseline": baseline.policy_for().scorer,
                                                 "baseline_version": baseline.version}
        self._policy = DecisionPolicy(
            surface=surface.name, policy_version=policy_version, scorer=bandit, explorer=explorer,
            exploration=exploration or surface.exploration,
            cap=surface.exploration_cap if cap is None else cap, long_term=long_term,
            long_term_weight=surface.model.long_term_weight, shield=surface.shield, **fallback,
        )

    @property
    def bandit(self) -> Scorer:
        return self._policy.scorer

    def policy_for(self, event: object = None) -> DecisionPolicy:
        return self._policy

    def with_explorer(self, explorer: Explorer, exploration: ExplorationConfig, cap: float) -> DecisionPolicy:
        return replace(self._policy, explorer=explorer, exploration=exploration, cap=cap)


# Serving modes whose served slate is the baseline's (propensity 1): the model could not (fallback), or the rollout
# chose the baseline (stage baseline, a control user, or stage shadow, where the learned slate was only logged).
BASELINE_SERVED = frozenset({pb.SERVING_MODE_BASELINE_FALLBACK, pb.SERVING_MODE_BASELINE, pb.SERVING_MODE_SHADOW})


class LoggedTarget(TargetPolicy):
    """Each decision's own model version and logged exploration, with the spec's overrides (module docstring)."""

    _MAX_MODELS = 8  # versions kept loaded; logs are in time order, so a small LRU sees each version once
    _MAX_LOGGED = 1024  # (version, logged exploration) pairs remembered

    def __init__(self, spec: PolicySpec, data_dir: Path, surface: SurfaceConfig, *,
                 long_term: LongTermValue = NoLongTermValue()) -> None:
        self.name = spec.text
        self.policy_version = "logged"
        self.spec = spec
        self.data_dir = Path(data_dir)
        self.surface = surface
        self.long_term = long_term
        self._models: dict[str, ModelTarget] = {}
        self._policies: dict[tuple[str, tuple[str, float, float, float, float]], DecisionPolicy] = {}
        self._baselines: dict[str, BaselineTarget] = {"": BaselineTarget(surface)}  # by logged baseline_version
        # (logged version, logged exploration) -> its policy: one dict lookup a decision (replay asks for each).
        self._by_logged: dict[tuple[str, str, float, float, float, float], DecisionPolicy] = {}
        # What a model that fails in replay falls back to: the surface's configured baseline, as in serving.
        self._fallback = _learned_baseline(PolicySpec(text="baseline", kind="baseline"), self.data_dir, surface)

    def _model(self, version: str) -> ModelTarget:
        model = self._models.pop(version, None)
        if model is None:
            from recsys_rl.serving.bandit import VWBandit

            _, weights = _load_registry_version(replace(self.spec, version=version), self.data_dir, self.surface.name)
            model = ModelTarget(self.name, version, VWBandit(self.surface.model.vw_args, model=weights), Greedy(),
                                self.surface, long_term=self.long_term, baseline=self._fallback)
            while len(self._models) >= self._MAX_MODELS:
                evicted = self._models.pop(next(iter(self._models)))
                self._policies = {k: v for k, v in self._policies.items() if k[0] != evicted.policy_version}
                self._by_logged.clear()
        self._models[version] = model  # most recently used last
        return model

    def _exploration_key(self, logged: object) -> tuple[str, float, float, float, float]:
        spec = self.spec
        epsilon = logged.epsilon  # type: ignore[attr-defined]
        if spec.epsilon is not None:
            epsilon = spec.epsilon
        elif spec.cap is not None and self.surface.exploration.epsilon is None:
            epsilon = spec.cap  # the surface's epsilon follows its cap, so it follows the overridden cap too
        return (spec.algorithm or logged.algorithm,  # type: ignore[attr-defined]
                epsilon,
                logged.temperature if spec.temperature is None else spec.temperature,  # type: ignore[attr-defined]
                logged.gamma if spec.gamma is None else spec.gamma,  # type: ignore[attr-defined]
                logged.cap if spec.cap is None else spec.cap)  # type: ignore[attr-defined]

    def policy_for(self, event: object = None) -> DecisionPolicy:
        if event is None:
            raise ValueError("event: the logged target needs the logged decision")
        if event.serving_mode in BASELINE_SERVED:  # type: ignore[attr-defined]
            version = event.baseline_version  # type: ignore[attr-defined]
            baseline = self._baselines.get(version)
            if baseline is None:
                spec = PolicySpec(text=f"baseline@{version}", kind="baseline", version=version)
                baseline = self._baselines[version] = _learned_baseline(spec, self.data_dir, self.surface)
            return baseline.policy_for()
        logged = event.exploration  # type: ignore[attr-defined]
        seen = (event.policy_version, logged.algorithm, logged.epsilon, logged.temperature,  # type: ignore[attr-defined]
                logged.gamma, logged.cap)
        policy = self._by_logged.get(seen)
        if policy is None:
            if len(self._by_logged) >= self._MAX_LOGGED:  # e.g. a NaN in the key never matches itself
                self._by_logged.clear()
            policy = self._by_logged[seen] = self._model_policy(event)
        return policy

    def _model_policy(self, event: object) -> DecisionPolicy:
        model = self._model(event.policy_version)  # type: ignore[attr-defined]
        key = (model.policy_version, self._exploration_key(event.exploration))  # type: ignore[attr-defined]
        policy = self._policies.get(key)
        if policy is None:
            algorithm, epsilon, temperature, gamma, cap = key[1]
            try:
                config = ExplorationConfig(algorithm=algorithm, epsilon=epsilon, temperature=temperature, gamma=gamma)
            except ConfigError as exc:
                raise _error(self.spec.text, f"logged exploration with the overrides is invalid: {exc}") from exc
            policy = self._policies[key] = model.with_explorer(make_explorer(config, cap), config, cap)
        return policy


def _exploration(spec: PolicySpec, surface: SurfaceConfig) -> tuple[ExplorationConfig, float]:
    keys = ("algorithm", "epsilon", "temperature", "gamma")
    changes = {k: getattr(spec, k) for k in keys if getattr(spec, k) is not None}
    try:
        exploration = replace(surface.exploration, **changes)
    except ConfigError as exc:
        raise _error(spec.text, str(exc)) from exc
    cap = surface.exploration_cap if spec.cap is None else spec.cap
    return exploration, cap


def _load_version_dir(path: Path) -> tuple[str, bytes]:
    """(version, model bytes) of a registry version directory, checked against its manifest's sha256."""
    manifest_path, model_path = path / "manifest.json", path / "model.bin"
    if not manifest_path.is_file() or not model_path.is_file():
        raise _error(str(path), "not a model version directory (expected manifest.json and model.bin)")
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError) as exc:
        raise _error(str(path), f"unreadable manifest.json: {exc}") from exc
    model = model_path.read_bytes()
    if hashlib.sha256(model).hexdigest() != manifest.get("sha256"):
        raise _error(str(path), "model.bin does not match the sha256 in manifest.json")
    return str(manifest.get("version") or path.name), model


def model_of(spec: PolicySpec, data_dir: Path, surface: SurfaceConfig) -> tuple[str, bytes] | None:
    """(version, model bytes) a model target names (checked against its manifest), None for the other kinds: what
    a distributed replay ships to its executors once (``resolve_policy(..., model=...)`` there)."""
    if spec.kind != "model":
        return None
    if spec.path is not None:
        return _load_version_dir(spec.path)
    return _load_registry_version(spec, Path(data_dir), surface.name)


def resolve_policy(spec: PolicySpec, data_dir: Path, surface: SurfaceConfig, *,
                   long_term: LongTermValue = NoLongTermValue(), model: tuple[str, bytes] | None = None) -> TargetPolicy:
    """Load what ``spec`` names for ``surface``; unknown versions raise InvalidInput naming them.

    Reads the registry but never writes to it (no directory is created, LATEST is not touched). ``model``: a model
    target's (version, bytes) already loaded (``model_of``), e.g. shipped to a Spark executor.
    """
    if spec.kind == "baseline":
        return _learned_baseline(spec, Path(data_dir), surface) or BaselineTarget(surface)
    if spec.kind == "uniform":
        return UniformTarget(surface)
    if spec.kind == "logged":
        if not (Path(data_dir) / "models").is_dir():
            raise _error("logged", f"no model registry under {Path(data_dir) / 'models'}")
        return LoggedTarget(spec, Path(data_dir), surface, long_term=long_term)
    exploration, cap = _exploration(spec, surface)
    version, weights = model if model is not None else model_of(spec, data_dir, surface)  # type: ignore[misc]
    from recsys_rl.serving.bandit import VWBandit  # heavy (VW): only for model targets

    try:
        bandit = VWBandit(surface.model.vw_args, model=weights)
    except Exception as exc:  # noqa: BLE001 - VW reports a bad model file with assorted exception types
        raise _error(spec.text, f"model {version} does not load: {exc}") from exc
    return ModelTarget(spec.text, version, bandit, make_explorer(exploration, cap), surface,
                       exploration=exploration, cap=cap, long_term=long_term,
                       baseline=_learned_baseline(PolicySpec(text="baseline", kind="baseline"), Path(data_dir), surface))


def _learned_baseline(spec: PolicySpec, data_dir: Path, surface: SurfaceConfig) -> BaselineTarget | None:
    """The LambdaRank baseline ``spec`` names, else the surface's configured one (``model.baseline``), else None."""
    from recsys_rl.baseline import baseline_surface  # noqa: PLC0415
    from recsys_rl.baseline.model import LambdaRankBaseline  # noqa: PLC0415 - lightgbm only for this target

    if spec.version is None:
        if not surface.model.baseline:
            return None
        spec = replace(spec, version=surface.model.baseline)
    version, model = _load_registry_version(spec, data_dir, baseline_surface(surface.name))
    try:
        scorer = LambdaRankBaseline(model, version=version)
    except Exception as exc:  # noqa: BLE001 - a bad model surfaces as JSON or LightGBM errors of assorted types
        raise _error(spec.text, f"baseline {version} does not load: {exc}") from exc
    return BaselineTarget(surface, scorer, version)


def _load_registry_version(spec: PolicySpec, data_dir: Path, surface: str) -> tuple[str, bytes]:
    models_dir = data_dir / "models"
    if not models_dir.is_dir():  # ModelRegistry() would create it: replay must not write
        raise _error(spec.text.split("@")[0], f"no model registry under {models_dir}")
    from recsys_rl.serving.registry import ModelRegistry

    registry = ModelRegistry(models_dir)
    version = spec.version or registry.latest_version(surface)
    if version is None:
        raise _error("current", f"surface {surface!r} has no published model under {models_dir}")
    try:
        checkpoint = registry.load(surface, version)
    except NotFound:
        known = registry.versions(surface)
        hint = f"known: {', '.join(known[-5:])}" if known else "the surface has no versions"
        raise _error(version, f"unknown version of surface {surface!r} ({hint})") from None
    except ValueError as exc:  # checksum mismatch
        raise _error(version, str(exc)) from exc
    return checkpoint.version, checkpoint.model


__all__ = [
    "BASELINE_SERVED", "BaselineTarget", "LoggedTarget", "ModelTarget", "PolicySpec", "TargetPolicy", "UniformTarget",
    "model_of", "parse_policy_spec", "resolve_policy",
]
