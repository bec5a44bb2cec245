"""Helpers for introspect's own tests and scripts: not part of the public API.

``introspect.testing.synthetic`` holds a synthetic image task whose evidence
location is known, and a small ResNet trained on it (for the pointing game and the
quality checks). Nothing here is imported by ``import introspect``; names may
change between versions without notice.
"""
