"""Regression gate: compare the workspace metrics with a baseline under the
tolerances declared in ``gate.yaml`` and fail when any checked metric got worse
by more than its slack, or disappeared.

Usage (from the repository root)::

    python -m failmap.gate --rev main              # baseline = metrics committed at a git revision
    python -m failmap.gate --baseline FILE.json    # baseline = a committed snapshot
    python -m failmap.gate --write-baseline FILE.json   # snapshot the workspace metrics

A snapshot is ``{metrics_file_path: {nested metrics}}``: the same content as the
JSON files under ``metrics/``, so it reads like them and diffs cleanly in git.
A revision baseline goes through ``dvc metrics diff --json --all REV`` (the
metrics files must be git-tracked at REV, i.e. declared with ``cache: false``,
or in a DVC cache the machine can read). The new side is always read from the
workspace files, so both kinds of baseline compare against the same numbers.

Keys are dotted paths into the nested JSON (``test.accuracy``), the way
``dvc metrics diff`` names them. Exit status: 0 when every check passes, 1 when
any metric regressed, went missing or is not a number, 2 on a usage or
configuration error.
"""
from __future__ import annotations

import argparse
import fnmatch
import json
import math
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

from failmap.io import read_json, write_json

DIRECTIONS = ("higher", "lower")
SLACK_KINDS = ("abs", "rel")
ENTRY_FIELDS = ("file", "key", "direction", "slack")
SECTIONS = ("checks", "smoke")

OK, REGRESSED, MISSING, NEW, INVALID = "OK", "REGRESSED", "MISSING", "NEW", "INVALID"
FAILING = (REGRESSED, MISSING, INVALID)

# Float rounding must not turn a change of exactly the slack into a
# regression (0.90 - 0.88 > 0.02 in binary floating point).
_ROUNDING = 1e-9


class GateError(Exception):
    """A problem with the gate's inputs (config, baseline, dvc) rather than a regression."""


@dataclass(frozen=True)
class Check:
    """One gate.yaml entry: which metric(s), which way is better, how much worse is allowed."""
    file: str
    key: str                  # dotted path; may hold glob characters (* ? [])
    direction: str            # "higher" or "lower" is better
    abs_slack: float = 0.0
    rel_slack: float = 0.0    # fraction of |old|

    def allowed(self, old: float) -> float:
        """How much worse than ``old`` the new value may be: the looser of the two slacks."""
        return max(self.abs_slack, self.rel_slack * abs(old))

    @property
    def is_glob(self) -> bool:
        return any(c in self.key for c in "*?[")


@dataclass(frozen=True)
class Row:
    """One line of the gate's table."""
    file: str
    key: str
    old: object
    new: object
    delta: float | None
    allowed: str
    verdict: str


# ---------------------------------------------------------------- config ----

def load_checks(path: str | Path, section: str = "checks") -> list[Check]:
    """Parse and validate one list of checks (``section``) of gate.yaml; every
    problem names the entry it is in. gate.yaml holds ``checks`` (the default
    pipeline's metrics) and may hold ``smoke`` (the tiny pipeline of ``.ci/smoke``)."""
    path = Path(path)
    if not path.is_file():
        raise GateError(f"{path}: gate config not found")
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise GateError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(doc, dict) or "checks" not in doc or set(doc) - set(SECTIONS):
        raise GateError(f"{path}: expected a mapping with top-level key 'checks' (and optionally "
                        f"{[s for s in SECTIONS if s != 'checks']}), "
                        f"got {sorted(doc) if isinstance(doc, dict) else type(doc).__name__}")
    if section not in doc:
        raise GateError(f"{path}: no section '{section}'; it has {sorted(doc)}")
    entries = doc[section]
    if not isinstance(entries, list) or not entries:
        raise GateError(f"{path}: '{section}' must be a non-empty list of entries")
    return [_parse_entry(path, i, entry, section) for i, entry in enumerate(entries)]


