"""Presentation mode: each result page puts its result first and folds its settings; chart text is large."""
import json

import pytest
from pagetest import ready

pytestmark = pytest.mark.usefixtures("allow_test_folders")  # see conftest.py

# page -> the folded settings' label
FOLDED = {"views/1_Rankings.py": "Filters and search", "views/2_Circuit.py": "Sample, view and settings",
          "views/3_Depth.py": "Groups", "views/4_Unlearning.py": "Start an unlearning run",
          "views/5_Annotations.py": None,  # nothing to fold: the queue is the result
          "views/6_Validation.py": "The whole verdict, settings and how to read"}


def chart_configs(at) -> list[dict]:
    return [json.loads(e.proto.spec).get("config", {}) for e in at.get("vega_lite_chart")]


@pytest.mark.parametrize("page", list(FOLDED))
def test_presenting_folds_settings_and_enlarges_chart_text(app_setup, page):
    at = ready(app_setup, page, present="1")
    assert not at.exception
    assert at.toggle(key="present_toggle").value is True
    assert FOLDED[page] is None or FOLDED[page] in [e.label for e in at.expander]
    # the selection caption (model · data · workspace) is left out; the title stays
    assert not any(c.value.startswith(app_setup["model"].replace("_", "\\_")[:8]) for c in at.caption
                   if "workspace" in c.value)
    assert all(json.loads(e.proto.spec) and e.proto.theme == "" for e in at.get("vega_lite_chart"))  # own fonts
    for config in chart_configs(at):
        assert config["axis"]["labelFontSize"] >= 16 and config["legend"]["labelFontSize"] >= 16
    plain = ready(app_setup, page)
    assert FOLDED[page] is None or FOLDED[page] not in [e.label for e in plain.expander]
    assert all("labelFontSize" not in c.get("axis", {}) for c in chart_configs(plain))


def test_the_toggle_puts_presentation_mode_into_the_url(app_setup):
    at = ready(app_setup, "views/1_Rankings.py")
    at.toggle(key="present_toggle").set_value(True).run()
    assert at.query_params["present"] == ["1"] or at.query_params["present"] == "1"
    at.toggle(key="present_toggle").set_value(False).run()
    assert "present" not in at.query_params
