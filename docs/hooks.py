"""MkDocs hooks (see ``hooks:`` in mkdocs.yml): what the site build adds to MkDocs.

- The notebook runs in the Python that runs MkDocs (a kernel spec written for this build
  comes first on ``JUPYTER_PATH``), so it imports the geolearn of this environment, not
  whatever a ``python3`` kernel elsewhere on the machine points at.
- What the notebook writes (chips, the model, detections) goes to a temporary folder removed
  after the build, unless ``GEOLEARN_TUTORIAL_OUT`` names one: the notebook runs with the
  docs folder as its working directory, and MkDocs would publish (or, under ``mkdocs serve``,
  rebuild forever on) anything written there.
- Docstrings use Sphinx roles (``:func:`name```); MkDocs shows them as code, without the role.
- ``<!-- cli-help: COMMAND -->`` in a page becomes the ``--help`` text of ``geolearn COMMAND``
  (``<!-- cli-help -->``: of ``geolearn`` itself), taken from the parser at build time, so the
  CLI page cannot drift from the code; a command that does not exist fails the build.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

_CLI_HELP = re.compile(r"<!-- cli-help(?::\s*([\w-]+))?\s*-->")
_ROLE = re.compile(r":(?:func|class|meth|mod|data|attr|exc|obj):<code>~?")
_made: list[Path] = []


def on_config(config, **kwargs):
    build_dir = Path(tempfile.mkdtemp(prefix="geolearn_docs_"))
    _made.append(build_dir)
    kernel = build_dir / "jupyter" / "kernels" / "python3"
    kernel.mkdir(parents=True)
    spec = {
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (geolearn docs)",
        "language": "python",
    }
    (kernel / "kernel.json").write_text(json.dumps(spec))
    os.environ["JUPYTER_PATH"] = os.pathsep.join(
        [str(build_dir / "jupyter"), *filter(None, [os.environ.get("JUPYTER_PATH")])]
    )
    if not os.environ.get("GEOLEARN_TUTORIAL_OUT"):
        os.environ["GEOLEARN_TUTORIAL_OUT"] = str(build_dir / "tutorial")
    return config


def _cli_help(command: str | None) -> str:
    import argparse

    from geolearn.cli import build_parser

    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: make the page stable
    parser = build_parser()
    if command is not None:
        actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        choices = actions[0].choices if actions else {}
        if command not in choices:
            raise ValueError(f"docs: <!-- cli-help: {command} --> names no geolearn command; "
                             f"the commands are {sorted(choices)}")
        parser = choices[command]
    return "```text\n" + parser.format_help().rstrip() + "\n```"


def on_page_markdown(markdown, **kwargs):
    return _CLI_HELP.sub(lambda match: _cli_help(match.group(1)), markdown)


def on_page_content(html, **kwargs):
    return _ROLE.sub("<code>", html)


def on_shutdown(**kwargs):
    for folder in _made:
        if os.environ.get("GEOLEARN_TUTORIAL_OUT", "").startswith(str(folder)):
            del os.environ["GEOLEARN_TUTORIAL_OUT"]
        shutil.rmtree(folder, ignore_errors=True)
    _made.clear()
