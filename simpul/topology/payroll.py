"""The TPP policy a city declares in its topology: the monthly amount per rank and the share of
it paid per performance rating (set each year by the mayor's regulation, Perwali)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, model_validator

RATINGS = ("ABOVE", "AS_EXPECTED", "BELOW")


class TppPolicy(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    #: Where the figures come from (e.g. "Perwali Kupang 12/2026"), shown on the control report.
    basis: Annotated[str, Field(min_length=3)]
    #: Monthly TPP in rupiah per rank (golongan/ruang), e.g. {"III/a": 2500000}.
    amount_by_grade: Annotated[dict[str, Annotated[int, Field(ge=0)]], Field(min_length=1)]
    #: Share of the amount paid per e-Kinerja rating, 0 to 1.
    share_by_rating: dict[str, Annotated[float, Field(ge=0, le=1)]]

    @model_validator(mode="after")
    def _every_rating(self) -> TppPolicy:
        if missing := [r for r in RATINGS if r not in self.share_by_rating]:
            raise ValueError(f"share_by_rating: missing {', '.join(missing)}")
        if unknown := sorted(set(self.share_by_rating) - set(RATINGS)):
            raise ValueError(f"share_by_rating: unknown rating {', '.join(unknown)}")
        return self

    def amount(self, grade: str, rating: str) -> int | None:
        """Rupiah due, or None when the rank (or rating) has no amount in the policy."""
        base, share = self.amount_by_grade.get(grade), self.share_by_rating.get(rating)
        return None if base is None or share is None else round(base * share)
