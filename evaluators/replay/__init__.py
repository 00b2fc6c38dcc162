"""Counterfactual replay: logged decisions + a target policy → the bandit-feedback table.

``targets`` parses ``--policy`` specs and resolves them to target policies; ``run`` reads the log and calls the
serving decision path for every logged request (see there).
"""
