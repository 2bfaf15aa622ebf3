"""The README's settings table is the settings' own: every variable, its default and meaning."""

from pathlib import Path

from app.core.config import Settings, settings_table

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_lists_every_setting_as_config_defines_it() -> None:
    text = README.read_text()
    assert settings_table() in text
    for name in Settings.model_fields:
        assert f"`REGULA_{name.upper()}`" in text
