"""Multi-objective evolutionary search over a trained EvoNet supernet; see issue 5."""
