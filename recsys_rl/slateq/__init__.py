"""Slate-RL (SlateQ-style) long-term value model: featurisation, network, offline training, serving.

Kept light: importing the package does not import torch; use ``recsys_rl.slateq.model`` / ``.train`` /
``.serving`` for the heavy parts.
"""

SURFACE = "slateq"  # registry namespace: checkpoints live under <data-dir>/models/slateq/<version>/
