"""The set-up contract: `make run` / `make test` install exactly the lock, and the lock is what
requirements.txt asks for (regenerated with `make lock`)."""
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]


def _requirements(path: Path) -> list[Requirement]:
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return [Requirement(line) for line in lines if line and not line.startswith("-")]


def test_the_lock_pins_every_package_exactly_and_satisfies_requirements_txt():
    pins = {}
    for req in _requirements(ROOT / "requirements.lock"):
        (spec,) = req.specifier  # one exact pin each, no ranges
        assert spec.operator == "==" and "*" not in spec.version, f"requirements.lock: {req} is not an exact pin"
        assert canonicalize_name(req.name) not in pins, f"requirements.lock: {req.name} pinned twice"
        pins[canonicalize_name(req.name)] = Version(spec.version)
    for req in _requirements(ROOT / "requirements.txt"):
        name = canonicalize_name(req.name)
        assert name in pins, f"requirements.txt asks for {req.name}, which requirements.lock lacks: run `make lock`"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"requirements.lock pins {req.name}=={pins[name]}, outside requirements.txt's {req.specifier}: "
            "run `make lock`")
    assert pins["torch"] == Version("2.13.0")  # the CPU wheel these machines install from disk


def test_make_installs_from_the_lock():
    makefile = (ROOT / "Makefile").read_text()
    assert "$(STAMP): $(LOCK)" in makefile  # a changed lock re-installs
    installs = [line for line in makefile.splitlines() if "pip install" in line and " -r " in line]
    assert installs and all(line.rstrip().endswith("-r $(LOCK)") for line in installs), installs
