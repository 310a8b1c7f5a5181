"""Run scripts and measurement scripts of the draft-head toolkit."""
