"""The documentation: a short README that starts with the set-up contract, Markdown links that resolve, and
the generated results sections where the report commands find them."""
import re
from pathlib import Path

import pytest

from cud_core.report import ablation as ablation_report
from cud_core.report import prospective as prospective_report
from cud_core.report import transfer as transfer_report
from cud_core.report import validation as validation_report

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
RESULTS = ROOT / "results" / "README.md"
MARKDOWN = [README, RESULTS, *sorted((ROOT / "docs").glob("*.md"))]
MAX_WORDS = 2000

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def prose(text: str) -> str:
    """The text outside fenced code blocks."""
    lines, fenced = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return "\n".join(lines)


def links(text: str) -> list[str]:
    """Relative link targets in Markdown prose (code blocks and code spans left out)."""
    text = re.sub(r"`[^`\n]*`", "", prose(text))
    return [t for t in LINK.findall(text) if not re.match(r"^[a-z][a-z0-9+.-]*:", t, re.I)]


def slugs(text: str) -> set[str]:
    """GitHub's anchors for the headings of a Markdown file."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(text).splitlines():
        m = re.match(r"^#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(1).lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_readme_starts_with_the_setup_contract():
    first = README.read_text(encoding="utf-8").splitlines()[:8]
    commands = [line.split("#")[0].strip() for line in first]
    assert "make run" in commands and "make test" in commands
    assert commands.index("make run") < commands.index("make test")


def test_readme_is_short():
    words = len(prose(README.read_text(encoding="utf-8")).split())
    assert words <= MAX_WORDS, f"README.md has {words} words outside code blocks (at most {MAX_WORDS})"


@pytest.mark.parametrize("path", MARKDOWN, ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(path):
    assert path.exists(), path
    broken = []
    for target in links(path.read_text(encoding="utf-8")):
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        if not dest.exists():
            broken.append(target)
        elif anchor and dest.suffix == ".md" and anchor not in slugs(dest.read_text(encoding="utf-8")):
            broken.append(target)
    assert not broken, f"{path.relative_to(ROOT)} links to missing files or headings: {broken}"


def test_results_readme_holds_the_generated_sections():
    text = RESULTS.read_text(encoding="utf-8")
    for begin, end in ((validation_report.README.begin, validation_report.README.end),
                       (ablation_report.README.begin, ablation_report.README.end),
                       (prospective_report.README.begin, prospective_report.README.end),
                       (transfer_report.README.begin, transfer_report.README.end)):
        assert text.count(begin) == 1 and text.count(end) == 1
        assert text.index(begin) < text.index(end)
        section = text[text.index(begin):text.index(end)]
        assert "--readme results/README.md`" in section
    readme = README.read_text(encoding="utf-8")
    assert validation_report.README.begin not in readme and ablation_report.README.begin not in readme
