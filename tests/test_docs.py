"""The README and the docs pages hold together: the README leads with results in a size a newcomer
reads, every test a page names as proof exists, every file it names is there, and every relative
link (and #anchor) leads somewhere. Each checker is also run on a made-up page, to show it can fail.

Anchors follow GitHub's rule for headings: lowercase, punctuation dropped except '-' and '_',
spaces to '-', and '-1', '-2', ... appended to repeats.
"""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_BYTES = (10_000, 14_000)  # nanoGPT's README is 14 KB, ffcv-imagenet's 7

TEST_ID = re.compile(r"tests/(\w+\.py)::(\w+)")
SOURCE_PATH = re.compile(r"(?<![\w./-])((?:alexnet|benchmarks|tests)/[\w/]+\.py)\b")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")


def prose(text: str) -> str:
    """The text outside fenced code blocks (where `# comment` lines are not headings)."""
    return re.sub(r"^```.*?^```[^\n]*$", "", text, flags=re.S | re.M)


def anchors(text: str) -> set[str]:
    """The #anchors GitHub gives the headings of a Markdown text."""
    seen: dict[str, int] = {}
    out = set()
    for line in prose(text).splitlines():
        m = HEADING.match(line)
        if not m:
            continue
        slug = re.sub(r"[^\w\- ]", "", m.group(2).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(page: Path, text: str) -> list[str]:
    """Relative links of a page (outside code) whose file, or whose heading, does not exist."""
    bad = []
    for target in LINK.findall(re.sub(r"`[^`\n]*`", "", prose(text))):
        if re.match(r"[a-z][a-z0-9+.-]*:", target):  # https:, mailto: ...: not ours to check
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve()
        if path and not file.exists():
            bad.append(f"{page.name}: {target} (no such file)")
        elif anchor and (not path or file.suffix == ".md"):
            if anchor not in anchors(file.read_text() if path else text):
                bad.append(f"{page.name}: {target} (no such heading)")
    return bad


def defined_tests(file: Path) -> set[str]:
    """The test functions of a test file, at module level or in its classes."""
    tree = ast.parse(file.read_text())
    return {node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))}


def missing_tests(text: str) -> list[str]:
    """The `tests/file.py::name` ids in a text that name no test."""
    missing = []
    for file, name in TEST_ID.findall(text):
        path = ROOT / "tests" / file
        if not path.is_file() or name not in defined_tests(path):
            missing.append(f"tests/{file}::{name}")
    return missing


def test_every_named_test_exists():
    named = {page.name: TEST_ID.findall(page.read_text()) for page in PAGES}
    assert len(named["reliability.md"]) >= 40, "docs/reliability.md lost its tests"
    missing = {page.name: missing_tests(page.read_text()) for page in PAGES}
    assert not any(missing.values()), {k: v for k, v in missing.items() if v}
    assert missing_tests("tests/test_docs.py::test_every_named_test_exists, tests/test_docs.py::no_such_test, "
                         "tests/no_such_file.py::test_x") == ["tests/test_docs.py::no_such_test",
                                                              "tests/no_such_file.py::test_x"]


def test_every_named_source_file_exists():
    missing = [f"{page.name}: {path}" for page in PAGES for path in SOURCE_PATH.findall(page.read_text())
               if not (ROOT / path).is_file()]
    assert not missing, missing
    # the README's layout names modules by their file name alone
    files = {path.name for folder in ("alexnet", "benchmarks", "tests") for path in (ROOT / folder).rglob("*.py")}
    files |= {path.name for path in ROOT.glob("*.py")}  # hubconf.py, where torch.hub looks for it
    unknown = sorted(set(re.findall(r"\b\w+\.py\b", (ROOT / "README.md").read_text())) - files)
    assert not unknown, f"README.md names modules that are not there: {unknown}"
    assert SOURCE_PATH.findall("see alexnet/no_such_module.py and benchmarks/data.py") == [
        "alexnet/no_such_module.py", "benchmarks/data.py"]


def test_every_relative_link_resolves():
    bad = [b for page in PAGES for b in broken_links(page, page.read_text())]
    assert not bad, bad
    assert sum(len(LINK.findall(page.read_text())) for page in PAGES) >= 50
    fake = ROOT / "docs" / "fake.md"
    text = ("# A page\n\n## Its `second` heading: here\n\n```python\n# not a heading\n```\n\n"
            "[ok](#its-second-heading-here) [ok](benchmarks.md#machines) [ok](../README.md) [ok](https://x.org/y)\n"
            "[bad](#not-a-heading) [bad](#no-such) [bad](benchmarks.md#no-such-heading) [bad](no_such.md)\n")
    assert broken_links(fake, text) == ["fake.md: #not-a-heading (no such heading)", "fake.md: #no-such (no such heading)",
                                        "fake.md: benchmarks.md#no-such-heading (no such heading)",
                                        "fake.md: no_such.md (no such file)"]
    assert anchors("## A\n## A\n## 224 vs 227: §3.1's `x`\n") == {"a", "a-1", "224-vs-227-31s-x"}


def test_the_readme_leads_with_results_and_the_two_commands_in_a_readable_size():
    text = (ROOT / "README.md").read_text()
    size = len(text.encode())
    assert README_BYTES[0] <= size <= README_BYTES[1], f"README.md is {size} bytes, not {README_BYTES}"
    sections = [line[3:] for line in prose(text).splitlines() if line.startswith("## ")]
    assert sections[:2] == ["Results", "Two commands"], sections


def test_every_page_with_command_lines_is_run_by_the_readme_test():
    """tests/test_readme.py runs the bash blocks of its PAGES: a page left out of it would hold lines
    nothing runs."""
    tree = ast.parse((ROOT / "tests" / "test_readme.py").read_text())
    listed = next(ast.literal_eval(node.value) for node in tree.body
                  if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "PAGES")
    with_commands = [str(page.relative_to(ROOT)) for page in PAGES if re.search(r"^```(bash|sh)\n", page.read_text(), re.M)]
    assert set(with_commands) <= set(listed), set(with_commands) - set(listed)
    assert listed[0] == "README.md" and all((ROOT / page).is_file() for page in listed)
