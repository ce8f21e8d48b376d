"""The types a user's mypy sees: every README and docs/ snippet and the typed keywords pass
``mypy --strict``; the shared options TypedDict names every policy field."""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from requests_smartretry import RetryPolicy
from requests_smartretry.options import AdapterOptions, CallOptions, PolicyOptions, SessionOptions

ROOT = Path(__file__).resolve().parent.parent
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def readme_snippets() -> list[str]:
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return [code for page in pages for code in SNIPPET.findall(page.read_text(encoding="utf-8"))]


def snippets_module() -> str:
    """Every README snippet as the body of its own function, after the names they take as
    given (``tests/typing_check.py``)."""
    parts = ["from tests.typing_check import *  # noqa: F403\n"]
    for number, code in enumerate(readme_snippets(), 1):
        parts.append(f"\n\ndef readme_snippet_{number}() -> None:\n"
                     + textwrap.indent(code, "    ") + "\n")
    return "".join(parts)


@pytest.mark.parametrize(
    "python", ["3.9", pytest.param("3.13", marks=pytest.mark.stress)]
)
def test_readme_snippets_and_typed_keywords_pass_mypy_strict(tmp_path: Path, python: str) -> None:
    """mypy --strict accepts every README Python snippet and tests/typing_check.py, whose
    required '# type: ignore's prove that misspelt or mistyped keywords are errors; for the
    oldest Python supported and a new one (requests' stubs type ``get_adapter`` only from
    3.10 on)."""
    pytest.importorskip("mypy")
    assert len(readme_snippets()) >= 10
    module = tmp_path / "readme_snippets.py"
    module.write_text(snippets_module(), encoding="utf-8")
    result = subprocess.run(
        # (the vendors' SDKs in the presets page ship no types: not ours to check)
        [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
         "--disable-error-code=import-untyped",
         "--python-version", python, "--no-error-summary", "tests/typing_check.py",
         str(module)],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_policy_field_is_a_typed_keyword() -> None:
    """The options TypedDicts cover exactly RetryPolicy's fields (plus issue 15's
    ``deadline``), so a new field cannot be left untyped."""
    fields = RetryPolicy.field_names() | {"deadline"}
    assert PolicyOptions.__optional_keys__ == fields
    assert CallOptions.__optional_keys__ == fields - {"hooks"}
    assert AdapterOptions.__optional_keys__ == fields - {"hooks"}
    adapter_keywords = {"breaker", "budget", "state", "throttle", "hooks", "stats", "sleep",
                        "clock",
                        "pool_connections", "pool_maxsize", "pool_block"}
    assert SessionOptions.__optional_keys__ == fields | adapter_keywords
