"""Load benchmarks for satsrelay: ``python -m bench [scenario ...]`` prints one JSON document.

See bench/README.md for what each figure means and how to run it.
"""
