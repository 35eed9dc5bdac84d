"""Actions: what a connector can do on the provider, each with a JSON schema for its params."""

from __future__ import annotations

import inspect
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from pydantic import BaseModel, TypeAdapter

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
_MARK = "__hub_action__"


@dataclass(frozen=True)
class Action:
    """A declared action of a connector.

    :param name: unique within the connector.
    :param params_model: pydantic model of the parameters (validated before the call).
    :param description: one line for the registry.
    :param method: the connector method implementing it.
    :param result_type: the method's return annotation, if any (for the result schema).
    """

    name: str
    params_model: type[BaseModel]
    description: str = ""
    method: str = ""
    result_type: Any = None

    def describe(self) -> dict[str, Any]:
        """Name, description, params schema and result schema."""
        result_schema = None
        if self.result_type not in (None, type(None), Any):
            result_schema = TypeAdapter(self.result_type).json_schema()
        return {
            "name": self.name,
            "description": self.description,
            "params_schema": self.params_model.model_json_schema(),
            "result_schema": result_schema,
        }


@dataclass(frozen=True)
class _Mark:
    name: str | None
    description: str | None


def action(name: str | None = None, *, description: str | None = None) -> Callable[[F], F]:
    """Declare an async connector method as an action.

    The method takes one parameter annotated with a pydantic model and returns a pydantic
    model or plain JSON-able data::

        @action(description="Create or update an opportunity by external id")
        async def upsert_opportunity(self, params: UpsertParams) -> UpsertResult: ...

    :param name: action name; defaults to the method name.
    :param description: defaults to the first line of the method's docstring.
    """

    def mark(func: F) -> F:
        is_async = inspect.iscoroutinefunction(func)  # not inline: mypy would narrow ``func``
        if not is_async:
            raise TypeError(f"action {func.__qualname__} must be an async method")
        setattr(func, _MARK, _Mark(name, description))
        return func

    return mark


def collect_actions(namespace: dict[str, Any], module_globals: dict[str, Any] | None = None) -> dict[str, Action]:
    """The ``Action``s declared by ``@action`` methods in a class namespace."""
    found: dict[str, Action] = {}
    for attribute, func in namespace.items():
        mark = getattr(func, _MARK, None)
        if not isinstance(mark, _Mark):
            continue
        hints = typing.get_type_hints(func, globalns=module_globals)
        params = [p for p in inspect.signature(func).parameters.values() if p.name != "self"]
        if len(params) != 1:
            raise TypeError(f"action {attribute} must take exactly one params argument")
        model = hints.get(params[0].name)
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            raise TypeError(f"action {attribute}: its params must be annotated with a pydantic model")
        doc = (inspect.getdoc(func) or "").strip().splitlines()
        name = mark.name or attribute
        found[name] = Action(
            name=name,
            params_model=model,
            description=mark.description or (doc[0] if doc else ""),
            method=attribute,
            result_type=hints.get("return"),
        )
    return found
