"""Every registered model family with every alignment variant keeps the contract (tests/contract.py): the
parametrisation walks the registries, so a new family or variant is tested by being registered."""

import pytest

from tests.contract import cases, check_all


@pytest.mark.parametrize("family, align", cases(), ids=lambda v: str(v))
def test_family_with_variant_keeps_the_contract(tiny_doc, tmp_path, family, align):
    check_all(tiny_doc, family, align, tmp_path)
