"""The quick-start example of docs/env.md (kept identical by tests/docker/test_docs_example.py)."""

import asyncio

from thunder_env import EnvManager, ManagerConfig, SandboxSpec
from thunder_env.backend_factory import open_backend


async def main() -> None:
    async with open_backend() as backend, EnvManager(backend, ManagerConfig(namespace="example")) as envs:
        lease = await envs.acquire("agent-run-1", SandboxSpec(image="thunder/base:latest"))
        await envs.write_file(lease, "hello.sh", b"echo hello from $(hostname)\n")
        result = await envs.exec(lease, "sh hello.sh", timeout_s=10)
        print(result.exit_code, result.stdout.text.strip())

        # A second program shares the sandbox; it survives the first program's end.
        reviewer = await envs.share("reviewer-1", lease.sandbox_id)
        await envs.end_program("agent-run-1")
        print((await envs.exec(reviewer, ["cat", "hello.sh"])).stdout.text.strip())
        await envs.end_program("reviewer-1")  # last lease: the container is removed now
        print("sandboxes left:", len(envs.sandboxes()))


asyncio.run(main())
