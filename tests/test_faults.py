"""The fault catalogue (tools/fault_catalogue.py): every bad input gets a clear one-line error, exit 1,
and leaves every file as it was. docs/reliability.md is the same catalogue's table."""

import pytest

from tools.fault_catalogue import FakeEndpoint, catalogue, run_case

CASES = catalogue()


@pytest.fixture(scope="module")
def endpoint():
    with FakeEndpoint() as fake:
        yield fake


def test_the_catalogue_is_large_and_covers_every_group():
    groups = {c.group for c in CASES}
    assert len(CASES) >= 150 and groups == {"params", "data", "base model", "cli", "api"}
    assert len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_case_gets_a_clear_error(case, tmp_path, endpoint):
    outcome = run_case(case, tmp_path, endpoint.url)
    assert outcome.kind == "clear", outcome.detail
