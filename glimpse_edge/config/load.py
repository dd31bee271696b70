"""Loading: one TOML file plus ``config.d/*.toml`` drop-ins, merged and validated.

The agent runs unattended, so a bad configuration must be caught at start-up
with a message an operator can act on from the journal alone (see
:mod:`.errors`). Fleets are managed by copying files, so the layout is::

    /etc/glimpse-edge/config.toml          the main file (``DEFAULT_CONFIG_PATH``)
    /etc/glimpse-edge/config.d/*.toml      drop-ins, merged over it in file-name order

Merging is a deep merge of tables; scalars and arrays (including ``[[ice.servers]]``)
are replaced as a whole by the later file.  An empty string for an optional path key
(``token_file = ""``) means "not set", so that a drop-in can switch off a path the main
file set.  The merged document is validated into the structs of :mod:`.schema`, and
msgspec's errors are explained in the operator's terms, naming the file that set the key.

Relative paths (``auth.token_file``, ``auth.password_file``, ``server.ca_file``,
``video.path``, ``ice.servers[].credential_file``) are resolved against the directory
of the file that set them, so a drop-in and the secret it points to can be shipped
together.  ``~`` is not expanded (a systemd service has no meaningful home directory).
"""

import difflib
import os
import re
import tomllib
import types
import typing
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Annotated, Any, Final, Literal

import msgspec

from .errors import ConfigError, _InvalidKey
from .schema import _OPTIONAL_SECTIONS, _SECTIONS, Config, _Section, _show
from .secrets import check_secrets

__all__ = ["DEFAULT_CONFIG_PATH", "DROPIN_DIR_NAME", "load_checked", "load_config"]

DEFAULT_CONFIG_PATH: Final = Path("/etc/glimpse-edge/config.toml")
DROPIN_DIR_NAME: Final = "config.d"

_MAX_CONFIG_BYTES: Final = 1 << 20  # a config file bigger than this is a mistake

# Keys holding optional file paths: resolved per file, and "" means "not set".
_PATH_KEYS: Final = (
    ("server", "ca_file"),
    ("auth", "token_file"),
    ("auth", "password_file"),
    ("video", "path"),
    ("publish", "token_file"),
    ("publish", "ca_file"),
)
_ICE_PATH_KEY: Final = "credential_file"

_KeyPath = tuple[str | int, ...]


def _dec_hook(typ: type, obj: object) -> object:
    """Teach msgspec to build Path values from TOML strings."""
    if typ is Path:
        if isinstance(obj, str):
            if "\0" in obj:
                raise ValueError("path must not contain a NUL character")
            return Path(obj)
        raise TypeError(f"Expected a path string, got `{type(obj).__name__}`")
    raise NotImplementedError(typ)


