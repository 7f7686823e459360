"""What runs: the one pipeline definition, its settings, and thin runners."""
