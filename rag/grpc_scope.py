"""The collection a gRPC call names, checked against its token's scope (PERMISSION_DENIED before anything of the
collection is looked at, so a refusal tells nothing of what it holds), and the metadata filter it gives."""
import grpc

from .collection import collection_name
from .filters import MetadataFilter
from .grpc_checks import invalid
from .token_scopes import ALL, TokenScopes, authorization_of


def authorization(context) -> str:
    return authorization_of(context.invocation_metadata())


def collection_of(context, tokens: TokenScopes | None, name: str) -> str:
    """The collection named (empty: the default); aborts with INVALID_ARGUMENT on a bad name, PERMISSION_DENIED
    when the call's token does not cover it."""
    try:
        collection = collection_name(name)
    except ValueError as exc:
        invalid(context, "collection", str(exc))
    if tokens is not None and not tokens.allows(authorization(context), collection):
        context.abort(grpc.StatusCode.PERMISSION_DENIED,
                      f"collection: the token does not cover collection {collection!r}")
    return collection


def visible_collections(context, tokens: TokenScopes | None) -> frozenset[str] | None:
    """The collections the call's token covers; None when it covers all."""
    collections = tokens.collections(authorization(context)) if tokens is not None else None
    return None if collections is None or ALL in collections else collections


def filter_of(context, request) -> MetadataFilter | None:
    """The request's `filter` as a MetadataFilter (None when it has no conditions); aborts naming a bad one."""
    try:
        return MetadataFilter.of([(c.key, list(c.values)) for c in request.filter.conditions])
    except ValueError as exc:  # the message starts with the field: filter.conditions[n]
        context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
