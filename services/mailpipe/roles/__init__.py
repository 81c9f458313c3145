"""Roles: one module per job (populate, publish, consume, audit, healthcheck) over narrow interfaces."""
