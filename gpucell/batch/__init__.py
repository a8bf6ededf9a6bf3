"""Batch notebooks: `gpucell run` (parameters, live output, resume) and the broker's detached jobs."""
