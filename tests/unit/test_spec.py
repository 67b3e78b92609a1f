import pytest
from pydantic import ValidationError

from thunder_env import SandboxSpec
from thunder_env.docker.lifecycle import container_config
from thunder_env.errors import InvalidSpecError
from thunder_env.files import resolve_path


def test_defaults_are_hardened() -> None:
    config = container_config(SandboxSpec(image="x"), {"thunder.managed": "1"})
    host = config["HostConfig"]
    assert host["NetworkMode"] == "none"
    assert host["CapDrop"] == ["ALL"]
    assert "NET_RAW" not in host["CapAdd"] and "SYS_ADMIN" not in host["CapAdd"]
    assert host["SecurityOpt"] == ["no-new-privileges"]
    assert host["PidsLimit"] > 0 and host["Memory"] == host["MemorySwap"] > 0
    assert config["Labels"] == {"thunder.managed": "1"}


@pytest.mark.parametrize(
    "bad",
    [{"image": ""}, {"image": "x", "typo": 1}, {"image": "x", "workdir": "rel"}, {"image": "x", "ports": [0]},
     {"image": "x", "cpus": 0}, {"image": "x", "env": {"A=B": "c"}}, {"image": "x", "network": "host"}],
)
def test_bad_specs_are_rejected(bad: dict) -> None:
    with pytest.raises(ValidationError):
        SandboxSpec(**bad)


def test_spec_key_is_stable_and_sensitive() -> None:
    assert SandboxSpec(image="x").key() == SandboxSpec(image="x").key()
    assert SandboxSpec(image="x").key() != SandboxSpec(image="x", cpus=2).key()


def test_resolve_path() -> None:
    assert resolve_path("/workspace", "a/b.txt") == "/workspace/a/b.txt"
    assert resolve_path("/workspace", "/etc/../tmp/x") == "/tmp/x"
    assert resolve_path("/workspace", "../../..") == "/"
    with pytest.raises(InvalidSpecError):
        resolve_path("/w", "a\0b")


def test_the_container_log_is_one_bounded_file() -> None:
    host = container_config(SandboxSpec(image="x"), {}, log_max_bytes=2 << 20)["HostConfig"]
    assert host["LogConfig"] == {"Type": "json-file", "Config": {"max-size": str(2 << 20), "max-file": "1"}}
