"""The per-op benchmarks of experiments.bench_kernels: measure.py holds the shared compile /
memory / timing / table helpers, <op>.py one op's `run(settings, timing) -> dict`."""
