"""Command-line parsing that answers a mistake with one line.

argparse prints its usage and then the error, and exits by itself. Every ps-train command
instead raises ValueError naming the flag, which `ps_trainer.cli` prints as one line,
`ps-train ...: error: --FLAG: what is wrong`, with exit status 2. The sub-commands that live in
lower layers (sweep, report, export) use the same parser, so this module imports nothing of ours.
"""

from __future__ import annotations

import argparse
import difflib
import re


class ArgumentParser(argparse.ArgumentParser):
    """argparse, but a bad command line raises ValueError naming the flag (one line, exit 2 in
    `main`) instead of printing the usage and exiting."""

    def error(self, message: str):
        if m := re.match(r"argument (\S+): expected one argument", message):
            raise ValueError(f"{m[1]}: expected a value after it: {m[1]} VALUE")
        if m := re.match(r"ambiguous option: (\S+) could match (.*)", message):
            raise ValueError(f"{m[1]}: ambiguous, could be any of {m[2]}; write it out")
        if m := re.match(r"argument (\S+): (.*)", message):
            raise ValueError(f"{m[1].split('/')[0]}: {m[2]}")
        raise ValueError(message)

    def parse_args(self, args=None, namespace=None):
        known, extra = self.parse_known_args(args, namespace)
        if extra:
            flags = [s for a in self._actions for s in a.option_strings]
            close = difflib.get_close_matches(extra[0].split("=")[0], flags, n=1)
            raise ValueError(f"{extra[0]}: " + (
                "unknown flag" + (f"; did you mean {close[0]}?" if close else "") if
                extra[0].startswith("-") else "unexpected argument; settings are given as "
                "--flag VALUE") + f" (`{self.prog} --help` lists them)")
        return known
