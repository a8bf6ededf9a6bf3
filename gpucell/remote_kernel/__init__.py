"""The worker process: a persistent IPython shell that runs a session's cells for the broker."""
