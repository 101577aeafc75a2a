"""What a check reports: a finding (severity, evidence, fix), and the report of a whole check run."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field


@dataclass
class Finding:
    check: str
    severity: str  # "error" (the run will fail or be meaningless), "warning", "info"
    title: str
    evidence: str
    fix: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    ran: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # measurements that found nothing wrong

    def __iter__(self):
        return iter(self.findings)
