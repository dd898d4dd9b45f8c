"""What the page tests share: running a page script with AppTest on a URL's query parameters."""
import re
from pathlib import Path

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[1]
PAGES = ["views/0_Home.py", "views/1_Rankings.py", "views/2_Circuit.py", "views/3_Depth.py", "views/4_Unlearning.py",
         "views/5_Annotations.py", "views/6_Validation.py"]


def app(page: str = "views/0_Home.py", **params) -> AppTest:
    """`page` (a script path from the repository root) with these query parameters, not yet run."""
    at = AppTest.from_file(str(ROOT / page), default_timeout=180)
    for k, v in params.items():
        at.query_params[k] = v
    return at


def ready(setup, page, **extra) -> AppTest:
    """`page` run on the model, data and workspace of the `app_setup` fixture."""
    return app(page, model=setup["model"], data=setup["data"], workspace=setup["workspace"], **extra).run()


def shown(elements) -> list[str]:
    """The texts of Markdown elements as a reader sees them (user text in them is backslash-escaped)."""
    return [re.sub(r"\\(.)", r"\1", e.value) for e in elements]
