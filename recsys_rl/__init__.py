"""recsys-rl: contextual-bandit and slate-RL ranking for recommender systems.

Kept free of heavy imports (VW, torch): clients that only need the generated stubs in
``recsys_rl.ranking.v1`` / ``recsys_rl.logging.v1`` must not pay for the models.
"""

__version__ = "0.1.0"
