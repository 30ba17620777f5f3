"""Collections: every document belongs to one (`default` unless named), and a question only ever retrieves and
attends to the passages of its own. A collection's name is its identity in the store, in chunk keys and in token
scopes."""
import re

DEFAULT_COLLECTION = "default"
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def collection_name(name: str | None) -> str:
    """The collection meant by `name` (empty or None: the default); ValueError when it is not a usable name."""
    if not name:
        return DEFAULT_COLLECTION
    if not NAME.fullmatch(name):
        raise ValueError(f"{name[:80]!r} is not a collection name: 1 to 64 letters, digits, '.', '_' or '-', "
                         f"starting with a letter or digit")
    return name