def _parse_entry(path: Path, index: int, entry, section: str = "checks") -> Check:
    where = f"{path}: {section}[{index}]"
    if not isinstance(entry, dict):
        raise GateError(f"{where}: expected a mapping with {', '.join(ENTRY_FIELDS)}, "
                        f"got {type(entry).__name__}")
    if isinstance(entry.get("file"), str) and isinstance(entry.get("key"), str):
        where += f" ({entry['file']}: {entry['key']})"
    unknown = sorted(set(entry) - set(ENTRY_FIELDS))
    if unknown:
        raise GateError(f"{where}: unknown field(s) {unknown}; allowed: {list(ENTRY_FIELDS)}")
    missing = [f for f in ENTRY_FIELDS if f not in entry]
    if missing:
        raise GateError(f"{where}: missing field(s) {missing}")
    for field in ("file", "key"):
        if not isinstance(entry[field], str) or not entry[field].strip():
            raise GateError(f"{where}: '{field}' must be a non-empty string, got {entry[field]!r}")
    if any(c in entry["file"] for c in "*?["):
        raise GateError(f"{where}: 'file' must be a plain path (globs are allowed in 'key' only)")
    if entry["direction"] not in DIRECTIONS:
        raise GateError(f"{where}: 'direction' must be one of {list(DIRECTIONS)}, "
                        f"got {entry['direction']!r}")
    slack = entry["slack"]
    if not isinstance(slack, dict) or not slack or set(slack) - set(SLACK_KINDS):
        raise GateError(f"{where}: 'slack' must be a mapping with 'abs' and/or 'rel' "
                        f"(use {{abs: 0}} for no slack), got {slack!r}")
    for kind, value in slack.items():
        if not _is_number(value) or value < 0:
            raise GateError(f"{where}: slack '{kind}' must be a finite number >= 0, got {value!r}")
    return Check(file=entry["file"], key=entry["key"], direction=entry["direction"],
                 abs_slack=float(slack.get("abs", 0.0)), rel_slack=float(slack.get("rel", 0.0)))


# --------------------------------------------------------------- metrics ----

def flatten(nested: dict, prefix: str = "") -> dict[str, object]:
    """Nested dict -> {"a.b.c": leaf}, the key naming of ``dvc metrics diff``."""
    flat: dict[str, object] = {}
    for name, value in nested.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict):
            flat.update(flatten(value, key + "."))
        else:
            flat[key] = value
    return flat


def read_workspace_metrics(files: list[str]) -> dict[str, dict[str, object]]:
    """{file: flat metrics} for each listed file present in the workspace (absent ones are skipped:
    their checked metrics then show as MISSING)."""
    found = {}
    for file in files:
        if Path(file).is_file():
            found[file] = flatten(_read_metrics_file(file))
    return found


def snapshot_metrics(metrics_dir: str | Path) -> dict[str, dict]:
    """{path: nested metrics} of every JSON file under ``metrics_dir``, paths as posix
    strings relative to the current directory (how gate.yaml and dvc name them)."""
    metrics_dir = Path(metrics_dir)
    if not metrics_dir.is_dir():
        raise GateError(f"{metrics_dir}: metrics folder not found (has the pipeline run?)")
    files = sorted(metrics_dir.rglob("*.json"))
    if not files:
        raise GateError(f"{metrics_dir}: no *.json metrics files to snapshot")
    return {p.as_posix(): _read_metrics_file(p) for p in files}


def write_baseline(path: str | Path, metrics_dir: str | Path) -> dict[str, dict]:
    snapshot = snapshot_metrics(metrics_dir)
    write_json(path, snapshot)
    return snapshot


