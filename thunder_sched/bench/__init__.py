"""`python -m thunder_sched.bench`: seeded agentic programs straight against vLLM vs through the scheduler."""
