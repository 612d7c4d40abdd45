"""Training-algorithm benchmark under AlgoPerf's rules (Dahl et al. 2023; Kasimbeg et al. 2025),
sized for a CPU: workloads with validation targets, submissions (an optax factory, a schedule
and a search space), quasi-random tuning, time-to-target scoring and performance profiles."""
