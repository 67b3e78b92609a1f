from thunder_env.output import TRUNCATION_MARKER, HeadTailBuffer, RollingBuffer


def test_small_output_is_kept_whole() -> None:
    buf = HeadTailBuffer(100)
    buf.feed(b"hello ")
    buf.feed(b"world")
    out = buf.result()
    assert out.data == b"hello world" and not out.truncated and out.total_bytes == 11


def test_large_output_keeps_head_and_tail_across_chunks() -> None:
    buf = HeadTailBuffer(10)
    for i in range(1000):
        buf.feed(str(i % 10).encode() * 7)
    out = buf.result()
    assert out.truncated
    assert out.total_bytes == 7000
    assert out.data[:5] == b"00000"
    assert out.data.endswith(b"99999")
    assert TRUNCATION_MARKER in out.data
    assert len(out.data) == 10 + len(TRUNCATION_MARKER)


def test_exact_limit_is_not_truncated() -> None:
    buf = HeadTailBuffer(8)
    buf.feed(b"12345678")
    assert buf.result().data == b"12345678" and not buf.result().truncated


def test_rolling_buffer_reports_dropped_bytes() -> None:
    buf = RollingBuffer(5)
    buf.feed(b"abc")
    assert buf.read_from(0) == (b"abc", 0)
    buf.feed(b"defgh")
    assert buf.end == 8
    assert buf.read_from(0) == (b"defgh", 3)
    assert buf.read_from(6) == (b"gh", 0)
    assert buf.read_from(8) == (b"", 0)
