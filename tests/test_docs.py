"""The docs a user has are in the repository: nothing points outside it."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_design_notes_are_in_the_repository_and_nothing_points_outside() -> None:
    assert (ROOT / "docs" / "design.md").is_file()
    for path in [ROOT / "README.md", *sorted((ROOT / "proxy").rglob("*.py"))]:
        text = path.read_text(encoding="utf-8")
        for outside in ("../shared", "shared/DESIGN.md", "DESIGN.md"):
            assert outside not in text, f"{path.relative_to(ROOT)} points to {outside}"
