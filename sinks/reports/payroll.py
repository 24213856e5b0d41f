"""BKD's monthly TPP control total per unit, from the hr.allowance.basis events in the store.

Each derived basis (an e-Kinerja assessment joined with the employee's master record) is one
line: NIP, unit, rank, rating, the amount the city's TPP policy gives, and the salary account
reference. Per unit: staff, staff payable (an amount and an account), the total in rupiah and
a hash total of the account numbers — the three figures a bank transfer batch is checked with.
Read-only; the newest basis of an employee for the month counts (a re-assessment replaces it).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from simpul.topology.model import Topology
from sinks.central_store import event_log

BASIS_TYPE = "hr.allowance.basis"
EMPLOYEE_TYPE = "hr.employee.updated"
_PERIOD = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")
#: The hash total keeps 12 digits, as transfer batch headers do.
HASH_MODULUS = 10**12


class PayrollError(ValueError):
    """The period or the topology does not allow a control total; the message says why."""


@dataclass(frozen=True, slots=True)
class PayLine:
    nip: str
    unit_code: str
    grade: str
    rating: str
    amount: int | None
    bank_account_ref: str | None

    @property
    def payable(self) -> bool:
        return self.amount is not None and bool(self.bank_account_ref)


@dataclass
class UnitTotal:
    unit_code: str
    staff: int = 0
    payable: int = 0
    amount: int = 0
    account_hash_total: int = 0
    no_account: int = 0
    no_amount: int = 0


@dataclass
class PayrollControl:
    period: str
    basis: str
    lines: list[PayLine] = field(default_factory=list)

    @property
    def units(self) -> list[UnitTotal]:
        totals: dict[str, UnitTotal] = {}
        for line in self.lines:
            unit = totals.setdefault(line.unit_code, UnitTotal(line.unit_code))
            unit.staff += 1
            unit.no_account += not line.bank_account_ref
            unit.no_amount += line.amount is None
            if line.payable:
                assert line.amount is not None and line.bank_account_ref is not None
                unit.payable += 1
                unit.amount += line.amount
                unit.account_hash_total = (
                    unit.account_hash_total + account_number(line.bank_account_ref)
                ) % HASH_MODULUS
        return [totals[code] for code in sorted(totals)]

    @property
    def total_amount(self) -> int:
        return sum(u.amount for u in self.units)


def rupiah(amount: int) -> str:
    """``8450000`` -> ``8.450.000`` (Indonesian thousands separator)."""
    return f"{amount:,}".replace(",", ".")


def account_number(reference: str) -> int:
    """The digits of the account number in a reference (``BPD53-0012345678`` -> 12345678)."""
    digits = re.sub(r"[^0-9]", "", reference.rsplit("-", 1)[-1])
    return int(digits) if digits else 0


def payroll_control(engine: Engine, topology: Topology, period: str) -> PayrollControl:
    if not _PERIOD.fullmatch(period):
        raise PayrollError(f"--period {period!r}: expected YYYY-MM, e.g. 2026-11")
    if topology.tpp is None:
        raise PayrollError(f"tpp: {topology.city}'s topology declares no TPP policy")
    policy = topology.tpp
    newest: dict[str, tuple[dt.datetime, dict[str, Any]]] = {}
    accounts: dict[str, tuple[dt.datetime, str]] = {}
    stmt = (
        select(event_log.c.type, event_log.c.key, event_log.c.event_time, event_log.c.payload)
        .where(event_log.c.type.in_([BASIS_TYPE, EMPLOYEE_TYPE]))
        .execution_options(yield_per=10_000)
    )
    with engine.connect() as conn:
        for type_name, key, when, payload in conn.execute(stmt):
            when = when if when.tzinfo else when.replace(tzinfo=dt.UTC)
            if type_name == BASIS_TYPE:
                if payload.get("period") == period and (
                    key not in newest or when >= newest[key][0]
                ):
                    newest[key] = (when, payload)
            elif (ref := payload.get("bank_account_ref")) and (
                key not in accounts or when >= accounts[key][0]
            ):
                # The newest record that has an account: BKN's register carries none.
                accounts[key] = (when, ref)
    report = PayrollControl(period, policy.basis)
    for nip in sorted(newest):
        basis = newest[nip][1]
        reference = basis.get("bank_account_ref") or (accounts.get(nip) or (None, None))[1]
        report.lines.append(
            PayLine(
                nip=nip,
                unit_code=str(basis.get("unit_code")),
                grade=str(basis.get("grade")),
                rating=str(basis.get("rating")),
                amount=policy.amount(str(basis.get("grade")), str(basis.get("rating"))),
                bank_account_ref=reference,
            )
        )
    return report
