"""Document metadata (string keys to string values) and the filters over it: equality, `in`, and the AND of
those, the subset of Haystack's and LlamaIndex's filter models that string metadata needs. A filter selects
passages before retrieval ranks them, so the top-k is cut from the passages that match."""
from dataclasses import dataclass

MAX_KEYS, MAX_KEY_CHARS, MAX_VALUE_CHARS = 64, 128, 1024
MAX_CONDITIONS, MAX_VALUES = 16, 256
OPERATORS = {"==": "equals", "in": "in"}


def check_metadata(metadata, where: str = "metadata") -> dict[str, str]:
    """The metadata as a dict of str to str; ValueError naming `where` and the key when it is not one."""
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise ValueError(f"{where}: must be an object of string keys to string values")
    if len(metadata) > MAX_KEYS:
        raise ValueError(f"{where}: {len(metadata)} keys, at most {MAX_KEYS}")
    for key, value in metadata.items():
        if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS:
            raise ValueError(f"{where}: key {str(key)[:40]!r} must be 1 to {MAX_KEY_CHARS} characters")
        if not isinstance(value, str) or len(value) > MAX_VALUE_CHARS:
            raise ValueError(f"{where}.{key}: must be a string of at most {MAX_VALUE_CHARS} characters")
    return dict(metadata)


@dataclass(frozen=True)
class Condition:
    key: str
    values: tuple[str, ...]   # the document's value of `key` is one of these (one: equality)


@dataclass(frozen=True)
class MetadataFilter:
    """Documents whose metadata meets every condition."""
    conditions: tuple[Condition, ...]

    @classmethod
    def of(cls, pairs: list[tuple[str, list[str]]], where: str = "filter") -> "MetadataFilter | None":
        """From (key, accepted values) pairs, checked; None when there are none (no filter)."""
        if not pairs:
            return None
        if len(pairs) > MAX_CONDITIONS:
            raise ValueError(f"{where}: {len(pairs)} conditions, at most {MAX_CONDITIONS}")
        conditions = []
        for n, (key, values) in enumerate(pairs):
            place = f"{where}.conditions[{n}]"
            if not isinstance(key, str) or not key.strip() or len(key) > MAX_KEY_CHARS:
                raise ValueError(f"{place}: the key (field) must be 1 to {MAX_KEY_CHARS} characters")
            if not values or len(values) > MAX_VALUES:
                raise ValueError(f"{place}: give 1 to {MAX_VALUES} values")
            if not all(isinstance(v, str) for v in values):
                raise ValueError(f"{place}: metadata values are strings")
            conditions.append(Condition(key, tuple(values)))
        return cls(tuple(conditions))

    @classmethod
    def from_json(cls, spec, where: str = "filter") -> "MetadataFilter | None":
        """From Haystack's filter syntax: a comparison `{"field": "meta.lang", "operator": "==" or "in",
        "value": ...}` or `{"operator": "AND", "conditions": [comparisons]}` ("meta." before a key is optional)."""
        if spec is None or spec == {}:
            return None
        if not isinstance(spec, dict):
            raise ValueError(f"{where}: must be an object")
        comparisons = [spec]
        if "conditions" in spec:
            if spec.get("operator", "AND") != "AND" or not isinstance(spec["conditions"], list):
                raise ValueError(f"{where}: only \"operator\": \"AND\" over a list of \"conditions\" is supported")
            comparisons = spec["conditions"]
        pairs = []
        for n, c in enumerate(comparisons):
            place = f"{where}.conditions[{n}]" if "conditions" in spec else where
            if not isinstance(c, dict) or set(c) != {"field", "operator", "value"}:
                raise ValueError(f"{place}: a comparison is {{\"field\", \"operator\", \"value\"}}")
            if c["operator"] not in OPERATORS:
                raise ValueError(f"{place}.operator: {c['operator']!r} is not supported; use == or in")
            if not isinstance(c["field"], str):
                raise ValueError(f"{place}.field: must be a string")
            value = c["value"]
            values = value if c["operator"] == "in" else [value]
            if not isinstance(values, list):
                raise ValueError(f"{place}.value: `in` takes a list of strings")
            pairs.append((c["field"].removeprefix("meta."), values))
        return cls.of(pairs, where)
