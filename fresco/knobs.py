"""One declaration per knob: `knob()` makes a dataclass field whose metadata says how users set it (CLI flag, YAML
key, help, value type, choices, accepted range, UI group, whether it enters a render's fingerprint), and the helpers
that read that metadata back. `FrescoSettings` (fresco.settings), `PatchParams` (fresco.patch_params) and
`RenderConfig`'s own keys (fresco.config) are declared with it; the `fresco render` flags, the YAML keys and their
checks, the web UI's widgets, the fingerprint's key set and the options table in docs/options.md are all derived
from it. Pure Python, no third-party import."""
from __future__ import annotations

import copy
import dataclasses
import math
import numbers
import reprlib
import typing
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Union


@dataclass(frozen=True)
class Range:
    """The accepted values of a numeric knob: lo <= v <= hi (None: unbounded); lo itself excluded when lo_open."""
    lo: Optional[float] = None
    hi: Optional[float] = None
    lo_open: bool = False

    def __contains__(self, v: float) -> bool:
        if self.lo is not None and (v < self.lo or (self.lo_open and v == self.lo)):
            return False
        return self.hi is None or v <= self.hi

    def __str__(self) -> str:
        """'>= 1', '> 0', 'in [0, 51]', 'in (0, 1]'."""
        if self.hi is None:
            return f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        if self.lo is None:
            return f"<= {_num(self.hi)}"
        return f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}]"


_SHORT = reprlib.Repr()
_SHORT.maxlevel, _SHORT.maxlist, _SHORT.maxtuple, _SHORT.maxdict, _SHORT.maxstring, _SHORT.maxother = 2, 6, 6, 6, 60, 60


def shown(v: object) -> str:
    """repr(v) for an error message, shortened (reprlib: a few items per level, long strings cut): a value built
    from YAML aliases can expand to gigabytes, and the message must stay one line."""
    return _SHORT.repr(v)

def _num(v: float) -> str:
    return str(int(v)) if v == int(v) else f"{v:g}"


