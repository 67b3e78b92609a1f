"""Benchmarks of the environment manager: `python -m thunder_env.bench {core,pool,disk} [--quick]`."""
