"""The README and docs/ name only functions that exist: every backticked `module.name` (rewards,
wheel, evaluate, the scripts, mer's modules with or without the `mer.` prefix) and every
`tests/test_x.py::test_name` is looked up in the code."""
import ast
import glob
import os
import re

import pytest

from conftest import ROOT

MER = [os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(ROOT, "mer", "*.py"))]
FILES = {"rewards": "rewards.py", "wheel": "wheel.py", "evaluate": "evaluate.py", "predict": "predict.py",
         "train_grpo": "train_grpo.py", "train_sft": "train_sft.py",
         "mer": "mer/__init__.py", **{m: f"mer/{m}.py" for m in MER if m != "__init__"}}
DOCS = [os.path.join(ROOT, "README.md")] + sorted(glob.glob(os.path.join(ROOT, "docs", "*.md")))


def top_level_names(path):
    """Functions, classes and assigned names at the top level of a file (scripts are not imported)."""
    tree = ast.parse(open(path).read())
    names = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def named_in(doc):
    """(module, name) for each backticked `module.name` (`mer.` prefix optional) and (test file, test)."""
    text = open(doc).read()
    out = []
    for code in re.findall(r"`([^`\n]+)`", text):
        for m in re.finditer(r"(?<![\w./])(?:mer\.)?(\w+)\.([a-zA-Z_]\w*)(?![\w/])", code):
            module, name = m.groups()
            if name in ("py", "md", "jsonl", "yaml") or (module == "mer" and name in MER):
                continue  # a file name, or a module of mer
            if module in FILES:
                out.append((module, name))
        for m in re.finditer(r"(tests/test_\w+\.py)::(\w+)", code):
            out.append((m.group(1), m.group(2)))
    return out


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: os.path.relpath(p, ROOT))
def test_every_function_the_docs_name_exists(doc):
    named = named_in(doc)
    missing = [f"{m}.{n}" for m, n in named
               if n not in top_level_names(os.path.join(ROOT, FILES.get(m, m)))]
    assert not missing, f"{os.path.relpath(doc, ROOT)} names what the code does not define: {missing}"


def test_the_check_catches_a_name_that_does_not_exist(tmp_path):
    doc = tmp_path / "x.md"
    doc.write_text("`rewards.grpo_loss` and `mer.engine.sample`, `completion_logits`, `rewards.group_rewards`, "
                   "`mer.sample`, `train_grpo.py`, `tests/test_rewards.py::test_nothing`")
    named = named_in(str(doc))
    assert named == [("rewards", "grpo_loss"), ("engine", "sample"), ("rewards", "group_rewards"), ("mer", "sample"),
                     ("tests/test_rewards.py", "test_nothing")]
    assert [n for m, n in named if n not in top_level_names(os.path.join(ROOT, FILES.get(m, m)))] == \
        ["group_rewards", "sample", "test_nothing"]


def test_the_readme_stays_short():
    assert os.path.getsize(os.path.join(ROOT, "README.md")) <= 12 * 1024
