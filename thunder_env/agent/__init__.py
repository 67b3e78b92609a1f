"""The in-sandbox exec agent: a small static C program (agent.c), its build, and its wire protocol.

The Docker backend bind-mounts the binary into every sandbox and talks to it over a Unix socket in
a per-sandbox host directory (thunder_env.docker.agent_client); see docs/exec-agent.md.
"""
