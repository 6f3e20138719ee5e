"""Every command-line option of every stage explains itself: `--help` shows a help text for each."""
import argparse
import importlib

import pytest

STAGES = ["world", "rvq", "data", "model", "sft", "dpo", "sasrec", "evaluate", "ask", "ablation"]


class Built(Exception):
    def __init__(self, parser):
        self.parser = parser


def parsers_of(module_name, monkeypatch):
    """The parser a stage builds (and its sub-commands' parsers), caught before it parses anything."""
    def catch(self, *a, **k):
        raise Built(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", catch)
    mod = importlib.import_module(module_name)
    with pytest.raises(Built) as got:
        (mod.parse_args if hasattr(mod, "parse_args") else mod.main)([])
    out, todo = [], [got.value.parser]
    while todo:
        p = todo.pop()
        out.append(p)
        for a in p._actions:
            if isinstance(a, argparse._SubParsersAction):
                todo += list(a.choices.values())
    return out


def undocumented(parser):
    """Options whose help is missing or too short to say why (a unit alone, "seconds", says nothing)."""
    return [a.option_strings[0] if a.option_strings else a.dest for a in parser._actions
            if not isinstance(a, (argparse._HelpAction, argparse._SubParsersAction))
            and (not a.help or len(a.help.split()) < 3)]


def test_undocumented_finds_what_it_should():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--gap", type=int, help="seconds")
    p.add_argument("--seed", type=int, help="seed of the sampled examples")
    assert undocumented(p) == ["--steps", "--gap"]


@pytest.mark.parametrize("stage", STAGES)
def test_every_option_has_help(stage, monkeypatch):
    missing = {p.prog: undocumented(p) for p in parsers_of(stage, monkeypatch)}
    assert not any(missing.values()), missing
