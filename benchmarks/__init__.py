"""Benchmarks of torch-pairconf (run as ``python -m benchmarks.<script>`` from the repo root)."""
