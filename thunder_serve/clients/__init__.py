"""Client side of `thunder serve`: code that runs where the agent runs and reaches the server only over HTTP.

`mcp_client` (async MCP tool calls on a program's URL), `sync_tools` (the same from synchronous agent code),
`minisweagent_adapter` (mini-swe-agent on Thunder) and `demo_agent` (the scripted agent program of
`thunder demo`). Nothing here imports a component (`thunder_env`, `mcp_server`, `thunder_sched`): the import
rule test (tests/unit/test_import_rules.py) holds it to that.
"""