def knob(default: Any, help: str, *, flag: Optional[str] = None, key: Optional[str] = None,
         type: Optional[type] = None, choices: Optional[Sequence] = None, cli: bool = True,
         range: Union[Range, tuple, None] = None, group: Optional[str] = None, fingerprint: bool = True,
         flag_aliases: Sequence[str] = (), no_flag: Optional[str] = None, key_aliases: Sequence[str] = (),
         repeat: bool = False, cli_any: bool = False) -> Any:
    """A dataclass field whose metadata says how users set it.

    help: one line for `fresco render --help`, the web UI and docs/options.md; flag: the CLI flag (default
    `--<name-with-dashes>`; a boolean also gets `no_flag`, default `--no-<flag>`); flag_aliases: more spellings of
    the flag; key: the YAML key (default the field name); key_aliases: more YAML keys accepted for it; type: the
    value type when the default is None or a sequence (then each item's type); choices: the accepted values;
    range: the accepted interval of a number (a `Range`, or (lo, hi) inclusive with None for unbounded); every
    float knob must also be finite; group: the web UI's group (default "More"); fingerprint: False when the value
    does not change a render's keyframes (output names, the device, the propagation, ...), so a render of another
    value resumes the same folder; cli: False keeps the knob out of the CLI and the web UI (still a YAML key and a
    keyword); repeat: a list knob whose CLI flag is given once per item (`--lora A --lora B`); cli_any: the CLI flag
    takes any text, not only `choices` (the CLI routes other values elsewhere: `--controlnet hed:0.7,depth:0.5`).
    A mutable default (dict, list) becomes a default factory; a tuple stays a tuple."""
    if isinstance(range, tuple):
        range = Range(*range)
    meta = dict(help=help, flag=flag, key=key, type=type, choices=tuple(choices) if choices else None, cli=cli,
                range=range, group=group, fingerprint=fingerprint, flag_aliases=tuple(flag_aliases),
                no_flag=no_flag, key_aliases=tuple(key_aliases), repeat=repeat, cli_any=cli_any)
    if isinstance(default, (dict, list)):
        return dataclasses.field(default_factory=lambda: copy.copy(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def is_knob(f: dataclasses.Field) -> bool:
    """Whether `f` was declared with `knob()`."""
    return "help" in f.metadata


def default_of(f: dataclasses.Field) -> Any:
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default


def yaml_key(f: dataclasses.Field) -> str:
    """The YAML key of a knob."""
    return f.metadata.get("key") or f.name


def cli_flag(f: dataclasses.Field) -> str:
    """The CLI flag of a knob."""
    return f.metadata.get("flag") or "--" + f.name.replace("_", "-")


def no_flag(f: dataclasses.Field) -> str:
    """The flag that sets a boolean knob to False."""
    return f.metadata.get("no_flag") or "--no-" + cli_flag(f)[2:]


def value_type(f: dataclasses.Field, hint: Any = None) -> type:
    """The scalar type of a knob's values: metadata `type`, else from the annotation `hint` (Optional[X] -> X,
    tuple[X, ...] -> X; a union of several types -> str, the CLI's text form), else the default's type."""
    if f.metadata.get("type") is not None:
        return f.metadata["type"]
    if hint is not None:
        args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is Union \
            else [hint]
        if len(args) == 1:
            base = typing.get_origin(args[0]) or args[0]
            if base in (tuple, list):
                items = [a for a in typing.get_args(args[0]) if a is not Ellipsis]
                return items[0] if items else int
            if base in (bool, int, float, str, dict):
                return base
        return str
    return bool if isinstance(f.default, bool) else (type(f.default) if f.default is not None else str)


def is_sequence(hint: Any) -> bool:
    """Whether a knob's annotation is a tuple/list of values (Optional or not): a list in YAML, nargs='+' on the
    CLI, comma-separated in the web UI."""
    args = [a for a in typing.get_args(hint) if a is not type(None)] if typing.get_origin(hint) is Union else [hint]
    return len(args) == 1 and (typing.get_origin(args[0]) or args[0]) in (tuple, list)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


KIND_NAMES = {bool: "a boolean (true/false)", int: "an integer", float: "a number", str: "a string",
              dict: "a mapping"}


def is_kind(v: Any, kind: type) -> bool:
    """Whether `v` is a value of a knob of type `kind`. A bool (numpy's too: a 0-d value of a boolean dtype) is only a
    bool, never an integer or a number, though bool subclasses int; any integral value (numpy's too) is an integer,
    and any real one a number."""
    if kind is bool:
        return isinstance(v, bool) or (getattr(v, "ndim", None) == 0 and getattr(getattr(v, "dtype", None), "kind",
                                                                                 None) == "b")
    if kind is int:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool)
    if kind is float:
        return _is_number(v)
    return isinstance(v, kind)


def check_kind(key: str, v: Any, kinds: Sequence[type], nullable: bool = False, exc: type = ValueError) -> None:
    """Raises `exc` with a one-line message naming `key` and what it accepts unless `v` is of one of `kinds` (by
    `is_kind`), or None where `nullable`. The one type check of every knob's value: fresco.config,
    fresco.settings, fresco.patch_params."""
    if v is None and nullable or v is not None and any(is_kind(v, t) for t in kinds):
        return
    what = " or ".join(KIND_NAMES.get(t, t.__name__) for t in kinds) + (" or null" if nullable else "")
    raise exc(f"{key}: expected {what}, got {shown(v)}")


def check_value(key: str, f: dataclasses.Field, v: Any) -> None:
    """The checks every front end gets from the metadata: a float knob's value is finite, a number is within its
    range, a value is one of the choices. Raises ValueError naming `key` and what is accepted."""
    if v is None or not _is_number(v) and f.metadata.get("choices") is None:
        return
    r: Optional[Range] = f.metadata.get("range")
    if _is_number(v):
        if not math.isfinite(v):
            raise ValueError(f"{key}: must be a finite number{f' {r}' if r else ''}, got {shown(v)}")
        if r is not None and v not in r:
            raise ValueError(f"{key}: must be {r}, got {shown(v)}")
    choices = f.metadata.get("choices")
    if choices is not None and v not in choices:
        raise ValueError(f"{key}: one of {choices}, got {shown(v)}")
