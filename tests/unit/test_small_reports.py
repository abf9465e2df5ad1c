"""Small status and template reports from the probe: the Reason column stays one line when a
message spans several (a template's YAML error), and an empty template key is a TemplateError,
not a silent fall back to the built-in template."""

from __future__ import annotations

import pytest

from kubemaas_operator.api import parse_spec
from kubemaas_operator.render import RenderContext, RenderError, render
from kubemaas_operator.status import _short


def test_the_reason_column_is_one_line() -> None:
    text = _short("TemplateError", "template 'x' did not render valid YAML: mapping values\n"
                  "  in \"<unicode string>\", line 2, column 5")
    assert "\n" not in text and text.startswith("TemplateError: template 'x'")


@pytest.mark.parametrize("source", ["", "  \n"])
def test_an_empty_template_key_is_an_error(source: str) -> None:
    spec = parse_spec({"model": {"uri": "https://example.com/m.onnx", "format": "onnx"},
                       "runtime": {"image": "x", "template": "empty"}})
    ctx = RenderContext(name="m", namespace="ns", uid="u", template_name="empty",
                        template_source=source)
    with pytest.raises(RenderError, match="template 'empty' is empty"):
        render(spec, ctx)
