"""An OpenAI-compatible gateway over any RolloutEngine that records token-exact episode traces."""

from erl_mega.gateway.routes import EPISODE_HEADER, Gateway, mount_openai

__all__ = ["EPISODE_HEADER", "Gateway", "mount_openai"]
