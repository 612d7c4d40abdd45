"""The parts of experiments.device_check: kernel_cases.py the kernel rows and their inputs,
kernel_checks.py checking and timing one row, lm_step.py the LM train step's tokens/s and MFU,
report.py the markdown report. Only jax, flax, optax, absl and numpy are imported."""
