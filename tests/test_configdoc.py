"""Configuration that documents itself: every field described, `alignray config show`, and the
the documentation's tables generated from the schema."""

from pathlib import Path

import pytest
from alignray import configdoc
from alignray.cli import main

PAGE = Path(__file__).resolve().parents[1] / "docs" / "configuration.md"


@pytest.mark.parametrize("kind", list(configdoc.KINDS))
def test_every_field_has_a_description(kind):
    undocumented = [r.path for r in configdoc.rows(configdoc.KINDS[kind][0]) if not r.description]
    assert not undocumented, (f"config fields of {kind} without a description: {', '.join(undocumented)};"
                              " give each a Field(description=...) in platform/alignray/config.py (a section:"
                              " a class docstring)")


def test_tables_block_are_generated_from_the_schema():
    text = PAGE.read_text()
    assert configdoc.replace_block(text) == text, (
        "docs/configuration.md's tables differ from the schema; regenerate them with"
        " `PYTHONPATH=platform python -m alignray.configdoc`")


def test_show_prints_dotted_fields_with_type_default_and_description(capsys):
    assert main(["config", "show", "ppo"]) == 0
    out = capsys.readouterr().out
    assert "ppo.kl_coef  (float) = 0.05\n    Initial (or fixed) KL coefficient." in out
    assert "sampler.temperature  (float) = 1.0\n" in out
    assert "reward.models  (list[str]) = []\n" in out
    assert "model.dtype  (auto | float32 | bfloat16) = auto\n" in out
    assert "trainer.zero_stage  (0 | 1 | 2 | 3) = 2\n" in out


def test_show_without_kind_lists_the_kinds_and_a_markdown_table(capsys):
    assert main(["config", "show"]) == 0
    listing = capsys.readouterr().out
    for kind, (schema, command) in configdoc.KINDS.items():
        assert f"{kind:10s} {schema.__name__:16s} read by {command}" in listing
    assert main(["config", "show", "evaluate", "--markdown"]) == 0
    table = capsys.readouterr().out
    assert "| `policy` | str | `required` | The policy to evaluate:" in table
    assert "| `judges` | list[model \\| profanity \\| hate \\| length \\| refusal] |" in table


def test_unknown_kind_names_the_valid_ones(capsys):
    with pytest.raises(SystemExit) as exit:
        main(["config", "show", "nope"])
    assert exit.value.code == 2
    assert ("invalid choice: 'nope' (choose from 'simulate', 'train', 'ppo', 'evaluate', 'run', 'serve')"
            in capsys.readouterr().err)


def test_show_serve_describes_both_applications_args(capsys):
    assert main(["config", "show", "serve"]) == 0
    out = capsys.readouterr().out
    assert "policy.max_tokens  (int) = 1024\n    The cap on every completion's length:" in out
    assert "reward.max_batch  (int) = 256\n" in out and "reward.token_env  (str | null) = null\n" in out


def test_a_section_is_described_by_its_docstring_and_its_fields_dotted():
    rows = {r.path: r for r in configdoc.rows(configdoc.KINDS["simulate"][0])}
    assert rows["reward"].type == "section | null" and rows["reward"].default == "null"
    assert rows["reward"].description.startswith("The reward that ranks RRHF candidates")
    assert rows["sampler"].description == "The pool of vLLM sampler actors and how they sample."
    assert rows["reward.scalarize"].default == "linear"
    assert rows["output_dir"].type == "path"
