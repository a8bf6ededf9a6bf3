"""The systems the benchmark drives: gpucell, its peers, and the physical baselines."""
