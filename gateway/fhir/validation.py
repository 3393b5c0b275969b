"""Validation of every resource the gateway writes, with fhir.resources' R4B models."""
from __future__ import annotations

from fhir.resources.R4B import get_fhir_model_class
from pydantic import ValidationError


class InvalidResource(ValueError):
    def __init__(self, res_type: str, problems: list[tuple[str, str]]):
        self.res_type = res_type
        self.problems = problems
        super().__init__("; ".join(f"{res_type}.{loc}: {msg}" for loc, msg in problems))


def validate(resource: dict) -> None:
    res_type = resource.get("resourceType")
    try:
        model = get_fhir_model_class(res_type)
    except (KeyError, ValueError, TypeError):
        raise InvalidResource(str(res_type), [("resourceType", f"unknown resource type {res_type!r}")]) from None
    try:
        model.model_validate(resource)
    except ValidationError as exc:
        problems = [(".".join(str(p) for p in err["loc"]) or "(root)", err["msg"]) for err in exc.errors()[:20]]
        raise InvalidResource(res_type, problems) from None
