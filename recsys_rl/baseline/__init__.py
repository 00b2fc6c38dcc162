"""A learned baseline: a LightGBM LambdaRank model trained from the decision logs (``train.py``), scored by
``model.LambdaRankBaseline`` through the decision path's Scorer protocol."""

BASELINE_SUFFIX = ".baseline"  # registry surface of a surface's learned baselines: "<surface>.baseline"


def baseline_surface(surface: str) -> str:
    return f"{surface}{BASELINE_SUFFIX}"
