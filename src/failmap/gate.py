"""Regression gate: fail when a metric that ``gate.yaml`` checks got worse than a
baseline by more than its slack, or disappeared (``python -m failmap.gate --help``).

DVC reads the metrics: ``dvc metrics show --json`` the workspace's, ``dvc metrics diff
--json --all REV`` a revision's (git-tracked there: ``cache: false``); keys are dotted
(``test.accuracy``). A snapshot (``--write-baseline``) is ``{file: nested metrics}``, less
``metrics/resources/`` (timings). Exit status: 0 pass; 1 a metric regressed, went missing or
is not a number; 2 a usage, configuration or DVC error."""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import subprocess
import sys
from collections import namedtuple
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from failmap.io import flatten, write_json
from failmap.stage import RESOURCES

OK, REGRESSED, MISSING, NEW, INVALID = "OK", "REGRESSED", "MISSING", "NEW", "INVALID"
FAILING = (REGRESSED, MISSING, INVALID)
ROUNDING = 1e-9  # so that float rounding never makes a change of exactly the slack a regression
Row = namedtuple("Row", "file key old new delta allowed verdict")  # one line of the gate's table


class GateError(Exception):
    """A problem with the gate's inputs (config, baseline, DVC), not a regression."""


class Check(BaseModel):
    """One gate.yaml entry: a metrics file, a dotted key (globs * ? [] match several, * crosses dots), which
    way is better, and how much worse than the baseline it may get: the looser of slack ``abs`` and ``rel`` * |old|."""
    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)  # no unknown field, no "0.1" for 0.1
    file: str = Field(pattern=r"^[^*?\[]+$")  # a plain path: no glob characters * ? [ (those are for key)
    key: str = Field(pattern=r"\S")
    direction: Literal["higher", "lower"]
    slack: dict[Literal["abs", "rel"], Annotated[float, Field(ge=0, allow_inf_nan=False)]] = Field(min_length=1)


class GateConfig(BaseModel):
    """gate.yaml: ``checks`` for the default pipeline, ``smoke`` for the tiny one of ``.ci/smoke``."""
    model_config = Check.model_config
    checks: list[Check] = Field(min_length=1)
    smoke: list[Check] | None = Field(None, min_length=1)


def load_checks(path: str | Path, section: str = "checks") -> list[Check]:
    """The checks of one section of gate.yaml; a problem names the file, the entry and the field
    (``gate.yaml: checks.2.slack.abs: Input should be greater than or equal to 0``)."""
    try:
        checks = getattr(GateConfig.model_validate(yaml.safe_load(Path(path).read_text())), section)
    except (OSError, yaml.YAMLError) as exc:
        raise GateError(f"{path}: gate config not found or not valid YAML: {exc}") from exc
    except ValidationError as exc:
        raise GateError(f"{path}: " + "; ".join(f"{'.'.join(map(str, e['loc'])) or 'top level'}: {e['msg']}"
                                                 for e in exc.errors())) from None
    if checks is None:
        raise GateError(f"{path}: no section '{section}'")
    return checks


def dvc_json(*args: str):
    """What ``dvc <args> --json`` prints, parsed; GateError naming the command when it fails."""
    proc = subprocess.run([sys.executable, "-m", "dvc", *args, "--json"], capture_output=True, text=True)
    if proc.returncode:
        raise GateError(f"`dvc {' '.join(args)} --json` failed (exit {proc.returncode}): {proc.stderr.strip()}")
    return json.loads(proc.stdout or "{}")


def workspace_metrics() -> dict[str, dict]:
    """{file: nested metrics} of each metrics file of dvc.yaml, read by ``dvc metrics show``; an
    absent one is left out (its checks say MISSING), an unreadable one is a GateError."""
    shown = dvc_json("metrics", "show").get("", {}).get("data", {})
    for file, entry in shown.items():
        if entry.get("error", {}).get("type", "FileNotFoundError") != "FileNotFoundError":
            raise GateError(f"{file}: DVC cannot read this metrics file: {entry['error'].get('msg')}")
    return {file: entry["data"] for file, entry in shown.items() if "data" in entry}


def revision_metrics(rev: str) -> dict[str, dict]:
    """{file: flat metrics} committed at git revision ``rev``: the old side of ``dvc metrics diff``."""
    return {file: {key: change["old"] for key, change in keys.items() if change.get("old") is not None}
            for file, keys in dvc_json("metrics", "diff", "--all", rev).items()}


