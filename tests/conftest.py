from pathlib import Path

import pytest

FIXTURES = Path(__file__).parent / "fixtures"
OFFICIAL = FIXTURES / "official"


@pytest.fixture(params=["tiny_1stage", "tiny_2stage"])
def official_reference(request):
    return OFFICIAL / request.param
