"""Flow files: read, validate (schema, then meaning) and build a Flow.

`load_flow` is the only way a Flow comes into being, so nothing runs that did
not pass every check `signoff validate` makes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner.flows.checks import semantic_problems
from runner.errors import FlowInvalid, NotFound
from runner.flows.model import Flow
from runner.schemas import schema_problems
from runner.yamldoc import MAX_FILE_BYTES, Document, DocumentError, Problem, parse_bytes, read_file

FLOW_SUFFIXES = (".yaml", ".yml")


@dataclass
class FlowReport:
    file: str
    name: str | None
    errors: list[Problem] = field(default_factory=list)
    warnings: list[Problem] = field(default_factory=list)
    flow: Flow | None = None

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "name": self.name, "ok": self.ok,
                "errors": [p.to_dict() for p in self.errors], "warnings": [p.to_dict() for p in self.warnings]}


def check_document(doc: Document, *, expect_name: str | None = None, config: Any = None) -> FlowReport:
    name = doc.plain.get("name") if isinstance(doc.plain.get("name"), str) else None
    report = FlowReport(doc.file, name)
    report.errors = schema_problems(doc, "flow")
    # the meaning is checked in the same pass, on whatever the document still has readable;
    # where the schema already reported a problem at a path, it speaks for that path alone
    refused = {problem.path for problem in report.errors}
    for problem in semantic_problems(doc, expect_name=expect_name, config=config):
        if problem.path in refused and problem.severity != "warning":
            continue
        (report.warnings if problem.severity == "warning" else report.errors).append(problem)
    if not report.errors:
        report.flow = Flow.from_dict(doc.plain, source=doc.source, file=doc.file)
    return report


def check_file(path: str | Path, *, config: Any = None, label: str | None = None) -> FlowReport:
    path = Path(path)
    try:
        doc = read_file(path, label or str(path))
    except DocumentError as exc:
        return FlowReport(exc.problem.file, None, errors=[exc.problem])
    return check_document(doc, expect_name=path.stem, config=config)


def check_bytes(data: bytes, label: str, *, expect_name: str | None = None, config: Any = None,
                limit: int | None = MAX_FILE_BYTES) -> FlowReport:
    try:
        doc = parse_bytes(data, label, limit=limit)
    except DocumentError as exc:
        return FlowReport(label, None, errors=[exc.problem])
    return check_document(doc, expect_name=expect_name, config=config)


def _require(report: FlowReport) -> Flow:
    if report.flow is None:
        count = len(report.errors)
        raise FlowInvalid(f"{report.file}: {count} error{'s' if count != 1 else ''}; run `signoff validate` for "
                          f"details\n" + "\n".join(str(p) for p in report.errors), report.errors)
    return report.flow


def load_flow(path: str | Path, *, config: Any = None, label: str | None = None) -> Flow:
    """A validated Flow from a file, or FlowInvalid listing every problem."""
    return _require(check_file(path, config=config, label=label))


def load_flow_bytes(data: bytes, label: str, *, expect_name: str | None = None, config: Any = None,
                    limit: int | None = MAX_FILE_BYTES) -> Flow:
    """`limit=None` is for a run's own flow copy, which was admitted (and size-checked) when the run began."""
    return _require(check_bytes(data, label, expect_name=expect_name, config=config, limit=limit))


def expand_paths(paths: list[str | Path]) -> list[Path]:
    """Files as given, and every *.yaml / *.yml directly inside given directories."""
    found: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found.extend(sorted(p for p in path.iterdir() if p.suffix in FLOW_SUFFIXES and p.is_file()))
        elif path.exists():
            found.append(path)
        else:
            raise NotFound(f"{path}: no such file or directory")
    return found


def find_flow_file(flows_dir: Path, name_or_path: str) -> Path:
    """`refund-review` -> flows/refund-review.yaml; a path is taken as is."""
    candidate = Path(name_or_path)
    if candidate.suffix in FLOW_SUFFIXES and candidate.is_file():
        return candidate
    for suffix in FLOW_SUFFIXES:
        path = flows_dir / f"{name_or_path}{suffix}"
        if path.is_file():
            return path
    known = sorted(p.stem for p in flows_dir.glob("*.y*ml")) if flows_dir.is_dir() else []
    raise NotFound(f"no flow named {name_or_path!r} in {flows_dir}",
                   hint=f"flows here: {', '.join(known)}" if known else "create flows/<name>.yaml")
