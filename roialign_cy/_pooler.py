"""The base of the classes that hold an operator's parameters (RoIAlign, RoIPool, ...)."""

from typing import Any, ClassVar, Dict, Tuple


class Pooler:
    """An operator with its parameters fixed, checked once by the subclass's ``__init__``.

    A subclass lists its parameters in `_fields`, in its signature's order; from that list
    come the keyword arguments its calls pass to the functions (`_params`), its ``repr``
    and its equality. The parameters are plain attributes, so instances pickle as they are
    (to ship them to worker processes) and, being mutable, are not hashable.
    """

    _fields: ClassVar[Tuple[str, ...]] = ()

    def _params(self) -> Dict[str, Any]:
        """The arguments this instance passes to the functions, by keyword."""
        return {name: getattr(self, name) for name in self._fields}

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({fields})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and vars(other) == vars(self)

    __hash__ = None  # type: ignore[assignment]
