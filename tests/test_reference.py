"""Numerical parity with outputs of the official implementation (tests/fixtures/official)."""

from dynamic_chunker.reference import verify_reference


def test_matches_official_outputs(official_reference):
    report = verify_reference(official_reference)
    failed = [c for c in report.checks if not c.passed]
    assert not failed, report.table()
    # every stage's routing was compared, not only stage 0
    n_stages = 2 if official_reference.name == "tiny_2stage" else 1
    assert sum("boundary mask" in c.name for c in report.checks) == n_stages
