"""erl-mega: Experiential Reinforcement Learning (arXiv 2602.13949) on Megatron-core and SGLang."""

__version__ = "0.1.0"
