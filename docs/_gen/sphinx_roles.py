"""A griffe extension: the package's reStructuredText idioms, rendered as Markdown.

The docstrings of ``multivae`` are Google style, but their inline references are Sphinx roles
(``:func:`run_training```, ``:class:`~pathlib.Path```) and their literal blocks follow a
paragraph ending in ``::``. mkdocstrings reads docstrings as Markdown, where a role would show
as raw text. This extension rewrites every docstring of the loaded package once, when griffe
has loaded it:

* a role becomes an optional cross-reference, ``<autoref identifier=PATH optional>``, to the
  object the name resolves to from the docstring's own scope (its members, then its parents',
  then the base classes' members for a method or attribute); mkdocs-autorefs turns it into a
  link when the object is rendered somewhere in the site and into plain code otherwise (an
  object of another library, a private helper), without a warning;
* ``~a.b.c`` shows ``c``, as in Sphinx; any other name shows as written;
* a paragraph ending in ``::`` ends in ``:`` (``Example::`` -> ``Example:``; a lone ``::`` is
  dropped): the indented block after it is a code block in Markdown too.

mkdocs.yml loads it for the API pages (mkdocstrings' ``extensions``); the model pages'
generator (``gen_models.py``) calls :func:`markdown_docstring` on the same objects.
"""

from __future__ import annotations

import html
import re
from typing import Any

import griffe

ROLE = re.compile(
    r":(?:py:)?(?P<role>func|class|meth|attr|data|mod|obj|exc|const):`(?P<target>[^`]+)`"
)
"""A Sphinx role of the Python domain: ``:role:`target```."""

LITERAL_MARK = re.compile(r"(?m)^(?P<text>.*?)(?P<space>\s?)::[ \t]*$")
"""A line ending in ``::`` (the paragraph before a literal block)."""


def _code(text: str) -> str:
    return f"<code>{html.escape(text)}</code>"


def _member_path(obj: griffe.Object | griffe.Alias, name: str) -> str | None:
    """The path of ``name`` (dotted) below ``obj``, following aliases and base classes."""
    current: Any = obj
    for part in name.split("."):
        try:
            if current.is_alias:
                current = current.final_target
            if part in current.members:
                current = current.members[part]
            elif current.is_class and part in current.all_members:
                current = current.all_members[part]
            else:
                return None
        except (griffe.AliasResolutionError, griffe.CyclicAliasError, KeyError):
            return None
    try:
        return str(current.final_target.path if current.is_alias else current.path)
    except (griffe.AliasResolutionError, griffe.CyclicAliasError):
        return str(current.target_path)


def _enclosing_class(obj: griffe.Object) -> griffe.Object | None:
    current: griffe.Object | None = obj
    while current is not None and not current.is_class:
        current = current.parent
    return current


def resolve(obj: griffe.Object, name: str, root: griffe.Object) -> str | None:
    """The full path ``name`` means in the docstring of ``obj``; ``None`` when unknown.

    Args:
        obj: The object whose docstring holds the reference.
        name: The role's target without ``~``.
        root: The top-level package (absolute names start from it).
    """
    if name.startswith("."):
        # A relative module: one dot is the docstring's own package.
        module = obj.module
        base = module if module.is_package else module.parent
        stripped = name.lstrip(".")
        for _ in range(len(name) - len(stripped) - 1):
            base = base.parent if base is not None else None
        return _member_path(base, stripped) if base is not None else None
    first, _, rest = name.partition(".")
    if first == root.name:
        return _member_path(root, rest) if rest else str(root.path)
    # Walk the scopes outwards: each scope's members, and a class's inherited ones.
    scope: griffe.Object | None = obj
    while scope is not None:
        if first in scope.members or (scope.is_class and first in _safe_all_members(scope)):
            return _member_path(scope, name)
        scope = scope.parent
    cls = _enclosing_class(obj)
    if cls is not None and (path := _member_path(cls, name)) is not None:
        return path
    # A method named from its module's docstring: the one class of the module that has it.
    owners = [
        member
        for member in obj.module.members.values()
        if not member.is_alias and member.is_class and first in _safe_all_members(member)
    ]
    if len(owners) == 1:
        return _member_path(owners[0], name)
    # A name the docstring does not import: the one object of the package with that name.
    found = [o for o in _objects(root) if o.name == first]
    if len(found) == 1:
        return _member_path(found[0], rest) if rest else str(found[0].path)
    return None


def _safe_all_members(cls: griffe.Object) -> dict[str, Any]:
    try:
        return dict(cls.all_members)
    except (griffe.AliasResolutionError, griffe.CyclicAliasError, ValueError):
        return dict(cls.members)


def markdown_docstring(text: str, obj: griffe.Object, root: griffe.Object) -> str:
    """``text`` (a docstring of ``obj``) with its roles and ``::`` marks made Markdown."""

    def role(match: re.Match[str]) -> str:
        target = "".join(match["target"].split())  # a role may wrap across lines
        shown = target
        if target.startswith("~"):
            target = target[1:]
            shown = target.rsplit(".", 1)[-1]
        path = resolve(obj, target, root)
        if path is None:
            return _code(shown)
        return f'<autoref identifier="{html.escape(path)}" optional>{_code(shown)}</autoref>'

    def literal(match: re.Match[str]) -> str:
        text = match["text"]
        if not text.strip() or match["space"]:
            return text.rstrip()  # "::" alone, or "text ::": the mark disappears
        return f"{text}:"

    return LITERAL_MARK.sub(literal, ROLE.sub(role, text))


def _objects(obj: griffe.Object) -> Any:
    yield obj
    for member in obj.members.values():
        if member.is_alias:
            continue
        yield from _objects(member)


class SphinxRoles(griffe.Extension):
    """Rewrite the docstrings of a loaded package (see the module docstring)."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        """Every docstring of ``pkg``, once, when the package is loaded."""
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = markdown_docstring(obj.docstring.value, obj, pkg)
