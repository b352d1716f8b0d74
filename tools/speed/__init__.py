"""The speed harness: reference against fast, ``python -m tools.speed [--quick] [--json OUT]``."""
