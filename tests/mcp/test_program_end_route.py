"""`POST /programs/{id}/end`, the route a separately running scheduler's notifier calls (real Docker)."""

from __future__ import annotations

import httpx

from mcp_server.programs import EndNotice
from tests.mcp.conftest import NOTIFIER_TOKEN, PROGRAM_TOKEN, TOKEN, HttpTarget, call, call_error, create_sandbox
from tests.mcp.test_http import raw_post


async def end(target: HttpTarget, program_id: str, token: str | None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with httpx.AsyncClient(base_url=target.base_url) as http:
        return await http.post(f"/programs/{program_id}/end", headers=headers)


async def test_the_scheduler_ends_a_program_once_and_its_sandboxes_go(http_target: HttpTarget) -> None:
    notices: list[EndNotice] = []
    http_target.server.programs.add_end_listener(notices.append)
    manager = http_target.server.manager
    async with http_target.client(http_target.url("prog-e")) as client:
        sandbox_id = await create_sandbox(client)
        assert (await call(client, "sandbox_exec", sandbox_id=sandbox_id, command="true"))["exit_code"] == 0
        for token in (None, "wrong-token-0123456789", PROGRAM_TOKEN):  # program tokens do not reach it
            refused = await end(http_target, "prog-e", token)
            assert refused.status_code == 401 and "notifier token" in refused.json()["message"], token
        assert any(info.sandbox_id == sandbox_id for info in manager.sandboxes())

        ended = await end(http_target, "prog-e", NOTIFIER_TOKEN)
        assert ended.status_code == 200, ended.text
        assert ended.json()["status"] == "ended" and ended.json()["sandboxes_released"] == 1
        assert not any(info.sandbox_id == sandbox_id for info in manager.sandboxes())  # destroyed, not leaked
        assert notices == [EndNotice("prog-e", "the scheduler ended it", external=True)]
        again = await end(http_target, "prog-e", TOKEN)  # the server token reaches it too; a retry is harmless
        assert again.status_code == 200 and again.json()["status"] == "already_ended"
        assert len(notices) == 1
        assert "has ended (the scheduler ended it)" in await call_error(client, "sandbox_list")

    unknown = await end(http_target, "never-seen", NOTIFIER_TOKEN)
    assert unknown.status_code == 404 and "never-seen" in unknown.json()["message"]
    malformed = await end(http_target, "bad%20id", NOTIFIER_TOKEN)  # the one program-id rule: a 400 naming it
    assert malformed.status_code == 400 and "invalid program id 'bad id'" in malformed.json()["message"]


async def test_the_notifier_token_does_not_reach_the_mcp_endpoints(http_target: HttpTarget) -> None:
    for url in (http_target.url(), http_target.url("prog-x")):
        assert (await raw_post(url, {"Authorization": f"Bearer {NOTIFIER_TOKEN}"})).status_code == 401
    async with httpx.AsyncClient(base_url=http_target.base_url) as http:  # POST only
        response = await http.get("/programs/prog-x/end", headers={"Authorization": f"Bearer {TOKEN}"})
    assert response.status_code == 405
