"""Launcher backends (entry-point group ``flotilla.launcher_backends``)."""
