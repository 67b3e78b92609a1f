"""The exec agent's frame encoding and decoding (pure; the C side is checked against the same table)."""

from __future__ import annotations

import re
import struct
from importlib import resources

import pytest

from thunder_env.agent import protocol as wire


def frames_of(data: bytes) -> list[wire.Frame]:
    decoder = wire.FrameDecoder()
    frames = decoder.feed(data)
    assert decoder.pending == 0
    return frames


def test_frame_layout_is_type_then_big_endian_length() -> None:
    assert wire.encode_frame(wire.REQ_ARG, b"ls") == b"A\x00\x00\x00\x02ls"
    assert wire.encode_frame(wire.REQ_RUN) == b"R\x00\x00\x00\x00"


def test_decoder_reassembles_frames_split_anywhere() -> None:
    data = b"".join(wire.encode_frame(k, p) for k, p in [(1, b"abc"), (2, b""), (3, bytes(range(256)) * 300)])
    decoder = wire.FrameDecoder()
    frames: list[wire.Frame] = []
    for index in range(0, len(data), 7):  # 7-byte pieces cut headers and payloads alike
        frames += decoder.feed(data[index : index + 7])
    assert frames == [wire.Frame(1, b"abc"), wire.Frame(2, b""), wire.Frame(3, bytes(range(256)) * 300)]
    assert decoder.pending == 0


def test_decoder_rejects_oversized_frames_before_buffering_them() -> None:
    decoder = wire.FrameDecoder(max_payload=16)
    with pytest.raises(wire.ProtocolError, match="exceeds"):
        decoder.feed(struct.pack(">BI", wire.RESP_STDOUT, 17))
    with pytest.raises(wire.ProtocolError):
        wire.encode_frame(wire.REQ_STDIN, b"x" * (wire.MAX_FRAME + 1))


def test_run_request_carries_everything_in_order() -> None:
    data = wire.encode_run(
        "sb-1",
        ["/bin/sh", "-c", "echo hi"],
        {"A": "1", wire.MARKER_VAR: "forged"},
        marker="m-42",
        workdir="/tmp",
        timeout_s=1.0001,
        stdin=b"x" * (wire.STDIN_CHUNK + 5),
    )
    frames = frames_of(data)
    assert [f.kind for f in frames] == [
        wire.REQ_HELLO,
        *[wire.REQ_ARG] * 3,
        *[wire.REQ_ENV] * 2,
        wire.REQ_WORKDIR,
        wire.REQ_TIMEOUT,
        wire.REQ_STDIN,
        wire.REQ_STDIN,
        wire.REQ_STDIN_END,
        wire.REQ_RUN,
    ]
    assert frames[0].payload == bytes([wire.PROTOCOL_VERSION]) + b"sb-1"
    assert [f.payload for f in frames[1:4]] == [b"/bin/sh", b"-c", b"echo hi"]
    # The manager's marker always wins: a caller cannot hide a command from the kill.
    assert [f.payload for f in frames[4:6]] == [b"A=1", b"THUNDER_EXEC_ID=m-42"]
    assert frames[6].payload == b"/tmp"
    assert struct.unpack(">Q", frames[7].payload) == (1001,)  # rounded up, never down to 0
    assert len(frames[8].payload) == wire.STDIN_CHUNK and len(frames[9].payload) == 5


def test_stdin_absent_empty_and_tiny_timeouts() -> None:
    kinds = [f.kind for f in frames_of(wire.encode_run("sb", ["true"], {}, "m"))]
    assert wire.REQ_STDIN_END not in kinds and wire.REQ_TIMEOUT not in kinds  # stdin is /dev/null
    empty = frames_of(wire.encode_run("sb", ["cat"], {}, "m", stdin=b"", timeout_s=1e-9))
    assert [f.kind for f in empty][-3:] == [wire.REQ_TIMEOUT, wire.REQ_STDIN_END, wire.REQ_RUN]
    assert struct.unpack(">Q", empty[-3].payload) == (1,)


@pytest.mark.parametrize(
    ("argv", "env"),
    [([], {}), (["a\0b"], {}), (["ls"], {"K": "v\0"}), (["ls"], {"A=B": "v"}), (["ls"], {"": "v"})],
)
def test_requests_the_protocol_cannot_carry_are_refused(argv: list[str], env: dict[str, str]) -> None:
    with pytest.raises(wire.ProtocolError):
        wire.encode_run("sb", argv, env, "m")


def test_oversized_stdin_is_refused() -> None:
    class Huge(bytes):
        def __len__(self) -> int:
            return wire.MAX_STDIN + 1

    with pytest.raises(wire.ProtocolError, match="stdin"):
        wire.encode_run("sb", ["cat"], {}, "m", stdin=Huge())


def test_kill_and_ping_requests() -> None:
    assert [f.kind for f in frames_of(wire.encode_kill("sb", "m-1"))] == [wire.REQ_HELLO, wire.REQ_KILL]
    assert frames_of(wire.encode_kill("sb", "m-1"))[1].payload == b"m-1"
    assert [f.kind for f in frames_of(wire.encode_ping("sb"))] == [wire.REQ_HELLO, wire.REQ_PING]


def test_answers_decode() -> None:
    assert wire.decode_started(struct.pack(">I", 4242)) == 4242
    assert wire.decode_exit(struct.pack(">iB", 137, 1)) == wire.ExitStatus(137, True)
    assert wire.decode_exit(struct.pack(">iB", -1, 0)) == wire.ExitStatus(-1, False)
    failure = wire.decode_failure(bytes([wire.FAIL_FORK]) + b"fork failed: Resource temporarily unavailable")
    assert failure.name == "fork" and failure.message.startswith("fork failed")
    assert wire.decode_pong(struct.pack(">BI", 1, 7) + b"sb-9") == wire.Pong(1, 7, "sb-9")
    assert wire.decode_killed(struct.pack(">I", 3)) == 3
    for decode in (wire.decode_started, wire.decode_exit, wire.decode_killed, wire.decode_pong, wire.decode_failure):
        with pytest.raises(wire.ProtocolError):
            decode(b"")


def test_the_c_agent_uses_the_same_table() -> None:
    source = resources.files("thunder_env.agent").joinpath("agent.c").read_text()
    chars = dict(re.findall(r"#define ((?:REQ|RESP)_[A-Z_]+) '(.)'", source))
    numbers = dict(re.findall(r"#define ((?:FAIL)_[A-Z_]+|PROTOCOL_VERSION) (\d+)", source))
    python = {name: getattr(wire, name) for name in dir(wire) if re.match(r"(REQ|RESP)_[A-Z_]+$", name)}
    assert {name: ord(char) for name, char in chars.items()} == python
    python_fail = {name: getattr(wire, name) for name in dir(wire) if re.match(r"FAIL_[A-Z_]+$", name)}
    assert {name: int(value) for name, value in numbers.items() if name.startswith("FAIL_")} == python_fail
    assert int(numbers["PROTOCOL_VERSION"]) == wire.PROTOCOL_VERSION
    assert f'"{wire.MARKER_VAR}="' in source