def load_baseline_file(path: str | Path) -> dict[str, dict[str, object]]:
    """Read a snapshot written by :func:`write_baseline` -> {file: flat metrics}."""
    try:
        snapshot = read_json(path)
    except json.JSONDecodeError as exc:
        raise GateError(f"{path}: baseline is not valid JSON: {exc}") from exc
    except FileNotFoundError as exc:
        raise GateError(f"{path}: baseline file not found") from exc
    if not isinstance(snapshot, dict) or not all(isinstance(v, dict) for v in snapshot.values()):
        raise GateError(f"{path}: baseline must map each metrics file path to its metrics "
                        "object, as --write-baseline writes it")
    return {file: flatten(metrics) for file, metrics in snapshot.items()}


def parse_dvc_metrics_diff(diff: dict, side: str = "old") -> dict[str, dict[str, object]]:
    """``dvc metrics diff --json`` output -> {file: flat metrics} of one side.

    DVC 3 prints ``{file: {dotted_key: {"old": v, "new": v[, "diff": d]}}}``
    and writes null for a side where the metric (or its file) is absent; those
    are dropped here so that absence means absence.
    """
    if side not in ("old", "new"):
        raise ValueError(f"side must be 'old' or 'new', got {side!r}")
    if not isinstance(diff, dict):
        raise GateError(f"dvc metrics diff: expected a JSON object, got {type(diff).__name__}")
    parsed: dict[str, dict[str, object]] = {}
    for file, metrics in diff.items():
        if not isinstance(metrics, dict):
            raise GateError(f"dvc metrics diff: entry for {file!r} is not an object: {metrics!r}")
        values = {}
        for key, change in metrics.items():
            if not isinstance(change, dict) or side not in change:
                raise GateError(f"dvc metrics diff: {file}: {key}: expected "
                                f"{{'old': ..., 'new': ...}}, got {change!r}")
            if change[side] is not None:
                values[key] = change[side]
        if values:
            parsed[file] = values
    return parsed


def dvc_baseline(rev: str) -> dict[str, dict[str, object]]:
    """Metrics as committed at git revision ``rev``, read through DVC."""
    cmd = [sys.executable, "-m", "dvc", "metrics", "diff", "--json", "--all", rev]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise GateError(f"`dvc metrics diff --json --all {rev}` failed "
                        f"(exit {proc.returncode}): {proc.stderr.strip()}")
    try:
        diff = json.loads(proc.stdout or "{}")
    except json.JSONDecodeError as exc:
        raise GateError(f"`dvc metrics diff --json` printed something that is not JSON: "
                        f"{proc.stdout[:200]!r}") from exc
    return parse_dvc_metrics_diff(diff, side="old")


def _read_metrics_file(path: str | Path) -> dict:
    try:
        metrics = read_json(path)
    except json.JSONDecodeError as exc:
        raise GateError(f"{path}: metrics file is not valid JSON: {exc}") from exc
    if not isinstance(metrics, dict):
        raise GateError(f"{path}: metrics file must hold a JSON object, got {type(metrics).__name__}")
    return metrics


# --------------------------------------------------------------- compare ----

def compare(checks: list[Check], old: dict[str, dict], new: dict[str, dict]) -> list[Row]:
    """One row per checked (file, key). A key matched by several entries is judged by the
    first one, so a specific entry listed before a glob overrides it."""
    rows: list[Row] = []
    seen: set[tuple[str, str]] = set()
    for check in checks:
        old_file, new_file = old.get(check.file, {}), new.get(check.file, {})
        if check.is_glob:
            keys = sorted(k for k in set(old_file) | set(new_file) if fnmatch.fnmatchcase(k, check.key))
            if not keys:  # the pattern finds nothing on either side
                rows.append(Row(check.file, check.key, None, None, None, "-", MISSING))
        else:
            keys = [check.key]
        for key in keys:
            if (check.file, key) in seen:
                continue
            seen.add((check.file, key))
            rows.append(_judge(check, key, old_file.get(key), new_file.get(key)))
    return rows


