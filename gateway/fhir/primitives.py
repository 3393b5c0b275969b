"""FHIR's JSON of a repeated primitive: its values in a list where a null stands for an item that
has extensions only, the extensions in the list beside it (`"given": ["Jean", null]` with
`"_given": [null, {"extension": […]}]`). What reads the values reads them through `present`: a
null in a given name was a 500 at the write that indexed it."""


def present(values: list | None) -> list:
    """The values a repeated primitive gives, without the nulls of its items that have none."""
    return [value for value in values or [] if value is not None]
