"""Benchmark variants: each module here exposes ASGI apps and a ``VARIANTS`` table.

See bench/README.md for how to add one.
"""
