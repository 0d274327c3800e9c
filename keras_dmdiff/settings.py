"""Settings dataclasses from plain dicts (recipe steps, JSON): one rule for unknown keys.

`TrainConfig`, `SamplingOptions` and `BenchConfig` are built from recipe
steps and JSON through `from_fields`, so a misspelt setting is an error
naming it and the known ones, never silently ignored.
"""

import dataclasses


def from_fields(cls, values, what):
    """`cls(**values)`, refusing keys that are not fields of the dataclass `cls`.

    Args:
        cls: a dataclass.
        values: a mapping of field names to values.
        what: what the fields are, for the message ("training settings").

    Example:
        >>> @dataclasses.dataclass
        ... class Point:
        ...     x: int = 0
        >>> from_fields(Point, {"x": 2}, "point fields")
        Point(x=2)
        >>> from_fields(Point, {"y": 2}, "point fields")
        Traceback (most recent call last):
        ...
        ValueError: Unknown point fields ['y']; known: ['x'].
    """
    names = [field.name for field in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"Unknown {what} {unknown}; known: {names}.")
    return cls(**values)
