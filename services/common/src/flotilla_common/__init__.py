"""Server-side plumbing shared by Flotilla services.

Services import this package and ``flotilla.<svc>.v1`` protos, never each other.
"""

#: What the dask-gateway client's TLS SNI starts with (``daskgateway-<cluster name>``):
#: Envoy routes scheduler connections by it.
SNI_PREFIX = "daskgateway-"
