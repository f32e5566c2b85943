"""Fixtures shared by every tier."""

# A private Slurm and its users, started once per session by whichever tier asks first.
pytest_plugins = ["slurm_fixtures"]
