from thunder_env.leases import LeaseTable


def test_refcounts_per_sandbox() -> None:
    table = LeaseTable()
    a = table.add("p1", "sb1")
    b = table.add("p2", "sb1")
    assert table.count("sb1") == 2
    assert table.remove(a, "released") == 1
    assert a.released and a.release_reason == "released"
    assert table.remove(a, "again") == 1  # idempotent, reason kept
    assert a.release_reason == "released"
    assert table.remove(b, "released") == 0
    assert len(table) == 0 and table.programs() == []


def test_program_index() -> None:
    table = LeaseTable()
    table.add("p1", "sb1")
    table.add("p1", "sb2")
    table.add("p2", "sb2")
    assert sorted(lease.sandbox_id for lease in table.of_program("p1")) == ["sb1", "sb2"]
    assert [lease.program_id for lease in table.of_sandbox("sb2")] != []
    assert table.programs() == ["p1", "p2"]
