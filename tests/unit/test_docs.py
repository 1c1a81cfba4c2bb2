from pathlib import Path

from fulfillment.settings import Settings

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


def test_every_option_is_documented_in_the_readme():
    undocumented = [f.validation_alias for f in Settings.model_fields.values()
                    if f"`{f.validation_alias}`" not in README]
    assert undocumented == []
