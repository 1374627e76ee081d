"""Search over compression settings (issue 25): per-layer sensitivity, then an exact allocation
of bits per layer under a budget, turned into an ordinary recipe."""
