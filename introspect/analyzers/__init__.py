"""Analyzers: pure functions from a model and an input to the records in :mod:`introspect.records`."""
