"""Text environments; importing this package registers each of them."""

from erl_mega.envs import frozenlake, hotpotqa, sokoban  # noqa: F401
