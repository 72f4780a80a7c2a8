"""Every config field declares what it allows, and no YAML restates a dataclass default (one place for each)."""

import importlib.resources

import yaml

from erl_mega.cli import _rules
from erl_mega.config.compose import defaults_tree, group_options
from erl_mega.config.rules import problem, valid_rule
from erl_mega.config.schema import RunConfig


def test_every_field_has_a_rule():
    missing = [path for path, rule in _rules(RunConfig) if rule is None or not valid_rule(rule)]
    assert not missing, f"fields without an 'allowed' rule (erl_mega/config/rules.py): {missing}"


def test_rules_reject_non_finite_and_out_of_range():
    assert problem("> 0", float("nan")) and problem("> 0", float("inf")) and problem("[0, 1]", 1.5)
    assert problem("(0, 1]", 0.0) and problem(("a", "b"), "c") and problem("nonempty", " ")
    assert problem("> 0", 1e-9) is None and problem("[0, 1)", 0) is None and problem("any", None) is None


def _leaves(tree, prefix=""):
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            yield from _leaves(value, f"{prefix}{key}.")
        else:
            yield prefix + key, value


def test_yaml_never_restates_a_dataclass_default():
    defaults = dict(_leaves(defaults_tree(RunConfig)))
    root = importlib.resources.files("erl_mega.configs")
    top = yaml.safe_load((root / "config.yaml").read_text())
    restated = [f"config.yaml: {k}" for k, v in top.items() if k in defaults and defaults[k] == v]
    for group, options in group_options().items():
        for option in options:
            data = yaml.safe_load((root / group / f"{option}.yaml").read_text()) or {}
            for key, value in _leaves({k: v for k, v in data.items() if k != "defaults"}, f"{group}."):
                if key in defaults and defaults[key] == value and not (option != "erl" and key == "algo.name"):
                    restated.append(f"{group}/{option}.yaml: {key}")
    assert not restated, f"defaults live in the dataclasses; drop these YAML lines: {restated}"

