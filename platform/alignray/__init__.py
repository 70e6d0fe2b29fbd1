"""alignray: align language models to written principles without human labels, on Ray."""
