"""Staged rollout of a surface's learned policy: stages (baseline → shadow → canary → live), the canary's
guardrail with its automatic revert, and their persisted state and audit trail. No gRPC code here.

``config`` holds the TOML settings and the types every part shares; ``store`` the persisted, audited state;
``assignment`` the canary's stable user hash; ``guardrail`` the anytime-valid canary − control comparison.
"""
