"""TokenScopes: which bearer tokens the server accepts and which collections each may use. `--token` covers every
collection; a token file (JSON, read at start) maps more tokens to lists of collections, "*" meaning all:

    {"tokens": {"3f9c...": ["alpha"], "a81e...": ["beta", "gamma"], "77d0...": ["*"]}}

Tokens are compared in constant time, all of them each call."""
import hmac
import json
from pathlib import Path

from .collection import collection_name

ALL = "*"


class TokenScopes:
    def __init__(self, scopes: dict[str, frozenset[str]]):
        self.scopes = dict(scopes)

    def with_token(self, token: str) -> "TokenScopes":
        """These tokens and `token`, which covers every collection."""
        return TokenScopes({**self.scopes, token: frozenset([ALL])})

    @classmethod
    def of(cls, token: str | None = None, token_file: Path | str | None = None) -> "TokenScopes | None":
        """The scopes of `token` (every collection) and of the tokens of `token_file`; None when neither is given
        (no token required). ValueError naming the file and the entry when the file is not usable."""
        scopes = {token: frozenset([ALL])} if token else {}
        if token_file:
            scopes.update(read_token_file(Path(token_file)))
        return cls(scopes) if scopes else None

    def collections(self, authorization: str | None) -> frozenset[str] | None:
        """The collections of the token in an `authorization: Bearer <token>` value (the scheme in any case, RFC
        7235); None when it is no token of ours."""
        scheme, _, credentials = (authorization or "").strip().partition(" ")
        given = credentials.strip().encode() if scheme.lower() == "bearer" else b""
        found = None
        for token, collections in self.scopes.items():  # no early exit: the time does not tell which one matched
            if hmac.compare_digest(given, token.encode()):
                found = collections
        return found

    def allows(self, authorization: str | None, collection: str) -> bool:
        collections = self.collections(authorization)
        return collections is not None and (ALL in collections or collection in collections)


def authorization_of(metadata) -> str:
    """The one `authorization` value of a call's metadata or an HTTP request's headers ((key, value) pairs); empty
    when there is none or more than one, so that a repeated header is refused whichever of them holds the token."""
    given = [value for key, value in metadata or () if key.lower() == "authorization"]
    return given[0] if len(given) == 1 and isinstance(given[0], str) else ""


def read_token_file(path: Path) -> dict[str, frozenset[str]]:
    try:
        spec = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"token file {path}: cannot read it: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"token file {path}: not JSON: {exc.msg} (line {exc.lineno})") from None
    tokens = spec.get("tokens") if isinstance(spec, dict) else None
    if not isinstance(tokens, dict) or not tokens:
        raise ValueError(f"token file {path}: expected {{\"tokens\": {{\"TOKEN\": [\"collection\", ...]}}}}")
    scopes = {}
    for n, (token, collections) in enumerate(tokens.items()):
        if len(token) < 16 or any(c.isspace() for c in token):
            raise ValueError(f"token file {path}: token {n + 1} is shorter than 16 characters or holds spaces")
        if not isinstance(collections, list) or not collections or not all(isinstance(c, str) for c in collections):
            raise ValueError(f"token file {path}: token {n + 1} must map to a list of collection names")
        try:
            scopes[token] = frozenset(c if c == ALL else collection_name(c) for c in collections)
        except ValueError as exc:
            raise ValueError(f"token file {path}: token {n + 1}: {exc}") from None
    return scopes
