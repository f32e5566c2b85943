"""flotilla_auth."""
