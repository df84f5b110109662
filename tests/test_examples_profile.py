"""Issue 8 item 5: the example count matches the CI profile. Every property takes its
max_examples from the loaded hypothesis profile (conftest.examples() or
settings.default.max_examples), never a literal the profile cannot change."""

from __future__ import annotations

import re

from hypothesis import settings

from conftest import CI_EXAMPLES, REPO, examples


def test_no_property_hard_codes_its_example_count():
    literal = re.compile(r"max_examples\s*=\s*\d")
    found = [f"{p.name}:{i}" for p in sorted((REPO / "tests").glob("*.py"))
             if p.name != "conftest.py"
             for i, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert found == []


def test_examples_follow_the_loaded_profile():
    """Hand-worked: under the CI profile (60) a property asking for 40 runs 40; under dev
    (25) it runs round(40 * 25 / 60) = 17; never fewer than 1."""
    assert settings.get_profile("ci").max_examples == CI_EXAMPLES == 60
    n = settings.default.max_examples
    assert examples(CI_EXAMPLES) == n
    assert examples(40) == round(40 * n / 60) and examples(0) == 1
    if n == 60:
        assert examples(40) == 40
    if n == 25:
        assert examples(40) == 17


def test_ci_runs_the_ci_profile():
    """.ci/run runs the suite without choosing a profile, so conftest loads "ci"."""
    text = (REPO / ".ci" / "run").read_text()
    assert "HYPOTHESIS_PROFILE" not in text and "memdesc.sh test" in text
