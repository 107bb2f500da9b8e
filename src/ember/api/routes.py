"""The app's routes as one flat list (FastAPI keeps included routers nested), for checks that must see them all."""

from starlette.routing import Match
from starlette.types import Scope


def flat_routes(routes) -> list:
    """Every route of an app, through included routers."""
    found = []
    for route in routes:
        inner = getattr(route, "original_router", None)
        found.extend(flat_routes(inner.routes) if inner is not None else [route])
    return found


def allowed_methods(routes, scope: Scope) -> list[str]:
    """Every method some route answers at this path: the Allow header of a 405, whichever route matched first."""
    methods: set[str] = set()
    for route in flat_routes(routes):
        match, _ = route.matches(scope)
        if match in (Match.FULL, Match.PARTIAL):
            methods |= set(getattr(route, "methods", None) or ())
    return sorted(methods)
