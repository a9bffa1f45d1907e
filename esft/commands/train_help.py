"""`esft train --help`: the config groups with their options, the keys users touch most, where to see all.

Everything is read from the config files themselves (the groups from conf/'s folders plus the user's config
dirs, each key's one-line description from the comment beside it in conf/), so the help cannot drift from
the configs it describes.
"""

from __future__ import annotations

import re
import textwrap
from collections.abc import Iterable
from pathlib import Path

#: the keys a user touches most, in reading order (dotted paths; their comments come from conf/)
COMMON_KEYS = ("seed", "steps", "data_dir", "task.max_new_tokens", "es.population_size", "es.sigma", "es.alpha",
               "es.evaluator", "awd.kind", "awd.lambda", "awd.anchor", "eval.every", "eval.size", "eval.tasks",
               "checkpoint.every", "checkpoint.keep", "model.device", "prior.steps")
#: which file declares a key's section when it is not conf/train.yaml
_SECTION_FILES = {"eval": "eval/default.yaml", "model": "model/tiny.yaml", "prior": "prior/add.yaml"}
_GROUPS = ("task", "prior", "model", "method", "eval", "experiment", "logger")


def key_comments(path: Path) -> dict[str, tuple[str, str]]:
    """dotted key -> (value, comment) for every `key: value  # comment` line of a YAML file (by indentation)."""
    found: dict[str, tuple[str, str]] = {}
    stack: list[tuple[int, str]] = []
    for line in path.read_text(encoding="utf-8").splitlines():
        match = re.match(r"^( *)([A-Za-z_][\w]*):\s*([^#]*?)\s*(?:#\s*(.*))?$", line)
        if not match:
            continue
        indent, key, value, comment = len(match.group(1)), match.group(2), match.group(3), match.group(4) or ""
        while stack and stack[-1][0] >= indent:
            stack.pop()
        dotted = ".".join([*(k for _, k in stack), key])
        found[dotted] = (value, comment)
        stack.append((indent, key))
    return found


def _describe(conf: Path, key: str) -> tuple[str, str]:
    section = key.split(".", 1)[0]
    relative = _SECTION_FILES.get(section)
    if relative is not None:
        inner = key.split(".", 1)[1] if "." in key else key
        entry = key_comments(conf / relative).get(inner)
        if entry:
            return entry
    return key_comments(conf / "train.yaml").get(key, ("", ""))


def train_help(conf: Path, user_dirs: Iterable[Path] = ()) -> str:
    """The text after Typer's usage line."""
    dirs = [conf, *user_dirs]
    lines = ["Config groups (pick one option each, e.g. `task=gsm8k method=grpo`):"]
    for group in _GROUPS:
        options = sorted({p.stem for d in dirs for p in (d / group).glob("*.yaml")})
        lines += textwrap.wrap(", ".join(options) or "(none)", 100, initial_indent=f"  {group:<11} ",
                               subsequent_indent=" " * 14)
    lines.append("\nKeys users touch most (`KEY=VALUE`; sweep with `-m KEY=A,B`):")
    for key in COMMON_KEYS:
        value, comment = _describe(conf, key)
        lines.append(f"  {key + '=' + (value or 'null'):<28} {comment}"[:118].rstrip())
    lines += [
        "",
        "See every key and its value: `esft train --cfg job` (add overrides to see their effect).",
        "Resume a run: `esft train --resume RUN_DIR`. Your own task configs: `esft train --config-dir DIR "
        "task=NAME` (DIR/task/NAME.yaml).",
        "Unknown keys are refused; a new key with `+key=value` only where a task's `_target_` class takes it.",
        "Hydra's own help: `esft train --hydra-help`.",
    ]
    return "\n".join(lines)