def load_baseline_file(path: str | Path) -> dict[str, dict]:
    """A snapshot that ``--write-baseline`` wrote -> {file: flat metrics}."""
    try:
        return {f: flatten(m) for f, m in TypeAdapter(dict[str, dict]).validate_json(Path(path).read_bytes()).items()}
    except (OSError, ValidationError) as exc:
        raise GateError(f"{path}: not a baseline {{metrics file: metrics}} as --write-baseline writes: {exc}") from exc


def compare(checks: list[Check], old: dict[str, dict], new: dict[str, dict]) -> list[Row]:
    """One row per checked (file, key) of the flat metrics (a pattern matching nothing: one MISSING row); a key
    that several entries match is judged by the first, so a specific entry before a glob overrides it."""
    rows = {}
    for check in checks:
        before, after = old.get(check.file, {}), new.get(check.file, {})
        for key in sorted(k for k in {**before, **after} if fnmatch.fnmatchcase(k, check.key)) or [check.key]:
            rows.setdefault((check.file, key), _judge(check, key, before.get(key), after.get(key)))
    return list(rows.values())


def _judge(check: Check, key: str, old, new) -> Row:
    if not _is_number(new):
        return Row(check.file, key, old, new, None, "-", MISSING if new is None else INVALID)
    if not _is_number(old):  # absent (or unusable) in the baseline: nothing to compare with
        return Row(check.file, key, old, new, None, "-", NEW)
    allowed, delta = max(check.slack.get("abs", 0.0), check.slack.get("rel", 0.0) * abs(old)), new - old
    worsening = -delta if check.direction == "higher" else delta
    verdict = REGRESSED if worsening > allowed + ROUNDING * max(1.0, abs(old), abs(new)) else OK
    bound = f">= {-allowed:.4g}" if check.direction == "higher" else f"<= +{allowed:.4g}"
    return Row(check.file, key, old, new, delta, bound, verdict)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def format_table(rows: list[Row]) -> str:
    """A Markdown table with aligned columns: it reads in a terminal and renders in $GITHUB_STEP_SUMMARY."""
    def text(v, spec=".6g"):
        return "-" if v is None else format(v, spec) if _is_number(v) else repr(v)
    lines = [Row._fields, *[(r.file, r.key, text(r.old), text(r.new), text(r.delta, "+.4g"), *r[5:]) for r in rows]]
    widths = [max(map(len, column)) for column in zip(*lines)]
    lines.insert(1, ["-" * w for w in widths])
    return "\n".join("| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |" for cells in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m failmap.gate", description=__doc__.split("\n\n")[0])
    source = parser.add_mutually_exclusive_group(required=True)  # the baseline, or a new snapshot
    source.add_argument("--rev", help="git revision whose committed metrics are the baseline (e.g. main)")
    source.add_argument("--baseline", metavar="FILE", help="JSON snapshot to compare against")
    source.add_argument("--write-baseline", metavar="FILE", help="snapshot the workspace metrics into FILE")
    parser.add_argument("--config", default="gate.yaml", help="tolerances (default: gate.yaml)")
    parser.add_argument("--section", default="checks", choices=list(GateConfig.model_fields), help="list of checks")
    args = parser.parse_args(argv)
    try:
        if args.write_baseline:
            saved = {f: m for f, m in sorted(workspace_metrics().items()) if not f.startswith(f"{RESOURCES}/")}
            write_json(args.write_baseline, saved)
            print(f"gate: wrote {args.write_baseline} ({len(saved)} metrics files)")
            return 0
        checks = load_checks(args.config, args.section)
        old = revision_metrics(args.rev) if args.rev else load_baseline_file(args.baseline)
        rows = compare(checks, old, {file: flatten(metrics) for file, metrics in workspace_metrics().items()})
    except GateError as exc:
        print(f"gate: error: {exc}", file=sys.stderr)
        return 2
    name = f"revision {args.rev}" if args.rev else args.baseline
    print(f"gate: workspace vs {name} under {args.config} ({args.section})\n\n{format_table(rows)}\n")
    if rows and all(r.old is None for r in rows):
        print(f"gate: warning: {name} has none of the checked metrics: git-tracked (cache: false)?", file=sys.stderr)
    counts = ", ".join(f"{n} {v.lower()}" for v in (OK, NEW, *FAILING) if (n := sum(r.verdict == v for r in rows)))
    failed = any(r.verdict in FAILING for r in rows)
    print(f"gate: {'FAILED' if failed else 'PASSED'} ({counts})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
