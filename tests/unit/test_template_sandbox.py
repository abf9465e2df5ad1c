"""Administrators' templates (a ConfigMap anyone who can edit it controls) render in Jinja's
sandbox: no way from a template to Python's globals (the probe printed the operator's PID with
`cycler.__init__.__globals__.os.getpid()`), and range() is capped, so a huge loop is a
TemplateError rather than seconds of a blocked event loop. The built-in templates and their
golden renders are unchanged (tests/golden)."""

from __future__ import annotations

import pytest

from kubemaas_operator.render import RenderError
from kubemaas_operator.render.base import render_template

SSTI = 'apiVersion: x/v1\nkind: "pid-{{ cycler.__init__.__globals__.os.getpid() }}"\n'
LOOP = "{% for i in range(15000000) %}{% endfor %}apiVersion: apps/v1\nkind: Deployment\n"


@pytest.mark.parametrize("source", [SSTI, LOOP])
def test_hostile_templates_are_template_errors(source: str) -> None:
    with pytest.raises(RenderError, match=r"SecurityError|OverflowError|range"):
        render_template(source, "template 'x'", params=None)


def test_plain_templates_still_render() -> None:
    out = render_template("kind: {{ p | tojson }}\nn: {{ range(3) | list | length }}\n",
                          "template 'ok'", params="Deployment")
    assert out == {"kind": "Deployment", "n": 3}
