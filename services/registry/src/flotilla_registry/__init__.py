"""flotilla_registry."""
