"""Every setting is documented in the README's configuration table."""

from __future__ import annotations

from gateway.settings import Settings
from tests.api.conftest import ROOT


def test_every_setting_is_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text()
    table = readme[readme.index("## Configuration") : readme.index("## API")]
    missing = [
        f"GATEWAY_{name.upper()}"
        for name in Settings.model_fields
        if f"`GATEWAY_{name.upper()}`" not in table
    ]
    assert missing == []
