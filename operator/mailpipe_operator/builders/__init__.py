"""Pure manifest builders: a pipeline in, Kubernetes objects (plain dicts) out.

No module here opens a connection or imports the Kubernetes client, so every builder is tested
without a cluster.
"""
