"""Execution backends: where an agent's process actually runs (see DESIGN 4)."""
