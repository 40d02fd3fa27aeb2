"""The README's promises hold: its commands are what CI runs, its table matches the models."""
import re
from pathlib import Path

from alexnet import model

ROOT = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", (ROOT / "README.md").read_text(), re.S)
    return [blocks[0].strip(), blocks[1].strip()]  # install + main job, then the tests


def test_ci_installs_and_tests_as_the_readme_says():
    install, tests = readme_commands()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]"' in install and 'pip install' in ci and '-e ".[test]"' in ci
    assert tests in ci.splitlines()


def test_readme_parameter_table_matches_the_models():
    text = (ROOT / "README.md").read_text()
    for name in model.VARIANTS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{name}` |"))
        count = int(row.rstrip(" |").rsplit("|", 1)[1].strip().replace(",", ""))
        assert count == model.count_parameters(model.build(name, init="kaiming")), name
