"""Reference-vs-fast benchmarks: ``python -m benchmarks.run [--quick] [--json OUT]``."""
