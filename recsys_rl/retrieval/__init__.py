"""Candidate retrieval from the item catalog (faiss) and exploration beyond the retrieved set."""
