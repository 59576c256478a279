"""The ``attnkit`` click group.

Subcommands live in their own modules and are imported only when invoked, so
``attnkit --help`` and ``attnkit --version`` never import Numba or CUDA.
"""

from __future__ import annotations

import importlib

import click

from attnkit import __version__

# command name -> (module, attribute, one-line help shown by --help)
COMMANDS = {
    "analyze": ("attnkit_cli.analyze", "analyze",
                "The main job: statistics, rollout, flow, equivariance and correlations."),
    "attend": ("attnkit_cli.attend", "attend", "Compute attention on saved q/k/v tensors."),
    "paper": ("attnkit_cli.paper", "paper", "Regenerate the paper's figures and tables."),
    "info": ("attnkit_cli.info", "info", "Show what a saved attention dataset holds; validate it."),
    "stats": ("attnkit_cli.interpret", "stats", "Per-head statistics of an attention dataset."),
    "rollout": ("attnkit_cli.interpret", "rollout", "Attention rollout of an attention dataset."),
    "flow": ("attnkit_cli.interpret", "flow", "Attention flow (exact max-flow) of a dataset."),
    "correlate": ("attnkit_cli.correlate", "correlate",
                  "Correlate attention scores with leave-one-out impact, per layer."),
    "evaluate": ("attnkit_cli.evaluate", "evaluate",
                 "Faithfulness (AOPC, perturbation curves) and the randomisation check."),
    "equivariance": ("attnkit_cli.equivariance", "equivariance",
                     "Check which attention functions are permutation equivariant."),
    "compute": ("attnkit_cli.compute", "compute",
                "Run the built-in MiniLM on sentences and save the attention dataset."),
    "plot": ("attnkit_cli.plot", "plot",
             "Draw a figure (PNG/PDF/SVG) of a dataset, correlation table or benchmark results."),
    "ablate": ("attnkit_cli.ablate", "ablate",
               "Add leave-one-out ablation impacts to a MiniLM attention dataset."),
    "attribute": ("attnkit_cli.attribute", "attribute",
                  "Add gradient attributions (input x gradient, IG, grad rollout) to a dataset."),
    "import": ("attnkit_cli.importer", "import_",
               "Bring in attention saved from a Hugging Face model (output_attentions)."),
    "view": ("attnkit_cli.view", "view",
             "A self-contained HTML explorer of one sample: head view, model view, scores."),
    "datasets": ("attnkit_cli.datasets", "datasets", "List the shipped datasets and where they are."),
}


class LazyGroup(click.Group):
    """A group whose subcommands are imported on first use."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr, _ = COMMANDS[name]
        return getattr(importlib.import_module(module), attr)

    def format_commands(self, ctx, formatter):
        rows = [(name, COMMANDS[name][2]) for name in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="attnkit")
def cli():
    """attnkit: exact, fast attention and attention analysis.

    \b
    Example:
      attnkit analyze                  # the main job on the shipped MiniLM data
      attnkit attend planted_heads --causal --stats
    """


def main():  # pragma: no cover - console entry point alias
    cli(prog_name="attnkit")
