"""Benchmarks of juliarun_aio against a local server: each result a ratio to a baseline.

``python -m benchmarks [--quick]`` runs all of them and prints one table; see README.md.
"""
