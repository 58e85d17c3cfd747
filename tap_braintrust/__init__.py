"""tap-braintrust: a Singer tap for Braintrust projects, experiments, datasets and their rows."""