def _read_toml(path: Path) -> dict[str, Any]:
    """Parse one file; every failure becomes a ConfigError naming the file (and line)."""
    try:
        with path.open("rb") as f:
            raw = f.read(_MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(path, None, "file does not exist") from None
    except IsADirectoryError:
        raise ConfigError(path, None, "is a directory, expected a TOML file") from None
    except OSError as exc:
        raise ConfigError(path, None, f"cannot read: {exc.strerror or exc}") from None
    except ValueError as exc:  # e.g. a NUL character in the path
        raise ConfigError(path, None, f"cannot read: {exc}") from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ConfigError(path, None, f"is larger than {_MAX_CONFIG_BYTES} bytes")
    try:
        text = raw.decode("utf-8-sig")  # tolerate a BOM from Windows editors
    except UnicodeDecodeError as exc:
        raise ConfigError(path, None, f"is not valid UTF-8 (byte offset {exc.start})") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = re.fullmatch(r"(?s)(.*) \(at line (\d+), column (\d+)\)", msg)
        if m:
            reason = f"invalid TOML at line {m[2]}, column {m[3]}: {m[1]}"
        else:
            m = re.fullmatch(r"(?s)(.*) \(at end of document\)", msg)
            line = text.count("\n") + 1
            reason = f"invalid TOML at line {line} (end of file): {m[1] if m else msg}"
        raise ConfigError(path, None, reason) from None


def _dropin_files(main: Path) -> list[Path]:
    """``config.d/*.toml`` next to the main file, sorted by name.

    Hidden files (editor swap/backup files such as ``.#10-x.toml``) and directories are
    skipped; anything else ending in ``.toml`` is loaded, so that a dangling symlink is
    reported rather than silently ignored.
    """
    directory = main.parent / DROPIN_DIR_NAME
    try:
        with os.scandir(directory) as entries:
            names = sorted(
                e.name
                for e in entries
                if e.name.endswith(".toml") and not e.name.startswith(".") and not e.is_dir()
            )
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise ConfigError(directory, None, "is not a directory") from None
    except OSError as exc:
        raise ConfigError(directory, None, f"cannot list: {exc.strerror or exc}") from None
    return [directory / n for n in names]


def _resolve_paths(doc: dict[str, Any], base: Path) -> None:
    """Make relative path values absolute against ``base`` (the file's directory)."""

    def fix(table: object, key: str) -> None:
        if isinstance(table, dict):
            value = table.get(key)
            if isinstance(value, str) and value:
                table[key] = str(base / value)

    for section, key in _PATH_KEYS:
        fix(doc.get(section), key)
    ice = doc.get("ice")
    servers = ice.get("servers") if isinstance(ice, dict) else None
    if isinstance(servers, list):
        for server in servers:
            fix(server, _ICE_PATH_KEY)


def _drop_empty_paths(doc: dict[str, Any]) -> None:
    """After merging, ``key = ""`` on an optional path means "unset": use the default."""

    def drop(table: object, key: str) -> None:
        if isinstance(table, dict) and table.get(key) == "":
            del table[key]

    for section, key in _PATH_KEYS:
        drop(doc.get(section), key)
    ice = doc.get("ice")
    servers = ice.get("servers") if isinstance(ice, dict) else None
    if isinstance(servers, list):
        for server in servers:
            drop(server, _ICE_PATH_KEY)


class _Origins:
    """Which file set each key path, so errors can name the file to edit.

    Leaves and arrays remember the *last* file that set them (the value in effect);
    tables remember the *first* file that created them (where a missing key belongs).
    """

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)  # load order; files[0] is the main file
        self._by_path: dict[_KeyPath, Path] = {}
        self._tables: set[_KeyPath] = set()

    def merge(self, base: dict[str, Any], overlay: dict[str, Any], source: Path) -> None:
        self._merge(base, overlay, (), source)

    def _merge(
        self, base: dict[str, Any], overlay: dict[str, Any], prefix: _KeyPath, source: Path
    ) -> None:
        for key, value in overlay.items():
            path = (*prefix, key)
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                self._merge(base[key], value, path, source)
                continue
            self._forget(path)
            base[key] = value
            self._record(path, value, source)

    def _forget(self, path: _KeyPath) -> None:
        n = len(path)
        for p in [p for p in self._by_path if p[:n] == path]:
            del self._by_path[p]
            self._tables.discard(p)

    def _record(self, path: _KeyPath, value: object, source: Path) -> None:
        self._by_path[path] = source
        if isinstance(value, dict):
            self._tables.add(path)
            for key, sub in value.items():
                self._record((*path, key), sub, source)

    def setter(self, path: _KeyPath) -> Path | None:
        """The file whose value is in effect at ``path`` (None if it is not set)."""
        for n in range(len(path), 0, -1):
            prefix = path[:n]
            if prefix in self._tables:
                return None
            if prefix in self._by_path:
                return self._by_path[prefix]
        return None

    def file_for(self, path: _KeyPath, related: Iterable[_KeyPath] = ()) -> Path:
        """The file to blame for a problem at ``path``.

        For a cross-field problem (``related`` keys involved too) that is the latest
        file that set any of the keys: that file introduced the conflict.
        """
        setters = [f for f in map(self.setter, (path, *related)) if f is not None]
        if setters:
            return max(setters, key=self.files.index)
        for n in range(len(path), 0, -1):
            found = self._by_path.get(path[:n])
            if found is not None:
                return found
        return self.files[0]


