"""The `edgeclip` command: a thin shell over library calls. One module per command, imported when it runs."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

import click

# command name -> "module:attribute"; modules load lazily so `edgeclip --help` stays fast and torch-free.
COMMANDS: dict[str, str] = {
    "export": "edgeclip.cli.export_cmd:export",
    "embed": "edgeclip.cli.embed_cmd:embed",
    "classify": "edgeclip.cli.classify_cmd:classify",
    "info": "edgeclip.cli.info_cmd:info",
    "train": "edgeclip.cli.train_cmd:train",
    "demo": "edgeclip.cli.demo_cmd:demo",
    "bench": "edgeclip.cli.bench_cmd:bench",
    "quantize": "edgeclip.cli.quantize_cmd:quantize",
    "index": "edgeclip.cli.index_cmd:index",
    "search": "edgeclip.cli.search_cmd:search",
    "caption": "edgeclip.cli.caption_cmd:caption",
    "triton": "edgeclip.cli.triton_cmd:triton",
    "build": "edgeclip.cli.build_cmd:build",
    "doctor": "edgeclip.cli.doctor_cmd:doctor",
    "stream": "edgeclip.cli.stream_cmd:stream",
}


def _module_exists(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(name for name, target in COMMANDS.items() if _module_exists(target.split(":")[0]))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        command: Any = getattr(importlib.import_module(module_name), attr)
        return command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="edgeclip")
def main() -> None:
    """Run CLIP models on the edge with the answers PyTorch gives."""
