"""Shared library of the Ascend offline-inference pipeline (no torch at import time)."""
SCHEMA_VERSION = 1