def _dotted(path: _KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _parse_msgspec_path(text: str) -> _KeyPath:
    parts: list[str | int] = []
    for m in re.finditer(r"\.([^.\[]+)|\[(\d+)\]", text):
        parts.append(m[1] if m[1] is not None else int(m[2]))
    return tuple(parts)


def _unwrap(tp: Any) -> Any:
    """Strip Annotated/Optional so we can see the struct, tuple or Literal inside."""
    while True:
        origin = typing.get_origin(tp)
        if origin is Annotated:
            tp = typing.get_args(tp)[0]
        elif origin in (typing.Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) != 1:
                return tp
            tp = args[0]
        else:
            return tp


def _type_at(path: _KeyPath) -> Any:
    """The declared type at ``path`` in Config (None if the path is not a known key)."""
    tp: Any = Config
    for part in path:
        tp = _unwrap(tp)
        if isinstance(part, int):
            if typing.get_origin(tp) is not tuple:
                return None
            tp = typing.get_args(tp)[0]
        elif isinstance(tp, type) and issubclass(tp, msgspec.Struct):
            hints = {f.name: f.type for f in msgspec.structs.fields(tp)}
            if part not in hints:
                return None
            tp = hints[part]
        else:
            return None
    return _unwrap(tp)


def _value_at(data: object, path: _KeyPath) -> object:
    for part in path:
        # Two branches (not one `or`) so mypy can narrow the index type in each.
        if isinstance(part, int) and isinstance(data, list) and part < len(data):  # noqa: SIM114
            data = data[part]
        elif isinstance(part, str) and isinstance(data, dict) and part in data:
            data = data[part]
        else:
            return None
    return data


_FRIENDLY_TYPES: Final = {
    "float": "a number",
    "int": "an integer",
    "str": "a string",
    "bool": "true or false",
    "object": "a table",
    "array": "an array",
    "datetime": "a date-time",
    "date": "a date",
    "time": "a time",
    "Path": "a path string",
}


def _friendly(text: str) -> str:
    return re.sub(r"`(\w+)`", lambda m: _FRIENDLY_TYPES.get(m[1], m[1]), text)


def _explain(
    exc: msgspec.ValidationError, prefix: _KeyPath, data: object, origins: _Origins
) -> tuple[_KeyPath, _KeyPath, ConfigError]:
    """Map msgspec's "REASON - at `$.a.b`" onto (msgspec path, key path, FILE: KEY: REASON)."""
    text = str(exc)
    m = re.fullmatch(r"(?s)(.*?)(?: - at `\$(.*)`)?", text)
    assert m is not None  # the pattern matches any string
    raw_reason, at = m[1], _parse_msgspec_path(m[2] or "")
    where: _KeyPath = (*prefix, *at)
    key = where
    cause = exc.__cause__
    related: list[_KeyPath] = []
    if isinstance(cause, _InvalidKey):
        key = (*where, *_parse_msgspec_path("." + cause.key)) if cause.key else where
        related = [(*where, *_parse_msgspec_path("." + r)) for r in cause.related]
        reason = cause.reason
    elif um := re.fullmatch(r"Object contains unknown field `(.*)`", raw_reason):
        key = (*where, um[1])
        reason = "unknown key"
        parent = _type_at(where)
        if isinstance(parent, type) and issubclass(parent, msgspec.Struct):
            valid = [f.name for f in msgspec.structs.fields(parent) if f.name != "sources"]
            close = difflib.get_close_matches(um[1], valid, n=1)
            reason += (
                f"; did you mean {close[0]}?" if close else f"; valid keys: {', '.join(valid)}"
            )
    elif mm := re.fullmatch(r"Object missing required field `(.*)`", raw_reason):
        key = (*where, mm[1])
        reason = "is required but not set"
    elif em := re.fullmatch(r"Invalid enum value (.*)", raw_reason):
        tp = _type_at(where)
        choices = typing.get_args(tp) if typing.get_origin(tp) is Literal else ()
        value = _value_at(data, at)
        reason = f"invalid value {_show(value) if value is not None else em[1]}"
        if choices:
            reason += "; expected one of: " + ", ".join(_show(c) for c in choices)
    elif isinstance(cause, (ValueError, TypeError)):
        reason = _friendly(str(cause))
        reason = reason[:1].lower() + reason[1:]
    else:  # a type or range error: say what was expected and show the value given
        value = _value_at(data, at)
        reason = raw_reason[:1].lower() + raw_reason[1:]
        if isinstance(value, (str, int, float)):
            reason = re.sub(r", got `\w+`$", "", reason) + f", got {_show(value)}"
        reason = _friendly(reason)
    return where, key, ConfigError(origins.file_for(key, related), _dotted(key), reason)


def _validate_section(
    name: str, tp: type[_Section], value: object, origins: _Origins
) -> list[ConfigError]:
    """Validate one table and report as many of its problems as can be found at once.

    msgspec stops at the first error, so after each error in a field that has a default
    we drop that field and try again, until the table validates or a cross-field check
    (``__post_init__``) fails; those run last and stop the search.
    """
    errors: list[ConfigError] = []
    data = dict(value) if isinstance(value, dict) else value
    required = {f.name for f in msgspec.structs.fields(tp) if f.required}
    for _ in range((len(data) if isinstance(data, dict) else 0) + 2):
        try:
            msgspec.convert(data, tp, dec_hook=_dec_hook)
            return errors
        except msgspec.ValidationError as exc:
            where, key, err = _explain(exc, (name,), data, origins)
            is_check = len(where) == 1 and isinstance(exc.__cause__, _InvalidKey)
        field = key[1] if len(key) > 1 else None
        if is_check:
            # A cross-field check sees defaults in place of the fields dropped so far;
            # trust it only if it complains about a field the user actually set.
            if not errors or (isinstance(data, dict) and field in data):
                errors.append(err)
            return errors
        errors.append(err)
        if field is None or field in required or not isinstance(data, dict) or field not in data:
            return errors
        del data[field]
    return errors


def _unknown_sections(data: dict[str, Any], origins: _Origins) -> list[ConfigError]:
    errors = []
    for key in data:
        if key not in _SECTIONS:
            close = difflib.get_close_matches(key, list(_SECTIONS), n=1)
            hint = f"; did you mean [{close[0]}]?" if close else f"; valid: {', '.join(_SECTIONS)}"
            errors.append(ConfigError(origins.file_for((key,)), key, "unknown table" + hint))
    return errors


def _absent_allowed(merged: dict[str, Any]) -> frozenset[str]:
    """The tables that may be left out of this document.

    ``[publish]`` always; the Glimpse room's three (``[server]``, ``[auth]``,
    ``[room]``) only all together and with ``[publish]`` set (a device that
    only publishes); with one of them there, the others are required as ever.
    """
    room = {"server", "auth", "room"}
    if "publish" in merged and not room & merged.keys():
        return _OPTIONAL_SECTIONS
    return _OPTIONAL_SECTIONS - room


def load_config(path: str | os.PathLike[str]) -> Config:
    """Load, merge and validate the main file and its ``config.d/*.toml`` drop-ins.

    Raises ConfigError (and nothing else) for every way this can fail, listing all
    problems found across all files so an operator can fix them in one go.
    """
    try:
        return _load(Path(path))
    except RecursionError:  # absurdly deep nesting; keep the "only ConfigError" promise
        raise ConfigError(Path(path), None, "is nested too deeply") from None


def _load(path: Path) -> Config:
    main = path.absolute()  # keep symlinks: drop-ins live next to the named path
    files = [main, *_dropin_files(main)]

    docs: list[tuple[Path, dict[str, Any]]] = []
    read_errors: list[ConfigError] = []
    for file in files:
        try:
            doc = _read_toml(file)
        except ConfigError as exc:
            read_errors.append(exc)
            continue
        _resolve_paths(doc, file.parent)
        docs.append((file, doc))
    if read_errors:
        raise ConfigError.group(read_errors)

    origins = _Origins(files)
    merged: dict[str, Any] = {}
    for file, doc in docs:
        origins.merge(merged, doc, file)
    _drop_empty_paths(merged)

    errors = _unknown_sections(merged, origins)
    for name, tp in _SECTIONS.items():
        if name not in merged and name in _absent_allowed(merged):
            continue  # None in Config: no room (a device that only publishes), no publishing
        errors += _validate_section(name, tp, merged.get(name, {}), origins)
    if not errors:
        full = {**merged, "sources": [str(f) for f in files]}
        try:
            return msgspec.convert(full, Config, dec_hook=_dec_hook)
        except msgspec.ValidationError as exc:  # cross-table checks in Config.__post_init__
            errors.append(_explain(exc, (), full, origins)[2])
    errors.sort(key=lambda e: files.index(e.file) if e.file in files else len(files))
    raise ConfigError.group(errors)


def load_checked(path: str | os.PathLike[str]) -> Config:
    """Load and validate a configuration, secrets included (raises ConfigError).

    What ``glimpse-edge run`` and a reload (SIGHUP) accept, and what
    ``check-config`` vouches for; it lives here, not in the agent, so that
    checking a file does not import the agent's WebRTC stack.
    """
    config = load_config(path)
    check_secrets(config)
    return config
