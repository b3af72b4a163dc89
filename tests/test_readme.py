"""The README's example runs and does what it says."""

import inspect
import re
from pathlib import Path

import numpy as np

import fastopt

README = (Path(__file__).parent.parent / "README.md").read_text()


def test_example_converges(capsys):
    section = README.split("## Example", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    exec(compile(code, "README.md", "exec"), {})
    assert float(capsys.readouterr().out) < 1e-10


def test_quick_start_has_exactly_two_commands():
    section = README.split("## Quick start", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    commands = [line for line in block.splitlines() if line.strip()]
    assert len(commands) == 2
    test_command = commands[1].split("&&")[1].strip()
    assert test_command == "python -m pytest -n auto --dist loadfile"
    # CI runs it as written (with the file of skipped tests it records for the torch run).
    ci = (Path(__file__).parent.parent / ".ci" / "run").read_text()
    assert f"\n{test_command} --record-skips=" in ci
    assert np.all([c.startswith("pip install ") for c in commands])


def _literal(value):
    """A default as the README writes it: 1e-3, 2.5e-3, 0, 0.99, (0.9, 0.999), False."""
    if isinstance(value, tuple):
        return "(" + ", ".join(_literal(item) for item in value) + ")"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) < 0.1:
            mantissa, exponent = f"{value:.12e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return repr(value)
    return repr(value)


def _rendered(cls):
    """``Name(params, a=1, b=2, *, c=3)``, the precision and gradient options (which every
    class takes) left out."""
    parts, keyword_only = ["params"], False
    precision = {*fastopt.precision.PRECISION_DEFAULTS, "seed"}
    for parameter in list(inspect.signature(cls).parameters.values())[1:]:
        if parameter.kind is parameter.VAR_KEYWORD or parameter.name in precision:
            continue
        if parameter.kind is parameter.KEYWORD_ONLY and not keyword_only:
            parts.append("*")
            keyword_only = True
        parts.append(f"{parameter.name}={_literal(parameter.default)}")
    return f"{cls.__name__}({', '.join(parts)})"


def test_the_rules_table_lists_every_rule_with_its_signature():
    section = README.split("## Rules", 1)[1].split("\n## ", 1)[0]
    listed = re.findall(r"^\| `(\w+\(.*?\))` \|", section, re.M)
    classes = [
        value
        for value in vars(fastopt).values()
        if isinstance(value, type) and issubclass(value, fastopt.Optimizer)
    ]
    classes = [cls for cls in classes if cls is not fastopt.Optimizer]
    assert sorted(listed) == sorted(_rendered(cls) for cls in classes)
