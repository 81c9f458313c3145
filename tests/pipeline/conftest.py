"""Fixtures of the pipeline tests; the harness itself is in pipeline_harness.py."""

from pipeline_harness import faulty_smtp, harness, smtp_sink

__all__ = ["faulty_smtp", "harness", "smtp_sink"]
