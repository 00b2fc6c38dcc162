"""The decision core: request rules, features, the VW bandit, the one decision path (score → explore →
decision), surfaces' policies, the online learner and the model registry.

Never imports ``ranker`` (the gRPC layer) or analysis code; importing this package loads nothing heavy.
"""
