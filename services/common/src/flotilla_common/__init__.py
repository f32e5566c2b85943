"""Server-side plumbing shared by Flotilla services.

Services import this package and ``flotilla.<svc>.v1`` protos, never each other.
"""
