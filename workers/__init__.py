"""Worker side of inferbus: pulls jobs and runs them on a local model."""
