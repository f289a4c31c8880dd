"""Data errors and the validation policy (``strict`` raises, ``skip`` records and goes on).

Every problem names where it was found (``file:line`` or ``file:json.field``). Under ``strict`` the
first problem raises :class:`DataError` (a ``ValueError``, so the CLI prints it as one line) and
nothing is written; under ``skip`` the offending item (an image with its labels) is left out and the
problem is listed in the validation report, which :func:`datasets.prepare.prepare` prints and writes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

POLICIES: tuple[str, ...] = ("strict", "skip")


class DataError(ValueError):
    """Bad input data or a bad data option; the message names the file and line or field."""


class FileProblem(DataError):
    """A source file that cannot be read or parsed (:mod:`datasets.files`); ``where`` names the file
    (and line), ``message`` says why. Fatal when the file is the dataset's (a label JSON, a
    ``data.yaml``); a problem of one item (its image or label file) under ``--policy skip``."""

    def __init__(self, where: object, message: str) -> None:
        super().__init__(f"{where}: {message}")
        self.where = str(where)
        self.message = message


@dataclass(frozen=True)
class Issue:
    """One validation problem: where it is, what is wrong, and which item was skipped for it."""

    where: str
    message: str
    skipped: str = ""

    def __str__(self) -> str:
        suffix = f" (skipped {self.skipped})" if self.skipped else ""
        return f"{self.where}: {self.message}{suffix}"


@dataclass
class IssueLog:
    """Applies the validation policy to every problem the readers find."""

    policy: str = "strict"
    issues: list[Issue] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise DataError(f"policy {self.policy!r}: expected one of {', '.join(POLICIES)}")

    def report(self, where: str, message: str, skipped: str = "") -> None:
        """Raise under ``strict``; under ``skip`` record the problem (the caller skips the item)."""
        issue = Issue(str(where), message, str(skipped))
        if self.policy == "strict":
            raise DataError(f"{issue.where}: {issue.message}")
        self.issues.append(issue)

    def as_json(self) -> dict:
        """The validation report: policy, number of problems and each problem."""
        return {"policy": self.policy, "count": len(self.issues), "issues": [asdict(i) for i in self.issues]}
