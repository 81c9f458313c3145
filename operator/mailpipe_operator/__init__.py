"""Mailpipe's Kubernetes operator: reconciles EmailPipeline resources into the data plane.

Layers, top to bottom: `handlers` (kopf decorators) call `reconcile`, which uses the pure
`builders` and `scaling` modules and talks to the API server only through `kube`.
"""
