"""A scripted FrozenLake player for the workflow tests: the expert's move on the map in the prompt."""

from erl_mega.envs.frozenlake import FrozenLake


def expert_script(prompt_text: str) -> str:
    """Plays the expert's move on the map in the prompt's last observation."""
    rows = prompt_text.split("<|im_start|>user\n")[-1].split("<|im_end|>")[0].splitlines()
    grid = [r for r in rows if r and set(r) <= set(".x*@")]
    env = FrozenLake()
    env.desc = ["".join({"x": "H", "*": "G"}.get(ch, "F") for ch in row) for row in grid]
    r, c = next((i, row.index("@")) for i, row in enumerate(grid) if "@" in row)
    env._env = type("S", (), {"unwrapped": type("U", (), {"s": r * len(grid) + c})()})()
    return f"<action>{env.expert_move(env.facts)}</action>"
