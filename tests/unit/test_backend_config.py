"""The typed backend config: a tagged union on `kind` that refuses what it does not know, and the one
factory that turns it into a backend (no engine call is made here)."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from mcp_server.cli import build_parser
from thunder_env.backend import Capability
from thunder_env.backend_config import BackendConfig, DockerBackendConfig
from thunder_env.backend_factory import make_backend, open_backend
from thunder_serve.config import CombinedConfig

ADAPTER: TypeAdapter[BackendConfig] = TypeAdapter(BackendConfig)


def test_the_kind_tag_chooses_the_config_and_unknown_kinds_or_fields_are_refused() -> None:
    config = ADAPTER.validate_python({"kind": "docker", "url": "unix:///tmp/engine.sock", "engine_timeout_s": 5})
    assert isinstance(config, DockerBackendConfig) and config.engine_timeout_s == 5.0
    with pytest.raises(ValidationError, match="does not match any of the expected tags: 'docker'"):
        ADAPTER.validate_python({"kind": "kubernetes"})
    with pytest.raises(ValidationError, match="extra_forbidden"):
        ADAPTER.validate_python({"kind": "docker", "socket": "/var/run/docker.sock"})
    with pytest.raises(ValidationError):
        DockerBackendConfig(control_connections=0)


async def test_make_backend_builds_the_configured_docker_backend() -> None:
    config = DockerBackendConfig(url="unix:///tmp/no-engine-here.sock", exec_agent=False, engine_timeout_s=7)
    async with open_backend(config) as backend:
        assert type(backend).__name__ == "DockerBackend"
        assert Capability.SNAPSHOTS in backend.capabilities
        assert backend.client.connector.path == "/tmp/no-engine-here.sock"  # type: ignore[attr-defined]
        assert backend.client.session.timeout.total == 7  # type: ignore[attr-defined]
        assert backend.exec_agent is False  # type: ignore[attr-defined]
    assert backend.client.session.closed  # type: ignore[attr-defined]  # closed on exit
    other = make_backend()  # no config: the local Docker Engine's defaults
    try:
        assert type(other).__name__ == "DockerBackend" and other.exec_agent is True  # type: ignore[attr-defined]
    finally:
        await other.close()


def test_entry_points_take_the_backend_from_config() -> None:
    args = build_parser().parse_args(["--docker-url", "tcp://10.0.0.5:2376"])
    assert args.docker_url == "tcp://10.0.0.5:2376"
    base = {"scheduler": {"backends": ["http://vllm"]}, "http": {"token": "t" * 32}}
    assert CombinedConfig.model_validate(base).sandbox_backend == DockerBackendConfig()
    combined = CombinedConfig.model_validate({**base, "sandbox_backend": {"kind": "docker", "url": "unix:///x"}})
    assert combined.sandbox_backend == DockerBackendConfig(url="unix:///x")
    with pytest.raises(ValidationError, match="union_tag_not_found"):  # the kind is never guessed
        CombinedConfig.model_validate({**base, "sandbox_backend": {"url": "unix:///x"}})
