"""flotilla_launcher."""
