"""Developer scripts: the README demo."""
