"""Quantization method flags generated from the method dataclasses, shared by ``quantize`` and ``lm quantize``.

Every field of every registered method (:func:`losslab.quant.methods.method_options`, ``bits`` excepted) is one
flag with the field's name (``group_size`` → ``--group-size``; booleans ``--act-order/--no-act-order``;
``--incoherence none`` clears a nullable option). The flags are added when the command is first parsed or its help
is shown, so ``losslab --help`` does not import torch::

    @click.command(cls=MethodOptionsCommand)
    def quantize(**opts): methods = build_methods(names, parse_bits(opts["bits"]), given_method_options(opts))

Values are checked once, by the dataclasses (``GPTQ(grid="nope")`` raises :class:`losslab.errors.ConfigError`).
``--bits`` is checked earlier, while the arguments are parsed and before the flags are generated (which imports
torch), against :data:`losslab.quant.bits.BITS_RANGE`, the range the dataclasses check. Output paths are checked
before any work by :func:`check_output`.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import click

from losslab.cli.options import LosslabCommand, command_key, rename_deprecated
from losslab.errors import ConfigError
from losslab.io import check_output

__all__ = [
    "LmQuantizeCommand",
    "MethodOptionsCommand",
    "QuantizeCommand",
    "check_output",
    "given_method_options",
    "method_click_options",
]


def method_click_options(methods: Collection[str] | None = None) -> list[click.Option]:
    """One click option per method option that applies to one of ``methods`` (every method when None), its help
    naming those methods and their defaults (a ``None`` default shown as ``none``, the value that means it)."""
    from losslab.quant.methods import method_options

    params: list[click.Option] = []
    for option in method_options():
        applies = [m for m in option.methods if methods is None or m in methods]
        if not applies:  # a method the command does not offer: the flag could only ever be refused
            continue
        defaults = {m: v for m, v in dict(option.defaults).items() if m in applies}
        shown = sorted({"none" if v is None else repr(v) for v in defaults.values()})
        help_text = f"{option.help} [{', '.join(applies)}; default {' / '.join(shown)}]"
        if option.is_bool:
            decl = f"{option.flag}/--no-{option.flag[2:]}"
            params.append(click.Option([decl, option.name], default=None, help=help_text))
        else:
            metavar = "|".join(k.__name__.upper() for k in option.kinds) + ("|none" if option.nullable else "")
            params.append(click.Option([option.flag, option.name], default=None, metavar=metavar, help=help_text))
    return params


class MethodOptionsCommand(LosslabCommand):
    """A :class:`LosslabCommand` whose method-option flags are generated on first use.

    ``deprecated_key`` names the command's entry in ``DEPRECATED_FLAGS`` (``"lm quantize"``), so old spellings
    work also when the command is invoked through its group alone (``CliRunner().invoke(lm, ...)``). A bad
    ``--bits`` is a usage error (exit status 2) raised before the method flags, and so torch, are loaded.
    """

    _method_params_added = False
    _declared_count = 0
    deprecated_key: str | None = None

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        args = rename_deprecated(self.deprecated_key or command_key(ctx), args)
        self._check_bits_first(ctx, args)
        return click.Command.parse_args(self, ctx, args)

    def get_params(self, ctx: click.Context) -> list[click.Parameter]:
        if not self._method_params_added:
            self._declared_count = len(self.params)
            offered = next(
                (p.type.choices for p in self.params if "--method" in p.opts and hasattr(p.type, "choices")), None
            )
            self.params.extend(method_click_options(offered))
            self._method_params_added = True
        return super().get_params(ctx)

    def declared_params(self) -> list[click.Parameter]:
        """The parameters written on the command (without the generated method flags; loading them needs torch)."""
        return self.params[: self._declared_count] if self._method_params_added else list(self.params)

    def collect_usage_pieces(self, ctx: click.Context) -> list[str]:
        # the generated flags are options, which add nothing to the usage line: a usage error needs no torch
        pieces = [self.options_metavar] if self.options_metavar else []
        for param in self.declared_params():
            pieces.extend(param.get_usage_pieces(ctx))
        return pieces

    def _check_bits_first(self, ctx: click.Context, args: list[str]) -> None:
        """Raise :class:`click.UsageError` for a bad ``--bits`` or ``--override`` width in ``args`` (checked by
        :func:`parse_bits`, :func:`parse_override`).

        ``args`` is read by click's parser with the declared options only, so each token means what it means in
        the full parse; the generated method flags are skipped as unknown. With ``--help`` nothing is checked.
        """
        from losslab.quant.bits import parse_bits, parse_override

        declared = self.declared_params()
        if not any(p.name == "bits" for p in declared) or any(a in ctx.help_option_names for a in args):
            return
        probe = click.Command(self.name, params=declared, add_help_option=False)
        probe_ctx = click.Context(probe, info_name=ctx.info_name, ignore_unknown_options=True, allow_extra_args=True)
        opts, _, _ = probe.make_parser(probe_ctx).parse_args(args=list(args))
        given = opts.get("bits")
        try:
            if isinstance(given, str | list | tuple):  # not given: the default applies
                parse_bits(given)
            for text in opts.get("override") or ():
                parse_override(text)
        except ConfigError as err:
            raise click.UsageError(str(err), ctx) from None


def given_method_options(opts: dict[str, Any]) -> dict[str, Any]:
    """The method options the user typed, parsed to their field types (``"none"`` → None where allowed)."""
    from losslab.quant.methods import method_options

    given: dict[str, Any] = {}
    for option in method_options():
        value = opts.get(option.name)
        if value is None:
            continue
        given[option.name] = value if option.is_bool else option.parse(value)
    return given


class QuantizeCommand(MethodOptionsCommand):
    deprecated_key = "quantize"


class LmQuantizeCommand(MethodOptionsCommand):
    deprecated_key = "lm quantize"
