"""The export action's limits as the definition language states them."""

from __future__ import annotations

import pytest

from buildsys.dsl import export
from buildsys.dsl.specs import MAX_OPSET, MIN_OPSET
from buildsys.errors import DefinitionError


def test_the_highest_opset_a_definition_may_ask_for_is_the_converters() -> None:
    """A definition may not ask for an opset tf2onnx refuses: it would fail at export, after training."""
    from tf2onnx.constants import OPSET_TO_IR_VERSION

    assert max(OPSET_TO_IR_VERSION) == MAX_OPSET
    assert export(opset=MIN_OPSET).opset == MIN_OPSET and export(opset=MAX_OPSET).opset == MAX_OPSET
    with pytest.raises(DefinitionError, match=rf"export\(opset=...\) expects an int in 17..{MAX_OPSET}\."):
        export(opset=MAX_OPSET + 1)
