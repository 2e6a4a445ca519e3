"""This process's credentials, held in memory only.

Any process of the same user can read ``/proc/<pid>/environ`` of the supervisor, and that file is the
environment the process was *started* with: ``del os.environ[...]`` does not change it. So the
`autoresearch` entry point moves every credential out of its environment before anything else runs: it
re-executes itself without them and receives their values over a pipe (supervisor/cli/secret_handoff.py),
then keeps them here. The agents take their key from here and give it to their SDK client explicitly.

No I/O: the CLI reads the pipe and hands the values in; this module only keeps and answers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping

# The variable that names the pipe the secrets come over: it holds only a file-descriptor number.
SECRETS_FD_VARIABLE = "AUTORESEARCH_SECRETS_FD"


class Secrets:
    """Named credentials. Its repr names them and never shows a value."""

    __slots__ = ("_values",)

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self._values: dict[str, str] = dict(values or {})

    def get(self, name: str) -> str | None:
        return self._values.get(name)

    def update(self, values: Mapping[str, str]) -> None:
        self._values.update(values)

    def clear(self) -> None:
        self._values.clear()

    def names(self) -> list[str]:
        return sorted(self._values)

    def as_dict(self) -> dict[str, str]:
        """A copy of every name and value, to hand on to a child process over its own pipe."""
        return dict(self._values)

    def __contains__(self, name: object) -> bool:
        return name in self._values

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._values)

    def __repr__(self) -> str:
        return f"Secrets({', '.join(self.names())})"


_STORE = Secrets()


def store() -> Secrets:
    """The process's one store, filled by the CLI's entry point."""
    return _STORE


def lookup(name: str, environ: Mapping[str, str] | None = None) -> str | None:
    """A credential (or a provider setting that travels with them, such as ANTHROPIC_BASE_URL).

    The store first; then the environment (default ``os.environ``), for a process that was not started
    through the entry point: a test, a library caller, `main([...])` called in-process.
    """
    value = _STORE.get(name)
    if value is None:
        value = (os.environ if environ is None else environ).get(name)
    return value


def credential(name: str, environ: Mapping[str, str] | None = None) -> str:
    """:func:`lookup`, stripped, with "" for a name that is set nowhere."""
    return (lookup(name, environ) or "").strip()
