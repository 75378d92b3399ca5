"""README.md's config-group table against the config tree: every group in conf/ has a row, every row names
exactly the option files of its group, and the option marked (default) is the one conf/config.yaml picks."""

from __future__ import annotations

import os
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf"
# A row of the table: | `group/` | `opt` (default), `opt`, ... | what it holds |
ROW = re.compile(r"^\| `([\w/]+)/` \| (.+?) \| .+ \|$")


def readme_table(text: str) -> dict[str, list[tuple[str, bool]]]:
    """group -> [(option, marked default)] from the config-group table of a README text."""
    rows = {}
    for line in text.splitlines():
        if m := ROW.match(line):
            cell = m.group(2)
            rows[m.group(1)] = [
                (o.group(1), cell[o.end() :].lstrip().startswith("(default"))
                for o in re.finditer(r"`([\w.-]+)`", cell)
            ]
    return rows


def conf_groups() -> dict[str, set[str]]:
    """group -> option names: every folder under conf/ (links followed: conf/sweep is sweeps/) with YAML files."""
    groups = {}
    for dirpath, _, files in os.walk(CONF, followlinks=True):
        opts = {Path(f).stem for f in files if f.endswith(".yaml")}
        if opts and Path(dirpath) != CONF:
            groups[Path(dirpath).relative_to(CONF).as_posix()] = opts
    return groups


def mismatches(text: str) -> list[str]:
    """Every way the README table differs from conf/ (empty when they agree)."""
    table, groups = readme_table(text), conf_groups()
    out = [f"no README row for conf/{g}/" for g in sorted(set(groups) - set(table))]
    out += [f"README row `{g}/` has no conf/{g}/" for g in sorted(set(table) - set(groups))]
    for group in sorted(set(table) & set(groups)):
        listed = [o for o, _ in table[group]]
        if len(listed) != len(set(listed)) or set(listed) != groups[group]:
            out.append(
                f"`{group}/`: README lists {sorted(listed)}, conf/{group}/ has {sorted(groups[group])}"
            )
    defaults = yaml.safe_load((CONF / "config.yaml").read_text())["defaults"]
    picked = {k: v for d in defaults if isinstance(d, dict) for k, v in d.items() if v and " " not in k}
    for group, opts in table.items():
        marked = [o for o, is_default in opts if is_default]
        if marked != ([picked[group]] if group in picked else []):
            out.append(
                f"`{group}/`: README marks {marked} as default, conf/config.yaml picks {picked.get(group)}"
            )
    return out


def test_readme_table_matches_the_config_tree() -> None:
    assert {"model", "eval", "hydra/launcher", "sweep", "sweep/arm"} <= set(conf_groups())  # links followed
    assert mismatches((ROOT / "README.md").read_text()) == []


def test_a_drifted_table_is_caught() -> None:
    text = (ROOT / "README.md").read_text()
    have = sorted(p.stem for p in (ROOT / "conf" / "eval").glob("*.yaml"))
    assert "humaneval" in have
    assert mismatches(text.replace(", `humaneval`", "")) == [
        f"`eval/`: README lists {[h for h in have if h != 'humaneval']}, conf/eval/ has {have}"
    ]
    assert mismatches(text.replace("`tree` (default)", "`tree`")) == [
        "`decoding/`: README marks [] as default, conf/config.yaml picks tree"
    ]
    no_paths = "\n".join(line for line in text.splitlines() if not line.startswith("| `paths/`"))
    assert mismatches(no_paths) == ["no README row for conf/paths/"]