def _judge(check: Check, key: str, old, new) -> Row:
    if new is None:
        return Row(check.file, key, old, None, None, "-", MISSING)
    if not _is_number(new):
        return Row(check.file, key, old, new, None, "-", INVALID)
    if not _is_number(old):  # absent (or unusable) in the baseline: nothing to compare with
        return Row(check.file, key, old, new, None, "-", NEW)
    delta = new - old
    allowed = check.allowed(old)
    worsening = -delta if check.direction == "higher" else delta
    tolerance = allowed + _ROUNDING * max(1.0, abs(old), abs(new))
    verdict = REGRESSED if worsening > tolerance else OK
    bound = f">= {-allowed:.4g}" if check.direction == "higher" else f"<= +{allowed:.4g}"
    return Row(check.file, key, old, new, delta, bound, verdict)


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ----------------------------------------------------------------- table ----

def format_table(rows: list[Row], markdown: bool = False) -> str:
    header = ("file", "key", "old", "new", "delta", "allowed", "verdict")
    body = [(r.file, r.key, _fmt(r.old), _fmt(r.new),
             "-" if r.delta is None else f"{r.delta:+.4g}", r.allowed, r.verdict) for r in rows]
    if markdown:
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        lines += ["| " + " | ".join(cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(str(c)) for c in col) for col in zip(header, *body)]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()
                     for cells in [header, *body])


def _fmt(value) -> str:
    if value is None:
        return "-"
    if _is_number(value):
        return f"{value:.6g}"
    return repr(value)


def summary(rows: list[Row]) -> str:
    counts = {v: sum(r.verdict == v for r in rows) for v in (OK, NEW, *FAILING)}
    detail = ", ".join(f"{n} {v.lower()}" for v, n in counts.items() if n)
    return f"gate: {'FAILED' if failed(rows) else 'PASSED'} ({detail})"


def failed(rows: list[Row]) -> bool:
    return any(r.verdict in FAILING for r in rows)


# ------------------------------------------------------------------- cli ----

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m failmap.gate",
        description="Fail when workspace metrics regress against a baseline beyond the "
                    "tolerances in gate.yaml. Run from the repository root.")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--rev", help="git revision whose committed metrics are the baseline "
                                      "(read through `dvc metrics diff --json`)")
    source.add_argument("--baseline", metavar="FILE", help="JSON snapshot to compare against")
    source.add_argument("--write-baseline", metavar="FILE",
                        help="snapshot the workspace metrics into FILE and exit")
    parser.add_argument("--config", default="gate.yaml", help="tolerances (default: gate.yaml)")
    parser.add_argument("--section", default="checks", choices=SECTIONS,
                        help="which list of checks in the config (default: checks; smoke: the tiny "
                             "pipeline of .ci/smoke)")
    parser.add_argument("--metrics-dir", default="metrics",
                        help="folder --write-baseline snapshots (default: metrics)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the table as Markdown (for $GITHUB_STEP_SUMMARY)")
    args = parser.parse_args(argv)

    try:
        if args.write_baseline:
            snapshot = write_baseline(args.write_baseline, args.metrics_dir)
            print(f"gate: wrote {args.write_baseline} ({len(snapshot)} metrics files)")
            return 0
        checks = load_checks(args.config, args.section)
        old = dvc_baseline(args.rev) if args.rev else load_baseline_file(args.baseline)
        new = read_workspace_metrics(sorted({c.file for c in checks}))
        rows = compare(checks, old, new)
    except GateError as exc:
        print(f"gate: error: {exc}", file=sys.stderr)
        return 2

    baseline_name = f"revision {args.rev}" if args.rev else args.baseline
    print(f"gate: workspace vs {baseline_name} under {args.config} ({args.section})\n")
    print(format_table(rows, markdown=args.markdown))
    print()
    if rows and all(r.old is None for r in rows):
        print(f"gate: warning: {baseline_name} has none of the checked metrics; if they exist "
              "there, are the metrics files committed to git (cache: false in dvc.yaml)?",
              file=sys.stderr)
    print(summary(rows))
    return 1 if failed(rows) else 0


if __name__ == "__main__":
    sys.exit(main())
